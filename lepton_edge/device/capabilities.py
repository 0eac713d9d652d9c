"""What a device's birth says it can run: accelerator, runtimes, CPU, memory, sources, artifacts."""

from __future__ import annotations

from lepton_edge.device.controller import RuntimeController
from lepton_edge.device.telemetry import clip_name
from lepton_edge.device.updates import ArtifactStore
from lepton_edge.fleet.protocol import Capabilities, model_id
from lepton_edge.runtime.platform import available_accelerator, backend_accelerator, cpu_facts, installed_runtimes


class DeviceCapabilities:
    """Describes the running pipeline; while idle, what the device could run (its accelerator and runtimes,
    the active artifact in its store). Machine facts are read once."""

    def __init__(self, controller: RuntimeController, artifacts: ArtifactStore | None, memory_bytes: int) -> None:
        self.controller = controller
        self.artifacts = artifacts
        self.runtimes = {name: clip_name(version) for name, version in installed_runtimes().items()}
        self.cpu_count = cpu_facts().logical_cores
        self.memory_bytes = memory_bytes
        self._idle_accelerator: str | None = None

    def describe(self) -> Capabilities:
        controller = self.controller
        pipeline = controller.pipeline
        if pipeline is None:
            accelerator = self.idle_accelerator()
            artifacts = self._stored_artifacts()
        else:
            backend = pipeline.backend
            providers = getattr(backend, "providers", None) or []
            accelerator = clip_name(backend_accelerator(backend.name, providers))
            artifacts = [clip_name(controller.artifact_id or "unknown")]
        return Capabilities(
            accelerator=accelerator,
            runtimes=self.runtimes,
            cpu_count=self.cpu_count,
            memory_bytes=self.memory_bytes,
            sources=[clip_name(s) for s in controller.source_states()],
            artifacts=artifacts,
        )

    def idle_accelerator(self) -> str:
        if self._idle_accelerator is None:
            self._idle_accelerator = clip_name(available_accelerator(self.runtimes))
        return self._idle_accelerator

    def _stored_artifacts(self) -> list[str]:
        """Id of the active artifact in the artifact store, if there is one."""
        sha = self.artifacts.current_sha256() if self.artifacts is not None else None
        return [clip_name(model_id("artifact", sha))] if sha else []
