"""The planner (leader only): batches placement triggers, plans, applies the plan atomically and publishes
each affected device's desired config (retained, QoS 1)."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from lepton_edge.config.scheduler import PlacementConfig
from lepton_edge.fleet.protocol import DesiredConfig, ProtocolError
from lepton_edge.scheduler import placement
from lepton_edge.scheduler.control import StoreHealth
from lepton_edge.scheduler.desired import device_conflicts, device_document
from lepton_edge.scheduler.desired_publisher import DesiredPublisher
from lepton_edge.scheduler.exclusions import plan_with_exclusions
from lepton_edge.scheduler.models import Assignment, Workload
from lepton_edge.scheduler.rollouts import LIVE_STATES, Change, changes_by_device, list_rollouts
from lepton_edge.scheduler.store import Store, StoreError
from lepton_edge.scheduler.writer import TelemetryWriter

log = logging.getLogger("lepton_edge.scheduler.planner")

Move = tuple[str, str | None, str]
"""(workload id, the device it left or None, the device it goes to)."""


@dataclass
class Changes:
    """What a plan changes against the store's assignments."""

    affected: set[str] = field(default_factory=set)
    """Devices whose desired config changes."""
    moved: list[Move] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    """Workloads no longer assigned (deleted, or unplaced now)."""


def diff_plan(
    plan: placement.Plan, by_id: dict[str, Workload], old: dict[str, Assignment], previous: dict[str, Workload]
) -> Changes:
    """The changes ``plan`` makes to the assignments ``old`` (``previous``: the workloads of the last plan)."""
    changes = Changes()
    for workload_id, assignment in old.items():
        if workload_id not in by_id:
            changes.removed.append(workload_id)
            changes.affected.add(assignment.device_id)
    for workload_id, workload in by_id.items():
        target = plan.assignments.get(workload_id)
        current = old.get(workload_id)
        if target is None:
            if current is not None:
                changes.removed.append(workload_id)
                changes.affected.add(current.device_id)
            continue
        if current is None or current.device_id != target:
            changes.affected.add(target)
            if current is not None:
                changes.affected.add(current.device_id)
            changes.moved.append((workload_id, current.device_id if current else None, target))
        elif previous.get(workload_id) not in (None, workload):
            changes.affected.add(target)  # the workload's definition changed: push it again
    return changes


class Planner:
    """Placement runs on a thread of their own (:meth:`run`), debounced; only the leader plans."""

    def __init__(
        self,
        store: Store,
        desired: DesiredPublisher,
        policy: PlacementConfig,
        replica_id: str,
        *,
        is_leader: Callable[[], bool],
        writer: TelemetryWriter,
        health: StoreHealth,
        counts: collections.Counter[str],
        stopping: threading.Event,
    ) -> None:
        self._store = store
        self._desired = desired
        self._policy = policy
        self._replica_id = replica_id
        self._is_leader = is_leader
        self._writer = writer
        self._health = health
        self._counts = counts
        self._stopping = stopping
        self._cond = threading.Condition()
        self._triggers: list[tuple[str, bool]] = []
        self._trigger_mark = 0
        self.plans = 0
        self.last_plan_at: float | None = None
        self.last_plan_ms: float | None = None
        self.last_plan_reasons: list[str] = []
        self.moved_total = 0
        self.pushes = 0
        self.unplaced: dict[str, str] = {}
        self.unplaced_models: frozenset[str] = frozenset()
        """Model ids of the unplaced workloads: capacity learned for them may let them be placed."""
        self._cooldowns: dict[tuple[str, str], float] = {}
        self._orphaned_devices: set[str] = set()
        """Devices whose workload was removed: they get a new (idle) desired config at the next plan."""
        self._cooldown_lock = threading.Lock()
        self._planned_workloads: dict[str, Workload] | None = None
        self._required_by_device: dict[str, tuple[float, int]] = {}
        self._hosted: dict[str, frozenset[str]] = {}

    # ---------------------------------------------------------------------------------- triggers

    def replan(self, reason: str, *, only_for_unplaced: bool = False) -> None:
        """Ask for a placement run (batched with other triggers within ``placement.debounce_s``).

        ``only_for_unplaced``: the trigger can only help unplaced workloads (a device came online: plans
        never move a running workload to a new device), so the run is skipped when there are none.
        """
        with self._cond:
            self._triggers.append((reason, only_for_unplaced))
            self._trigger_mark = self._writer.enqueued
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def wait_for_plan(self, after: int, timeout: float) -> bool:
        """Wait until more than ``after`` placement runs have completed; True if that happened."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.plans <= after:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def forget_plan(self) -> None:
        """Just elected: the next trigger plans, even a weak one."""
        self._planned_workloads = None

    def device_freed(self, device_id: str) -> None:
        """A workload of ``device_id`` was removed: push it a new config (idle if it has no other) at the next
        plan."""
        self._orphaned_devices.add(device_id)

    def push_again(self, device_ids: Iterable[str], reason: str) -> None:
        """Push ``device_ids`` a new desired config at the next plan (a rollout changed what they get)."""
        self._orphaned_devices.update(device_ids)
        self.replan(reason)

    def cool_down(self, workload_id: str, device_id: str) -> None:
        """Keep ``workload_id`` off ``device_id`` for ``failure_cooldown_s`` (it failed there); the device's
        other workloads stay."""
        with self._cooldown_lock:
            self._cooldowns[(workload_id, device_id)] = time.time() + self._policy.failure_cooldown_s

    def required(self, device_id: str) -> tuple[float, int]:
        """(fps the device's workloads need together, desired version carrying them); (0, 0) when it has none."""
        return self._required_by_device.get(device_id, (0.0, 0))

    def hosted(self, device_id: str) -> frozenset[str]:
        """The workloads the last plan put on ``device_id``."""
        return self._hosted.get(device_id, frozenset())

    def check_changes(self) -> None:
        """Re-plan when a cool-down is over, or the workloads in the store differ from the last plan's
        (changed at another replica). Raises StoreError."""
        now = time.time()
        with self._cooldown_lock:
            expired = any(until <= now for until in self._cooldowns.values())
        if expired:
            self.replan("failure cool-down over")  # the plan drops the expired ones
        if self._planned_workloads is not None:
            workloads = {w.workload_id: w for w in self._store.list_workloads()}
            if workloads != self._planned_workloads:
                self.replan("workloads changed in the store")

    # -------------------------------------------------------------------------------------- runs

    def run(self) -> None:
        """The planner loop, until stopping."""
        while (batch := self._next_triggers()) is not None:
            triggers, mark = batch
            if not self._is_leader():
                continue
            if all(weak for _, weak in triggers) and not self.unplaced and self._planned_workloads is not None:
                self._counts["plans_skipped"] += 1  # with 10,000 devices a fleet restart is 10,000 births
                continue
            self._writer.wait_written(mark, timeout=2.0)
            try:
                self.plan_and_push([reason for reason, _ in triggers])
            except StoreError as e:
                self._health.failed(e)
                with self._cond:
                    self._triggers = triggers + self._triggers
                self._stopping.wait(1.0)
            except Exception:
                log.exception("placement failed; retrying on the next trigger")

    def _next_triggers(self) -> tuple[list[tuple[str, bool]], int] | None:
        """The triggers gathered within the debounce time after the first one, and the telemetry mark of the
        last (a plan waits until that telemetry is written); None when stopping."""
        with self._cond:
            while not self._triggers and not self._stopping.is_set():
                self._cond.wait(1.0)
        if self._stopping.is_set() or self._stopping.wait(self._policy.debounce_s):
            return None
        with self._cond:
            triggers, self._triggers = self._triggers, []
            return triggers, self._trigger_mark

    def plan_and_push(self, reasons: list[str]) -> placement.Plan:
        """Plan, apply the plan to the store and publish the desired config of every affected device.

        Runs on the planner thread; callable directly (tests) when this replica is the leader.
        """
        started = time.perf_counter()
        now = time.time()
        store = self._store
        workloads = store.list_workloads()
        assignments = store.list_assignments()
        inp = placement.PlacementInput(devices=store.list_devices(), workloads=workloads, assignments=assignments)
        plan = plan_with_exclusions(
            inp,
            self._excluded(now),
            headroom=self._policy.headroom,
            hysteresis=self._policy.hysteresis,
            conflicts=device_conflicts,
        )
        by_id = {w.workload_id: w for w in workloads}
        changes = diff_plan(plan, by_id, {a.workload_id: a for a in assignments}, self._planned_workloads or by_id)
        orphaned, self._orphaned_devices = self._orphaned_devices, set()  # one swap: a concurrent add is kept
        changes.affected |= orphaned
        self._planned_workloads = by_id

        hosted: dict[str, list[str]] = {}
        for workload_id, device_id in plan.assignments.items():
            if device_id is not None and workload_id in by_id:
                hosted.setdefault(device_id, []).append(workload_id)
        versions = {device_id: store.next_desired_version(device_id) for device_id in sorted(changes.affected)}
        store.apply_plan(self._assignments(versions, hosted, changes.moved, now), changes.removed)
        rollout_changes = changes_by_device(list_rollouts(store, LIVE_STATES)) if versions else {}
        for device_id, version in versions.items():
            workloads_here = [by_id[w] for w in sorted(hosted.get(device_id, []))]
            self._push(device_id, version, workloads_here, now, rollout_changes.get(device_id))
        self._required_by_device = {
            d: (sum(by_id[w].required_fps for w in ws), versions[d] if d in versions else self.required(d)[1])
            for d, ws in hosted.items()
        }
        self._hosted = {d: frozenset(ws) for d, ws in hosted.items()}
        self._record_plan_events(changes.moved, plan, reasons)
        self.unplaced_models = frozenset(by_id[w].model_id for w in plan.unplaced if w in by_id)
        self._finish(changes, plan, reasons, len(versions), started, now)
        return plan

    def _excluded(self, now: float) -> dict[str, set[str]]:
        """Workload -> devices it is kept off (cool-downs still running; the expired ones are dropped)."""
        with self._cooldown_lock:
            self._cooldowns = {k: until for k, until in self._cooldowns.items() if until > now}
            cooling = list(self._cooldowns)
        excluded: dict[str, set[str]] = {}
        for workload_id, device_id in cooling:
            excluded.setdefault(workload_id, set()).add(device_id)
        return excluded

    @staticmethod
    def _assignments(
        versions: dict[str, int], hosted: dict[str, list[str]], moved: list[Move], now: float
    ) -> list[Assignment]:
        changes = []
        for device_id, version in versions.items():
            for workload_id in hosted.get(device_id, []):
                reason = next((f"moved from {src}" if src else "placed" for w, src, _ in moved if w == workload_id),
                              "device config changed")
                changes.append(Assignment(workload_id, device_id, "pending", version, now, reason))
        return changes

    def _finish(
        self, changes: Changes, plan: placement.Plan, reasons: list[str], pushed: int, started: float, now: float
    ) -> None:
        self.last_plan_ms = round((time.perf_counter() - started) * 1000, 2)
        self.last_plan_reasons = list(dict.fromkeys(reasons))
        self.moved_total += sum(1 for _, src, _ in changes.moved if src is not None)
        with self._cond:
            self.plans += 1
            self.last_plan_at = now
            self._cond.notify_all()
        if changes.moved or changes.removed:
            log.info(
                "placement (%s): %d placed/moved, %d removed, %d unplaced, %d device config(s) pushed in %.0f ms",
                "; ".join(self.last_plan_reasons[:3]), len(changes.moved), len(changes.removed),
                len(plan.unplaced), pushed, self.last_plan_ms,
            )  # fmt: skip

    def _push(
        self, device_id: str, version: int, workloads: list[Workload], now: float, change: Change | None = None
    ) -> None:
        if not workloads:
            config = dict(self._policy.idle_config)
        else:
            config = device_document([w if change is None else change.apply(w) for w in workloads])
        try:
            desired = DesiredConfig(version=version, config=config, issued_at=now, issued_by=self._replica_id)
            payload = self._desired.encode(device_id, desired)
        except (ProtocolError, ValueError) as e:
            # The API refuses such workloads (422); one stored before that check cannot be delivered.
            ids = [w.workload_id for w in workloads]
            what = f"workload{'s' if len(ids) > 1 else ''} {', '.join(ids[:10])}" if ids else "the idle config"
            log.error(
                "device %s: desired config v%d for %s cannot be sent and is skipped: %s; fix or delete the "
                "workload (PUT or DELETE /api/workloads/<id>), the API now checks it", device_id, version, what,
                str(e).splitlines()[0][:500],
            )  # fmt: skip
            self._store.add_event(
                "config.undeliverable",
                f"desired config v{version} for {what} cannot be sent: {str(e)[:3000]}",
                device_id=device_id,
                workload_id=workloads[0].workload_id if len(workloads) == 1 else None,
                severity="error",
            )
            return
        self._desired.publish(device_id, payload)
        self.pushes += 1

    def _record_plan_events(self, moved: list[Move], plan: placement.Plan, reasons: list[str]) -> None:
        why = "; ".join(list(dict.fromkeys(reasons))[:3])
        for workload_id, source, target in moved:
            text = f"workload {workload_id} {'moved from ' + source + ' to' if source else 'placed on'} {target}"
            self._store.add_event(
                "placement.moved" if source else "placement.placed",
                f"{text} ({why})"[:4000],
                device_id=target,
                workload_id=workload_id,
                details={"from": source, "to": target, "reasons": reasons[:10]},
            )
        for workload_id, reason in plan.unplaced.items():
            if self.unplaced.get(workload_id) != reason:
                self._store.add_event(
                    "placement.unplaced",
                    f"workload {workload_id} cannot be placed: {reason}",
                    workload_id=workload_id,
                    severity="warning",
                    details={"reason": reason},
                )
        self.unplaced = dict(plan.unplaced)
