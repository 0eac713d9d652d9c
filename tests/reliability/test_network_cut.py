"""Scenario 3: the network between device and broker black-holes (a loopback proxy drops every byte)."""

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
from tests.reliability.proxy import BlackholeProxy

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

KEEPALIVE_S = 5
CUT_S = 12.0


def test_black_holed_link_is_detected_by_keepalive_and_everything_is_delivered(
    scenario, broker, subscriber, device_id, devices, color_model, tmp_path
):
    record = scenario(
        "3 network black hole",
        f"a loopback TCP proxy between device and broker drops every byte for {CUT_S:g} s while keeping both "
        f"sockets open (no FIN, no RST), then forwards new connections again; MQTT keepalive {KEEPALIVE_S} s",
    )
    with BlackholeProxy(broker.host, broker.port) as proxy:
        config = device_config(
            tmp_path, color_model, proxy.port, device_id, agent={"mqtt": {"keepalive_s": KEEPALIVE_S}}
        )
        device = DeviceProcess(tmp_path / "device", config)
        devices.append(device)
        device.start()
        birth = subscriber.wait(TopicKind.BIRTH, lambda b: True, 60, "the device's birth")
        wait_until(lambda: subscriber.count(TopicKind.RESULT) >= 20, 30, "20 results before the fault")

        seen_before = subscriber.uids()
        proxy.cut()
        cut_at = time.monotonic()
        reconnect = wait_until(
            lambda: proxy.connections_since(cut_at), CUT_S + 3 * KEEPALIVE_S, "the device to notice the cut"
        )
        detected_s = reconnect[0][0] - cut_at
        record.metrics["detected_after_s"] = round(detected_s, 2)
        record.note(
            f"the device noticed the dead link {detected_s:.1f} s after the cut (keepalive {KEEPALIVE_S} s: "
            "a ping after one idle interval, the disconnect after a second) and started reconnecting"
        )
        assert detected_s <= 2 * KEEPALIVE_S + 3, "keepalive should detect a dead link within two intervals"
        will = subscriber.wait(
            TopicKind.DEATH,
            lambda d: d.session_id == birth.session_id,
            3 * KEEPALIVE_S,
            "the broker's last will",
        )
        assert will.reason == "connection_lost"
        record.note(
            "the broker timed out the silent connection too (1.5 x keepalive) and published the last will "
            f"of session {birth.session_id}"
        )
        time.sleep(max(0.0, CUT_S - (time.monotonic() - cut_at)))
        proxy.resume()
        resumed_at = time.monotonic()
        attempts = len(proxy.connections_since(cut_at))
        record.note(
            f"{attempts} connection attempt(s) went into the black hole during the cut; "
            f"{proxy.discarded_bytes} bytes were discarded"
        )

        first = wait_until(
            lambda: subscriber.first_new_after(resumed_at, seen_before),
            3 * KEEPALIVE_S + 10,
            "a new message after the link came back",
        )
        record.recovery_s = first.at - resumed_at
        record.recovery_means = (
            "from the link forwarding again to the first new message delivered (includes waiting out the "
            "connection attempt that was black-holed at the time, up to one keepalive)"
        )
        rebirth = subscriber.wait(
            TopicKind.BIRTH, lambda b: b.session_id > birth.session_id, 30, "a birth of a new session"
        )
        record.note(f"the device came back as session {rebirth.session_id}")
        count = subscriber.count(TopicKind.RESULT)
        wait_until(lambda: subscriber.count(TopicKind.RESULT) >= count + 10, 30, "results flowing again")

        code, _ = device.terminate()
        assert code == 0, device.log_tail()
    wait_all_delivered(device, subscriber)
    accounting = account(device, subscriber)
    record.set_accounting(accounting.summary())
    record.metrics["max_outbox_depth_reported"] = max_outbox_depth(subscriber)
    assert accounting.durable_lost == []
    assert accounting.conflicting_duplicates == []
    assert device.outbox_state()["depth"] == 0
    for session, seqs in results_by_session(subscriber).items():
        assert sorted(seqs) == list(range(1, max(seqs) + 1)), f"session {session} has a gap in its results"
