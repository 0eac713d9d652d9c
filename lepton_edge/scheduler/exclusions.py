"""Two rules of the service on top of the pure planner: exclusions (failed configs) and workloads that cannot
share a device (conflicting device-level settings, a sink file written twice, an oversized document)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from lepton_edge.scheduler import placement
from lepton_edge.scheduler.models import Workload

Conflicts = Callable[[Sequence[Workload]], dict[str, str]]
"""Given one device's workloads (those to keep first), the ones that cannot join the others -> why
(:func:`lepton_edge.scheduler.desired.device_conflicts`)."""


def plan_with_exclusions(
    inp: placement.PlacementInput,
    excluded: dict[str, set[str]],
    *,
    headroom: float,
    hysteresis: float,
    conflicts: Conflicts | None = None,
    max_rounds: int = 8,
) -> placement.Plan:
    """:func:`placement.plan` with two rules of the service on top, still pure and deterministic:

    - a workload is kept off the devices in ``excluded[workload_id]`` (they failed its config recently);
    - workloads that ``conflicts`` says cannot share a device are kept apart: on each device, the ones
      already there (then the largest, then by id) stay, and the others are planned again without that
      device, for at most ``max_rounds`` rounds; what still conflicts after that is unplaced.

    The pure planner packs as many workloads on a device as its capacity allows. Exclusions are expressed to
    it as a runtime requirement only the allowed devices have, so its feasibility rules, capacity and
    stability apply unchanged.
    """
    excluded = {w: set(ds) for w, ds in excluded.items() if ds}
    failed = set(excluded)
    current = {a.workload_id: a.device_id for a in inp.assignments}
    by_id = {w.workload_id: w for w in inp.workloads}
    result = placement.plan(_excluding(inp, excluded), headroom=headroom, hysteresis=hysteresis)
    why: dict[str, str] = {}
    for _ in range(max_rounds if conflicts is not None else 0):
        found = _conflicting(result, by_id, current, conflicts)  # type: ignore[arg-type]
        if not found:
            break
        for (workload_id, device_id), reason in found.items():
            excluded.setdefault(workload_id, set()).add(device_id)
            why[workload_id] = f"{device_id}: {reason}"
        result = placement.plan(_excluding(inp, excluded), headroom=headroom, hysteresis=hysteresis)
    assignments = dict(result.assignments)
    unplaced = dict(result.unplaced)
    if conflicts is not None:
        for (workload_id, device_id), reason in _conflicting(result, by_id, current, conflicts).items():
            assignments[workload_id] = None  # still conflicting after max_rounds
            unplaced[workload_id] = f"{placement.NO_ROOM}: conflicts on {device_id}: {reason}"
    for workload_id, reason in unplaced.items():
        if workload_id in excluded and not reason.startswith(f"{placement.NO_ROOM}: conflicts"):
            kind = reason.split(":", 1)[0]
            avoided = ", ".join(sorted(excluded[workload_id])[:5])
            causes = ["a failed config"] if workload_id in failed else []
            if workload_id in why:
                causes.append(f"a conflict on {why[workload_id]}")
            unplaced[workload_id] = f"{kind}: no device left after excluding {avoided} ({' and '.join(causes)})"
    moved = [w for w in sorted(by_id) if w in current and assignments.get(w) != current[w]]
    added = [w for w in sorted(by_id) if w not in current and assignments.get(w) is not None]
    return placement.Plan(
        assignments=assignments,
        moved=moved,
        added=added,
        unplaced=dict(sorted(unplaced.items())),
        utilisation=result.utilisation,
    )


def _conflicting(
    result: placement.Plan, by_id: dict[str, Workload], current: dict[str, str], conflicts: Conflicts
) -> dict[tuple[str, str], str]:
    """(workload, device) -> why, for each workload the plan puts with others it conflicts with."""
    hosted: dict[str, list[str]] = {}
    for workload_id, device_id in result.assignments.items():
        if device_id is not None:
            hosted.setdefault(device_id, []).append(workload_id)
    found: dict[tuple[str, str], str] = {}
    for device_id, workload_ids in sorted(hosted.items()):
        if len(workload_ids) < 2:
            continue
        order = sorted(workload_ids, key=lambda w: (current.get(w) != device_id, -by_id[w].required_fps, w))
        for workload_id, reason in conflicts([by_id[w] for w in order]).items():
            found[(workload_id, device_id)] = reason
    return found


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
