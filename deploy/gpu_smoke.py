"""TensorRT smoke test for a Jetson or any machine with TensorRT: run it there, read its one report.

    .venv/bin/python deploy/gpu_smoke.py                 # report in out/gpu-smoke/report.json
    .venv/bin/python deploy/gpu_smoke.py --out /tmp/smoke --max-drop 1.0

Steps (each timed and recorded; under 10 minutes on an Orin):

1. environment: machine, TensorRT and the CUDA it runs with, CUDA Python packages, Jetson module, DLA cores;
2. fp32 and fp16 builds of both bundled models (shapes detector, digits classifier) with one timing cache;
3. int8 builds in both modes (`qdq`: symmetric Q/DQ; `legacy-cache`: implicit calibration, TensorRT 8.6-10);
4. `compare` of every artifact against the onnxruntime fp32 model on labelled held-out data, failing above
   ``--max-drop`` points;
5. a CUDA-graph run against a plain run of the same engine, from another thread, outputs compared;
6. the pycuda path: two engines open at once, inference from a worker thread that then exits, both closed;
7. a DLA build and run where a DLA core exists.

Exit status 0 when nothing failed (steps that need what this machine lacks are skipped, each saying why: without
TensorRT every TensorRT step is skipped), 1 when a step failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lepton_edge.cli import main as cli
from lepton_edge.config.pipeline import TensorRTBackendConfig
from lepton_edge.engines.artifacts import open_artifact
from lepton_edge.runtime.backends.cuda import PYCUDA, available_packages
from lepton_edge.runtime.platform import (
    accelerator_facts,
    machine_info,
    probe_dla_cores,
    probe_tensorrt,
    tensorrt_cuda_version,
)

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "shapes": (ROOT / "models/shapes_detector.onnx", ROOT / "calibration/shapes",
               ROOT / "calibration/shapes_heldout.json"),
    "digits": (ROOT / "models/digits_classifier.onnx", ROOT / "calibration/digits.npy",
               ROOT / "models/digits_heldout.npz"),
}


class Skip(Exception):
    """This step cannot run on this machine; the message says why."""


@dataclass
class Step:
    name: str
    status: str = "ok"
    detail: Any = None
    seconds: float = 0.0


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)

    def run(self, name: str, step: Callable[[], Any]) -> Any:
        started = time.monotonic()
        record = Step(name)
        try:
            record.detail = step()
        except Skip as e:
            record.status, record.detail = "skipped", str(e)
        except BaseException as e:  # a smoke test reports every failure and goes on
            record.status = "failed"
            record.detail = "".join(traceback.format_exception_only(type(e), e)).strip()
        record.seconds = round(time.monotonic() - started, 2)
        self.steps.append(record)
        why = "" if record.status == "ok" else f": {record.detail}"
        print(f"{record.status:8s} {name} ({record.seconds} s){why}", flush=True)
        return record.detail if record.status == "ok" else None

    @property
    def failed(self) -> list[str]:
        return [s.name for s in self.steps if s.status == "failed"]


def environment() -> dict[str, Any]:
    version, why = probe_tensorrt()
    cores, _ = probe_dla_cores()
    return {"machine": machine_info(), "tensorrt": version or f"absent ({why})",
            "tensorrt_cuda": tensorrt_cuda_version(), "cuda_packages": available_packages(),
            "dla_cores": cores, "accelerator": accelerator_facts()}


def need_tensorrt() -> str:
    version, _ = probe_tensorrt()
    if version is None:
        raise Skip("TensorRT is not installed here (why: see environment); run this on a Jetson or a TensorRT machine")
    return version


def command(*args: Any) -> None:
    status = cli([str(a) for a in args])
    if status != 0:
        raise RuntimeError(f"lepton-edge {' '.join(map(str, args[:1]))} exited {status} (see the log above)")


CALIBRATION_SAMPLES = [128]
"""Calibration items of the int8 builds (``--calibration-samples``)."""
COMPARE_SAMPLES: list[int | None] = [None]
"""Held-out items each compare uses (``--compare-samples``; all by default)."""


def build(out: Path, name: str, precision: str, *extra: Any) -> Path:
    version = need_tensorrt()
    if "legacy-cache" in extra and int(version.split(".")[0]) >= 11:
        raise Skip(f"TensorRT {version} has no implicit int8 calibration (legacy-cache is TensorRT 8.6-10)")
    model, calibration, _ = MODELS[name]
    artifact = out / "artifacts" / f"{name}-{precision}{'-' + extra[1] if extra else ''}"
    args = ["build", "--model", model, "--target", "tensorrt", "--precision", precision,
            "--timing-cache", out / "timing.cache", "--out", artifact, *extra]
    if precision == "int8":
        args += ["--calibration-data", calibration, "--calibration-samples", CALIBRATION_SAMPLES[0]]
    command(*args)
    return artifact


def compare_with_onnxruntime(name: str, artifact: Path, max_drop: float) -> None:
    model, _, heldout = MODELS[name]
    samples = [] if COMPARE_SAMPLES[0] is None else ["--samples", COMPARE_SAMPLES[0]]
    command("compare", "--reference", model, "--candidate", artifact, "--data", heldout, "--max-drop", max_drop,
            *samples)


def run_in_thread(fn: Callable[[], Any]) -> Any:
    """``fn()`` on a new thread that then exits (what the pipeline's stages and model swaps do)."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as e:
            result["error"] = e

    thread = threading.Thread(target=target, name="smoke-worker")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def one_inference(backend: Any) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {spec.name: rng.random(tuple(d if isinstance(d, int) else 1 for d in spec.shape)).astype(spec.dtype)
             for spec in backend.inputs}
    return backend.infer(feeds)


def cuda_graph_matches_plain(artifact: Path) -> dict[str, float]:
    need_tensorrt()
    plain = open_artifact(artifact, TensorRTBackendConfig(type="tensorrt"), in_pipeline=False)
    graphed = open_artifact(artifact, TensorRTBackendConfig(type="tensorrt", cuda_graph=True), in_pipeline=False)
    try:
        expected = one_inference(plain)
        run_in_thread(lambda: one_inference(graphed))  # the first run captures
        replayed = run_in_thread(lambda: one_inference(graphed))
        if not graphed.describe()["cuda_graph"]:
            raise RuntimeError("CUDA graph capture fell back to plain runs (see the warning above)")
        worst = max(float(np.max(np.abs(a - b))) for a, b in zip(expected, replayed, strict=True))
        if worst > 1e-3:
            raise RuntimeError(f"CUDA-graph outputs differ from plain ones by up to {worst}")
        return {"max_abs_difference": worst}
    finally:
        graphed.close()
        plain.close()


def pycuda_two_engines(first: Path, second: Path) -> str:
    need_tensorrt()
    if PYCUDA not in available_packages():
        raise Skip("pycuda is not installed (pip install pycuda)")
    config = TensorRTBackendConfig(type="tensorrt", cuda_package="pycuda")
    engines = [open_artifact(path, config, in_pipeline=False) for path in (first, second)]
    try:
        for backend in engines:
            run_in_thread(lambda backend=backend: one_inference(backend))
        run_in_thread(engines[0].close)  # closed from a thread that exits, the other still open
        one_inference(engines[1])
    finally:
        for backend in engines:
            backend.close()
    return "two pycuda engines, worker threads exited, process alive"


def dla_build(out: Path) -> str:
    need_tensorrt()
    cores, why = probe_dla_cores()
    if not cores:
        raise Skip(f"no DLA core here ({why or '0 cores'})")
    artifact = build(out, "digits", "fp16", "--dla-core", "0")
    backend = open_artifact(artifact, TensorRTBackendConfig(type="tensorrt"), in_pipeline=False)
    try:
        one_inference(backend)
    finally:
        backend.close()
    return f"{artifact.name} ran on DLA core 0 of {cores}"


def smoke(out: Path, max_drop: float) -> Report:
    report = Report()
    report.run("environment", environment)
    built: dict[str, Path] = {}
    for name in MODELS:
        for precision in ("fp32", "fp16"):
            built[f"{name}-{precision}"] = report.run(f"build {name} {precision}", lambda n=name, p=precision:
                                                      build(out, n, p))
        for mode in ("qdq", "legacy-cache"):
            built[f"{name}-int8-{mode}"] = report.run(f"build {name} int8 {mode}", lambda n=name, m=mode:
                                                      build(out, n, "int8", "--int8-mode", m))
    for key, artifact in built.items():
        name = key.split("-", 1)[0]
        report.run(f"compare {key} with onnxruntime fp32", lambda n=name, a=artifact: (
            compare_with_onnxruntime(n, a, max_drop) if a else _skip_unbuilt()))
    report.run("cuda graph vs plain, from another thread", lambda: cuda_graph_matches_plain(
        built.get("shapes-fp16") or _skip_unbuilt()))
    report.run("pycuda: two engines, exiting worker threads", lambda: pycuda_two_engines(
        built.get("shapes-fp16") or _skip_unbuilt(), built.get("digits-fp16") or _skip_unbuilt()))
    report.run("dla build and run", lambda: dla_build(out))
    return report


def _skip_unbuilt() -> Any:
    need_tensorrt()
    raise Skip("its build did not succeed (see above)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "gpu-smoke", help="artifacts and report.json")
    parser.add_argument("--max-drop", type=float, default=1.0,
                        help="largest accuracy drop (points) of any artifact against onnxruntime fp32 (default 1.0)")
    parser.add_argument("--calibration-samples", type=int, default=128, help="int8 calibration items (default 128)")
    parser.add_argument("--compare-samples", type=int, help="held-out items per compare (default all)")
    args = parser.parse_args(argv)
    CALIBRATION_SAMPLES[0] = args.calibration_samples
    COMPARE_SAMPLES[0] = args.compare_samples
    args.out.mkdir(parents=True, exist_ok=True)
    report = smoke(args.out, args.max_drop)
    path = args.out / "report.json"
    path.write_text(json.dumps({"steps": [asdict(s) for s in report.steps], "failed": report.failed},
                               indent=2, default=str))
    counts = {status: sum(s.status == status for s in report.steps) for status in ("ok", "skipped", "failed")}
    print(f"{counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed; report: {path}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
