"""Opens the store a URL names: SQLite (embedded) or PostgreSQL (several replicas)."""

from __future__ import annotations

from typing import Any

from lepton_edge.scheduler.store import Store, StoreError, redact_url, sqlite_path
from lepton_edge.scheduler.store_postgres import PostgresStore
from lepton_edge.scheduler.store_sqlite import SqliteStore


def open_store(url: str, *, migrate: bool = True, **options: Any) -> Store:
    """Open the store named by ``url`` (see the module docstring) and, by default, migrate its schema.

    ``options`` go to the backend: ``history_limit``, ``event_limit``, ``throttle_temperature_c``, and
    for PostgreSQL ``max_connections`` and ``connect_timeout``.
    """
    if not isinstance(url, str) or "://" not in url:
        raise StoreError(
            f"store URL {url!r} has no scheme: use sqlite:///path.db, sqlite://:memory: or postgresql://host/db"
        )
    scheme = url.split("://", 1)[0].lower()
    store: Store
    if scheme == "sqlite":
        store = SqliteStore(sqlite_path(url), **options)
    elif scheme in ("postgresql", "postgres"):
        store = PostgresStore(url, **options)
    else:
        raise StoreError(f"store URL {redact_url(url)!r}: unknown scheme {scheme!r}; use sqlite:// or postgresql://")
    if migrate:
        try:
            store.migrate()
        except BaseException:
            store.close()
            raise
    return store
