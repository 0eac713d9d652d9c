"""Scenario 4: a live MJPEG camera freezes, then goes away and comes back; the device rides it out."""

from __future__ import annotations

import time

import pytest

from lepton_edge.fleet.protocol import TopicKind
from tests.reliability.harness import (
    DeviceProcess,
    account,
    device_config,
    wait_all_delivered,
    wait_until,
)
from tests.runtime.sources.mjpeg_server import MjpegCamera

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

FROZEN_S = 3.0
GONE_S = 3.0


def source_states(subscriber, since: float) -> list[str]:
    """The camera's state in each telemetry message that arrived after ``since``, in order."""
    return [d.decoded().sources.get("cam") for d in subscriber.all(TopicKind.TELEMETRY) if d.at >= since]


def test_stalled_and_vanished_camera_is_reported_and_the_device_resumes(
    scenario, broker, subscriber, device_id, devices, color_model, tmp_path
):
    record = scenario(
        "4 live source stall",
        f"an MJPEG camera on loopback freezes for {FROZEN_S:g} s (connection open, no frame), then its "
        f"server stops for {GONE_S:g} s (connection refused) and restarts on the same port",
    )
    camera = MjpegCamera(fps=15)
    try:
        source = {
            "uri": camera.url,
            "id": "cam",
            "reconnect": {"initial_backoff_s": 0.1, "max_backoff_s": 0.5, "stall_timeout_s": 1.0},
        }
        device = DeviceProcess(
            tmp_path / "device", device_config(tmp_path, color_model, broker.port, device_id, source=source)
        )
        devices.append(device)
        device.start()
        birth = subscriber.wait(TopicKind.BIRTH, lambda b: True, 60, "the device's birth")
        wait_until(lambda: subscriber.count(TopicKind.RESULT) >= 20, 30, "20 results from the camera")
        assert "running" in source_states(subscriber, 0.0)

        camera.frozen.set()
        frozen_at = time.monotonic()
        wait_until(
            lambda: {"stalled", "reconnecting"} & set(source_states(subscriber, frozen_at)),
            10,
            "telemetry: cam stalled or reconnecting",
        )
        time.sleep(max(0.0, FROZEN_S - (time.monotonic() - frozen_at)))
        seen = subscriber.uids()
        camera.frozen.clear()
        thawed_at = time.monotonic()
        first = wait_until(
            lambda: subscriber.first_new_after(thawed_at, seen, TopicKind.RESULT),
            20,
            "results after the freeze",
        )
        record.metrics["freeze_recovery_s"] = round(first.at - thawed_at, 2)
        wait_until(
            lambda: source_states(subscriber, first.at)[-1:] == ["running"], 10, "telemetry: cam running"
        )
        record.note(
            f"frozen: telemetry went {' -> '.join(dict.fromkeys(source_states(subscriber, frozen_at)))}; "
            f"results resumed {first.at - thawed_at:.2f} s after the camera sent frames again"
        )

        camera.stop()
        gone_at = time.monotonic()
        wait_until(
            lambda: "reconnecting" in source_states(subscriber, gone_at), 10, "telemetry: cam reconnecting"
        )
        time.sleep(max(0.0, GONE_S - (time.monotonic() - gone_at)))
        seen = subscriber.uids()
        camera = MjpegCamera(port=camera.port, fps=15)
        back_at = time.monotonic()
        first = wait_until(
            lambda: subscriber.first_new_after(back_at, seen, TopicKind.RESULT),
            20,
            "results after the restart",
        )
        record.recovery_s = first.at - back_at
        record.recovery_means = "from the camera server listening again to the first new result delivered"
        wait_until(
            lambda: source_states(subscriber, first.at)[-1:] == ["running"], 10, "telemetry: cam running"
        )
        record.note(
            f"server gone: telemetry went {' -> '.join(dict.fromkeys(source_states(subscriber, gone_at)))}"
        )

        assert device.alive, device.log_tail()
        assert [b.session_id for b in subscriber.decoded(TopicKind.BIRTH)] == [birth.session_id]
        assert not subscriber.decoded(TopicKind.DEATH)
        record.note("the device stayed up and connected throughout: one session, no death, no rebirth")
        code, _ = device.terminate()
        assert code == 0, device.log_tail()
    finally:
        camera.stop()
    wait_all_delivered(device, subscriber)
    accounting = account(device, subscriber)
    record.set_accounting(accounting.summary())
    assert accounting.durable_lost == []
    assert accounting.conflicting_duplicates == []
