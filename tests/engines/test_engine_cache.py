"""The engine cache: build on miss, reuse on hit, rebuild on mismatch or corruption, lock, precision auto."""

import argparse
import json
import multiprocessing
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from lepton_edge.cli import build as build_command
from lepton_edge.config.pipeline import ModelConfig, OnnxRuntimeBackendConfig, TensorRTBackendConfig
from lepton_edge.core.errors import ConfigError, ModelError
from lepton_edge.engines.artifacts import Manifest, compute_fingerprint, read_manifest, verify_artifact, write_manifest
from lepton_edge.engines.auto import build_auto
from lepton_edge.engines.builder import build_artifact
from lepton_edge.engines.calibration import calibrate, write_table
from lepton_edge.engines.engine_cache import (
    cache_key,
    default_cache_dir,
    open_model,
    resolve,
    resolve_model,
    slot_name,
)
from lepton_edge.engines.onnx_tools import inspect_onnx
from lepton_edge.engines.options import BuildOptions
from tests.support.fake_cuda import FakeGpu, block_pycuda, install_cuda_python
from tests.support.fake_tensorrt import block_tensorrt, install_tensorrt

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "models" / "digits_classifier.onnx"
DIGITS_HELDOUT = REPO / "models" / "digits_heldout.npz"
DIGITS_CALIBRATION = REPO / "calibration" / "digits.npy"
ORT = OnnxRuntimeBackendConfig(warmup_runs=0)


@pytest.fixture(scope="module")
def table_file(tmp_path_factory) -> Path:
    table = calibrate(DIGITS, DIGITS_CALIBRATION, method="minmax", samples=32, progress=False)
    return write_table(table, tmp_path_factory.mktemp("calib") / "digits.calib.json")


def _config(cache: Path, **kw) -> ModelConfig:
    return ModelConfig(path=DIGITS, cache_dir=cache, **{"precision": "fp32", **kw})


def _edit_manifest(artifact: Path, **runtime) -> None:
    data = read_manifest(artifact).model_dump()
    data["runtime"].update(runtime)
    edited = Manifest.model_validate(data)
    edited.fingerprint = compute_fingerprint(edited)
    write_manifest(artifact, edited)


def test_as_is_returns_the_path_unchanged(tmp_path):
    config = ModelConfig(path=DIGITS, cache_dir=tmp_path)
    assert resolve(config, ORT).reason == "as-is"
    assert resolve_model(config, ORT) == DIGITS
    assert list(tmp_path.iterdir()) == [], "as-is never touches the cache"
    with open_model(config, ORT, in_pipeline=False) as backend:
        assert backend.model_path == DIGITS


def test_miss_builds_and_hit_reuses(tmp_path):
    config = _config(tmp_path)
    first = resolve(config, ORT, progress=False)
    assert first.built and first.reason == "miss"
    assert first.path.parent == tmp_path and first.path.name.startswith("digits_classifier-fp32-onnxruntime-cpu-")
    assert verify_artifact(first.path) == []
    manifest = read_manifest(first.path)
    engine_mtime = (first.path / "model.onnx").stat().st_mtime_ns
    second = resolve(config, ORT, progress=False)
    assert (second.built, second.reason, second.path) == (False, "hit", first.path)
    assert read_manifest(second.path).created_at == manifest.created_at
    assert (second.path / "model.onnx").stat().st_mtime_ns == engine_mtime
    with open_model(config, ORT, in_pipeline=False) as backend:
        assert backend.model_path == first.path / "model.onnx"
        assert json.loads(backend.metadata["lepton.artifact"])["fingerprint"] == manifest.fingerprint


def test_slots_follow_what_decides_the_engine(tmp_path, table_file):
    sha = inspect_onnx(DIGITS).sha256
    fp32 = cache_key(_config(tmp_path), "onnxruntime-cpu", sha)
    assert cache_key(_config(tmp_path, calibration=table_file), "onnxruntime-cpu", sha) == fp32, \
        "calibration does not change an fp32 engine"
    int8 = cache_key(_config(tmp_path, precision="int8", calibration=table_file), "onnxruntime-cpu", sha)
    int8_data = cache_key(_config(tmp_path, precision="int8", calibration_data=str(DIGITS_CALIBRATION)),
                          "onnxruntime-cpu", sha)
    gated = cache_key(_config(tmp_path, precision="int8", calibration=table_file, validation_data=DIGITS_HELDOUT),
                      "onnxruntime-cpu", sha)
    trt = cache_key(_config(tmp_path, precision="int8", calibration=table_file), "tensorrt", sha)
    assert len({fp32, int8, int8_data, gated, trt}) == 5
    assert slot_name(Path("weird name!.onnx"), "int8", "tensorrt", int8) == f"weird_name_-int8-tensorrt-{int8[:16]}"


def test_corrupt_cached_engine_is_rebuilt(tmp_path):
    config = _config(tmp_path)
    path = resolve(config, ORT, progress=False).path
    engine = path / "model.onnx"
    engine.write_bytes(engine.read_bytes()[:1000])  # truncated, as after a power cut
    again = resolve(config, ORT, progress=False)
    assert again.built and again.reason.startswith("mismatch: engine.size: built ")
    assert verify_artifact(path) == []
    with open_model(config, ORT, in_pipeline=False) as backend:
        assert backend.infer({"input": np.zeros((1, 1, 8, 8), np.float32)})[0].shape == (1, 10)


def test_garbage_engine_is_rebuilt_not_crashed_on(tmp_path):
    config = _config(tmp_path)
    path = resolve(config, ORT, progress=False).path
    engine = path / "model.onnx"
    engine.write_bytes(b"\x08garbage" * (engine.stat().st_size // 8) + b"\x00" * (engine.stat().st_size % 8))
    with open_model(config, ORT, in_pipeline=False) as backend:  # same size, other bytes: caught by the hash
        assert backend.infer({"input": np.zeros((1, 1, 8, 8), np.float32)})[0].shape == (1, 10)
    assert verify_artifact(path) == []


def test_environment_change_rebuilds_in_place_and_logs_fields(tmp_path, caplog):
    config = _config(tmp_path)
    path = resolve(config, ORT, progress=False).path
    _edit_manifest(path, onnxruntime="1.2.0")
    with caplog.at_level("WARNING"):
        again = resolve(config, ORT, progress=False)
    assert again.path == path and again.built
    assert again.reason == f"mismatch: runtime.onnxruntime: built with 1.2.0, running {ort.__version__}"
    assert f"runtime.onnxruntime: built with 1.2.0, running {ort.__version__}); rebuilding" in caplog.text
    assert read_manifest(path).runtime.onnxruntime == ort.__version__
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, f"{path.name}.lock"]


def test_unbuildable_engine_names_the_fields_and_what_to_do(tmp_path):
    with pytest.raises(ModelError) as err:
        resolve(_config(tmp_path, precision="int8"), ORT, progress=False)
    message = str(err.value)
    assert "no usable int8 engine for onnxruntime-cpu" in message
    assert "model.calibration" in message and "model.calibration_data" in message


def test_stale_tensorrt_engine_without_tensorrt(tmp_path, monkeypatch):
    """A TensorRT slot built under another TensorRT, on a machine where TensorRT is now missing."""
    block_tensorrt(monkeypatch)
    config = _config(tmp_path)
    trt_config = TensorRTBackendConfig(type="tensorrt")
    name = slot_name(DIGITS, "fp32", "tensorrt", cache_key(config, "tensorrt", inspect_onnx(DIGITS).sha256))
    slot = tmp_path / name
    build_artifact(DIGITS, slot, progress=False)
    data = read_manifest(slot).model_dump()
    data["target"] = "tensorrt"
    data["runtime"]["tensorrt"] = "8.6.1"
    stale = Manifest.model_validate(data)
    stale.fingerprint = compute_fingerprint(stale)
    write_manifest(slot, stale)
    with pytest.raises(ModelError) as err:
        resolve(config, trt_config, progress=False)
    message = str(err.value)
    assert f"The cached engine {slot} does not match: runtime.tensorrt: built with 8.6.1, running none" in message
    assert "pip install tensorrt" in message


def test_precision_with_an_artifact_path_is_refused(tmp_path):
    artifact = tmp_path / "art"
    build_artifact(DIGITS, artifact, progress=False)
    with pytest.raises(ConfigError, match=r"model\.precision: as-is to run the artifact"):
        resolve(ModelConfig(path=artifact, precision="int8", cache_dir=tmp_path), ORT)
    with open_model(ModelConfig(path=artifact), ORT, in_pipeline=False) as backend:  # as-is: verified and run
        assert backend.metadata["lepton.task"] == "classify"
    _edit_manifest(artifact, onnxruntime="1.2.0")
    with pytest.raises(ModelError, match=r"runtime\.onnxruntime: built with 1\.2\.0"):
        open_model(ModelConfig(path=artifact), ORT)


def test_tensorrt_backend_refuses_a_raw_onnx(tmp_path):
    with pytest.raises(ConfigError, match="runs built engines, not ONNX files"):
        open_model(ModelConfig(path=DIGITS), TensorRTBackendConfig(type="tensorrt"))


def test_cache_folder_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("CACHE_DIRECTORY", f"{tmp_path}/svc:{tmp_path}/other")
    assert default_cache_dir() == tmp_path / "svc" / "engines"
    monkeypatch.delenv("CACHE_DIRECTORY")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "lepton-edge" / "engines"
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot create the engine cache folder"):
        resolve(ModelConfig(path=DIGITS, precision="fp32", cache_dir=blocker / "engines"), ORT)


def _resolve_in_child(cache: str, table: str, start, results) -> None:
    start.wait(60)
    config = ModelConfig(path=DIGITS, precision="int8", calibration=Path(table), validation_data=DIGITS_HELDOUT,
                         cache_dir=Path(cache))
    result = resolve(config, OnnxRuntimeBackendConfig(warmup_runs=0), progress=False)
    results.put((result.built, str(result.path)))


@pytest.mark.integration
def test_two_processes_racing_build_once(tmp_path, table_file):
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    children = [context.Process(target=_resolve_in_child, args=(str(tmp_path), str(table_file), start, results))
                for _ in range(2)]
    for child in children:
        child.start()
    start.set()
    outcomes = [results.get(timeout=120) for _ in children]
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    assert sorted(built for built, _ in outcomes) == [False, True], "exactly one process built"
    assert outcomes[0][1] == outcomes[1][1]
    assert verify_artifact(Path(outcomes[0][1])) == []
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [Path(outcomes[0][1]).name]


# -- precision auto -----------------------------------------------------------------------------

def test_auto_keeps_the_fastest_passing_precision(tmp_path, table_file):
    config = _config(tmp_path, precision="auto", calibration=table_file, validation_data=DIGITS_HELDOUT)
    result = resolve(config, ORT, progress=False)
    manifest = read_manifest(result.path)
    measured = manifest.measurements
    assert [c.precision for c in measured.candidates] == ["fp32", "int8"]
    assert all(c.passed and c.fps > 0 and c.note is None for c in measured.candidates)
    fastest = max(measured.candidates, key=lambda c: c.fps)
    assert measured.chosen == fastest.precision == manifest.precision
    assert measured.rounds == 5
    fp32, int8 = measured.candidates
    assert fp32.accuracy == pytest.approx(int8.accuracy + int8.drop / 100) and fp32.drop == 0.0
    if manifest.precision == "int8":
        assert manifest.accuracy.value == int8.accuracy
    assert verify_artifact(result.path) == []
    assert resolve(config, ORT, progress=False).reason == "hit"
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [result.path.name]


def test_auto_without_validation_data_keeps_fp32(tmp_path, table_file):
    manifest = build_auto(DIGITS, tmp_path / "auto", BuildOptions(calibration=table_file), rounds=2, round_s=0.02,
                          progress=False)
    assert manifest.precision == "fp32"
    fp32, int8 = manifest.measurements.candidates
    assert fp32.passed and not int8.passed and int8.fps is None
    assert "int8 needs validation data" in int8.note


def test_auto_drops_a_candidate_that_fails_the_gate(tmp_path):
    table = calibrate(DIGITS, DIGITS_CALIBRATION, method="minmax", samples=16, progress=False)
    absurd = table.model_copy(update={"ranges": {k: (lo * 200, hi * 200) for k, (lo, hi) in table.ranges.items()}})
    manifest = build_auto(DIGITS, tmp_path / "auto", BuildOptions(calibration=absurd,
                          validation_data=DIGITS_HELDOUT), rounds=2, round_s=0.02, progress=False)
    assert manifest.precision == "fp32" and manifest.measurements.chosen == "fp32"
    int8 = manifest.measurements.candidates[1]
    assert not int8.passed and int8.fps > 0 and int8.drop > 50
    assert int8.note.startswith("failed the accuracy gate: int8 top-1 is")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auto"], "candidates were cleaned up"


def test_auto_on_tensorrt_considers_fp16(tmp_path, monkeypatch):
    gpu = FakeGpu()
    install_cuda_python(monkeypatch, gpu)
    block_pycuda(monkeypatch)
    install_tensorrt(monkeypatch, "10.3.0", gpu)
    manifest = build_auto(DIGITS, tmp_path / "auto", BuildOptions(target="tensorrt", validation_data=DIGITS_HELDOUT,
                          validation_samples=50), rounds=2, round_s=0.02, progress=False)
    candidates = {c.precision: c for c in manifest.measurements.candidates}
    assert list(candidates) == ["fp32", "fp16", "int8"]
    assert candidates["fp16"].passed and candidates["fp16"].accuracy is not None
    assert not candidates["int8"].passed and "needs calibration" in candidates["int8"].note
    assert manifest.target == "tensorrt" and manifest.precision in ("fp32", "fp16")


# -- CLI ----------------------------------------------------------------------------------------

def test_verify_config_builds_through_the_cache(tmp_path, capsys):
    config = tmp_path / "device.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"path": str(DIGITS), "precision": "fp32", "cache_dir": str(tmp_path / "cache")},
        "source": {"uri": "synthetic://shapes?fps=30"},
    }))
    parser = argparse.ArgumentParser()
    build_command.add_arguments(parser)
    assert build_command.run(parser.parse_args(["--verify-config", str(config)])) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ready: {tmp_path / 'cache'}/digits_classifier-fp32-") and "[miss]" in out
    assert build_command.run(parser.parse_args(["--verify-config", str(config)])) == 0
    assert "[hit]" in capsys.readouterr().out


def test_verify_config_of_an_idle_device(tmp_path, capsys):
    config = tmp_path / "idle.yaml"
    config.write_text(yaml.safe_dump({"idle": True}))
    parser = argparse.ArgumentParser()
    build_command.add_arguments(parser)
    assert build_command.run(parser.parse_args(["--verify-config", str(config)])) == 0
    assert "is idle (no model to build)" in capsys.readouterr().out
