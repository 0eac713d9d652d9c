"""Authentication, roles, rate limits and the audit log of the scheduler API, over real HTTP and real stores."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from lepton_edge.scheduler.auth import (
    Authenticator,
    AuthRefused,
    RateLimiter,
    TokenManager,
    hash_secret,
    parse_token,
)
from lepton_edge.scheduler.store import Store, StoreError
from lepton_edge.scheduler.stores import open_store


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = (
        f"sqlite:///{tmp_path / 'fleet.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_schema_url")
    )
    with open_store(url) as store:
        yield store


# ------------------------------------------------------------------------------------- store level


def test_tokens_are_created_listed_and_revoked_and_audited(any_store: Store) -> None:
    tokens = TokenManager(any_store, "cli:alice")
    token, text = tokens.create("ci-deploy", "operator")
    assert parse_token(text) is not None and parse_token(text)[0] == token.token_id  # type: ignore[index]
    stored = any_store.get_api_token(token.token_id)
    assert stored is not None and stored.role == "operator" and stored.revoked_at is None
    assert stored.secret_hash == hash_secret(parse_token(text)[1])  # type: ignore[index]
    assert [t.token_id for t in tokens.list()] == [token.token_id]
    assert tokens.revoke(token.token_id) is True
    assert tokens.revoke(token.token_id) is False
    assert any_store.get_api_token(token.token_id).revoked_at is not None  # type: ignore[union-attr]
    audit = any_store.list_audit(actor="cli:alice")
    assert [(e.action, e.target, e.status) for e in audit] == [
        ("token.create", token.token_id, 201),
        ("token.revoke", token.token_id, 200),
        ("token.revoke", token.token_id, 404),
    ]
    assert audit[0].detail == {"name": "ci-deploy", "role": "operator"}


def test_bad_names_and_roles_are_refused(any_store: Store) -> None:
    with pytest.raises(ValueError, match="role 'root'"):
        TokenManager(any_store, "cli:alice").create("x", "root")
    with pytest.raises(ValueError, match="token name"):
        TokenManager(any_store, "cli:alice").create("a b", "viewer")


def test_the_audit_log_is_append_only_in_the_database(any_store: Store) -> None:
    any_store.add_audit(
        actor="cli:alice", role="admin", action="POST /api/workloads", target="w", status=201, remote="127.0.0.1"
    )
    run = any_store._run  # type: ignore[attr-defined]
    for statement in ("UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log"):
        with pytest.raises(StoreError, match="append-only"):
            run(lambda cur, sql=statement: cur.execute(sql))
    [entry] = any_store.list_audit()
    assert entry.actor == "cli:alice" and entry.status == 201


def test_the_secret_is_nowhere_in_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "fleet.db"
    with open_store(f"sqlite:///{path}") as store:
        _, text = TokenManager(store, "cli:alice").create("admin-1", "admin")
    secret = parse_token(text)[1]  # type: ignore[index]
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("fleet.db"))
    assert secret.encode() not in raw and text.encode() not in raw
    with sqlite3.connect(path) as conn:
        [(stored,)] = conn.execute("SELECT secret_hash FROM api_tokens").fetchall()
    assert stored.startswith("sha256:") and secret not in stored


# ------------------------------------------------------------------------------------ authenticator


def test_the_authenticator_refuses_with_reasons(any_store: Store) -> None:
    tokens = TokenManager(any_store, "cli:alice")
    _, viewer = tokens.create("v", "viewer")
    revoked_token, revoked = tokens.create("r", "admin")
    tokens.revoke(revoked_token.token_id)
    auth = Authenticator(any_store, RateLimiter(1000, 1000))
    principal = auth.authenticate(f"Bearer {viewer}", "", "127.0.0.1")
    assert principal.role == "viewer" and principal.actor.endswith(":v")
    id_, secret = parse_token(viewer)  # type: ignore[misc]
    cases = {
        None: "no 'Authorization",
        "Basic abc": "not 'Bearer",
        "Bearer nope": "malformed",
        f"Bearer lep_{id_}_{'x' * len(secret)}": "unknown API token or wrong secret",
        f"Bearer {revoked}": "revoked",
    }
    for header, reason in cases.items():
        with pytest.raises(AuthRefused, match=reason) as refused:
            auth.authenticate(header, "", "127.0.0.1")
        assert refused.value.status == 401
    with pytest.raises(AuthRefused, match="in the URL") as refused:
        auth.authenticate(f"Bearer {viewer}", f"token={viewer}", "127.0.0.1")
    with pytest.raises(AuthRefused, match="needs 'operator'") as refused:
        auth.authorize(principal, "operator")
    assert refused.value.status == 403


def test_the_rate_limiter_allows_the_burst_then_the_rate() -> None:
    limiter = RateLimiter(10.0, 5)
    assert [limiter.take("a", now=100.0) for _ in range(5)] == [0.0] * 5
    wait = limiter.take("a", now=100.0)
    assert wait == pytest.approx(0.1)
    assert limiter.take("b", now=100.0) == 0.0  # another key is unaffected
    assert limiter.take("a", now=100.2) == 0.0
