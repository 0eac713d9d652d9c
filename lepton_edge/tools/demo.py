"""``lepton-edge demo``: the whole system on one machine.

A local mosquitto, the scheduler with its dashboard, and one device: two live synthetic cameras through one batched
shapes detector (batches of 2), a colour classifier cascaded on its detections, tracking on both streams, a counting
line and a zone on the first with clips around its line crossings. The scheduler is given one workload per stream,
both pinned to the device; it pushes them as the device's desired config (the multi form: both streams share the
model entry, so the device batches them), stores the device's events and shows them and its telemetry on the
dashboard. At the end the demo says how many events, crossings and clips there were and where the clips are.

The scheduler runs with ``api.insecure_local`` (``--insecure-local``): its API and dashboard, bound to
127.0.0.1 only, take no token, and the demo says so loudly; a real deployment creates tokens with
``lepton-edge scheduler token create``.

The models are the ones in package data; everything the demo writes (results, annotated video, clips, broker,
scheduler store, device state) goes to one folder, ``out/demo`` under the current folder by default. The command line is
``lepton_edge.cli.demo``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lepton_edge.config.base import read_yaml
from lepton_edge.config.device import DeviceConfig, parse_config
from lepton_edge.config.scheduler import parse_scheduler_config
from lepton_edge.data import DATA_DIR, DEMO_CONFIG, DEMO_MODEL
from lepton_edge.device.agent import run_device
from lepton_edge.device.service import run_service
from lepton_edge.device.signing import generate_keypair
from lepton_edge.fleet.broker import LocalBroker, free_port, wait_for_port
from lepton_edge.scheduler.service import run_scheduler

log = logging.getLogger(__name__)


def demo_config(out_dir: Path) -> DeviceConfig:
    """The bundled demo config (deploy/demo.yaml) with the packaged models, writing its files into ``out_dir``
    (clips in ``out_dir/clips``).

    Its own paths are relative to deploy/ in a checkout; the demo does not depend on where it runs from."""
    data = read_yaml(DEMO_CONFIG)
    for model in data["models"].values():
        model["path"] = str(DATA_DIR / Path(model["path"]).name)
    for stream in data["streams"].values():
        if isinstance(stream.get("clips"), dict) and "folder" in stream["clips"]:
            stream["clips"]["folder"] = str(out_dir / Path(stream["clips"]["folder"]).name)
    for workload in data["workloads"].values():
        for sink in workload.get("sinks", []):
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


def demo_workloads(device_config: DeviceConfig, device_id: str) -> list[dict[str, Any]]:
    """The demo's workloads (deploy/demo.yaml) as scheduler workloads pinned to the demo device, one per workload,
    named like it. Each carries its model's fields besides the path (the batch), so the scheduler gives both the same
    model entry and the device one batcher; cascades go inline (named by their model), as the scheduler takes
    them (lepton_edge.scheduler.desired)."""
    workloads = []
    for name, view in device_config.workload_views().items():
        dumped = view.model_dump(mode="json", exclude_unset=True)
        model = {k: v for k, v in dumped["model"].items() if k != "path"}
        source = {k: v for k, v in dumped["source"].items() if k not in ("uri", "id")}
        config: dict[str, Any] = {k: dumped[k] for k in WORKLOAD_KEYS if k in dumped and dumped[k] is not None}
        workloads.append({
            "workload_id": name,
            "source_uri": view.source.uri if view.source else "",
            "model": str(view.model.path) if view.model else "",
            # what placement reserves: a device that has run no model yet is assumed to give 10 fps per model
            # (80 % usable), so both must fit in 8 fps to start; the streams run at their own 30 fps regardless
            "required_fps": DEMO_REQUIRED_FPS,
            "pinned_device": device_id,
            "config": config | ({"model": model} if model else {}) | ({"source": source} if source else {}),
        })
    return workloads


DEMO_REQUIRED_FPS = 3.0
"""Frames per second each demo workload asks the scheduler for (its placement reserve, not the stream's rate)."""
WORKLOAD_KEYS = ("postprocess", "tracking", "analytics", "cascade", "sinks")
"""The sections of a demo workload the scheduler workload's config carries (besides source and model)."""


def retire_stale_workloads(api: str, device_id: str, keep: set[str]) -> list[str]:
    """Delete the workloads a previous demo run (of an older demo) left pinned to the demo device; their ids."""
    with urllib.request.urlopen(f"{api}api/workloads", timeout=10) as response:
        listed = json.loads(response.read())
    stale = [w["workload_id"] for w in listed
             if w.get("pinned_device") == device_id and w["workload_id"] not in keep]
    for workload_id in stale:
        urllib.request.urlopen(urllib.request.Request(f"{api}api/workloads/{workload_id}", method="DELETE"),
                               timeout=10).close()
    return stale


@dataclass(frozen=True)
class DemoSummary:
    """What the demo produced: the scheduler's analytics events, line crossings, and complete clips on disk."""

    events: dict[str, int]
    """Analytics events stored by the scheduler, per stream."""
    crossings: int
    clips: list[Path]
    """Complete clips (an ``.mp4`` with its ``.json`` metadata), oldest first."""

    def lines(self, clip_dir: Path) -> list[str]:
        per_stream = ", ".join(f"{stream} {count}" for stream, count in sorted(self.events.items())) or "none"
        shown = [f"    {clip}" for clip in self.clips[-5:]]
        more = [f"    ... and {len(self.clips) - 5} more"] if len(self.clips) > 5 else []
        return [f"  events in the scheduler: {sum(self.events.values())} ({per_stream}); line crossings: "
                f"{self.crossings}; clips: {len(self.clips)} in {clip_dir}", *shown, *more]


def summarize(api: str, device_id: str, clip_dir: Path, since: float) -> DemoSummary:
    """Count what this run produced: analytics events (not the periodic counts) the scheduler stored since ``since``
    (Unix time), and the complete clips in ``clip_dir`` written since then."""
    query = urllib.parse.urlencode({"device": device_id, "kind": "device.analytics.", "since": since,
                                    "limit": 10_000})
    with urllib.request.urlopen(f"{api}api/events?{query}", timeout=10) as response:
        events = [e for e in json.loads(response.read()) if e["kind"] != "device.analytics.counts"]
    per_stream: dict[str, int] = {}
    for event in events:
        stream = str(((event.get("details") or {}).get("analytics") or {}).get("stream") or "?")
        per_stream[stream] = per_stream.get(stream, 0) + 1
    crossings = sum(1 for e in events if e["kind"].startswith("device.analytics.line_crossed"))
    clips = sorted((p for p in clip_dir.glob("*.mp4") if p.with_suffix(".json").is_file()
                    and p.stat().st_mtime >= since - 1), key=lambda p: p.stat().st_mtime)
    return DemoSummary(per_stream, crossings, clips)


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
    clip_dir = out_dir / "clips"
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
    started = time.time()
    try:
        dashboard = f"http://127.0.0.1:{api_port}/"
        if not wait_for_port("127.0.0.1", api_port, 20):
            log.error("the scheduler API did not start")
            return 1
        # The device starts idle: it runs what the scheduler pushes, the demo's two workloads as one document.
        device = parse_config({
            "device_id": local.device_id,
            "idle": True,
            "agent": {
                "mqtt": {"host": broker.host, "port": broker.port},
                "state_dir": str(out_dir / "device-state"),
                "telemetry_interval_s": 1.0,
                "scheduler_public_keys": [str(public_key)],
                # each new workload is watched on live frames before the next is applied: 2 s, not the default 5,
                # so the second stream joins the batch soon after the first starts
                "health_check": {"window_s": 2.0},
                # The workloads the scheduler pushes name the packaged models and write into out_dir.
                "remote_policy": {"allowed_folders": [str(DATA_DIR), str(DEMO_MODEL.resolve().parent),
                                                      str(out_dir)]},
            },
        }, str(DEMO_CONFIG))
        workloads = demo_workloads(local, device.device_id)
        retired = retire_stale_workloads(dashboard, device.device_id, {w["workload_id"] for w in workloads})
        if retired:
            log.info("removed workloads of an earlier demo from the scheduler: %s", ", ".join(retired))
        for workload in workloads:
            put_workload(dashboard, workload)
        log.info("broker mqtt://%s:%d  scheduler dashboard %s  (device %s, workloads %s)", broker.host, broker.port,
                 dashboard, device.device_id, ", ".join(w["workload_id"] for w in workloads))
        print(f"\n  dashboard: {dashboard}\n  INSECURE demo mode (--insecure-local): the API and dashboard take no "
              "token; anyone on this machine can change the fleet.\n", flush=True)
        time.sleep(0.5)
        code = run_device(device, duration_s=duration_s)
        time.sleep(1.5)  # the last events on their way through the outbox and the scheduler's writer
        try:
            summary = summarize(dashboard, device.device_id, clip_dir, started)
        except (OSError, ValueError) as e:  # the scheduler went away: the run's own exit code still counts
            log.warning("could not read the demo's events from the scheduler: %s", e)
        else:
            print("\n".join(["", "demo summary:", *summary.lines(clip_dir),
                             f"  results: {out_dir / 'results.jsonl'}, {out_dir / 'results-b.jsonl'}; annotated "
                             f"video: {out_dir / 'annotated.mp4'}; dashboard was {dashboard}"]), flush=True)
        return code
    finally:
        stop.set()
        scheduler.join(10)
        broker.stop()
