"""deploy/gpu_smoke.py: every step against the strict TensorRT and CUDA fakes, and a clean skip without TensorRT.

The real run is the user's, on a Jetson or TensorRT machine (and ``gpu``-marked here where one exists)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from lepton_edge.runtime.platform import probe_tensorrt
from tests.support.fake_cuda import FakeGpu, install_cuda_python, install_pycuda
from tests.support.fake_tensorrt import install_tensorrt

ROOT = Path(__file__).resolve().parents[2]


def _smoke():
    spec = importlib.util.spec_from_file_location("gpu_smoke", ROOT / "deploy" / "gpu_smoke.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_smoke"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _steps(out: Path) -> dict[str, dict]:
    return {s["name"]: s for s in json.loads((out / "report.json").read_text())["steps"]}


@pytest.mark.skipif(probe_tensorrt()[0] is not None, reason="TensorRT is installed: the gpu test runs instead")
def test_without_tensorrt_every_tensorrt_step_is_skipped_saying_why(tmp_path):
    assert _smoke().main(["--out", str(tmp_path)]) == 0
    steps = _steps(tmp_path)
    assert steps["environment"]["status"] == "ok" and "absent" in steps["environment"]["detail"]["tensorrt"]
    others = [s for name, s in steps.items() if name != "environment"]
    assert others and all(s["status"] == "skipped" and "TensorRT is not installed" in s["detail"] for s in others)


@pytest.mark.timeout(600)
def test_every_step_runs_on_the_fakes(tmp_path, monkeypatch):
    gpu = FakeGpu()
    install_cuda_python(monkeypatch, gpu)
    install_pycuda(monkeypatch, gpu)
    install_tensorrt(monkeypatch, "10.3.0", gpu, dla_cores=2)
    status = _smoke().main(["--out", str(tmp_path), "--calibration-samples", "16",
                                  "--compare-samples", "16"])
    steps = _steps(tmp_path)
    failed = {name: s["detail"] for name, s in steps.items() if s["status"] != "ok"}
    assert (status, failed) == (0, {})
    assert len(steps) == 20


@pytest.mark.gpu
@pytest.mark.timeout(900)
def test_on_real_tensorrt(tmp_path):
    if probe_tensorrt()[0] is None:
        pytest.skip("TensorRT is not installed")
    assert _smoke().main(["--out", str(tmp_path)]) == 0, json.dumps(_steps(tmp_path), indent=1)
