"""What every fault scenario uses: the device process, a recording subscriber, and the delivery ledger.

Durable messages are the outbox's high-priority ones (durable results, events, config reports); each
carries a ``lepton-msg-id`` user property. :func:`account` compares the ids the device stored (its
ledger, see ``tests/reliability/device.py``) with the ids the subscriber received.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lepton_edge.config.fleet import MqttConfig, OutboxConfig
from lepton_edge.fleet.mqtt import IncomingMessage, MqttClient
from lepton_edge.fleet.outbox import MESSAGE_ID_PROPERTY, Outbox
from lepton_edge.fleet.protocol import TopicKind, decode, parse_topic
from tests.device.helpers import agent_data, merge_sections

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")
"""Not inherited by the device from the test run; a scenario sets them explicitly."""

BROKER_AUTOSAVE = "autosave_on_changes true\nautosave_interval 1\n"
"""mosquitto saves sessions and queued messages on every change, so that a SIGKILLed broker comes back
with the subscriber's persistent session (the default saves on a graceful stop only)."""


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for: {what}")
        time.sleep(interval)


# ------------------------------------------------------------------------------------------ device config


RELIABILITY_AGENT: dict[str, Any] = {
    "telemetry_interval_s": 0.5,
    "mqtt": {"keepalive_s": 5, "connect_timeout_s": 2},
    "results": {"durable": True},
    "health_check": {"window_s": 1.0, "min_frames": 3},
}
"""What the scenarios change in the agent section of :func:`tests.device.helpers.agent_data`."""


def device_config(
    workdir: Path,
    model: Path,
    port: int,
    device_id: str,
    *,
    source: str | dict[str, Any] = "synthetic://shapes?fps=10&width=64&height=48",
    agent: dict[str, Any] | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """A device config with durable results and fast timings; ``agent`` entries are merged in."""
    overrides = merge_sections({"state_dir": str(workdir / "state"), **RELIABILITY_AGENT}, agent or {})
    sections = {"postprocess": {"type": "classify", "top_k": 1}, **sections}
    return agent_data(workdir, model, port, device_id, source=source, agent=overrides, **sections)


EVENT_SCENE = "synthetic://shapes?fps=30&width=160&height=120&seed=5"
"""The synthetic scene the event scenarios watch: shapes crossing its middle lines several times a second."""


def events_config(
    workdir: Path,
    port: int,
    device_id: str,
    *,
    source: str | dict[str, Any] = EVENT_SCENE,
    counts_interval_s: float = 0.5,
    agent: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A device making analytics events: the bundled shapes detector, tracking, two lines and a zone across the
    scene (line crossings, zone enter/exit, counts every ``counts_interval_s``), results in ``events`` mode (no
    per-frame results: every durable message on the results path is an event)."""
    from lepton_edge.data import DEMO_MODEL

    analytics = {
        "coordinates": "normalized",
        "counts_interval_s": counts_interval_s,
        "lines": [
            {"name": "vertical", "start": [0.5, 0], "end": [0.5, 1]},
            {"name": "horizontal", "start": [0, 0.5], "end": [1, 0.5]},
        ],
        "zones": [{"name": "left", "polygon": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]}],
    }
    return device_config(
        workdir,
        DEMO_MODEL.resolve(),
        port,
        device_id,
        source=source,
        agent=merge_sections({"results": {"mode": "events"}}, agent or {}),
        postprocess={"type": "detect"},
        tracking={},
        analytics=analytics,
    )


# ----------------------------------------------------------------------------------------- device process


class DeviceProcess:
    """``lepton-edge run --config`` in its own process (through ``tests.reliability.device``).

    The config is written as YAML in ``workdir``; the log (all runs, appended) is ``workdir/device.log``;
    the ledger of outbox puts is ``workdir/ledger.jsonl``. Restarting keeps the state folder (and outbox).
    """

    def __init__(
        self,
        workdir: Path,
        config: dict[str, Any],
        *,
        env: dict[str, str] | None = None,
        stuck_file: Path | None = None,
        sink_stats: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.config_path = self.workdir / "device.yaml"
        self.ledger_path = self.workdir / "ledger.jsonl"
        self.log_path = self.workdir / "device.log"
        self.env = env or {}
        self.stuck_file = stuck_file
        self.sink_stats_path = self.workdir / "sinks.json" if sink_stats else None
        """The event and clip sinks' counters, written by the device (``--sink-stats``)."""
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def device_id(self) -> str:
        return str(self.config["device_id"])

    @property
    def outbox_path(self) -> Path:
        outbox = self.config["agent"].get("outbox", {})
        return Path(outbox.get("path") or Path(self.config["agent"]["state_dir"]) / "outbox.db")

    def start(self) -> DeviceProcess:
        assert not self.alive, "the device is already running"
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        command = [sys.executable, "-m", "tests.reliability.device", "--ledger", str(self.ledger_path)]
        if self.stuck_file is not None:
            command += ["--stuck-file", str(self.stuck_file)]
        if self.sink_stats_path is not None:
            command += ["--sink-stats", str(self.sink_stats_path)]
        command += ["--", "--log-level", "info", "run", "--config", str(self.config_path)]
        inherited = {k: v for k, v in os.environ.items() if k not in SYSTEMD_VARIABLES}
        env = {**inherited, "PYTHONUNBUFFERED": "1", **self.env}
        with open(self.log_path, "ab") as log:
            log.write(f"\n----- start {self.starts + 1} -----\n".encode())
            log.flush()
            self.process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.starts += 1
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: no cleanup at all (no death message, nothing flushed)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def terminate(self, timeout: float = 30.0) -> tuple[int, float]:
        """SIGTERM and wait; returns (exit code, seconds to exit). SIGKILL after ``timeout``."""
        assert self.process is not None, "never started"
        start = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(
                f"the device did not exit within {timeout:g} s of SIGTERM; log tail:\n{self.log_tail()}"
            ) from None
        return code, time.monotonic() - start

    def close(self) -> None:
        self.kill()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def ledger(self) -> list[dict[str, Any]]:
        try:
            lines = self.ledger_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:  # a line cut by SIGKILL mid-write
                continue
        return out

    def sink_stats(self) -> dict[str, Any]:
        """The latest counters of the device's analytics event sinks and clip sinks (``events``, ``clips``: one
        entry per sink the process made); empty lists before the first write."""
        assert self.sink_stats_path is not None, "start the device with sink_stats=True"
        try:
            return dict(json.loads(self.sink_stats_path.read_text()))
        except (FileNotFoundError, ValueError):
            return {"events": [], "clips": []}

    def outbox_state(self) -> dict[str, Any]:
        """Depth and drop counters of the outbox on disk (the device must not be running)."""
        assert not self.alive, "the outbox is locked while the device runs"
        with Outbox(OutboxConfig(path=self.outbox_path)) as outbox:
            stats = outbox.stats()
            pending = [m.uid for m in outbox.pending()]
        return {"depth": stats.depth, "dropped": stats.dropped, "pending": pending}


# -------------------------------------------------------------------------------------------- subscriber


@dataclass(frozen=True, slots=True)
class Delivery:
    topic: str
    kind: TopicKind | None
    uid: str | None
    payload: bytes
    at: float
    """Monotonic time of arrival."""

    def decoded(self) -> Any:
        assert self.kind is not None
        return decode(self.kind, self.payload, self.topic)


class Subscriber:
    """A fleet-side client: a persistent session subscribed to everything one device sends (QoS 1)."""

    def __init__(self, port: int, device_id: str, client_id: str | None = None) -> None:
        config = MqttConfig(
            host="127.0.0.1",
            port=port,
            client_id=client_id or f"rec-{device_id}",
            reconnect_min_s=0.05,
            reconnect_max_s=0.3,
        )
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        self.client = MqttClient(config)
        self.client.subscribe(f"lepton/v1/devices/{device_id}/#", self._on_message)

    def start(self) -> Subscriber:
        self.client.start()
        assert self.client.wait_connected(10), self.client.last_error
        assert self.client.wait_subscribed(5)
        return self

    def stop(self) -> None:
        self.client.stop(timeout=1.0)

    def _on_message(self, msg: IncomingMessage) -> None:
        try:
            kind: TopicKind | None = parse_topic(msg.topic).kind
        except Exception:
            kind = None
        delivery = Delivery(
            msg.topic, kind, msg.user_properties.get(MESSAGE_ID_PROPERTY), msg.payload, time.monotonic()
        )
        with self._lock:
            self.deliveries.append(delivery)

    def all(self, kind: TopicKind | None = None) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if kind is None or d.kind is kind]

    def decoded(self, kind: TopicKind) -> list[Any]:
        return [d.decoded() for d in self.all(kind) if d.payload]

    def uids(self) -> set[str]:
        with self._lock:
            return {d.uid for d in self.deliveries if d.uid}

    def count(self, kind: TopicKind) -> int:
        return len(self.all(kind))

    def first_new_after(self, since: float, seen: set[str], kind: TopicKind | None = None) -> Delivery | None:
        """The first delivery at or after ``since`` whose id is not in ``seen`` (``kind`` filters)."""
        for d in self.all(kind):
            if d.at >= since and d.uid and d.uid not in seen:
                return d
        return None

    def wait(self, kind: TopicKind, predicate: Callable[[Any], bool], timeout: float, what: str) -> Any:
        """The first decoded message of ``kind`` matching ``predicate``."""
        return wait_until(lambda: next((m for m in self.decoded(kind) if predicate(m)), None), timeout, what)


# ------------------------------------------------------------------------------------------- accounting


@dataclass
class Accounting:
    durable_sent: int
    durable_delivered: int
    durable_lost: list[str]
    """Ids the device stored but the subscriber never received."""
    duplicates: int
    """Deliveries beyond the first of the same id (allowed: at least once)."""
    unledgered: int
    """Durable ids received that the ledger misses (stored just before a SIGKILL cut the ledger line)."""
    telemetry_sent: int
    telemetry_delivered: int
    put_failures: Counter[str] = field(default_factory=Counter)
    """Puts that raised (e.g. disk full), by priority: never stored, so never promised."""
    conflicting_duplicates: list[str] = field(default_factory=list)
    """Ids delivered twice with different payloads (must be empty: duplicates must be identifiable)."""

    def summary(self) -> dict[str, Any]:
        return {
            "durable_sent": self.durable_sent,
            "durable_delivered": self.durable_delivered,
            "durable_lost": len(self.durable_lost),
            "duplicates": self.duplicates,
            "unledgered_deliveries": self.unledgered,
            "telemetry_sent": self.telemetry_sent,
            "telemetry_delivered": self.telemetry_delivered,
            "put_failures": dict(self.put_failures),
        }


def account(device: DeviceProcess, subscriber: Subscriber) -> Accounting:
    """Compare what the device stored in its outbox (the ledger) with what the subscriber received."""
    ledger = device.ledger()
    durable = {r["uid"] for r in ledger if r["event"] == "put" and r["priority"] == "high"}
    telemetry = {r["uid"] for r in ledger if r["event"] == "put" and r["priority"] == "low"}
    failures = Counter(r["priority"] for r in ledger if r["event"] == "put_failed")
    deliveries = [d for d in subscriber.all() if d.uid]
    counts = Counter(d.uid for d in deliveries)
    payloads: dict[str, bytes] = {}
    conflicting = []
    for d in deliveries:
        assert d.uid is not None
        if payloads.setdefault(d.uid, d.payload) != d.payload:
            conflicting.append(d.uid)
    received = set(counts)
    durable_received = {d.uid for d in deliveries if d.kind is not TopicKind.TELEMETRY}
    return Accounting(
        durable_sent=len(durable),
        durable_delivered=len(durable & received),
        durable_lost=sorted(durable - received),
        duplicates=sum(n - 1 for n in counts.values()),
        unledgered=len(durable_received - durable),  # type: ignore[operator]
        telemetry_sent=len(telemetry),
        telemetry_delivered=len(telemetry & received),
        put_failures=failures,
        conflicting_duplicates=sorted(set(conflicting)),
    )


@dataclass
class EventAccounting:
    """Analytics events: what the device created (its outbox puts, by event id) against what arrived."""

    created: int
    """Distinct analytics event ids the device put in its outbox."""
    received: int
    """Distinct analytics event ids the subscriber received (after dedup by id)."""
    lost: list[str]
    """Created, never received."""
    duplicates: int
    """Deliveries beyond the first of an event id."""
    conflicting: list[str]
    """Event ids delivered with different payloads (must be empty)."""
    unexpected: int
    """Event ids received that the device never put (must be 0: nothing invented)."""
    by_kind: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        return {
            "events_created": self.created,
            "events_received": self.received,
            "events_lost": len(self.lost),
            "event_duplicates": self.duplicates,
            "events_by_kind": dict(self.by_kind),
        }


def analytics_puts(device: DeviceProcess, before: float | None = None) -> list[dict[str, Any]]:
    """The ledger's analytics event puts (at wall time < ``before`` when given)."""
    return [
        r
        for r in device.ledger()
        if r["event"] == "put"
        and str(r.get("kind") or "").startswith("analytics.")
        and (before is None or r["t"] < before)
    ]


def account_events(device: DeviceProcess, subscriber: Subscriber) -> EventAccounting:
    """Analytics events created by the device (ledger) against those received, deduplicated by event id."""
    created: dict[str, str] = {r["event_id"]: r["kind"] for r in analytics_puts(device)}
    counts: Counter[str] = Counter()
    payloads: dict[str, bytes] = {}
    conflicting: set[str] = set()
    for d in subscriber.all(TopicKind.EVENT):
        try:
            event = json.loads(d.payload)
        except ValueError:
            continue
        if not str(event.get("kind", "")).startswith("analytics."):
            continue
        counts[event["id"]] += 1
        if payloads.setdefault(event["id"], d.payload) != d.payload:
            conflicting.add(event["id"])
    return EventAccounting(
        created=len(created),
        received=len(set(counts) & set(created)),
        lost=sorted(set(created) - set(counts)),
        duplicates=sum(n - 1 for n in counts.values()),
        conflicting=sorted(conflicting),
        unexpected=len(set(counts) - set(created)),
        by_kind=Counter(created.values()),
    )


def wait_all_delivered(device: DeviceProcess, subscriber: Subscriber, timeout: float = 15.0) -> None:
    """Wait until every durable id in the ledger has been received (fails listing a few missing ones)."""

    def done() -> bool:
        ledger = device.ledger()
        durable = {r["uid"] for r in ledger if r["event"] == "put" and r["priority"] == "high"}
        return durable <= subscriber.uids()

    try:
        wait_until(done, timeout, "every durable message the device stored to reach the subscriber")
    except AssertionError:
        missing = account(device, subscriber).durable_lost
        raise AssertionError(
            f"{len(missing)} durable message(s) stored by the device never arrived, e.g. {missing[:5]}; "
            f"device log tail:\n{device.log_tail()}"
        ) from None


def results_by_session(subscriber: Subscriber) -> dict[int, list[int]]:
    """Result seqs per session, first delivery of each message id only, in arrival order."""
    seen: set[str] = set()
    out: dict[int, list[int]] = {}
    for result in subscriber.decoded(TopicKind.RESULT):
        if result.message_id in seen:
            continue
        seen.add(result.message_id)
        out.setdefault(result.session_id, []).append(result.seq)
    return out


def max_outbox_depth(subscriber: Subscriber) -> int:
    """The deepest outbox any delivered telemetry message reported (the backlog an outage built)."""
    return max((t.outbox.depth for t in subscriber.decoded(TopicKind.TELEMETRY)), default=0)


def wait_quiet(subscriber: Subscriber, quiet_s: float = 0.5, timeout: float = 10.0) -> None:
    """Wait until no message arrived for ``quiet_s`` (what was already on its way has landed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = max((d.at for d in subscriber.all()), default=0.0)
        if time.monotonic() - last >= quiet_s:
            return
        time.sleep(0.05)
    raise AssertionError(f"messages kept arriving for {timeout:g} s")


def request(port: int, device_id: str, name: str, timeout: float = 10.0) -> Any:
    """Send command ``name`` to the device (MQTT v5 request/response) and return its CommandResponse."""
    import uuid

    from lepton_edge.fleet.protocol import (
        CommandRequest,
        CommandResponse,
        command_topic,
        encode,
        response_subscription,
        response_topic,
    )

    requester = f"op-{uuid.uuid4().hex[:8]}"
    answers: list[IncomingMessage] = []
    client = MqttClient(MqttConfig(host="127.0.0.1", port=port, client_id=requester, session_expiry_s=0))
    client.subscribe(response_subscription(requester), answers.append)
    client.start()
    try:
        assert client.wait_connected(timeout), client.last_error
        assert client.wait_subscribed(timeout)
        correlation = uuid.uuid4().bytes
        client.publish(
            command_topic(device_id, name),
            encode(CommandRequest(name=name)),
            qos=1,
            response_topic=response_topic(requester, device_id),
            correlation_data=correlation,
            message_expiry_interval=int(timeout),
        )
        answer = wait_until(
            lambda: next((m for m in answers if m.correlation_data == correlation), None),
            timeout,
            f"the device's answer to {name}",
        )
    finally:
        client.stop(timeout=1.0)
    response = decode(TopicKind.COMMAND_RESPONSE, answer.payload, answer.topic)
    assert isinstance(response, CommandResponse)
    return response
