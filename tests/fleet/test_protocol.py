"""The MQTT protocol: topics, exact payloads, rejection of bad payloads, presence and sequence rules."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lepton_edge.core.results import Classification, Detections, Keypoints, Masks, Result, RotatedBoxes
from lepton_edge.fleet import protocol as p

T = 1700000000.25

EXAMPLES: dict[p.TopicKind, p.Message] = {
    p.TopicKind.BIRTH: p.Birth(
        device_id="cam-01",
        session_id=7,
        timestamp=T,
        capabilities=p.Capabilities(
            accelerator="cpu",
            runtimes={"onnxruntime": "1.18.0"},
            cpu_count=4,
            memory_bytes=8589934592,
            sources=["front"],
            artifacts=["yolov8n-int8"],
        ),
        config_version=3,
        software_version="0.1.0",
    ),
    p.TopicKind.DEATH: p.Death(device_id="cam-01", session_id=7, reason="connection_lost"),
    p.TopicKind.TELEMETRY: p.Telemetry(
        device_id="cam-01",
        session_id=7,
        seq=12,
        timestamp=T,
        interval_s=10.0,
        fps=29.5,
        frames=3540,
        drops={"stale": 3, "busy": 10},
        latency_ms={"infer": p.Percentiles(p50=8.5, p90=9.25, p99=12.0, max=15.5)},
        frame_age_ms=p.Percentiles(p50=20.0, p90=25.0, p99=30.0, max=41.0),
        sources={"front": "running"},
        artifact_id="yolov8n-int8",
        cpu_percent=42.5,
        memory=p.Usage(used_bytes=1073741824, total_bytes=8589934592),
        disk=p.Usage(used_bytes=5000000000, total_bytes=32000000000),
        temperatures_c={"cpu": 55.5},
        gpu_percent=None,
        config_version=3,
        outbox=p.OutboxStatus(depth=2, bytes=512, dropped={"expired": 1}),
    ),
    p.TopicKind.RESULT: p.ResultMessage(
        device_id="cam-01",
        session_id=7,
        seq=99,
        message_id="cam-01:7:99",
        frame_seq=1234,
        source="front",
        timestamp=T,
        latency_ms=18.75,
        detections=[p.Detection(label="person", class_id=0, score=0.875, box=[10.0, 20.0, 110.5, 220.0])],
        durable=True,
    ),
    p.TopicKind.EVENT: p.Event(
        device_id="cam-01",
        session_id=7,
        id="cam-01:7:e5",
        kind="source.reconnected",
        severity="warning",
        message="source front reconnected after 3 attempts",
        details={"source": "front", "attempts": 3},
        timestamp=T,
    ),
    p.TopicKind.CONFIG_DESIRED: p.DesiredConfig(
        version=4,
        config={"model": {"path": "models/yolo.onnx"}, "source": {"uri": "rtsp://cam/stream"}},
        issued_at=T,
        issued_by="scheduler-a",
    ),
    p.TopicKind.CONFIG_REPORTED: p.ReportedConfig(
        device_id="cam-01",
        version=4,
        outcome="rejected",
        errors=["model.path: file not found"],
        timestamp=T,
        active_version=3,
    ),
    p.TopicKind.COMMAND: p.CommandRequest(name="snapshot", args={"source": "front"}),
    p.TopicKind.COMMAND_RESPONSE: p.CommandResponse(name="snapshot", status="ok", result={"bytes": 20480}),
    p.TopicKind.REBIRTH: p.RebirthRequest(reason="telemetry gap 12 -> 15", requested_by="scheduler-a", timestamp=T),
}

# The exact bytes on the wire. A change here is a protocol change: bump PROTOCOL_VERSION or stay compatible.
PINNED = {
    p.TopicKind.BIRTH: b'{"protocol":1,"device_id":"cam-01","session_id":7,"seq":0,"timestamp":1700000000.25,'
    b'"capabilities":{"accelerator":"cpu","runtimes":{"onnxruntime":"1.18.0"},"cpu_count":4,'
    b'"memory_bytes":8589934592,"sources":["front"],"artifacts":["yolov8n-int8"]},"config_version":3,'
    b'"software_version":"0.1.0"}',
    p.TopicKind.DEATH: b'{"device_id":"cam-01","session_id":7,"reason":"connection_lost"}',
    p.TopicKind.TELEMETRY: b'{"device_id":"cam-01","session_id":7,"seq":12,"timestamp":1700000000.25,'
    b'"interval_s":10.0,"fps":29.5,"frames":3540,"drops":{"stale":3,"busy":10},'
    b'"latency_ms":{"infer":{"p50":8.5,"p90":9.25,"p99":12.0,"max":15.5}},'
    b'"frame_age_ms":{"p50":20.0,"p90":25.0,"p99":30.0,"max":41.0},"sources":{"front":"running"},'
    b'"artifact_id":"yolov8n-int8","cpu_percent":42.5,"memory":{"used_bytes":1073741824,'
    b'"total_bytes":8589934592},"disk":{"used_bytes":5000000000,"total_bytes":32000000000},'
    b'"temperatures_c":{"cpu":55.5},"gpu_percent":null,"config_version":3,'
    b'"outbox":{"depth":2,"bytes":512,"dropped":{"expired":1}}}',
    p.TopicKind.RESULT: b'{"device_id":"cam-01","session_id":7,"seq":99,"message_id":"cam-01:7:99",'
    b'"frame_seq":1234,"source":"front","timestamp":1700000000.25,"latency_ms":18.75,'
    b'"detections":[{"label":"person","class_id":0,"score":0.875,"box":[10.0,20.0,110.5,220.0]}],'
    b'"classes":null,"durable":true}',
    p.TopicKind.EVENT: b'{"device_id":"cam-01","session_id":7,"id":"cam-01:7:e5","kind":"source.reconnected",'
    b'"severity":"warning","message":"source front reconnected after 3 attempts",'
    b'"details":{"source":"front","attempts":3},"timestamp":1700000000.25}',
    p.TopicKind.CONFIG_DESIRED: b'{"version":4,"config":{"model":{"path":"models/yolo.onnx"},'
    b'"source":{"uri":"rtsp://cam/stream"}},"issued_at":1700000000.25,"issued_by":"scheduler-a"}',
    p.TopicKind.CONFIG_REPORTED: b'{"device_id":"cam-01","version":4,"outcome":"rejected",'
    b'"errors":["model.path: file not found"],"timestamp":1700000000.25,"active_version":3}',
    p.TopicKind.COMMAND: b'{"name":"snapshot","args":{"source":"front"}}',
    p.TopicKind.COMMAND_RESPONSE: b'{"name":"snapshot","status":"ok","result":{"bytes":20480},"error":null}',
    p.TopicKind.REBIRTH: b'{"reason":"telemetry gap 12 -> 15","requested_by":"scheduler-a","timestamp":1700000000.25}',
}

KINDS = list(p.TopicKind)


def test_every_kind_has_a_schema_an_example_and_a_pinned_payload():
    assert set(p.SCHEMAS) == set(KINDS) == set(EXAMPLES) == set(PINNED)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_encode_is_pinned_and_round_trips(kind):
    message = EXAMPLES[kind]
    data = p.encode(message)
    assert data == PINNED[kind]
    decoded = p.decode(kind, data)
    assert type(decoded) is p.SCHEMAS[kind]
    assert decoded == message
    assert p.decode(kind.value, bytearray(data)) == message  # kind by name, payload as bytearray


# -- topics -------------------------------------------------------------------------------------------


def test_topic_names():
    assert p.birth_topic("cam-01") == "lepton/v1/devices/cam-01/birth"
    assert p.death_topic("cam-01") == "lepton/v1/devices/cam-01/death"
    assert p.telemetry_topic("cam-01") == "lepton/v1/devices/cam-01/telemetry"
    assert p.results_topic("cam-01") == "lepton/v1/devices/cam-01/results"
    assert p.events_topic("cam-01") == "lepton/v1/devices/cam-01/events"
    assert p.config_desired_topic("cam-01") == "lepton/v1/devices/cam-01/config/desired"
    assert p.config_reported_topic("cam-01") == "lepton/v1/devices/cam-01/config/reported"
    assert p.command_topic("cam-01", "snapshot") == "lepton/v1/devices/cam-01/cmd/snapshot"
    assert p.rebirth_topic("cam-01") == "lepton/v1/devices/cam-01/rebirth"
    assert p.response_topic("scheduler-a", "cam-01") == "lepton/v1/clients/scheduler-a/response/cam-01"
    assert p.response_subscription("scheduler-a") == "lepton/v1/clients/scheduler-a/response/+"
    assert p.FLEET_REBIRTH_TOPIC == "lepton/v1/fleet/rebirth"
    assert p.subscription(p.TopicKind.TELEMETRY) == "lepton/v1/devices/+/telemetry"
    assert p.subscription(p.TopicKind.COMMAND, "cam-01") == "lepton/v1/devices/cam-01/cmd/+"
    assert p.subscription(p.TopicKind.COMMAND_RESPONSE) == "lepton/v1/clients/+/response/+"


@pytest.mark.parametrize("kind", [k for k in KINDS if k is not p.TopicKind.COMMAND_RESPONSE], ids=lambda k: k.name)
def test_parse_topic_inverts_device_topic(kind):
    command = "reboot" if kind is p.TopicKind.COMMAND else None
    topic = p.device_topic(kind, "dev_1.a-b", command)
    assert p.parse_topic(topic) == p.ParsedTopic(kind, "dev_1.a-b", command)


def test_parse_topic_of_responses_and_fleet_rebirth():
    assert p.parse_topic(p.response_topic("op.1", "cam-01")) == p.ParsedTopic(
        p.TopicKind.COMMAND_RESPONSE, "cam-01", requester="op.1"
    )
    with pytest.raises(p.ProtocolError):
        p.parse_topic("lepton/v1/clients/op.1/response")  # no responding device
    assert p.parse_topic(p.FLEET_REBIRTH_TOPIC) == p.ParsedTopic(p.TopicKind.REBIRTH, None)


@pytest.mark.parametrize(
    "topic",
    [
        "other/v1/devices/a/birth",
        "lepton/v2/devices/a/birth",
        "lepton/v1/devices/a/unknown",
        "lepton/v1/devices/a",
        "lepton/v1/devices/a/cmd",
        "lepton/v1/devices/a/cmd/x/y",
        "lepton/v1/devices/a b/birth",
        "lepton/v1/devices/+/birth",
        "lepton/v1/clients/a/other",
    ],
)
def test_parse_topic_rejects_foreign_topics(topic):
    with pytest.raises(p.ProtocolError, match=re.escape(repr(topic))):
        p.parse_topic(topic)


@pytest.mark.parametrize("bad", ["", "a/b", "a+b", "#", "+", "has space", "x" * 65, "café", "a\nb", "a\0"])
def test_invalid_device_ids_are_rejected_everywhere(bad):
    with pytest.raises(p.ProtocolError, match="invalid device id"):
        p.birth_topic(bad)
    if bad != "+":  # "+" is the all-devices wildcard in a subscription
        with pytest.raises(p.ProtocolError, match="invalid device id"):
            p.subscription(p.TopicKind.BIRTH, bad)
    payload = json.loads(PINNED[p.TopicKind.DEATH])
    payload["device_id"] = bad
    with pytest.raises(p.ProtocolError, match="field `device_id`"):
        p.decode(p.TopicKind.DEATH, json.dumps(payload).encode())


def test_valid_edge_case_ids():
    assert p.validate_id("x" * 64) == "x" * 64
    assert p.birth_topic("A.b_c-9") == "lepton/v1/devices/A.b_c-9/birth"
    with pytest.raises(p.ProtocolError, match="invalid command name"):
        p.command_topic("dev", "a/b")
    with pytest.raises(p.ProtocolError, match="needs the command name"):
        p.device_topic(p.TopicKind.COMMAND, "dev")
    with pytest.raises(p.ProtocolError, match="response_topic"):
        p.device_topic(p.TopicKind.COMMAND_RESPONSE, "dev")


# -- rejection ----------------------------------------------------------------------------------------


def _with(kind: p.TopicKind, /, **changes) -> bytes:
    data = json.loads(PINNED[kind])
    for path, value in changes.items():
        target = data
        *parents, leaf = path.split("__")
        for key in parents:
            target = target[key]
        if value is _DELETE:
            del target[leaf]
        else:
            target[leaf] = value
    return json.dumps(data).encode()


_DELETE = object()


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_generic_rejections_name_the_kind_and_reason(kind):
    cases = {
        b"\xff\xfe{}": "not UTF-8",
        b"{not json": "not valid JSON",
        b"[1, 2]": "must be a JSON object",
        b'"text"': "must be a JSON object",
        b"": "not valid JSON",
        b'{"a": NaN}': "NaN is not valid JSON",
        b'{"a": Infinity}': "Infinity is not valid JSON",
        b'{"a": 1, "a": 2}': "duplicate key 'a'",
        b"[" * 10000 + b"]" * 10000: "nested deeper than 32",
        b'{"x": ' + b"1" * 5000 + b"}": "not valid JSON",
    }
    for payload, reason in cases.items():
        with pytest.raises(p.ProtocolError, match=re.escape(reason)) as info:
            p.decode(kind, payload, topic="lepton/v1/devices/d/x")
        assert f"{kind.value} message on 'lepton/v1/devices/d/x'" in str(info.value)
    with pytest.raises(p.ProtocolError, match="Extra inputs are not permitted"):
        p.decode(kind, _with(kind, surprise=1))


def test_size_is_checked_before_parsing():
    # Not UTF-8 and not JSON, but the size check must come first and say so.
    with pytest.raises(p.ProtocolError, match=f"over the {p.MAX_PAYLOAD_BYTES}-byte limit"):
        p.decode(p.TopicKind.EVENT, b"\xff" * (p.MAX_PAYLOAD_BYTES + 1))
    with pytest.raises(p.ProtocolError, match="must be bytes"):
        p.decode(p.TopicKind.EVENT, "a string")  # type: ignore[arg-type]
    with pytest.raises(p.ProtocolError, match="unknown topic kind 'bogus'"):
        p.decode("bogus", b"{}")


def test_nesting_inside_strings_does_not_count_and_real_nesting_is_limited():
    brackets_in_text = p.Event.model_validate(
        {**json.loads(PINNED[p.TopicKind.EVENT]), "message": "[[[[" * 200 + '\\"{{{' * 100}
    )
    assert p.decode(p.TopicKind.EVENT, p.encode(brackets_in_text)) == brackets_in_text
    nested: object = 1
    for _ in range(p.MAX_NESTING - 2):  # the details object and the payload object add two levels
        nested = [nested]
    ok = _with(p.TopicKind.EVENT, details={"deep": nested})
    assert p.decode(p.TopicKind.EVENT, ok).details["deep"] == nested
    too_deep = _with(p.TopicKind.EVENT, details={"deep": [nested]})
    with pytest.raises(p.ProtocolError, match="nested deeper"):
        p.decode(p.TopicKind.EVENT, too_deep)


BAD_VALUES = [
    (p.TopicKind.BIRTH, {"protocol": 2}, "protocol"),
    (p.TopicKind.BIRTH, {"seq": 1}, "seq"),
    (p.TopicKind.BIRTH, {"session_id": 0}, "session_id"),
    (p.TopicKind.BIRTH, {"session_id": "7"}, "session_id"),
    (p.TopicKind.BIRTH, {"session_id": 2**63}, "session_id"),
    (p.TopicKind.BIRTH, {"capabilities__cpu_count": 0}, "capabilities.cpu_count"),
    (p.TopicKind.BIRTH, {"capabilities__memory_bytes": -1}, "capabilities.memory_bytes"),
    (p.TopicKind.BIRTH, {"timestamp": -5}, "timestamp"),
    (p.TopicKind.BIRTH, {"timestamp": _DELETE}, "timestamp"),
    (p.TopicKind.DEATH, {"reason": "bored"}, "reason"),
    (p.TopicKind.TELEMETRY, {"seq": 0}, "seq"),
    (p.TopicKind.TELEMETRY, {"fps": -1.0}, "fps"),
    (p.TopicKind.TELEMETRY, {"fps": True}, "fps"),
    (p.TopicKind.TELEMETRY, {"cpu_percent": 101}, "cpu_percent"),
    (p.TopicKind.TELEMETRY, {"drops__stale": -3}, "drops.stale"),
    (p.TopicKind.TELEMETRY, {"drops__stale": 1.5}, "drops.stale"),
    (p.TopicKind.TELEMETRY, {"latency_ms__infer__p50": 99.0}, "latency_ms.infer"),
    (p.TopicKind.TELEMETRY, {"memory__used_bytes": 10**12}, "memory"),
    (p.TopicKind.TELEMETRY, {"temperatures_c__cpu": -300}, "temperatures_c.cpu"),
    (p.TopicKind.TELEMETRY, {"sources__front": "dancing"}, "sources.front"),
    (p.TopicKind.TELEMETRY, {"interval_s": 0}, "interval_s"),
    (p.TopicKind.RESULT, {"detections": [{"label": "a", "class_id": 0, "score": 1.5, "box": [0, 0, 1, 1]}]}, "score"),
    (p.TopicKind.RESULT, {"detections": [{"label": "a", "class_id": 0, "score": 0.5, "box": [0, 0, 1]}]}, "box"),
    (p.TopicKind.RESULT, {"classes": [{"label": "a", "class_id": 0, "score": 0.5}]}, "detections or classes"),
    (p.TopicKind.RESULT, {"durable": "yes"}, "durable"),
    (p.TopicKind.EVENT, {"severity": "apocalyptic"}, "severity"),
    (p.TopicKind.EVENT, {"kind": "Has Spaces"}, "kind"),
    (p.TopicKind.EVENT, {"message": "x" * 5000}, "message"),
    (p.TopicKind.CONFIG_DESIRED, {"version": 0}, "version"),
    (p.TopicKind.CONFIG_DESIRED, {"config": [1, 2]}, "config"),
    (p.TopicKind.CONFIG_DESIRED, {"config": "model: x"}, "config"),
    (p.TopicKind.CONFIG_REPORTED, {"outcome": "maybe"}, "outcome"),
    (p.TopicKind.CONFIG_REPORTED, {"errors": []}, "must say why"),
    (p.TopicKind.CONFIG_REPORTED, {"outcome": "applied"}, "applied config has no errors"),
    (p.TopicKind.CONFIG_REPORTED, {"outcome": "applied", "errors": []}, "active_version must equal version"),
    (p.TopicKind.TELEMETRY, {"models": {"m": {"fps": 1.0, "batch_mean": 1.0, "busy": 1.5, "streams": 1}}},
     "models.m.busy"),
    (p.TopicKind.TELEMETRY, {"models": {"m": {"fps": -1.0, "batch_mean": 1.0, "busy": 0.5, "streams": 1}}},
     "models.m.fps"),
    (p.TopicKind.TELEMETRY, {"models": {f"m{i}": {"fps": 1.0, "batch_mean": 1.0, "busy": 0.5, "streams": 1}
                                        for i in range(33)}}, "models"),
    (p.TopicKind.TELEMETRY, {"workloads": {"w": {"stream": "s", "model": "m", "fps": 1.0, "frames": 1,
                                                 "source_state": "running", "state": "sleeping"}}},
     "workloads.w.state"),
    (p.TopicKind.TELEMETRY, {"workloads": {"w": {"stream": "s", "fps": 1.0, "frames": 1, "source_state": "running",
                                                 "state": "running"}}}, "workloads.w.model"),
    (p.TopicKind.CONFIG_REPORTED, {"workloads": {"w": {"outcome": "rejected"}}}, "rejected or rolled back one says"),
    (p.TopicKind.CONFIG_REPORTED, {"workloads": {"w": {"outcome": "applied", "errors": ["x"]}}},
     "an applied workload has no errors"),
    (p.TopicKind.CONFIG_REPORTED, {"workloads": {f"w{i}": {"outcome": "applied"} for i in range(65)}}, "workloads"),
    (p.TopicKind.COMMAND, {"name": "a/b"}, "name"),
    (p.TopicKind.COMMAND, {"args": [1]}, "args"),
    (p.TopicKind.COMMAND_RESPONSE, {"status": "error"}, "must say why"),
    (p.TopicKind.COMMAND_RESPONSE, {"error": "boom"}, "`ok` response has no error"),
    (p.TopicKind.REBIRTH, {"requested_by": ""}, "requested_by"),
]


@pytest.mark.parametrize(("kind", "changes", "reason"), BAD_VALUES)
def test_wrong_types_and_impossible_values_are_rejected(kind, changes, reason):
    with pytest.raises(p.ProtocolError, match=re.escape(reason)) as info:
        p.decode(kind, _with(kind, **changes))
    assert str(info.value).startswith(f"{kind.value} message: invalid payload")


def test_per_workload_telemetry_and_outcomes_are_optional_and_round_trip():
    workload = {"stream": "front", "model": "sha256:" + "ab" * 32, "fps": 14.5, "frames": 870,
                "drops": {"stale": 2}, "latency_ms": {"p50": 30.0, "p90": 41.0, "p99": 55.0, "max": 60.0},
                "frame_age_ms": None, "source_state": "reconnecting", "state": "running", "error": "timeout"}
    model = {"fps": 58.0, "batch_mean": 3.5, "busy": 0.62, "streams": 4}
    payload = _with(p.TopicKind.TELEMETRY, workloads={"front-det": workload}, models={workload["model"]: model})
    telemetry = p.decode(p.TopicKind.TELEMETRY, payload)
    assert isinstance(telemetry, p.Telemetry)
    assert telemetry.workloads["front-det"].source_state == "reconnecting"
    assert telemetry.models[workload["model"]].busy == 0.62
    assert p.decode(p.TopicKind.TELEMETRY, p.encode(telemetry)) == telemetry
    assert p.encode(EXAMPLES[p.TopicKind.TELEMETRY]) == PINNED[p.TopicKind.TELEMETRY]  # empty maps: left out
    assert p.decode(p.TopicKind.TELEMETRY, PINNED[p.TopicKind.TELEMETRY]).workloads == {}  # older devices

    outcomes = {"a": {"outcome": "applied", "errors": []}, "b": {"outcome": "rolled_back", "errors": ["no frames"]}}
    report = p.decode(
        p.TopicKind.CONFIG_REPORTED,
        _with(p.TopicKind.CONFIG_REPORTED, outcome="applied", errors=[], active_version=4, workloads=outcomes),
    )
    assert isinstance(report, p.ReportedConfig)
    assert report.outcome == "applied" and report.workloads["b"].errors == ["no frames"]
    assert b'"workloads"' in p.encode(report) and b'"workloads"' not in PINNED[p.TopicKind.CONFIG_REPORTED]


def test_encode_refuses_oversized_messages():
    huge = p.CommandResponse(name="dump", status="ok", result=["x" * 1000] * 300)
    with pytest.raises(p.ProtocolError, match="over the 262144-byte limit"):
        p.encode(huge)


# -- fuzzing ------------------------------------------------------------------------------------------

_json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
_json_values = st.recursive(
    _json_leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
_field_names = st.sampled_from(
    sorted({name for schema in p.SCHEMAS.values() for name in schema.model_fields} | {"", "extra"})
)


@st.composite
def _payloads(draw, kind: p.TopicKind) -> bytes:
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return draw(st.binary(max_size=200))
    if choice == 1:
        return json.dumps(draw(_json_values)).encode()
    if choice == 2:  # deep nesting, valid or truncated
        depth = draw(st.integers(1, 3000))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        return opener * depth + b"1" + closer * draw(st.integers(0, depth))
    if choice == 3:  # huge strings and numbers
        n = draw(st.sampled_from([10, 1000, 100_000, p.MAX_PAYLOAD_BYTES]))
        return draw(st.sampled_from([b'{"message": "' + b"x" * n + b'"}', b"9" * n, b'"' + b"\\" * n + b'"']))
    # a valid payload with fields replaced, removed or added: reaches the schema validators
    data = json.loads(PINNED[kind])
    for _ in range(draw(st.integers(1, 3))):
        key = draw(_field_names | st.sampled_from(sorted(data)) if data else _field_names)
        if draw(st.booleans()) and key in data:
            del data[key]
        else:
            data[key] = draw(_json_values)
    text = json.dumps(data)
    if choice == 5 and text:  # and a corrupted byte
        i = draw(st.integers(0, len(text) - 1))
        text = text[:i] + draw(st.sampled_from(["\\", '"', "{", "]", "\ud800", "\u00e9"])) + text[i + 1 :]
    return text.encode("utf-8", "surrogatepass")


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_decode_only_ever_raises_protocol_error(kind, data):
    payload = data.draw(_payloads(kind))
    try:
        message = p.decode(kind, payload)
    except p.ProtocolError as e:
        assert str(e).startswith(f"{kind.value} message")
    else:
        assert isinstance(message, p.SCHEMAS[kind])
        assert p.decode(kind, p.encode(message)) == message


# -- presence and sequence rules ------------------------------------------------------------------------


def test_stale_death_rule():
    assert p.is_stale_death(5, p.Death(device_id="d", session_id=4, reason="connection_lost"))
    assert not p.is_stale_death(5, p.Death(device_id="d", session_id=5, reason="connection_lost"))
    assert not p.is_stale_death(5, p.Death(device_id="d", session_id=6, reason="shutdown"))


def test_sequence_tracker_reports_gaps_duplicates_and_sessions():
    tracker = p.SequenceTracker()
    assert tracker.birth(3) == p.Observation("new_session")
    assert tracker.observe(3, 1) == p.Observation("ok")
    assert tracker.observe(3, 2) == p.Observation("ok")
    gap = tracker.observe(3, 5)
    assert gap == p.Observation("gap", missing=2)
    assert gap.needs_rebirth and gap.accept
    assert tracker.observe(3, 5) == p.Observation("duplicate")
    assert tracker.observe(3, 4).accept is False  # late: older than the newest seen
    assert tracker.observe(2, 99) == p.Observation("stale_session")
    assert tracker.birth(2) == p.Observation("stale_session")
    # A new session whose birth was missed: messages 1..6 are unknown, ask for a rebirth.
    missed = tracker.observe(4, 7)
    assert missed == p.Observation("new_session", missing=6) and missed.needs_rebirth
    assert tracker.observe(4, 8) == p.Observation("ok")
    assert tracker.birth(5) == p.Observation("new_session")
    first = tracker.observe(5, 1)
    assert first == p.Observation("ok") and not first.needs_rebirth


def test_sequence_tracker_first_message_ever():
    tracker = p.SequenceTracker()
    assert tracker.observe(9, 1) == p.Observation("new_session", missing=0)
    assert p.SequenceTracker().observe(9, 40).needs_rebirth


# -- helpers and docs -----------------------------------------------------------------------------------


def test_result_message_from_pipeline_results():
    detections = Detections(np.array([[1, 2, 30, 40]]), np.array([0.9]), np.array([2]), labels=("a", "b", "car"))
    result = Result(detections, seq=17, source_id="front", capture_ts=10.0, wall_time=T, stage_ms={}, done_ts=10.02)
    message = p.ResultMessage.from_result(
        result, device_id="cam-01", session_id=3, seq=5, message_id="cam-01:3:5", durable=False
    )
    assert message.frame_seq == 17 and message.source == "front" and message.timestamp == T
    assert message.latency_ms == pytest.approx(20.0)
    assert message.detections == [p.Detection(label="car", class_id=2, score=0.9, box=[1.0, 2.0, 30.0, 40.0])]
    assert message.classes is None
    assert p.decode(p.TopicKind.RESULT, p.encode(message)) == message

    classes = Classification(np.array([1, 0]), np.array([2.5, -1.0]), labels=("cat", "dog"))
    result = Result(classes, seq=1, source_id="s", capture_ts=1.0, wall_time=T, stage_ms={}, done_ts=1.001)
    message = p.ResultMessage.from_result(result, device_id="d", session_id=1, seq=1, message_id="m", durable=True)
    assert [c.label for c in message.classes or []] == ["dog", "cat"]  # raw logits are allowed
    assert message.detections is None


def test_result_message_carries_keypoints_rotated_boxes_and_mask_areas():
    masks = Masks((np.ones((3, 4), bool),), [[1, 2]], 10, 10)
    points = Keypoints(np.array([[[1.0, 2.0, 0.5], [3.0, 4.0, 0.25]]]))
    rotated = RotatedBoxes([[5.0, 5.0, 4.0, 2.0, 0.5]])
    found = Detections([[1, 2, 9, 8]], [0.75], [0], ("x",), masks=masks, keypoints=points, rotated=rotated)
    result = Result(found, seq=1, source_id="s", capture_ts=1.0, wall_time=T, stage_ms={}, done_ts=1.001)
    message = p.ResultMessage.from_result(result, device_id="d", session_id=1, seq=1, message_id="m", durable=True)
    (detection,) = message.detections or []
    assert detection.keypoints == [[1.0, 2.0, 0.5], [3.0, 4.0, 0.25]]
    assert detection.rotated_box == [5.0, 5.0, 4.0, 2.0, 0.5] and detection.mask_area == 12
    payload = p.encode(message)
    assert b"rle" not in payload and b'"mask_area":12' in payload
    assert p.decode(p.TopicKind.RESULT, payload) == message


def test_plain_detections_keep_their_payload_and_parts_are_bounded():
    plain = p.Detection(label="car", class_id=2, score=0.9, box=[1.0, 2.0, 30.0, 40.0])
    assert json.loads(plain.model_dump_json()) == {"label": "car", "class_id": 2, "score": 0.9,
                                                   "box": [1.0, 2.0, 30.0, 40.0]}
    base = {"label": "a", "class_id": 0, "score": 0.5, "box": [0.0, 0.0, 1.0, 1.0]}
    for bad in ({"keypoints": [[1.0]]}, {"keypoints": [[1.0, 2.0, 3.0, 4.0]]}, {"keypoints": [[0.0, 0.0]] * 1001},
                {"rotated_box": [1.0, 2.0, 3.0, 4.0]}, {"rotated_box": [1.0, 2.0, 3.0, 4.0, float("nan")]},
                {"mask_area": -1}, {"mask_area": 1.5}, {"mask": {"rle": "x"}}):
        with pytest.raises(ValueError):
            p.Detection.model_validate({**base, **bad})


def test_docs_describe_every_topic_and_field():
    doc = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    for kind in KINDS:
        assert f"`{kind.value}`" in doc or kind.value in doc, kind
    assert p.FLEET_REBIRTH_TOPIC in doc
    models = set(p.SCHEMAS.values()) | {
        p.Capabilities,
        p.Percentiles,
        p.Usage,
        p.OutboxStatus,
        p.Detection,
        p.ClassScore,
        p.WorkloadTelemetry,
        p.ModelTelemetry,
        p.WorkloadOutcome,
    }
    for model in models:
        assert f"### {model.__name__}" in doc, model.__name__
        for name in model.model_fields:
            assert f"`{name}`" in doc, f"{model.__name__}.{name} is not documented"
