"""A local mosquitto on a free loopback port: for the demo and for development, never for production
(``deploy/mosquitto/`` has the production configuration with TLS and per-device ACLs)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from lepton_edge.core.errors import LeptonError


def find_mosquitto() -> str | None:
    """Path of the mosquitto executable (it lives in /usr/sbin, often outside a user's PATH)."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class LocalBroker:
    """``mosquitto -c <generated config>`` listening on 127.0.0.1 only, anonymous, persistence in ``workdir``."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> LocalBroker:
        exe = find_mosquitto()
        if exe is None:
            raise LeptonError("mosquitto is not installed: apt-get install mosquitto (deploy/quickstart.sh does it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} {self.host}\nallow_anonymous true\npersistence true\n"
            f"persistence_location {self.workdir}/\nlog_dest file {self.workdir / 'mosquitto.log'}\n"
            "max_queued_messages 100000\n"
        )
        self.process = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_for_port(self.host, self.port, timeout):
            self.stop()
            raise LeptonError(f"mosquitto did not start on {self.host}:{self.port}; see {self.workdir}/mosquitto.log")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
