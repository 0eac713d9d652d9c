"""Numbered schema migrations of the fleet store, one list per backend.

Each migration runs once, in one transaction, and is recorded in ``schema_version``. Never edit a
released migration: append a new one with the next number.
"""

from __future__ import annotations

from typing import NamedTuple


class Migration(NamedTuple):
    version: int
    name: str
    statements: tuple[str, ...]


SCHEMA_VERSION_TABLE = "schema_version"
