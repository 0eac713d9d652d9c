"""The whole fleet on one machine, through its outer interfaces only: a real mosquitto, the scheduler process
(SQLite store, HTTP API) and a device agent process, both started with the ``lepton-edge`` command line.

A workload created over HTTP is placed on the device, applied, and its telemetry reaches the API; once the
device process is killed, the scheduler marks it offline and releases the workload.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.device.helpers import idle_data
from tests.support.api_client import ApiClient
from tests.support.mosquitto import MosquittoBroker, free_port, require_mosquitto

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).with_name("lepton-edge")
DETECTOR = ROOT / "models" / "shapes_detector.onnx"
DEVICE_ID = "e2e-cam-01"


class Api(ApiClient):
    """JSON over HTTP to the scheduler's API, with an operator token."""

    def __init__(self, port: int, token: str) -> None:
        super().__init__(f"http://127.0.0.1:{port}", token)

    def get(self, path: str) -> Any:
        """The body of a 200 answer, else None (also while the server is not up)."""
        try:
            status, body = self.call("GET", path)
        except OSError:
            return None
        return body if status == 200 else None

    def device(self) -> dict[str, Any] | None:
        return next((d for d in self.get("/api/devices") or [] if d["device_id"] == DEVICE_ID), None)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, logs: list[Path]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs if p.exists())
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tails}")


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:  # the child keeps its own copy
        return subprocess.Popen([str(CLI), "--log-level", "info", *args], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    require_mosquitto()
    with MosquittoBroker(tmp_path / "broker") as running:
        yield running.start()


def test_a_workload_runs_on_a_real_device_and_is_released_when_the_device_dies(broker, tmp_path: Path) -> None:
    assert CLI.is_file() and DETECTOR.is_file()
    api_port = free_port()
    scheduler_config = tmp_path / "scheduler.yaml"
    scheduler_config.write_text(json.dumps({
        "store_url": f"sqlite:///{tmp_path / 'fleet.db'}",
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
        "heartbeat_timeout_s": 5.0,
        "sweep_interval_s": 0.2,
        "leader_check_s": 0.2,
        "placement": {"debounce_s": 0.05},
        "api": {"enabled": True, "host": "127.0.0.1", "port": api_port},
    }))
    device_config = tmp_path / "device.yaml"
    # the detector's first inferences are slow on a busy machine: a health check window to match
    agent = {"health_check": {"window_s": 5.0, "min_frames": 2},
             "remote_policy": {"allowed_folders": [str(tmp_path), str(DETECTOR.parent)]}}  # the pushed model
    device_config.write_text(json.dumps(idle_data(tmp_path, broker.port, DEVICE_ID, agent=agent)))
    logs = [tmp_path / "scheduler.log", tmp_path / "device.log"]
    # the first token, made with the CLI on the store the scheduler will use (printed once: its last line)
    made = subprocess.run([str(CLI), "scheduler", "token", "create", "--config", str(scheduler_config),
                           "--name", "e2e", "--role", "operator"], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    api = Api(api_port, made.stdout.strip().splitlines()[-1])

    scheduler = start(["scheduler", "--config", str(scheduler_config)], logs[0])
    device = start(["run", "--config", str(device_config)], logs[1])
    try:
        wait_for(lambda: (d := api.device()) and d["online"], 30, "the device online in GET /api/devices", logs)

        status, created = api.call("POST", "/api/workloads", {
            "workload_id": "shapes",
            "source_uri": "synthetic://shapes?fps=30&width=320&height=240&seed=5",
            "model": str(DETECTOR),
            "required_fps": 5.0,
            "config": {"backend": {"type": "onnxruntime", "intra_op_threads": 1},
                       "postprocess": {"type": "detect", "conf_threshold": 0.4}},
        })
        assert status == 201, created
        applied = wait_for(
            lambda: [a for a in api.get("/api/assignments") or [] if a["status"] == "applied"], 30,
            "the workload applied on the device", logs)
        assert [(a["workload_id"], a["device_id"]) for a in applied] == [("shapes", DEVICE_ID)]
        running = wait_for(lambda: (d := api.device()) and (d["fps"] or 0) > 0 and d, 20,
                           "telemetry with fps > 0", logs)
        assert running["workloads"] == ["shapes"] and running["reported_version"] == applied[0]["desired_version"]
        assert running["last_outcome"] == "applied"

        device.send_signal(signal.SIGKILL)
        device.wait(5)
        gone = wait_for(lambda: (d := api.device()) and not d["online"] and d, 15, "the device offline", logs)
        assert gone["offline_reason"] == "connection_lost"
        wait_for(lambda: api.get("/api/assignments") == [], 10, "the workload released", logs)
        workload = api.get("/api/workloads/shapes")
        assert workload["device_id"] is None and workload["status"] is None
        kinds = [e["kind"] for e in api.get("/api/events?limit=1000") or []]
        assert {"device.online", "placement.placed", "device.offline"} <= set(kinds)
    finally:
        end(device)
        end(scheduler)
    assert scheduler.returncode == 0, logs[0].read_text(errors="replace")[-3000:]
