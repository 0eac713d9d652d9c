"""deploy/install.sh, run for real into a DESTDIR staging root, and static checks of the deploy scripts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import lepton_edge
from tests.support.real_parts import missing_real_part

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "deploy" / "install.sh"
SCRIPTS = [INSTALL, REPO / "deploy" / "make-certs.sh", REPO / "deploy" / "mosquitto" / "make-passwd.sh"]
UNITS = ["lepton-edge.service", "lepton-edge-engines.service", "lepton-edge-scheduler.service"]
SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"
DISTRO_UNITS = Path("/usr/lib/systemd/system")
JETSON_NODES = ["/dev/nvmap", "/dev/nvhost-ctrl-gpu", "/dev/nvgpu/igpu0/ctrl", "/dev/nvsciipc"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses_and_passes_shellcheck(script: Path) -> None:
    assert os.access(script, os.X_OK), f"{script} is not executable (chmod +x)"
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in script.read_text()
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        missing_real_part("shellcheck is not installed (apt-get install shellcheck); only `bash -n` was checked")
    result = subprocess.run([shellcheck, "--severity=style", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def install(destdir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run install.sh into ``destdir``. PIP_NO_DEPS: only lepton-edge itself is installed into the venv
    (its dependencies are big and irrelevant to what the script does); the build still runs."""
    environment = {**os.environ, "DESTDIR": str(destdir), "PYTHON": sys.executable, "PIP_NO_DEPS": "1", **env}
    return subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True, env=environment,
                          timeout=300)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"install.sh failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def make_jetson_root(root: Path) -> None:
    """A staging root that looks like a Jetson: a release file and GPU nodes (plain files stand in)."""
    (root / "etc").mkdir(parents=True)
    (root / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.0, BOARD: generic\n")
    for node in JETSON_NODES:
        (root / node.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / node.lstrip("/")).touch()
    if DISTRO_UNITS.is_dir():  # for systemd-analyze verify --root: targets the units depend on
        shutil.copytree(DISTRO_UNITS, root / "usr/lib/systemd/system", symlinks=True)


@pytest.mark.integration
@pytest.mark.slow
def test_install_upgrade_uninstall_purge_in_a_destdir(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_jetson_root(root)
    out = ok(install(root))
    assert "staging only" in out and "not calling systemctl" in out
    venv = root / "opt/lepton-edge/venv"
    entry_point = venv / "bin/lepton-edge"
    assert entry_point.read_text().startswith(f"#!{venv}/bin/python")  # the console script runs in the venv
    version = subprocess.run([str(venv / "bin/python"), "-c",
                              "import importlib.metadata as m; print(m.version('lepton-edge'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version == lepton_edge.__version__
    assert "lepton-edge[opencv]" in out  # the pip OpenCV wheel, unless LEPTON_SYSTEM_OPENCV=1
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    for unit in UNITS:
        assert (root / "etc/systemd/system" / unit).read_bytes() == (REPO / "systemd" / unit).read_bytes()
    config = root / "etc/lepton-edge/device.yaml"
    assert config.read_bytes() == (REPO / "deploy/device.example.yaml").read_bytes()
    assert config.stat().st_mode & 0o777 == 0o640

    for unit in ("lepton-edge.service", "lepton-edge-engines.service"):
        dropin = (root / f"etc/systemd/system/{unit}.d/50-jetson-devices.conf").read_text()
        assert [line for line in dropin.splitlines() if line.startswith("DeviceAllow=")] == \
            [f"DeviceAllow={node} rw" for node in JETSON_NODES]
    assert not (root / "etc/systemd/system/lepton-edge-scheduler.service.d").exists()
    if os.access(SYSTEMD_ANALYZE, os.X_OK) and DISTRO_UNITS.is_dir():
        # The installed units, drop-ins included, with ExecStart= the venv's real console script.
        result = subprocess.run([SYSTEMD_ANALYZE, "verify", f"--root={root}", *UNITS],
                                capture_output=True, text=True, timeout=60)
        assert (result.returncode, result.stderr) == (0, "")

    # Again, with an edited config and the system's OpenCV: the config is kept, the venv is rebuilt to
    # see the system site-packages, and the opencv extra is left out.
    config.write_text("device_id: edited-by-operator\n")
    out = ok(install(root, LEPTON_SYSTEM_OPENCV="1"))
    assert config.read_text() == "device_id: edited-by-operator\n"
    assert "kept the existing" in out
    assert "recreating" in out and "lepton-edge[opencv]" not in out
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    assert entry_point.exists()

    out = ok(install(root, "--uninstall"))
    assert not (root / "opt/lepton-edge").exists()
    assert not any((root / "etc/systemd/system" / unit).exists() for unit in UNITS)
    assert not (root / "etc/systemd/system/lepton-edge.service.d").exists()
    assert config.exists(), "--uninstall must keep the config"
    assert "kept" in out

    (root / "var/lib/lepton-edge").mkdir(parents=True)
    ok(install(root, "--uninstall", "--purge"))
    assert not (root / "etc/lepton-edge").exists()
    assert not (root / "var/lib/lepton-edge").exists()


def test_argument_mistakes_are_explained(tmp_path: Path) -> None:
    result = install(tmp_path, "--purge")
    assert result.returncode != 0
    assert "--purge only goes with --uninstall" in result.stderr
    result = install(tmp_path, "--frobnicate")
    assert result.returncode != 0
    assert "unknown argument '--frobnicate'" in result.stderr


def test_too_old_or_missing_python_is_explained(tmp_path: Path) -> None:
    result = install(tmp_path, PYTHON=str(tmp_path / "no-python"))
    assert result.returncode != 0
    assert "not found" in result.stderr and "PYTHON=" in result.stderr
    assert not (tmp_path / "opt/lepton-edge/venv").exists()


def world_readable_copy(script: Path) -> Path:
    """``script`` copied into a fresh world-readable checkout-shaped folder (``<dir>/deploy/<name>``), for a user
    who cannot read the checkout (a clone under /root, or in a mode-700 temporary folder)."""
    top = Path(tempfile.mkdtemp(prefix="lepton-install-"))
    (top / "deploy").mkdir()
    copy = Path(shutil.copy2(script, top / "deploy" / script.name))
    for path in (top, top / "deploy", copy):
        path.chmod(0o755)
    return copy


def test_refuses_to_install_into_the_system_without_root() -> None:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux) to run the script as an unprivileged user")
    env = {k: v for k, v in os.environ.items() if k != "DESTDIR"}
    script = world_readable_copy(INSTALL)
    try:
        result = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "bash", str(script)],
                                capture_output=True, text=True, env=env, cwd=script.parent, timeout=60)
    finally:
        shutil.rmtree(script.parents[1])
    assert result.returncode != 0
    assert "run as root" in result.stderr
