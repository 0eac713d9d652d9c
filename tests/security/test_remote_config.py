"""Issue #12, items 2 and 5: remote config that tries to leave its sandbox, replayed against a real device agent.

The agent (device ``cam-a``) connects over mutual TLS to mosquitto running the production config and ACL; the
test publishes desired documents with the scheduler's certificate, as the scheduler would. Each attack must be
refused with a reason naming the field, reported on ``config/reported`` (outcome ``rejected``), counted as a
``config.rejected`` event, and leave the device serving its last good config (results keep coming from it).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from lepton_edge.device.remote_policy import MAX_REMOTE_SINKS
from lepton_edge.fleet.protocol import TopicKind
from tests.device.helpers import wait_until
from tests.security.sandbox import GOOD_SOURCE, SandboxedDevice, sandboxed_agent
from tests.support.http_server import LoopbackServer
from tests.support.production_broker import ProductionBroker

pytestmark = pytest.mark.integration

DEVICE = "cam-a"
AREA = "remote config"


class CountingServer(LoopbackServer):
    """An internal HTTP endpoint that records every request it gets (the attack must cause none)."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        super().__init__()

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        self.requests.append(req.path)
        req.send_response(200)
        req.send_header("Content-Length", "0")
        req.end_headers()


@pytest.fixture(scope="module")
def device(
    production_broker: ProductionBroker, pki: dict[str, Path], color_model: Path, tmp_path_factory
) -> Iterator[SandboxedDevice]:
    workdir = tmp_path_factory.mktemp("sandboxed")
    with sandboxed_agent(production_broker, pki, workdir, color_model, DEVICE) as sandboxed:
        good = sandboxed.push(sandboxed.workload())
        assert (good.outcome, good.errors) == ("applied", []), good.errors
        sandboxed.good_version = good.version
        sandboxed.assert_still_serving()
        yield sandboxed


def assert_refused(device: SandboxedDevice, config: dict[str, Any], field: str, rule: str, rec: Any) -> str:
    """Push ``config``; it must be rejected naming ``field`` and ``rule``, counted, and change nothing."""
    events_before = len(device.events("config.rejected"))
    report = device.push(config)
    assert report.outcome == "rejected", report
    assert report.active_version == device.good_version
    reason = next((e for e in report.errors if field in e and rule in e), None)
    assert reason is not None, f"no error names {field!r} and {rule!r}: {report.errors}"
    event = wait_until(
        lambda: next((e for e in device.events("config.rejected") if e.details["version"] == report.version), None)
    )
    device.assert_still_serving()
    rec.refused_because(reason)
    rec.figures["config.rejected events"] = len(device.events("config.rejected")) - events_before
    assert event.details["errors"], event
    return reason


# -- item 2: paths ---------------------------------------------------------------------------------------------


def test_labels_from_etc_passwd_are_refused(device: SandboxedDevice, attack) -> None:
    rec = attack("model.labels: /etc/passwd (read a local file back through detections)", AREA)
    config = device.workload(model={"path": str(device.agent.local_config.model.path), "labels": "/etc/passwd"})
    assert_refused(device, config, "model.labels", "allowed folders", rec)
    labels = {c.label for r in device.scheduler.of(TopicKind.RESULT) for c in (r.classes or [])}
    assert "root" not in labels and not any(":x:" in label for label in labels)


def test_a_jsonl_sink_climbing_out_with_dots_is_refused(device: SandboxedDevice, attack) -> None:
    rec = attack("jsonl sink at ../../../../tmp/... (write a file anywhere)", AREA)
    name = f"lepton-escape-{uuid.uuid4().hex[:8]}.jsonl"
    climb = "../" * len(device.state_dir.resolve().parts) + f"tmp/{name}"
    config = device.workload(sinks=[{"type": "jsonl", "path": climb}])
    assert_refused(device, config, "sinks.0.path", "allowed folders", rec)
    assert not (Path("/tmp") / name).exists()


@pytest.mark.parametrize(
    ("own", "what"),
    [
        ("session", "session counter"),
        ("outbox.db", "outbox database"),
        ("outbox.db-wal", "outbox write-ahead log"),
        ("config.json", "last good config"),
        ("config.json.tmp", "last good config's temporary file"),
        ("artifacts/current/model.onnx", "downloaded artifacts"),
    ],
)
def test_a_sink_over_the_agents_own_state_files_is_refused(device: SandboxedDevice, attack, own: str, what: str):
    rec = attack(f"jsonl sink over the agent's {what} ({own})", AREA)
    target = device.state_dir / own
    before = target.read_bytes() if target.exists() else None
    config = device.workload(sinks=[{"type": "jsonl", "path": str(target)}])
    assert_refused(device, config, "sinks.0.path", "agent's own state", rec)
    if own == "session":
        assert target.read_bytes() == before  # the session counter is untouched


def test_symlink_escapes_out_of_an_allowed_folder_are_refused(device: SandboxedDevice, attack) -> None:
    rec = attack("symlink inside an allowed folder pointing out of it (labels and sink)", AREA)
    link = device.state_dir / f"escape-{uuid.uuid4().hex[:6]}"
    os.symlink("/etc", link)
    config = device.workload(model={"path": str(device.agent.local_config.model.path), "labels": f"{link.name}/passwd"})
    reason = assert_refused(device, config, "model.labels", "resolves to /etc/passwd", rec)
    outside = Path("/tmp") / f"lepton-symlink-{uuid.uuid4().hex[:8]}.jsonl"
    sink_link = device.state_dir / f"{link.name}.jsonl"
    os.symlink(outside, sink_link)
    rec2 = attack("jsonl sink through a symlink to a file outside the allowed folders", AREA)
    assert_refused(
        device,
        device.workload(sinks=[{"type": "jsonl", "path": sink_link.name}]),
        "sinks.0.path",
        f"resolves to {outside}",
        rec2,
    )
    assert not outside.exists() and "refused by the remote policy" in reason


# -- item 2: sources --------------------------------------------------------------------------------------------


def test_an_http_source_to_an_internal_admin_endpoint_is_refused_and_never_fetched(
    device: SandboxedDevice, attack
) -> None:
    rec = attack("source http://127.0.0.1:<port>/internal/admin?delete=all (request forgery)", AREA)
    server = CountingServer()
    try:
        uri = server.url("internal/admin?delete=all")
        assert_refused(device, device.workload(source={"uri": uri, "id": "door"}), "source.uri", "loopback", rec)
        time.sleep(0.5)  # a fetch started by the config would have reached the server by now
        assert server.requests == []
        rec.figures["requests received"] = len(server.requests)
    finally:
        server.close()


@pytest.mark.parametrize(
    ("uri", "rule"),
    [
        ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", "link-local"),  # cloud metadata
        ("http://[fe80::1]/admin", "link-local"),
        ("rtsp://169.254.10.10/stream", "link-local"),
        ("rtsp://127.0.0.1:554/x", "loopback"),
        ("http://[::1]:80/x", "loopback"),
        ("http://[::ffff:127.0.0.1]:8080/admin", "loopback"),  # loopback written as IPv4-mapped IPv6
        ("http://10.0.0.5/stream", "private"),
        ("https://elsewhere.example/x.mp4", "not in agent.remote_policy.http_hosts"),
        ("file:///etc/shadow", "allowed folders"),
        ("/etc/shadow", "allowed folders"),
        ("npy:///etc/shadow", "allowed folders"),
        ("/dev/sda", "allowed folders"),
        ("gst:filesrc location=/etc/shadow ! fakesink", "scheme gst:// is not allowed"),
        ("ftp://host/x", "scheme ftp:// is not allowed"),
    ],
)
def test_sources_outside_the_policy_are_refused(device: SandboxedDevice, attack, uri: str, rule: str) -> None:
    rec = attack(f"source {uri}", AREA)
    assert_refused(device, device.workload(source={"uri": uri, "id": "door"}), "source.uri", rule, rec)


# -- item 5: numbers that make a live device look dead or allocate without limit ----------------------------------


def test_a_telemetry_interval_of_a_day_is_refused_and_telemetry_keeps_coming(device: SandboxedDevice, attack):
    rec = attack("agent.telemetry_interval_s: 86400 (a live device looks dead)", AREA)
    config = device.workload(agent={"telemetry_interval_s": 86400})
    assert_refused(device, config, "agent.telemetry_interval_s", "max_telemetry_interval_s", rec)
    seen = len(device.scheduler.of(TopicKind.TELEMETRY))
    wait_until(lambda: len(device.scheduler.of(TopicKind.TELEMETRY)) >= seen + 2, timeout=5)


@pytest.mark.parametrize(
    ("section", "field", "rule"),
    [
        ({"pipeline": {"latency_window": 1e11}}, "pipeline.latency_window", "less than or equal to"),
        ({"pipeline": {"stats_interval_s": 1e9}}, "pipeline.stats_interval_s", "less than or equal to"),
        ({"agent": {"health_check": {"window_s": 1e9}}}, "agent.health_check.window_s", "less than or equal to"),
        ({"agent": {"results": {"max_rate_hz": 1e12}}}, "agent.results.max_rate_hz", "less than or equal to"),
        (
            {"sinks": [{"type": "jsonl", "path": "out.jsonl", "queue_size": 10**12}]},
            "queue_size",
            "less than or equal to",
        ),
        ({"postprocess": {"type": "classify", "top_k": 2**63}}, "top_k", "less than or equal to"),
        (
            {"source": {"uri": GOOD_SOURCE, "id": "door", "reconnect": {"max_attempts": 2**53}}},
            "max_attempts",
            "less than or equal to",
        ),
    ],
)
def test_unbounded_numbers_are_refused_by_the_schema(device: SandboxedDevice, attack, section, field, rule) -> None:
    rec = attack(f"{field}: a huge number (allocation or stall)", AREA)
    assert_refused(device, device.workload(**section), field, rule, rec)


def test_a_thousand_sinks_are_refused(device: SandboxedDevice, attack) -> None:
    # each sink is a thread, an open file and a queue of up to 100000 results: 1000 of them were applied
    rec = attack("1000 jsonl sinks of queue_size 100000 (threads, files and memory without limit)", AREA)
    sinks = [{"type": "jsonl", "path": f"many/{i}.jsonl", "queue_size": 100_000} for i in range(1000)]
    assert_refused(device, device.workload(sinks=sinks), "sinks", f"at most {MAX_REMOTE_SINKS} sinks", rec)
    assert not (device.state_dir / "many").exists()


@pytest.mark.parametrize(
    "preprocess",
    [{"scale": 1e308}, {"mean": [1e308, 0, 0], "std": [1e-308, 1, 1]}, {"std": [1e-9]}],
    ids=["scale", "mean-std", "tiny-std"],
)
def test_a_preprocess_that_overflows_every_score_is_refused(device: SandboxedDevice, attack, preprocess) -> None:
    # preprocess.scale: 1e308 was applied: every score became nan, every result was dropped (counted only in the
    # results sink's errors), and telemetry went on reporting 30 fps
    rec = attack(f"preprocess {preprocess} (every score infinite: results stop, telemetry looks healthy)", AREA)
    assert_refused(device, device.workload(preprocess=preprocess), "preprocess", "normalized pixel values", rec)


def test_a_usual_normalization_still_applies(device: SandboxedDevice) -> None:
    imagenet = {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    report = device.push(device.workload(preprocess=imagenet))
    assert (report.outcome, report.errors) == ("applied", [])
    device.good_version = report.version
    device.assert_still_serving()


def test_a_remote_config_cannot_widen_its_own_policy(device: SandboxedDevice, attack) -> None:
    rec = attack("agent.remote_policy set remotely (allowed_folders: /, http_hosts: 127.0.0.1)", AREA)
    policy = {"allowed_folders": ["/"], "http_hosts": ["127.0.0.1"]}
    config = device.workload(agent={"remote_policy": policy})
    assert_refused(device, config, "agent.remote_policy", "only by the device's local config file", rec)


# -- file sinks are bounded --------------------------------------------------------------------------------------


def test_a_remote_file_sink_cannot_grow_without_limit(device: SandboxedDevice, attack) -> None:
    # a jsonl sink in the state folder grew at 8.5 kB/s (0.74 GB a day) until the disk was full
    rec = attack("jsonl sink in the state folder rotating at 1 TiB (fills the state disk)", AREA)
    sink = {"type": "jsonl", "path": str(device.state_dir / "grow" / "results.jsonl"), "max_bytes": 1 << 40}
    assert_refused(device, device.workload(sinks=[sink]), "sinks.0.max_bytes", "remote_policy.max_sink_bytes", rec)


def test_a_remote_file_sink_rotates_within_its_bound(device: SandboxedDevice) -> None:
    path = device.state_dir / "grow" / "results.jsonl"
    sink = {"type": "jsonl", "path": str(path), "flush_every": 1, "max_bytes": 64 << 10}
    report = device.push(device.workload(sinks=[sink]))
    assert (report.outcome, report.errors) == ("applied", [])
    device.good_version = report.version
    rotated = path.with_name("results.1.jsonl")

    def sizes() -> tuple[int, int] | None:
        try:
            return path.stat().st_size, rotated.stat().st_size
        except FileNotFoundError:  # not rotated yet, or just rotated and the new file not written yet
            return None

    current, previous = wait_until(sizes, timeout=30)
    assert current <= 64 << 10 and previous <= 64 << 10
