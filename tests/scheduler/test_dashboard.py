"""The dashboard rendered by a real headless Chromium against a real API server and fleet store.

Chromium runs the page's own JavaScript (``--dump-dom`` after a virtual-time budget that covers a few
2 s polls), and the test reads the resulting DOM: device rows, states, fps, one plot per device, the
workloads and the event log. Those tests serve the API with ``insecure_local`` (no login); the login itself
(a real token typed into the form, the role shown, logging out, a revoked token sent back to the login) is
driven over the DevTools protocol (tests/support/devtools.py). Skipped, saying why, where Chromium is not
installed.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from lepton_edge.scheduler.api import ApiServer, serve
from lepton_edge.scheduler.store import Store
from lepton_edge.scheduler.stores import open_store
from tests.scheduler.test_api import Http, StoreService, fill_fleet
from tests.support.api_client import make_token
from tests.support.devtools import Browser
from tests.support.real_parts import missing_real_part

pytestmark = pytest.mark.integration

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--virtual-time-budget=5000",
]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    missing_real_part("Chromium is not installed (apt-get install -y chromium)")


def run_chromium(tmp_path: Path, *args: str) -> str:
    profile = tmp_path / f"chromium-profile-{time.monotonic_ns()}"
    done = subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    return done.stdout


# ------------------------------------------------------------------------------------ a small DOM tree

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    content: list[Node | str] = field(default_factory=list)
    """Child elements and text, in document order."""

    @property
    def children(self) -> list[Node]:
        return [c for c in self.content if isinstance(c, Node)]

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.content)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def find_all(self, tag: str, cls: str | None = None) -> list[Node]:
        found = []
        for child in self.children:
            if child.tag == tag and (cls is None or cls in child.classes):
                found.append(child)
            found.extend(child.find_all(tag, cls))
        return found

    def find(self, tag: str, cls: str | None = None) -> Node:
        matches = self.find_all(tag, cls)
        assert matches, f"no <{tag} class={cls!r}> under <{self.tag} {self.attrs}>"
        return matches[0]

    def by_id(self, element_id: str) -> Node:
        if self.attrs.get("id") == element_id:
            return self
        for child in self.children:
            try:
                return child.by_id(element_id)
            except LookupError:
                continue
        raise LookupError(element_id)


class TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].content.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].content.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].content.append(data)


def parse(html: str) -> Node:
    builder = TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path}/fleet.db")
    yield s
    s.close()


@pytest.fixture
def server(store: Store) -> Iterator[ApiServer]:
    with serve(StoreService(store), "127.0.0.1", 0, insecure_local=True) as running:
        yield running


# ------------------------------------------------------------------------------------------------ tests


def test_dashboard_renders_the_fleet(tmp_path: Path, store: Store, server: ApiServer) -> None:
    fill_fleet(store, time.time(), points=40)
    dom = parse(run_chromium(tmp_path, "--dump-dom", server.url + "/"))

    assert dom.by_id("error").attrs.get("hidden") is not None, dom.by_id("error").text
    assert dom.by_id("status").text.startswith("updated ")
    assert dom.by_id("insecure-banner").attrs.get("hidden") is None  # --insecure-local says so
    assert dom.by_id("login").attrs.get("hidden") is not None
    assert "2 / 3 devices online" in " ".join(dom.by_id("summary").text.split())

    rows = dom.by_id("device-table").find_all("tr", "device")
    states = {r.attrs["data-device-id"]: r.attrs["data-state"] for r in rows}
    assert states == {"jetson-01": "online", "jetson-02": "online", "nuc-01": "offline"}
    by_id = {r.attrs["data-device-id"]: r for r in rows}
    for device_id, required in (("jetson-01", 25.0), ("jetson-02", 20.0), ("nuc-01", 10.0)):
        latest = store.telemetry_history(device_id, limit=1)[0]["data"]
        row = by_id[device_id]
        shown = f"{latest['fps']:.1f}" if device_id != "nuc-01" else "\u2013"  # offline: no rate
        assert row.find("td", "fps").text == f"{shown} / {required:.1f}"
        p50, p99 = latest["latency_ms"]["e2e"]["p50"], latest["latency_ms"]["e2e"]["p99"]
        assert row.find("td", "latency").text == f"{p50:.1f} / {p99:.1f}"
        assert row.find("td", "model").text == "yolov8n"
    assert "throttled" in by_id["jetson-02"].find("td", "state").text
    assert by_id["nuc-01"].find("td", "state").text.strip() == "offline"
    assert by_id["jetson-01"].find("td", "temp").text == "55.0"

    # one card per device, each with an fps plot and a latency plot drawn from the 40-point history
    cards = {c.attrs["data-device-id"]: c for c in dom.by_id("plots").find_all("div", "card")}
    assert set(cards) == set(states)
    for device_id, card in cards.items():
        fps_plot = card.find("svg", "fps")
        lines = fps_plot.find_all("polyline", "fps")
        assert sum(len(line.attrs["points"].split()) for line in lines) == 40, device_id
        assert fps_plot.find_all("line", "reference"), "required fps line"
        latency_plot = card.find("svg", "latency")
        assert latency_plot.find_all("polyline", "p50") and latency_plot.find_all("polyline", "p99")

    workloads = {
        r.attrs["data-workload-id"]: r.attrs["data-status"]
        for r in dom.by_id("workload-table").find_all("tr", "workload")
    }
    assert workloads == {
        "gate-east": "applied",
        "gate-west": "pending",
        "lobby": "failed",
        "parking": "unplaced",
    }

    events = dom.by_id("event-table").find_all("tr", "event")
    assert [e.find("td", "message").text for e in events] == [  # newest first
        "nuc-01 rejected config v2: source unreachable",
        "nuc-01 went offline: connection_lost",
        "jetson-01 came online (session 2)",
    ]
    assert events[0].attrs["data-severity"] == "error"


CSP_WATCH = (
    "window.cspViolations = [];"
    "document.addEventListener('securitypolicyviolation', e => window.cspViolations.push(e.violatedDirective));"
)
LOGIN_SHOWN = "!document.getElementById('login').hidden"
UPDATED = "document.getElementById('status').textContent.startsWith('updated')"


def test_dashboard_logs_in_with_a_token_and_out_again(tmp_path: Path, store: Store) -> None:
    """A real token typed into the login form: the role is shown, the fleet rendered, the token kept in
    sessionStorage and never in the URL; logging out and a revoked token both return to the login."""
    fill_fleet(store, time.time(), points=10)
    viewer = make_token(store, "viewer", "wall-screen")
    flags = [f for f in CHROMIUM_FLAGS if not f.startswith("--virtual-time-budget")]
    with serve(StoreService(store), "127.0.0.1", 0) as server, Browser(
        chromium(), flags, tmp_path / "profile"
    ) as browser:
        browser.on_new_document(CSP_WATCH)
        browser.send("Network.enable", session=True)
        browser.goto(server.url + "/")
        browser.wait(LOGIN_SHOWN, "the login form")
        assert browser.eval("document.getElementById('dashboard').hidden") is True

        browser.eval(f"document.getElementById('login-token').value = {viewer!r};"
                     "document.getElementById('login-form').requestSubmit(); true")
        browser.wait(UPDATED, "the dashboard to load the fleet")
        assert browser.eval("document.getElementById('whoami').textContent").endswith(":wall-screen (viewer)")
        assert browser.eval("document.querySelectorAll('#device-table tr.device').length") == 3
        assert browser.eval("document.getElementById('insecure-banner').hidden") is True
        assert browser.eval("sessionStorage.getItem('lepton-edge.api-token')") == viewer
        assert viewer not in browser.eval("location.href")
        requests = [e["params"]["request"] for e in browser.events if e["method"] == "Network.requestWillBeSent"]
        api_calls = [(r["url"].split("/api/")[1], r["headers"].get("Authorization")) for r in requests
                     if "/api/" in r["url"]]
        assert api_calls[0] == ("whoami", None)  # before logging in: nothing to send
        assert len(api_calls) > 5 and all(auth == f"Bearer {viewer}" for _, auth in api_calls[1:]), api_calls
        assert not any(viewer in r["url"] for r in requests)  # never in a URL
        assert browser.eval("document.getElementById('login-token').value") == ""

        browser.eval("document.getElementById('logout').click(); true")
        browser.wait(LOGIN_SHOWN, "the login form after logging out")
        assert browser.eval("sessionStorage.getItem('lepton-edge.api-token')") is None

        admin = make_token(store, "admin", "ops")
        browser.eval(f"document.getElementById('login-token').value = {admin!r};"
                     "document.getElementById('login-form').requestSubmit(); true")
        browser.wait(UPDATED, "the dashboard after logging in again")
        assert browser.eval("document.getElementById('whoami').dataset.role") == "admin"
        store.revoke_api_token(admin.split("_")[1], time.time())
        browser.wait(LOGIN_SHOWN, "the login form once the token is revoked", timeout=15)
        assert "revoked" in browser.eval("document.getElementById('login-error').textContent")
        assert browser.eval("window.cspViolations") == []


def test_dashboard_shows_a_store_outage_instead_of_breaking(
    tmp_path: Path, store: Store, server: ApiServer
) -> None:
    store.close()
    dom = parse(run_chromium(tmp_path, "--dump-dom", server.url + "/"))
    error = dom.by_id("error")
    assert error.attrs.get("hidden") is None
    assert "Cannot refresh from the scheduler API" in error.text
    assert "HTTP 503" in error.text and "fleet store cannot answer" in error.text
    assert dom.by_id("status").text == "stale"


def test_dashboard_screenshot(tmp_path: Path, store: Store, server: ApiServer) -> None:
    fill_fleet(store, time.time(), points=60)
    shot = tmp_path / "dashboard.png"
    run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,900", server.url + "/")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 900)
    assert len(data) > 20_000  # a rendered page, not a blank one


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def test_dashboard_follows_a_live_scheduler_and_simulated_fleet(tmp_path: Path, fresh_broker: Any) -> None:
    """A real scheduler, real mosquitto and simulated devices speaking the protocol: the dashboard shows a
    failover (a killed device goes offline, its workload moves) with live telemetry plots."""
    from lepton_edge.config.scheduler import parse_scheduler_config
    from lepton_edge.scheduler.service import SchedulerService
    from lepton_edge.scheduler.simulator import DeviceSpec, FleetSimulator

    config = parse_scheduler_config(
        {
            "store_url": f"sqlite:///{tmp_path}/fleet.db",
            "mqtt": {
                "host": "127.0.0.1",
                "port": fresh_broker.port,
                "reconnect_min_s": 0.05,
                "reconnect_max_s": 0.5,
            },
            "leader_check_s": 0.2,
            "placement": {"debounce_s": 0.05},
        }
    )
    gpu = {"onnxruntime": "1.20.1", "tensorrt": "10.3.0"}
    specs = [
        DeviceSpec("cpu-a", capacity_fps=40),
        DeviceSpec("cpu-b", capacity_fps=40),
        DeviceSpec("gpu-a", accelerator="cuda", runtimes=gpu, capacity_fps=160),
    ]
    with (
        SchedulerService(config) as service,
        serve(service, "127.0.0.1", 0, insecure_local=True) as server,
        FleetSimulator("127.0.0.1", fresh_broker.port, specs, rate_hz=5, mode="device") as fleet,
    ):
        http = Http(server.url)
        door = {"source_uri": "rtsp://10.0.0.1/door?fps=6", "model": "door.onnx", "accelerator": "cpu"}
        yard = {"source_uri": "rtsp://10.0.0.2/yard?fps=25", "model": "yard.onnx", "runtime": "tensorrt"}
        for body in (
            {**door, "workload_id": "door", "required_fps": 5},
            {**yard, "workload_id": "yard", "required_fps": 20},
        ):
            status, answer = http.call("POST", "/api/workloads", body)
            assert status == 201, answer

        def placed() -> dict[str, tuple[str, str]]:
            return {a["workload_id"]: (a["device_id"], a["status"]) for a in http.get("/api/assignments")[1]}

        def both_applied() -> dict[str, tuple[str, str]] | None:
            now = placed()
            return now if len(now) == 2 and all(status == "applied" for _, status in now.values()) else None

        first = wait_for("both workloads applied", both_applied)
        victim = first["door"][0]
        assert first["yard"][0] == "gpu-a" and victim in ("cpu-a", "cpu-b")
        fleet.kill(victim)
        survivor = "cpu-b" if victim == "cpu-a" else "cpu-a"
        wait_for("door to move and run", lambda: placed().get("door") == (survivor, "applied"))
        wait_for(f"{victim} offline", lambda: not http.get(f"/api/devices/{victim}")[1]["online"])
        wait_for(
            f"{survivor} to report door's frames",
            lambda: http.get(f"/api/devices/{survivor}")[1]["fps"] == 6.0,
        )
        dom = parse(run_chromium(tmp_path, "--dump-dom", server.url + "/"))

    assert dom.by_id("error").attrs.get("hidden") is not None, dom.by_id("error").text
    rows = {r.attrs["data-device-id"]: r for r in dom.by_id("device-table").find_all("tr", "device")}
    assert {d: r.attrs["data-state"] for d, r in rows.items()} == {
        victim: "offline",
        survivor: "online",
        "gpu-a": "online",
    }
    assert rows[survivor].find("td", "fps").text == "6.0 / 5.0"
    assert rows["gpu-a"].find("td", "fps").text == "25.0 / 20.0"
    assert rows[survivor].find("td", "workloads").text == "door"
    assert rows[victim].find("td", "workloads").text == "\u2013"  # nothing assigned
    cards = {c.attrs["data-device-id"]: c for c in dom.by_id("plots").find_all("div", "card")}
    assert set(cards) == set(rows)
    for device_id in (survivor, "gpu-a"):
        assert cards[device_id].find("svg", "fps").find_all("polyline", "fps"), device_id
        assert cards[device_id].find("svg", "latency").find_all("polyline", "p50"), device_id
    workloads = {
        r.attrs["data-workload-id"]: (r.find("td", "device").text, r.attrs["data-status"])
        for r in dom.by_id("workload-table").find_all("tr", "workload")
    }
    assert workloads == {"door": (survivor, "applied"), "yard": ("gpu-a", "applied")}
    messages = [e.find("td", "message").text for e in dom.by_id("event-table").find_all("tr", "event")]
    assert any(f"moved from {victim} to {survivor}" in m for m in messages), messages
