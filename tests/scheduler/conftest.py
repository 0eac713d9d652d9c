"""Fixtures for the scheduler tests: a throwaway PostgreSQL (tests/support/postgres.py)."""

from tests.support.postgres import postgres_schema_url, postgres_server, postgres_url  # noqa: F401
