"""The systemd units in systemd/ and lepton_edge/device/systemd.py (sd_notify and the frame watchdog).

Unit files are checked by systemd itself (``systemd-analyze verify`` and ``security --offline``); the
notify protocol is checked against real AF_UNIX datagram sockets standing in for systemd.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from lepton_edge.cli import build_parser
from lepton_edge.core.errors import BackendUnavailable, ConfigError
from lepton_edge.device.systemd import FrameWatchdog, ServiceNotifier, notify
from tests.support.real_parts import missing_real_part

REPO = Path(__file__).resolve().parents[2]
UNIT_DIR = REPO / "systemd"
RUNTIME = "lepton-edge.service"
SCHEDULER = "lepton-edge-scheduler.service"
ENGINES = "lepton-edge-engines.service"
UNITS = [RUNTIME, SCHEDULER, ENGINES]
VENV_BIN = "/opt/lepton-edge/venv/bin/lepton-edge"
SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"
DISTRO_UNITS = Path("/usr/lib/systemd/system")


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as lists of (key, value), in file order (keys repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        assert current is not None, f"{path}: {raw!r} outside a section"
        assert not line.endswith("\\"), f"{path}: keep unit lines unwrapped for this parser: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not a key=value line: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def value(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}= appears {len(found)} times"
    return found[0]


@pytest.fixture(scope="module")
def analyze() -> str:
    if not os.access(SYSTEMD_ANALYZE, os.X_OK):
        missing_real_part(f"{SYSTEMD_ANALYZE} is missing (apt-get install systemd); cannot check unit files")
    return SYSTEMD_ANALYZE


@pytest.fixture(scope="module")
def unit_root(tmp_path_factory: pytest.TempPathFactory, analyze: str) -> Path:
    """A miniature root file system for ``systemd-analyze verify --root``.

    Why a root and not the units as they lie: verify checks that ExecStart= is executable, and
    /opt/lepton-edge/venv does not exist here. Editing ExecStart (or a test-only drop-in) would verify a
    different unit than the one shipped. With --root, systemd resolves the unit's own ExecStart path inside
    the root, where a stub executable stands in for the venv; the distro's units come along so that
    dependencies such as multi-user.target and network-online.target resolve.
    """
    if not DISTRO_UNITS.is_dir():
        missing_real_part(f"{DISTRO_UNITS} is missing: no distro units for systemd-analyze verify --root")
    root = tmp_path_factory.mktemp("unit-root")
    shutil.copytree(DISTRO_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    system = root / "etc/systemd/system"
    system.mkdir(parents=True)
    for name in UNITS:
        shutil.copy(UNIT_DIR / name, system / name)
    stub = root / VENV_BIN.lstrip("/")
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    return root


def verify(analyze: str, root: Path, *units: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([analyze, "verify", f"--root={root}", *units],
                          capture_output=True, text=True, timeout=60)


# ------------------------------------------------------------------------------------------ unit files


@pytest.mark.parametrize("name", UNITS)
def test_unit_verifies_without_any_diagnostic(analyze: str, unit_root: Path, name: str) -> None:
    # systemd-analyze verify exits 0 on unknown keys and unparsable values: stderr is the verdict.
    result = verify(analyze, unit_root, name)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


def test_verify_in_the_test_root_catches_mistakes(analyze: str, unit_root: Path) -> None:
    """The harness is not blind: a typo, a bad value and a missing executable are all reported."""
    broken = (UNIT_DIR / RUNTIME).read_text()
    broken = broken.replace("WatchdogSec=10", "WatchdogSec=ten").replace("UMask=0027", "UMask=0027\nUmask=0027")
    broken = broken.replace(VENV_BIN, "/opt/lepton-edge/venv/bin/lepton-edgee")
    (unit_root / "etc/systemd/system/broken-test.service").write_text(broken)
    result = verify(analyze, unit_root, "broken-test.service")
    assert "Failed to parse sec value" in result.stderr
    assert "Unknown key 'Umask'" in result.stderr
    assert "lepton-edgee is not executable" in result.stderr


def security_score(analyze: str, path: Path) -> float:
    result = subprocess.run([analyze, "security", "--offline=yes", str(path)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, f"no exposure level in systemd-analyze output:\n{result.stdout}\n{result.stderr}"
    return float(match.group(1))


@pytest.mark.parametrize(("name", "limit"), [(RUNTIME, 2.5), (SCHEDULER, 1.5), (ENGINES, 1.0)])
def test_security_exposure_is_low(analyze: str, name: str, limit: float) -> None:
    score = security_score(analyze, UNIT_DIR / name)
    assert score <= limit, f"{name}: exposure {score} > {limit}; see systemd-analyze security --offline=yes"


def test_security_score_reacts_to_hardening(analyze: str, tmp_path: Path) -> None:
    """The parsed score is the real one: dropping the sandbox makes it worse."""
    lines = (UNIT_DIR / RUNTIME).read_text().splitlines()
    keep = ("Type=", "ExecStart=", "[", "User=", "Description=")
    bare = tmp_path / "bare.service"
    bare.write_text("\n".join(line for line in lines if line.startswith(keep)) + "\n")
    assert security_score(analyze, bare) > security_score(analyze, UNIT_DIR / RUNTIME) + 3


def test_runtime_unit_contract() -> None:
    unit = parse_unit(UNIT_DIR / RUNTIME)
    assert value(unit, "Service", "Type") == "notify"
    assert value(unit, "Service", "NotifyAccess") == "main"
    assert float(value(unit, "Service", "WatchdogSec")) > 0
    assert value(unit, "Service", "Restart") == "on-failure"
    assert int(value(unit, "Unit", "StartLimitBurst")) > 0
    # A config error must end the restart loop: the CLI exits with ConfigError.exit_code.
    prevented = value(unit, "Service", "RestartPreventExitStatus").split()
    assert str(ConfigError.exit_code) in prevented
    assert str(BackendUnavailable.exit_code) in prevented
    assert value(unit, "Service", "User") == "lepton"
    assert set(value(unit, "Service", "SupplementaryGroups").split()) == {"video", "render"}
    assert "DynamicUser" not in dict(unit["Service"])
    # onnxruntime/CUDA/TensorRT generate code at run time: W^X would crash them.
    assert "MemoryDenyWriteExecute" not in dict(unit["Service"])
    assert value(unit, "Service", "CapabilityBoundingSet") == ""
    assert value(unit, "Service", "DevicePolicy") == "closed"
    assert "char-video4linux rw" in values(unit, "Service", "DeviceAllow")
    assert value(unit, "Service", "StateDirectory") == "lepton-edge"
    assert value(unit, "Service", "CacheDirectory") == "lepton-edge"
    assert ENGINES in value(unit, "Unit", "Wants").split()
    assert ENGINES in value(unit, "Unit", "After").split()
    assert "nvargus-daemon.service" in value(unit, "Unit", "After").split(), "the Argus socket exists before the bind"


def test_engines_unit_runs_once_before_the_runtime_at_idle_priority() -> None:
    unit = parse_unit(UNIT_DIR / ENGINES)
    assert value(unit, "Service", "Type") == "oneshot"
    assert value(unit, "Service", "RemainAfterExit") == "yes"
    assert RUNTIME in value(unit, "Unit", "Before").split()
    assert value(unit, "Service", "Nice") == "19"
    assert value(unit, "Service", "IOSchedulingClass") == "idle"
    assert value(unit, "Service", "CPUSchedulingPolicy") in ("idle", "batch")


@pytest.mark.parametrize(("name", "command"), [(RUNTIME, "run"), (SCHEDULER, "scheduler"), (ENGINES, "build")])
def test_exec_start_is_a_valid_cli_command_line(name: str, command: str) -> None:
    argv = shlex.split(value(parse_unit(UNIT_DIR / name), "Service", "ExecStart"))
    assert argv[0] == VENV_BIN  # the venv deploy/install.sh creates
    assert argv[1] == command
    parser = build_parser(command)  # the command's own arguments are added only when it is the one chosen
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    if command not in subcommands:
        pytest.skip(f"`lepton-edge {command}` is not in the CLI yet; its unit cannot be checked against it")
    args = parser.parse_args(argv[1:])
    assert args.command == command


# ------------------------------------------------------------------------------------------- sd_notify


class NotifyListener:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(5.0)

    def receive(self) -> str:
        return self.sock.recv(4096).decode()

    def receive_none(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            got = self.sock.recv(4096)
        except TimeoutError:
            return
        finally:
            self.sock.settimeout(5.0)
        raise AssertionError(f"unexpected notification {got!r}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "notify.sock"
    assert len(str(path)) < 100, "AF_UNIX paths are limited to 107 bytes"
    sock = NotifyListener(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield sock
    sock.close()


def test_ready_status_stopping_reach_the_socket(listener: NotifyListener) -> None:
    notifier = ServiceNotifier()
    assert notifier.enabled
    assert notifier.ready()
    assert listener.receive() == "READY=1"
    assert notifier.status("fps=29.8 state=streaming\nresults=12")
    assert listener.receive() == "STATUS=fps=29.8 state=streaming results=12"  # one line, always
    assert notifier.ready(status="model loaded")
    assert listener.receive() == "READY=1\nSTATUS=model loaded"
    assert notifier.stopping()
    assert listener.receive() == "STOPPING=1"


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"lepton-edge-test-{os.getpid()}-{threading.get_ident()}"
    sock = NotifyListener("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("READY=1")
        assert sock.receive() == "READY=1"
    finally:
        sock.close()


def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
    assert ServiceNotifier().ready() is False
    assert ServiceNotifier().enabled is False


def test_unreachable_or_malformed_socket_returns_false(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "absent.sock")}) is False
    assert "absent.sock" in caplog.text
    assert notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1234"}) is False
    assert "not a socket path" in caplog.text


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "10000000"}, 5.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "{pid}"}, 5.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "{other}"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout_for_this_process(env: dict[str, str], interval: float | None) -> None:
    env = {k: v.format(pid=os.getpid(), other=os.getpid() + 1) for k, v in env.items()}
    assert ServiceNotifier(env).watchdog_interval() == interval


class Frames:
    """A progress counter that advances on every read until stalled."""

    def __init__(self) -> None:
        self.count = itertools.count(1)
        self.value = 0
        self.stalled = False

    def __call__(self) -> int:
        if not self.stalled:
            self.value = next(self.count)
        return self.value


def next_messages(listener: NotifyListener, statuses: int) -> list[str]:
    """Every notification up to and including the ``statuses``-th STATUS line (one STATUS per tick)."""
    got: list[str] = []
    while sum(m.startswith("STATUS=") for m in got) < statuses:
        got.append(listener.receive())
    return got


def test_frame_watchdog_pings_only_while_frames_complete(
    listener: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # 0.1 s: a ping every 0.05 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    frames = Frames()
    watchdog = FrameWatchdog(frames, lambda: f"state=streaming results={frames.value}")
    assert watchdog.interval == pytest.approx(0.05)
    with watchdog:
        flowing = next_messages(listener, 4)
        assert flowing.count("WATCHDOG=1") == 4
        assert all(m.startswith("STATUS=state=streaming results=") for m in flowing if m != "WATCHDOG=1")

        frames.stalled = True
        next_messages(listener, 2)  # the tick in progress may have read the counter before the stall
        stalled = next_messages(listener, 5)
        assert "WATCHDOG=1" not in stalled
        assert len({m for m in stalled}) == 1  # the same status: results stopped moving

        frames.stalled = False
        next_messages(listener, 1)
        assert "WATCHDOG=1" in next_messages(listener, 2)
    assert watchdog._thread is not None and not watchdog._thread.is_alive()
    assert watchdog.pings >= 5
    assert watchdog.withheld >= 5


def test_frame_watchdog_never_pings_for_another_process(
    listener: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.setenv("WATCHDOG_PID", "1" if os.getpid() != 1 else "2")
    frames = Frames()
    with FrameWatchdog(frames, lambda: "state=streaming", interval=0.02) as watchdog:
        messages = next_messages(listener, 5)
    assert messages == ["STATUS=state=streaming"] * 5
    assert watchdog.pings == 0


def test_frame_watchdog_treats_a_failing_counter_as_a_stall(
    listener: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")

    def broken() -> int:
        raise RuntimeError("stats gone")

    with FrameWatchdog(broken, lambda: "state=broken") as watchdog:
        messages = next_messages(listener, 3)
        assert watchdog._thread is not None and watchdog._thread.is_alive()
    assert "WATCHDOG=1" not in messages
    assert watchdog.pings == 0


def test_frame_watchdog_rejects_a_non_positive_interval() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        FrameWatchdog(Frames(), interval=0)


def test_frame_watchdog_stop_is_prompt_and_idempotent(listener: NotifyListener) -> None:
    watchdog = FrameWatchdog(Frames(), interval=30.0).start()
    watchdog.stop(timeout=5.0)
    assert watchdog._thread is not None and not watchdog._thread.is_alive()
    watchdog.stop()
    listener.receive_none(0.1)
