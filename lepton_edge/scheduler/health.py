"""Placement triggers read from telemetry: throttling, under-rate, failed workloads, and capacity learned for
unplaced models."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from lepton_edge.config.scheduler import PlacementConfig
from lepton_edge.fleet.protocol import Telemetry
from lepton_edge.scheduler.control import ControlQueue
from lepton_edge.scheduler.planner import Planner
from lepton_edge.scheduler.store import Store, learn_capacity
from lepton_edge.scheduler.views import DeviceView

CAPACITY_CHANGE = 0.2
"""A device's learned capacity for the model of an unplaced workload that appears, or moves by more than
this fraction since the last re-plan it triggered, triggers a re-plan."""


class HealthWatch:
    """Looks at each accepted telemetry message; a change that placement should know of triggers a re-plan."""

    def __init__(
        self,
        store: Store,
        policy: PlacementConfig,
        planner: Planner,
        control: ControlQueue,
        counts: collections.Counter[str],
        is_leader: Callable[[], bool],
    ) -> None:
        self._store = store
        self._policy = policy
        self._planner = planner
        self._control = control
        self._counts = counts
        self._is_leader = is_leader
        self._failed: dict[str, frozenset[str]] = {}
        """Device -> the workloads it last reported failed (each failure is acted on once)."""

    def observe(self, view: DeviceView, telemetry: Telemetry, data: dict[str, Any]) -> None:
        self._throttling(view, telemetry, data)
        self._rate(view, telemetry, data)
        self._workloads(view, telemetry)
        if self._planner.unplaced_models and self._is_leader():
            self._capacity(view, data)

    def _throttling(self, view: DeviceView, telemetry: Telemetry, data: dict[str, Any]) -> None:
        """The same rule as the store's (``store.is_throttled``): the hottest sensor at or above the limit."""
        temps = telemetry.temperatures_c
        throttled = bool(temps) and max(temps.values()) >= self._policy.thermal_limit_c
        if throttled == view.throttled:
            return
        view.throttled = throttled
        state = "throttled" if throttled else "no longer throttled"
        self._counts["throttle_changes"] += 1
        self._control.put(lambda: self._event(view.device_id, f"device {view.device_id} {state}", data))
        self._planner.replan(f"device {view.device_id} {state}")

    def _rate(self, view: DeviceView, telemetry: Telemetry, data: dict[str, Any]) -> None:
        required, version = self._planner.required(view.device_id)
        if not required or (version and telemetry.config_version != version):
            view.low_reports, view.under_rate = 0, False  # nothing to run yet, or still switching to it
            return
        if telemetry.fps >= self._policy.under_rate_ratio * required:
            view.low_reports, view.under_rate = 0, False
            return
        view.low_reports += 1
        if view.low_reports % self._policy.under_rate_reports == 0:
            # again every few reports while it lasts: the learned capacity keeps falling, and once it
            # is low enough the plan moves the workload
            message = f"device {view.device_id} under rate: {data.get('fps')} fps of {required:g} required"
            if not view.under_rate:
                view.under_rate = True
                self._control.put(lambda: self._event(view.device_id, message, data))
            self._planner.replan(message)

    def _workloads(self, view: DeviceView, telemetry: Telemetry) -> None:
        """A workload the device reports ``failed`` (or whose stream failed) is kept off that device for a while and
        placed again; the device's other workloads stay where they are."""
        failed = frozenset(
            name for name, w in telemetry.workloads.items() if w.state == "failed" or w.source_state == "failed"
        )
        before = self._failed.get(view.device_id, frozenset())
        if failed == before:
            return
        if failed:
            self._failed[view.device_id] = failed
        else:
            self._failed.pop(view.device_id, None)
        hosted = self._planner.hosted(view.device_id)
        for name in sorted((failed - before) & hosted):
            error = telemetry.workloads[name].error or f"stream {telemetry.workloads[name].source_state}"
            message = f"workload {name} failed on device {view.device_id}: {error}"[:4000]
            self._counts["workload_failures"] += 1
            self._planner.cool_down(name, view.device_id)
            self._control.put(lambda m=message, w=name: self._workload_event(view.device_id, w, m))
            self._planner.replan(message)

    def _capacity(self, view: DeviceView, data: dict[str, Any]) -> None:
        """Re-plan when the device's capacity for the model of an unplaced workload appears or moves by more
        than :data:`CAPACITY_CHANGE`: a workload too large for the default capacity may fit now.

        The plan reads the capacity the store learned (the same rule, from every replica's telemetry);
        its run waits until this message is written.
        """
        reported = set(data.get("models") or {}) if isinstance(data.get("models"), dict) else set()
        reported.add(data.get("artifact_id"))
        wanted = sorted(m for m in reported & self._planner.unplaced_models if isinstance(m, str))
        if not wanted:
            return
        view.capacity = learn_capacity(view.capacity, data)
        for model in wanted:
            learned = view.capacity.get(model)
            before = view.capacity_replanned.get(model)
            if learned is None or (before is not None and abs(learned - before) <= CAPACITY_CHANGE * before):
                continue
            view.capacity_replanned[model] = learned
            self._counts["capacity_replans"] += 1
            self._planner.replan(
                f"device {view.device_id} runs {model} at up to {learned:.0f} fps", only_for_unplaced=True
            )

    def _workload_event(self, device_id: str, workload_id: str, message: str) -> None:
        self._store.add_event("workload.failed", message, device_id=device_id, workload_id=workload_id,
                              severity="error")

    def _event(self, device_id: str, message: str, data: dict[str, Any]) -> None:
        self._store.add_event(
            "device.health",
            message,
            device_id=device_id,
            severity="warning",
            details={"fps": data.get("fps"), "temperatures_c": data.get("temperatures_c")},
        )
