"""The scheduler's fleet state behind one interface, and :func:`open_store` to pick a backend by URL.

- ``sqlite:///fleet.db`` (relative path), ``sqlite:////var/lib/lepton/fleet.db`` (absolute path, four
  slashes), ``sqlite://:memory:``: the embedded default, for one scheduler process
  (:mod:`lepton_edge.scheduler.store_sqlite`).
- ``postgresql://user:password@host:5432/db``: shared state for several scheduler replicas, with leader
  election through an advisory lock (:mod:`lepton_edge.scheduler.store_postgres`; needs the ``postgres``
  extra: ``pip install 'lepton-edge[postgres]'``).

Every method is safe to call from several threads; the PostgreSQL store is also safe across processes.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from lepton_edge.core.errors import LeptonError
from lepton_edge.scheduler.auth import ApiToken, AuditEntry
from lepton_edge.scheduler.models import Assignment, AssignmentStatus, Device, Event, Severity, Workload

DEFAULT_HISTORY_LIMIT = 720
"""Telemetry rows kept per device (an hour at one message per 5 s)."""
DEFAULT_EVENT_LIMIT = 100_000
"""Events kept in total; older ones are deleted as new ones arrive."""
THROTTLE_TEMPERATURE_C = 85.0
"""A device whose hottest sensor reaches this temperature counts as throttled."""
CAPACITY_SMOOTHING = 0.3
"""Weight of a new throughput measurement in the running estimate of a device's capacity for a model."""
MIN_BUSY = 0.05
"""A model whose inference worker was busy less than this fraction of a telemetry interval teaches nothing
about its capacity (``fps / busy`` of a nearly idle worker is noise)."""
_PIPELINE_STAGES = ("preprocess", "infer", "postprocess")


class EncodedJson(dict[str, Any]):
    """A JSON object that keeps its JSON text, so the SQL stores write that text instead of encoding the
    mapping again (the scheduler passes telemetry payloads it has just validated this way).

    The caller vouches that ``text`` encodes exactly this mapping.
    """

    __slots__ = ("text",)

    def __init__(self, data: dict[str, Any], text: str) -> None:
        super().__init__(data)
        self.text = text


TelemetryItem = tuple[str, int, int, dict[str, Any], float]
"""One telemetry message for :meth:`Store.record_telemetry_batch`: device id, session, seq, payload, time."""


class StoreError(LeptonError):
    """The fleet store failed or was asked something impossible; the message says what and where."""


class StoreUnavailable(StoreError):
    """The store's database cannot be reached right now; the same call works again once it is back."""


class StoreNotFound(StoreError):
    """The device or workload named does not exist."""


class StoreConflict(StoreError):
    """The record already exists (e.g. a workload id that is taken)."""


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events :meth:`Store.list_events` returns; None matches anything."""

    device_id: str | None = None
    kind_prefix: str | None = None
    """Kinds that start with this (``device.analytics.`` for every analytics event)."""
    stream: str | None = None
    """Analytics events of this stream (``details.analytics.stream``)."""
    since_ts: float | None = None
    """At or after this Unix time (for analytics events: the capture time)."""
    until_ts: float | None = None
    """Before this Unix time."""


class Store(abc.ABC):
    """Fleet state: devices, telemetry, workloads, assignments, desired config versions, events, leader.

    Times are Unix seconds given by the caller, so the store never reads a clock for decisions.
    Use it as a context manager or call :meth:`close`.
    """

    history_limit: int = DEFAULT_HISTORY_LIMIT

    # ---------------------------------------------------------------------------------- lifecycle
    @abc.abstractmethod
    def migrate(self) -> None:
        """Create or upgrade the schema (numbered migrations recorded in ``schema_version``); idempotent."""

    @abc.abstractmethod
    def schema_version(self) -> int:
        """The number of the newest migration applied (0 for an empty database)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections (and the leadership, if held). Further calls raise :class:`StoreError`."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------------- presence
    @abc.abstractmethod
    def device_birth(self, device_id: str, session_id: int, capabilities: dict[str, Any], ts: float) -> bool:
        """Record a birth. False (and nothing changes) if ``session_id`` is older than the newest session seen.

        The device is online unless a death of the same session was already recorded (retained birth
        and death can arrive in either order; docs/protocol.md "Sessions and presence").
        """

    @abc.abstractmethod
    def device_death(self, device_id: str, session_id: int, ts: float, reason: str) -> bool:
        """Record a death: the device goes offline. False for a stale death (older than the last birth).

        A death of a newer session than the last birth (whose birth was missed) also applies.
        """

    @abc.abstractmethod
    def device_seen(self, device_id: str, ts: float) -> None:
        """Note that a message from the device arrived at ``ts`` (unknown devices are ignored)."""

    @abc.abstractmethod
    def mark_offline(
        self, device_id: str, ts: float, reason: str, *, last_seen_before: float | None = None
    ) -> bool:
        """Mark an online device offline (liveness timeout). True if it was online and now is not.

        With ``last_seen_before``, only if the device was last seen before that time, so a message that
        arrived meanwhile (perhaps at another replica) wins over the timeout.
        """

    # ---------------------------------------------------------------------------------- telemetry
    @abc.abstractmethod
    def record_telemetry(self, device_id: str, session_id: int, seq: int, data: dict[str, Any], ts: float) -> bool:
        """Store a telemetry payload as the device's latest and in its history (last ``history_limit`` rows).

        Updates ``last_seen``, ``temperature_c``, ``throttled`` and the learned ``fps_capacity``. False (and
        nothing stored) for a message of an older session or not newer than the latest (session, seq).
        """

    def record_telemetry_batch(self, items: Iterable[TelemetryItem]) -> int:
        """Store several telemetry payloads, each ``(device_id, session_id, seq, data, ts)``; the number stored.

        Each follows the rules of :meth:`record_telemetry`; a device's items are applied in the order given.
        This default writes them one by one; the SQL stores write a batch in one transaction.
        """
        return sum(self.record_telemetry(*item) for item in items)

    @abc.abstractmethod
    def telemetry_history(self, device_id: str, since: float | None = None, limit: int = 720) -> list[dict[str, Any]]:
        """The newest ``limit`` telemetry rows after ``since``, oldest first: ``{ts, session_id, seq, data}``."""

    # ------------------------------------------------------------------------------------ devices
    @abc.abstractmethod
    def get_device(self, device_id: str) -> Device | None: ...

    @abc.abstractmethod
    def list_devices(self) -> list[Device]:
        """Every device, ordered by id."""

    @abc.abstractmethod
    def set_device_group(self, device_id: str, group: str | None) -> None:
        """Set the operator's group of a device; None falls back to the group in its capabilities.

        Raises :class:`StoreNotFound` for an unknown device.
        """

    # ---------------------------------------------------------------------------------- workloads
    @abc.abstractmethod
    def add_workload(self, workload: Workload) -> Workload:
        """Add a workload and return it as stored (``created_at`` set). :class:`StoreConflict` if the id exists."""

    @abc.abstractmethod
    def update_workload(self, workload: Workload) -> Workload:
        """Replace a workload (its ``created_at`` is kept). :class:`StoreNotFound` if it does not exist."""

    @abc.abstractmethod
    def delete_workload(self, workload_id: str) -> bool:
        """Delete a workload and its assignment; False if there was none."""

    @abc.abstractmethod
    def get_workload(self, workload_id: str) -> Workload | None: ...

    @abc.abstractmethod
    def list_workloads(self) -> list[Workload]:
        """Every workload, ordered by id."""

    # -------------------------------------------------------------------------------- assignments
    @abc.abstractmethod
    def list_assignments(self) -> list[Assignment]:
        """Every assignment, ordered by workload id."""

    @abc.abstractmethod
    def apply_plan(self, changes: list[Assignment], removed: list[str]) -> None:
        """Atomically upsert ``changes`` and delete the assignments of the ``removed`` workload ids.

        Changes for workloads that no longer exist (deleted meanwhile) are skipped.
        """

    @abc.abstractmethod
    def set_assignment_status(
        self,
        workload_id: str,
        status: AssignmentStatus,
        reason: str | None = None,
        *,
        desired_version: int | None = None,
    ) -> bool:
        """Set the status of an assignment; True if it exists (and, if given, carries ``desired_version``)."""

    # ---------------------------------------------------------------------------- desired config
    @abc.abstractmethod
    def next_desired_version(self, device_id: str) -> int:
        """Atomically allocate the device's next desired config version.

        Monotonic per device across restarts and replicas, from 1 up to ``protocol.MAX_CONFIG_VERSION``;
        only this allocation moves it (a device's report never does).
        """

    @abc.abstractmethod
    def record_reported(self, device_id: str, version: int, outcome: str, errors: list[str]) -> bool:
        """Record a device's config report; False (ignored) if it is older than the last one recorded, or
        its version is not one this store issued to the device (0 < version <= its desired version)."""

    # ------------------------------------------------------------------------------------- events
    @abc.abstractmethod
    def add_event(
        self,
        kind: str,
        message: str,
        *,
        device_id: str | None = None,
        workload_id: str | None = None,
        severity: Severity = "info",
        details: dict[str, Any] | None = None,
        ts: float | None = None,
    ) -> Event:
        """Record an event (``ts`` defaults to now); the oldest are deleted beyond the store's event limit."""

    @abc.abstractmethod
    def list_events(
        self, limit: int = 200, since_id: int | None = None, *, filters: EventFilter | None = None
    ) -> list[Event]:
        """Events in id order (oldest first): the newest ``limit``, or the first ``limit`` after ``since_id``;
        only those ``filters`` match."""

    # ------------------------------------------------------------------------------ API tokens
    @abc.abstractmethod
    def add_api_token(self, token: ApiToken) -> None:
        """Store a new API token (its secret only as ``secret_hash``). :class:`StoreConflict` if the id exists."""

    @abc.abstractmethod
    def get_api_token(self, token_id: str) -> ApiToken | None:
        """The token with this id, revoked or not."""

    @abc.abstractmethod
    def list_api_tokens(self) -> list[ApiToken]:
        """Every token, revoked ones too, oldest first."""

    @abc.abstractmethod
    def revoke_api_token(self, token_id: str, ts: float) -> bool:
        """Revoke a token from ``ts`` on; False if it does not exist or was already revoked."""

    # ------------------------------------------------------------------------------- audit log
    @abc.abstractmethod
    def add_audit(
        self,
        *,
        actor: str,
        role: str | None,
        action: str,
        target: str | None,
        status: int,
        remote: str | None,
        detail: dict[str, Any] | None = None,
        ts: float | None = None,
    ) -> AuditEntry:
        """Append to the audit log (``ts`` defaults to now). The log is append-only: the database itself
        refuses to update or delete its rows."""

    @abc.abstractmethod
    def list_audit(self, *, since: float | None = None, actor: str | None = None, limit: int = 200) -> list[AuditEntry]:
        """The newest ``limit`` audit entries (after ``since``; whose actor starts with ``actor``), oldest first."""

    # --------------------------------------------------------------------------------- leadership
    @abc.abstractmethod
    def try_lead(self, replica_id: str) -> bool:
        """Try to become (or confirm being) the placement leader. Call it periodically.

        A :class:`StoreUnavailable` from this call means: not the leader now.
        """

    @abc.abstractmethod
    def release_lead(self, replica_id: str) -> None:
        """Give up the leadership if ``replica_id`` holds it through this store."""

    @abc.abstractmethod
    def leader(self) -> str | None:
        """The replica id of the current leader, or None."""

    # ----------------------------------------------------------------------------------- rollouts
    # A rollout is a JSON document (lepton_edge.scheduler.rollouts.Rollout); the store keeps its state
    # apart for queries and a revision for compare-and-set.
    @abc.abstractmethod
    def add_rollout(self, rollout_id: str, state: str, document: dict[str, Any], ts: float) -> None:
        """Store a new rollout at revision 1. :class:`StoreConflict` if the id exists."""

    @abc.abstractmethod
    def get_rollout(self, rollout_id: str) -> dict[str, Any] | None:
        """The rollout's document with its ``revision``, or None."""

    @abc.abstractmethod
    def list_rollouts(self, states: Sequence[str] | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """The newest ``limit`` rollouts (in ``states`` if given), oldest first, each with its ``revision``."""

    @abc.abstractmethod
    def save_rollout(self, rollout_id: str, state: str, document: dict[str, Any], revision: int, ts: float) -> bool:
        """Replace the rollout if it is still at ``revision`` (its revision then goes up by one); False if
        it changed meanwhile (re-read it and decide again) or does not exist."""


# ------------------------------------------------------------------------------------------ helpers


def hottest(data: dict[str, Any]) -> float | None:
    """The highest temperature in a telemetry payload's ``temperatures_c``, or None."""
    temps = data.get("temperatures_c") or {}
    values = [float(v) for v in temps.values() if isinstance(v, int | float) and not isinstance(v, bool)]
    return max(values) if values else None


def is_throttled(data: dict[str, Any], temperature_c: float | None, limit_c: float = THROTTLE_TEMPERATURE_C) -> bool:
    """Throttled when the payload says so (``throttled: true``) or the hottest sensor reaches ``limit_c``."""
    return data.get("throttled") is True or (temperature_c is not None and temperature_c >= limit_c)


def learn_capacity(previous: dict[str, float], data: dict[str, Any]) -> dict[str, float]:
    """Update the per-model throughput estimate of a device from one telemetry payload.

    When the payload has ``models`` (a device that batches several streams per model), the capacity of
    model ``m`` is ``fps / busy``: the frames per second its inference worker gives at the batch sizes it
    actually runs, had it been busy the whole interval; a model busy less than :data:`MIN_BUSY` of the
    interval teaches nothing and is skipped. Otherwise (older devices, one model): the pipeline's stages run
    concurrently, so the device can sustain ``1000 / p50`` of its slowest stage (preprocess, infer,
    postprocess) in frames per second; it demonstrably sustains at least the ``fps`` it reports. Estimates
    are smoothed (:data:`CAPACITY_SMOOTHING`) so one noisy window does not move workloads around.
    """
    models = data.get("models")
    if isinstance(models, dict) and models:
        learned = dict(previous)
        for model, figures in models.items():
            fps = figures.get("fps") if isinstance(figures, dict) else None
            busy = figures.get("busy") if isinstance(figures, dict) else None
            if _number(fps) and _number(busy) and busy >= MIN_BUSY and fps > 0:
                learned = _smoothed(learned, model, float(fps) / float(busy))
        return learned
    model = data.get("artifact_id")
    if not isinstance(model, str) or not model:
        return previous
    latency = data.get("latency_ms") or {}
    p50s = [
        float(latency[s]["p50"])
        for s in _PIPELINE_STAGES
        if isinstance(latency.get(s), dict) and isinstance(latency[s].get("p50"), int | float)
    ]
    slowest = max(p50s, default=0.0)
    estimate = 1000.0 / slowest if slowest > 0 else 0.0
    fps = data.get("fps")
    if _number(fps):
        estimate = max(estimate, float(fps))
    if estimate <= 0:
        return previous
    return _smoothed(previous, model, estimate)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _smoothed(previous: dict[str, float], model: str, estimate: float) -> dict[str, float]:
    old = previous.get(model)
    new = estimate if not old else old + CAPACITY_SMOOTHING * (estimate - old)
    return {**previous, model: round(new, 3)}


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
    except ValueError:
        return "<unparsable URL>"


def sqlite_path(url: str) -> str:
    """The file path (or ``:memory:``) named by a ``sqlite://`` URL (SQLAlchemy's convention)."""
    rest = url[len("sqlite://") :]
    if rest in ("", ":memory:", "/:memory:"):
        return ":memory:"
    if not rest.startswith("/"):
        raise StoreError(
            f"store URL {url!r}: write sqlite:///relative/path.db, sqlite:////absolute/path.db or sqlite://:memory:"
        )
    return rest[1:]




def describe_path(path: str) -> str:
    """How a SQLite path reads in messages: as given, and absolute when it was relative."""
    if path == ":memory:" or Path(path).is_absolute():
        return path
    return f"{path} (= {Path(path).resolve()})"
