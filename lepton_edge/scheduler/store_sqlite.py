"""The embedded fleet store: one SQLite file in WAL mode, for a single scheduler process.

One connection serves every thread, behind a lock (SQLite writes one transaction at a time anyway).
Write transactions start with ``BEGIN IMMEDIATE`` and the connection waits up to ``busy_timeout`` for
another process (a CLI reading the same file), so the file is never corrupted by a second writer.

Leadership: this store assumes one scheduler process, so :meth:`SqliteStore.try_lead` always succeeds;
run several replicas on PostgreSQL instead.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from lepton_edge.scheduler.migrations.sqlite import MIGRATIONS
from lepton_edge.scheduler.store import EncodedJson, StoreError, StoreUnavailable, describe_path
from lepton_edge.scheduler.store_sql import Cursor, DeviceUpdate, HistoryRow, SqlStore

T = TypeVar("T")

_SET_BASED = sqlite3.sqlite_version_info >= (3, 38, 0)
"""Whether this SQLite has the ``->>`` operator (3.38) that the set-based telemetry writes use."""


class SqliteStore(SqlStore):
    """Fleet state in a SQLite file (or ``:memory:``). See the module docstring."""

    migrations = MIGRATIONS

    def __init__(self, path: str | Path, *, busy_timeout: float = 10.0, **options: Any) -> None:
        super().__init__(**options)
        self.path = str(path)
        if self.path != ":memory:":
            parent = Path(self.path).parent
            if not parent.is_dir():
                raise StoreError(
                    f"fleet store {describe_path(self.path)}: directory {parent} does not exist; create it, or fix "
                    "the store URL (sqlite:///relative/path.db, sqlite:////absolute/path.db)"
                )
        try:
            self._conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout
            )
            self._conn.row_factory = sqlite3.Row
            if self.path != ":memory:":
                self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the fleet store {describe_path(self.path)}: {e}") from e
        self._lock = threading.RLock()
        self._closed = False
        self._leader: str | None = None

    def _json(self, value: Any) -> str:
        if isinstance(value, EncodedJson):
            return value.text
        try:
            return json.dumps(value, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as e:  # NaN, infinity, or a value JSON has no type for
            raise StoreError(f"fleet store {describe_path(self.path)}: a value is not valid JSON ({e})") from None

    # ------------------------------------------------------------------------------- telemetry
    # Python's sqlite3 releases the GIL around every step of every statement, and getting it back costs
    # a wait while the MQTT thread is busy: so a batch is read and written in a few set-based statements
    # (JSON arrays unpacked by json_each; ``->>`` returns numbers exactly, json_extract does not).

    def _lock_devices(self, cur: Cursor, device_ids: list[str]) -> dict[str, Any]:
        if not _SET_BASED:
            return super()._lock_devices(cur, device_ids)
        ids = json.dumps(device_ids)
        cur.execute(
            "INSERT INTO devices (device_id) SELECT value FROM json_each(?) WHERE TRUE ON CONFLICT DO NOTHING", (ids,)
        )
        cur.execute(
            "SELECT json_group_array(json_array(device_id, birth_session, telemetry_session, telemetry_seq, "
            "fps_capacity, history_n)) AS rows FROM devices WHERE device_id IN (SELECT value FROM json_each(?))",
            (ids,),
        )
        keys = ("device_id", "birth_session", "telemetry_session", "telemetry_seq", "fps_capacity", "history_n")
        return {row[0]: dict(zip(keys, row, strict=True)) for row in json.loads(cur.fetchone()["rows"])}

    def _write_telemetry(
        self, cur: Cursor, history: list[HistoryRow], updates: list[DeviceUpdate], trims: list[tuple[str, int]]
    ) -> None:
        if not _SET_BASED:
            super()._write_telemetry(cur, history, updates, trims)
            return
        if history:
            cur.execute(
                "INSERT INTO telemetry_history (device_id, n, ts, session_id, seq, data) SELECT value ->> 0, "
                "value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5 FROM json_each(?)",
                (json.dumps(history),),
            )
        if trims:
            cur.executemany("DELETE FROM telemetry_history WHERE device_id = ? AND n <= ?", trims)
        if updates:  # the latest telemetry is the history row just written: not sent twice
            cur.execute(
                "UPDATE devices SET telemetry = (SELECT data FROM telemetry_history h "
                "WHERE h.device_id = devices.device_id AND h.n = u.value ->> 7), telemetry_session = u.value ->> 1, "
                "telemetry_seq = u.value ->> 2, last_seen = MAX(last_seen, u.value ->> 3), "
                "temperature_c = u.value ->> 4, throttled = u.value ->> 5, fps_capacity = u.value ->> 6, "
                "history_n = u.value ->> 7 FROM json_each(?) AS u WHERE devices.device_id = u.value ->> 0",
                (json.dumps([(u[0], *u[2:]) for u in updates]),),
            )

    def _has_schema_table(self, cur: Cursor) -> bool:
        cur.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'")
        return cur.fetchone() is not None

    def _run(self, fn: Callable[[Cursor], T], *, write: bool = True) -> T:
        with self._lock:
            if self._closed:
                raise StoreError(f"the fleet store {self.path} is closed")
            cur = self._conn.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                result = fn(cur)
                cur.execute("COMMIT")
                return result
            except BaseException as e:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e)):
                    raise StoreUnavailable(
                        f"fleet store {describe_path(self.path)} is locked by another process ({e}); "
                        "only one scheduler may use a SQLite store (use PostgreSQL for replicas)"
                    ) from e
                if isinstance(e, sqlite3.Error):
                    raise StoreError(f"fleet store {describe_path(self.path)}: {e}") from e
                raise
            finally:
                cur.close()

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    # ------------------------------------------------------------------------------ leadership
    def try_lead(self, replica_id: str) -> bool:
        """Always True: a SQLite store serves one scheduler process, which leads."""

        def run(cur: Cursor) -> None:
            cur.execute(
                "INSERT INTO leader (singleton, replica_id, since) VALUES (1, ?, ?) ON CONFLICT (singleton) "
                "DO UPDATE SET replica_id = excluded.replica_id, since = excluded.since "
                "WHERE leader.replica_id <> excluded.replica_id",
                (replica_id, time.time()),
            )

        self._run(run)
        self._leader = replica_id
        return True

    def release_lead(self, replica_id: str) -> None:
        if self._leader != replica_id:
            return
        self._run(lambda cur: cur.execute("DELETE FROM leader WHERE replica_id = ?", (replica_id,)))
        self._leader = None

    def leader(self) -> str | None:
        def run(cur: Cursor) -> str | None:
            cur.execute("SELECT replica_id FROM leader")
            row = cur.fetchone()
            return None if row is None else row["replica_id"]

        return self._run(run, write=False)
