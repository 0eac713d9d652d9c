"""Issue #12, item 3/4: attacks on artifact updates, replayed against a real device agent.

The agent (device ``cam-b``) connects over mutual TLS to mosquitto running the production config and ACL; the
test publishes desired documents with the scheduler's certificate. Artifacts are served by a real HTTP server
on loopback (the one host the device's remote policy allows) and signed with a real release key. Each attack
must be refused naming its rule, reported (outcome ``rejected``), counted, fetch nothing it should not, and
leave the device serving its last good config.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from lepton_edge.config.pipeline import ArtifactRef
from lepton_edge.device.agent import DeviceAgent
from lepton_edge.device.signing import generate_keypair, sign_reference
from lepton_edge.fleet.protocol import ReportedConfig, TopicKind
from tests.device.helpers import agent_config, wait_until
from tests.security.sandbox import SandboxedDevice, sandboxed_agent
from tests.support.http_server import LoopbackServer
from tests.support.onnx_models import mean_color_classifier
from tests.support.production_broker import ProductionBroker, agent_mqtt
from tests.support.tiny_fs import fill, tiny_fs_mount  # noqa: F401 (the tiny_fs fixture)

pytestmark = pytest.mark.integration

DEVICE = "cam-b"
TARGET = "cams-east"
AREA = "updates"


class ArtifactServer(LoopbackServer):
    """Serves the files of ``root``; per file it can append bytes, close early or trickle 1 byte/s."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        self.extra: dict[str, bytes] = {}  # name -> bytes sent beyond the file (and announced)
        self.close_early: set[str] = set()  # names answered with the full length and half the bytes
        self.trickle: set[str] = set()  # names sent at 1 byte/s
        super().__init__()

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        name = req.path.lstrip("/").split("?")[0]
        self.requests.append(name)
        path = self.root / name
        if not path.is_file():
            req.send_error(404)
            return
        body = path.read_bytes() + self.extra.get(name, b"")
        start = int(req.headers["Range"][6:-1]) if req.headers.get("Range") else 0
        req.send_response(206 if start else 200)
        if start:
            req.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        req.send_header("Content-Length", str(len(body) - start))
        req.end_headers()
        try:
            if name in self.trickle:
                for i in range(start, len(body)):
                    req.wfile.write(body[i : i + 1])
                    req.wfile.flush()
                    time.sleep(1.0)
            elif name in self.close_early:
                req.wfile.write(body[start : start + max((len(body) - start) // 2, 1)])
                req.wfile.flush()
                req.close_connection = True
            else:
                req.wfile.write(body[start:])
        except (BrokenPipeError, ConnectionResetError):
            req.close_connection = True


class UpdatedDevice(SandboxedDevice):
    """The sandboxed agent with its release key and artifact server: pushes configs running an artifact."""

    def __init__(self, sandboxed: SandboxedDevice, server: ArtifactServer, key: Path) -> None:
        super().__init__(sandboxed.agent, sandboxed.scheduler)
        self.server, self.key = server, key

    @property
    def staging(self) -> Path:
        return self.agent.artifacts.staging

    def publish_artifact(self, artifact: ArtifactRef | None, **sections: Any) -> int:
        """Publish the next desired version running ``artifact`` (None: the local model file) with
        ``sections`` added; returns the version."""
        if artifact is not None:
            sections["model"] = {"path": "unused.onnx", "artifact": artifact.model_dump(exclude_none=True)}
        return self.publish(self.workload(**sections))

    def push_artifact(self, artifact: ArtifactRef | None, timeout: float = 20, **sections: Any) -> ReportedConfig:
        return self.report(self.publish_artifact(artifact, **sections), timeout)

    def artifact(self, name: str, size: int, **fields: Any) -> ArtifactRef:
        """A real model published as ``name`` and its reference signed with the release key (version 1 of
        TARGET, valid for an hour, unless ``fields`` say otherwise)."""
        key = fields.pop("key", None) or self.key
        model = mean_color_classifier(self.server.root / name, size=size)
        data = model.read_bytes()
        signed = {"version": 1, "target": TARGET, "expires": int(time.time()) + 3600, **fields}
        ref = ArtifactRef(url=self.server.url(name), size=len(data), sha256=hashlib.sha256(data).hexdigest(), **signed)
        return sign_reference(ref, key)


@pytest.fixture(scope="module")
def device(
    production_broker: ProductionBroker, pki: dict[str, Path], color_model: Path, tmp_path_factory
) -> Iterator[UpdatedDevice]:
    tmp = tmp_path_factory.mktemp("updated")
    generate_keypair(tmp / "keys" / "release.key", tmp / "keys" / "release.pub")
    (tmp / "www").mkdir()
    server = ArtifactServer(tmp / "www")
    agent_section = {
        "artifact_public_keys": [str(tmp / "keys" / "release.pub")],
        "artifact_targets": [TARGET],
        "remote_policy": {"artifact_schemes": ["http", "file"], "artifact_hosts": ["127.0.0.1"]},
        "artifact_min_speed_bytes": 1,  # the 1 byte/s server is not cut off by the speed rule
        "artifact_disk_reserve_bytes": 0,
    }
    try:
        with sandboxed_agent(production_broker, pki, tmp, color_model, DEVICE, agent_section) as sandboxed:
            updated = UpdatedDevice(sandboxed, server, tmp / "keys" / "release.key")
            good = updated.push_artifact(updated.artifact("v2.onnx", 32, version=2))
            assert (good.outcome, good.errors) == ("applied", []), good.errors
            updated.good_version = good.version
            updated.assert_still_serving()
            yield updated
    finally:
        server.close()


def assert_refused(device: UpdatedDevice, artifact: ArtifactRef, rule: str, rec: Any, *, fetched: bool = False) -> str:
    """Push ``artifact``; it must be rejected naming ``rule``, counted, and change nothing. Unless ``fetched``
    (a download that fails), it is refused before any download: no waiting for one."""
    rejected_before = len(device.events("config.rejected"))
    requests_before = len(device.server.requests)
    report = device.push_artifact(artifact)
    assert report.outcome == "rejected", report
    assert report.active_version == device.good_version
    reason = next((e for e in report.errors if rule in e), None)
    assert reason is not None, f"no error names {rule!r}: {report.errors}"
    wait_until(lambda: len(device.events("config.rejected")) > rejected_before)
    device.assert_still_serving()
    assert not list(device.staging.glob("*.part"))
    waited = [e for e in device.events("config.waiting_for_download") if e.details["version"] == report.version]
    assert bool(waited) == fetched, waited
    rec.refused_because(reason)
    rec.figures["config.rejected events"] = len(device.events("config.rejected")) - rejected_before
    rec.figures["requests to the artifact server"] = len(device.server.requests) - requests_before
    return reason


def test_an_older_signed_artifact_is_refused(device: UpdatedDevice, attack) -> None:
    rec = attack("older signed artifact (version 1 after version 2): rollback", AREA)
    assert_refused(device, device.artifact("v1.onnx", 16, version=1), "[refused: anti-rollback]", rec)
    assert device.agent.artifacts.refusals.get("anti-rollback", 0) >= 1
    assert "v1.onnx" not in device.server.requests


def test_a_signed_reference_replayed_with_another_url_path_is_refused(device: UpdatedDevice, attack) -> None:
    rec = attack("signed reference replayed with another URL path", AREA)
    good = device.artifact("v3.onnx", 24, version=3)
    replayed = good.model_copy(update={"url": device.server.url("internal/admin?delete=all")})
    assert_refused(device, replayed, "[refused: signature]", rec)
    assert not any(r.startswith("internal") for r in device.server.requests)


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://169.254.169.254/latest/v3.onnx", "not in agent.remote_policy.artifact_hosts"),
        ("http://localhost:{port}/v3.onnx", "not in agent.remote_policy.artifact_hosts"),
        ("file:///etc/passwd", "allowed folders"),
        ("https://127.0.0.1:{port}/v3.onnx", "scheme https:// is not allowed for artifacts"),
    ],
)
def test_a_signed_reference_replayed_outside_the_remote_policy_is_refused(
    device: UpdatedDevice, attack, url: str, rule: str
) -> None:
    url = url.format(port=device.server.httpd.server_port)
    rec = attack(f"signed reference replayed with the URL {url}", AREA)
    good = device.artifact("v3.onnx", 24, version=3)
    reason = assert_refused(device, good.model_copy(update={"url": url}), rule, rec)
    assert "model.artifact.url" in reason and "remote policy" in reason


@pytest.mark.parametrize(
    ("fields", "rule", "what"),
    [
        ({"expires": 1_000_000}, "[refused: expired]", "expired metadata"),
        ({"target": "doors-west"}, "[refused: target]", "a reference signed for another target"),
        ({"key": "other"}, "[refused: unknown key]", "a reference signed by an unknown key"),
    ],
)
def test_references_that_break_a_trust_rule_are_refused_before_downloading(
    device: UpdatedDevice, attack, tmp_path: Path, fields: dict[str, Any], rule: str, what: str
) -> None:
    rec = attack(what, AREA)
    if fields.get("key") == "other":
        generate_keypair(tmp_path / "other.key", tmp_path / "other.pub")
        fields = {"key": tmp_path / "other.key"}
    ref = device.artifact("v4.onnx", 20, version=4, **fields)
    before = device.agent.artifacts.refusals
    assert_refused(device, ref, rule, rec)
    assert "v4.onnx" not in device.server.requests
    rule_name = rule.removeprefix("[refused: ").removesuffix("]")
    assert device.agent.artifacts.refusals[rule_name] == before.get(rule_name, 0) + 1


@pytest.mark.parametrize(
    ("agent", "what"),
    [
        ({"artifact_allow_rollback": [{"target": TARGET, "version": 1}]}, "the rollback override"),
        ({"artifact_public_keys": ["/tmp/attacker.pub"]}, "an attacker's public key"),
        ({"artifact_targets": ["doors-west"]}, "the device's artifact targets"),
        ({"allow_unsigned_artifacts": True}, "unsigned artifacts"),
        ({"remote_policy": {"artifact_hosts": ["169.254.169.254"]}}, "the artifact hosts of the remote policy"),
    ],
)
def test_a_remote_config_cannot_loosen_the_update_rules(
    device: UpdatedDevice, attack, agent: dict[str, Any], what: str
) -> None:
    rec = attack(f"remote config setting {what} (then an older signed artifact)", AREA)
    older = device.artifact("v1.onnx", 16, version=1, target=TARGET)
    report = device.push_artifact(older, agent=agent)
    assert report.outcome == "rejected", report
    field = next(iter(agent))
    reason = next((e for e in report.errors if f"agent.{field}" in e), None)
    assert reason is not None, report.errors
    assert report.active_version == device.good_version and "v1.onnx" not in device.server.requests
    device.assert_still_serving()
    rec.refused_because(reason)


def test_bytes_beyond_the_signed_length_are_refused(device: UpdatedDevice, attack) -> None:
    rec = attack("a server sending bytes beyond the signed length", AREA)
    ref = device.artifact("long.onnx", 12, version=5)
    device.server.extra["long.onnx"] = b"\0" * 1_000_000
    assert_refused(device, ref, "more than the", rec, fetched=True)


def test_a_server_that_closes_early_leaves_no_partial_file(device: UpdatedDevice, attack) -> None:
    rec = attack("a server announcing the signed size and closing early (every attempt)", AREA)
    ref = device.artifact("short.onnx", 14, version=5)
    device.server.close_early.add("short.onnx")
    assert_refused(device, ref, "download failed after 3 attempt(s)", rec, fetched=True)
    assert device.server.requests.count("short.onnx") == 3
    rec.figures["bytes left in staging"] = sum(p.stat().st_size for p in device.staging.rglob("*") if p.is_file())
    assert rec.figures["bytes left in staging"] == 0


def test_a_1_byte_per_second_server_does_not_block_remote_configuration(device: UpdatedDevice, attack) -> None:
    rec = attack("a 1 byte/s artifact server while another desired config arrives", AREA)
    slow = device.artifact("slow.onnx", 18, version=6)
    device.server.trickle.add("slow.onnx")
    waiting = device.publish_artifact(slow)
    wait_until(lambda: any(e.details["version"] == waiting for e in device.events("config.waiting_for_download")))
    wait_until(lambda: list(device.staging.glob("*.part")), timeout=5)  # the trickle has started
    assert device.agent.remote.waiting_version == waiting

    started = time.monotonic()
    report = device.push_artifact(None)  # a config that needs no download
    prompt_s = time.monotonic() - started
    assert (report.outcome, report.errors) == ("applied", []), report.errors
    device.good_version = report.version
    wait_until(lambda: not list(device.staging.glob("*.part")), timeout=5)  # the superseded download: cancelled
    assert device.agent.remote.waiting_version is None
    assert not [r for r in device.scheduler.of(TopicKind.CONFIG_REPORTED) if r.version == waiting]
    device.assert_still_serving()
    rec.refused_because(
        f"desired config v{waiting} waited for its download on the download worker; v{report.version} was applied "
        f"in {prompt_s:.2f} s and cancelled the slow download (.part deleted)"
    )
    rec.figures["seconds to apply the other config"] = round(prompt_s, 2)
    assert prompt_s < 5.0


def test_a_newer_artifact_supersedes_a_slow_download(device: UpdatedDevice, attack) -> None:
    rec = attack("a 1 byte/s artifact server, then a newer desired config with another artifact", AREA)
    slow = device.artifact("slower.onnx", 22, version=8)
    device.server.trickle.add("slower.onnx")
    waiting = device.publish_artifact(slow)
    wait_until(lambda: device.agent.remote.waiting_version == waiting)
    started = time.monotonic()
    newer = device.artifact("v9.onnx", 26, version=9)
    report = device.push_artifact(newer)
    prompt_s = time.monotonic() - started
    assert (report.outcome, report.errors) == ("applied", []), report.errors
    device.good_version = report.version
    assert device.agent.artifacts.current_sha256() == newer.sha256
    assert not list(device.staging.glob("*.part"))
    assert not [r for r in device.scheduler.of(TopicKind.CONFIG_REPORTED) if r.version == waiting]
    device.assert_still_serving()
    rec.refused_because(
        f"v{waiting}'s download was cancelled (.part deleted) when v{report.version} arrived; v{report.version}'s "
        f"artifact was downloaded and applied {prompt_s:.2f} s after it was published"
    )
    rec.figures["seconds to apply the newer artifact"] = round(prompt_s, 2)


def test_a_good_update_waits_for_its_download_then_applies(device: UpdatedDevice, attack) -> None:
    ref = device.artifact("v10.onnx", 28, version=10)
    report = device.push_artifact(ref)
    assert (report.outcome, report.errors) == ("applied", []), report.errors
    device.good_version = report.version
    assert any(e.details["version"] == report.version for e in device.events("config.waiting_for_download"))
    assert device.agent.artifacts.current_sha256() == ref.sha256
    device.assert_still_serving()


def test_a_device_starting_with_a_full_state_disk_serves(
    production_broker: ProductionBroker, pki: dict[str, Path], color_model: Path, tiny_fs: Path, attack
) -> None:
    rec = attack("device starting with a full state disk (a .part filled it; ENOSPC crash loop before)", AREA)
    agent_section = {"state_dir": str(tiny_fs / "state"), "mqtt": agent_mqtt(pki, "cam-a")}
    config = agent_config(tiny_fs.parent, color_model, production_broker.port, "cam-a", agent=agent_section)
    first = DeviceAgent(config).start()
    try:
        assert first.client.wait_connected(10), first.client.last_error
        wait_until(lambda: first.controller.stats.results >= 3)
    finally:
        first.stop()
    filler = fill(tiny_fs)
    assert os.statvfs(tiny_fs).f_bavail == 0

    started = time.monotonic()
    agent = DeviceAgent(config).start()  # raised OSError ENOSPC (the session counter) before
    try:
        assert agent.client.wait_connected(10), agent.client.last_error
        wait_until(lambda: agent.controller.stats.results >= 3, timeout=20)
        serving_s = time.monotonic() - started
        assert agent.session_id > first.session_id
    finally:
        agent.stop()
        filler.unlink()
    rec.refused_because(
        f"started with 0 bytes free: session {agent.session_id} (counter rewritten in place), outbox opened on its "
        f"released reserve, results served {serving_s:.2f} s after the start"
    )
    rec.figures["seconds to the third result"] = round(serving_s, 2)
    rec.figures["state writes refused"] = agent.store.refused_writes
