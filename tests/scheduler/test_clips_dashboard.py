"""The dashboard's events and clips views in a real headless Chromium (DevTools protocol), against a real API, a
real store and a device answering clips.read over a real mosquitto: filters, clip references, a fetch with its
progress, the download with the token, the device's own list, roles, and no CSP violation."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from lepton_edge.scheduler.api import serve
from lepton_edge.scheduler.store import Store
from lepton_edge.scheduler.stores import open_store
from tests.device.test_clip_commands import write_clip
from tests.scheduler.test_api import StoreService, fill_fleet
from tests.scheduler.test_clips import ClipDevice, make_fetcher
from tests.scheduler.test_clips_api import ClipService
from tests.scheduler.test_dashboard import (
    CHROMIUM_FLAGS,
    CSP_WATCH,
    LOGIN_SHOWN,
    UPDATED,
    chromium,
    parse,
    run_chromium,
)
from tests.support.api_client import make_token
from tests.support.devtools import Browser

pytestmark = pytest.mark.integration

EVENT_ROWS = "[...document.querySelectorAll('#event-table tr.event')]"


def analytics_event(store: Store, device_id: str, stream: str, kind: str, ts: float, clip: str | None = None) -> None:
    analytics: dict[str, Any] = {"stream": stream, "track_id": 4, "name": "door-line", "capture_time": ts}
    if clip is not None:
        analytics["snapshot"] = f"clip:{clip}@2.500"  # as the device refers to its clip (docs/clips.md)
    store.add_event(
        f"device.analytics.{kind}",
        f"person #4 {kind.replace('_', ' ')} door-line",
        device_id=device_id,
        details={"analytics": analytics},
        ts=ts,
    )


def login(browser: Browser, url: str, token: str) -> None:
    browser.goto(url + "/")
    browser.wait(LOGIN_SHOWN, "the login form")
    browser.eval(
        f"document.getElementById('login-token').value = {token!r};"
        "document.getElementById('login-form').requestSubmit(); true"
    )
    browser.wait(UPDATED, "the dashboard to load")


def set_filters(browser: Browser, **values: str) -> None:
    """Fill the events filter form (``since``/``until`` as Unix times, typed in the browser's time zone)."""
    script = ["document.getElementById('event-filters').reset();"]
    for name, value in values.items():
        if name in ("since", "until"):
            script.append(
                f"{{ const d = new Date({float(value)} * 1000);"
                f" document.getElementById('filter-{name}').value ="
                " new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 19); }"
            )
        else:
            script.append(f"document.getElementById('filter-{name}').value = {json.dumps(value)};")
    script.append("document.getElementById('event-filters').requestSubmit(); true")
    browser.eval("".join(script))


def shown_events(browser: Browser) -> list[dict[str, str]]:
    return browser.eval(
        f"{EVENT_ROWS}.map(r => ({{device: r.querySelector('td.device').textContent, stream: r.dataset.stream || '',"
        " kind: r.dataset.kind, clip: r.dataset.clip || ''}))"
    )


def test_events_filter_and_clips_fetch_from_the_dashboard(
    tmp_path: Path, mqtt_broker: Any, make_mqtt_client: Any, unique: str
) -> None:
    chromium_path = chromium()
    now = time.time()
    device_id = f"cam-{unique}"
    clip_bytes = os.urandom(150_000)
    write_clip(tmp_path / "device-clips", "clip-door-1", clip_bytes, end_wall=now - 30)
    write_clip(tmp_path / "device-clips", "clip-door-0", b"an older clip", end_wall=now - 300)
    device = ClipDevice(make_mqtt_client, mqtt_broker.port, device_id, tmp_path / "device-clips").start()
    fetcher = make_fetcher(make_mqtt_client, mqtt_broker.port, tmp_path / "sched-clips", f"r-{unique}")
    flags = [f for f in CHROMIUM_FLAGS if not f.startswith("--virtual-time-budget")]
    try:
        with open_store(f"sqlite:///{tmp_path / 'fleet.db'}") as store:
            fill_fleet(store, now, points=5)
            store.device_birth(device_id, 1, {"accelerator": "cpu"}, now - 100)
            analytics_event(store, device_id, "door", "line_crossed", now - 40, clip="clip-door-1")
            analytics_event(store, device_id, "yard", "zone_enter", now - 20)
            analytics_event(store, "jetson-01", "door", "line_crossed", now - 15)
            operator = make_token(store, "operator", "night-shift")
            with (
                serve(ClipService(store, fetcher), "127.0.0.1", 0) as server,
                Browser(chromium_path, flags, tmp_path / "profile") as browser,
            ):
                browser.on_new_document(CSP_WATCH)
                browser.send("Browser.setDownloadBehavior", {"behavior": "deny"})
                login(browser, server.url, operator)

                # every event, the clip reference on the one that has it
                browser.wait(f"{EVENT_ROWS}.some(r => r.dataset.clip === 'clip-door-1')", "the event with a clip")
                with_clip = browser.eval(f"{EVENT_ROWS}.find(r => r.dataset.clip).querySelector('td.clip').textContent")
                assert with_clip.startswith("clip-door-1") and "Fetch" in with_clip

                # filters: device, then stream, then a time range, then none
                set_filters(browser, device=device_id, kind="device.analytics.")
                browser.wait(f"{EVENT_ROWS}.length === 2", "two analytics events of the device")
                assert {(e["device"], e["stream"]) for e in shown_events(browser)} == {
                    (device_id, "door"),
                    (device_id, "yard"),
                }
                set_filters(browser, stream="door")
                browser.wait(
                    f"{EVENT_ROWS}.length === 2 && {EVENT_ROWS}.every(r => r.dataset.stream === 'door')",
                    "the door events of both devices",
                )
                set_filters(browser, kind="device.analytics.", since=str(now - 25), until=str(now - 10))
                browser.wait(
                    f"{EVENT_ROWS}.length === 2 && {EVENT_ROWS}.some(r => r.dataset.stream === 'yard')",
                    "the events of the time range",
                )
                assert {e["stream"] for e in shown_events(browser)} == {"yard", "door"}
                assert all(e["clip"] == "" for e in shown_events(browser))
                browser.eval("document.getElementById('filter-clear').click(); true")
                browser.wait(f"{EVENT_ROWS}.length > 3", "every event again")
                assert browser.eval("document.getElementById('filter-summary').textContent") == ""

                # fetch the clip from its event; the clips panel follows it to the end; download it
                browser.eval(f"{EVENT_ROWS}.find(r => r.dataset.clip).querySelector('button.fetch').click(); true")
                browser.wait(
                    "document.querySelector('#clip-table tr.clip-job[data-state=complete]') !== null",
                    "the fetch to complete in the clips panel",
                )
                job = browser.eval(
                    "(r => ({clip: r.dataset.clipId, bytes: r.querySelector('td.bytes').textContent,"
                    " progress: r.querySelector('progress').value, who: r.children[5].textContent}))"
                    "(document.querySelector('#clip-table tr.clip-job'))"
                )
                assert job == {"clip": "clip-door-1", "bytes": "146.5 KiB / 146.5 KiB", "progress": 100,
                               "who": job["who"]}  # fmt: skip
                assert job["who"].endswith(":night-shift")
                assert fetcher.clip_path(device_id, "clip-door-1").read_bytes() == clip_bytes
                browser.wait("document.querySelector('#clip-table button.download') !== null", "a download button")
                browser.eval("document.querySelector('#clip-table button.download').click(); true")
                downloaded = browser.wait(
                    "document.querySelector('#clip-table button.download').dataset.downloaded", "the download"
                )
                assert int(downloaded) == len(clip_bytes)
                browser.wait(
                    f"{EVENT_ROWS}.find(r => r.dataset.clip).querySelector('button.download') !== null",
                    "the event's clip to be downloadable",
                )

                # the device's own list of clips
                browser.eval(
                    f"document.getElementById('clip-device').value = {device_id!r};"
                    "document.getElementById('clip-lister').requestSubmit(); true"
                )
                browser.wait("document.querySelectorAll('#device-clip-table tr.device-clip').length === 2", "the list")
                assert browser.eval(
                    "[...document.querySelectorAll('#device-clip-table tr.device-clip')].map(r => r.dataset.clipId)"
                ) == ["clip-door-1", "clip-door-0"]
                note = browser.eval("document.getElementById('device-clips-note').textContent")
                assert "as it lists them now" in note
                assert browser.eval("document.getElementById('error').hidden") is True

                # a viewer sees the clips and may download, but gets no fetch button
                browser.eval("document.getElementById('logout').click(); true")
                login(browser, server.url, make_token(store, "viewer"))
                browser.wait("document.querySelector('#clip-table tr.clip-job') !== null", "the fetches for a viewer")
                assert browser.eval("document.querySelectorAll('button.fetch').length") == 0
                assert browser.eval("document.querySelectorAll('button.download').length") >= 1
                assert browser.eval("window.cspViolations") == []
    finally:
        fetcher.stop(2)
        device.stop()


def test_a_replica_without_clip_fetches_still_shows_the_fleet(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/fleet.db") as store:
        fill_fleet(store, time.time(), points=5)
        with serve(StoreService(store), "127.0.0.1", 0, insecure_local=True) as server:
            dom = parse(run_chromium(tmp_path, "--dump-dom", server.url + "/"))
    assert dom.by_id("error").attrs.get("hidden") is not None, dom.by_id("error").text
    assert dom.by_id("status").text.startswith("updated ")
    assert "Clip fetches cannot be shown" in dom.by_id("clips-empty").text
    assert "HTTP 503" in dom.by_id("clips-empty").text
