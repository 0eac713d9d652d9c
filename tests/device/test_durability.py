"""Presence across crashes, and nothing durable lost across broker outages and agent SIGKILLs."""

import signal
import time
from collections import defaultdict

import pytest

from lepton_edge.config.fleet import OutboxConfig
from lepton_edge.device.agent import DeviceAgent
from lepton_edge.fleet.outbox import MESSAGE_ID_PROPERTY, Outbox
from lepton_edge.fleet.protocol import TopicKind, decode, is_stale_death
from tests.device.helpers import Recorder, agent_config, agent_data, wait_until
from tests.support import agent_process
from tests.support.mosquitto import MosquittoBroker

pytestmark = pytest.mark.integration

# Save sessions and retained messages on every change, so that a SIGKILLed broker comes back with the
# recorder's persistent subscription (the fixture broker saves only on a graceful stop).
AUTOSAVE = "autosave_on_changes true\nautosave_interval 1\n"


@pytest.fixture
def saving_broker(tmp_path):
    broker = MosquittoBroker(tmp_path / "broker", extra_config=AUTOSAVE).start()
    yield broker
    broker.close()


def durable_config(tmp_path, color_model, port, device):
    return agent_data(
        tmp_path, color_model, port, device, agent={"results": {"durable": True, "max_rate_hz": 20}}
    )


def received(rec: Recorder, kind: TopicKind):
    """(decoded message, lepton-msg-id) in arrival order."""
    out = []
    for msg in rec.raw(kind):
        out.append((decode(kind, msg.payload), msg.user_properties.get(MESSAGE_ID_PROPERTY)))
    return out


def check_duplicates_are_identifiable(pairs, key):
    """The same message, delivered twice, carries the same lepton-msg-id both times."""
    uid_of = {}
    for message, uid in pairs:
        assert uid, "every outbox message carries the lepton-msg-id user property"
        assert uid_of.setdefault(key(message), uid) == uid


def first_seqs_by_session(results):
    seen, by_session = set(), defaultdict(list)
    for r in results:
        if r.message_id not in seen:
            seen.add(r.message_id)
            by_session[r.session_id].append(r.seq)
    return by_session


def test_last_will_announces_the_death_of_the_killed_session(
    mqtt_broker, recorder, tmp_path, color_model, unique
):
    device = f"du-{unique}"
    rec = recorder(mqtt_broker.port, f"lepton/v1/devices/{device}/birth", f"lepton/v1/devices/{device}/death")
    config = agent_data(tmp_path, color_model, mqtt_broker.port, device)
    proc = agent_process.start(config, tmp_path / "agent.json")
    try:
        birth = rec.wait(TopicKind.BIRTH, timeout=30)
        proc.kill()
        proc.wait(10)
        death = rec.wait(TopicKind.DEATH, lambda d: d.session_id == birth.session_id)
        assert death.reason == "connection_lost"  # the broker sent the will of that very connection

        proc = agent_process.start(config, tmp_path / "agent.json")
        rebirth = rec.wait(TopicKind.BIRTH, lambda b: b.session_id > birth.session_id, timeout=30)
        assert is_stale_death(rebirth.session_id, death)  # the old death no longer means offline
        late = recorder(
            mqtt_broker.port, f"lepton/v1/devices/{device}/birth", f"lepton/v1/devices/{device}/death"
        )  # a scheduler starting now, from retained state
        assert late.wait(TopicKind.BIRTH).session_id == rebirth.session_id
        assert is_stale_death(rebirth.session_id, late.wait(TopicKind.DEATH))

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        clean = rec.wait(TopicKind.DEATH, lambda d: d.session_id == rebirth.session_id)
        assert clean.reason == "shutdown" and not is_stale_death(rebirth.session_id, clean)
    finally:
        proc.kill()
        proc.wait(10)


def test_durable_results_and_events_survive_a_broker_outage(saving_broker, tmp_path, color_model, unique):
    device = f"du-{unique}"
    rec = Recorder.connect(
        saving_broker.port,
        f"rec-{unique}",
        f"lepton/v1/devices/{device}/results",
        f"lepton/v1/devices/{device}/events",
    )
    agent = DeviceAgent(
        agent_config(
            tmp_path,
            color_model,
            saving_broker.port,
            device,
            agent={"results": {"durable": True, "max_rate_hz": 20}},
        )
    )
    try:
        agent.start()
        wait_until(lambda: len(rec.raw(TopicKind.RESULT)) >= 5)
        saving_broker.kill()
        wait_until(lambda: not agent.connected)
        for i in range(5):
            agent.publish_event("test.outage", "info", f"event {i} while the broker is down", {"i": i})
        wait_until(lambda: agent.outbox.depth() >= 15)  # results keep coming, into the outbox
        saving_broker.start()
        pending = [m for m in agent.outbox.pending() if m.topic.endswith(("/results", "/events"))]
        wait_until(
            lambda: (
                {m.uid for m in pending} <= {m.user_properties.get(MESSAGE_ID_PROPERTY) for m in rec.messages}
            ),
            timeout=20,
        )
    finally:
        agent.stop()
        rec.stop()
    events = [e for e, _ in received(rec, TopicKind.EVENT) if e.kind == "test.outage"]
    assert [e.details["i"] for e in dict((e.id, e) for e in events).values()] == [0, 1, 2, 3, 4]
    results = received(rec, TopicKind.RESULT)
    check_duplicates_are_identifiable(results, key=lambda r: r.message_id)
    check_duplicates_are_identifiable(received(rec, TopicKind.EVENT), key=lambda e: e.id)
    by_session = first_seqs_by_session([r for r, _ in results])
    for seqs in by_session.values():
        assert seqs == sorted(seqs)  # in order
    outage = [m for m in pending if m.topic.endswith("/results")]
    outage_seqs = [decode(TopicKind.RESULT, m.payload).seq for m in outage]
    session = decode(TopicKind.RESULT, outage[0].payload).session_id
    assert outage_seqs == list(range(outage_seqs[0], outage_seqs[-1] + 1))  # the outbox held them all
    assert set(outage_seqs) <= set(by_session[session])


def test_durable_results_survive_an_agent_sigkill_during_an_outage(
    saving_broker, tmp_path, color_model, unique
):
    device = f"du-{unique}"
    rec = Recorder.connect(saving_broker.port, f"rec-{unique}", f"lepton/v1/devices/{device}/results")
    config = durable_config(tmp_path, color_model, saving_broker.port, device)
    proc = agent_process.start(config, tmp_path / "agent.json")
    try:
        wait_until(lambda: len(rec.raw(TopicKind.RESULT)) >= 5, timeout=30)
        saving_broker.kill()
        time.sleep(1.0)  # results go into the outbox
        proc.kill()
        proc.wait(10)
        outbox_path = tmp_path / f"state-{device}" / "outbox.db"
        with Outbox(OutboxConfig(path=outbox_path)) as outbox:
            pending = [m for m in outbox.pending() if m.topic.endswith("/results")]
        assert len(pending) >= 5
        saving_broker.start()
        proc = agent_process.start(config, tmp_path / "agent.json")
        wanted = {m.uid for m in pending}
        wait_until(lambda: wanted <= {m.user_properties.get(MESSAGE_ID_PROPERTY) for m in rec.messages}, 30)
        pending_results = [decode(TopicKind.RESULT, m.payload) for m in pending]
        killed_session = pending_results[0].session_id
        wait_until(lambda: any(r.session_id > killed_session for r, _ in received(rec, TopicKind.RESULT)))
    finally:
        proc.kill()
        proc.wait(10)
        rec.stop()
    results = received(rec, TopicKind.RESULT)
    check_duplicates_are_identifiable(results, key=lambda r: r.message_id)
    by_session = first_seqs_by_session([r for r, _ in results])
    stored = [r.seq for r in pending_results]
    assert stored == list(range(stored[0], stored[-1] + 1))
    assert set(stored) <= set(by_session[killed_session])
    for session, seqs in by_session.items():
        assert seqs == sorted(seqs), f"session {session} out of order"
    newer = [s for s in by_session if s > killed_session]
    assert newer and by_session[newer[0]][0] == 1  # the restarted agent numbers a new session from 1
