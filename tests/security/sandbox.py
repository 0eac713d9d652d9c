"""A real device agent behind the production broker, seen from the scheduler's side: the harness of the suite's
device attacks (tests/security/test_remote_config.py, test_updates.py)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lepton_edge.device.agent import DeviceAgent
from lepton_edge.fleet.protocol import DesiredConfig, ReportedConfig, TopicKind, config_desired_topic, encode
from tests.device.helpers import Recorder, agent_config, wait_until
from tests.support.production_broker import ProductionBroker, agent_mqtt, client_tls, dev

GOOD_SOURCE = "synthetic://shapes?fps=30&width=64&height=48"
"""The source of the good workload: its results come from the source id ``door``."""


class SandboxedDevice:
    """Pushes desired documents with the scheduler's certificate (retained, as the scheduler does), reads the
    reports and events, and counts the results of the good workload."""

    def __init__(self, agent: DeviceAgent, scheduler: Recorder) -> None:
        self.agent, self.scheduler = agent, scheduler
        self.version = 0
        self.good_version = 0

    @property
    def device_id(self) -> str:
        return self.agent.device_id

    @property
    def state_dir(self) -> Path:
        return self.agent.store.dir

    def workload(self, **sections: Any) -> dict[str, Any]:
        """The good workload (the local model on source ``door``) with ``sections`` replaced."""
        base = {
            "model": {"path": str(self.agent.local_config.model.path)},
            "backend": {"type": "onnxruntime", "intra_op_threads": 1, "warmup_runs": 0},
            "source": {"uri": GOOD_SOURCE, "id": "door"},
            "postprocess": {"type": "classify", "top_k": 2},
        }
        return {**base, **sections}

    def publish(self, config: dict[str, Any]) -> int:
        """Publish ``config`` as the next desired version; returns the version."""
        self.version += 1
        document = DesiredConfig(version=self.version, config=config, issued_at=time.time(), issued_by="scheduler")
        topic = config_desired_topic(self.device_id)
        assert self.scheduler.client.publish(topic, encode(document), qos=1, retain=True).wait(5)
        return self.version

    def report(self, version: int, timeout: float = 20) -> ReportedConfig:
        return self.scheduler.wait(TopicKind.CONFIG_REPORTED, lambda r: r.version == version, timeout=timeout)

    def push(self, config: dict[str, Any], timeout: float = 20) -> ReportedConfig:
        """Publish ``config`` and wait for its report."""
        return self.report(self.publish(config), timeout)

    def events(self, kind: str) -> list[Any]:
        return [e for e in self.scheduler.of(TopicKind.EVENT) if e.kind == kind]

    def results_from_door(self) -> int:
        return sum(1 for r in self.scheduler.of(TopicKind.RESULT) if r.source == "door")

    def assert_still_serving(self) -> None:
        """The last good config is active and still produces results."""
        assert self.agent.config_version == self.good_version
        before = self.results_from_door()
        wait_until(lambda: self.results_from_door() >= before + 3, timeout=10)


@contextlib.contextmanager
def sandboxed_agent(
    broker: ProductionBroker,
    pki: dict[str, Path],
    workdir: Path,
    model: Path,
    device_id: str,
    agent: dict[str, Any] | None = None,
) -> Iterator[SandboxedDevice]:
    """A started agent for ``device_id`` (its own certificate, ``agent`` settings added) and the scheduler's
    recorder of its topics; on exit the agent stops and its retained desired document is cleared."""
    scheduler = Recorder.connect(broker.port, "scheduler", dev(device_id, "#"), tls=client_tls(pki, "scheduler"))
    settings = {**(agent or {}), "mqtt": agent_mqtt(pki, device_id)}
    device_agent = DeviceAgent(agent_config(workdir, model, broker.port, device_id, agent=settings))
    device_agent.start()
    try:
        assert device_agent.client.wait_connected(10), device_agent.client.last_error
        yield SandboxedDevice(device_agent, scheduler)
    finally:
        device_agent.stop()
        scheduler.client.publish(config_desired_topic(device_id), b"", qos=1, retain=True).wait(5)
        scheduler.stop()
