"""The SQL both store backends share. A backend supplies connections, transactions and leadership.

Queries use ``?`` placeholders; the PostgreSQL backend translates them. Each public method runs in one
transaction through :meth:`SqlStore._run`, which the backends implement.
"""

from __future__ import annotations

import abc
import itertools
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from lepton_edge.fleet.protocol import MAX_CONFIG_VERSION
from lepton_edge.scheduler.auth import ROLES, ApiToken, AuditEntry
from lepton_edge.scheduler.migrations import Migration
from lepton_edge.scheduler.models import ASSIGNMENT_STATUSES, SEVERITIES, Assignment, Device, Event, Workload
from lepton_edge.scheduler.store import (
    DEFAULT_EVENT_LIMIT,
    DEFAULT_HISTORY_LIMIT,
    THROTTLE_TEMPERATURE_C,
    EventFilter,
    Store,
    StoreConflict,
    StoreError,
    StoreNotFound,
    TelemetryItem,
    hottest,
    is_throttled,
    learn_capacity,
)

T = TypeVar("T")

HISTORY_TRIM_EVERY = 16
"""A device's telemetry history is trimmed to ``history_limit`` rows once every this many messages."""

HistoryRow = tuple[str, int, float, int, int, Any]
"""A telemetry history row: device id, n, ts, session id, seq, data (as a JSON parameter)."""
DeviceUpdate = tuple[str, Any, int, int, float, float | None, bool, Any, int]
"""A device's telemetry columns: device id, telemetry, session, seq, last_seen, temperature_c, throttled,
fps_capacity, history_n."""

_DEVICE_COLUMNS = (
    "device_id, online, birth_session, death_session, last_seen, status_since, offline_reason, capabilities, "
    "operator_group, desired_version, reported_version, last_outcome, last_errors, telemetry, throttled, "
    "temperature_c, fps_capacity"
)
_WORKLOAD_COLUMNS = (
    "workload_id, source_uri, model, artifact, required_fps, pinned_device, group_name, accelerator, runtime, "
    "config, created_at"
)
_EVENT_COLUMNS = "id, time, kind, device_id, workload_id, severity, message, details"
_TOKEN_COLUMNS = "token_id, name, role, secret_hash, created_at, created_by, revoked_at"
_AUDIT_COLUMNS = "id, ts, actor, role, action, target, status, remote, detail"


class Cursor(Protocol):
    rowcount: int

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...
    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise StoreError(f"{name} must be a whole number >= 1, got {value!r}")
    return value


def _event_conditions(f: EventFilter) -> tuple[str, tuple[Any, ...]]:
    """The SQL condition (SQLite and PostgreSQL alike) and parameters of an event filter."""
    conditions, params = ["TRUE"], []
    for sql, value in (
        ("device_id = ?", f.device_id),
        ("substr(kind, 1, ?) = ?", None if f.kind_prefix is None else (len(f.kind_prefix), f.kind_prefix)),
        ("details -> 'analytics' ->> 'stream' = ?", f.stream),
        ("time >= ?", f.since_ts),
        ("time < ?", f.until_ts),
    ):
        if value is not None:
            conditions.append(sql)
            params += list(value) if isinstance(value, tuple) else [value]
    return " AND ".join(conditions), tuple(params)


class SqlStore(Store):
    """Everything but connections, transactions, migrations' locking and leadership."""

    migrations: list[Migration]
    greatest = "MAX"
    """SQL function returning the larger of its arguments."""
    for_update = ""
    """Suffix that locks the rows a SELECT reads until the transaction ends."""
    in_list = "IN (SELECT value FROM json_each(?))"
    """SQL that tests a column against the list given as one parameter (:meth:`_list`)."""

    def __init__(
        self,
        *,
        history_limit: int = DEFAULT_HISTORY_LIMIT,
        event_limit: int = DEFAULT_EVENT_LIMIT,
        throttle_temperature_c: float = THROTTLE_TEMPERATURE_C,
    ) -> None:
        self.history_limit = _positive("history_limit", history_limit)
        self.event_limit = _positive("event_limit", event_limit)
        self.throttle_temperature_c = float(throttle_temperature_c)

    # --------------------------------------------------------------------------- backend hooks
    @abc.abstractmethod
    def _run(self, fn: Callable[[Cursor], T], *, write: bool = True) -> T:
        """Run ``fn`` in one transaction (committed if it returns, rolled back if it raises)."""

    @abc.abstractmethod
    def _json(self, value: Any) -> Any:
        """A JSON value as a query parameter."""

    def _list(self, values: list[str]) -> Any:
        """A list of strings as the parameter of :attr:`in_list`."""
        return json.dumps(values)

    def _from_json(self, value: Any) -> Any:
        """A JSON column as a Python value (SQLite returns text; PostgreSQL has already decoded it)."""
        return json.loads(value) if isinstance(value, str) else value

    def _lock_for_migration(self, cur: Cursor) -> None:
        """Keep other processes from migrating at the same time (SQLite's write transaction already does)."""

    # ------------------------------------------------------------------------------- migrations
    def migrate(self) -> None:
        latest = self.migrations[-1].version

        def run(cur: Cursor) -> None:
            self._lock_for_migration(cur)
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_version "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
            )
            current = self._current_version(cur)
            if current > latest:
                raise StoreError(
                    f"the fleet store's schema is at version {current}, newer than this lepton-edge knows "
                    f"({latest}): upgrade lepton-edge on this scheduler to match the other replicas"
                )
            for migration in self.migrations:
                if migration.version > current:
                    for statement in migration.statements:
                        cur.execute(statement)
                    cur.execute(
                        "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                        (migration.version, migration.name, time.time()),
                    )

        self._run(run)

    def schema_version(self) -> int:
        return self._run(lambda cur: self._current_version(cur) if self._has_schema_table(cur) else 0, write=False)

    def _current_version(self, cur: Cursor) -> int:
        cur.execute("SELECT COALESCE(MAX(version), 0) AS v FROM schema_version")
        return int(cur.fetchone()["v"])

    @abc.abstractmethod
    def _has_schema_table(self, cur: Cursor) -> bool: ...

    # -------------------------------------------------------------------------------- presence
    def _ensure_device(self, cur: Cursor, device_id: str) -> Any:
        """Create the device's row if needed and return it, locked until the transaction ends."""
        select = (
            "SELECT birth_session, death_session, telemetry_session, telemetry_seq, fps_capacity, history_n "
            f"FROM devices WHERE device_id = ?{self.for_update}"
        )
        cur.execute(select, (device_id,))
        row = cur.fetchone()
        if row is None:  # rare (a device's first message), so the common case is one statement
            cur.execute("INSERT INTO devices (device_id) VALUES (?) ON CONFLICT (device_id) DO NOTHING", (device_id,))
            cur.execute(select, (device_id,))
            row = cur.fetchone()
        return row

    def device_birth(self, device_id: str, session_id: int, capabilities: dict[str, Any], ts: float) -> bool:
        def run(cur: Cursor) -> bool:
            row = self._ensure_device(cur, device_id)
            if session_id < max(row["birth_session"], row["death_session"]):
                return False
            online = session_id > row["death_session"]
            cur.execute(
                f"UPDATE devices SET birth_session = ?, online = ?, last_seen = {self.greatest}(last_seen, ?), "
                "capabilities = ?, offline_reason = CASE WHEN ? THEN NULL ELSE offline_reason END, "
                "status_since = CASE WHEN online = ? THEN status_since ELSE ? END WHERE device_id = ?",
                (session_id, online, ts, self._json(capabilities), online, online, ts, device_id),
            )
            return True

        return self._run(run)

    def device_death(self, device_id: str, session_id: int, ts: float, reason: str) -> bool:
        def run(cur: Cursor) -> bool:
            row = self._ensure_device(cur, device_id)
            if session_id < row["birth_session"]:
                return False
            cur.execute(
                f"UPDATE devices SET death_session = {self.greatest}(death_session, ?), "
                "status_since = CASE WHEN online THEN ? ELSE status_since END, online = FALSE, offline_reason = ? "
                "WHERE device_id = ?",
                (session_id, ts, reason, device_id),
            )
            return True

        return self._run(run)

    def device_seen(self, device_id: str, ts: float) -> None:
        self._run(
            lambda cur: cur.execute(
                f"UPDATE devices SET last_seen = {self.greatest}(last_seen, ?) WHERE device_id = ?", (ts, device_id)
            )
        )

    def mark_offline(
        self, device_id: str, ts: float, reason: str, *, last_seen_before: float | None = None
    ) -> bool:
        def run(cur: Cursor) -> bool:
            sql = (
                "UPDATE devices SET online = FALSE, offline_reason = ?, status_since = ? "
                "WHERE device_id = ? AND online"
            )
            params: list[Any] = [reason, ts, device_id]
            if last_seen_before is not None:
                sql += " AND last_seen < ?"
                params.append(last_seen_before)
            cur.execute(sql, params)
            return cur.rowcount == 1

        return self._run(run)

    # ------------------------------------------------------------------------------- telemetry
    def record_telemetry(self, device_id: str, session_id: int, seq: int, data: dict[str, Any], ts: float) -> bool:
        return self.record_telemetry_batch([(device_id, session_id, seq, data, ts)]) == 1

    def record_telemetry_batch(self, items: Iterable[TelemetryItem]) -> int:
        """Write the batch in one transaction, device by device (a stable sort keeps each device's order).

        Every writer locks device rows in id order, so replicas writing batches at the same time on
        PostgreSQL cannot deadlock.
        """
        ordered = sorted(items, key=lambda item: item[0])
        if not ordered:
            return 0
        return self._run(lambda cur: self._record_telemetry(cur, ordered))

    def _record_telemetry(self, cur: Cursor, items: list[TelemetryItem]) -> int:
        """Apply telemetry ``items`` (sorted by device) with the rules of :meth:`record_telemetry`.

        Statements are per batch, not per message, where the backend allows (:meth:`_write_telemetry`):
        each statement costs a round trip (PostgreSQL) or a hand-over of the GIL (SQLite), which is what
        starves the writer while the MQTT thread is busy. Each device's row is updated once per batch, and
        its history is trimmed every :data:`HISTORY_TRIM_EVERY` messages (reads never show more than
        ``history_limit`` rows).
        """
        states = self._lock_devices(cur, sorted({item[0] for item in items}))
        history: list[HistoryRow] = []
        updates: list[DeviceUpdate] = []
        trims: list[tuple[str, int]] = []
        for device_id, group in itertools.groupby(items, key=lambda item: item[0]):
            state = states[device_id]
            birth, session, last_seq, n = (
                state["birth_session"], state["telemetry_session"], state["telemetry_seq"], state["history_n"]
            )
            capacity = self._from_json(state["fps_capacity"]) or {}
            latest: tuple[dict[str, Any], Any] | None = None  # the newest stored message and its JSON
            last_seen = -math.inf
            for _, session_id, seq, data, ts in group:
                if session_id < birth or (session_id, seq) <= (session, last_seq):
                    continue  # an older session, or not newer than the latest
                session, last_seq, n = session_id, seq, n + 1
                capacity = learn_capacity(capacity, data)
                encoded = self._json(data)
                last_seen = max(last_seen, ts)
                latest = (data, encoded)
                history.append((device_id, n, ts, session_id, seq, encoded))
                if n % HISTORY_TRIM_EVERY == 0:
                    trims.append((device_id, n - self.history_limit))
            if latest is not None:
                data, encoded = latest
                temperature = hottest(data)
                throttled = is_throttled(data, temperature, self.throttle_temperature_c)
                updates.append(
                    (device_id, encoded, session, last_seq, last_seen, temperature, throttled, self._json(capacity), n)
                )
        self._write_telemetry(cur, history, updates, trims)
        return len(history)

    def _lock_devices(self, cur: Cursor, device_ids: list[str]) -> dict[str, Any]:
        """The telemetry columns of ``device_ids`` (sorted) by id, locked until the transaction ends
        (``device_id, birth_session, telemetry_session, telemetry_seq, fps_capacity, history_n``); devices
        not yet in the store are created (a device's telemetry may arrive before its birth)."""
        select = (
            "SELECT device_id, birth_session, telemetry_session, telemetry_seq, fps_capacity, history_n "
            f"FROM devices WHERE device_id {self.in_list} ORDER BY device_id{self.for_update}"
        )
        cur.execute(select, (self._list(device_ids),))
        rows = {row["device_id"]: row for row in cur.fetchall()}
        missing = [d for d in device_ids if d not in rows]
        if missing:
            cur.executemany(
                "INSERT INTO devices (device_id) VALUES (?) ON CONFLICT (device_id) DO NOTHING", [(d,) for d in missing]
            )
            cur.execute(select, (self._list(missing),))
            rows.update((row["device_id"], row) for row in cur.fetchall())
        return rows

    def _write_telemetry(
        self, cur: Cursor, history: list[HistoryRow], updates: list[DeviceUpdate], trims: list[tuple[str, int]]
    ) -> None:
        """Write what :meth:`_record_telemetry` decided: history rows, one update per device, and the trims
        (delete a device's history rows numbered at or below the given one)."""
        if history:
            cur.executemany(
                "INSERT INTO telemetry_history (device_id, n, ts, session_id, seq, data) VALUES (?, ?, ?, ?, ?, ?)",
                history,
            )
        if trims:  # the rows are numbered per device: one indexed range delete each
            cur.executemany("DELETE FROM telemetry_history WHERE device_id = ? AND n <= ?", trims)
        if updates:
            cur.executemany(
                "UPDATE devices SET telemetry = ?, telemetry_session = ?, telemetry_seq = ?, "
                f"last_seen = {self.greatest}(last_seen, ?), temperature_c = ?, throttled = ?, fps_capacity = ?, "
                "history_n = ? WHERE device_id = ?",
                [(*update[1:], update[0]) for update in updates],
            )

    def telemetry_history(self, device_id: str, since: float | None = None, limit: int = 720) -> list[dict[str, Any]]:
        _positive("limit", limit)

        def run(cur: Cursor) -> list[dict[str, Any]]:
            # rows past the bound wait for the next trim (every HISTORY_TRIM_EVERY messages): never shown
            sql = (
                "SELECT ts, session_id, seq, data FROM telemetry_history WHERE device_id = ? "
                "AND n > (SELECT history_n FROM devices WHERE device_id = ?) - ?"
            )
            params: list[Any] = [device_id, device_id, self.history_limit]
            if since is not None:
                sql += " AND ts > ?"
                params.append(since)
            cur.execute(sql + " ORDER BY n DESC LIMIT ?", [*params, limit])
            rows = cur.fetchall()
            return [
                {"ts": r["ts"], "session_id": r["session_id"], "seq": r["seq"], "data": self._from_json(r["data"])}
                for r in reversed(rows)
            ]

        return self._run(run, write=False)

    # --------------------------------------------------------------------------------- devices
    def _device(self, row: Any) -> Device:
        caps = self._from_json(row["capabilities"]) or {}
        own_group = caps.get("group") if isinstance(caps.get("group"), str) else None
        return Device(
            device_id=row["device_id"],
            online=bool(row["online"]),
            session_id=max(row["birth_session"], row["death_session"]),
            last_seen=row["last_seen"],
            capabilities=caps,
            group=row["operator_group"] or own_group,
            accelerator=str(caps.get("accelerator") or "unknown"),
            runtimes=dict(caps.get("runtimes") or {}),
            desired_version=row["desired_version"],
            reported_version=row["reported_version"],
            last_outcome=row["last_outcome"],
            telemetry=self._from_json(row["telemetry"]),
            throttled=bool(row["throttled"]),
            temperature_c=row["temperature_c"],
            fps_capacity=self._from_json(row["fps_capacity"]) or {},
            last_errors=self._from_json(row["last_errors"]) or [],
            offline_reason=row["offline_reason"],
            status_since=row["status_since"],
        )

    def get_device(self, device_id: str) -> Device | None:
        def run(cur: Cursor) -> Device | None:
            cur.execute(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE device_id = ?", (device_id,))
            row = cur.fetchone()
            return None if row is None else self._device(row)

        return self._run(run, write=False)

    def list_devices(self) -> list[Device]:
        def run(cur: Cursor) -> list[Device]:
            cur.execute(f"SELECT {_DEVICE_COLUMNS} FROM devices ORDER BY device_id")
            return [self._device(r) for r in cur.fetchall()]

        return self._run(run, write=False)

    def set_device_group(self, device_id: str, group: str | None) -> None:
        def run(cur: Cursor) -> None:
            cur.execute("UPDATE devices SET operator_group = ? WHERE device_id = ?", (group, device_id))
            if cur.rowcount == 0:
                raise StoreNotFound(f"no device {device_id!r} in the fleet store; list devices to see the known ids")

        self._run(run)

    # ------------------------------------------------------------------------------- workloads
    def _workload_params(self, w: Workload) -> tuple[Any, ...]:
        return (
            w.source_uri,
            w.model,
            None if w.artifact is None else self._json(w.artifact),
            w.required_fps,
            w.pinned_device,
            w.group,
            w.accelerator,
            w.runtime,
            self._json(w.config),
        )

    def _workload(self, row: Any) -> Workload:
        # rows were validated on the way in
        return Workload.model_construct(
            workload_id=row["workload_id"],
            source_uri=row["source_uri"],
            model=row["model"],
            artifact=self._from_json(row["artifact"]),
            required_fps=row["required_fps"],
            pinned_device=row["pinned_device"],
            group=row["group_name"],
            accelerator=row["accelerator"],
            runtime=row["runtime"],
            config=self._from_json(row["config"]) or {},
            created_at=row["created_at"],
        )

    def add_workload(self, workload: Workload) -> Workload:
        stored = workload.model_copy(update={"created_at": workload.created_at or time.time()})

        def run(cur: Cursor) -> None:
            cur.execute(
                f"INSERT INTO workloads ({_WORKLOAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (workload_id) DO NOTHING",
                (stored.workload_id, *self._workload_params(stored), stored.created_at),
            )
            if cur.rowcount == 0:
                raise StoreConflict(
                    f"workload {stored.workload_id!r} already exists; update it, or delete it first"
                )

        self._run(run)
        return stored

    def update_workload(self, workload: Workload) -> Workload:
        def run(cur: Cursor) -> Workload:
            cur.execute(
                "UPDATE workloads SET source_uri = ?, model = ?, artifact = ?, required_fps = ?, pinned_device = ?, "
                "group_name = ?, accelerator = ?, runtime = ?, config = ? WHERE workload_id = ? RETURNING created_at",
                (*self._workload_params(workload), workload.workload_id),
            )
            row = cur.fetchone()
            if row is None:
                raise StoreNotFound(f"no workload {workload.workload_id!r} to update; add it first")
            return workload.model_copy(update={"created_at": row["created_at"]})

        return self._run(run)

    def delete_workload(self, workload_id: str) -> bool:
        def run(cur: Cursor) -> bool:
            cur.execute("DELETE FROM assignments WHERE workload_id = ?", (workload_id,))
            cur.execute("DELETE FROM workloads WHERE workload_id = ?", (workload_id,))
            return cur.rowcount == 1

        return self._run(run)

    def get_workload(self, workload_id: str) -> Workload | None:
        def run(cur: Cursor) -> Workload | None:
            cur.execute(f"SELECT {_WORKLOAD_COLUMNS} FROM workloads WHERE workload_id = ?", (workload_id,))
            row = cur.fetchone()
            return None if row is None else self._workload(row)

        return self._run(run, write=False)

    def list_workloads(self) -> list[Workload]:
        def run(cur: Cursor) -> list[Workload]:
            cur.execute(f"SELECT {_WORKLOAD_COLUMNS} FROM workloads ORDER BY workload_id")
            return [self._workload(r) for r in cur.fetchall()]

        return self._run(run, write=False)

    # ----------------------------------------------------------------------------- assignments
    def list_assignments(self) -> list[Assignment]:
        def run(cur: Cursor) -> list[Assignment]:
            cur.execute(
                "SELECT workload_id, device_id, status, desired_version, since, reason FROM assignments "
                "ORDER BY workload_id"
            )
            return [
                Assignment(r["workload_id"], r["device_id"], r["status"], r["desired_version"], r["since"], r["reason"])
                for r in cur.fetchall()
            ]

        return self._run(run, write=False)

    def apply_plan(self, changes: list[Assignment], removed: list[str]) -> None:
        for a in changes:
            if not isinstance(a, Assignment):
                raise StoreError(f"apply_plan takes Assignment records, got {type(a).__name__}")
        rows = [
            (a.workload_id, a.device_id, a.status, a.desired_version, a.since, a.reason, a.workload_id) for a in changes
        ]

        def run(cur: Cursor) -> None:
            if rows:
                cur.executemany(
                    "INSERT INTO assignments (workload_id, device_id, status, desired_version, since, reason) "
                    "SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM workloads WHERE workload_id = ?) "
                    "ON CONFLICT (workload_id) DO UPDATE SET device_id = excluded.device_id, status = excluded.status, "
                    "desired_version = excluded.desired_version, since = excluded.since, reason = excluded.reason",
                    rows,
                )
            if removed:
                cur.executemany("DELETE FROM assignments WHERE workload_id = ?", [(w,) for w in removed])

        self._run(run)

    def set_assignment_status(
        self,
        workload_id: str,
        status: str,
        reason: str | None = None,
        *,
        desired_version: int | None = None,
    ) -> bool:
        if status not in ASSIGNMENT_STATUSES:
            raise StoreError(f"assignment status must be one of {ASSIGNMENT_STATUSES}, got {status!r}")

        def run(cur: Cursor) -> bool:
            sql = "UPDATE assignments SET status = ?, reason = ? WHERE workload_id = ?"
            params: list[Any] = [status, reason, workload_id]
            if desired_version is not None:
                sql += " AND desired_version = ?"
                params.append(desired_version)
            cur.execute(sql, params)
            return cur.rowcount == 1

        return self._run(run)

    # -------------------------------------------------------------------------- desired config
    def next_desired_version(self, device_id: str) -> int:
        def run(cur: Cursor) -> int:
            cur.execute(
                # Only the store moves this counter (never a device's report), so it stays far below the bound.
                "INSERT INTO devices (device_id, desired_version) VALUES (?, 1) ON CONFLICT (device_id) DO UPDATE "
                "SET desired_version = devices.desired_version + 1 WHERE devices.desired_version < ? "
                "RETURNING desired_version",
                (device_id, MAX_CONFIG_VERSION),
            )
            row = cur.fetchone()
            if row is None:
                raise StoreError(f"device {device_id!r} has used every desired config version ({MAX_CONFIG_VERSION})")
            return int(row["desired_version"])

        return self._run(run)

    def record_reported(self, device_id: str, version: int, outcome: str, errors: list[str]) -> bool:
        if type(version) is not int or not 1 <= version <= MAX_CONFIG_VERSION:
            return False  # never issued: never reaches SQL (no overflow, no "bigint out of range")

        def run(cur: Cursor) -> bool:
            self._ensure_device(cur, device_id)
            cur.execute(
                "UPDATE devices SET reported_version = ?, last_outcome = ?, last_errors = ? "
                # a reported_version above desired_version predates service-owned versions: it is overwritten
                "WHERE device_id = ? AND (reported_version <= ? OR reported_version > desired_version) "
                "AND desired_version >= ?",
                (version, outcome, self._json(list(errors)), device_id, version, version),
            )
            return cur.rowcount == 1

        return self._run(run)

    # -------------------------------------------------------------------------------- rollouts
    def add_rollout(self, rollout_id: str, state: str, document: dict[str, Any], ts: float) -> None:
        def run(cur: Cursor) -> None:
            cur.execute(
                "INSERT INTO rollouts (rollout_id, state, revision, created_at, updated_at, document) "
                "VALUES (?, ?, 1, ?, ?, ?) ON CONFLICT (rollout_id) DO NOTHING",
                (rollout_id, state, ts, ts, self._json(document)),
            )
            if cur.rowcount == 0:
                raise StoreConflict(f"rollout {rollout_id!r} already exists; pick another id")

        self._run(run)

    def _rollout(self, row: Any) -> dict[str, Any]:
        return {**self._from_json(row["document"]), "revision": int(row["revision"])}

    def get_rollout(self, rollout_id: str) -> dict[str, Any] | None:
        def run(cur: Cursor) -> dict[str, Any] | None:
            cur.execute("SELECT revision, document FROM rollouts WHERE rollout_id = ?", (rollout_id,))
            row = cur.fetchone()
            return None if row is None else self._rollout(row)

        return self._run(run, write=False)

    def list_rollouts(self, states: Sequence[str] | None = None, limit: int = 200) -> list[dict[str, Any]]:
        _positive("limit", limit)

        def run(cur: Cursor) -> list[dict[str, Any]]:
            where, params = "", []
            if states is not None:
                where, params = f"WHERE state {self.in_list} ", [self._list(list(states))]
            cur.execute(
                f"SELECT revision, document FROM rollouts {where}ORDER BY created_at DESC, rollout_id DESC LIMIT ?",
                [*params, limit],
            )
            return [self._rollout(r) for r in reversed(cur.fetchall())]

        return self._run(run, write=False)

    def save_rollout(self, rollout_id: str, state: str, document: dict[str, Any], revision: int, ts: float) -> bool:
        def run(cur: Cursor) -> bool:
            cur.execute(
                "UPDATE rollouts SET state = ?, document = ?, updated_at = ?, revision = revision + 1 "
                "WHERE rollout_id = ? AND revision = ?",
                (state, self._json(document), ts, rollout_id, revision),
            )
            return cur.rowcount == 1

        return self._run(run)

    # ---------------------------------------------------------------------------------- events
    def add_event(
        self,
        kind: str,
        message: str,
        *,
        device_id: str | None = None,
        workload_id: str | None = None,
        severity: str = "info",
        details: dict[str, Any] | None = None,
        ts: float | None = None,
    ) -> Event:
        if severity not in SEVERITIES:
            raise StoreError(f"event severity must be one of {SEVERITIES}, got {severity!r}")
        when = time.time() if ts is None else ts
        details = dict(details or {})

        def run(cur: Cursor) -> int:
            cur.execute(
                "INSERT INTO events (time, kind, device_id, workload_id, severity, message, details) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (when, kind, device_id, workload_id, severity, message, self._json(details)),
            )
            event_id = int(cur.fetchone()["id"])
            cur.execute("DELETE FROM events WHERE id <= ?", (event_id - self.event_limit,))
            return event_id

        event_id = self._run(run)
        return Event(event_id, when, kind, device_id, workload_id, severity, message, details)  # type: ignore[arg-type]

    def list_events(
        self, limit: int = 200, since_id: int | None = None, *, filters: EventFilter | None = None
    ) -> list[Event]:
        _positive("limit", limit)
        where, params = _event_conditions(filters or EventFilter())

        def run(cur: Cursor) -> list[Event]:
            if since_id is None:
                cur.execute(
                    f"SELECT {_EVENT_COLUMNS} FROM events WHERE {where} ORDER BY id DESC LIMIT ?", (*params, limit)
                )
                rows = list(reversed(cur.fetchall()))
            else:
                cur.execute(
                    f"SELECT {_EVENT_COLUMNS} FROM events WHERE id > ? AND {where} ORDER BY id LIMIT ?",
                    (since_id, *params, limit),
                )
                rows = cur.fetchall()
            return [
                Event(
                    r["id"], r["time"], r["kind"], r["device_id"], r["workload_id"], r["severity"], r["message"],
                    self._from_json(r["details"]) or {},
                )
                for r in rows
            ]

        return self._run(run, write=False)

    # ------------------------------------------------------------------------------ API tokens
    @staticmethod
    def _token(r: Any) -> ApiToken:
        return ApiToken(
            r["token_id"], r["name"], r["role"], r["secret_hash"], r["created_at"], r["created_by"], r["revoked_at"]
        )

    def add_api_token(self, token: ApiToken) -> None:
        if token.role not in ROLES:
            raise StoreError(f"API token role must be one of {ROLES}, got {token.role!r}")

        def run(cur: Cursor) -> None:
            cur.execute(
                f"INSERT INTO api_tokens ({_TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (token_id) DO NOTHING",
                (token.token_id, token.name, token.role, token.secret_hash, token.created_at, token.created_by,
                 token.revoked_at),
            )
            if cur.rowcount == 0:
                raise StoreConflict(f"API token id {token.token_id!r} exists")

        self._run(run)

    def get_api_token(self, token_id: str) -> ApiToken | None:
        def run(cur: Cursor) -> ApiToken | None:
            cur.execute(f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE token_id = ?", (token_id,))
            row = cur.fetchone()
            return None if row is None else self._token(row)

        return self._run(run, write=False)

    def list_api_tokens(self) -> list[ApiToken]:
        def run(cur: Cursor) -> list[ApiToken]:
            cur.execute(f"SELECT {_TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, token_id")
            return [self._token(r) for r in cur.fetchall()]

        return self._run(run, write=False)

    def revoke_api_token(self, token_id: str, ts: float) -> bool:
        def run(cur: Cursor) -> bool:
            cur.execute(
                "UPDATE api_tokens SET revoked_at = ? WHERE token_id = ? AND revoked_at IS NULL", (ts, token_id)
            )
            return cur.rowcount > 0

        return self._run(run)

    # ------------------------------------------------------------------------------- audit log
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
        when = time.time() if ts is None else ts
        detail = dict(detail or {})

        def run(cur: Cursor) -> int:
            cur.execute(
                "INSERT INTO audit_log (ts, actor, role, action, target, status, remote, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (when, actor, role, action, target, status, remote, self._json(detail)),
            )
            return int(cur.fetchone()["id"])

        return AuditEntry(self._run(run), when, actor, role, action, target, status, remote, detail)

    def list_audit(self, *, since: float | None = None, actor: str | None = None, limit: int = 200) -> list[AuditEntry]:
        _positive("limit", limit)
        where, params = ["ts > ?"], [-1.0 if since is None else since]
        if actor:
            where.append("substr(actor, 1, ?) = ?")
            params += [len(actor), actor]

        def run(cur: Cursor) -> list[AuditEntry]:
            cur.execute(
                f"SELECT {_AUDIT_COLUMNS} FROM audit_log WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
                (*params, limit),
            )
            return [
                AuditEntry(
                    r["id"], r["ts"], r["actor"], r["role"], r["action"], r["target"], r["status"], r["remote"],
                    self._from_json(r["detail"]) or {},
                )
                for r in reversed(cur.fetchall())
            ]

        return self._run(run, write=False)
