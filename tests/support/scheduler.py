"""Helpers for scheduler service tests: fast configs, waiting, and a recorder of desired configs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from lepton_edge.config.scheduler import SchedulerConfig, parse_scheduler_config
from lepton_edge.fleet.mqtt import IncomingMessage
from lepton_edge.fleet.protocol import DesiredConfig, TopicKind, decode, parse_topic
from lepton_edge.scheduler.models import Workload

T = TypeVar("T")


def fast_config(port: int, store_url: str, replica_id: str = "r1", **overrides: Any) -> SchedulerConfig:
    """A scheduler config with test timings: quick sweeps, leader checks and debounce; no HTTP API."""
    data: dict[str, Any] = {
        "store_url": store_url,
        "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5},
        "replicas": {"replica_id": replica_id},
        "heartbeat_timeout_s": 3.0,
        "sweep_interval_s": 0.2,
        "leader_check_s": 0.2,
        "fleet_rebirth_on_start": False,
        "stats_log_s": 3600,
        "ingest": {"flush_interval_s": 0.05, "event_interval_s": 0},
        "placement": {"debounce_s": 0.05},
        "api": {"enabled": False},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_scheduler_config(data, "test")


def wait_until(predicate: Callable[[], T], timeout: float = 20.0, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except AssertionError as e:
            last = e
        else:
            if last:
                return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last value: {last!r})")


def workload(workload_id: str, fps: float = 5.0, **fields: Any) -> Workload:
    """A workload whose source runs at ``fps`` (the simulator reads the rate from the URI)."""
    return Workload(
        workload_id=workload_id,
        source_uri=f"synthetic://shapes?fps={fps:g}&id={workload_id}",
        model="det.onnx",
        required_fps=fps,
        **fields,
    )


class DesiredRecorder:
    """An MQTT handler for ``lepton/v1/devices/+/config/desired``: every desired config, by device."""

    def __init__(self) -> None:
        self.by_device: dict[str, list[tuple[DesiredConfig, bool]]] = {}

    def __call__(self, message: IncomingMessage) -> None:
        if not message.payload:
            return
        device_id = parse_topic(message.topic).device_id
        desired = decode(TopicKind.CONFIG_DESIRED, message.payload, message.topic)
        assert isinstance(desired, DesiredConfig)
        self.by_device.setdefault(device_id or "", []).append((desired, message.retain))

    def latest(self, device_id: str) -> DesiredConfig | None:
        entries = self.by_device.get(device_id)
        return entries[-1][0] if entries else None

    def running(self, device_id: str) -> str | None:
        """The source URI of the latest desired config of ``device_id`` (its first stream's in the multi form;
        None: nothing or idle)."""
        latest = self.latest(device_id)
        if latest is None:
            return None
        streams = latest.config.get("streams")
        source = next(iter(streams.values()), None) if isinstance(streams, dict) else latest.config.get("source")
        return source.get("uri") if isinstance(source, dict) else None  # type: ignore[return-value]
