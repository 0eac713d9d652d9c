"""Liveness (leader only): devices silent for ``heartbeat_timeout_s`` go offline, and their workloads are
placed again (the store's ``last_seen`` decides, so a device heard by another replica stays online)."""

from __future__ import annotations

import collections
import logging
import time

from lepton_edge.scheduler.control import StoreHealth
from lepton_edge.scheduler.planner import Planner
from lepton_edge.scheduler.store import Store, StoreError
from lepton_edge.scheduler.views import DeviceView, DeviceViews

log = logging.getLogger("lepton_edge.scheduler.liveness")


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
