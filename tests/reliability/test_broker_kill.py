"""Scenario 1: the broker is killed (SIGKILL) mid-stream and restarted."""

from __future__ import annotations

import time

import pytest

from lepton_edge.fleet.protocol import TopicKind
from tests.reliability.harness import (
    DeviceProcess,
    account,
    device_config,
    max_outbox_depth,
    results_by_session,
    wait_all_delivered,
    wait_until,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

OUTAGE_S = 3.0


def test_broker_sigkill_mid_stream_loses_no_durable_message(
    scenario, broker, subscriber, device_id, devices, color_model, tmp_path
):
    record = scenario(
        "1 broker SIGKILL",
        f"mosquitto killed with SIGKILL while results stream, restarted {OUTAGE_S:g} s later on the same "
        "port with the same persistence",
    )
    device = DeviceProcess(tmp_path / "device", device_config(tmp_path, color_model, broker.port, device_id))
    devices.append(device)
    device.start()
    birth = subscriber.wait(TopicKind.BIRTH, lambda b: True, 60, "the device's birth")
    wait_until(lambda: subscriber.count(TopicKind.RESULT) >= 20, 30, "20 results before the fault")

    seen_before = subscriber.uids()
    broker.kill()
    killed_at = time.monotonic()
    time.sleep(OUTAGE_S)
    broker.start()
    cleared_at = time.monotonic()
    record.note(f"broker down for {cleared_at - killed_at:.1f} s; the device kept producing into its outbox")

    first = wait_until(
        lambda: subscriber.first_new_after(cleared_at, seen_before), 30, "a new message after the restart"
    )
    record.recovery_s = first.at - cleared_at
    record.recovery_means = "from the broker accepting connections again to the first new message delivered"
    rebirth = subscriber.wait(
        TopicKind.BIRTH, lambda b: b.session_id > birth.session_id, 30, "a birth of a new session"
    )
    rebirth_at = next(
        d.at for d in subscriber.all(TopicKind.BIRTH) if d.decoded().session_id == rebirth.session_id
    )
    record.note(
        f"the device reconnected as session {rebirth.session_id} (was {birth.session_id}; every connection "
        f"attempt takes a new session id) {rebirth_at - cleared_at:.2f} s after the restart"
    )
    count = subscriber.count(TopicKind.RESULT)
    wait_until(lambda: subscriber.count(TopicKind.RESULT) >= count + 10, 30, "results flowing after recovery")
    assert device.alive, f"the device died during the broker outage:\n{device.log_tail()}"

    code, _ = device.terminate()
    assert code == 0, device.log_tail()
    wait_all_delivered(device, subscriber)
    accounting = account(device, subscriber)
    record.set_accounting(accounting.summary())
    outbox = device.outbox_state()
    record.metrics["outbox_depth_after_stop"] = outbox["depth"]
    record.metrics["max_outbox_depth_reported"] = max_outbox_depth(subscriber)
    assert accounting.durable_lost == []
    assert accounting.conflicting_duplicates == []
    assert outbox["depth"] == 0
    for session, seqs in results_by_session(subscriber).items():
        assert sorted(seqs) == list(range(1, max(seqs) + 1)), f"session {session} has a gap in its results"
