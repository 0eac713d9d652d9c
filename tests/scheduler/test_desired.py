"""``scheduler.desired``: the device config a workload becomes, and the checks the API applies to it;
``scheduler.desired_publisher``: signed desired documents, re-asserted when overwritten."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from lepton_edge.config.device import DeviceConfig
from lepton_edge.config.workloads import MAX_MODELS, MAX_WORKLOADS
from lepton_edge.core.errors import ConfigError
from lepton_edge.device.signing import generate_keypair
from lepton_edge.fleet.protocol import (
    MAX_PAYLOAD_BYTES,
    DesiredConfig,
    TopicKind,
    config_desired_topic,
    encode,
    subscription,
)
from lepton_edge.scheduler.desired import (
    desired_size,
    device_config_for,
    device_conflicts,
    device_document,
    model_name,
    split_document,
    workload_problems,
)
from lepton_edge.scheduler.desired_publisher import DesiredSigner
from lepton_edge.scheduler.models import Workload
from lepton_edge.scheduler.service import SchedulerService
from lepton_edge.scheduler.simulator import FleetSimulator
from tests.support.scheduler import DesiredRecorder, fast_config, wait_until, workload


def _workload(**fields: Any) -> Workload:
    return Workload(
        **{"workload_id": "w1", "source_uri": "rtsp://10.1.2.3/main", "model": "det.onnx", "required_fps": 5, **fields}
    )


def _fields(problems: list[dict[str, Any]]) -> dict[str, str]:
    return {".".join(str(p) for p in e["loc"][1:]): e["msg"] for e in problems}


def test_a_plain_workload_and_a_valid_config_have_no_problems() -> None:
    assert workload_problems(_workload()) == []
    config = {"postprocess": {"type": "detect", "conf_threshold": 0.4}, "pipeline": {"stats_interval_s": 2}}
    assert workload_problems(_workload(config=config)) == []
    assert device_config_for(_workload(config=config))["postprocess"]["conf_threshold"] == 0.4


@pytest.mark.parametrize(
    ("config", "field", "message"),
    [
        ({"threshold": 0.4}, "config.threshold", "Extra inputs"),
        ({"postprocess": {"type": "detect", "conf_threshold": "high"}}, "config.postprocess.detect.conf_threshold",
         "valid number"),
        ({"postprocess": {"type": "detect", "conf_threshold": 7}}, "config.postprocess.detect.conf_threshold",
         "less than or equal to 1"),
        ({"source": {"uri": "rtsp://x", "loop": "sometimes"}}, "config.source.loop", "valid boolean"),
        ({"idle": True}, "config", "idle: true runs no pipeline"),
        ({"device_id": "cam-7"}, "config.device_id", "identity is local"),
    ],
)  # fmt: skip
def test_schema_problems_name_the_field_of_the_workload(config: dict[str, Any], field: str, message: str) -> None:
    problems = _fields(workload_problems(_workload(config=config)))
    assert field in problems, problems
    assert message in problems[field], problems


def test_a_config_over_the_protocol_limit_is_one_problem() -> None:
    big = {"sinks": [{"type": "console", "note": "x" * MAX_PAYLOAD_BYTES}]}
    problems = workload_problems(_workload(config=big))
    assert len(problems) == 1 and problems[0]["loc"] == ("body", "config")
    assert f"{MAX_PAYLOAD_BYTES}-byte payload limit" in problems[0]["msg"]


def test_the_size_check_assumes_the_widest_envelope() -> None:
    config = device_config_for(_workload())
    assert desired_size(config) > len(str(config))


# --------------------------------------------------------------------- a device's document: its workloads


def test_a_device_document_shares_one_model_entry_among_the_workloads_of_one_model() -> None:
    artifact = {"url": "https://a/det.onnx", "size": 1, "sha256": "ab" * 32}
    front = _workload(workload_id="front", model="models/Det v8.onnx", artifact=artifact,
                      config={"source": {"max_frame_age_ms": 200}, "postprocess": {"type": "detect"}})
    back = _workload(workload_id="back", source_uri="rtsp://10.1.2.4/main", model="models/Det v8.onnx",
                     artifact=artifact, config={"sinks": [{"type": "jsonl", "path": "out/back.jsonl"}]})
    other = _workload(workload_id="side", model="cls.onnx", config={"backend": {"type": "onnxruntime"}})
    doc = device_document([other, front, back])
    assert doc == device_document([back, other, front])  # any order: the same document
    (shared,) = {doc["workloads"][w]["model"] for w in ("front", "back")}
    assert shared.startswith("det-v8-") and shared == model_name({"path": "models/Det v8.onnx", "artifact": artifact})
    assert doc["models"][shared] == {"path": "models/Det v8.onnx", "artifact": artifact}
    assert doc["models"][doc["workloads"]["side"]["model"]] == {"path": "cls.onnx", "backend": {"type": "onnxruntime"}}
    assert doc["streams"] == {"back": {"uri": "rtsp://10.1.2.4/main"}, "front": {"uri": "rtsp://10.1.2.3/main",
                              "max_frame_age_ms": 200}, "side": {"uri": "rtsp://10.1.2.3/main"}}
    assert doc["workloads"]["front"] == {"stream": "front", "model": shared, "postprocess": {"type": "detect"}}
    assert set(doc) == {"streams", "models", "workloads"}

    # moving one workload off leaves the others' entries as they were: the device changes only that one
    without = device_document([front, other])
    assert without["workloads"]["front"] == doc["workloads"]["front"] and "back" not in without["streams"]
    # a workload that sets the model differently gets its own entry
    tuned = back.model_copy(update={"config": {"model": {"task": "detect"}}})
    apart = device_document([front, tuned])
    assert apart["workloads"]["front"]["model"] != apart["workloads"]["back"]["model"]
    assert len(apart["models"]) == 2


def test_each_workload_of_a_document_is_the_single_form_config_the_api_validated() -> None:
    a = _workload(workload_id="a", config={"postprocess": {"type": "detect", "conf_threshold": 0.4},
                                           "backend": {"type": "onnxruntime"}, "pipeline": {"stats_interval_s": 2}})
    b = _workload(workload_id="b", source_uri="synthetic://shapes", model="m/other.onnx")
    split = split_document(device_document([a, b]))
    assert split == {"a": device_config_for(a), "b": {**device_config_for(b), "pipeline": {"stats_interval_s": 2}}}
    assert split_document(device_config_for(a)) == {"main": device_config_for(a)}
    assert split_document({"idle": True}) == {} and split_document({"workloads": {}}) == {}
    broken = split_document({"streams": {}, "models": {}, "workloads": {"x": {"stream": "nope", "model": "nope"}}})
    assert broken == {"x": {}}  # no source, no model: the device schema says so


def test_workloads_that_cannot_share_a_device_are_named_with_the_reason() -> None:
    base = _workload(workload_id="base", config={"pipeline": {"stats_interval_s": 2},
                                                 "sinks": [{"type": "jsonl", "path": "out/r.jsonl"}]})
    same = _workload(workload_id="same", config={"pipeline": {"stats_interval_s": 2}})
    other = _workload(workload_id="other", config={"pipeline": {"stats_interval_s": 5}})
    nested = _workload(workload_id="nested", config={"pipeline": {"latency_window": 50}})
    writer = _workload(workload_id="writer", config={"sinks": [{"type": "jsonl", "path": "out/r.jsonl"}]})
    conflicts = device_conflicts([base, same, other, nested, writer])
    assert conflicts == {
        "other": "device-level setting pipeline.stats_interval_s differs from workload base's",
        "writer": "writes sink file 'out/r.jsonl', as workload base does",
    }
    assert device_conflicts([other, base]) == {
        "base": "device-level setting pipeline.stats_interval_s differs from workload other's"
    }  # the first ones stay
    console = [_workload(workload_id=f"con{i}", config={"sinks": [{"type": "console"}]}) for i in range(2)]
    assert device_conflicts(console) == {"con1": "has a console sink, as workload con0 does (one console per device)"}
    signed = [_workload(workload_id=f"s{i}", model=f"m{i}.onnx", artifact={"url": f"https://a/m{i}.onnx", "size": 1,
                                                                           "sha256": f"{i}" * 64}) for i in range(2)]
    assert "one artifact per device" in device_conflicts(signed)["s1"]
    assert device_conflicts([signed[0], signed[0].model_copy(update={"workload_id": "again"})]) == {}  # one model
    many = [_workload(workload_id=f"n{i:02d}") for i in range(MAX_WORKLOADS + 2)]
    assert list(device_conflicts(many)) == [f"n{MAX_WORKLOADS}", f"n{MAX_WORKLOADS + 1}"]
    models = [_workload(workload_id=f"k{i:02d}", model=f"k{i}.onnx") for i in range(MAX_MODELS + 1)]
    assert list(device_conflicts(models)) == [f"k{MAX_MODELS}"]
    colour = [_workload(workload_id=f"c{i}", config={"cascade": [{"name": "colour", "model": {"path": f"c{i}.onnx",
                                                                  "task": "classify"}}]}) for i in range(2)]
    assert "cascade model 'colour' differs" in device_conflicts(colour)["c1"]
    half = {"postprocess": {"type": "detect", "note": "x" * (MAX_PAYLOAD_BYTES // 2)}}
    large = [_workload(workload_id=f"big{i}", config=half) for i in range(3)]
    assert all(desired_size(device_document([w])) <= MAX_PAYLOAD_BYTES for w in large)  # each fits alone...
    too_big = device_conflicts(large)
    assert list(too_big) == ["big1", "big2"] and "payload limit" in too_big["big1"]  # ...not together


def test_the_device_schema_accepts_a_document_of_several_workloads_with_cascades() -> None:
    cascade = {"name": "colour", "model": {"path": "cls.onnx", "task": "classify"}, "min_size": 8}
    workloads = [
        _workload(workload_id="front", config={"cascade": [cascade], "postprocess": {"type": "detect"}}),
        _workload(workload_id="back", source_uri="synthetic://shapes", config={"cascade": [cascade]}),
        _workload(workload_id="side", model="other.onnx", config={"sinks": [{"type": "jsonl", "path": "o.jsonl"}]}),
    ]
    assert all(workload_problems(w) == [] for w in workloads) and device_conflicts(workloads) == {}
    document = device_document(workloads)
    assert document["workloads"]["front"]["cascade"] == [{"model": "colour", "min_size": 8}]
    assert document["models"]["colour"] == {"path": "cls.onnx", "task": "classify"}  # one entry, shared
    config = DeviceConfig.model_validate(document)
    assert config.multi and sorted(config.workload_views()) == ["back", "front", "side"]
    assert split_document(document) == {w.workload_id: device_config_for(w) for w in workloads}


# ------------------------------------------------------------------ signed desired documents, re-asserted


@pytest.fixture
def signing_key(tmp_path: Path) -> Path:
    generate_keypair(tmp_path / "desired.key", tmp_path / "desired.pub")
    return tmp_path / "desired.key"


def test_the_signer_refuses_a_missing_file_a_public_key_and_a_key_that_is_not_ed25519(
    tmp_path: Path, signing_key: Path
) -> None:
    rsa_key = tmp_path / "rsa.key"
    rsa_key.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    for path, message in (
        (tmp_path / "absent.key", "cannot read"),
        (signing_key.with_suffix(".pub"), "not an unencrypted PEM private key"),
        (rsa_key, "not an ed25519 key"),
    ):
        with pytest.raises(ConfigError, match=message):
            DesiredSigner(path)


def test_a_signature_binds_the_device_the_version_and_the_config(signing_key: Path) -> None:
    signer = DesiredSigner(signing_key)
    desired = DesiredConfig(version=3, config={"idle": True}, issued_at=time.time(), issued_by="r1")
    signed = signer.sign("cam-1", desired)
    assert signer.signed_it("cam-1", signed)
    assert not signer.signed_it("cam-2", signed)
    assert not signer.signed_it("cam-1", signed.model_copy(update={"version": 4}))
    assert not signer.signed_it("cam-1", signed.model_copy(update={"config": {"idle": False}}))
    assert not signer.signed_it("cam-1", desired)  # unsigned


def test_a_signed_document_still_fits_the_size_check() -> None:
    assert desired_size({"idle": True}) > len(_SIGNATURE_FIELD)  # the check assumes a signature is present
    with_signature = DesiredConfig(
        version=2**53 - 1, config={"idle": True}, issued_at=9_999_999_999.999, issued_by="x" * 128,
        signature="A" * 86 + "==",
    )  # fmt: skip
    assert len(encode(with_signature)) <= desired_size({"idle": True})


_SIGNATURE_FIELD = ',"signature":"' + "A" * 86 + '=="'


@pytest.mark.integration
def test_pushes_are_signed_and_after_a_restart_the_issued_document_is_recognised_and_garbage_replaced(
    fresh_broker, make_mqtt_client, tmp_path: Path, signing_key: Path, unique: str
) -> None:
    config = fast_config(fresh_broker.port, f"sqlite:///{tmp_path}/fleet.db", desired_signing_key=str(signing_key))
    recorder = DesiredRecorder()
    watcher = make_mqtt_client(fresh_broker, f"watcher-{unique}")
    watcher.subscribe(subscription(TopicKind.CONFIG_DESIRED), recorder)
    watcher.start()
    assert watcher.wait_connected(5)
    sim = FleetSimulator("127.0.0.1", fresh_broker.port, 1, rate_hz=5.0, prefix=unique, mode="device").start()
    (device,) = sim.devices
    try:
        first = SchedulerService(config).start()
        try:
            first.add_workload(workload("w1"))
            issued = wait_until(lambda: recorder.latest(device), 20, "a desired document")
        finally:
            first.stop()
        assert issued.signature is not None and DesiredSigner(signing_key).signed_it(device, issued)

        second = SchedulerService(config).start()  # sees the retained document it has no memory of
        attacker = make_mqtt_client(fresh_broker, f"attacker-{unique}")
        attacker.start()
        assert attacker.wait_connected(5)
        try:
            wait_until(lambda: second.is_leader and len(second.control) == 0, 10, "the new leader idle")
            time.sleep(0.5)
            assert second.counts["desired_foreign"] == 0, "its own retained document was taken for a foreign one"
            forged = issued.model_copy(update={"config": {"idle": True}})  # the old signature, new content
            assert attacker.publish(config_desired_topic(device), encode(forged), retain=True).wait(5)
            wait_until(lambda: second.counts["desired_reasserted"] >= 1, 10, "the document re-asserted")
            wait_until(lambda: recorder.latest(device) == issued, 10, "the issued document back")
        finally:
            second.stop()

        # garbage retained while no scheduler runs: the next one finds a version the store never issued
        garbage = DesiredConfig(version=issued.version + 1000, config={"idle": True}, issued_at=1.0, issued_by="x")
        assert attacker.publish(config_desired_topic(device), encode(garbage), retain=True).wait(5)
        third = SchedulerService(config).start()
        try:
            old_versions = (issued.version, garbage.version)
            renewed = wait_until(
                lambda: (d := recorder.latest(device)) is not None and d.version not in old_versions and d,
                20,
                "a new document from the planner",
            )
            assert DesiredSigner(signing_key).signed_it(device, renewed) and third.counts["desired_foreign"] >= 1
        finally:
            third.stop()
    finally:
        sim.stop()


@pytest.mark.integration
def test_a_flood_of_foreign_documents_is_answered_once_a_second_and_ends_with_the_schedulers(
    fresh_broker, make_mqtt_client, tmp_path: Path, unique: str
) -> None:
    service = SchedulerService(fast_config(fresh_broker.port, f"sqlite:///{tmp_path}/fleet.db")).start()
    sim = FleetSimulator("127.0.0.1", fresh_broker.port, 1, rate_hz=5.0, prefix=unique, mode="device").start()
    (device,) = sim.devices
    recorder = DesiredRecorder()
    watcher = make_mqtt_client(fresh_broker, f"watcher-{unique}")
    watcher.subscribe(subscription(TopicKind.CONFIG_DESIRED, device), recorder)
    watcher.start()
    attacker = make_mqtt_client(fresh_broker, f"attacker-{unique}")
    attacker.start()
    try:
        assert watcher.wait_connected(5) and attacker.wait_connected(5)
        service.add_workload(workload("w1"))
        issued = wait_until(lambda: recorder.latest(device), 20, "a desired document")
        started = time.monotonic()
        for i in range(200):
            garbage = DesiredConfig(version=issued.version + 1 + i, config={"idle": True}, issued_at=1.0, issued_by="x")
            attacker.publish(config_desired_topic(device), encode(garbage), retain=True)
        wait_until(lambda: service.counts["desired_foreign"] >= 200, 10, "every foreign document seen")
        elapsed = time.monotonic() - started
        wait_until(lambda: recorder.latest(device) == issued, 10, "the scheduler's document last")
        assert service.counts["desired_reasserted"] <= elapsed + 2, "re-asserted more than once a second"
    finally:
        sim.stop()
        service.stop()
