"""Scenario 8: SIGTERM (what `systemctl stop` sends) with the broker up, and again during a broker outage."""

from __future__ import annotations

import ast
import re
import time

import pytest

from lepton_edge.fleet.protocol import TopicKind
from tests.reliability.harness import (
    ROOT,
    DeviceProcess,
    account,
    device_config,
    wait_all_delivered,
    wait_until,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

UNIT = ROOT / "systemd" / "lepton-edge.service"
DETECTOR = ROOT / "models" / "shapes_detector.onnx"


def timeout_stop_s() -> float:
    """TimeoutStopSec= of the runtime unit (seconds)."""
    match = re.search(r"^TimeoutStopSec=(\d+)s?$", UNIT.read_text(), re.MULTILINE)
    assert match, f"{UNIT} sets no TimeoutStopSec="
    return float(match.group(1))


def done_line(log: str) -> tuple[int, int, int]:
    """(frames, results, dropped frames) from the last ``done frames=... results=... drops=...`` log line."""
    lines = [line for line in log.splitlines() if " done frames=" in line]
    assert lines, "the device logged no final `done` line"
    match = re.search(r"frames=(\d+) results=(\d+) drops=(none|\{[^}]*\})", lines[-1])
    assert match, lines[-1]
    drops = 0 if match.group(3) == "none" else sum(ast.literal_eval(match.group(3)).values())
    return int(match.group(1)), int(match.group(2)), drops


def test_sigterm_finishes_frames_flushes_everything_and_announces_the_death(
    scenario, broker, subscriber, device_id, devices, tmp_path, color_model
):
    limit = timeout_stop_s()
    if DETECTOR.is_file():  # the demo detector: real work per frame, so frames are in flight at SIGTERM
        model, post = DETECTOR, {"type": "detect", "conf_threshold": 0.4}
        source = "synthetic://shapes?fps=15&width=320&height=240"
    else:
        model, post, source = color_model, {"type": "classify", "top_k": 1}, "synthetic://shapes?fps=15"
    record = scenario(
        "8 graceful shutdown (SIGTERM)",
        f"SIGTERM mid-stream ({model.name} on a 15 fps camera, a jsonl sink that flushes every 1000 "
        f"results): once with the broker up, once during a broker outage; the unit allows "
        f"TimeoutStopSec={limit:g} s",
    )
    jsonl = tmp_path / "results.jsonl"
    config = device_config(
        tmp_path,
        model,
        broker.port,
        device_id,
        source=source,
        postprocess=post,
        sinks=[{"type": "jsonl", "path": str(jsonl), "flush_every": 1000}],
    )
    device = DeviceProcess(tmp_path / "device", config)
    devices.append(device)

    # 1. broker up
    device.start()
    birth = subscriber.wait(TopicKind.BIRTH, lambda b: True, 60, "the device's birth")
    wait_until(lambda: subscriber.count(TopicKind.RESULT) >= 20, 30, "20 results")
    code, took = device.terminate(timeout=limit)
    assert code == 0, device.log_tail()
    assert took < limit
    frames, results, drops = done_line(device.log_text())
    assert frames == results + drops, (
        f"frames lost in flight: frames={frames} results={results} drops={drops}"
    )
    assert len(jsonl.read_text().splitlines()) == results, "the jsonl sink was not flushed"
    wait_all_delivered(device, subscriber)
    session_results = {
        r.seq for r in subscriber.decoded(TopicKind.RESULT) if r.session_id == birth.session_id
    }
    assert session_results == set(range(1, results + 1)), "every result of the session reaches the fleet"
    death = subscriber.wait(
        TopicKind.DEATH, lambda d: d.session_id == birth.session_id, 10, "the death message"
    )
    assert death.reason == "shutdown"
    kinds = [d.kind for d in subscriber.all() if d.kind in (TopicKind.RESULT, TopicKind.DEATH)]
    assert kinds[-1] is TopicKind.DEATH, "the death comes after the last result, before the disconnect"
    assert device.outbox_state()["depth"] == 0
    record.metrics["exit_s_broker_up"] = round(took, 2)
    record.note(
        f"broker up: exit 0 after {took:.2f} s; frames={frames} results={results} drops={drops} "
        f"(nothing lost in flight); the jsonl sink holds all {results}; all {results} results and then "
        "the `shutdown` death were delivered; the outbox was empty"
    )

    # 2. broker down: the outbox keeps what it could not send, and shutdown does not wait for the broker
    device.start()
    wait_until(
        lambda: any(b.session_id > birth.session_id for b in subscriber.decoded(TopicKind.BIRTH)),
        60,
        "rebirth",
    )
    count = subscriber.count(TopicKind.RESULT)
    wait_until(lambda: subscriber.count(TopicKind.RESULT) >= count + 10, 30, "results of the second run")
    broker.kill()
    time.sleep(1.5)  # results pile up in the outbox
    code, took_offline = device.terminate(timeout=limit)
    assert code == 0, device.log_tail()
    assert took_offline < limit
    kept = device.outbox_state()["depth"]
    assert kept > 0, "results produced during the outage must be kept on disk"
    record.metrics["exit_s_broker_down"] = round(took_offline, 2)
    record.metrics["outbox_kept_at_exit"] = kept
    broker.start()
    seen = subscriber.uids()
    restarted_at = time.monotonic()
    device.start()  # the next start sends what the last one kept
    first = wait_until(lambda: subscriber.first_new_after(restarted_at, seen), 60, "the kept messages")
    record.recovery_s = first.at - restarted_at
    record.recovery_means = (
        "from the next start (broker back) to the first message kept on disk at the offline shutdown being "
        "delivered"
    )
    wait_all_delivered(device, subscriber, timeout=30)
    code, _ = device.terminate(timeout=limit)
    assert code == 0, device.log_tail()
    record.note(
        f"broker down: exit 0 after {took_offline:.2f} s without waiting for the broker; {kept} message(s) "
        "stayed in the outbox on disk and were delivered by the next start"
    )

    accounting = account(device, subscriber)
    record.set_accounting(accounting.summary())
    assert accounting.durable_lost == []
    assert accounting.conflicting_duplicates == []
