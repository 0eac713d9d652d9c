"""A real mosquitto broker for tests: its own config, port, persistence directory and log.

Never touches the system broker: it listens on a free 127.0.0.1 port and keeps everything in a
directory the test owns. ``stop()`` ends it gracefully (mosquitto then saves sessions and retained
messages), ``kill()`` ends it with SIGKILL, ``restart()`` brings it back on the same port with the same
persistence.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from tests.support.real_parts import missing_real_part


def find_mosquitto() -> str | None:
    """Path of the mosquitto executable (it lives in /usr/sbin, often outside a user's PATH)."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def require_mosquitto() -> str:
    """The mosquitto executable, or skip the test (fail in CI) with the command that installs it."""
    path = find_mosquitto()
    if path is None:
        missing_real_part("mosquitto is not installed (apt-get install mosquitto); MQTT tests need a real broker")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MosquittoBroker:
    """One mosquitto process on 127.0.0.1 with a generated config; a context manager, or call close()."""

    host = "127.0.0.1"

    def __init__(
        self,
        workdir: Path,
        *,
        allow_anonymous: bool = True,
        users: dict[str, str] | None = None,
        acl: str | None = None,
        port: int | None = None,
        extra_config: str = "",
        executable: str | None = None,
    ) -> None:
        """``users``: name -> password (a password file is generated); ``acl``: acl_file text."""
        self.executable = executable or require_mosquitto()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.log_path = self.workdir / "mosquitto.log"
        self.conf_path = self.workdir / "mosquitto.conf"
        self.port = port or free_port()
        self.allow_anonymous = allow_anonymous
        self.extra_config = extra_config
        if users:
            self._write_password_file(users)
        if acl is not None:
            (self.workdir / "acl").write_text(acl)
            self.extra_config += f"\nacl_file {self.workdir / 'acl'}"
        self.process: subprocess.Popen[bytes] | None = None
        self._write_config()

    def _write_password_file(self, users: dict[str, str]) -> None:
        tool = shutil.which("mosquitto_passwd") or shutil.which("mosquitto_passwd", path="/usr/sbin:/usr/local/sbin")
        if tool is None:
            missing_real_part("mosquitto_passwd is not installed (it comes with the mosquitto package)")
        path = self.workdir / "passwords"
        path.touch(mode=0o600)
        for name, password in users.items():
            subprocess.run([tool, "-b", str(path), name, password], check=True, capture_output=True)
        self.extra_config += f"\npassword_file {path}"

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            "persistence true",
            f"persistence_location {self.data_dir}/",
            "autosave_interval 0",  # save on shutdown only; kill() loses what changed since
            "max_queued_messages 100000",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # otherwise mosquitto switches to `mosquitto`, who cannot write here
        self.conf_path.write_text("\n".join(lines) + "\n" + self.extra_config + "\n")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> MosquittoBroker:
        """Start mosquitto and wait until its port accepts connections."""
        if self.running:
            return self
        # start_new_session: a Ctrl-C in the test run must not reach the broker before cleanup does
        self.process = subprocess.Popen(
            [self.executable, "-c", str(self.conf_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                self.process = None
                raise RuntimeError(f"mosquitto exited at startup (config {self.conf_path}):\n{err}\n{self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"mosquitto did not open port {self.port} within {timeout} s:\n{self.log_tail()}")

    def _wait_exit(self, timeout: float) -> None:
        assert self.process is not None
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM): mosquitto saves sessions and retained messages to its persistence."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.send_signal(signal.SIGCONT)  # in case it was paused
        self._wait_exit(timeout)

    def kill(self) -> None:
        """Abrupt stop (SIGKILL): nothing is saved, every connection drops at once."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self._wait_exit(5)

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing is read or acknowledged."""
        assert self.process is not None, "broker not running"
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Undo :meth:`pause` (SIGCONT)."""
        assert self.process is not None, "broker not running"
        self.process.send_signal(signal.SIGCONT)

    def restart(self, graceful: bool = True) -> MosquittoBroker:
        """Stop (or kill) and start again on the same port with the same persistence."""
        if graceful:
            self.stop()
        else:
            self.kill()
        return self.start()

    def close(self) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no mosquitto log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MosquittoBroker({self.host}:{self.port}, running={self.running})"


class MessageCollector:
    """An MQTT handler that records messages and lets a test wait for them."""

    def __init__(self) -> None:
        self.messages: list = []
        self._cond = threading.Condition()

    def __call__(self, message: object) -> None:
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> list:
        """Wait until at least ``count`` messages arrived; return them (fails the test on timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"expected {count} message(s) within {timeout} s, got {len(self.messages)}: "
                        f"{[getattr(m, 'payload', m) for m in self.messages]}"
                    )
                self._cond.wait(remaining)
            return list(self.messages)

    @property
    def payloads(self) -> list[bytes]:
        with self._cond:
            return [m.payload for m in self.messages]


def make_certificates(directory: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost, made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        missing_real_part("openssl is not installed (apt-get install openssl); the TLS tests make certificates with it")
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / name for name in ("ca.pem", "ca.key", "server.pem", "server.key", "server.csr")}
    (directory / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    commands = [
        [openssl, "req", "-x509", *ec, "-keyout", paths["ca.key"], "-out", paths["ca.pem"], "-days", "2",
         "-subj", "/CN=lepton test CA"],
        [openssl, "req", *ec, "-keyout", paths["server.key"], "-out", paths["server.csr"], "-subj", "/CN=localhost"],
        [openssl, "x509", "-req", "-in", paths["server.csr"], "-CA", paths["ca.pem"], "-CAkey", paths["ca.key"],
         "-CAcreateserial", "-out", paths["server.pem"], "-days", "2", "-extfile", directory / "san.cnf"],
    ]  # fmt: skip
    for command in commands:
        subprocess.run([str(c) for c in command], check=True, capture_output=True)
    return paths
