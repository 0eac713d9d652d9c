"""Hostile input: thousands of generated payloads at every handler; the agent stays alive and reporting."""

import json
import uuid
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lepton_edge.device.agent import DeviceAgent
from lepton_edge.fleet.mqtt import IncomingMessage
from lepton_edge.fleet.protocol import (
    FLEET_REBIRTH_TOPIC,
    CommandRequest,
    TopicKind,
    command_topic,
    config_desired_topic,
    decode,
    encode,
    rebirth_topic,
    response_subscription,
    response_topic,
)
from tests.device.helpers import Recorder, agent_config, wait_until

pytestmark = pytest.mark.integration

DEVICE = f"hostile-{uuid.uuid4().hex[:8]}"

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
FIELDS = [
    "version",
    "config",
    "issued_at",
    "issued_by",
    "name",
    "args",
    "reason",
    "requested_by",
    "timestamp",
    "model",
    "source",
    "postprocess",
    "agent",
    "device_id",
    "sinks",
]
mappings = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values, max_size=6)
BIG = [
    b"{" + b" " * 3_000_000 + b"}",
    b'{"name": "' + b"x" * 2_000_000 + b'"}',
    b"[" * 100_000 + b"]" * 100_000,
    json.dumps({"version": 1, "config": {"a": "x" * 300_000}, "issued_at": 1.0, "issued_by": "x"}).encode(),
]
payloads = st.one_of(
    st.binary(max_size=512),
    st.binary(max_size=64).map(lambda b: b"\xff\xfe" + b),  # never UTF-8
    st.integers(1, 5000).map(lambda n: b'{"args":' + b"[" * n + b"]" * n + b"}"),  # deep nesting
    st.sampled_from(BIG),  # multi-MB and just-over-the-limit
    mappings.map(lambda d: json.dumps(d).encode()),  # wrong types, unknown and missing fields
    st.builds(  # well-formed requests with hostile arguments
        lambda name, args: json.dumps({"name": name, "args": args}).encode(),
        st.sampled_from(["ping", "stats", "get_config", "rebirth", "nope", "../x", ""]),
        st.dictionaries(st.text(max_size=8), json_values, max_size=3),
    ),
    st.builds(  # well-formed desired documents whose config is garbage
        lambda version, config: json.dumps(
            {"version": version, "config": config, "issued_at": 1.7e9, "issued_by": "fuzz"}
        ).encode(),
        st.integers(-5, 2**63 + 5),
        mappings,
    ),
)
ODD_TOPICS = ["lepton/v1/clients/+/response/+", "lepton/v1/clients/fuzzer/response", "a/#", ""]
properties = st.builds(
    lambda rt, corr, expiry: SimpleNamespace(
        ResponseTopic=rt, CorrelationData=corr, MessageExpiryInterval=expiry
    ),
    st.none()
    | st.sampled_from([response_topic("fuzzer", DEVICE), response_topic("fuzzer", "other"), *ODD_TOPICS])
    | st.text(max_size=30),
    st.none() | st.binary(max_size=16),
    st.none() | st.integers(0, 2**32 - 1),
)
topics = {
    "desired": st.sampled_from([config_desired_topic(DEVICE)]) | st.text(max_size=40),
    "command": st.sampled_from([command_topic(DEVICE, n) for n in ("ping", "stats", "get_config", "x")])
    | st.text(max_size=60),
    "rebirth": st.sampled_from([rebirth_topic(DEVICE), FLEET_REBIRTH_TOPIC]),
}


@pytest.fixture(scope="module")
def hostile(mqtt_broker, tmp_path_factory, color_model):
    tmp = tmp_path_factory.mktemp("hostile")
    agent = DeviceAgent(agent_config(tmp, color_model, mqtt_broker.port, DEVICE))
    rec = Recorder.connect(
        mqtt_broker.port, f"rec-{DEVICE}", f"lepton/v1/devices/{DEVICE}/telemetry", response_subscription("checker")
    )
    agent.start()
    assert agent.client.wait_connected(10)
    yield agent, rec
    rec.stop()
    agent.stop()


@pytest.mark.parametrize("handler", ["desired", "command", "rebirth"])
def test_every_handler_survives_thousands_of_hostile_messages(hostile, handler):
    agent, _ = hostile
    call = {"desired": agent.on_desired, "command": agent.on_command, "rebirth": agent.on_rebirth}[handler]
    rejected_before = agent.rejections.total()

    @settings(
        max_examples=1500,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(payload=payloads, topic=topics[handler], props=properties, retain=st.booleans())
    def throw(payload, topic, props, retain):
        call(IncomingMessage(topic, payload, 1, retain, props))  # must never raise

    throw()
    assert agent.rejections.total() > rejected_before
    assert all(t.is_alive() for t in agent.threads)


def test_the_agent_keeps_reporting_after_the_flood_and_through_the_broker(hostile, mqtt_broker):
    agent, rec = hostile
    client = rec.client
    before = agent.rejections.total()
    for topic, payload in [
        (config_desired_topic(DEVICE), b"\xff\x00garbage"),
        (config_desired_topic(DEVICE), b"[" * 10_000 + b"]" * 10_000),
        (command_topic(DEVICE, "ping"), b'{"name": 5}'),
        (rebirth_topic(DEVICE), b'{"reason": "x"}'),
        (FLEET_REBIRTH_TOPIC, b"not json"),
    ]:
        assert client.publish(
            topic, payload, qos=1, response_topic=response_topic("checker", DEVICE), correlation_data=b"c"
        ).wait(5)
    wait_until(lambda: agent.rejections.total() >= before + 5)
    assert agent.client.connected
    # the network loop still delivers: a real ping gets its answer
    assert client.publish(
        command_topic(DEVICE, "ping"),
        encode(CommandRequest(name="ping")),
        qos=1,
        response_topic=response_topic("checker", DEVICE),
        correlation_data=b"alive",
    ).wait(5)
    wait_until(
        lambda: any(
            m.correlation_data == b"alive" and decode(TopicKind.COMMAND_RESPONSE, m.payload).status == "ok"
            for m in rec.raw(TopicKind.COMMAND_RESPONSE)
        )
    )
    # and telemetry keeps coming, in order, with the pipeline still producing
    seen = len(rec.of(TopicKind.TELEMETRY))
    wait_until(lambda: len(rec.of(TopicKind.TELEMETRY)) >= seen + 3)
    telemetry = [t for t in rec.of(TopicKind.TELEMETRY) if t.session_id == agent.session_id]
    assert [t.seq for t in telemetry] == sorted({t.seq for t in telemetry})
    assert telemetry[-1].fps > 0
