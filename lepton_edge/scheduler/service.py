"""The scheduler service: MQTT ingestion, liveness, placement triggers and failover, leader election.

One :class:`SchedulerService` per replica. Threads and what they do:

- the MQTT network thread decodes every message (:func:`protocol.decode`), rejects and counts hostile
  ones, tracks sequences and liveness in memory, and hands store work to the two workers below; it
  never waits for the store;
- the *writer* writes telemetry in batches (``store.record_telemetry_batch``: one transaction per
  batch on the SQL stores), so ingestion keeps up with thousands of devices;
- the *control* worker applies births, deaths, config reports and device events to the store, in
  arrival order, retrying while the store is unavailable;
- the *planner* (leader only) batches placement triggers (debounce), runs :func:`placement.plan`,
  applies the plan atomically and publishes each affected device's desired config (retained, QoS 1);
- the *housekeeper* renews the leadership (``store.try_lead``), sweeps liveness (devices silent for
  ``heartbeat_timeout_s`` go offline) and logs statistics.

docs/scheduler.md describes the policies, the device config a workload becomes, and scale-out.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lepton_edge.config.scheduler import SchedulerConfig, load_scheduler_config
from lepton_edge.core.errors import LeptonError
from lepton_edge.core.metrics import TokenBucket
from lepton_edge.fleet.mqtt import IncomingMessage, MqttClient
from lepton_edge.fleet.protocol import (
    FLEET_REBIRTH_TOPIC,
    Birth,
    DesiredConfig,
    ProtocolError,
    RebirthRequest,
    ReportedConfig,
    SequenceTracker,
    Telemetry,
    TopicKind,
    config_desired_topic,
    decode,
    encode,
    parse_topic,
    rebirth_topic,
    subscription,
    telemetry_topic,
)
from lepton_edge.fleet.protocol import Death as DeathMessage
from lepton_edge.fleet.protocol import Event as EventMessage
from lepton_edge.scheduler import placement
from lepton_edge.scheduler.models import Assignment, Workload
from lepton_edge.scheduler.store import EncodedJson, Store, StoreError, StoreUnavailable, TelemetryItem, learn_capacity
from lepton_edge.scheduler.stores import open_store

log = logging.getLogger("lepton_edge.scheduler.service")

REJECT_REASONS = ("invalid_topic", "malformed", "spoofed", "flood", "unknown_session", "backlog_full")
"""Why a message is rejected; each is counted and recorded as an event (rate-limited per reason)."""
REBIRTH_INTERVAL_S = 10.0
"""At most one rebirth request per device in this many seconds."""
UNKNOWN_SESSION_GRACE_S = 2.0
"""How long telemetry of an unknown session waits for its birth before the device is asked for one."""
CONTROL_QUEUE_MAX = 100_000
RECENT_EVENT_IDS = 10_000
UNKNOWN_DEVICES_MAX = 10_000
"""Devices never seen born that this replica remembers (for rate limits); the oldest are forgotten."""
CAPACITY_CHANGE = 0.2
"""A device's learned capacity for the model of an unplaced workload that appears, or moves by more than
this fraction since the last re-plan it triggered, triggers a re-plan."""


# ---------------------------------------------------------------------------------------------- pieces


@dataclass(eq=False)
class DeviceView:
    """What this replica knows about one device in memory (the store holds the shared truth)."""

    device_id: str
    bucket: TokenBucket
    session: int | None = None
    death_session: int = 0
    """The newest session whose death was seen: a birth of it (or older) does not bring the device back."""
    online: bool = False
    last_seen: float = 0.0
    tracker: SequenceTracker = field(default_factory=SequenceTracker)
    throttled: bool = False
    low_reports: int = 0
    under_rate: bool = False
    rebirth_at: float = 0.0
    """When a rebirth was last requested (rate limit)."""
    resolve_at: float = 0.0
    """When the store was last asked about an unknown session (rate limit)."""
    last_report: tuple[int, str] | None = None
    capacity: dict[str, float] = field(default_factory=dict)
    """Leader: fps per model learned from this device's telemetry (the store's rule), for models of
    unplaced workloads only."""
    capacity_replanned: dict[str, float] = field(default_factory=dict)
    """Leader: the capacity per model at the last re-plan it triggered."""


def device_config_for(workload: Workload) -> dict[str, Any]:
    """The device config document (``DesiredConfig.config``) that runs ``workload``.

    ``model.path`` is the workload's model (relative paths are relative to the device's state folder),
    ``model.artifact`` its artifact when it has one, ``source.uri`` its source; ``workload.config`` is
    merged on top (nested mappings merge, other values replace).
    """
    model: dict[str, Any] = {"path": workload.model}
    if workload.artifact:
        model["artifact"] = dict(workload.artifact)
    return _merge({"model": model, "source": {"uri": workload.source_uri}}, dict(workload.config))


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------------------------- service


class SchedulerService:
    """One scheduler replica. ``start()`` connects and starts the workers; ``stop()`` ends them.

    ``store``: an open store (the caller keeps ownership); by default the service opens
    ``config.store_url`` and closes it on stop.
    """

    def __init__(self, config: SchedulerConfig, store: Store | None = None) -> None:
        self.config = config
        self.replica_id = config.replicas.replica_id
        self._owns_store = store is None
        self.store: Store = store or open_store(
            config.store_url, throttle_temperature_c=config.placement.thermal_limit_c
        )
        shared = config.replicas.shared_subscriptions
        self.rebirth_on_gap = not shared
        """Ask for a rebirth when a sequence gap is seen. Off with shared subscriptions: each replica then
        sees only part of a device's stream (round-robin brokers), so gaps are normal."""
        self.mqtt = MqttClient(config.mqtt, on_connected=self._on_connected)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._stop_deadline = math.inf
        self._threads: list[threading.Thread] = []
        self._started = False
        self._mqtt_started = False
        self._deferred_rebirth: str | None = None

        self._views: dict[str, DeviceView] = {}
        self._unknown: collections.OrderedDict[str, DeviceView] = collections.OrderedDict()
        self._unresolved: dict[str, tuple[int, int, float]] = {}
        """Devices whose telemetry came from an unknown session -> (session, seq, when)."""
        self.counts: collections.Counter[str] = collections.Counter()
        self.rejected: collections.Counter[str] = collections.Counter()
        self._reject_event_at: dict[str, float] = {}
        self._reject_since_event: collections.Counter[str] = collections.Counter()
        self._recent_event_ids: collections.OrderedDict[str, None] = collections.OrderedDict()

        # telemetry writer
        self._tq: collections.deque[TelemetryItem] = collections.deque()
        self._tq_cond = threading.Condition()
        self._enqueued = 0
        self._written_mark = 0
        self.backlog_peak = 0

        # control worker
        self._cq: collections.deque[Callable[[], None]] = collections.deque()
        self._cq_cond = threading.Condition()

        # store health
        self.store_ok = True
        self._store_error: str | None = None
        self._resync_pending = False
        """The store came back after an outage: the next leader asks the fleet for a rebirth."""
        self._store_error_logged_at = 0.0

        # placement
        self._is_leader = False
        self.leader_since: float | None = None
        self._triggers: list[tuple[str, bool]] = []
        self._trigger_mark = 0
        self._plan_cond = threading.Condition()
        self.plans = 0
        self.last_plan_at: float | None = None
        self.last_plan_ms: float | None = None
        self.last_plan_reasons: list[str] = []
        self.moved_total = 0
        self.unplaced: dict[str, str] = {}
        self._unplaced_models: frozenset[str] = frozenset()
        """Model ids of the unplaced workloads: capacity learned for them may let them be placed."""
        self.pushes = 0
        self._cooldowns: dict[tuple[str, str], float] = {}
        self._orphaned_devices: set[str] = set()
        """Devices whose workload was removed: they get a new (idle) desired config at the next plan."""
        self._planned_workloads: dict[str, Workload] | None = None
        self._required_by_device: dict[str, tuple[float, int]] = {}
        """Leader: device -> (fps its workload needs, desired version carrying it), for under-rate checks."""
        self._rate_window: collections.deque[tuple[float, int]] = collections.deque(maxlen=120)

    # ------------------------------------------------------------------------------- lifecycle

    def start(self) -> SchedulerService:
        """Seed the in-memory view from the store, subscribe, and start the workers."""
        if self._started:
            raise RuntimeError("SchedulerService.start() called twice")
        self._started = True
        self._seed_from_store()
        self._check_leadership()  # before any message, so a leader records the first births as events
        cfg = self.config.replicas
        presence_shared = cfg.shared_subscriptions and cfg.share_presence
        self._subscribe(TopicKind.BIRTH, self._on_birth, presence_shared)
        self._subscribe(TopicKind.DEATH, self._on_death, presence_shared)
        self._subscribe(TopicKind.CONFIG_REPORTED, self._on_reported, presence_shared)
        self._subscribe(TopicKind.TELEMETRY, self._on_telemetry, cfg.shared_subscriptions)
        self._subscribe(TopicKind.EVENT, self._on_event, cfg.shared_subscriptions)
        for name, target in (
            ("writer", self._writer_loop),
            ("control", self._control_loop),
            ("planner", self._planner_loop),
            ("housekeeper", self._housekeeper_loop),
        ):
            thread = threading.Thread(target=target, name=f"scheduler-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self.mqtt.start()
        self._mqtt_started = True
        if self._deferred_rebirth is not None:  # leadership was taken before the client existed
            self._publish_fleet_rebirth(self._deferred_rebirth)
            self._deferred_rebirth = None
        log.info(
            "scheduler replica %s: broker %s, store %s, shared subscriptions %s",
            self.replica_id,
            self.mqtt.address,
            type(self.store).__name__,
            "on" if cfg.shared_subscriptions else "off",
        )
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the workers (telemetry still queued is written, within ``timeout``), leave the broker."""
        if not self._started or self._stopping.is_set():
            return
        self._stop_deadline = time.monotonic() + timeout
        self._stopping.set()
        for cond in (self._tq_cond, self._cq_cond, self._plan_cond):
            with cond:
                cond.notify_all()
        for thread in self._threads:  # the writer gives up at the deadline, after the batch in hand
            thread.join(max(0.1, self._stop_deadline + 30 - time.monotonic()))
        self.mqtt.stop(timeout=2.0)
        if self._is_leader:
            self._is_leader = False
            try:
                self.store.release_lead(self.replica_id)
            except StoreError as e:
                log.warning("could not release the leadership: %s", e)
        if self._owns_store:
            self.store.close()
        log.info("scheduler replica %s stopped", self.replica_id)

    def __enter__(self) -> SchedulerService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_connected(self, timeout: float) -> bool:
        return self.mqtt.wait_connected(timeout)

    def _subscribe(self, kind: TopicKind, handler: Callable[[IncomingMessage], None], shared: bool) -> None:
        topic_filter = subscription(kind)
        if shared:
            topic_filter = f"$share/{self.config.replicas.share_group}/{topic_filter}"
        self.mqtt.subscribe(topic_filter, handler, qos=1)

    def _on_connected(self, client: MqttClient) -> None:
        self.counts["mqtt_connects"] += 1

    def _seed_from_store(self) -> None:
        """Start from the store's view of the fleet; silent devices get a full timeout from now."""
        now = time.time()
        try:
            devices = self.store.list_devices()
        except StoreError as e:
            self._store_failed(e)
            return
        for device in devices:
            view = self._view(device.device_id, now)
            view.session = device.session_id or None
            view.online = device.online
            if not device.online and device.offline_reason in ("connection_lost", "shutdown"):
                view.death_session = device.session_id
            view.throttled = device.throttled
            view.last_seen = now
            if device.session_id:
                view.tracker.birth(device.session_id)

    # -------------------------------------------------------------------------- public API

    @property
    def is_leader(self) -> bool:
        """Whether this replica plans and publishes desired configs now."""
        return self._is_leader

    def add_workload(self, workload: Workload) -> Workload:
        """Store a new workload and trigger placement. Raises StoreConflict if the id exists."""
        stored = self.store.add_workload(workload)
        self.store.add_event(
            "workload.added",
            f"workload {workload.workload_id} added ({workload.required_fps:g} fps of {workload.model})",
            workload_id=workload.workload_id,
        )
        self.replan(f"workload {workload.workload_id} added")
        return stored

    def remove_workload(self, workload_id: str) -> bool:
        """Delete a workload (its device gets a new desired config); False if there was none."""
        assignment = next((a for a in self.store.list_assignments() if a.workload_id == workload_id), None)
        if not self.store.delete_workload(workload_id):
            return False
        self.store.add_event("workload.removed", f"workload {workload_id} removed", workload_id=workload_id)
        if assignment is not None:
            self._orphaned_devices.add(assignment.device_id)
        self.replan(f"workload {workload_id} removed")
        return True

    def replan(self, reason: str, *, only_for_unplaced: bool = False) -> None:
        """Ask for a placement run (batched with other triggers within ``placement.debounce_s``).

        ``only_for_unplaced``: the trigger can only help unplaced workloads (a device came online: plans
        never move a running workload to a new device), so the run is skipped when there are none.
        """
        with self._plan_cond:
            self._triggers.append((reason, only_for_unplaced))
            self._trigger_mark = self._enqueued
            self._plan_cond.notify_all()

    def wait_for_plan(self, after: int, timeout: float) -> bool:
        """Wait until more than ``after`` placement runs have completed; True if that happened."""
        deadline = time.monotonic() + timeout
        with self._plan_cond:
            while self.plans <= after:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._plan_cond.wait(remaining)
        return True

    def stats(self) -> dict[str, Any]:
        """Ingestion, rejections, backlog, devices online, placement and leadership, for the API and logs."""
        now = time.time()
        window = list(self._rate_window)
        rate = 0.0
        if len(window) >= 2:
            (t0, n0), (t1, n1) = window[max(0, len(window) - 6)], window[-1]
            rate = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
        try:
            oldest: float | None = self._tq[0][4]
        except IndexError:  # empty (the writer may empty it at any moment)
            oldest = None
        return {
            "replica_id": self.replica_id,
            "is_leader": self._is_leader,
            "leader_since": self.leader_since,
            "mqtt_connected": self.mqtt.connected,
            "messages_in": self.counts["messages"],
            "messages_per_s": round(rate, 1),
            "telemetry_accepted": self.counts["telemetry"],
            "telemetry_written": self.counts["telemetry_written"],
            "telemetry_ignored": self.counts["telemetry_ignored"],
            "backlog": len(self._tq),
            "backlog_peak": self.backlog_peak,
            "backlog_oldest_s": round(now - oldest, 3) if oldest else 0.0,
            "control_backlog": len(self._cq),
            "rejected": dict(self.rejected),
            "rebirth_requests": self.counts["rebirth_requests"],
            "devices_known": len(self._views),
            "devices_online": sum(1 for v in list(self._views.values()) if v.online),
            "store_ok": self.store_ok,
            "store_error": self._store_error,
            "plans": self.plans,
            "last_plan_at": self.last_plan_at,
            "last_plan_ms": self.last_plan_ms,
            "last_plan_reasons": self.last_plan_reasons[:10],
            "moved_total": self.moved_total,
            "desired_pushes": self.pushes,
            "unplaced": len(self.unplaced),
        }

    # ------------------------------------------------------------------------ ingestion (MQTT thread)

    def _view(self, device_id: str, now: float) -> DeviceView:
        view = self._views.get(device_id)
        if view is None:
            ingest = self.config.ingest
            view = self._unknown.pop(device_id, None) or DeviceView(
                device_id, TokenBucket(ingest.device_rate_hz, ingest.device_burst, now)
            )
            self._views[device_id] = view
        return view

    def _known_or_unknown(self, device_id: str, now: float) -> DeviceView:
        """The device's view; devices never born get a bounded, separately kept one (rate limits only)."""
        view = self._views.get(device_id)
        if view is not None:
            return view
        view = self._unknown.get(device_id)
        if view is None:
            ingest = self.config.ingest
            view = DeviceView(device_id, TokenBucket(ingest.device_rate_hz, ingest.device_burst, now))
            self._unknown[device_id] = view
            while len(self._unknown) > UNKNOWN_DEVICES_MAX:
                self._unknown.popitem(last=False)
        return view

    def _reject(self, reason: str, topic: str, detail: str, device_id: str | None = None) -> None:
        self.rejected[reason] += 1
        self._reject_since_event[reason] += 1
        now = time.monotonic()
        last = self._reject_event_at.get(reason)
        interval = self.config.ingest.event_interval_s
        if last is not None and now - last < interval:
            log.debug("rejected (%s) %s: %s", reason, topic, detail)
            return
        self._reject_event_at[reason] = now
        count, self._reject_since_event[reason] = self._reject_since_event[reason], 0
        log.warning("rejected a message (%s) on %s: %s", reason, topic[:200], detail[:500])
        details = {"topic": topic[:256], "detail": detail[:1000], "count_since_last_event": count}
        self._control(
            lambda: self.store.add_event(
                f"ingest.rejected.{reason}",
                f"rejected {count} message(s): {reason} (e.g. on {topic[:120]})",
                device_id=device_id,
                severity="warning",
                details=details,
            )
        )

    def _admit(self, kind: TopicKind, message: IncomingMessage) -> tuple[str, Any] | None:
        """Parse, rate-limit, decode and check one message; None (counted) if it is rejected."""
        self.counts["messages"] += 1
        topic = message.topic
        try:
            parsed = parse_topic(topic)
        except ProtocolError as e:
            self._reject("invalid_topic", topic, str(e))
            return None
        device_id = parsed.device_id
        if parsed.kind is not kind or device_id is None:
            self._reject("invalid_topic", topic, f"expected a {kind.value} topic")
            return None
        if not message.payload:
            self.counts["empty_payloads"] += 1  # a retained message being cleared: nothing to do
            return None
        now = time.time()
        if not self._known_or_unknown(device_id, now).bucket.take(now):
            self._reject("flood", topic, "device exceeds its message rate (ingest.device_rate_hz)", device_id)
            return None
        try:
            decoded = decode(kind, message.payload, topic)
        except ProtocolError as e:
            self._reject("malformed", topic, str(e), device_id)
            return None
        claimed = getattr(decoded, "device_id", device_id)
        if claimed != device_id:
            self._reject(
                "spoofed", topic, f"payload claims device {claimed!r} on the topic of {device_id!r}", device_id
            )
            return None
        return device_id, decoded

    def _on_birth(self, message: IncomingMessage) -> None:
        admitted = self._admit(TopicKind.BIRTH, message)
        if admitted is None:
            return
        device_id, birth = admitted
        assert isinstance(birth, Birth)
        now = time.time()
        view = self._view(device_id, now)
        if view.session is not None and birth.session_id < view.session:
            self.counts["stale_births"] += 1
            return
        new_session = birth.session_id != view.session
        alive = birth.session_id > view.death_session  # a retained birth can arrive after its own death
        became_online = alive and (not view.online or new_session)
        view.last_seen = now
        if new_session:
            view.session = birth.session_id
            view.tracker.birth(birth.session_id)
        view.online = alive
        capabilities = birth.capabilities.model_dump(mode="json")

        def apply() -> None:
            if not self.store.device_birth(device_id, birth.session_id, capabilities, now):
                return
            if became_online:
                if self._records_presence():
                    self.store.add_event(
                        "device.online",
                        f"device {device_id} online (session {birth.session_id})",
                        device_id=device_id,
                        details={"session_id": birth.session_id, "config_version": birth.config_version},
                    )
                self.replan(f"device {device_id} born", only_for_unplaced=True)

        self._control(apply)

    def _on_death(self, message: IncomingMessage) -> None:
        admitted = self._admit(TopicKind.DEATH, message)
        if admitted is None:
            return
        device_id, death = admitted
        assert isinstance(death, DeathMessage)
        now = time.time()
        view = self._views.get(device_id)
        if view is not None and view.session is not None and death.session_id < view.session:
            self.counts["stale_deaths"] += 1
            log.debug("stale death of %s session %d ignored (current %d)", device_id, death.session_id, view.session)
            return
        was_online = view is not None and view.online
        if view is not None:
            view.online = False
            view.session = max(view.session or 0, death.session_id)
            view.death_session = max(view.death_session, death.session_id)

        def apply() -> None:
            if view is None and self.store.get_device(device_id) is None:
                return  # a death of a device never born: nothing to end
            if not self.store.device_death(device_id, death.session_id, now, death.reason):
                self.counts["stale_deaths"] += 1
                return
            if was_online:
                if self._records_presence():
                    self.store.add_event(
                        "device.offline",
                        f"device {device_id} offline ({death.reason}, session {death.session_id})",
                        device_id=device_id,
                        severity="warning" if death.reason == "connection_lost" else "info",
                        details={"session_id": death.session_id, "reason": death.reason},
                    )
                self.replan(f"device {device_id} died")

        self._control(apply)

    def _on_telemetry(self, message: IncomingMessage) -> None:
        admitted = self._admit(TopicKind.TELEMETRY, message)
        if admitted is None:
            return
        device_id, telemetry = admitted
        assert isinstance(telemetry, Telemetry)
        now = time.time()
        view = self._views.get(device_id)
        session, seq = telemetry.session_id, telemetry.seq
        if view is None or view.session is None or session > view.session or not view.online:
            self._unknown_session(device_id, session, seq, message.topic, now)
            return
        observation = view.tracker.observe(session, seq)
        if not observation.accept:
            self.counts["telemetry_ignored"] += 1
            return
        if observation.needs_rebirth and self.rebirth_on_gap:
            gap = f"telemetry gap: {observation.missing} message(s) missing before seq {seq}"
            self._request_rebirth(view, gap, now)
        view.last_seen = now
        # the store writes the payload's own text: no second encoding
        data = EncodedJson(telemetry.model_dump(), message.payload.decode())
        self._enqueue_telemetry((device_id, session, seq, data, now))
        self._watch_health(view, telemetry, data)
        if self._unplaced_models and self._is_leader:
            self._watch_capacity(view, data)

    def _unknown_session(self, device_id: str, session: int, seq: int, topic: str, now: float) -> None:
        """Telemetry of a session whose birth this replica has not seen: ask the store, else a rebirth."""
        view = self._known_or_unknown(device_id, now)
        if view.session is not None and session < view.session:
            self.counts["telemetry_ignored"] += 1
            return
        self._reject("unknown_session", topic, f"no birth seen for session {session}", device_id)
        if now - view.resolve_at < REBIRTH_INTERVAL_S or len(self._unresolved) >= UNKNOWN_DEVICES_MAX:
            return
        view.resolve_at = now
        # the birth may be on its way: a broker sends QoS 0 telemetry ahead of queued QoS 1 births
        self._unresolved.setdefault(device_id, (session, seq, now))

    def _resolve_unknown_sessions(self) -> None:
        """After a grace period, ask the store about sessions still unknown, else ask for a rebirth."""
        cutoff = time.time() - UNKNOWN_SESSION_GRACE_S
        for device_id, (session, seq, seen) in list(self._unresolved.items()):
            if seen > cutoff:
                continue
            self._unresolved.pop(device_id, None)
            view = self._views.get(device_id)
            if view is not None and view.online and view.session is not None and view.session >= session:
                continue  # its birth arrived meanwhile

            def resolve(device_id: str = device_id, session: int = session, seq: int = seq) -> None:
                device = self.store.get_device(device_id)
                if device is not None and device.online and device.session_id == session:
                    known = self._view(device_id, time.time())  # born at another replica (shared presence)
                    known.session, known.online, known.last_seen = session, True, time.time()
                    known.tracker.observe(session, seq)
                    return
                reason = f"telemetry from session {session}, whose birth was not seen"
                self._request_rebirth(self._known_or_unknown(device_id, time.time()), reason, time.time())

            self._control(resolve)

    def _request_rebirth(self, view: DeviceView, reason: str, now: float) -> None:
        if now - view.rebirth_at < REBIRTH_INTERVAL_S:
            return
        view.rebirth_at = now
        self.counts["rebirth_requests"] += 1
        request = RebirthRequest(reason=reason[:4096], requested_by=self.replica_id, timestamp=now)
        self.mqtt.publish(rebirth_topic(view.device_id), encode(request), qos=1)
        log.info("asked %s for a rebirth: %s", view.device_id, reason)

    def _watch_health(self, view: DeviceView, telemetry: Telemetry, data: dict[str, Any]) -> None:
        """Throttling and under-rate from one telemetry message; a change triggers placement.

        The same rule as the store's (``store.is_throttled``): the hottest sensor at or above the limit.
        """
        temps = telemetry.temperatures_c
        throttled = bool(temps) and max(temps.values()) >= self.config.placement.thermal_limit_c
        if throttled != view.throttled:
            view.throttled = throttled
            state = "throttled" if throttled else "no longer throttled"
            self.counts["throttle_changes"] += 1
            self._control(lambda: self._health_event(view.device_id, f"device {view.device_id} {state}", data))
            self.replan(f"device {view.device_id} {state}")
        required, version = self._required_by_device.get(view.device_id, (0.0, 0))
        if not required or (version and telemetry.config_version != version):
            view.low_reports, view.under_rate = 0, False  # nothing to run yet, or still switching to it
            return
        policy = self.config.placement
        if telemetry.fps < policy.under_rate_ratio * required:
            view.low_reports += 1
            if view.low_reports % policy.under_rate_reports == 0:
                # again every few reports while it lasts: the learned capacity keeps falling, and once it
                # is low enough the plan moves the workload
                message = f"device {view.device_id} under rate: {data.get('fps')} fps of {required:g} required"
                if not view.under_rate:
                    view.under_rate = True
                    self._control(lambda: self._health_event(view.device_id, message, data))
                self.replan(message)
        else:
            view.low_reports, view.under_rate = 0, False

    def _watch_capacity(self, view: DeviceView, data: dict[str, Any]) -> None:
        """Re-plan when the device's capacity for the model of an unplaced workload appears or moves by more
        than :data:`CAPACITY_CHANGE`: a workload too large for the default capacity may fit now.

        The plan reads the capacity the store learned (the same rule, from every replica's telemetry);
        its run waits until this message is written.
        """
        model = data.get("artifact_id")
        if model not in self._unplaced_models:
            return
        view.capacity = learn_capacity(view.capacity, data)
        learned = view.capacity.get(model)
        before = view.capacity_replanned.get(model)
        if learned is None or (before is not None and abs(learned - before) <= CAPACITY_CHANGE * before):
            return
        view.capacity_replanned[model] = learned
        self.counts["capacity_replans"] += 1
        self.replan(f"device {view.device_id} runs {model} at up to {learned:.0f} fps", only_for_unplaced=True)

    def _health_event(self, device_id: str, message: str, data: dict[str, Any]) -> None:
        self.store.add_event(
            "device.health",
            message,
            device_id=device_id,
            severity="warning",
            details={"fps": data.get("fps"), "temperatures_c": data.get("temperatures_c")},
        )

    def _on_reported(self, message: IncomingMessage) -> None:
        admitted = self._admit(TopicKind.CONFIG_REPORTED, message)
        if admitted is None:
            return
        device_id, report = admitted
        assert isinstance(report, ReportedConfig)
        view = self._known_or_unknown(device_id, time.time())
        key = (report.version, report.outcome)
        if view.last_report == key:
            self.counts["duplicate_reports"] += 1
            return
        view.last_report = key
        self._control(lambda: self._apply_report(device_id, report))

    def _apply_report(self, device_id: str, report: ReportedConfig) -> None:
        if device_id not in self._views and self.store.get_device(device_id) is None:
            self.counts["reports_of_unknown_devices"] += 1  # never born: do not create it
            return
        if not self.store.record_reported(device_id, report.version, report.outcome, list(report.errors)):
            return
        affected = [
            a for a in self.store.list_assignments() if a.device_id == device_id and a.desired_version == report.version
        ]
        if report.outcome == "applied":
            for a in affected:
                self.store.set_assignment_status(a.workload_id, "applied", desired_version=report.version)
            return
        reason = f"{report.outcome}: {'; '.join(report.errors)[:500]}"
        until = time.time() + self.config.placement.failure_cooldown_s
        for a in affected:
            self.store.set_assignment_status(a.workload_id, "failed", reason, desired_version=report.version)
            self._cooldowns[(a.workload_id, device_id)] = until
        if self._records_presence():  # one replica records it
            self.store.add_event(
                f"config.{report.outcome}",
                f"device {device_id} {report.outcome} desired config v{report.version}"
                + (f" (workload {', '.join(a.workload_id for a in affected)})" if affected else ""),
                device_id=device_id,
                workload_id=affected[0].workload_id if len(affected) == 1 else None,
                severity="error",
                details={"version": report.version, "errors": list(report.errors)[:10]},
            )
        if affected:
            self.replan(f"device {device_id} {report.outcome} v{report.version}")

    def _on_event(self, message: IncomingMessage) -> None:
        admitted = self._admit(TopicKind.EVENT, message)
        if admitted is None:
            return
        device_id, event = admitted
        assert isinstance(event, EventMessage)
        if not (self.config.replicas.shared_subscriptions or self._is_leader):
            return  # every replica receives it: the leader records it
        key = f"{device_id}/{event.id}"
        if key in self._recent_event_ids:
            self.counts["duplicate_events"] += 1
            return
        self._recent_event_ids[key] = None
        while len(self._recent_event_ids) > RECENT_EVENT_IDS:
            self._recent_event_ids.popitem(last=False)
        self._control(
            lambda: self.store.add_event(
                f"device.{event.kind}"[:64],
                event.message,
                device_id=device_id,
                severity=event.severity,
                details={**event.details, "session_id": event.session_id, "event_id": event.id},
                ts=event.timestamp,
            )
        )

    def _records_presence(self) -> bool:
        """Presence events are written by the leader only, unless presence messages are shared."""
        replicas = self.config.replicas
        return self._is_leader or (replicas.shared_subscriptions and replicas.share_presence)

    # ------------------------------------------------------------------------- telemetry writer

    def _enqueue_telemetry(self, item: TelemetryItem) -> None:
        # no lock per message: only this thread appends, and deque appends and pops are atomic
        queue = self._tq
        ingest = self.config.ingest
        if len(queue) >= ingest.queue_max:
            self._reject("backlog_full", telemetry_topic(item[0]), "the telemetry writer is behind", item[0])
            return
        queue.append(item)
        self._enqueued += 1
        self.counts["telemetry"] += 1
        depth = len(queue)
        if depth > self.backlog_peak:
            self.backlog_peak = depth
        if depth == ingest.batch_size:  # a full batch: write it now (else within flush_interval_s)
            with self._tq_cond:
                self._tq_cond.notify()

    def _writer_loop(self) -> None:
        ingest = self.config.ingest
        while True:
            with self._tq_cond:
                while not self._tq and not self._stopping.is_set():
                    self._tq_cond.wait(ingest.flush_interval_s)
                if self._stopping.is_set() and (not self._tq or time.monotonic() > self._stop_deadline):
                    if self._tq:
                        log.warning("stopping: %d telemetry message(s) not written in time", len(self._tq))
                    return
                if len(self._tq) < ingest.batch_size and not self._stopping.is_set():
                    age = time.time() - self._tq[0][4]
                    if age < ingest.flush_interval_s:
                        self._tq_cond.wait(ingest.flush_interval_s - age)
                batch = [self._tq.popleft() for _ in range(min(len(self._tq), ingest.batch_size))]
            if not batch:
                continue
            try:
                self._write_batch(batch)
            except StoreUnavailable as e:
                self._store_failed(e)
                with self._tq_cond:
                    self._tq.extendleft(reversed(batch))  # keep order; retried once the store answers
                if self._stopping.wait(1.0):
                    return
                continue
            except Exception:  # a bug must not end ingestion: the batch is lost, logged and counted
                log.exception("writing a telemetry batch of %d message(s) failed; dropped", len(batch))
                self.counts["telemetry_write_errors"] += len(batch)
            else:
                self._store_recovered()
                self.counts["telemetry_written"] += len(batch)
                self.counts["write_batches"] += 1
            with self._plan_cond:
                self._written_mark += len(batch)

    def _write_batch(self, batch: list[TelemetryItem]) -> None:
        """Write one batch in one transaction (the store orders it by device, so replicas cannot deadlock).

        StoreUnavailable propagates (the batch is retried). When the store refuses the batch for another
        reason, its messages are written one by one and a refused one is skipped and counted, so one bad
        row cannot stall ingestion."""
        try:
            self.store.record_telemetry_batch(batch)
            return
        except StoreUnavailable:
            raise
        except StoreError as e:
            log.warning("a telemetry batch failed (%s); writing its messages one by one", e)
        for item in batch:
            try:
                self.store.record_telemetry(*item)
            except StoreUnavailable:
                raise
            except StoreError as e:
                self.counts["telemetry_write_errors"] += 1
                log.warning("telemetry of %s seq %d not stored: %s", item[0], item[2], e)

    def _wait_written(self, mark: int, timeout: float) -> None:
        """Wait until the telemetry enqueued before ``mark`` is in the store (so a plan sees it)."""
        deadline = time.monotonic() + timeout
        with self._plan_cond:
            while self._written_mark < mark and not self._stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._plan_cond.wait(min(remaining, 0.05))

    # ---------------------------------------------------------------------------- control worker

    def _control(self, fn: Callable[[], None]) -> None:
        with self._cq_cond:
            if len(self._cq) >= CONTROL_QUEUE_MAX:
                self._cq.popleft()
                self.counts["control_dropped"] += 1
            self._cq.append(fn)
            self._cq_cond.notify()

    def _control_loop(self) -> None:
        while True:
            with self._cq_cond:
                while not self._cq and not self._stopping.is_set():
                    self._cq_cond.wait(1.0)
                if self._stopping.is_set():
                    return
                fn = self._cq[0]
            try:
                fn()
            except StoreUnavailable as e:
                self._store_failed(e)
                if self._stopping.wait(1.0):
                    return
                continue  # retry the same item, in order
            except Exception:
                log.exception("scheduler control task failed; skipped")
            else:
                self._store_recovered()
            with self._cq_cond:
                if self._cq and self._cq[0] is fn:
                    self._cq.popleft()

    # -------------------------------------------------------------------------------- store health

    def _store_failed(self, error: Exception) -> None:
        message = f"{type(error).__name__}: {error}"
        was_ok, self.store_ok, self._store_error = self.store_ok, False, message
        now = time.monotonic()
        if was_ok or now - self._store_error_logged_at > 30:
            self._store_error_logged_at = now
            log.error("fleet store unavailable (%s); ingestion is queued and retried", message[:500])

    def _store_recovered(self) -> None:
        if self.store_ok:
            return
        self.store_ok, self._store_error = True, None
        log.info("fleet store available again; resynchronising")
        self.counts["store_recoveries"] += 1
        self._resync_pending = True
        if self._is_leader:
            self._resync_pending = False
            self._publish_fleet_rebirth("the scheduler's store was unavailable")
        self.replan("store available again")

    def _publish_fleet_rebirth(self, reason: str) -> None:
        if not self._mqtt_started:
            self._deferred_rebirth = reason
            return
        request = RebirthRequest(reason=reason, requested_by=self.replica_id, timestamp=time.time())
        self.mqtt.publish(FLEET_REBIRTH_TOPIC, encode(request), qos=1)
        self.counts["fleet_rebirths"] += 1

    # ----------------------------------------------------------------------------------- leadership

    def _housekeeper_loop(self) -> None:
        next_lead = next_sweep = next_stats = time.monotonic()
        while not self._stopping.wait(0.1):
            now = time.monotonic()
            self._rate_window.append((time.time(), self.counts["messages"]))
            if self._unresolved:
                self._resolve_unknown_sessions()
            if now >= next_lead:
                next_lead = now + self.config.leader_check_s
                self._check_leadership()
            if now >= next_sweep:
                next_sweep = now + self.config.sweep_s
                if self._is_leader:
                    self._sweep()
            if now >= next_stats:
                next_stats = now + self.config.stats_log_s
                self._log_stats()

    def _check_leadership(self) -> None:
        try:
            leading = self.store.try_lead(self.replica_id)
        except StoreError as e:
            self._store_failed(e)
            leading = False
        else:
            self._store_recovered()
        if leading and not self._is_leader:
            self._is_leader = True
            self.leader_since = time.time()
            self._planned_workloads = None
            log.info("replica %s is now the placement leader", self.replica_id)
            self._safe_store(
                lambda: self.store.add_event(
                    "scheduler.leader",
                    f"replica {self.replica_id} leads placement",
                    details={"replica": self.replica_id},
                )
            )
            if self.config.fleet_rebirth_on_start or self._resync_pending:
                self._resync_pending = False
                self._publish_fleet_rebirth(f"replica {self.replica_id} became the placement leader")
            self.replan("became leader")
        elif not leading and self._is_leader:
            self._is_leader = False
            self.leader_since = None
            log.warning("replica %s lost the placement leadership; standing by", self.replica_id)

    def _safe_store(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except StoreError as e:
            self._store_failed(e)
            return None

    def _sweep(self) -> None:
        """Mark offline every device silent for heartbeat_timeout_s (the store's last_seen decides), and
        re-plan when the workloads in the store differ from the last plan's (changed at another replica)."""
        now = time.time()
        if any(until <= now for until in self._cooldowns.values()):
            self.replan("failure cool-down over")  # the plan drops the expired ones
        if self._planned_workloads is not None:
            try:
                workloads = {w.workload_id: w for w in self.store.list_workloads()}
            except StoreError as e:
                self._store_failed(e)
                return
            if workloads != self._planned_workloads:
                self.replan("workloads changed in the store")
        timeout = self.config.heartbeat_timeout_s
        now = time.time()
        cutoff = now - timeout
        for view in list(self._views.values()):
            if not view.online or view.last_seen >= cutoff:
                continue
            try:
                gone = self.store.mark_offline(
                    view.device_id, now, f"no message for {timeout:g} s", last_seen_before=cutoff
                )
                if not gone:  # another replica heard from it (or it is already offline)
                    device = self.store.get_device(view.device_id)
                    if device is not None and device.online:
                        view.last_seen = max(view.last_seen, device.last_seen)
                        continue
            except StoreError as e:
                self._store_failed(e)
                return
            view.online = False
            if gone:
                self.counts["liveness_timeouts"] += 1
                log.info("device %s offline: no message for %g s", view.device_id, timeout)
                self._safe_store(
                    lambda v=view: self.store.add_event(
                        "device.offline",
                        f"device {v.device_id} offline: no message for {timeout:g} s",
                        device_id=v.device_id,
                        severity="warning",
                        details={"reason": "heartbeat_timeout", "last_seen": v.last_seen},
                    )
                )
                self.replan(f"device {view.device_id} silent")

    def _log_stats(self) -> None:
        s = self.stats()
        rejected = sum(s["rejected"].values())
        log.info(
            "stats leader=%s msg_per_s=%.0f backlog=%d peak=%d online=%d rejected=%d plans=%d moved=%d unplaced=%d "
            "store_ok=%s",
            s["is_leader"], s["messages_per_s"], s["backlog"], s["backlog_peak"], s["devices_online"], rejected,
            s["plans"], s["moved_total"], s["unplaced"], s["store_ok"],
        )  # fmt: skip

    # ------------------------------------------------------------------------------------- placement

    def _planner_loop(self) -> None:
        debounce = self.config.placement.debounce_s
        while not self._stopping.is_set():
            with self._plan_cond:
                while not self._triggers and not self._stopping.is_set():
                    self._plan_cond.wait(1.0)
                if self._stopping.is_set():
                    return
            if self._stopping.wait(debounce):
                return
            with self._plan_cond:
                triggers, self._triggers = self._triggers, []
                mark = self._trigger_mark
            if not self._is_leader:
                continue
            reasons = [reason for reason, _ in triggers]
            if all(weak for _, weak in triggers) and not self.unplaced and self._planned_workloads is not None:
                self.counts["plans_skipped"] += 1  # with 10,000 devices a fleet restart is 10,000 births
                continue
            self._wait_written(mark, timeout=2.0)
            try:
                self.plan_and_push(reasons)
            except StoreError as e:
                self._store_failed(e)
                with self._plan_cond:
                    self._triggers = triggers + self._triggers
                self._stopping.wait(1.0)
            except Exception:
                log.exception("placement failed; retrying on the next trigger")

    def plan_and_push(self, reasons: list[str]) -> placement.Plan:
        """Plan, apply the plan to the store and publish the desired config of every affected device.

        Runs on the planner thread; callable directly (tests) when this replica is the leader.
        """
        started = time.perf_counter()
        now = time.time()
        store = self.store
        devices = store.list_devices()
        workloads = store.list_workloads()
        assignments = store.list_assignments()
        self._cooldowns = {k: until for k, until in self._cooldowns.items() if until > now}
        excluded: dict[str, set[str]] = {}
        for workload_id, device_id in self._cooldowns:
            excluded.setdefault(workload_id, set()).add(device_id)
        inp = placement.PlacementInput(devices=devices, workloads=workloads, assignments=assignments)
        policy = self.config.placement
        plan = plan_with_exclusions(inp, excluded, headroom=policy.headroom, hysteresis=policy.hysteresis)

        by_id = {w.workload_id: w for w in workloads}
        old = {a.workload_id: a for a in assignments}
        previous = self._planned_workloads or by_id
        affected: set[str] = set(self._orphaned_devices)
        self._orphaned_devices.clear()
        moved: list[tuple[str, str | None, str]] = []
        removed: list[str] = []
        for workload_id, assignment in old.items():
            if workload_id not in by_id:
                removed.append(workload_id)
                affected.add(assignment.device_id)
        for workload_id, workload in by_id.items():
            target = plan.assignments.get(workload_id)
            current = old.get(workload_id)
            if target is None:
                if current is not None:
                    removed.append(workload_id)
                    affected.add(current.device_id)
                continue
            if current is None or current.device_id != target:
                affected.add(target)
                if current is not None:
                    affected.add(current.device_id)
                moved.append((workload_id, current.device_id if current else None, target))
            elif previous.get(workload_id) not in (None, workload):
                affected.add(target)  # the workload's definition changed: push it again
        self._planned_workloads = by_id

        hosted: dict[str, list[str]] = {}
        for workload_id, device_id in plan.assignments.items():
            if device_id is not None and workload_id in by_id:
                hosted.setdefault(device_id, []).append(workload_id)
        versions = {device_id: store.next_desired_version(device_id) for device_id in sorted(affected)}
        changes = []
        for device_id, version in versions.items():
            for workload_id in hosted.get(device_id, []):
                reason = next((f"moved from {src}" if src else "placed" for w, src, _ in moved if w == workload_id),
                              "device config changed")
                changes.append(Assignment(workload_id, device_id, "pending", version, now, reason))
        store.apply_plan(changes, removed)

        for device_id, version in versions.items():
            self._push(device_id, version, [by_id[w] for w in sorted(hosted.get(device_id, []))], now)
        required = {d: sum(by_id[w].required_fps for w in ws) for d, ws in hosted.items()}
        self._required_by_device = {
            d: (fps, versions[d] if d in versions else self._required_by_device.get(d, (0.0, 0))[1])
            for d, fps in required.items()
        }
        self._record_plan_events(moved, plan, reasons)
        self._unplaced_models = frozenset(by_id[w].model_id for w in plan.unplaced if w in by_id)

        self.last_plan_ms = round((time.perf_counter() - started) * 1000, 2)
        self.last_plan_reasons = list(dict.fromkeys(reasons))
        self.moved_total += sum(1 for _, src, _ in moved if src is not None)
        with self._plan_cond:
            self.plans += 1
            self.last_plan_at = now
            self._plan_cond.notify_all()
        if moved or removed:
            log.info(
                "placement (%s): %d placed/moved, %d removed, %d unplaced, %d device config(s) pushed in %.0f ms",
                "; ".join(self.last_plan_reasons[:3]), len(moved), len(removed), len(plan.unplaced), len(versions),
                self.last_plan_ms,
            )
        return plan

    def _push(self, device_id: str, version: int, workloads: list[Workload], now: float) -> None:
        if not workloads:
            config = dict(self.config.placement.idle_config)
        else:
            if len(workloads) > 1:
                log.warning(
                    "device %s was given %d workloads; a device runs one, so only %s is pushed",
                    device_id, len(workloads), workloads[0].workload_id,
                )  # fmt: skip
            config = device_config_for(workloads[0])
        desired = DesiredConfig(version=version, config=config, issued_at=now, issued_by=self.replica_id)
        self.mqtt.publish(config_desired_topic(device_id), encode(desired), qos=1, retain=True)
        self.pushes += 1

    def _record_plan_events(
        self, moved: list[tuple[str, str | None, str]], plan: placement.Plan, reasons: list[str]
    ) -> None:
        why = "; ".join(list(dict.fromkeys(reasons))[:3])
        for workload_id, source, target in moved:
            text = f"workload {workload_id} {'moved from ' + source + ' to' if source else 'placed on'} {target}"
            self.store.add_event(
                "placement.moved" if source else "placement.placed",
                f"{text} ({why})"[:4000],
                device_id=target,
                workload_id=workload_id,
                details={"from": source, "to": target, "reasons": reasons[:10]},
            )
        for workload_id, reason in plan.unplaced.items():
            if self.unplaced.get(workload_id) != reason:
                self.store.add_event(
                    "placement.unplaced",
                    f"workload {workload_id} cannot be placed: {reason}",
                    workload_id=workload_id,
                    severity="warning",
                    details={"reason": reason},
                )
        self.unplaced = dict(plan.unplaced)


def plan_with_exclusions(
    inp: placement.PlacementInput,
    excluded: dict[str, set[str]],
    *,
    headroom: float,
    hysteresis: float,
    max_rounds: int = 8,
) -> placement.Plan:
    """:func:`placement.plan` with two rules of the service on top, still pure and deterministic:

    - a workload is kept off the devices in ``excluded[workload_id]`` (they failed its config recently);
    - a device runs one workload (a device config has one source and one model): when the plan puts
      several on one device, the one already there (else the largest, then by id) stays and the others
      are planned again without that device, for at most ``max_rounds`` rounds; what is still left over
      is unplaced.

    Exclusions are expressed to the pure planner as a runtime requirement only the allowed devices
    have, so its feasibility rules, capacity and stability apply unchanged.
    """
    excluded = {w: set(ds) for w, ds in excluded.items() if ds}
    current = {a.workload_id: a.device_id for a in inp.assignments}
    by_id = {w.workload_id: w for w in inp.workloads}
    result = placement.plan(_excluding(inp, excluded), headroom=headroom, hysteresis=hysteresis)
    for _ in range(max_rounds):
        hosted: dict[str, list[str]] = {}
        for workload_id, device_id in result.assignments.items():
            if device_id is not None:
                hosted.setdefault(device_id, []).append(workload_id)
        crowded = {d: ws for d, ws in hosted.items() if len(ws) > 1}
        if not crowded:
            break
        for device_id, workload_ids in crowded.items():
            keep = min(
                workload_ids,
                key=lambda w: (current.get(w) != device_id, -by_id[w].required_fps, w),
            )
            for workload_id in workload_ids:
                if workload_id != keep:
                    excluded.setdefault(workload_id, set()).add(device_id)
        result = placement.plan(_excluding(inp, excluded), headroom=headroom, hysteresis=hysteresis)
    assignments = dict(result.assignments)
    unplaced = dict(result.unplaced)
    seen: set[str] = set()
    for workload_id, device_id in sorted(assignments.items(), key=lambda kv: (current.get(kv[0]) != kv[1], kv[0])):
        if device_id is None:
            continue
        if device_id in seen:  # still crowded after max_rounds
            assignments[workload_id] = None
            unplaced[workload_id] = f"{placement.NO_ROOM}: every feasible device already runs a workload"
        seen.add(device_id)
    for workload_id, reason in unplaced.items():
        if workload_id in excluded:
            kind = reason.split(":", 1)[0]
            avoided = ", ".join(sorted(excluded[workload_id])[:5])
            unplaced[workload_id] = (
                f"{kind}: no device left after excluding {avoided} (a failed config, or busy with another "
                "workload; one workload per device)"
            )
    moved = [w for w in sorted(by_id) if w in current and assignments.get(w) != current[w]]
    added = [w for w in sorted(by_id) if w not in current and assignments.get(w) is not None]
    return placement.Plan(
        assignments=assignments,
        moved=moved,
        added=added,
        unplaced=dict(sorted(unplaced.items())),
        utilisation=result.utilisation,
    )


_EXCLUSION_TOKEN = "\x00allowed-for:"


def _excluding(inp: placement.PlacementInput, excluded: dict[str, set[str]]) -> placement.PlacementInput:
    """``inp`` where each workload in ``excluded`` needs a runtime token only its allowed devices list."""
    if not excluded:
        return inp
    tokens: dict[str, dict[str, str]] = {}
    workloads = []
    for w in inp.workloads:
        if w.workload_id in excluded:
            token = _EXCLUSION_TOKEN + w.workload_id
            for d in inp.devices:
                if d.device_id not in excluded[w.workload_id] and (w.runtime is None or w.runtime in d.runtimes):
                    tokens.setdefault(d.device_id, {})[token] = ""
            w = w.model_copy(update={"runtime": token})
        workloads.append(w)
    devices = [
        dataclasses.replace(d, runtimes={**d.runtimes, **tokens[d.device_id]}) if d.device_id in tokens else d
        for d in inp.devices
    ]
    return placement.PlacementInput(devices=devices, workloads=workloads, assignments=inp.assignments)


# ------------------------------------------------------------------------------------------------ CLI


def run_scheduler(config: SchedulerConfig, *, stop: threading.Event | None = None) -> int:
    """Run one replica (and its HTTP API when enabled) until SIGTERM/SIGINT or ``stop`` is set."""
    import signal

    done = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
    service = SchedulerService(config)
    server = None
    try:
        service.start()
        if config.api.enabled:
            try:
                from lepton_edge.scheduler import api
            except ImportError as e:
                raise LeptonError(
                    f"the scheduler API needs FastAPI and uvicorn ({e}); pip install 'lepton-edge[scheduler]', "
                    "or set api.enabled: false"
                ) from None
            server = api.serve(service, config.api.host, config.api.port)
        done.wait()
        log.info("stopping the scheduler")
    finally:
        if server is not None:
            server.stop()
        service.stop()
    return 0


def add_scheduler_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", required=True, help="scheduler config YAML (see deploy/scheduler.example.yaml)")


def run_scheduler_command(args: argparse.Namespace) -> int:
    """``lepton-edge scheduler --config FILE``."""

    return run_scheduler(load_scheduler_config(args.config))
