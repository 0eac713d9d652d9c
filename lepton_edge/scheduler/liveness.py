"""Liveness (leader only): devices silent for ``heartbeat_timeout_s`` go offline, and their workloads are
placed again (the store's ``last_seen`` decides, so a device heard by another replica stays online).

What proves a device alive (:class:`LivenessMarks`): a valid message of its current session, stored or
not. Its telemetry proves it when accepted, and also when dropped because the writer is behind; a message
rejected by its rate limit proves it when a sample of it (one per device per second, decoded only then)
is a valid message of the device's current session. "Valid" rests on the broker's identities: under the
production ACL (deploy/mosquitto/acl) only the holder of a device's certificate (or password) can publish on
its topics, so no one else can keep a dead device alive; a death of the session ends it until a new birth.
"""

from __future__ import annotations

import collections
import logging
import time

from lepton_edge.scheduler.control import ControlQueue, StoreHealth
from lepton_edge.scheduler.planner import Planner
from lepton_edge.scheduler.store import Store, StoreError
from lepton_edge.scheduler.views import DeviceView, DeviceViews

log = logging.getLogger("lepton_edge.scheduler.liveness")

STORE_SEEN_INTERVAL_S = 1.0
"""A device's liveness without stored telemetry reaches the store at most this often."""


class LivenessMarks:
    """Credits a device with a sign of life: its view at once (the leader's sweep reads it first) and, when
    no telemetry of it is written, the store's ``last_seen`` (read by the sweep of any replica) through the
    control queue, so liveness never waits behind telemetry writes."""

    def __init__(self, store: Store, control: ControlQueue) -> None:
        self._store = store
        self._control = control

    def seen(self, view: DeviceView, now: float, *, stored: bool) -> None:
        """``stored``: the message's telemetry goes to the writer, which records ``last_seen`` with it."""
        view.last_seen = now
        if stored or now - view.stored_seen_at < STORE_SEEN_INTERVAL_S:
            return
        view.stored_seen_at = now
        device_id = view.device_id
        self._control.put(lambda: self._store.device_seen(device_id, now))


class Liveness:
    """:meth:`sweep` marks silent devices offline and triggers a re-plan for each."""

    def __init__(
        self,
        store: Store,
        views: DeviceViews,
        planner: Planner,
        health: StoreHealth,
        counts: collections.Counter[str],
        heartbeat_timeout_s: float,
    ) -> None:
        self._store = store
        self._views = views
        self._planner = planner
        self._health = health
        self._counts = counts
        self._timeout = heartbeat_timeout_s

    def sweep(self) -> None:
        now = time.time()
        cutoff = now - self._timeout
        for view in self._views.all():
            if not view.online or view.last_seen >= cutoff:
                continue
            try:
                gone = self._store.mark_offline(
                    view.device_id, now, f"no message for {self._timeout:g} s", last_seen_before=cutoff
                )
                if not gone:  # another replica heard from it (or it is already offline)
                    device = self._store.get_device(view.device_id)
                    if device is not None and device.online:
                        view.last_seen = max(view.last_seen, device.last_seen)
                        continue
            except StoreError as e:
                self._health.failed(e)
                return
            view.online = False
            if gone:
                self._went_offline(view)

    def _went_offline(self, view: DeviceView) -> None:
        self._counts["liveness_timeouts"] += 1
        log.info("device %s offline: no message for %g s", view.device_id, self._timeout)
        self._health.guard(
            lambda: self._store.add_event(
                "device.offline",
                f"device {view.device_id} offline: no message for {self._timeout:g} s",
                device_id=view.device_id,
                severity="warning",
                details={"reason": "heartbeat_timeout", "last_seen": view.last_seen},
            )
        )
        self._planner.replan(f"device {view.device_id} silent")
