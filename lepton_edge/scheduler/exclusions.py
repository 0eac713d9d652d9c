"""Two rules of the service on top of the pure planner: exclusions (failed configs) and one workload per device."""

from __future__ import annotations

import dataclasses

from lepton_edge.scheduler import placement


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
    _unplace_leftovers(assignments, unplaced, current, excluded)
    moved = [w for w in sorted(by_id) if w in current and assignments.get(w) != current[w]]
    added = [w for w in sorted(by_id) if w not in current and assignments.get(w) is not None]
    return placement.Plan(
        assignments=assignments,
        moved=moved,
        added=added,
        unplaced=dict(sorted(unplaced.items())),
        utilisation=result.utilisation,
    )


def _unplace_leftovers(
    assignments: dict[str, str | None], unplaced: dict[str, str], current: dict[str, str], excluded: dict[str, set[str]]
) -> None:
    """Unplace the workloads still sharing a device (the one already there stays), and say which devices an
    unplaced workload was kept off."""
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
