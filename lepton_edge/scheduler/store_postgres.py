"""The shared fleet store on PostgreSQL, for several scheduler replicas (needs ``psycopg`` v3).

- Connections come from a small pool (at most ``max_connections`` at a time). A call that finds the
  server gone raises :class:`StoreUnavailable`; the pool is dropped, and the next call connects afresh,
  so the store works again as soon as the server is back. A call that failed on a pooled connection
  before committing anything is retried once on a new connection, so a restart of the server costs
  at most one failed call per outage.
- Leadership: ``pg_try_advisory_lock`` on a dedicated connection that stays open. The lock belongs to
  that connection, so when a leader dies (or its connection does) PostgreSQL frees the lock and a standby
  takes over on its next :meth:`PostgresStore.try_lead`. A ``leader`` row names the holder for display;
  :meth:`PostgresStore.leader` reports it only while that row's backend still holds the lock.
- Migrations run under a transaction-scoped advisory lock, so replicas starting together apply each
  migration once.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from lepton_edge.scheduler.migrations.postgres import MIGRATIONS
from lepton_edge.scheduler.store import EncodedJson, StoreError, StoreUnavailable, redact_url
from lepton_edge.scheduler.store_sql import Cursor, SqlStore

T = TypeVar("T")

LEADER_LOCK_KEY = 0x4C455054
"""Advisory lock id of the placement leader ("LEPT"); below 2**31, so pg_locks shows it as objid."""
MIGRATION_LOCK_KEY = 0x4C45504D
"""Advisory lock id taken while migrating ("LEPM")."""


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise StoreError(
            "a postgresql:// fleet store needs psycopg 3: pip install 'lepton-edge[postgres]' "
            "(or pip install 'psycopg[binary]')"
        ) from None
    return psycopg


def _text_of(value: EncodedJson) -> str:
    return value.text


class _Cursor:
    """A psycopg cursor that takes the ``?`` placeholders of the shared SQL."""

    _translated: dict[str, str] = {}

    def __init__(self, cur: Any) -> None:
        self._cur = cur

    @classmethod
    def _sql(cls, sql: str) -> str:
        translated = cls._translated.get(sql)
        if translated is None:
            translated = cls._translated[sql] = sql.replace("%", "%%").replace("?", "%s")
        return translated

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        self._cur.execute(self._sql(sql), params)
        return self

    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> _Cursor:
        self._cur.executemany(self._sql(sql), params)
        return self

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall()


class PostgresStore(SqlStore):
    """Fleet state in PostgreSQL. See the module docstring."""

    migrations = MIGRATIONS
    greatest = "GREATEST"
    for_update = " FOR UPDATE"
    in_list = "= ANY(?)"

    def __init__(
        self, url: str, *, max_connections: int = 8, connect_timeout: float = 5.0, **options: Any
    ) -> None:
        super().__init__(**options)
        self._psycopg = _import_psycopg()
        from psycopg.rows import dict_row
        from psycopg.types.json import Jsonb

        self._dict_row = dict_row
        self._jsonb = Jsonb
        self.url = url
        self.where = redact_url(url)
        self.connect_timeout = max(1, round(connect_timeout))
        self._slots = threading.BoundedSemaphore(max_connections)
        self._pool_lock = threading.Lock()
        self._idle: list[Any] = []
        self._closed = False
        self._lead_lock = threading.Lock()
        self._lead_conn: Any = None
        self._leading_as: str | None = None
        conn, _ = self._checkout()  # fail now, with a clear message, if the server cannot be reached
        self._checkin(conn)

    # ---------------------------------------------------------------------------- connections
    def _connect(self, *, autocommit: bool = False) -> Any:
        try:
            return self._psycopg.connect(
                self.url,
                autocommit=autocommit,
                row_factory=self._dict_row,
                connect_timeout=self.connect_timeout,
                application_name="lepton-edge-scheduler",
            )
        except self._psycopg.OperationalError as e:
            raise StoreUnavailable(
                f"cannot connect to the fleet store {self.where}: {str(e).strip()}; check that the PostgreSQL "
                "server is running and the URL's host, port, user, password and database are right"
            ) from e

    def _checkout(self) -> tuple[Any, bool]:
        """A connection and whether it was reused from the pool."""
        if not self._slots.acquire(timeout=30):
            raise StoreUnavailable(f"fleet store {self.where}: all connections stayed busy for 30 s")
        with self._pool_lock:
            if self._closed:
                self._slots.release()
                raise StoreError(f"the fleet store {self.where} is closed")
            if self._idle:
                return self._idle.pop(), True
        try:
            return self._connect(), False
        except BaseException:
            self._slots.release()
            raise

    def _checkin(self, conn: Any) -> None:
        with self._pool_lock:
            if self._closed or conn.closed:
                conn.close()
            else:
                self._idle.append(conn)
        self._slots.release()

    def _discard(self, conn: Any) -> None:
        """Drop a broken connection and every idle one (the server that broke it has broken them too)."""
        with self._pool_lock:
            idle, self._idle = self._idle, []
        for c in [conn, *idle]:
            with contextlib.suppress(Exception):  # closing an already broken connection
                c.close()
        self._slots.release()

    def _run(self, fn: Callable[[Cursor], T], *, write: bool = True) -> T:
        psycopg = self._psycopg
        for attempt in (1, 2):
            conn, reused = self._checkout()
            committing = False
            try:
                with conn.cursor() as raw:
                    result = fn(_Cursor(raw))
                committing = True
                conn.commit()
            except psycopg.Error as e:
                if conn.closed or conn.broken:
                    self._discard(conn)
                    if reused and not committing and attempt == 1:
                        continue  # a pooled connection from before an outage: nothing was written, retry
                    raise StoreUnavailable(
                        f"lost the connection to the fleet store {self.where}: {str(e).strip() or type(e).__name__}"
                        + ("; the last change may or may not have been saved" if committing else "")
                        + "; the call works again once the server is back"
                    ) from e
                conn.rollback()
                self._checkin(conn)
                raise StoreError(f"fleet store {self.where}: {str(e).strip()}") from e
            except BaseException:
                if not (conn.closed or conn.broken):
                    conn.rollback()
                self._checkin(conn)
                raise
            self._checkin(conn)
            return result
        raise AssertionError("unreachable")

    def _json(self, value: Any) -> Any:
        if isinstance(value, EncodedJson):
            return self._jsonb(value, dumps=_text_of)
        return self._jsonb(value)

    def _list(self, values: list[str]) -> Any:
        return list(values)  # a PostgreSQL array

    def _lock_for_migration(self, cur: Cursor) -> None:
        cur.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")

    def _has_schema_table(self, cur: Cursor) -> bool:
        cur.execute("SELECT to_regclass('schema_version') IS NOT NULL AS present")
        return bool(cur.fetchone()["present"])

    def close(self) -> None:
        with self._lead_lock:
            if self._leading_as is not None:
                self._unlock()
            self._close_lead_conn()
            self._leading_as = None
        with self._pool_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # ------------------------------------------------------------------------------ leadership
    def _unlock(self) -> None:
        """Free the lock now: a closed connection frees it too, but only once its backend has exited."""
        with contextlib.suppress(self._psycopg.Error):
            self._lead_conn.execute(f"SELECT pg_advisory_unlock({LEADER_LOCK_KEY})")

    def _close_lead_conn(self) -> None:
        if self._lead_conn is not None:
            try:
                self._lead_conn.close()  # ends the session, which frees its advisory lock
            finally:
                self._lead_conn = None

    def _holds_lock(self, conn: Any) -> bool:
        row = conn.execute(
            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND classid = 0 "
            f"AND objid = {LEADER_LOCK_KEY} AND objsubid = 1 AND granted"
        ).fetchone()
        return row is not None

    def try_lead(self, replica_id: str) -> bool:
        psycopg = self._psycopg
        with self._lead_lock:
            if self._closed:
                raise StoreError(f"the fleet store {self.where} is closed")
            try:
                if self._lead_conn is None:
                    self._lead_conn = self._connect(autocommit=True)
                conn = self._lead_conn
                if self._leading_as is not None and self._holds_lock(conn):
                    if self._leading_as != replica_id:
                        self._write_leader_row(conn, replica_id)
                        self._leading_as = replica_id
                    return True
                self._leading_as = None
                if not conn.execute(f"SELECT pg_try_advisory_lock({LEADER_LOCK_KEY}) AS got").fetchone()["got"]:
                    return False
                self._write_leader_row(conn, replica_id)
                self._leading_as = replica_id
                return True
            except psycopg.Error as e:
                self._leading_as = None
                self._close_lead_conn()
                raise StoreUnavailable(
                    f"fleet store {self.where}: cannot hold the leader lock ({str(e).strip()}); not leading"
                ) from e

    def _write_leader_row(self, conn: Any, replica_id: str) -> None:
        conn.execute(
            "INSERT INTO leader (singleton, replica_id, since, pid) VALUES (1, %s, %s, pg_backend_pid()) "
            "ON CONFLICT (singleton) DO UPDATE SET replica_id = excluded.replica_id, since = excluded.since, "
            "pid = excluded.pid",
            (replica_id, time.time()),
        )

    def release_lead(self, replica_id: str) -> None:
        with self._lead_lock:
            if self._leading_as != replica_id or self._lead_conn is None:
                return
            try:
                with contextlib.suppress(self._psycopg.Error):  # closing the connection frees the lock anyway
                    self._lead_conn.execute(
                        "DELETE FROM leader WHERE replica_id = %s AND pid = pg_backend_pid()", (replica_id,)
                    )
                self._unlock()
            finally:
                self._leading_as = None
                self._close_lead_conn()

    def leader(self) -> str | None:
        def run(cur: Cursor) -> str | None:
            cur.execute(
                "SELECT l.replica_id FROM leader l JOIN pg_locks k ON k.pid = l.pid AND k.locktype = 'advisory' "
                f"AND k.classid = 0 AND k.objid = {LEADER_LOCK_KEY} AND k.objsubid = 1 AND k.granted "
                "AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            row = cur.fetchone()
            return None if row is None else row["replica_id"]

        return self._run(run, write=False)
