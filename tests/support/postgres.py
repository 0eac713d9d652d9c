"""A throwaway PostgreSQL for tests: its own cluster in a temp dir, on a free 127.0.0.1 port.

``postgres_url`` (session-scoped) is the URL of a database in it. With ``$LEPTON_TEST_POSTGRES_URL`` set,
that server is used instead and nothing is started (tests that stop the server then skip). Without
PostgreSQL binaries (``/usr/lib/postgresql/*/bin`` or on PATH) or psycopg the tests that need it skip, saying
why, and fail in CI (tests/support/real_parts.py).
The system PostgreSQL (port 5432) is never touched.

Import the fixtures into a test module (or a conftest): ``from tests.support.postgres import postgres_url``.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support.mosquitto import free_port
from tests.support.real_parts import missing_real_part

ENV_URL = "LEPTON_TEST_POSTGRES_URL"
_SERVER: PostgresServer | None = None


def find_postgres_bin() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres (the newest installed version), or None."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: [int(x) for x in Path(p).parent.name.split(".")]
    )
    for directory in reversed(candidates):
        if (Path(directory) / "initdb").exists() and (Path(directory) / "pg_ctl").exists():
            return Path(directory)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


class PostgresServer:
    """One PostgreSQL cluster owned by the test run: ``start()``, ``stop()``, ``close()`` (stop + delete).

    As root, the cluster runs as the ``postgres`` system user (initdb refuses root).
    """

    host = "127.0.0.1"
    superuser = "postgres"

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="lepton-pg-"))
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / "server.log"
        self._run_as: list[str] = []
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.workdir, ignore_errors=True)
                missing_real_part("running as root and there is no `postgres` user to run a test PostgreSQL as")
            runuser = shutil.which("runuser")
            if runuser is None:
                shutil.rmtree(self.workdir, ignore_errors=True)
                missing_real_part("running as root without `runuser`; cannot start a test PostgreSQL as `postgres`")
            os.chown(self.workdir, owner.pw_uid, owner.pw_gid)
            self._run_as = [runuser, "-u", "postgres", "--"]
        self._initdb()

    def _cmd(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self._run_as, str(self.bin_dir / tool), *args], capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            log = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed:\n{result.stdout}{result.stderr}\n{log}")
        return result

    def _initdb(self) -> None:
        self._cmd(
            "initdb", "-D", str(self.data_dir), "-U", self.superuser, "-A", "trust", "-E", "UTF8", "--no-sync",
            "--locale=C",
        )

    @property
    def admin_url(self) -> str:
        return f"postgresql://{self.superuser}@{self.host}:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://{self.superuser}@{self.host}:{self.port}/{database}"

    def start(self) -> PostgresServer:
        """Start the server on its port (the same port after a stop) and wait until it accepts connections."""
        options = (
            f"-p {self.port} -c listen_addresses={self.host} -c unix_socket_directories='' "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._cmd(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_path), "-o", options, "-w", "-t", "60", "start"
        )
        return self

    def stop(self) -> None:
        """Fast shutdown: open connections are terminated, as when a server goes away."""
        if (self.data_dir / "postmaster.pid").exists():
            self._cmd("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "stop")

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


def require_psycopg() -> None:
    """Skip (fail in CI) where the PostgreSQL client library is not installed."""
    if importlib.util.find_spec("psycopg") is None:
        missing_real_part("psycopg is not installed (pip install 'psycopg[binary]')")


def _server() -> PostgresServer:
    """The one throwaway server of this test run, started on first use."""
    global _SERVER
    if _SERVER is None:
        require_psycopg()
        bin_dir = find_postgres_bin()
        if bin_dir is None:
            missing_real_part("PostgreSQL is not installed (apt-get install postgresql); no initdb/pg_ctl found")
        _SERVER = PostgresServer(bin_dir).start()
    return _SERVER


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The throwaway server itself, for tests that stop and restart it; skips when an external URL is set."""
    if os.environ.get(ENV_URL):
        pytest.skip(f"${ENV_URL} points at an external server, which the tests must not stop")
    global _SERVER
    server = _server()
    yield server
    if _SERVER is server:
        _SERVER = None
        server.close()


@pytest.fixture(scope="session")
def postgres_url(request: pytest.FixtureRequest) -> str:
    """URL of a PostgreSQL database for tests: ``$LEPTON_TEST_POSTGRES_URL``, else one in a throwaway cluster."""
    external = os.environ.get(ENV_URL)
    if external:
        require_psycopg()
        return external
    server = request.getfixturevalue("postgres_server")
    return server.create_database(f"lepton_{uuid.uuid4().hex[:8]}")


def schema_url(url: str, schema: str) -> str:
    """``url`` with ``search_path`` set to ``schema``, so each test gets its own tables in one database."""
    joiner = "&" if "?" in url else "?"
    return f"{url}{joiner}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture
def postgres_schema_url(postgres_url: str) -> Iterator[str]:
    """A URL whose tables live in a fresh schema of ``postgres_url``, dropped after the test."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield schema_url(postgres_url, schema)
    try:
        with psycopg.connect(postgres_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
    except psycopg.OperationalError:
        pass  # the server is down (an outage test failed mid-way); the cluster is deleted at the end anyway
