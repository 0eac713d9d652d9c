"""Ingestion on the MQTT network thread: births, deaths, telemetry and device events.

Each message is admitted (:mod:`.admission`), tracked in memory (sequences, liveness) and its store work
handed to the control queue or the telemetry writer; this thread never waits for the store. Liveness is
credited before any telemetry is queued (:class:`~.liveness.LivenessMarks`), and a flooding device is
isolated at the broker (:mod:`.flood`).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from lepton_edge.config.scheduler import SchedulerConfig
from lepton_edge.fleet.mqtt import IncomingMessage, MqttClient
from lepton_edge.fleet.protocol import (
    Birth,
    Death,
    Event,
    Telemetry,
    TopicKind,
    is_stale_death,
    telemetry_topic,
)
from lepton_edge.scheduler.admission import Admission
from lepton_edge.scheduler.control import ControlQueue
from lepton_edge.scheduler.flood import FloodIsolation
from lepton_edge.scheduler.health import HealthWatch
from lepton_edge.scheduler.planner import Planner
from lepton_edge.scheduler.rebirth import REBIRTH_INTERVAL_S, Rebirths
from lepton_edge.scheduler.reports import ConfigReports
from lepton_edge.scheduler.store import EncodedJson, Store
from lepton_edge.scheduler.views import UNKNOWN_DEVICES_MAX, DeviceViews
from lepton_edge.scheduler.writer import TelemetryWriter

RECENT_EVENT_IDS = 10_000
UNKNOWN_SESSION_GRACE_S = 2.0
"""How long telemetry of an unknown session waits for its birth before the store is asked about it."""


class Ingestion:
    """The MQTT handlers of one replica. ``records_presence()``: whether this replica writes presence events."""

    def __init__(
        self,
        config: SchedulerConfig,
        store: Store,
        *,
        views: DeviceViews,
        admission: Admission,
        control: ControlQueue,
        writer: TelemetryWriter,
        planner: Planner,
        health: HealthWatch,
        reports: ConfigReports,
        rebirths: Rebirths,
        counts: collections.Counter[str],
        is_leader: Callable[[], bool],
        records_presence: Callable[[], bool],
    ) -> None:
        self._config = config
        self._store = store
        self._views = views
        self._admission = admission
        self._control = control
        self._writer = writer
        self._planner = planner
        self._health = health
        self._reports = reports
        self._rebirths = rebirths
        self._counts = counts
        self._is_leader = is_leader
        self._records_presence = records_presence
        self.rebirth_on_gap = not config.replicas.shared_subscriptions
        """Ask for a rebirth when a sequence gap is seen. Off with shared subscriptions: each replica then
        sees only part of a device's stream (round-robin brokers), so gaps are normal."""
        self._unresolved: dict[str, tuple[int, int, float]] = {}
        """Devices whose telemetry came from an unknown session -> (session, seq, when)."""
        self._recent_event_ids: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.isolation = FloodIsolation(config.ingest, config.replicas, views, counts)
        admission.flooded = self.isolation.rejected

    def subscribe(self, mqtt: MqttClient) -> None:
        """Subscribe the handlers (shared subscriptions per ``config.replicas``)."""
        replicas = self._config.replicas
        presence_shared = replicas.shared_subscriptions and replicas.share_presence
        self.isolation.subscribe(
            mqtt,
            [
                (TopicKind.BIRTH, self.on_birth, presence_shared),
                (TopicKind.DEATH, self.on_death, presence_shared),
                (TopicKind.CONFIG_REPORTED, self._reports.on_reported, presence_shared),
                (TopicKind.TELEMETRY, self.on_telemetry, replicas.shared_subscriptions),
                (TopicKind.EVENT, self.on_event, replicas.shared_subscriptions),
            ],
        )

    def housekeeping(self) -> None:
        """Housekeeping thread, every 0.1 s: unknown sessions, flood quarantines that are over."""
        self.resolve_unknown_sessions()
        self.isolation.tick(time.time())

    # ------------------------------------------------------------------------------------ presence

    def on_birth(self, message: IncomingMessage) -> None:
        admitted = self._admission.admit(TopicKind.BIRTH, message)
        if admitted is None:
            return
        device_id, birth = admitted
        assert isinstance(birth, Birth)
        now = time.time()
        view = self._views.known(device_id, now)
        if view.session is not None and birth.session_id < view.session:
            self._counts["stale_births"] += 1
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
            if not self._store.device_birth(device_id, birth.session_id, capabilities, now) or not became_online:
                return
            if self._records_presence():
                self._store.add_event(
                    "device.online",
                    f"device {device_id} online (session {birth.session_id})",
                    device_id=device_id,
                    details={"session_id": birth.session_id, "config_version": birth.config_version},
                )
            self._planner.replan(f"device {device_id} born", only_for_unplaced=True)

        self._control.put(apply)

    def on_death(self, message: IncomingMessage) -> None:
        admitted = self._admission.admit(TopicKind.DEATH, message)
        if admitted is None:
            return
        device_id, death = admitted
        assert isinstance(death, Death)
        now = time.time()
        view = self._views.get(device_id)
        if view is not None and view.session is not None and is_stale_death(view.session, death):
            self._counts["stale_deaths"] += 1
            return
        was_online = view is not None and view.online
        if view is not None:
            view.online = False
            view.session = max(view.session or 0, death.session_id)
            view.death_session = max(view.death_session, death.session_id)

        def apply() -> None:
            if view is None and self._store.get_device(device_id) is None:
                return  # a death of a device never born: nothing to end
            if not self._store.device_death(device_id, death.session_id, now, death.reason):
                self._counts["stale_deaths"] += 1
                return
            if not was_online:
                return
            if self._records_presence():
                self._store.add_event(
                    "device.offline",
                    f"device {device_id} offline ({death.reason}, session {death.session_id})",
                    device_id=device_id,
                    severity="warning" if death.reason == "connection_lost" else "info",
                    details={"session_id": death.session_id, "reason": death.reason},
                )
            self._planner.replan(f"device {device_id} died")

        self._control.put(apply)

    # ----------------------------------------------------------------------------------- telemetry

    def on_telemetry(self, message: IncomingMessage) -> None:
        admitted = self._admission.admit(TopicKind.TELEMETRY, message)
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
            self._counts["telemetry_ignored"] += 1
            return
        if observation.needs_rebirth and self.rebirth_on_gap:
            gap = f"telemetry gap: {observation.missing} message(s) missing before seq {seq}"
            self._rebirths.device(view, gap, now)
        backlog_full = self._writer.full()
        self._admission.liveness.seen(view, now, stored=not backlog_full)  # before the telemetry is queued
        # the store writes the payload's own text: no second encoding
        data = EncodedJson(telemetry.model_dump(), message.payload.decode())
        if backlog_full:
            self._admission.reject(
                "backlog_full", telemetry_topic(device_id), "the telemetry writer is behind", device_id
            )
        else:
            self._writer.put((device_id, session, seq, data, now))
        self._health.observe(view, telemetry, data)

    def _unknown_session(self, device_id: str, session: int, seq: int, topic: str, now: float) -> None:
        """Telemetry of a session whose birth this replica has not seen: ask the store, else a rebirth."""
        view = self._views.known_or_unknown(device_id, now)
        if view.session is not None and session < view.session:
            self._counts["telemetry_ignored"] += 1
            return
        self._admission.reject("unknown_session", topic, f"no birth seen for session {session}", device_id)
        if now - view.resolve_at < REBIRTH_INTERVAL_S or len(self._unresolved) >= UNKNOWN_DEVICES_MAX:
            return
        view.resolve_at = now
        # the birth may be on its way: a broker sends QoS 0 telemetry ahead of queued QoS 1 births
        self._unresolved.setdefault(device_id, (session, seq, now))

    def resolve_unknown_sessions(self) -> None:
        """After a grace period, ask the store about sessions still unknown, else ask for a rebirth."""
        if not self._unresolved:
            return
        cutoff = time.time() - UNKNOWN_SESSION_GRACE_S
        for device_id, (session, seq, seen) in list(self._unresolved.items()):
            if seen > cutoff:
                continue
            self._unresolved.pop(device_id, None)
            view = self._views.get(device_id)
            if view is not None and view.online and view.session is not None and view.session >= session:
                continue  # its birth arrived meanwhile
            self._control.put(lambda d=device_id, s=session, q=seq: self._resolve(d, s, q))

    def _resolve(self, device_id: str, session: int, seq: int) -> None:
        device = self._store.get_device(device_id)
        if device is not None and device.online and device.session_id == session:
            known = self._views.known(device_id, time.time())  # born at another replica (shared presence)
            known.session, known.online, known.last_seen = session, True, time.time()
            known.tracker.observe(session, seq)
            return
        reason = f"telemetry from session {session}, whose birth was not seen"
        self._rebirths.device(self._views.known_or_unknown(device_id, time.time()), reason, time.time())

    # -------------------------------------------------------------------------------------- events

    def on_event(self, message: IncomingMessage) -> None:
        admitted = self._admission.admit(TopicKind.EVENT, message)
        if admitted is None:
            return
        device_id, event = admitted
        assert isinstance(event, Event)
        view = self._views.get(device_id)
        if view is not None and view.online and event.session_id == view.session:
            self._admission.liveness.seen(view, time.time(), stored=False)
        if not (self._config.replicas.shared_subscriptions or self._is_leader()):
            return  # every replica receives it: the leader records it
        key = f"{device_id}/{event.id}"
        if key in self._recent_event_ids:
            self._counts["duplicate_events"] += 1
            return
        self._recent_event_ids[key] = None
        while len(self._recent_event_ids) > RECENT_EVENT_IDS:
            self._recent_event_ids.popitem(last=False)
        self._control.put(
            lambda: self._store.add_event(
                f"device.{event.kind}"[:64],
                event.message,
                device_id=device_id,
                severity=event.severity,
                details={
                    **event.details,
                    **({"analytics": event.analytics.model_dump(mode="json")} if event.analytics else {}),
                    "session_id": event.session_id,
                    "event_id": event.id,
                },
                ts=event.timestamp,
            )
        )
