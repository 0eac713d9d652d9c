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
from lepton_edge.scheduler.store import StoreError, StoreUnavailable, describe_path
from lepton_edge.scheduler.store_sql import Cursor, SqlStore

T = TypeVar("T")


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
        return json.dumps(value, separators=(",", ":"), allow_nan=False)

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
