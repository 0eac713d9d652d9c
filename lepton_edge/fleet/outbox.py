"""The bounded on-disk store-and-forward queue (SQLite, WAL) and the :class:`Forwarder` that drains it.

Messages the device promised to deliver go into the :class:`Outbox` first and leave it only when the
broker has acknowledged them (PUBACK), so they survive broker outages and process restarts.

Durability: the database runs in WAL mode with ``synchronous=NORMAL`` by default. Every ``put`` is its
own committed transaction, and a committed WAL transaction is in the operating system's page cache when
``put`` returns, so a process crash (even SIGKILL) loses nothing. Only a power loss or kernel crash can
lose the last few commits (never corrupt the database). ``synchronous="full"`` closes that window too,
at the cost of an fsync per put.

Bounds: stored bytes (topic + payload) are capped by ``max_bytes``. When full, low-priority messages
are dropped oldest-first to make room; high-priority messages are never dropped to make room. A new
low-priority message that does not fit even after that is dropped itself. A new high-priority message
that does not fit is kept over the bound (counted as ``over_bound``) up to twice ``max_bytes``; beyond
that :class:`OutboxFull` is raised, so high-priority data is never lost silently. Messages older than
``max_age_s`` are dropped. Every drop is counted by reason in a table that survives restarts.

A full file system: SQLite needs free space even to delete rows, so the outbox keeps a preallocated
reserve file (``disk_reserve_bytes``) beside the database. When SQLite reports the disk full during a
high-priority put, the reserve is deleted, the oldest low-priority messages are dropped (counted as
``full_low_priority``), the WAL is checkpointed, and the put is retried once (an outbox that cannot open on
a full disk, its WAL and shared-memory files needing room, releases the reserve and opens); the reserve is recreated
once the file system has room for it twice over. A put that still does not fit raises
:class:`OutboxDiskFull` and is counted as ``disk_full`` (in memory until a transaction succeeds again).
Low-priority puts never use the reserve: on a full disk they are refused and counted.

Ages use the wall clock (they must survive restarts): a device without a real-time clock whose time
jumps forward at NTP sync can expire messages early; set ``max_age_s`` to None there.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import logging
import os
import secrets
import sqlite3
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from lepton_edge.config.fleet import OutboxConfig
from lepton_edge.core.errors import LeptonError

if TYPE_CHECKING:
    from lepton_edge.fleet.mqtt import MqttClient, PublishHandle

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MESSAGE_ID_PROPERTY = "lepton-msg-id"
"""MQTT v5 user property carrying a message's stable unique id; receivers drop duplicates by it."""
DROP_REASONS = ("full_low_priority", "expired", "full_high_priority", "rejected", "disk_full")
_RESERVE_RETRY_S = 1.0
_WAL_AUTOCHECKPOINT_PAGES = 1000  # SQLite's default
_WAL_AUTOCHECKPOINT_LOW_SPACE = 16
"""Without its reserve the disk is nearly full: keep the WAL small (it restarts after each checkpoint), since
it grows by a few pages per put while the database reuses the pages freed by dropped messages."""
_EVICT_MARGIN_PAGES = 16
"""On a full disk, drop this many pages' worth of low-priority messages beyond the new message's size, so
the insert finds whole free pages in the database file."""


class OutboxError(LeptonError):
    """The outbox database cannot be used (in use by another process, unreadable, or not an outbox)."""


class OutboxFull(OutboxError):
    """A high-priority message does not fit even at twice max_bytes; nothing was dropped to make room."""


class OutboxDiskFull(OutboxError):
    """The file system holding the outbox is full: the message was not stored (counted as ``disk_full``)."""


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One stored message. ``id`` increases with every put and is never reused."""

    id: int
    uid: str
    """Stable, device-unique id (``<outbox instance>-<id>``) sent as the lepton-msg-id user property."""
    topic: str
    payload: bytes
    qos: int
    retain: bool
    priority: Literal["high", "low"]
    created: float
    """Unix time of the put."""


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    bytes: int
    dropped: dict[str, int]
    """Messages dropped since the database was created, by reason (see DROP_REASONS)."""
    over_bound: int
    """High-priority messages kept although the outbox was over max_bytes."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
-- AUTOINCREMENT: ids are never reused, even after the table empties, so message uids stay unique.
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    priority INTEGER NOT NULL,  -- 0 high, 1 low
    created REAL NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_low ON messages (priority, id);
CREATE INDEX IF NOT EXISTS messages_created ON messages (created);
"""

_PRIORITY = {"high": 0, "low": 1}
_PRIORITY_NAME = {0: "high", 1: "low"}


class Outbox:
    """The on-disk queue. Thread-safe; one process at a time may open a given file."""

    def __init__(self, config: OutboxConfig) -> None:
        self.config = config
        self._lock = threading.RLock()
        self._listeners: list[Callable[[], None]] = []
        path = Path(config.path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_file = open(f"{path}.lock", "a+b")  # noqa: SIM115 (held for the outbox's lifetime)
        except OSError as e:
            raise OutboxError(f"outbox {path}: cannot create it: {e}") from None
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise OutboxError(
                f"outbox {path} is in use by another process; give each process its own outbox path"
            ) from None
        self._db: sqlite3.Connection | None = None
        self._unsaved: dict[str, int] = {}  # counters not yet in the database (the disk was full)
        self._reserve_path = Path(f"{path}.reserve")
        self._reserve_missing = False
        self._next_reserve_try = 0.0
        try:
            try:
                self._open_database(path)
            except sqlite3.OperationalError:
                # A full disk: the WAL and shared-memory files need room to open. Spend the reserve, retry.
                if not self._reserve_path.exists():
                    raise
                self._close_database()
                log.warning("outbox %s: cannot open on a full disk; releasing its disk reserve", path)
                self._reserve_path.unlink()  # recreated by _ensure_reserve below once there is room
                self._open_database(path)
        except (sqlite3.Error, OutboxError) as e:
            self._close_database()
            self._lock_file.close()
            if isinstance(e, OutboxError):
                message = f"outbox {path}: cannot initialise the database: {e.__cause__ or e}; check its free space"
            elif isinstance(e, sqlite3.OperationalError):
                message = f"outbox {path}: cannot open the database: {e}; check the folder's permissions and free space"
            else:
                message = f"outbox {path} is not a usable outbox database ({e}); move the file away to start a new one"
            raise OutboxError(message) from None
        self._recount()
        self._next_expiry = 0.0
        self._ensure_reserve()

    def _open_database(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={self.config.synchronous.upper()}")
        self._db.execute("PRAGMA journal_size_limit=4194304")
        self._db.executescript(_SCHEMA)
        self._instance = self._init_meta()
        self._page_size = self._db.execute("PRAGMA page_size").fetchone()[0]

    def _close_database(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _init_meta(self) -> str:
        rows = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if not rows:
            instance = secrets.token_hex(8)
            with self._transaction():
                self._db.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("schema", str(SCHEMA_VERSION)), ("instance", instance)],
                )
            return instance
        if rows.get("schema") != str(SCHEMA_VERSION):
            raise sqlite3.DatabaseError(f"schema version {rows.get('schema')}, expected {SCHEMA_VERSION}")
        return rows["instance"]

    def _recount(self) -> None:
        totals = {p: (0, 0) for p in (0, 1)}
        for priority, count, size in self._db.execute(
            "SELECT priority, COUNT(*), COALESCE(SUM(size), 0) FROM messages GROUP BY priority"
        ):
            totals[priority] = (count, size)
        self._depth = totals[0][0] + totals[1][0]
        self._bytes = totals[0][1] + totals[1][1]
        self._low_bytes = totals[1][1]

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction; it also saves the counters kept in memory while the disk was full."""
        unsaved = dict(self._unsaved)
        try:
            self._db.execute("BEGIN IMMEDIATE")
            yield
            for name, n in unsaved.items():
                self._count(name, n)
            self._db.execute("COMMIT")
        except BaseException as e:
            if self._db.in_transaction:  # SQLite may have rolled back already (some SQLITE_FULL cases)
                self._db.execute("ROLLBACK")
            self._recount()
            if isinstance(e, sqlite3.Error):
                raise self._error(e) from e
            raise
        for name, n in unsaved.items():
            self._unsaved[name] -= n
            if not self._unsaved[name]:
                del self._unsaved[name]

    def _error(self, e: sqlite3.Error) -> OutboxError:
        if _is_disk_full(e):
            return OutboxDiskFull(
                f"outbox {self.config.path}: {e}: the file system holding it has no space left; free some space"
            )
        return OutboxError(f"outbox {self.config.path}: {e} (is the disk full?)")

    def _count_drop(self, name: str, n: int = 1) -> None:
        """Count ``n`` drops in their own transaction, or in memory if the disk is full."""
        self._unsaved[name] = self._unsaved.get(name, 0) + n
        try:
            with self._transaction():
                pass
        except OutboxError as e:
            log.warning("outbox %s: drop counter kept in memory until the next write: %s", self.config.path, e)

    def _count(self, name: str, n: int = 1) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, n),
        )

    # -- public API ---------------------------------------------------------------------------------

    @property
    def instance(self) -> str:
        """Random id of this outbox database, the prefix of every message uid."""
        return self._instance

    def uid(self, message_id: int) -> str:
        """The stable unique id of message ``message_id``."""
        return f"{self._instance}-{message_id}"

    def add_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` after every successful put (used to wake the forwarder)."""
        self._listeners.append(fn)

    def put(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        priority: Literal["high", "low"] = "low",
        retain: bool = False,
    ) -> int | None:
        """Store a message durably; return its id, or None if it was dropped (low priority, outbox full).

        Raises :class:`OutboxFull` if a high-priority message does not fit even at twice the bound, and
        :class:`OutboxDiskFull` if the file system has no room for it (see the module's docstring).
        """
        if qos not in (1, 2):
            raise ValueError(f"outbox messages need QoS 1 or 2 to be acknowledged, got {qos}; publish QoS 0 directly")
        if priority not in _PRIORITY:
            raise ValueError(f"priority must be 'high' or 'low', got {priority!r}")
        payload = bytes(payload)
        size = len(payload) + len(topic.encode("utf-8"))
        limit = self.config.max_bytes
        with self._lock:
            self._ensure_open()
            now = time.time()
            self._expire_if_due(now)
            need = self._bytes + size - limit
            high_bytes = self._bytes - self._low_bytes
            if need > 0 and priority == "low" and self._low_bytes < need:
                self._count_drop("full_low_priority")
                log.warning(
                    "outbox %s full: dropped a new %d-byte low-priority message for %s",
                    self.config.path,
                    size,
                    topic,
                )
                return None
            if need > 0 and priority == "high" and high_bytes + size > 2 * limit:
                self._count_drop("full_high_priority")
                raise OutboxFull(
                    f"outbox {self.config.path} holds {high_bytes} bytes of high-priority messages; with "
                    f"this {size}-byte message for {topic} it would exceed twice max_bytes={limit}. "
                    "The broker has been unreachable for too long, or max_bytes is too small"
                )
            if self._reserve_missing and now >= self._next_reserve_try:
                self._ensure_reserve()
            row = (topic, payload, qos, int(retain), _PRIORITY[priority], now, size)
            try:
                message_id = self._insert(row)
            except OutboxDiskFull as e:
                if priority == "low" or not self._make_room_on_disk(size):
                    self._refuse(topic, size, priority, e)
                    raise
                try:
                    message_id = self._insert(row)
                except OutboxDiskFull as e2:
                    self._refuse(topic, size, priority, e2)
                    raise
        for fn in list(self._listeners):
            fn()
        return message_id

    def _insert(self, row: tuple) -> int:
        """Store one message (dropping low-priority ones first if over max_bytes); return its id."""
        size, priority = row[6], row[4]
        need = self._bytes + size - self.config.max_bytes
        with self._transaction():
            if need > 0:
                self._evict_low(min(need, self._low_bytes))
                if self._bytes + size > self.config.max_bytes:
                    self._count("over_bound")
            cur = self._db.execute(
                "INSERT INTO messages (topic, payload, qos, retain, priority, created, size) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                row,
            )
        message_id = cur.lastrowid
        assert message_id is not None
        self._depth += 1
        self._bytes += size
        if priority == 1:
            self._low_bytes += size
        return message_id

    def _refuse(self, topic: str, size: int, priority: str, error: OutboxDiskFull) -> None:
        self._unsaved["disk_full"] = self._unsaved.get("disk_full", 0) + 1
        log.error(
            "outbox %s: refused a %d-byte %s-priority message for %s: %s",
            self.config.path,
            size,
            priority,
            topic,
            error,
        )

    def _make_room_on_disk(self, size: int) -> bool:
        """On a full disk: spend the reserve to drop low-priority messages; True if any were dropped."""
        if not self._low_bytes:
            return False  # nothing to drop: keep the reserve for when there is
        self._delete_reserve()
        self._checkpoint()
        try:
            with self._transaction():
                dropped = self._evict_low(size + _EVICT_MARGIN_PAGES * self._page_size, "the disk is full")
        except OutboxDiskFull as e:
            log.error("outbox %s: cannot drop low-priority messages on a full disk: %s", self.config.path, e)
            return False
        self._checkpoint()
        return dropped > 0

    def _checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it, giving its space back to the file system."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as e:
            log.warning("outbox %s: WAL checkpoint failed: %s", self.config.path, e)

    def _ensure_reserve(self) -> None:
        """Create the reserve file if it is missing and the file system has room for it twice over."""
        size = self.config.disk_reserve_bytes
        self._set_reserve_missing(False)
        if size == 0:
            self._delete_reserve()
            return
        with contextlib.suppress(FileNotFoundError):
            if self._reserve_path.stat().st_size == size:
                return
        try:
            free = os.statvfs(self._reserve_path.parent)
            if free.f_bavail * free.f_frsize < 2 * size:
                raise OSError(errno.ENOSPC, "not enough free space for it yet")
            block = os.urandom(min(size, 65536))  # real data: a sparse or compressed file would reserve nothing
            with open(self._reserve_path, "wb") as f:
                for start in range(0, size, len(block)):
                    f.write(block[: size - start])
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            self._reserve_path.unlink(missing_ok=True)
            self._set_reserve_missing(True)
            self._next_reserve_try = time.time() + _RESERVE_RETRY_S
            log.warning("outbox %s: no disk reserve (%s); will retry", self._reserve_path, e.strerror or e)

    def _delete_reserve(self) -> None:
        try:
            self._reserve_path.unlink(missing_ok=True)
        except OSError as e:
            log.warning("outbox %s: cannot delete the disk reserve: %s", self._reserve_path, e)
        self._set_reserve_missing(self.config.disk_reserve_bytes > 0)
        self._next_reserve_try = time.time() + _RESERVE_RETRY_S

    def _set_reserve_missing(self, missing: bool) -> None:
        if missing != self._reserve_missing:
            pages = _WAL_AUTOCHECKPOINT_LOW_SPACE if missing else _WAL_AUTOCHECKPOINT_PAGES
            self._db.execute(f"PRAGMA wal_autocheckpoint={pages}")
        self._reserve_missing = missing

    def _evict_low(self, need: int, why: str = "max_bytes reached") -> int:
        """Delete the oldest low-priority messages until ``need`` bytes are free (inside a transaction)."""
        freed = dropped = 0
        while freed < need:
            rows = self._db.execute("SELECT id, size FROM messages WHERE priority = 1 ORDER BY id LIMIT 256").fetchall()
            if not rows:
                break
            ids = []
            for message_id, size in rows:
                if freed >= need:
                    break
                ids.append((message_id,))
                freed += size
            self._db.executemany("DELETE FROM messages WHERE id = ?", ids)
            dropped += len(ids)
        if not dropped:
            return 0
        self._count("full_low_priority", dropped)
        self._depth -= dropped
        self._bytes -= freed
        self._low_bytes -= freed
        log.warning("outbox %s (%s): dropped %d oldest low-priority message(s)", self.config.path, why, dropped)
        return dropped

    def pending(self, limit: int | None = None, after_id: int = 0) -> list[OutboxMessage]:
        """Stored messages with ``id > after_id``, oldest first (expired ones are dropped first)."""
        with self._lock:
            self._ensure_open()
            self._expire_if_due(time.time())
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain, priority, created FROM messages "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, -1 if limit is None else limit),
            ).fetchall()
        return [
            OutboxMessage(i, self.uid(i), t, bytes(p), q, bool(r), _PRIORITY_NAME[pr], c)  # type: ignore[arg-type]
            for i, t, p, q, r, pr, c in rows
        ]

    def ack(self, message_id: int) -> bool:
        """Delete a message the broker acknowledged; False if it was not (or no longer) stored."""
        return self._delete(message_id, None)

    def drop(self, message_id: int, reason: str) -> bool:
        """Delete a message that will never be delivered and count it under ``reason``."""
        return self._delete(message_id, reason)

    def _delete(self, message_id: int, reason: str | None) -> bool:
        with self._lock:
            self._ensure_open()
            with self._transaction():
                row = self._db.execute("SELECT priority, size FROM messages WHERE id = ?", (message_id,)).fetchone()
                if row is not None:
                    self._db.execute("DELETE FROM messages WHERE id = ?", (message_id,))
                    if reason is not None:
                        self._count(reason)
            if row is None:
                return False
            priority, size = row
            self._depth -= 1
            self._bytes -= size
            if priority == 1:
                self._low_bytes -= size
            return True

    def expire(self, now: float | None = None) -> int:
        """Drop messages older than max_age_s; return how many were dropped."""
        if self.config.max_age_s is None:
            return 0
        cutoff = (time.time() if now is None else now) - self.config.max_age_s
        with self._lock:
            self._ensure_open()
            with self._transaction():
                n = self._db.execute("DELETE FROM messages WHERE created < ?", (cutoff,)).rowcount
                if n:
                    self._count("expired", n)
            if n:
                self._recount()
                log.warning(
                    "outbox %s: dropped %d message(s) older than %.0f s",
                    self.config.path,
                    n,
                    self.config.max_age_s,
                )
            return n

    def _expire_if_due(self, now: float) -> None:
        # At most once a second: expiry is a DELETE over an index, cheap but not free per put.
        if self.config.max_age_s is not None and now >= self._next_expiry:
            self._next_expiry = now + 1.0
            try:
                self.expire(now)
            except OutboxError as e:  # best effort here: a full disk must not block puts and sends
                log.warning("outbox %s: expiry failed: %s", self.config.path, e)

    def depth(self) -> int:
        return self._depth

    def bytes(self) -> int:
        """Stored topic + payload bytes."""
        return self._bytes

    def stats(self) -> OutboxStats:
        with self._lock:
            self._ensure_open()
            counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
            for name, n in self._unsaved.items():
                counters[name] = counters.get(name, 0) + n
            return OutboxStats(
                depth=self._depth,
                bytes=self._bytes,
                dropped={reason: counters.get(reason, 0) for reason in DROP_REASONS},
                over_bound=counters.get("over_bound", 0),
            )

    def _ensure_open(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError(f"outbox {self.config.path} is closed")
        return self._db

    def close(self) -> None:
        """Close the database (checkpointing the WAL) and release the file lock. Idempotent."""
        with self._lock:
            if self._db is None:
                return
            if self._unsaved:
                with contextlib.suppress(OutboxError), self._transaction():
                    pass
                if self._unsaved:
                    log.error("outbox %s: drop counters %s could not be saved", self.config.path, self._unsaved)
            self._db.close()
            self._db = None
            self._lock_file.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------------- forwarder


def _is_disk_full(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF == sqlite3.SQLITE_FULL
    return "database or disk is full" in str(e)


class Forwarder:
    """Drains an :class:`Outbox` through an :class:`~lepton_edge.fleet.mqtt.MqttClient` while it is connected.

    Messages go out in id order with at most ``max_inflight`` unacknowledged; each is deleted from the
    outbox only when the broker acknowledged it. Messages in flight when the connection drops are resent
    by the client on reconnect (same packet ids) before anything newer is sent; after a client stop or a
    crash, everything still stored is sent again from the oldest. Receivers may therefore see duplicates
    and drop them by the lepton-msg-id user property.
    """

    def __init__(
        self,
        outbox: Outbox,
        client: MqttClient,
        *,
        max_inflight: int | None = None,
        safety_wake_s: float = 5.0,
    ) -> None:
        """``safety_wake_s``: the loop is woken by puts, acknowledgements and connects; this timer only
        guards against a missed wake-up."""
        self.outbox = outbox
        self.client = client
        self.max_inflight = max_inflight or outbox.config.batch_size
        self.safety_wake_s = safety_wake_s
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # outbox id -> (handle, connection number at publish time)
        self._inflight: OrderedDict[int, tuple[PublishHandle, int]] = OrderedDict()
        self._cursor = 0  # highest id handed to the client
        self._failed_from: int | None = None  # lowest id whose publish failed client-side
        self.published = 0
        self.acknowledged = 0
        self.rejected = 0
        outbox.add_listener(self._wake.set)
        client.add_on_connected(lambda _client: self._wake.set())

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("Forwarder.start() called twice")
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="lepton-outbox-forwarder", daemon=True)
        self._thread.start()

    def stop(self, drain_timeout: float = 2.0) -> None:
        """Stop sending; wait up to ``drain_timeout`` s for messages in flight to be acknowledged."""
        if self._thread is None:
            return
        self._stopping.set()
        self._wake.set()
        self._thread.join()
        self._thread = None
        deadline = time.monotonic() + drain_timeout
        for handle, _ in list(self._inflight.values()):
            handle.wait(max(0.0, deadline - time.monotonic()))
        self._settle()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until the outbox is empty and nothing is in flight; True if it happened in time."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self.outbox.depth() or self._inflight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._step()
            except Exception:
                log.exception("outbox forwarder: unexpected error; retrying in 1 s")
                self._stopping.wait(1.0)
            with self._idle:
                self._idle.notify_all()
            self._wake.wait(self.safety_wake_s)
            self._wake.clear()

    def _step(self) -> None:
        self._settle()
        if self._failed_from is not None:
            if self._inflight:
                return  # let the rest resolve first, so the resend starts in order
            self._cursor = min(self._cursor, self._failed_from - 1)
            self._failed_from = None
        if not self.client.connected:
            return
        connection = self.client.connection_count
        if any(conn != connection for _, conn in self._inflight.values()):
            return  # the client resends these first after a reconnect; newer messages wait for them
        room = self.max_inflight - len(self._inflight)
        if room <= 0:
            return
        for message in self.outbox.pending(room, after_id=self._cursor):
            handle = self.client.publish(
                message.topic,
                message.payload,
                qos=message.qos,
                retain=message.retain,
                user_properties=[(MESSAGE_ID_PROPERTY, message.uid)],
            )
            self._inflight[message.id] = (handle, connection)
            self._cursor = message.id
            self.published += 1
            handle.add_done_callback(lambda _h: self._wake.set())

    def _settle(self) -> None:
        """Act on the handles that completed: delete acknowledged messages, note failures."""
        for message_id, (handle, _) in list(self._inflight.items()):
            if not handle.done():
                continue
            del self._inflight[message_id]
            if handle.ok:
                self.outbox.ack(message_id)
                self.acknowledged += 1
            elif handle.rejected_by_broker:
                # Resending the same message would be refused again and block the queue forever.
                log.error(
                    "outbox: broker refused message %d on %s (%s); dropped",
                    message_id,
                    handle.topic,
                    handle.error,
                )
                self.outbox.drop(message_id, "rejected")
                self.rejected += 1
            else:
                log.info("outbox: message %d not delivered (%s); will resend", message_id, handle.error)
                if self._failed_from is None or message_id < self._failed_from:
                    self._failed_from = message_id


# ------------------------------------------------------------------------------------------- benchmark


def bench(count: int = 20000, payload_size: int = 256, synchronous: Literal["normal", "full"] = "normal") -> float:
    """Sustained put rate (messages/s) into a fresh outbox in a temporary folder."""
    payload = os.urandom(payload_size)
    with tempfile.TemporaryDirectory() as tmp:
        config = OutboxConfig(path=Path(tmp) / "outbox.db", max_bytes=1 << 30, synchronous=synchronous)
        with Outbox(config) as outbox:
            start = time.perf_counter()
            for i in range(count):
                outbox.put(f"lepton/v1/devices/bench/results/{i % 8}", payload, priority="high")
            elapsed = time.perf_counter() - start
    return count / elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lepton_edge.fleet.outbox", description=__doc__.splitlines()[0])
    parser.add_argument("--bench", action="store_true", help="measure the sustained put rate")
    parser.add_argument("--count", type=int, default=20000, help="messages to put")
    parser.add_argument("--size", type=int, default=256, help="payload bytes per message")
    parser.add_argument("--synchronous", choices=["normal", "full"], default="normal")
    args = parser.parse_args(argv)
    if not args.bench:
        parser.print_help()
        return
    rate = bench(args.count, args.size, args.synchronous)
    print(f"outbox put: {rate:,.0f} messages/s ({args.count} x {args.size} B, WAL, synchronous={args.synchronous})")


if __name__ == "__main__":
    main()
