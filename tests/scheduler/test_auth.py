"""Authentication, roles, rate limits and the audit log of the scheduler API, over real HTTP and real stores."""

from __future__ import annotations

import http.client
import json
import re
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lepton_edge.config.scheduler import parse_scheduler_config
from lepton_edge.core.errors import ConfigError
from lepton_edge.scheduler.api import STATIC_DIR, ApiServer, TlsFiles, serve
from lepton_edge.scheduler.auth import (
    FAILED_ATTEMPTS,
    ROLES,
    Authenticator,
    AuthRefused,
    RateLimiter,
    TokenManager,
    hash_secret,
    parse_token,
)
from lepton_edge.scheduler.store import Store, StoreError
from lepton_edge.scheduler.stores import open_store
from tests.scheduler.test_api import StoreService
from tests.support.api_client import ApiClient, make_token


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
    statements = ["UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log"]
    if "Postgres" in type(any_store).__name__:
        statements.append("TRUNCATE audit_log")
    for statement in statements:
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


def test_refused_attempts_are_throttled_per_address(any_store: Store) -> None:
    auth = Authenticator(any_store, RateLimiter(1000, 1000))
    statuses = []
    for _ in range(FAILED_ATTEMPTS[1] + 3):
        with pytest.raises(AuthRefused) as refused:
            auth.authenticate("Bearer lep_0123456789ab_" + "x" * 43, "", "10.9.9.9")
        statuses.append(refused.value.status)
    assert statuses == [401] * FAILED_ATTEMPTS[1] + [429] * 3
    assert "1 refused attempts/s from this address (burst 20)" in refused.value.reason
    with pytest.raises(AuthRefused) as refused:  # another address is not affected
        auth.authenticate(None, "", "10.9.9.8")
    assert refused.value.status == 401


def test_the_rate_limiter_allows_the_burst_then_the_rate() -> None:
    limiter = RateLimiter(10.0, 5)
    assert [limiter.take("a", now=100.0) for _ in range(5)] == [0.0] * 5
    wait = limiter.take("a", now=100.0)
    assert wait == pytest.approx(0.1)
    assert limiter.take("b", now=100.0) == 0.0  # another key is unaffected
    assert limiter.take("a", now=100.2) == 0.0


# ------------------------------------------------------------------------------------------- the API

WORKLOAD = {"workload_id": "gate-3", "source_uri": "rtsp://10.1.2.3/main", "model": "det.onnx", "required_fps": 5}
ROLE_RANK = {None: -1, "viewer": 0, "operator": 1, "admin": 2}
# (method, path, body, the least role that may do it); the routes of every router
ROUTES = [
    ("GET", "/api/devices", None, "viewer"),
    ("GET", "/api/devices/cam-1", None, "viewer"),
    ("GET", "/api/devices/cam-1/telemetry", None, "viewer"),
    ("GET", "/api/devices/cam-1/streams", None, "viewer"),
    ("PUT", "/api/devices/cam-1/group", {"group": "gate"}, "operator"),
    ("GET", "/api/workloads", None, "viewer"),
    ("POST", "/api/workloads", WORKLOAD, "operator"),
    ("GET", "/api/workloads/gate-3", None, "viewer"),
    ("PUT", "/api/workloads/gate-3", {k: v for k, v in WORKLOAD.items() if k != "workload_id"}, "operator"),
    ("DELETE", "/api/workloads/gate-3", None, "operator"),
    ("GET", "/api/assignments", None, "viewer"),
    ("GET", "/api/events", None, "viewer"),
    ("GET", "/api/stats", None, "viewer"),
    ("GET", "/api/whoami", None, "viewer"),
    ("GET", "/api/tokens", None, "admin"),
    ("POST", "/api/tokens", {"name": "new", "role": "viewer"}, "admin"),
    ("DELETE", "/api/tokens/0123456789ab", None, "admin"),
    ("GET", "/api/audit", None, "admin"),
]


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"sqlite:///{tmp_path / 'fleet.db'}") as store:
        yield store


@pytest.fixture
def api(sqlite_store: Store) -> Iterator[tuple[ApiServer, Store]]:
    with serve(StoreService(sqlite_store), "127.0.0.1", 0) as server:
        yield server, sqlite_store


def clients(server: ApiServer, store: Store) -> dict[str | None, ApiClient]:
    return {None: ApiClient(server.url)} | {r: ApiClient(server.url, make_token(store, r)) for r in ROLES}


@pytest.mark.integration
def test_each_role_may_do_what_its_rank_allows_on_every_router(api: tuple[ApiServer, Store]) -> None:
    server, store = api
    store.device_birth("cam-1", 1, {"accelerator": "cpu"}, time.time())
    by_role = clients(server, store)
    for method, path, body, needed in ROUTES:
        for role, client in by_role.items():
            if method in ("PUT", "DELETE") and "workloads" in path:
                by_role["admin"].call("POST", "/api/workloads", WORKLOAD)  # something to change or delete
            status, answer = client.call(method, path, body)
            if role is None:
                assert status == 401, (method, path, answer)
                assert client.last_headers["www-authenticate"].startswith("Bearer")
                assert "no 'Authorization: Bearer <token>' header" in answer["detail"]
            elif ROLE_RANK[role] < ROLE_RANK[needed]:
                assert status == 403, (role, method, path, answer)
                assert f"role {role!r} may not do this; it needs {needed!r}" in answer["detail"]
            else:
                assert status in (200, 201, 204, 404, 409), (role, method, path, answer)
    assert ApiClient(server.url).get("/healthz")[0] == 200  # the probe needs no token


@pytest.mark.integration
def test_every_api_route_needs_a_role(api: tuple[ApiServer, Store]) -> None:
    """A router added later without a role dependency fails here (rollouts included)."""
    from fastapi.routing import APIRoute

    from lepton_edge.scheduler.api import create_app

    def calls(dependant: Any) -> set[str]:
        return {d.call.__name__ for d in dependant.dependencies} | {
            name for d in dependant.dependencies for name in calls(d)
        }

    app = create_app(StoreService(api[1]))
    unguarded = [
        f"{sorted(r.methods)} {r.path}"
        for r in app.routes
        if isinstance(r, APIRoute)
        and r.path.startswith("/api")
        and not calls(r.dependant) & {"require_viewer", "require_operator", "require_admin"}
    ]
    assert unguarded == []


@pytest.mark.integration
def test_tokens_over_the_api_and_a_revoked_token(api: tuple[ApiServer, Store]) -> None:
    server, store = api
    admin = ApiClient(server.url, make_token(store, "admin"))
    status, created = admin.call("POST", "/api/tokens", {"name": "ci-deploy", "role": "operator"})
    assert status == 201 and created["token"]["role"] == "operator" and "secret_hash" not in created["token"]
    ci = ApiClient(server.url, created["secret"])
    assert ci.call("POST", "/api/workloads", WORKLOAD)[0] == 201
    listed = admin.get("/api/tokens")[1]
    assert {t["name"] for t in listed} == {"test-admin", "ci-deploy"}
    assert not any(created["secret"] in json.dumps(t) for t in listed)
    assert admin.call("POST", "/api/tokens", {"name": "x", "role": "root"})[0] == 422
    token_id = created["token"]["token_id"]
    assert admin.call("DELETE", f"/api/tokens/{token_id}")[0] == 204
    assert admin.call("DELETE", f"/api/tokens/{token_id}")[0] == 404
    status, answer = ci.get("/api/workloads")
    assert status == 401 and f"API token {token_id} was revoked" in answer["detail"]


@pytest.mark.integration
def test_callers_are_refused_before_the_body_is_read(api: tuple[ApiServer, Store]) -> None:
    server, store = api
    status, answer = ApiClient(server.url).call("POST", "/api/workloads", raw=b"{not json")
    assert status == 401, answer  # not 422: nothing of the body was parsed for an anonymous caller
    status, answer = ApiClient(server.url, make_token(store, "operator")).call("POST", "/api/workloads", raw=b"{x")
    assert status == 422


@pytest.mark.integration
def test_tokens_in_the_url_are_refused(api: tuple[ApiServer, Store]) -> None:
    server, store = api
    token = make_token(store, "admin")
    for query in (f"?token={token}", f"?access_token={token}", f"?limit=5&x={token}"):
        status, answer = ApiClient(server.url, token).get(f"/api/events{query}")
        assert status == 401 and "tokens in the URL are refused" in answer["detail"], query


@pytest.mark.integration
def test_the_rate_limit_is_per_token(sqlite_store: Store) -> None:
    with serve(StoreService(sqlite_store), "127.0.0.1", 0, rate_limit=(2.0, 5)) as server:
        busy, other = (ApiClient(server.url, make_token(sqlite_store, "viewer", n)) for n in ("busy", "other"))
        statuses = [busy.get("/api/workloads")[0] for _ in range(8)]
        assert statuses[:5] == [200] * 5 and 429 in statuses[5:]
        status, answer = busy.get("/api/workloads")
        assert status == 429 and "rate limit of 2 requests/s (burst 5) exceeded" in answer["detail"]
        assert int(busy.last_headers["retry-after"]) >= 1
        assert other.get("/api/workloads")[0] == 200
        time.sleep(0.6)
        assert busy.get("/api/workloads")[0] == 200  # refilled


@pytest.mark.integration
def test_changes_and_refused_attempts_are_audited(api: tuple[ApiServer, Store]) -> None:
    server, store = api
    by_role = clients(server, store)
    before = time.time()
    assert by_role["operator"].call("POST", "/api/workloads", WORKLOAD)[0] == 201
    assert by_role[None].call("POST", "/api/workloads", WORKLOAD)[0] == 401
    assert by_role["viewer"].call("DELETE", "/api/workloads/gate-3")[0] == 403
    assert by_role["operator"].call("DELETE", "/api/workloads/gate-3")[0] == 204
    by_role["viewer"].get("/api/workloads")  # reads are not audited
    status, audit = by_role["admin"].get(f"/api/audit?since={before - 1}")
    assert status == 200
    audit = [e for e in audit if e["action"] != "token.create"]  # the tokens of this test, by the CLI's path
    rows = [
        (
            e["actor"].split(":")[-1] if e["actor"].startswith("token:") else e["actor"],
            e["role"],
            e["action"],
            e["target"],
            e["status"],
        )
        for e in audit
    ]
    assert rows == [
        ("test-operator", "operator", "POST /api/workloads", "gate-3", 201),
        ("anonymous", None, "POST /api/workloads", None, 401),
        ("test-viewer", "viewer", "DELETE /api/workloads/gate-3", "gate-3", 403),
        ("test-operator", "operator", "DELETE /api/workloads/gate-3", "gate-3", 204),
    ]
    assert all(e["remote"] == "127.0.0.1" and before - 1 <= e["ts"] <= time.time() for e in audit)
    assert "no 'Authorization: Bearer <token>' header" in audit[1]["detail"]["reason"]
    assert "needs 'operator'" in audit[2]["detail"]["reason"]
    operator_id = audit[0]["actor"].rsplit(":", 1)[0]
    assert [e["status"] for e in by_role["admin"].get(f"/api/audit?actor={operator_id}")[1]] == [201, 204]
    assert len(by_role["admin"].get("/api/audit?limit=1")[1]) == 1
    assert by_role["operator"].get("/api/audit")[0] == 403


@pytest.mark.integration
def test_security_headers_on_every_answer(api: tuple[ApiServer, Store]) -> None:
    server, store = api
    admin = ApiClient(server.url, make_token(store, "admin"))
    for path, expected in (
        ("/", 200),
        ("/static/app.js", 200),
        ("/api/workloads", 200),
        ("/healthz", 200),
        ("/api/nothing", 404),
    ):
        assert admin.get(path)[0] == expected, path
        h = admin.last_headers
        csp = h["content-security-policy"]
        for directive in ("default-src 'self'", "frame-ancestors 'none'", "object-src 'none'", "base-uri 'none'"):
            assert directive in csp, (path, csp)
        assert "unsafe-inline" not in csp
        assert h["x-frame-options"] == "DENY" and h["x-content-type-options"] == "nosniff"
        assert h["referrer-policy"] == "no-referrer"
        assert "strict-transport-security" not in h  # plain HTTP
        if path.startswith("/api"):
            assert h["cache-control"] == "no-store"
    page = admin.get("/")[1]
    assert "<script>" not in page and " style=" not in page and "onclick" not in page  # nothing inline


def test_the_dashboard_files_have_nothing_inline() -> None:
    html = (STATIC_DIR / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html) and "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+=", html)


@pytest.mark.integration
def test_insecure_local_only_on_loopback_and_still_audited(sqlite_store: Store) -> None:
    for host in ("0.0.0.0", "10.1.2.3"):
        with pytest.raises(ConfigError, match="allowed only on a loopback address"):
            serve(StoreService(sqlite_store), host, 0, insecure_local=True)
        with pytest.raises(ConfigError, match=r"allowed only with a loopback api\.host"):
            parse_scheduler_config({"mqtt": {}, "api": {"host": host, "insecure_local": True}})
    with serve(StoreService(sqlite_store), "127.0.0.1", 0, insecure_local=True) as server:
        anyone = ApiClient(server.url)
        assert anyone.get("/api/whoami") == (200, {"actor": "insecure-local", "role": "admin", "insecure_local": True})
        assert anyone.call("POST", "/api/workloads", WORKLOAD)[0] == 201
    [entry] = sqlite_store.list_audit()
    assert (entry.actor, entry.role, entry.action, entry.status) == (
        "insecure-local",
        "admin",
        "POST /api/workloads",
        201,
    )


def test_api_config_tls_and_limits_are_checked() -> None:
    def api(**fields: Any) -> Any:
        return parse_scheduler_config({"mqtt": {}, "api": fields}).api

    assert api().rate_limit_per_s == 50 and api().insecure_local is False
    with pytest.raises(ConfigError, match=r"tls_cert and api\.tls_key go together"):
        api(tls_cert="/x.crt")
    with pytest.raises(ConfigError, match=r"client_ca .* needs api\.tls_cert"):
        api(client_ca="/ca.crt")
    for field, value in (
        ("rate_limit_per_s", 0),
        ("rate_limit_per_s", 1e9),
        ("rate_limit_burst", 0),
        ("rate_limit_burst", 10**9),
    ):
        with pytest.raises(ConfigError, match=rf"api\.{field}"):
            api(**{field: value})


# ------------------------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    script = Path(__file__).resolve().parents[2] / "deploy" / "make-certs.sh"
    for args in (["api", "127.0.0.1", "localhost"], ["api-client", "ops-laptop"]):
        done = subprocess.run(["bash", str(script), "--out", str(out), *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    return out


def _context(certs: Path, client: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    if client:
        context.load_cert_chain(certs / "api-clients" / f"{client}.crt", certs / "api-clients" / f"{client}.key")
    return context


@pytest.mark.integration
def test_tls_serves_https_with_hsts(sqlite_store: Store, certs: Path) -> None:
    tls = TlsFiles(certs / "api.crt", certs / "api.key")
    with serve(StoreService(sqlite_store), "127.0.0.1", 0, tls=tls) as server:
        assert server.url.startswith("https://")
        client = ApiClient(server.url, make_token(sqlite_store, "viewer"), context=_context(certs))
        assert client.get("/api/workloads") == (200, [])
        assert client.last_headers["strict-transport-security"].startswith("max-age=")
        with pytest.raises(urllib.error.URLError):  # the server's certificate is checked
            ApiClient(server.url, context=ssl.create_default_context()).get("/healthz")
        with pytest.raises((ConnectionError, http.client.HTTPException)):  # no plain HTTP on the port
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.request("GET", "/healthz")
            conn.getresponse().read()


@pytest.mark.integration
def test_mtls_refuses_a_client_without_a_certificate(sqlite_store: Store, certs: Path) -> None:
    tls = TlsFiles(certs / "api.crt", certs / "api.key", client_ca=certs / "ca.crt")
    token = make_token(sqlite_store, "viewer")
    with serve(StoreService(sqlite_store), "127.0.0.1", 0, tls=tls) as server:
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            ApiClient(server.url, token, context=_context(certs)).get("/api/workloads")
        with_cert = ApiClient(server.url, token, context=_context(certs, "ops-laptop"))
        assert with_cert.get("/api/workloads") == (200, [])
        assert ApiClient(server.url, context=_context(certs, "ops-laptop")).get("/api/workloads")[0] == 401


@pytest.mark.integration
def test_the_scheduler_config_reaches_the_server(sqlite_store: Store, certs: Path) -> None:
    """serve_api maps api.tls_*, client_ca and the rate limit from the config onto the running server."""
    from lepton_edge.scheduler.service import serve_api

    service = StoreService(sqlite_store)
    service.config = parse_scheduler_config(  # type: ignore[attr-defined]
        {
            "mqtt": {},
            "api": {
                "port": 0,
                "tls_cert": str(certs / "api.crt"),
                "tls_key": str(certs / "api.key"),
                "client_ca": str(certs / "ca.crt"),
                "rate_limit_per_s": 1,
                "rate_limit_burst": 2,
            },
        }
    )
    with serve_api(service) as server:
        assert server.url.startswith("https://127.0.0.1:")
        client = ApiClient(server.url, make_token(sqlite_store, "viewer"), context=_context(certs, "ops-laptop"))
        assert [client.get("/api/workloads")[0] for _ in range(3)] == [200, 200, 429]
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            ApiClient(server.url, client.token, context=_context(certs)).get("/api/workloads")


def test_missing_certificate_files_are_a_config_error(sqlite_store: Store, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"api\.tls_cert: .*nope\.crt is not a readable file"):
        serve(StoreService(sqlite_store), "127.0.0.1", 0, tls=TlsFiles(tmp_path / "nope.crt", tmp_path / "k"))


# ------------------------------------------------------------------------------------------- the CLI


def test_the_token_cli_creates_lists_and_revokes_on_the_configs_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import getpass

    from lepton_edge.cli import main

    config = tmp_path / "scheduler.yaml"
    config.write_text("store_url: sqlite:///fleet.db\nmqtt: {host: 127.0.0.1}\n")  # relative to the config
    assert main(["scheduler", "token", "create", "--config", str(config), "--name", "ops", "--role", "admin"]) == 0
    text = capsys.readouterr().out.strip().splitlines()[-1]
    token_id, _ = parse_token(text)  # type: ignore[misc]
    assert main(["scheduler", "token", "list", "-c", str(config)]) == 0
    listing = capsys.readouterr().out
    assert token_id in listing and "admin" in listing and text not in listing
    assert main(["scheduler", "token", "revoke", "-c", str(config), token_id]) == 0
    assert main(["scheduler", "token", "revoke", "-c", str(config), token_id]) != 0  # already revoked
    assert main(["scheduler", "token", "create", "-c", str(config), "--name", "a b", "--role", "viewer"]) != 0
    with open_store(f"sqlite:///{tmp_path / 'fleet.db'}") as store:
        audit = store.list_audit()
        assert store.get_api_token(token_id).revoked_at is not None  # type: ignore[union-attr]
    assert [(e.actor, e.action, e.status) for e in audit] == [
        (f"cli:{getpass.getuser()}", "token.create", 201),
        (f"cli:{getpass.getuser()}", "token.revoke", 200),
        (f"cli:{getpass.getuser()}", "token.revoke", 404),
    ]


def test_insecure_local_flag_is_refused_off_loopback(tmp_path: Path) -> None:
    config = tmp_path / "scheduler.yaml"
    config.write_text("mqtt: {host: 127.0.0.1, port: 1}\napi: {host: 0.0.0.0}\n")
    done = subprocess.run(
        [sys.executable, "-m", "lepton_edge.cli", "scheduler", "--config", str(config), "--insecure-local"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "allowed only with a loopback api.host" in done.stderr, done.stderr
