"""``lepton-edge demo``: the whole system on one machine.

A local mosquitto, the scheduler with its dashboard, and one device (the agent plus the pipeline running
the bundled shapes detector on a live synthetic camera). The scheduler is given one workload pinned to
the device, pushes it as the device's desired config, and shows the device's telemetry on the dashboard.

The scheduler runs with ``api.insecure_local`` (``--insecure-local``): its API and dashboard, bound to
127.0.0.1 only, take no token, and the demo says so loudly; a real deployment creates tokens with
``lepton-edge scheduler token create``.

The model is the one in package data; everything the demo writes (results, annotated video, broker, scheduler
store, device state) goes to one folder, ``out/demo`` under the current folder by default. The command line is
``lepton_edge.cli.demo``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from lepton_edge.config.base import read_yaml
from lepton_edge.config.device import DeviceConfig, parse_config
from lepton_edge.config.scheduler import parse_scheduler_config
from lepton_edge.data import DEMO_CONFIG, DEMO_MODEL
from lepton_edge.device.agent import run_device
from lepton_edge.device.service import run_service
from lepton_edge.device.signing import generate_keypair
from lepton_edge.fleet.broker import LocalBroker, free_port, wait_for_port
from lepton_edge.scheduler.service import run_scheduler

log = logging.getLogger(__name__)


def demo_config(out_dir: Path) -> DeviceConfig:
    """The bundled demo config (deploy/demo.yaml) with the packaged model, writing its files into ``out_dir``.

    Its own paths are relative to deploy/ in a checkout; the demo does not depend on where it runs from."""
    data = read_yaml(DEMO_CONFIG)
    data["model"]["path"] = str(DEMO_MODEL)
    for sink in data["sinks"]:
        if "path" in sink:
            sink["path"] = str(out_dir / Path(sink["path"]).name)
    return parse_config(data, str(DEMO_CONFIG))


def _send_json(url: str, body: dict[str, Any], method: str) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def put_workload(api: str, workload: dict[str, Any]) -> None:
    """Create the workload, or update it when a previous demo run left it in the store."""
    try:
        _send_json(f"{api}api/workloads", workload, "POST")
    except urllib.error.HTTPError as e:
        if e.code != 409:
            raise
        _send_json(f"{api}api/workloads/{workload['workload_id']}", workload, "PUT")


def demo_workload(device_config, device_id: str) -> dict[str, Any]:
    """The demo pipeline as a scheduler workload pinned to the demo device."""
    dumped = device_config.model_dump(mode="json", exclude_unset=True)
    return {
        "workload_id": "demo-shapes",
        "source_uri": device_config.source.uri,
        "model": str(device_config.model.path),
        "required_fps": 25.0,
        "pinned_device": device_id,
        "config": {k: dumped[k] for k in ("postprocess", "tracking", "analytics", "sinks", "pipeline") if k in dumped}
        | {"source": dumped["source"]},
    }


def desired_keys(out_dir: Path) -> tuple[Path, Path]:
    """The demo scheduler's desired-document signing key pair (made once, kept in ``out_dir/keys``)."""
    private, public = out_dir / "keys" / "scheduler-desired.key", out_dir / "keys" / "scheduler-desired.pub"
    if not (private.exists() and public.exists()):
        private.unlink(missing_ok=True)
        public.unlink(missing_ok=True)
        generate_keypair(private, public)
    return private, public


def run_demo(duration_s: float | None, out_dir: Path, fleet: bool = True) -> int:
    out_dir = out_dir.resolve()
    local = demo_config(out_dir)
    if not fleet:
        return run_service(local, duration_s=duration_s, origin=str(DEMO_CONFIG))

    broker = LocalBroker(out_dir / "broker").start()
    api_port = free_port()
    signing_key, public_key = desired_keys(out_dir)
    scheduler_config = parse_scheduler_config({
        "store_url": f"sqlite:///{out_dir / 'scheduler.db'}",
        "mqtt": {"host": broker.host, "port": broker.port},
        # no tokens for the demo: loopback only, said loudly below and on the dashboard
        "api": {"enabled": True, "host": "127.0.0.1", "port": api_port, "insecure_local": True},
        "heartbeat_timeout_s": 10.0,
        "desired_signing_key": str(signing_key),  # the device accepts desired configs signed by it only
    }, "demo")
    stop = threading.Event()
    for name in ("lepton_edge.scheduler", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)  # keep the device's live table readable
    scheduler = threading.Thread(target=run_scheduler, args=(scheduler_config,), kwargs={"stop": stop},
                                 name="demo-scheduler", daemon=True)
    scheduler.start()
    try:
        dashboard = f"http://127.0.0.1:{api_port}/"
        if not wait_for_port("127.0.0.1", api_port, 20):
            log.error("the scheduler API did not start")
            return 1
        device = parse_config({
            **local.model_dump(mode="python", exclude_unset=True),
            "agent": {
                "mqtt": {"host": broker.host, "port": broker.port},
                "state_dir": str(out_dir / "device-state"),
                "telemetry_interval_s": 1.0,
                "scheduler_public_keys": [str(public_key)],
                # The workload the scheduler pushes names the packaged model and writes into out_dir.
                "remote_policy": {"allowed_folders": [str(DEMO_MODEL.resolve().parent), str(out_dir)]},
            },
        }, str(DEMO_CONFIG))
        put_workload(dashboard, demo_workload(device, device.device_id))
        log.info("broker mqtt://%s:%d  scheduler dashboard %s  (device %s)", broker.host, broker.port, dashboard,
                 device.device_id)
        print(f"\n  dashboard: {dashboard}\n  INSECURE demo mode (--insecure-local): the API and dashboard take no "
              "token; anyone on this machine can change the fleet.\n", flush=True)
        time.sleep(0.5)
        return run_device(device, duration_s=duration_s)
    finally:
        stop.set()
        scheduler.join(10)
        broker.stop()
