"""Scenario 2: the device process is killed with SIGKILL mid-stream and restarted (outbox on disk)."""

from __future__ import annotations

import time

import pytest

from lepton_edge.fleet.protocol import TopicKind
from tests.reliability.harness import (
    DeviceProcess,
    account,
    device_config,
    results_by_session,
    wait_all_delivered,
    wait_quiet,
    wait_until,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

FROZEN_S = 1.5


def test_device_sigkill_keeps_its_outbox_and_resends_it_after_restart(
    scenario, broker, subscriber, device_id, devices, color_model, tmp_path
):
    record = scenario(
        "2 device SIGKILL",
        "`lepton-edge run` killed with SIGKILL while its outbox holds unacknowledged messages (the broker "
        f"is frozen with SIGSTOP for {FROZEN_S:g} s just before, so acknowledgements are outstanding), "
        "then restarted on the same state folder",
    )
    device = DeviceProcess(tmp_path / "device", device_config(tmp_path, color_model, broker.port, device_id))
    devices.append(device)
    device.start()
    birth = subscriber.wait(TopicKind.BIRTH, lambda b: True, 60, "the device's birth")
    wait_until(lambda: subscriber.count(TopicKind.RESULT) >= 20, 30, "20 results before the fault")

    broker.pause()
    time.sleep(FROZEN_S)
    device.kill()
    broker.resume()
    wait_quiet(subscriber)  # what the killed process had written reaches the broker and is delivered
    seen_before = subscriber.uids()
    outbox = device.outbox_state()
    stored_at_kill = set(outbox["pending"])
    record.metrics["outbox_depth_at_kill"] = len(stored_at_kill)
    record.note(f"at the kill the outbox on disk held {len(stored_at_kill)} unacknowledged message(s)")
    assert stored_at_kill, "the fault must leave messages in the outbox, or it tests nothing"

    restarted_at = time.monotonic()
    device.start()
    first = wait_until(
        lambda: subscriber.first_new_after(restarted_at, seen_before),
        60,
        "a new durable message after restart",
    )
    record.recovery_s = first.at - restarted_at
    record.recovery_means = (
        "from the restart of the process (Python start, model load and connect included) to the first new "
        "message delivered (often one the killed process had stored)"
    )
    rebirth = subscriber.wait(
        TopicKind.BIRTH, lambda b: b.session_id > birth.session_id, 30, "a birth of the restarted device"
    )
    wait_until(
        lambda: (
            sum(1 for r in subscriber.decoded(TopicKind.RESULT) if r.session_id == rebirth.session_id) >= 10
        ),
        30,
        "results of the new session",
    )
    first_result = next(
        d for d in subscriber.all(TopicKind.RESULT) if d.decoded().session_id == rebirth.session_id
    )
    record.metrics["first_result_of_new_session_s"] = round(first_result.at - restarted_at, 3)
    wait_until(lambda: stored_at_kill <= subscriber.uids(), 30, "the messages stored before the kill")
    deaths = [d for d in subscriber.decoded(TopicKind.DEATH) if d.session_id == birth.session_id]
    assert deaths and deaths[0].reason == "connection_lost"  # the broker's last will for the killed session
    record.note(
        f"the broker published the last will of session {birth.session_id} (connection_lost); the restarted "
        f"device came back as session {rebirth.session_id} and resent what its outbox held"
    )

    code, _ = device.terminate()
    assert code == 0, device.log_tail()
    wait_all_delivered(device, subscriber)
    accounting = account(device, subscriber)
    record.set_accounting(accounting.summary())
    record.note(
        "results still in memory at the kill (in the pipeline or the sink's queue, not yet in the outbox) "
        "were never promised and are not counted: the outbox is the line of durability"
    )
    assert accounting.durable_lost == []
    assert accounting.conflicting_duplicates == []
    assert device.outbox_state()["depth"] == 0
    for session, seqs in results_by_session(subscriber).items():
        assert sorted(seqs) == list(range(1, max(seqs) + 1)), f"session {session} has a gap in its results"
