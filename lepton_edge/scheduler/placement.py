"""Placement: which device runs which workload. A pure, deterministic function of its input.

:func:`plan` reads no clock, does no I/O and breaks every tie by id, so the same input always gives the
same plan; it can be tested and benchmarked alone (:func:`bench_placement`).

The model:

- **Feasibility** (:func:`feasible`): the device is online and not throttled, and matches the workload's
  pinned device, group, accelerator (exact name) and runtime (listed in the device's runtimes).
- **Capacity** (:func:`capacity`): the frames per second a device can give a workload's model: what the
  device measured for that model (``Device.fps_capacity``), else a default for its accelerator. A
  workload uses ``required_fps / capacity`` of its device; the sum over a device's workloads is its
  *utilisation*, kept at or below ``headroom``.
- **Stability**: every current assignment that is still feasible stays, as long as its device's
  utilisation stays within ``headroom + hysteresis``. Past that, workloads are moved off (unpinned
  ones first, the largest first) until the device is back within ``headroom``. So workloads move only off
  devices that are gone, offline, throttled, no longer feasible for them, or overloaded.
- **New and displaced workloads** are placed pinned ones first, then largest ``required_fps`` first, each
  onto the least utilised feasible device where it fits within ``headroom`` (ties by device id). One that fits nowhere
  stays unplaced with a reason that starts with ``infeasible:``, ``too_large:`` or ``no_room:``.

Devices are indexed by (group, accelerator, runtimes) with a heap of utilisations per index entry, so a
plan for 10,000 workloads on 2,000 devices takes well under a second.
"""

from __future__ import annotations

import heapq
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from lepton_edge.scheduler.models import Assignment, Device, Workload

DEFAULT_CAPACITY_FPS: dict[str, float] = {"cpu": 10.0, "cuda": 100.0}
"""Frames per second assumed for a model a device has not measured yet, by accelerator."""
FALLBACK_CAPACITY_FPS = 30.0
"""The same, for accelerators not in :data:`DEFAULT_CAPACITY_FPS` (Jetson module names and others)."""

INFEASIBLE = "infeasible"
"""Reason prefix: no online, unthrottled device satisfies the workload's constraints."""
TOO_LARGE = "too_large"
"""Reason prefix: the workload needs more than ``headroom`` of every feasible device, even an idle one."""
NO_ROOM = "no_room"
"""Reason prefix: feasible devices exist, but none has enough capacity left."""

_EPS = 1e-9  # float slack, so a sum that lands exactly on the limit counts as within it


@dataclass(frozen=True)
class PlacementInput:
    devices: list[Device]
    workloads: list[Workload]
    assignments: list[Assignment]
    """The current assignments; those of workloads not in ``workloads`` are ignored."""


@dataclass(frozen=True)
class Plan:
    assignments: dict[str, str | None]
    """Every workload id -> its device id, or None when it could not be placed (ordered by workload id)."""
    moved: list[str]
    """Workloads that had a device and now have another one, or none."""
    added: list[str]
    """Workloads that had no device and now have one."""
    unplaced: dict[str, str]
    """Workloads without a device -> why (``infeasible: ...``, ``too_large: ...``, ``no_room: ...``)."""
    utilisation: dict[str, float] = field(default_factory=dict)
    """Utilisation of every usable (online, unthrottled) device after the plan."""


# ------------------------------------------------------------------------------------ the model


def model_capacity(device: Device, model: str) -> float:
    """Frames per second ``device`` can give ``model``: measured if known, else its accelerator's default."""
    measured = device.fps_capacity.get(model)
    if measured is not None and measured > 0:
        return float(measured)
    return DEFAULT_CAPACITY_FPS.get(device.accelerator, FALLBACK_CAPACITY_FPS)


def capacity(device: Device, workload: Workload) -> float:
    """Frames per second ``device`` can give ``workload``'s model."""
    return model_capacity(device, workload.model_id)


def demand(device: Device, workload: Workload) -> float:
    """The share of ``device`` that ``workload`` uses (``required_fps / capacity``)."""
    return workload.required_fps / model_capacity(device, workload.model_id)


def _unusable(device: Device) -> str | None:
    if not device.online:
        return f"device {device.device_id!r} is offline"
    if device.throttled:
        return f"device {device.device_id!r} is throttled"
    return None


def _mismatch(group: str | None, accelerator: str, runtimes: Any, workload: Workload) -> str | None:
    if workload.group is not None and group != workload.group:
        return f"group {group!r} is not {workload.group!r}"
    if workload.accelerator is not None and accelerator != workload.accelerator:
        return f"accelerator {accelerator!r} is not {workload.accelerator!r}"
    if workload.runtime is not None and workload.runtime not in runtimes:
        return f"runtime {workload.runtime!r} is not installed"
    return None


def feasible(device: Device, workload: Workload) -> str | None:
    """None if ``device`` may run ``workload`` (capacity aside), else the reason it may not."""
    if workload.pinned_device is not None and workload.pinned_device != device.device_id:
        return f"pinned to device {workload.pinned_device!r}"
    unusable = _unusable(device)
    if unusable is not None:
        return unusable
    mismatch = _mismatch(device.group, device.accelerator, device.runtimes, workload)
    return None if mismatch is None else f"device {device.device_id!r}: {mismatch}"


# ------------------------------------------------------------------------------------- planning


def _constraints(workload: Workload) -> str:
    wanted = {"group": workload.group, "accelerator": workload.accelerator, "runtime": workload.runtime}
    parts = [f"{name} {value!r}" for name, value in wanted.items() if value is not None]
    return " with " + ", ".join(parts) if parts else ""


class _Fleet:
    """Usable devices indexed by (group, accelerator, runtimes), with a utilisation heap per index entry."""

    def __init__(self, devices: dict[str, Device], utilisation: dict[str, float]) -> None:
        self.devices = devices
        self.util = utilisation
        self.key_of: dict[str, tuple[Any, ...]] = {}
        members: dict[tuple[Any, ...], list[str]] = defaultdict(list)
        for device_id in sorted(utilisation):
            d = devices[device_id]
            key = (d.group, d.accelerator, frozenset(d.runtimes))
            self.key_of[device_id] = key
            members[key].append(device_id)
        self.members = dict(members)
        self.heaps = {key: [(utilisation[i], i) for i in ids] for key, ids in self.members.items()}
        for heap in self.heaps.values():
            heapq.heapify(heap)
        self._matching: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
        self._max_capacity: dict[tuple[Any, str], float] = {}

    def matching(self, w: Workload) -> list[tuple[Any, ...]]:
        """The index entries whose devices all satisfy the workload's group/accelerator/runtime."""
        constraint = (w.group, w.accelerator, w.runtime)
        keys = self._matching.get(constraint)
        if keys is None:
            keys = [k for k in self.members if _mismatch(k[0], k[1], k[2], w) is None]
            self._matching[constraint] = keys
        return keys

    def max_capacity(self, key: tuple[Any, ...], model: str) -> float:
        """The highest capacity for ``model`` among the devices of one index entry."""
        cached = self._max_capacity.get((key, model))
        if cached is None:
            cached = max(model_capacity(self.devices[i], model) for i in self.members[key])
            self._max_capacity[(key, model)] = cached
        return cached

    def _top(self, key: tuple[Any, ...]) -> tuple[float, str] | None:
        heap = self.heaps[key]
        while heap and heap[0][0] != self.util[heap[0][1]]:
            heapq.heappop(heap)  # an entry from before the device's utilisation last changed
        return heap[0] if heap else None

    def least_utilised_fit(self, w: Workload, keys: list[tuple[Any, ...]], headroom: float) -> str | None:
        """The least utilised device (ties by id) of ``keys`` where ``w`` fits within ``headroom``."""
        candidates: list[tuple[float, str, tuple[Any, ...]]] = []
        set_aside: list[tuple[tuple[Any, ...], tuple[float, str]]] = []

        def offer(key: tuple[Any, ...]) -> None:
            top = self._top(key)
            # every device of the entry is at least this utilised and at most this fast: skip it whole
            if top is not None and top[0] + w.required_fps / self.max_capacity(key, w.model_id) <= headroom + _EPS:
                heapq.heappush(candidates, (top[0], top[1], key))

        for key in keys:
            offer(key)
        chosen = None
        while candidates:
            util, device_id, key = heapq.heappop(candidates)
            if util + demand(self.devices[device_id], w) <= headroom + _EPS:
                chosen = device_id
                break
            set_aside.append((key, heapq.heappop(self.heaps[key])))
            offer(key)
        for key, entry in set_aside:
            heapq.heappush(self.heaps[key], entry)
        return chosen

    def add(self, device_id: str, amount: float) -> None:
        self.util[device_id] += amount
        heapq.heappush(self.heaps[self.key_of[device_id]], (self.util[device_id], device_id))


def _keep_within(
    items: list[tuple[float, Workload]], headroom: float, hysteresis: float
) -> tuple[list[tuple[float, Workload]], list[Workload]]:
    """Split one device's current workloads into those that stay and those to move off."""
    total = sum(u for u, _ in items)
    if total <= headroom + hysteresis + _EPS:
        return items, []
    # overloaded: take off unpinned ones first (they can go elsewhere), largest first, down to headroom
    order = sorted(items, key=lambda it: (it[1].pinned_device is not None, -it[0], it[1].workload_id))
    shed: list[tuple[float, Workload]] = []
    for item in order:
        if total <= headroom + _EPS:
            break
        total -= item[0]
        shed.append(item)
    # then put back what still fits (pinned first, smallest first), so as few as possible move
    moving: list[Workload] = []
    for u, w in sorted(shed, key=lambda it: (it[1].pinned_device is None, it[0], it[1].workload_id)):
        if total + u <= headroom + _EPS:
            total += u
        else:
            moving.append(w)
    moving_ids = {w.workload_id for w in moving}
    return [it for it in items if it[1].workload_id not in moving_ids], moving


def plan(inp: PlacementInput, *, headroom: float = 0.8, hysteresis: float = 0.15) -> Plan:
    """Assign every workload to a device, or say why it cannot be (see the module docstring).

    ``headroom``: the utilisation (0-1, or above 1 to overcommit) new placements may fill a device to.
    ``hysteresis``: how far above ``headroom`` a device's current workloads may go before any is moved.
    """
    if not headroom > 0:
        raise ValueError(f"headroom must be > 0 (a share of each device's capacity), got {headroom!r}")
    if not hysteresis >= 0:
        raise ValueError(f"hysteresis must be >= 0, got {hysteresis!r}")
    devices = {d.device_id: d for d in inp.devices}
    workloads = sorted({w.workload_id: w for w in inp.workloads}.values(), key=lambda w: w.workload_id)
    known = {w.workload_id for w in workloads}
    current = {a.workload_id: a.device_id for a in inp.assignments if a.workload_id in known}
    utilisation = {i: 0.0 for i in sorted(devices) if _unusable(devices[i]) is None}

    # 1. keep what can stay
    result: dict[str, str | None] = {}
    to_place: list[Workload] = []
    hosted: dict[str, list[tuple[float, Workload]]] = defaultdict(list)
    for w in workloads:
        device = devices.get(current.get(w.workload_id, ""))
        if device is None or feasible(device, w) is not None:
            to_place.append(w)
        else:
            hosted[device.device_id].append((demand(device, w), w))
    for device_id in sorted(hosted):
        kept, moving = _keep_within(hosted[device_id], headroom, hysteresis)
        to_place.extend(moving)
        utilisation[device_id] = sum(u for u, _ in kept)
        for _, w in kept:
            result[w.workload_id] = device_id

    # 2. place the rest: pinned ones first (they have one choice), then the largest first, each on the
    # least utilised device where it fits
    fleet = _Fleet(devices, utilisation)
    unplaced: dict[str, str] = {}
    to_place.sort(key=lambda w: (w.pinned_device is None, -w.required_fps, w.workload_id))
    for w in to_place:
        where, reason = _place_one(fleet, w, headroom)
        result[w.workload_id] = where
        if where is None:
            unplaced[w.workload_id] = reason

    ids = [w.workload_id for w in workloads]
    moved = [i for i in ids if i in current and result[i] != current[i]]
    added = [i for i in ids if i not in current and result[i] is not None]
    return Plan(
        assignments={w.workload_id: result[w.workload_id] for w in workloads},
        moved=moved,
        added=added,
        unplaced=dict(sorted(unplaced.items())),
        utilisation=fleet.util,
    )


def _place_one(fleet: _Fleet, w: Workload, headroom: float) -> tuple[str | None, str]:
    """The device chosen for ``w`` (and it is booked), or None and why."""
    if w.pinned_device is not None:
        device = fleet.devices.get(w.pinned_device)
        if device is None:
            return None, f"{INFEASIBLE}: pinned to device {w.pinned_device!r}, which the scheduler does not know"
        reason = feasible(device, w)
        if reason is not None:
            return None, f"{INFEASIBLE}: pinned, but {reason}"
        need = demand(device, w)
        if need > headroom + _EPS:
            return None, _too_large(w, capacity(device, w), headroom)
        if fleet.util[device.device_id] + need > headroom + _EPS:
            return None, (
                f"{NO_ROOM}: pinned device {device.device_id!r} is {fleet.util[device.device_id]:.0%} utilised and "
                f"cannot add {need:.0%} for {w.required_fps:g} fps"
            )
        fleet.add(device.device_id, need)
        return device.device_id, ""

    keys = fleet.matching(w)
    if not keys:
        return None, f"{INFEASIBLE}: no online, unthrottled device{_constraints(w)}"
    fastest = max(fleet.max_capacity(k, w.model_id) for k in keys)
    if w.required_fps / fastest > headroom + _EPS:
        return None, _too_large(w, fastest, headroom)
    device_id = fleet.least_utilised_fit(w, keys, headroom)
    if device_id is None:
        return None, (
            f"{NO_ROOM}: no online, unthrottled device{_constraints(w)} has {w.required_fps:g} fps to spare for "
            f"model {w.model_id!r}; add devices or lower required_fps"
        )
    fleet.add(device_id, demand(fleet.devices[device_id], w))
    return device_id, ""


def _too_large(w: Workload, fastest: float, headroom: float) -> str:
    return (
        f"{TOO_LARGE}: needs {w.required_fps:g} fps of model {w.model_id!r}, but the fastest feasible device gives "
        f"{fastest:g} fps, {headroom:.0%} of which may be used; lower required_fps or add a faster device"
    )


# ------------------------------------------------------------------------------ balance and bench


def balance_report(result: Plan, inp: PlacementInput) -> dict[str, Any]:
    """How balanced a plan is: utilisation of the usable devices, and a lower bound on the best possible.

    ``lower_bound`` = total demand / total capacity: the required fps of the placed workloads over the sum,
    across usable devices, of each device's best capacity for their models. No plan placing the same
    workloads can keep every device below it (feasibility ignored, so the bound is loose, never wrong).
    """
    devices = {d.device_id: d for d in inp.devices}
    usable = [d for d in devices.values() if _unusable(d) is None]
    workloads = {w.workload_id: w for w in inp.workloads}
    util = dict.fromkeys((d.device_id for d in usable), 0.0)
    placed = [(workloads[w], d) for w, d in result.assignments.items() if d is not None]
    for w, device_id in placed:
        if device_id in util:
            util[device_id] += demand(devices[device_id], w)
    models = {w.model for w, _ in placed}
    total_capacity = 0.0
    for d in usable:
        measured = [fps for m, fps in d.fps_capacity.items() if m in models and fps > 0]
        best = max(measured, default=0.0)
        if len(measured) < len(models):  # some model runs at the accelerator's default
            best = max(best, DEFAULT_CAPACITY_FPS.get(d.accelerator, FALLBACK_CAPACITY_FPS))
        total_capacity += best
    total_demand = sum(w.required_fps for w, _ in placed)
    lower = total_demand / total_capacity if total_capacity > 0 else 0.0
    values = list(util.values())
    max_util = max(values, default=0.0)
    return {
        "usable_devices": len(usable),
        "devices_used": sum(1 for v in values if v > 0),
        "placed": len(placed),
        "unplaced": len(result.unplaced),
        "total_demand_fps": round(total_demand, 3),
        "total_capacity_fps": round(total_capacity, 3),
        "max_utilisation": round(max_util, 4),
        "mean_utilisation": round(sum(values) / len(values), 4) if values else 0.0,
        "lower_bound": round(lower, 4),
        "max_over_lower_bound": round(max_util / lower, 3) if lower > 0 else None,
    }


def synthetic_fleet(n_workloads: int, n_devices: int, seed: int = 0) -> PlacementInput:
    """A reproducible mixed fleet (CPU boxes, CUDA servers, Jetsons; some offline or throttled) to plan for."""
    rng = random.Random(seed)
    models = ["yolov8n", "yolov8s", "resnet18", "ssd-mobilenet"]
    groups = [f"site-{i}" for i in range(max(1, n_devices // 100))]
    kinds = [("cpu", {"onnxruntime": "1.17"}, 8.0, 30.0), ("cuda", {"onnxruntime": "1.17", "tensorrt": "8.6"},
             80.0, 400.0), ("orin-nano", {"onnxruntime": "1.17", "tensorrt": "8.6"}, 30.0, 120.0)]
    devices = []
    for i in range(n_devices):
        accelerator, runtimes, low, high = kinds[rng.choices(range(3), weights=(6, 3, 1))[0]]
        measured = {m: round(rng.uniform(low, high), 1) for m in models if rng.random() < 0.7}
        devices.append(Device(
            device_id=f"dev-{i:05d}", online=rng.random() > 0.02, session_id=1, last_seen=0.0,
            capabilities={"accelerator": accelerator, "runtimes": runtimes}, group=rng.choice(groups),
            accelerator=accelerator, runtimes=runtimes, desired_version=0, reported_version=0, last_outcome=None,
            telemetry=None, throttled=rng.random() < 0.01, temperature_c=None, fps_capacity=measured,
        ))
    workloads = []
    for i in range(n_workloads):
        pinned = rng.choice(devices).device_id if rng.random() < 0.03 else None
        workloads.append(Workload.model_construct(
            workload_id=f"wl-{i:05d}", source_uri=f"rtsp://cams.example/{i}", model=rng.choice(models),
            artifact=None, required_fps=rng.choice([1.0, 2.0, 5.0, 10.0, 15.0]), pinned_device=pinned,
            group=rng.choice(groups) if pinned is None and rng.random() < 0.7 else None,
            accelerator=None, runtime="tensorrt" if rng.random() < 0.1 else None, config={}, created_at=0.0,
        ))
    return PlacementInput(devices, workloads, [])


def _as_assignments(result: Plan) -> list[Assignment]:
    return [Assignment(w, d, "applied", 1, 0.0) for w, d in result.assignments.items() if d is not None]


def bench_placement(n_workloads: int = 10_000, n_devices: int = 2_000, seed: int = 0) -> dict[str, Any]:
    """Time :func:`plan` on a synthetic fleet: a first placement, a no-change replan, and a failover.

    The failover takes 1% of the devices offline and replans; only their workloads should move.
    """
    inp = synthetic_fleet(n_workloads, n_devices, seed)
    t0 = time.perf_counter()
    first = plan(inp)
    t1 = time.perf_counter()
    stable_inp = PlacementInput(inp.devices, inp.workloads, _as_assignments(first))
    again = plan(stable_inp)
    t2 = time.perf_counter()
    failed = {d.device_id for d in inp.devices[:: 100]}
    survivors = [d for d in inp.devices if d.device_id not in failed]
    after = plan(PlacementInput(survivors, inp.workloads, stable_inp.assignments))
    t3 = time.perf_counter()
    on_failed = sum(1 for d in first.assignments.values() if d in failed)
    return {
        "n_workloads": n_workloads,
        "n_devices": n_devices,
        "plan_s": round(t1 - t0, 4),
        "replan_s": round(t2 - t1, 4),
        "failover_s": round(t3 - t2, 4),
        "moved_on_replan": len(again.moved),
        "failed_devices": len(failed),
        "workloads_on_failed_devices": on_failed,
        "moved_on_failover": len(after.moved),
        "balance": balance_report(first, inp),
    }
