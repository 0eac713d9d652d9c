"""The dashboard's Streams panel in a real headless Chromium: two devices publish real telemetry over a real
mosquitto to a real scheduler (one with two workloads on one batched model, one reporting none); the panel
shows the first device, and a click on the other's row shows its two streams and its model with the figures
they sent, with no Content-Security-Policy violation."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from lepton_edge.fleet.protocol import Birth, Capabilities, Telemetry, birth_topic, encode, telemetry_topic
from lepton_edge.scheduler.api import serve
from lepton_edge.scheduler.service import SchedulerService
from tests.scheduler.test_api import telemetry
from tests.scheduler.test_dashboard import CHROMIUM_FLAGS, CSP_WATCH, UPDATED, chromium
from tests.scheduler.test_streams_api import two_stream_telemetry
from tests.support.devtools import Browser
from tests.support.scheduler import fast_config, wait_until

pytestmark = pytest.mark.integration

ROWS = (
    "JSON.stringify([...document.querySelectorAll('#stream-table tr.stream')].map(r => ({"
    "workload: r.dataset.workload, source: r.dataset.sourceState,"
    "badge: r.querySelector('td.source-state .badge').className,"
    "cells: [...r.cells].map(c => c.textContent)})))"
)
MODELS = (
    "JSON.stringify([...document.querySelectorAll('#model-table tr.model')]"
    ".map(r => [...r.cells].map(c => c.textContent)))"
)


def announce(client: Any, device_id: str, payload: dict[str, Any]) -> None:
    """A birth of session 1, then one telemetry message, as a device publishes them."""
    caps = Capabilities(accelerator="cpu", runtimes={"onnxruntime": "1.20.1"}, cpu_count=2, memory_bytes=4 << 30,
                        sources=[], artifacts=["det"])  # fmt: skip
    birth = Birth(device_id=device_id, session_id=1, timestamp=time.time(), config_version=0,
                  software_version="test", capabilities=caps)  # fmt: skip
    client.publish(birth_topic(device_id), encode(birth), retain=True).wait(5)
    client.publish(telemetry_topic(device_id), encode(Telemetry.model_validate(payload))).wait(5)


def test_the_streams_panel_shows_each_stream_of_the_chosen_device(
    tmp_path: Path, fresh_broker: Any, make_mqtt_client: Any
) -> None:
    config = fast_config(fresh_broker.port, f"sqlite:///{tmp_path}/fleet.db")
    flags = [f for f in CHROMIUM_FLAGS if not f.startswith("--virtual-time-budget")]
    with (
        SchedulerService(config) as service,
        serve(service, "127.0.0.1", 0, insecure_local=True) as server,
        Browser(chromium(), flags, tmp_path / "profile") as browser,
    ):
        device = make_mqtt_client(fresh_broker, "devices-under-test")
        device.start()
        assert device.wait_connected(5)
        now = time.time()
        announce(device, "cam-0", telemetry("cam-0", 1, 1, now, fps=9.0, p50=20.0, temp=45.0, model="det"))
        announce(device, "cam-1", two_stream_telemetry("cam-1", 1, now))

        def streams_of(device_id: str) -> list[Any]:
            device = service.store.get_device(device_id)
            return [] if device is None or device.telemetry is None else [device.telemetry.get("workloads")]

        wait_until(lambda: streams_of("cam-0") and streams_of("cam-1")[0], what="both devices' telemetry stored")

        browser.on_new_document(CSP_WATCH)
        browser.goto(server.url + "/")
        browser.wait(UPDATED, "the dashboard to load the fleet")
        # the first online device is shown: it reports no per-workload figures
        assert browser.eval("document.getElementById('streams-device').value") == "cam-0"
        browser.wait("document.getElementById('streams-note').textContent.startsWith('telemetry of')", "cam-0")
        assert json.loads(browser.eval(ROWS)) == []
        assert browser.eval("document.getElementById('streams-empty').hidden") is False

        browser.eval("document.querySelector('#device-table tr.device[data-device-id=\"cam-1\"] td').click(); true")
        browser.wait("document.querySelectorAll('#stream-table tr.stream').length === 2", "cam-1's two streams")
        rows = json.loads(browser.eval(ROWS))
        models = json.loads(browser.eval(MODELS))
        assert browser.eval("document.getElementById('streams-device').value") == "cam-1"
        assert browser.eval("document.querySelector('#device-table tr.device.selected').dataset.deviceId") == "cam-1"
        assert browser.eval("window.cspViolations") == []

    gate, yard = rows
    assert gate["cells"] == [
        "gate", "cam-gate", "det", "running", "running", "25.0", "busy: 3, stale: 12", "38.0 / 57.0 / 76.0", "18.0", "",
    ]  # fmt: skip
    assert yard["cells"] == [
        "yard", "cam-yard", "det", "running", "reconnecting", "12.5", "\u2013", "55.0 / 82.5 / 110.0", "\u2013",
        "rtsp://10.0.0.2/yard: connection refused",
    ]  # fmt: skip
    assert (gate["source"], yard["source"]) == ("running", "reconnecting")
    assert gate["badge"] == "badge ok" and yard["badge"] == "badge warn"  # the source state is coloured
    assert models == [["det", "37.5", "1.80", "62", "2"]]
