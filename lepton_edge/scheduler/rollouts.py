"""Staged rollouts: a config patch and/or an artifact for the workloads of a device group, pushed in waves,
each wave gated on the health of its devices; an unhealthy wave (or an operator) aborts the rollout, and
every device of the waves done gets its previous config back.

- :class:`RolloutSpec` is what an operator submits (``POST /api/rollouts``); :class:`Rollout` is the
  record the store keeps (as a JSON document), with its waves and their health figures.
- :func:`plan_waves` (canary, then batches that may grow) and :func:`wave_verdict` (the health gate) are
  pure functions.
- :class:`RolloutRunner` advances rollouts; the service calls :meth:`RolloutRunner.tick` from the leader's
  sweep only, so one replica drives them. Every step is saved before it takes effect (compare-and-set on
  the record's revision), so a new leader continues where the old one stopped.
- A running rollout's change reaches a device through the planner: for the devices of its started waves,
  :func:`changes_by_device` gives the change the planner applies to the device's workload
  (:func:`lepton_edge.scheduler.desired.with_change`) before building its desired config. Aborting stops
  that, and the devices are pushed again: new, higher desired versions without the change. A rollout that
  succeeds writes its change into the workloads themselves.
- An artifact rollout rolls back *forward*: devices refuse a lower artifact version (anti-rollback), so its
  ``rollback_artifact`` (the previous file re-signed with a higher version) is written into the started
  devices' workloads and pushed; it is ``rolled_back`` only when every one applied it, else ``rollback_failed``.

docs/scheduler.md ("Rollouts") explains it for operators; AWS IoT Jobs' rollout and abort configs and
Greengrass deployments are the model.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from lepton_edge.config.pipeline import ArtifactRef
from lepton_edge.scheduler.desired import with_change
from lepton_edge.scheduler.models import WORKLOAD_ID_PATTERN, Device, Workload
from lepton_edge.scheduler.store import Store, StoreConflict, StoreError, StoreNotFound

log = logging.getLogger("lepton_edge.scheduler.rollouts")

RolloutState = Literal[
    "pending", "running", "completing", "aborting", "succeeded", "aborted", "rolled_back", "rollback_failed"
]
ROLLOUT_STATES: tuple[str, ...] = get_args(RolloutState)
ACTIVE_STATES = ("pending", "running", "completing", "aborting")
"""States the leader still has work for."""
LIVE_STATES = ("running", "completing")
"""States whose change the planner applies to the devices of the started waves."""
BASELINE_WINDOW_S = 60.0
"""A device's fps before its wave is the mean of its telemetry over this many seconds before the wave."""
MAX_DEVICES = 100_000
"""Bound on every device count of a rollout."""
MAX_SECONDS = 7 * 86400.0
"""Bound on every duration of a rollout (a week)."""


# ------------------------------------------------------------------------------------------ request


class HealthCriteria(BaseModel):
    """When a wave counts as unhealthy (which aborts the rollout and rolls back the waves done).

    A device of the wave *fails* when it rejects or rolls back the new config, goes offline, does not
    apply it within ``apply_timeout_s``, runs below ``min_fps_ratio`` of its own fps before the wave, or
    reports a failed or stalled source in more than ``max_source_errors`` telemetry messages.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_fps_ratio: float | None = Field(
        0.8,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="A device's mean fps over the bake time must be at least this fraction of its mean fps "
        "before the wave (null: fps not checked; devices that ran at 0 fps before are not checked).",
    )
    max_source_errors: int | None = Field(
        2,
        ge=0,
        le=1_000_000,
        description="A device fails when more of its telemetry reports on the new config than this show a source "
        "`failed` or `stalled` over the bake time (null: not checked).",
    )
    max_failures: int | None = Field(
        0, ge=0, le=MAX_DEVICES, description="A wave fails with more failed devices than this (null: no count limit)."
    )
    max_failure_ratio: float | None = Field(
        None,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="A wave fails when more than this fraction of its devices failed (null: no ratio limit).",
    )


Slug = Annotated[str, StringConstraints(pattern=WORKLOAD_ID_PATTERN)]


class RolloutSpec(BaseModel):
    """What to roll out, where, and how fast (the body of ``POST /api/rollouts``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rollout_id: Slug = Field(description="Slug: 1-64 characters, lowercase letters, digits, '_', '.', '-'.")
    group: Annotated[str, StringConstraints(min_length=1, max_length=128)] = Field(
        description="The device group: the online devices of this group that run a workload when the rollout "
        "starts are its targets."
    )
    config_patch: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="Device config merged over each target workload's config (nested mappings merge).",
    )
    artifact: dict[str, JsonValue] | None = Field(
        None, description="Artifact that replaces the target workloads' artifact (url, size, sha256, signature...)."
    )
    rollback_artifact: dict[str, JsonValue] | None = Field(
        None,
        validate_default=True,
        description="Required with `artifact`: the previous artifact re-signed with a higher version for the same "
        "target (`lepton-edge sign --version N+1 ...`), which an abort pushes to the devices of the started waves "
        "and writes into their workloads (devices refuse the lower previous version: anti-rollback).",
    )
    canary_count: int | None = Field(
        None, ge=1, le=MAX_DEVICES, description="Devices in the first wave (default 1 unless canary_percent is set)."
    )
    canary_percent: float | None = Field(
        None, gt=0, le=100, allow_inf_nan=False, description="First wave as a percentage of the targets (rounded up)."
    )
    batch_size: int = Field(1, ge=1, le=MAX_DEVICES, description="Devices in the wave after the canary.")
    batch_growth: float = Field(
        1.0,
        ge=1,
        le=10,
        allow_inf_nan=False,
        description="Each later wave is this many times the previous batch (rounded up; 1: constant batches).",
    )
    interval_s: float = Field(
        60.0, ge=0, le=MAX_SECONDS, allow_inf_nan=False, description="Least seconds between the starts of two waves."
    )
    bake_s: float = Field(
        60.0,
        ge=0,
        le=MAX_SECONDS,
        allow_inf_nan=False,
        description="Seconds a wave runs after all its devices applied the change before its health is judged.",
    )
    apply_timeout_s: float = Field(
        300.0,
        gt=0,
        le=MAX_SECONDS,
        allow_inf_nan=False,
        description="A device that has not applied the change this many seconds after its wave started fails.",
    )
    health: HealthCriteria = Field(default_factory=HealthCriteria, description="When a wave is unhealthy.")

    @field_validator("artifact")
    @classmethod
    def _valid_artifact(cls, artifact: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if artifact is None else ArtifactRef.model_validate(artifact).model_dump(exclude_none=True)

    @field_validator("rollback_artifact")
    @classmethod
    def _valid_rollback_artifact(cls, rollback: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        if "artifact" not in info.data:  # the artifact itself is invalid: that error says it
            return rollback
        artifact = info.data["artifact"]
        if rollback is None:
            if artifact is not None:
                raise ValueError(
                    "an artifact rollout needs a rollback_artifact: devices refuse the previous artifact's lower "
                    "version (anti-rollback), so re-sign the previous artifact with a version above the new one's "
                    "(`lepton-edge sign --version N+1 --target T ...` of the previous model) and give it here"
                )
            return None
        ref = ArtifactRef.model_validate(rollback)
        if artifact is None:
            raise ValueError("rollback_artifact is only for artifact rollouts (give artifact too, or leave it out)")
        if ref.signature is None or ref.version is None:
            raise ValueError("rollback_artifact must be signed with a version (`lepton-edge sign --version N+1 ...`)")
        if ref.target != artifact.get("target"):
            raise ValueError(
                f"rollback_artifact is for target {ref.target!r} but artifact is for {artifact.get('target')!r}; "
                "sign the previous artifact for the same target"
            )
        new_version = artifact.get("version") or 0
        if ref.version <= new_version:
            raise ValueError(
                f"rollback_artifact version {ref.version} must be above artifact version {new_version}, or devices "
                f"refuse it (anti-rollback); sign it with --version {new_version + 1} or higher"
            )
        return ref.model_dump(exclude_none=True)

    @model_validator(mode="after")
    def _consistent(self) -> RolloutSpec:
        if not self.config_patch and self.artifact is None:
            raise ValueError("a rollout needs a config_patch, an artifact, or both")
        if self.canary_count is not None and self.canary_percent is not None:
            raise ValueError("give canary_count or canary_percent, not both")
        return self


# ------------------------------------------------------------------------------------------ record


class Wave(BaseModel):
    """One wave of a rollout and what happened to it."""

    model_config = ConfigDict(extra="forbid")

    devices: list[str] = Field(description="Device ids of the wave.")
    started_at: float | None = Field(None, description="Unix time the change was pushed to its devices.")
    applied_at: float | None = Field(None, description="Unix time all its devices had applied it (bake starts).")
    finished_at: float | None = Field(None, description="Unix time its health was judged.")
    desired_before: dict[str, int] = Field(
        default_factory=dict, description="Each device's desired version before the wave: a newer one carries it."
    )
    baseline_fps: dict[str, float | None] = Field(
        default_factory=dict, description="Each device's mean fps before the wave (null: no telemetry)."
    )
    verdict: Literal["healthy", "unhealthy"] | None = Field(None, description="Null until judged.")
    failures: dict[str, str] = Field(default_factory=dict, description="Failed device -> why.")
    figures: dict[str, Any] = Field(default_factory=dict, description="Health figures of the wave.")


class Rollout(BaseModel):
    """A rollout as the store keeps it."""

    model_config = ConfigDict(extra="forbid")

    spec: RolloutSpec
    state: RolloutState = "pending"
    reason: str | None = Field(None, description="Why it was aborted (or what ended it).")
    created_at: float
    updated_at: float
    finished_at: float | None = None
    current_wave: int = Field(-1, description="Index of the wave running or last run; -1 before the first.")
    waves: list[Wave] = Field(default_factory=list)
    rolled_back: list[str] = Field(default_factory=list, description="Devices given their previous config back.")
    rollback_started_at: float | None = Field(
        None, description="Unix time an artifact rollout's rollback artifact was pushed (null: not yet, or none)."
    )
    rollback_desired_before: dict[str, int] = Field(
        default_factory=dict, description="Each started device's desired version before the rollback push."
    )
    rollback_failed: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Devices that did not apply the rollback artifact -> their errors (state rollback_failed).",
    )
    revision: int = Field(0, description="The store's revision of this record (compare-and-set).")

    @property
    def rollout_id(self) -> str:
        return self.spec.rollout_id

    def started_devices(self) -> list[str]:
        """Devices of the waves started so far."""
        return [d for wave in self.waves[: self.current_wave + 1] for d in wave.devices]

    def document(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"revision"})

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> Rollout:
        return cls.model_validate(document)


@dataclass(frozen=True)
class Change:
    """What a rollout changes in a workload."""

    config_patch: dict[str, Any]
    artifact: dict[str, Any] | None

    def apply(self, workload: Workload) -> Workload:
        return with_change(workload, self.config_patch, self.artifact)


def changes_by_device(rollouts: Iterable[Rollout]) -> dict[str, Change]:
    """Device -> the change of the running rollout whose started waves include it (for the planner)."""
    out: dict[str, Change] = {}
    for rollout in rollouts:
        if rollout.state in LIVE_STATES:
            change = Change(dict(rollout.spec.config_patch), rollout.spec.artifact)
            out.update((device_id, change) for device_id in rollout.started_devices())
    return out


# ---------------------------------------------------------------------------------- pure decisions


def plan_waves(
    device_ids: Sequence[str],
    *,
    canary_count: int | None = None,
    canary_percent: float | None = None,
    batch_size: int = 1,
    batch_growth: float = 1.0,
) -> list[list[str]]:
    """Split ``device_ids`` (in the given order) into waves: a canary, then batches of ``batch_size``, each
    later batch ``batch_growth`` times the previous one (rounded up).

    The canary is ``canary_count`` devices, or ``canary_percent`` of them rounded up (at least one), or one;
    a group smaller than the canary is one wave.
    """
    n = len(device_ids)
    if n == 0:
        return []
    if canary_percent is not None:
        canary = max(1, math.ceil(n * canary_percent / 100 - 1e-9))
    else:
        canary = canary_count or 1
    waves = [list(device_ids[: min(canary, n)])]
    start, size = len(waves[0]), float(batch_size)
    while start < n:
        take = max(1, math.ceil(size - 1e-9))
        waves.append(list(device_ids[start : start + take]))
        start += take
        size *= batch_growth
    return waves


Outcome = Literal["pending", "applied", "rejected", "rolled_back", "offline"]


@dataclass(frozen=True)
class DeviceHealth:
    """One device of a wave as the health gate sees it."""

    device_id: str
    outcome: Outcome
    baseline_fps: float | None = None
    fps: float | None = None
    """Mean fps on the new config over the bake time; None until the bake is over (or no telemetry)."""
    source_errors: int = 0
    """Telemetry reports on the new config with a failed or stalled source, over the bake time."""


@dataclass(frozen=True)
class Verdict:
    """The health gate's answer for a wave."""

    healthy: bool
    failures: dict[str, str] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None


def device_failure(device: DeviceHealth, criteria: HealthCriteria, *, timed_out: bool = False) -> str | None:
    """Why ``device`` failed its wave, or None."""
    if device.outcome in ("rejected", "rolled_back"):
        return f"{device.outcome} the new config"
    if device.outcome == "offline":
        return "went offline"
    if device.outcome == "pending":
        return "did not apply the new config within apply_timeout_s" if timed_out else None
    if criteria.max_source_errors is not None and device.source_errors > criteria.max_source_errors:
        limit = criteria.max_source_errors
        return f"{device.source_errors} telemetry reports with a failed or stalled source (maximum {limit})"
    ratio, baseline, fps = criteria.min_fps_ratio, device.baseline_fps, device.fps
    if ratio is not None and baseline and fps is not None and fps < ratio * baseline:
        return f"runs at {fps:.1f} fps, {fps / baseline:.0%} of its {baseline:.1f} fps before (minimum {ratio:.0%})"
    return None


def wave_verdict(devices: Sequence[DeviceHealth], criteria: HealthCriteria, *, timed_out: bool = False) -> Verdict:
    """Judge a wave: unhealthy when its failed devices exceed ``max_failures`` or ``max_failure_ratio``.

    Called while the wave runs (``fps`` unknown: only reported failures count, so a bad canary aborts at
    once) and after the bake (with ``fps``). ``timed_out``: the apply time is over, pending devices fail.
    """
    failures = {d.device_id: why for d in devices if (why := device_failure(d, criteria, timed_out=timed_out))}
    n = len(devices)
    ratios = [d.fps / d.baseline_fps for d in devices if d.fps is not None and d.baseline_fps]
    figures: dict[str, Any] = {
        "devices": n,
        "applied": sum(d.outcome == "applied" for d in devices),
        "failed": len(failures),
        "failure_ratio": round(len(failures) / n, 4) if n else 0.0,
        "min_fps_ratio": round(min(ratios), 4) if ratios else None,
        "mean_fps_ratio": round(sum(ratios) / len(ratios), 4) if ratios else None,
        "source_errors": sum(d.source_errors for d in devices),
        "outcomes": dict(collections.Counter(d.outcome for d in devices)),
    }
    over_count = criteria.max_failures is not None and len(failures) > criteria.max_failures
    over_ratio = criteria.max_failure_ratio is not None and n and len(failures) / n > criteria.max_failure_ratio
    if not (over_count or over_ratio):
        return Verdict(True, failures, figures)
    limit = (
        f"more than {criteria.max_failures} failed"
        if over_count
        else f"more than {criteria.max_failure_ratio:.0%} failed"
    )
    shown = "; ".join(f"{d}: {why}" for d, why in sorted(failures.items())[:5])
    more = f" (+{len(failures) - 5} more)" if len(failures) > 5 else ""
    return Verdict(False, failures, figures, f"{len(failures)} of {n} device(s) failed, {limit}: {shown}{more}")


def outcome_of(device: Device | None, desired_before: int) -> Outcome:
    """Where a device stands with the change of its wave (any desired version after ``desired_before``
    carries it)."""
    if device is None or not device.online:
        return "offline"
    if device.reported_version <= desired_before or device.last_outcome is None:
        return "pending"
    if device.last_outcome in ("applied", "rejected", "rolled_back"):
        return device.last_outcome  # type: ignore[return-value]
    return "pending"


def source_errors(rows: Iterable[dict[str, Any]], *, above: int) -> int:
    """Telemetry rows on a config version above ``above`` whose sources include a failed or stalled one."""
    count = 0
    for row in rows:
        data = row.get("data") or {}
        version, sources = data.get("config_version"), data.get("sources")
        if isinstance(version, int) and version > above and isinstance(sources, dict):
            count += any(state in ("failed", "stalled") for state in sources.values())
    return count


def mean_fps(rows: Iterable[dict[str, Any]], *, above: int | None = None, equal: int | None = None) -> float | None:
    """Mean ``fps`` of telemetry rows; only those whose ``config_version`` is above ``above`` / equal to
    ``equal`` when given."""
    values = []
    for row in rows:
        data = row.get("data") or {}
        fps, version = data.get("fps"), data.get("config_version")
        if not isinstance(fps, int | float) or isinstance(fps, bool):
            continue
        if above is not None and not (isinstance(version, int) and version > above):
            continue
        if equal is not None and version != equal:
            continue
        values.append(float(fps))
    return sum(values) / len(values) if values else None


# ---------------------------------------------------------------------------------------- store use


def create_rollout(store: Store, spec: RolloutSpec, now: float | None = None) -> Rollout:
    """Store a new pending rollout. :class:`StoreConflict` if the id exists or the group has an active one."""
    for other in list_rollouts(store, ACTIVE_STATES):
        if other.spec.group == spec.group:
            raise StoreConflict(
                f"group {spec.group!r} already has rollout {other.rollout_id!r} ({other.state}); wait for it to "
                f"end or abort it (POST /api/rollouts/{other.rollout_id}/abort)"
            )
    now = time.time() if now is None else now
    rollout = Rollout(spec=spec, created_at=now, updated_at=now)
    store.add_rollout(spec.rollout_id, rollout.state, rollout.document(), now)
    store.add_event(
        "rollout.created",
        f"rollout {spec.rollout_id} created for group {spec.group}",
        details={"rollout_id": spec.rollout_id, "group": spec.group},
    )
    return get_rollout(store, spec.rollout_id)


def get_rollout(store: Store, rollout_id: str) -> Rollout:
    """The rollout; :class:`StoreNotFound` if there is none."""
    document = store.get_rollout(rollout_id)
    if document is None:
        raise StoreNotFound(f"rollout {rollout_id!r} not found; GET /api/rollouts lists the rollouts")
    return Rollout.from_document(document)


def list_rollouts(store: Store, states: Sequence[str] | None = None) -> list[Rollout]:
    """The stored rollouts (in ``states`` if given), oldest first. A record this version cannot read (written
    by a newer one) is left out with an error log line, so it never stops placement or the other rollouts."""
    rollouts = []
    for document in store.list_rollouts(states):
        try:
            rollouts.append(Rollout.from_document(document))
        except ValueError as e:
            spec = document.get("spec")
            name = spec.get("rollout_id") if isinstance(spec, dict) else None
            log.error("rollout %r in the store cannot be read and is skipped: %s", name, str(e).splitlines()[0])
    return rollouts


def request_abort(store: Store, rollout_id: str, reason: str, now: float | None = None) -> Rollout:
    """Ask for an abort: a pending rollout ends at once (nothing to roll back), a running one goes to
    ``aborting`` and the leader rolls back its waves. An ended rollout is returned unchanged."""
    for _ in range(20):  # the leader may be saving the same record: retry on a newer revision
        rollout = get_rollout(store, rollout_id)
        if rollout.state not in ("pending", "running"):
            return rollout
        now = time.time() if now is None else now
        ended = rollout.state == "pending"
        update = rollout.model_copy(
            update={
                "state": "aborted" if ended else "aborting",
                "reason": reason,
                "updated_at": now,
                "finished_at": now if ended else None,
            }
        )
        if save(store, update, now):
            store.add_event(
                "rollout.abort_requested",
                f"rollout {rollout_id}: abort requested ({reason})",
                severity="warning",
                details={"rollout_id": rollout_id, "reason": reason},
            )
            return get_rollout(store, rollout_id)
    raise StoreError(f"rollout {rollout_id!r} kept changing while aborting it; try again")


def save(store: Store, rollout: Rollout, now: float) -> bool:
    """Save ``rollout`` if the store still has the revision it was read at."""
    record = rollout.model_copy(update={"updated_at": now})
    return store.save_rollout(rollout.rollout_id, record.state, record.document(), rollout.revision, now)


# ------------------------------------------------------------------------------------------- runner


class Pusher(Protocol):
    """What the runner needs of the planner."""

    def push_again(self, device_ids: Iterable[str], reason: str) -> None: ...


class RolloutRunner:
    """Advances the active rollouts one step per :meth:`tick` (leader only)."""

    def __init__(self, store: Store, planner: Pusher, counts: collections.Counter[str]) -> None:
        self._store = store
        self._planner = planner
        self._counts = counts

    def tick(self, now: float | None = None) -> None:
        """One step for each active rollout. Raises StoreError."""
        now = time.time() if now is None else now
        for rollout in list_rollouts(self._store, ACTIVE_STATES):
            try:
                self._step(rollout, now)
            except (ValueError, KeyError) as e:  # a record this version cannot follow: stop it, loudly
                log.exception("rollout %s cannot advance", rollout.rollout_id)
                self._abort(rollout, f"internal error, rollout stopped: {e}", now)

    def _step(self, rollout: Rollout, now: float) -> None:
        if rollout.state == "pending":
            self._start(rollout, now)
        elif rollout.state == "aborting":
            self._roll_back(rollout, now)
        elif rollout.state == "completing":
            self._complete(rollout, now)
        else:
            self._advance(rollout, now)

    def _start(self, rollout: Rollout, now: float) -> None:
        store, spec = self._store, rollout.spec
        hosting = {a.device_id for a in store.list_assignments()}
        targets = [
            d.device_id for d in store.list_devices() if d.group == spec.group and d.online and d.device_id in hosting
        ]
        waves = plan_waves(
            targets, canary_count=spec.canary_count, canary_percent=spec.canary_percent,
            batch_size=spec.batch_size, batch_growth=spec.batch_growth,
        )  # fmt: skip
        if not waves:
            self._finish(rollout, "aborted", f"group {spec.group!r} has no online device running a workload", now)
            return
        started = rollout.model_copy(update={"state": "running", "waves": [Wave(devices=w) for w in waves]})
        if save(self._store, started, now):
            store.add_event(
                "rollout.started",
                f"rollout {spec.rollout_id}: {len(targets)} device(s) of group {spec.group} in {len(waves)} wave(s)",
                details={"rollout_id": spec.rollout_id, "waves": [len(w) for w in waves]},
            )
            self._start_wave(get_rollout(store, spec.rollout_id), 0, now)

    def _start_wave(self, rollout: Rollout, index: int, now: float) -> None:
        """Make the wave live (saved first, so the planner sees its change from then on), then arm it."""
        wave = rollout.waves[index].model_copy(update={"started_at": now})
        if save(self._store, _with_wave(rollout.model_copy(update={"current_wave": index}), index, wave), now):
            self._arm_wave(get_rollout(self._store, rollout.rollout_id), now)

    def _arm_wave(self, rollout: Rollout, now: float) -> None:
        """Note each device's desired version (a newer one carries the change) and fps before the wave,
        then push the wave's devices."""
        store, index = self._store, rollout.current_wave
        devices = {d.device_id: d for d in store.list_devices()}
        wave = rollout.waves[index]
        wave = wave.model_copy(
            update={
                "desired_before": {d: devices[d].desired_version if d in devices else 0 for d in wave.devices},
                "baseline_fps": {d: self._baseline(devices.get(d), now) for d in wave.devices},
            }
        )
        if not save(store, _with_wave(rollout, index, wave), now):
            return
        self._counts["rollout_waves"] += 1
        store.add_event(
            "rollout.wave",
            f"rollout {rollout.rollout_id}: wave {index + 1} of {len(rollout.waves)} started on "
            f"{len(wave.devices)} device(s)",
            details={"rollout_id": rollout.rollout_id, "wave": index, "devices": wave.devices[:100]},
        )
        self._planner.push_again(wave.devices, f"rollout {rollout.rollout_id} wave {index + 1}")

    def _baseline(self, device: Device | None, now: float) -> float | None:
        """The device's mean fps over :data:`BASELINE_WINDOW_S`, on the config it runs now."""
        if device is None or not device.telemetry:
            return None
        running = device.telemetry.get("config_version")
        rows = self._store.telemetry_history(device.device_id, since=now - BASELINE_WINDOW_S)
        return mean_fps(rows, equal=running) if rows else mean_fps([{"data": device.telemetry}])

    def _advance(self, rollout: Rollout, now: float) -> None:
        spec, index = rollout.spec, rollout.current_wave
        wave = rollout.waves[index]
        if wave.verdict == "healthy":
            self._next_wave(rollout, now)
            return
        if not wave.desired_before:  # live but not armed (a leader stopped in between): arm it now
            self._arm_wave(rollout, now)
            return
        devices = {d.device_id: d for d in self._store.list_devices()}
        health = [
            DeviceHealth(d, outcome_of(devices.get(d), wave.desired_before.get(d, 0)), wave.baseline_fps.get(d))
            for d in wave.devices
        ]
        timed_out = now - (wave.started_at or now) > spec.apply_timeout_s
        verdict = wave_verdict(health, spec.health, timed_out=timed_out)
        if not verdict.healthy:
            self._judge(rollout, wave, verdict, now)
            return
        if any(h.outcome == "pending" for h in health):
            return
        if wave.applied_at is None:
            wave = wave.model_copy(update={"applied_at": now})
            save(self._store, _with_wave(rollout, index, wave), now)
            return
        if now - wave.applied_at < spec.bake_s:
            return
        baked = []
        for h in health:
            rows = self._store.telemetry_history(h.device_id, since=wave.applied_at)
            before = wave.desired_before.get(h.device_id, 0)
            fps, errors = mean_fps(rows, above=before), source_errors(rows, above=before)
            baked.append(DeviceHealth(h.device_id, h.outcome, h.baseline_fps, fps, errors))
        self._judge(rollout, wave, wave_verdict(baked, spec.health), now)

    def _judge(self, rollout: Rollout, wave: Wave, verdict: Verdict, now: float) -> None:
        index = rollout.current_wave
        judged = wave.model_copy(
            update={
                "verdict": "healthy" if verdict.healthy else "unhealthy",
                "finished_at": now,
                "failures": verdict.failures,
                "figures": verdict.figures,
            }
        )
        rollout = _with_wave(rollout, index, judged)
        if not verdict.healthy:
            self._counts["rollouts_aborted"] += 1
            self._abort(rollout, f"wave {index + 1} unhealthy: {verdict.reason}", now)
            return
        if save(self._store, rollout, now):
            self._store.add_event(
                "rollout.wave_healthy",
                f"rollout {rollout.rollout_id}: wave {index + 1} healthy",
                details={"rollout_id": rollout.rollout_id, "wave": index, "figures": verdict.figures},
            )

    def _next_wave(self, rollout: Rollout, now: float) -> None:
        index = rollout.current_wave
        if index + 1 >= len(rollout.waves):
            completing = rollout.model_copy(update={"state": "completing"})
            if save(self._store, completing, now):  # from here on an abort is too late
                self._complete(get_rollout(self._store, rollout.rollout_id), now)
            return
        if now - (rollout.waves[index].started_at or 0.0) >= rollout.spec.interval_s:
            self._start_wave(rollout, index + 1, now)

    def _complete(self, rollout: Rollout, now: float) -> None:
        """Write the change into the workloads of the rollout's devices (again after a failure: it merges
        the same way twice), then end the rollout."""
        store, spec = self._store, rollout.spec
        devices = set(rollout.started_devices())
        change = Change(dict(spec.config_patch), spec.artifact)
        hosted = {a.workload_id for a in store.list_assignments() if a.device_id in devices}
        for workload in store.list_workloads():
            if workload.workload_id in hosted:
                store.update_workload(change.apply(workload))
        self._finish(rollout, "succeeded", None, now)
        self._planner.push_again([], f"rollout {spec.rollout_id} succeeded")

    def _abort(self, rollout: Rollout, reason: str, now: float) -> None:
        aborting = rollout.model_copy(update={"state": "aborting", "reason": reason})
        if save(self._store, aborting, now):
            self._store.add_event(
                "rollout.aborted",
                f"rollout {rollout.rollout_id} aborted: {reason}"[:4000],
                severity="error",
                details={"rollout_id": rollout.rollout_id, "reason": reason[:2000]},
            )
            self._roll_back(get_rollout(self._store, rollout.rollout_id), now)

    def _roll_back(self, rollout: Rollout, now: float) -> None:
        """The change is no longer live (state ``aborting``): push the started waves' devices again."""
        devices = rollout.started_devices()
        if not devices:
            self._finish(rollout, "aborted", rollout.reason, now)
            return
        if rollout.spec.rollback_artifact is not None:
            self._roll_back_artifact(rollout, devices, now)
            return
        done = rollout.model_copy(update={"rolled_back": devices})
        if self._finish(done, "rolled_back", rollout.reason, now):
            self._counts["rollouts_rolled_back"] += 1
            self._planner.push_again(devices, f"rollout {rollout.rollout_id} rolled back")

    def _roll_back_artifact(self, rollout: Rollout, devices: list[str], now: float) -> None:
        """Write the rollback artifact into the started devices' workloads and push them (once), then wait for
        each device's answer: ``rolled_back`` when all applied it, else ``rollback_failed`` naming the others."""
        store, spec = self._store, rollout.spec
        known = {d.device_id: d for d in store.list_devices()}
        if rollout.rollback_started_at is None:
            before = {d: known[d].desired_version if d in known else 0 for d in devices}
            back = Change({}, spec.rollback_artifact)  # written first: doing it twice changes nothing
            hosted = {a.workload_id for a in store.list_assignments() if a.device_id in set(devices)}
            for workload in store.list_workloads():
                if workload.workload_id in hosted:
                    store.update_workload(back.apply(workload))
            pushing = rollout.model_copy(update={"rollback_started_at": now, "rollback_desired_before": before})
            if not save(store, pushing, now):
                return
            self._planner.push_again(devices, f"rollout {spec.rollout_id} rolling back to its rollback artifact")
            return
        timed_out = now - rollout.rollback_started_at > spec.apply_timeout_s
        applied, failed = [], {}
        for device_id in devices:
            device = known.get(device_id)
            outcome = outcome_of(device, rollout.rollback_desired_before.get(device_id, 0))
            if outcome == "applied":
                applied.append(device_id)
            elif outcome == "pending" and not timed_out:
                return
            elif outcome == "pending":
                failed[device_id] = ["did not apply the rollback artifact within apply_timeout_s"]
            elif outcome == "offline":
                failed[device_id] = ["went offline before applying the rollback artifact"]
            else:
                failed[device_id] = [f"{outcome} the rollback artifact", *(device.last_errors if device else [])]
        done = rollout.model_copy(update={"rolled_back": applied, "rollback_failed": failed})
        if self._finish(done, "rollback_failed" if failed else "rolled_back", rollout.reason, now):
            self._counts["rollouts_rolled_back" if not failed else "rollouts_rollback_failed"] += 1

    def _finish(self, rollout: Rollout, state: RolloutState, reason: str | None, now: float) -> bool:
        ended = rollout.model_copy(update={"state": state, "reason": reason, "finished_at": now})
        if not save(self._store, ended, now):
            return False
        self._store.add_event(
            f"rollout.{state}",
            f"rollout {rollout.rollout_id} {state.replace('_', ' ')}" + (f": {reason}" if reason else ""),
            severity="info" if state == "succeeded" else "warning",
            details={"rollout_id": rollout.rollout_id, "devices": rollout.rolled_back[:100]},
        )
        return True


def _with_wave(rollout: Rollout, index: int, wave: Wave) -> Rollout:
    waves = list(rollout.waves)
    waves[index] = wave
    return rollout.model_copy(update={"waves": waves})
