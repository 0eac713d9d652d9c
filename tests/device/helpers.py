"""Helpers shared by the agent tests: device configs, a message recorder, waiting."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lepton_edge.config.device import DeviceConfig, parse_config
from lepton_edge.config.fleet import MqttConfig
from lepton_edge.core.results import Result
from lepton_edge.fleet.mqtt import IncomingMessage, MqttClient
from lepton_edge.fleet.protocol import TopicKind, decode, parse_topic
from lepton_edge.runtime.sinks.base import Sink

LIVE_SOURCE = "synthetic://shapes?fps=30&width=64&height=48"


def agent_data(
    tmp_path: Path,
    model: Path,
    port: int,
    device_id: str,
    *,
    source: str | dict[str, Any] = LIVE_SOURCE,
    agent: dict[str, Any] | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """A device config mapping with an agent section pointing at ``port``, fast timings for tests (the one
    builder of device configs for tests; tests/reliability/harness.py adds its own defaults).

    ``source`` is a URI or a whole source section; ``agent`` entries are merged into the agent section.
    """
    defaults = {
        "state_dir": str(tmp_path / f"state-{device_id}"),
        "telemetry_interval_s": 0.3,
        "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
        "results": {"max_rate_hz": 1000},
        "health_check": {"window_s": 0.6, "min_frames": 2},
        # remote configs in tests point at the test's folders and at the shared test model
        "remote_policy": {"allowed_folders": [str(tmp_path), *([str(Path(model).parent)] * Path(model).is_absolute())]},
    }
    agent_section = merge_sections(defaults, agent or {})
    data: dict[str, Any] = {
        "device_id": device_id,
        "model": {"path": str(model)},
        "backend": {"type": "onnxruntime", "intra_op_threads": 1, "warmup_runs": 0},
        "source": {"uri": source} if isinstance(source, str) else source,
        "postprocess": {"type": "classify", "top_k": 3},
        "agent": agent_section,
    }
    data.update(sections)
    return data


def merge_sections(defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` with ``overrides``: a mapping given for a mapping is merged into it, anything else replaces."""
    merged = dict(defaults)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def agent_config(*args: Any, **kwargs: Any) -> DeviceConfig:
    return parse_config(agent_data(*args, **kwargs), "test")


PIPELINE_SECTIONS = ("model", "backend", "source", "preprocess", "postprocess", "sinks", "pipeline")


def idle_data(tmp_path: Path, port: int, device_id: str, **kwargs: Any) -> dict[str, Any]:
    """Like :func:`agent_data`, for an idle device: ``idle: true`` and no pipeline sections."""
    # an idle device is pushed workloads later: let them use the models of the whole test session
    folders = {"remote_policy": {"allowed_folders": [str(tmp_path), str(tmp_path.parent)]}}
    agent = merge_sections(folders, kwargs.pop("agent", None) or {})
    data = agent_data(tmp_path, Path("unused.onnx"), port, device_id, agent=agent, **kwargs)
    return {"idle": True, **{k: v for k, v in data.items() if k not in PIPELINE_SECTIONS}}


def idle_config(*args: Any, **kwargs: Any) -> DeviceConfig:
    return parse_config(idle_data(*args, **kwargs), "test")


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


class Recorder:
    """Subscribes to topic filters on a real broker and keeps every message, decoded when possible."""

    def __init__(self, client: MqttClient, *filters: str) -> None:
        self.client = client
        self.messages: list[IncomingMessage] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        for topic_filter in filters:
            client.subscribe(topic_filter, self._on_message)

    @classmethod
    def connect(cls, port: int, client_id: str, *filters: str, **config: Any) -> Recorder:
        mqtt = MqttConfig(
            host="127.0.0.1",
            port=port,
            client_id=client_id,
            reconnect_min_s=0.05,
            reconnect_max_s=0.3,
            **config,
        )
        recorder = cls(MqttClient(mqtt), *filters)
        recorder.client.start()
        assert recorder.client.wait_connected(10), recorder.client.last_error
        assert recorder.client.wait_subscribed(5)
        return recorder

    def _on_message(self, msg: IncomingMessage) -> None:
        with self._lock:
            self.messages.append(msg)

    def of(self, kind: TopicKind) -> list[Any]:
        """Decoded payloads of one topic kind, in arrival order (empty retained payloads skipped)."""
        with self._lock:
            messages = list(self.messages)
        out = []
        for msg in messages:
            try:
                if parse_topic(msg.topic).kind is kind and msg.payload:
                    out.append(decode(kind, msg.payload, msg.topic))
            except Exception:
                continue
        return out

    def raw(self, kind: TopicKind) -> list[IncomingMessage]:
        with self._lock:
            return [m for m in self.messages if parse_topic(m.topic).kind is kind]

    def wait(self, kind: TopicKind, predicate: Callable[[Any], bool] = lambda m: True, timeout: float = 10.0):
        """The first decoded message of ``kind`` matching ``predicate``, waiting for it."""
        return wait_until(lambda: next((m for m in self.of(kind) if predicate(m)), None), timeout)

    def stop(self) -> None:
        self.client.stop(timeout=1.0)


class ListSink(Sink):
    """A real sink that keeps results in memory."""

    name = "list"

    def __init__(self) -> None:
        super().__init__(4096)
        self.results: list[Result] = []
        self.closed = False

    def write(self, result: Result) -> None:
        self.results.append(result)

    def release(self) -> None:
        self.closed = True

    def labels(self, start: int = 0) -> list[str]:
        """Top label of each result from ``start`` on."""
        return [r.output.labels[r.output.class_ids[0]] for r in self.results[start:] if len(r.output)]


def multi_data(tmp_path: Path, models: dict[str, Path], workloads: dict[str, dict[str, Any]], port: int = 1883,
               device_id: str = "multi", **sections: Any) -> dict[str, Any]:
    """A multi-stream device config mapping: ``models`` name -> ONNX path (onnxruntime, one thread), and per
    workload its ``uri`` (a stream of the workload's name) and ``model`` plus any workload sections; the agent
    section as :func:`agent_data` makes it (its allowed folders cover every model)."""
    first = next(iter(models.values()))
    base = agent_data(tmp_path, first, port, device_id)
    folders = {str(Path(p).parent) for p in models.values()} | {str(tmp_path)}
    base["agent"]["remote_policy"]["allowed_folders"] = sorted(folders)
    backend = {"type": "onnxruntime", "intra_op_threads": 1, "warmup_runs": 0}
    data: dict[str, Any] = {
        "device_id": device_id,
        "streams": {name: {"uri": w["uri"]} for name, w in workloads.items()},
        "models": {name: {"path": str(path), "backend": backend} for name, path in models.items()},
        "workloads": {name: {"stream": name, "postprocess": {"type": "classify", "top_k": 3},
                             **{k: v for k, v in w.items() if k != "uri"}} for name, w in workloads.items()},
        "agent": base["agent"],
    }
    data.update(sections)
    return data
