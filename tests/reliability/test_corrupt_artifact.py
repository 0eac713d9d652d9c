"""Scenario 6: remote config pushes corrupt model artifacts; each is refused or rolled back, the old model
keeps serving, and a good artifact afterwards still goes through."""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from lepton_edge.config.fleet import MqttConfig
from lepton_edge.fleet.mqtt import MqttClient
from lepton_edge.fleet.protocol import DesiredConfig, TopicKind, config_desired_topic, encode
from tests.device.models import fails_at_inference
from tests.reliability.harness import (
    DeviceProcess,
    account,
    device_config,
    wait_all_delivered,
    wait_until,
)
from tests.support.http_server import LoopbackServer
from tests.support.onnx_models import mean_color_classifier

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

OLD_LABELS = {"red", "green", "blue"}


class ArtifactServer(LoopbackServer):
    """Serves the files of ``root`` on loopback; names in ``truncated`` are cut in half on every request
    (the full Content-Length is announced, then the connection closes)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.truncated: set[str] = set()
        self.requests: list[str] = []
        super().__init__()

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        name = req.path.lstrip("/")
        self.requests.append(name)
        path = self.root / name
        if not path.is_file():
            req.send_error(404)
            return
        data = path.read_bytes()
        req.send_response(200)
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        if name in self.truncated:
            req.wfile.write(data[: len(data) // 2])
            req.close_connection = True
            return
        req.wfile.write(data)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ArtifactServer]:
    root = tmp_path / "www"
    root.mkdir()
    srv = ArtifactServer(root)
    yield srv
    srv.close()


def reference(path: Path, url: str, **overrides: Any) -> dict[str, Any]:
    data = path.read_bytes()
    return {"url": url, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), **overrides}


def desired(version: int, base: dict[str, Any], artifact: dict[str, Any]) -> bytes:
    config = {k: v for k, v in base.items() if k not in ("agent", "device_id")}
    config["model"] = {"path": "unused.onnx", "artifact": artifact}
    return encode(
        DesiredConfig(version=version, config=config, issued_at=time.time(), issued_by="reliability")
    )


def test_corrupt_artifacts_are_refused_or_rolled_back_and_the_old_model_keeps_serving(
    scenario, broker, subscriber, device_id, devices, color_model, tmp_path, server
):
    record = scenario(
        "6 corrupt artifact",
        "remote config pushes, in turn: an artifact whose sha256 does not match, one whose download is cut "
        "in half, a file with the right sha256 that is not a model, and a model that fails on every frame; "
        "then a good one",
    )
    config = device_config(
        tmp_path,
        color_model,
        broker.port,
        device_id,
        agent={
            "allow_unsigned_artifacts": True,
            "remote_policy": {"artifact_schemes": ["http"], "artifact_hosts": ["127.0.0.1"]},
        },
    )
    device = DeviceProcess(tmp_path / "device", config)
    devices.append(device)
    device.start()
    wait_until(lambda: subscriber.count(TopicKind.RESULT) >= 10, 60, "results from the old model")

    good = mean_color_classifier(server.root / "good.onnx", size=16)
    fails = fails_at_inference(server.root / "fails.onnx")
    (server.root / "garbage.onnx").write_bytes(b"\x08\x07this is not an onnx model" * 40)
    other = hashlib.sha256(b"another file").hexdigest()
    server.truncated.add("cut.onnx")
    (server.root / "cut.onnx").write_bytes(good.read_bytes())
    pushes = [
        (1, "wrong sha256", reference(good, server.url("good.onnx"), sha256=other), "rejected", "sha256"),
        (2, "truncated download", reference(good, server.url("cut.onnx")), "rejected", "download failed"),
        (3, "not a model", reference(server.root / "garbage.onnx", server.url("garbage.onnx")), "rejected",
         "garbage.onnx"),
        (4, "fails on every frame", reference(fails, server.url("fails.onnx")), "rolled_back",
         "health check"),
    ]  # fmt: skip
    operator = MqttClient(MqttConfig(host="127.0.0.1", port=broker.port, client_id=f"op-{device_id}"))
    operator.start()
    try:
        assert operator.wait_connected(10), operator.last_error
        for version, what, artifact, outcome, reason in pushes:
            pushed_at = time.monotonic()
            operator.publish(config_desired_topic(device_id), desired(version, config, artifact), retain=True)
            report = subscriber.wait(
                TopicKind.CONFIG_REPORTED,
                lambda r, v=version: r.version == v,
                30,
                f"the report of v{version}",
            )
            took = time.monotonic() - pushed_at
            assert report.outcome == outcome, report
            assert report.active_version == 0
            assert any(reason in e for e in report.errors), report.errors
            count = subscriber.count(TopicKind.RESULT)
            wait_until(
                lambda c=count: subscriber.count(TopicKind.RESULT) >= c + 5, 20, f"results after v{version}"
            )
            record.note(f"v{version} ({what}): {outcome} after {took:.1f} s: {report.errors[0][:160]}")
        served_old = [r for r in subscriber.decoded(TopicKind.RESULT) if r.classes]
        assert {r.classes[0].label for r in served_old} <= OLD_LABELS  # never a label of the failing model
        events = {e.kind for e in subscriber.decoded(TopicKind.EVENT)}
        assert {"config.rejected", "config.rolled_back"} <= events
        telemetry = subscriber.decoded(TopicKind.TELEMETRY)[-1]
        assert telemetry.config_version == 0 and telemetry.artifact_id == color_model.name

        pushed_at = time.monotonic()
        operator.publish(
            config_desired_topic(device_id),
            desired(5, config, reference(good, server.url("good.onnx"))),
            retain=True,
        )
        report = subscriber.wait(TopicKind.CONFIG_REPORTED, lambda r: r.version == 5, 30, "the report of v5")
        assert report.outcome == "applied", report
        record.recovery_s = time.monotonic() - pushed_at
        record.recovery_means = (
            "for the good artifact pushed afterwards: from the push to its `applied` report"
        )
        sha = reference(good, "")["sha256"]
        subscriber.wait(
            TopicKind.TELEMETRY,
            lambda t: t.artifact_id == f"sha256:{sha}",
            10,
            "telemetry naming the new artifact",
        )
    finally:
        operator.stop(timeout=1.0)
    arrivals = [d.at for d in subscriber.all(TopicKind.RESULT)]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    record.metrics["longest_result_gap_s"] = round(max(gaps), 2)
    empty = sum(1 for r in subscriber.decoded(TopicKind.RESULT) if not r.classes)
    record.metrics["empty_results_during_health_check"] = empty
    record.note(
        "results kept flowing from the old model throughout (its labels only); the failing model ran only "
        f"during its health-check window ({empty} result(s) without classes), then was swapped back; "
        "config.rejected / config.rolled_back events were delivered; telemetry kept the old artifact id and "
        "config version 0"
    )

    code, _ = device.terminate()
    assert code == 0, device.log_tail()
    wait_all_delivered(device, subscriber)
    accounting = account(device, subscriber)
    record.set_accounting(accounting.summary())
    assert accounting.durable_lost == []
    assert accounting.conflicting_duplicates == []


def test_a_failed_first_artifact_does_not_stay_current_in_the_store(scenario, tmp_path, color_model):
    from lepton_edge.config.device import parse_config
    from lepton_edge.device.controller import RuntimeController
    from lepton_edge.device.updates import ArtifactStore

    record = scenario(
        "6b corrupt first artifact: store state",
        "a device running a local model file is sent its first artifact, which does not load; the artifact "
        "store's `current` link is read afterwards",
    )
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07this is not an onnx model" * 40)
    base = device_config(tmp_path, color_model, 1883, "store-check")
    store = ArtifactStore(tmp_path / "artifacts", None, 10**8, allow_unsigned=True)
    controller = RuntimeController(parse_config(base, "local"), artifacts=store).start()
    try:
        bad = {k: v for k, v in base.items()}
        bad["model"] = {"path": "unused.onnx", "artifact": reference(garbage, garbage.as_uri())}
        result = controller.apply(parse_config(bad, "desired v1"), 1)
        assert result.outcome == "rejected"
        assert controller.artifact_id == color_model.name  # the local model still runs
        record.note(f"after the rejection the store's current artifact is {store.current()}")
        record.note("expected: no artifact current, since the local model file is what runs")
        assert store.current() is None
    finally:
        controller.stop()
