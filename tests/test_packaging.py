"""The package outside a checkout: a built wheel installed into a fresh virtualenv, run from a temporary folder.

The wheel is built without build isolation and installed without an index, so nothing is downloaded; the new
virtualenv takes the dependencies from this test run's site-packages through a ``.pth`` file, and never sees the
checkout (no PYTHONPATH, the current folder is a temporary one). Also the test infrastructure: pytest's per-test
time limit, and missing real parts failing in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.mosquitto import require_mosquitto
from tests.support.real_parts import REQUIRE_ENV, missing_real_part

REPO = Path(__file__).resolve().parents[1]
# What a build reads: the package and the folders its data links point into.
BUILD_INPUTS = ("pyproject.toml", "README.md", "lepton_edge", "models", "deploy")
PACKAGE_DATA = {
    "demo.yaml": "deploy/demo.yaml",
    "shapes_detector.onnx": "models/shapes_detector.onnx",
    "shapes_detector.labels.txt": "models/shapes_detector.labels.txt",
    "shapes_detector_batched.onnx": "models/shapes_detector_batched.onnx",
    "colour_classifier.onnx": "models/colour_classifier.onnx",
    "digits_classifier.onnx": "models/digits_classifier.onnx",
    "digits_classifier.labels.txt": "models/digits_classifier.labels.txt",
    "yolov8n_sized.py": "models/yolov8n_sized.py",
}


def run(command: list[str | Path], timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


@dataclass(frozen=True)
class Installed:
    """A virtualenv holding the wheel: its interpreter, its ``lepton-edge`` command and its site-packages."""

    python: Path
    command: Path
    site_packages: Path

    def env(self) -> dict[str, str]:
        """The environment for running it: no PYTHONPATH, its bin/ first on PATH."""
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PATH"] = f"{self.command.parent}{os.pathsep}{env.get('PATH', '')}"
        return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the checkout (a build writes build/ and egg-info into its source)."""
    source = tmp_path_factory.mktemp("source")
    for name in BUILD_INPUTS:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, source / name, **({"symlinks": True} if copy is shutil.copytree else {}))
    dist = tmp_path_factory.mktemp("dist")
    built = run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "--no-index",
                 "-w", dist, source], timeout=300)
    assert "DeprecationWarning" not in built.stdout + built.stderr
    (wheel,) = dist.glob("lepton_edge-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """A fresh virtualenv with the wheel installed; its dependencies come from this interpreter's site-packages."""
    venv = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", venv], timeout=120)
    python = venv / "bin" / "python"
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], timeout=60)
    site = Path(purelib.stdout.strip())
    ours = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    (site / "test-dependencies.pth").write_text("\n".join(ours) + "\n")
    done = run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel],
               timeout=300)
    assert "DeprecationWarning" not in done.stdout + done.stderr
    return Installed(python, venv / "bin" / "lepton-edge", site)


def assert_outside_checkout(done: subprocess.CompletedProcess[str]) -> None:
    assert str(REPO) not in done.stdout + done.stderr, "the checkout was used"


@pytest.mark.integration
@pytest.mark.slow
def test_wheel_holds_copies_of_the_package_data_not_links(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for name, origin in PACKAGE_DATA.items():
            info = archive.getinfo(f"lepton_edge/data/{name}")
            assert not stat.S_ISLNK(info.external_attr >> 16), name
            assert archive.read(info) == (REPO / origin).read_bytes(), name
    static = {p.name for p in (REPO / "lepton_edge/scheduler/static").iterdir()}
    assert {f"lepton_edge/scheduler/static/{n}" for n in static} <= names
    assert "lepton_edge/py.typed" in names


@pytest.mark.integration
@pytest.mark.slow
def test_the_installed_package_is_imported_not_the_checkout(installed: Installed, tmp_path: Path) -> None:
    code = "import lepton_edge.data as d; print(d.__file__); print(d.DEMO_MODEL.is_file(), d.DEMO_MODEL.is_symlink())"
    done = run([installed.python, "-c", code], timeout=60, cwd=tmp_path, env=installed.env())
    where, flags = done.stdout.split()[0], done.stdout.split()[1:]
    assert Path(where).is_relative_to(installed.site_packages) and flags == ["True", "False"]


@pytest.mark.integration
@pytest.mark.slow
def test_demo_runs_from_the_installed_wheel_in_any_folder(installed: Installed, tmp_path: Path) -> None:
    require_mosquitto()
    done = run([installed.command, "demo", "--duration", "10"], timeout=120, cwd=tmp_path, env=installed.env())
    assert_outside_checkout(done)
    out = tmp_path / "out" / "demo"  # the demo writes under the current folder
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(results) >= 30 and any(r.get("detections") for r in results)
    assert (out / "annotated.mp4").stat().st_size > 0
    assert (out / "scheduler.db").is_file()
    with sqlite3.connect(out / "scheduler.db") as db:  # the scheduler's workload reached the device and ran
        events = dict(db.execute("SELECT kind, message FROM events WHERE device_id = 'demo-device'").fetchall())
    assert "device.config.rejected" not in events, events
    assert "desired config v1 applied" in events.get("device.config.applied", ""), events


@pytest.mark.integration
@pytest.mark.slow
def test_bench_runs_from_the_installed_wheel_in_any_folder(installed: Installed, tmp_path: Path) -> None:
    done = run([installed.command, "bench", "--rounds", "1", "--frames", "10", "--case-seconds", "1",
                "--duration", "2"], timeout=240, cwd=tmp_path, env=installed.env())
    assert_outside_checkout(done)
    report = json.loads((tmp_path / "out" / "bench" / "bench.json").read_text())
    models = [Path(r["model"]) for r in report["throughput"]]
    assert models[0].is_relative_to(installed.site_packages)  # the packaged demo detector
    assert models[1] == Path("out/bench/yolov8n_sized_640.onnx") and (tmp_path / models[1]).is_file()  # under cwd
    assert report["latency"]["results"] > 0


def test_the_default_time_limit_per_test_is_set(pytestconfig: pytest.Config) -> None:
    assert 120 <= float(pytestconfig.getini("timeout")) <= 300


DEADLOCK = """
import threading

def test_deadlocks_and_so_does_its_cleanup():
    lock = threading.Lock()
    lock.acquire()
    try:
        lock.acquire()
    finally:
        lock.acquire()
"""


def test_a_test_that_outlives_the_time_limit_fails_even_when_its_cleanup_hangs(tmp_path: Path) -> None:
    (tmp_path / "test_deadlock.py").write_text(DEADLOCK)
    our_pytest = [sys.executable, "-m", "pytest", "-c", REPO / "pyproject.toml", "--rootdir", tmp_path]
    done = subprocess.run([*our_pytest, "-q", "-p", "no:cacheprovider", "-o", "timeout=1", "test_deadlock.py"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Timeout" in done.stdout and "test_deadlocks_and_so_does_its_cleanup" in done.stdout


@pytest.mark.parametrize(("env", "fails"), [
    ({}, False), ({"CI": "false"}, False), ({"CI": "true"}, True), ({REQUIRE_ENV: "1"}, True),
])
def test_a_missing_real_part_skips_locally_and_fails_in_ci(monkeypatch, env: dict[str, str], fails: bool) -> None:
    for name in ("CI", REQUIRE_ENV):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    outcome = pytest.fail.Exception if fails else pytest.skip.Exception
    with pytest.raises(outcome, match="mosquitto is not installed"):
        missing_real_part("mosquitto is not installed")
