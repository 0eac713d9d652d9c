"""Artifacts: build (onnxruntime for real, TensorRT through the strict fakes), manifest, verify, open."""

import argparse
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lepton_edge.cli import build as build_command
from lepton_edge.cli import inspect as inspect_command
from lepton_edge.config.pipeline import OnnxRuntimeBackendConfig, TensorRTBackendConfig
from lepton_edge.core.errors import BackendUnavailable, ConfigError, LeptonError, ModelError
from lepton_edge.core.fileio import sha256_file
from lepton_edge.engines.artifacts import (
    ARTIFACT_METADATA_KEY,
    Manifest,
    compute_fingerprint,
    current_environment,
    open_artifact,
    read_manifest,
    verify_artifact,
    write_manifest,
)
from lepton_edge.engines.builder import build_artifact
from lepton_edge.engines.calibration import calibrate, write_table, write_tensorrt_cache
from lepton_edge.engines.onnx_tools import inspect_onnx
from lepton_edge.engines.options import BuildOptions, CalibrationOptions, TrtOptions
from lepton_edge.engines.tensorrt_builder import build_engine
from lepton_edge.runtime import platform
from tests.support.fake_cuda import FakeGpu, block_pycuda, install_cuda_python
from tests.support.fake_tensorrt import block_tensorrt, install_tensorrt

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "models" / "digits_classifier.onnx"
DIGITS_HELDOUT = REPO / "models" / "digits_heldout.npz"
DIGITS_CALIBRATION = REPO / "calibration" / "digits.npy"
ORT_CONFIG = OnnxRuntimeBackendConfig(warmup_runs=0)


@pytest.fixture(scope="module")
def table():
    return calibrate(DIGITS, DIGITS_CALIBRATION, method="minmax", samples=32, progress=False)


@pytest.fixture(scope="module")
def fp32_artifact(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fp32") / "digits-fp32"
    build_artifact(DIGITS, out, progress=False)
    return out


@pytest.fixture(scope="module")
def int8_artifact(tmp_path_factory, table) -> Path:
    out = tmp_path_factory.mktemp("int8") / "digits-int8"
    build_artifact(DIGITS, out, BuildOptions(precision="int8", calibration=table, validation_data=DIGITS_HELDOUT),
                   progress=False)
    return out


def _copy(artifact: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(artifact, tmp_path / artifact.name))


def _edit(artifact: Path, refingerprint: bool = True, **changes) -> None:
    """Change manifest fields (dotted names) as if the artifact had been built elsewhere."""
    manifest = read_manifest(artifact)
    data = manifest.model_dump()
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    edited = Manifest.model_validate(data)
    if refingerprint:
        edited.fingerprint = compute_fingerprint(edited)
    write_manifest(artifact, edited)


# -- building -----------------------------------------------------------------------------------

def test_fp32_artifact_manifest(fp32_artifact):
    manifest = read_manifest(fp32_artifact)
    info = inspect_onnx(DIGITS)
    assert sorted(p.name for p in fp32_artifact.iterdir()) == ["manifest.json", "model.onnx"]
    assert manifest.format_version == 1 and manifest.target == "onnxruntime-cpu" and manifest.precision == "fp32"
    assert manifest.source_model.name == "digits_classifier.onnx"
    assert manifest.source_model.sha256 == info.sha256 and manifest.source_model.opset == info.opset
    assert [t.name for t in manifest.source_model.inputs] == ["input"]
    assert manifest.source_model.inputs[0].shape == ["batch", 1, 8, 8]
    assert manifest.source_model.metadata["lepton.task"] == "classify"
    engine = fp32_artifact / manifest.engine.file
    assert manifest.engine.sha256 == sha256_file(engine) == sha256_file(DIGITS)
    assert manifest.engine.size == engine.stat().st_size
    assert manifest.calibration is None and manifest.accuracy is None and manifest.measurements is None
    assert manifest.runtime.onnxruntime == ort.__version__ and manifest.runtime.tensorrt is None
    assert manifest.fingerprint == compute_fingerprint(manifest) and len(manifest.fingerprint) == 64
    assert json.loads((fp32_artifact / "manifest.json").read_text())["fingerprint"] == manifest.fingerprint
    assert verify_artifact(fp32_artifact) == []


def test_int8_artifact_is_quantized_gated_and_runs(int8_artifact, table):
    manifest = read_manifest(int8_artifact)
    assert manifest.precision == "int8"
    assert manifest.calibration.method == "minmax" and manifest.calibration.samples == 32
    assert manifest.calibration.dataset_sha256 == table.dataset_sha256
    assert manifest.builder.int8_mode == "qdq" and manifest.builder.per_channel is True
    engine = inspect_onnx(int8_artifact / "model.onnx")
    assert engine.has_qdq and engine.sha256 == manifest.engine.sha256
    accuracy = manifest.accuracy
    assert accuracy.metric == "top-1" and accuracy.samples == 450 and accuracy.max_drop == 1.0
    assert accuracy.reference > 0.95 and accuracy.drop <= 1.0
    assert accuracy.drop == pytest.approx((accuracy.reference - accuracy.value) * 100)
    with open_artifact(int8_artifact, ORT_CONFIG, in_pipeline=False) as backend:
        logits = backend.infer({"input": np.zeros((1, 1, 8, 8), np.float32)})[0]
        assert logits.shape == (1, 10)
        identity = json.loads(backend.metadata[ARTIFACT_METADATA_KEY])
        assert identity == {"fingerprint": manifest.fingerprint, "target": "onnxruntime-cpu", "precision": "int8",
                            "source_sha256": manifest.source_model.sha256}
        assert backend.metadata["lepton.task"] == "classify"


def test_int8_from_calibration_data_and_table_file(tmp_path, table):
    out = tmp_path / "from-data"
    manifest = build_artifact(DIGITS, out, BuildOptions(precision="int8", calibration_data=str(DIGITS_CALIBRATION),
                              calibration_options=CalibrationOptions(method="percentile", samples=16)),
                              progress=False)
    assert manifest.calibration.method == "percentile" and manifest.calibration.samples == 16
    table_file = write_table(table, tmp_path / "digits.calib.json")
    again = build_artifact(DIGITS, tmp_path / "from-table", BuildOptions(precision="int8", calibration=table_file),
                           progress=False)
    assert again.calibration.table_sha256 != manifest.calibration.table_sha256
    assert again.calibration.method == "minmax"


def test_failing_gate_leaves_the_previous_artifact(tmp_path, fp32_artifact, table):
    out = _copy(fp32_artifact, tmp_path)
    before = read_manifest(out)
    absurd = table.model_copy(update={"ranges": {k: (lo * 200, hi * 200) for k, (lo, hi) in table.ranges.items()}})
    with pytest.raises(ModelError) as err:
        build_artifact(DIGITS, out, BuildOptions(precision="int8", calibration=absurd,
                       validation_data=DIGITS_HELDOUT), progress=False)
    assert "int8 top-1 is" in str(err.value) and "allowed drop 1" in str(err.value)
    assert read_manifest(out) == before and verify_artifact(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name], "no staging folder left behind"


def test_failing_gate_on_first_build_leaves_nothing(tmp_path, table):
    absurd = table.model_copy(update={"ranges": {k: (lo * 200, hi * 200) for k, (lo, hi) in table.ranges.items()}})
    with pytest.raises(ModelError, match="points below fp32"):
        build_artifact(DIGITS, tmp_path / "out", BuildOptions(precision="int8", calibration=absurd,
                       validation_data=DIGITS_HELDOUT), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_rebuild_replaces_an_artifact(tmp_path, fp32_artifact, table):
    out = _copy(fp32_artifact, tmp_path)
    build_artifact(DIGITS, out, BuildOptions(precision="int8", calibration=table), progress=False)
    assert read_manifest(out).precision == "int8" and verify_artifact(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


# -- refusals -----------------------------------------------------------------------------------

def test_not_onnx_and_truncated_models_are_refused(tmp_path):
    text = tmp_path / "notes.onnx"
    text.write_text("hello, this is not a model\n")
    with pytest.raises(ModelError, match="not an ONNX model"):
        build_artifact(text, tmp_path / "a", progress=False)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(DIGITS.read_bytes()[: DIGITS.stat().st_size // 2])
    with pytest.raises(ModelError, match="truncated"):
        build_artifact(truncated, tmp_path / "b", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _external_data_model(folder: Path, location: str) -> Path:
    weights = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    weights.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "64")):
        weights.external_data.add(key=key, value=value)
    weights.ClearField("raw_data")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "ext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_external_data_traversal_is_refused(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 64)
    folder = tmp_path / "model"
    folder.mkdir()
    model = _external_data_model(folder, "../secret.bin")
    with pytest.raises(ModelError, match="path traversal"):
        build_artifact(model, tmp_path / "out", progress=False)


def test_external_data_is_folded_into_the_engine(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(np.full((4, 4), 2.0, np.float32).tobytes())
    model = _external_data_model(folder, "weights.bin")
    out = tmp_path / "out"
    build_artifact(model, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx"]
    with open_artifact(out, ORT_CONFIG, in_pipeline=False) as backend:
        np.testing.assert_allclose(backend.infer({"x": np.ones((1, 4), np.float32)})[0], np.full((1, 4), 8.0))


def test_calibration_table_of_another_model_is_refused(tmp_path, table):
    other = tmp_path / "other.onnx"
    proto = onnx.load(str(DIGITS))
    proto.metadata_props.add(key="note", value="a different file")
    onnx.save(proto, str(other))
    with pytest.raises(ConfigError, match="another model"):
        build_artifact(other, tmp_path / "a", BuildOptions(precision="int8", calibration=table), progress=False)
    table_file = write_table(table, tmp_path / "digits.calib.json")
    with pytest.raises(ConfigError, match="model_sha256: the table was made for another model"):
        build_artifact(other, tmp_path / "b", BuildOptions(precision="int8", calibration=table_file), progress=False)


def test_int8_needs_calibration_and_calibration_needs_data(tmp_path):
    with pytest.raises(ModelError, match="int8 needs calibration"):
        build_artifact(DIGITS, tmp_path / "a", BuildOptions(precision="int8"), progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LeptonError, match="no images"):
        build_artifact(DIGITS, tmp_path / "b", BuildOptions(precision="int8", calibration_data=str(empty)),
                       progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_unsupported_operators_are_named(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Warp", ["a"], ["y"], domain="com.acme")],
        "custom", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.acme", 1)])
    model.ir_version = 8
    path = tmp_path / "custom.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match=re.escape("onnxruntime cannot run these operators: com.acme:Warp")):
        build_artifact(path, tmp_path / "out", progress=False)


def test_other_refusals(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="fp16 is not built for onnxruntime-cpu"):
        build_artifact(DIGITS, tmp_path / "a", BuildOptions(precision="fp16"), progress=False)
    with pytest.raises(ConfigError, match="unknown target 'tpu'"):
        build_artifact(DIGITS, tmp_path / "a", BuildOptions(target="tpu"), progress=False)
    block_tensorrt(monkeypatch)
    with pytest.raises(BackendUnavailable, match="pip install tensorrt"):
        build_artifact(DIGITS, tmp_path / "a", BuildOptions(target="tensorrt"), progress=False)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not an artifact directory"):
        build_artifact(DIGITS, precious, progress=False)
    assert (precious / "notes.txt").read_text() == "keep me"


# -- verification -------------------------------------------------------------------------------

def test_verify_catches_a_changed_engine(tmp_path, fp32_artifact):
    artifact = _copy(fp32_artifact, tmp_path)
    engine = artifact / "model.onnx"
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine.write_bytes(bytes(data))
    assert verify_artifact(artifact) == ["engine.sha256: the engine file changed since it was built (corrupt or "
                                         "replaced)"]


def test_verify_catches_a_truncated_or_missing_engine(tmp_path, fp32_artifact):
    artifact = _copy(fp32_artifact, tmp_path)
    engine = artifact / "model.onnx"
    size = engine.stat().st_size
    with open(engine, "r+b") as f:
        f.truncate(size - 100)
    [problem] = verify_artifact(artifact)
    assert problem.startswith(f"engine.size: built {size} bytes, the file has {size - 100}")
    engine.unlink()
    assert verify_artifact(artifact) == [f"engine.file: model.onnx is missing from {artifact}"]


def test_verify_catches_another_runtime_version(fp32_artifact):
    env = current_environment("onnxruntime-cpu")
    assert verify_artifact(fp32_artifact, target_env=env) == []
    env["runtime"]["onnxruntime"] = "9.9.0"
    built = read_manifest(fp32_artifact).runtime.onnxruntime
    assert verify_artifact(fp32_artifact, target_env=env) == [
        f"runtime.onnxruntime: built with {built}, running 9.9.0"]
    major, minor, *_ = ort.__version__.split(".")
    env["runtime"]["onnxruntime"] = f"{major}.{minor}.99"
    assert verify_artifact(fp32_artifact, target_env=env) == [], "a patch release keeps ONNX engines"


def test_int8_engine_checks_the_cpu_int8_instructions(tmp_path, int8_artifact, fp32_artifact):
    artifact = _copy(int8_artifact, tmp_path)
    _edit(artifact, device__instruction_sets=["avx2", "fma", "avx512f", "avx512_vnni"])
    env = current_environment("onnxruntime-cpu")
    env["device"]["instruction_sets"] = ["avx2", "fma", "avx512f"]
    assert verify_artifact(artifact, target_env=env) == [
        "device.instruction_sets: built with avx512_vnni, running none"]
    env["device"]["instruction_sets"] = ["avx2", "avx512_vnni"]
    assert verify_artifact(artifact, target_env=env) == [], "only int8 dot-product instructions matter"
    env["device"]["instruction_sets"] = []
    assert verify_artifact(fp32_artifact, target_env=env) == [], "fp32 engines do not depend on them"


def test_verify_catches_an_edited_manifest(tmp_path, fp32_artifact):
    artifact = _copy(fp32_artifact, tmp_path)
    _edit(artifact, refingerprint=False, runtime__onnxruntime="0.1.0")
    problems = verify_artifact(artifact)
    assert any(p.startswith("fingerprint: manifest.json was edited") for p in problems)
    assert any(p.startswith("runtime.onnxruntime: built with 0.1.0") for p in problems)


def test_verify_reports_unreadable_manifests(tmp_path, fp32_artifact):
    artifact = _copy(fp32_artifact, tmp_path)
    (artifact / "manifest.json").write_text("{ half a manifest")
    [problem] = verify_artifact(artifact)
    assert problem.startswith("manifest: ") and "unreadable manifest" in problem
    data = json.loads(fp32_artifact.joinpath("manifest.json").read_text())
    data["engine"]["file"] = "../../etc/passwd"
    (artifact / "manifest.json").write_text(json.dumps(data))
    assert "path traversal" in verify_artifact(artifact)[0]
    data["format_version"] = 99
    (artifact / "manifest.json").write_text(json.dumps(data))
    assert "newer lepton-edge" in verify_artifact(artifact)[0]
    (artifact / "manifest.json").unlink()
    assert "not an artifact directory" in verify_artifact(artifact)[0]


def test_open_refuses_with_every_mismatch(tmp_path, fp32_artifact):
    artifact = _copy(fp32_artifact, tmp_path)
    _edit(artifact, runtime__onnxruntime="0.1.0")
    with open(artifact / "model.onnx", "ab") as f:
        f.write(b"garbage")
    with pytest.raises(ModelError) as err:
        open_artifact(artifact, ORT_CONFIG)
    message = str(err.value)
    assert "cannot be used on this machine" in message
    assert "engine.size:" in message and "runtime.onnxruntime: built with 0.1.0" in message
    assert "lepton-edge build --model digits_classifier.onnx --target onnxruntime-cpu --precision fp32" in message


def test_open_refuses_the_wrong_backend_type(fp32_artifact):
    with pytest.raises(ConfigError, match=re.escape("built for onnxruntime-cpu, but backend.type is 'tensorrt'")):
        open_artifact(fp32_artifact, TensorRTBackendConfig(type="tensorrt"))


# -- TensorRT through the fakes -----------------------------------------------------------------

@pytest.fixture
def fake_trt(monkeypatch):
    gpu = FakeGpu()
    install_cuda_python(monkeypatch, gpu)
    block_pycuda(monkeypatch)
    # the CUDA TensorRT runs with: here none is loaded or installed, on a Jetson JetPack's 12.6
    monkeypatch.setattr(platform, "tensorrt_cuda_version", lambda *args: "12.6")
    return install_tensorrt(monkeypatch, "10.3.0", gpu)


def test_tensorrt_fp16_artifact(tmp_path, fake_trt):
    timing = tmp_path / "timing.cache"
    options = TrtOptions(workspace_mb=256, timing_cache=timing)
    manifest = build_artifact(DIGITS, tmp_path / "trt", BuildOptions(target="tensorrt", precision="fp16",
                              trt=options, validation_data=DIGITS_HELDOUT), progress=False)
    assert sorted(p.name for p in (tmp_path / "trt").iterdir()) == ["manifest.json", "model.plan"]
    assert manifest.target == "tensorrt" and manifest.engine.file == "model.plan"
    assert manifest.runtime.tensorrt == "10.3.0" and manifest.runtime.cuda
    assert manifest.device.gpu_name == "Fake Orin (simulated)" and manifest.device.compute_capability == "8.7"
    assert manifest.profiles == [{"input": [[1, 1, 8, 8]] * 3}], "dynamic batch pinned to 1 by default"
    assert manifest.builder.workspace_mb == 256 and manifest.builder.timing_cache == str(timing)
    assert "FP16" in manifest.builder.builder_flags
    assert timing.is_file(), "the timing cache was written back"
    assert manifest.accuracy.drop <= 1.0
    with open_artifact(tmp_path / "trt", TensorRTBackendConfig(type="tensorrt", warmup_runs=0)) as backend:
        images = np.load(DIGITS_HELDOUT)["images"][:1].astype(np.float32)[:, None] / 255
        assert backend.infer({"input": images})[0].shape == (1, 10)
        assert backend.metadata["lepton.task"] == "classify", "source metadata reaches TensorRT backends"


def test_tensorrt_int8_modes(tmp_path, fake_trt, table):
    qdq = build_artifact(DIGITS, tmp_path / "qdq", BuildOptions(target="tensorrt", precision="int8",
                         calibration=table), progress=False)
    assert qdq.builder.int8_mode == "qdq" and qdq.builder.strongly_typed is True
    legacy = build_artifact(DIGITS, tmp_path / "legacy", BuildOptions(target="tensorrt", precision="int8",
                            calibration=table, trt=TrtOptions(int8_mode="legacy-cache")), progress=False)
    assert legacy.builder.int8_mode == "legacy-cache" and "INT8" in legacy.builder.builder_flags
    assert fake_trt._state["replayed_caches"] == ["MinMaxCalibration"], "a minmax table replays as minmax"
    assert legacy.fingerprint != qdq.fingerprint
    for name in ("qdq", "legacy"):
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["manifest.json", "model.plan"]
        assert verify_artifact(tmp_path / name) == []


def test_calibrate_minmax_cache_builds_with_the_minmax_calibrator(tmp_path, fake_trt, table):
    cache = write_tensorrt_cache(table, tmp_path / "digits.cache", trt_version=100300)
    assert cache.read_text().startswith("TRT-100300-MinMaxCalibration\n")
    profile = {"input": ((1, 1, 8, 8), (1, 1, 8, 8), (1, 1, 8, 8))}
    _, facts = build_engine(DIGITS, precision="int8", calibration_cache=cache, profiles=[profile])
    assert facts["int8_mode"] == "calibration-cache"
    assert fake_trt._state["replayed_caches"] == ["MinMaxCalibration"]
    assert fake_trt._state["builds"][-1]["int8"] == "calibrated-from-cache"


def test_tensorrt_dla_core_is_recorded(tmp_path, monkeypatch):
    gpu = FakeGpu()
    install_cuda_python(monkeypatch, gpu)
    block_pycuda(monkeypatch)
    install_tensorrt(monkeypatch, "8.6.1", gpu, dla_cores=2)
    manifest = build_artifact(DIGITS, tmp_path / "dla", BuildOptions(target="tensorrt", precision="fp16",
                              trt=TrtOptions(dla_core=1)), progress=False)
    assert manifest.builder.dla_core == 1 and "GPU_FALLBACK" in manifest.builder.builder_flags
    assert manifest.runtime.tensorrt == "8.6.1"
    # DLA runs fixed shapes: the dynamic batch is pinned (min = opt = max), a range is refused.
    assert manifest.profiles and all(len({tuple(s) for s in shapes}) == 1
                                     for profile in manifest.profiles for shapes in profile.values())
    name = manifest.source_model.inputs[0].name
    ranged = [{name: ((1, 1, 8, 8), (1, 1, 8, 8), (4, 1, 8, 8))}]
    with pytest.raises(ConfigError, match="DLA needs fixed shapes"):
        build_artifact(DIGITS, tmp_path / "ranged", BuildOptions(target="tensorrt", precision="fp16",
                       trt=TrtOptions(dla_core=1, profiles=ranged)), progress=False)
    with pytest.raises(ConfigError, match=r"dla_core=3 is not available: this device has cores 0\.\.1"):
        build_artifact(DIGITS, tmp_path / "bad", BuildOptions(target="tensorrt", precision="fp16",
                       trt=TrtOptions(dla_core=3)), progress=False)
    assert not (tmp_path / "bad").exists()


def test_tensorrt_engine_after_an_upgrade(tmp_path, monkeypatch, fake_trt):
    build_artifact(DIGITS, tmp_path / "trt", BuildOptions(target="tensorrt", precision="fp32"), progress=False)
    gpu = FakeGpu()
    install_cuda_python(monkeypatch, gpu)
    install_tensorrt(monkeypatch, "10.7.0", gpu)
    assert verify_artifact(tmp_path / "trt") == ["runtime.tensorrt: built with 10.3.0, running 10.7.0"]
    with pytest.raises(ModelError, match=re.escape("runtime.tensorrt: built with 10.3.0, running 10.7.0")):
        open_artifact(tmp_path / "trt", TensorRTBackendConfig(type="tensorrt"))
    other_gpu = FakeGpu(name="Fake RTX", capability=(8, 9))
    install_cuda_python(monkeypatch, other_gpu)
    install_tensorrt(monkeypatch, "10.3.0", other_gpu)
    assert verify_artifact(tmp_path / "trt") == [
        "device.gpu_name: built with Fake Orin (simulated), running Fake RTX",
        "device.compute_capability: built with 8.7, running 8.9",
    ]


# -- CLI ----------------------------------------------------------------------------------------

def _run(command, argv):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return command.run(parser.parse_args(argv))


def test_cli_build_and_inspect(tmp_path, capsys, table):
    out = tmp_path / "digits-int8"
    table_file = write_table(table, tmp_path / "digits.calib.json")
    assert _run(build_command, ["--model", str(DIGITS), "--precision", "int8", "--calibration",
                                                 str(table_file), "--validation", str(DIGITS_HELDOUT), "--out",
                                                 str(out)]) == 0
    printed = capsys.readouterr().out
    assert "precision:   int8" in printed and "accuracy:    top-1" in printed
    assert _run(inspect_command, [str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"fingerprint: {read_manifest(out).fingerprint}" in printed
    assert "matches this machine: yes" in printed
    _edit(out, runtime__onnxruntime="0.1.0")
    assert _run(inspect_command, [str(out), "--json"]) == 1
    info = json.loads(capsys.readouterr().out)
    assert info["mismatches"] == [f"runtime.onnxruntime: built with 0.1.0, running {ort.__version__}"]
    assert _run(inspect_command, [str(DIGITS)]) == 0
    printed = capsys.readouterr().out
    assert "input:       input ['batch', 1, 8, 8] float32" in printed and "opset:       17" in printed
    assert "all operators supported" in printed


def test_cli_build_needs_model_and_out():
    with pytest.raises(ConfigError, match="needs --model"):
        _run(build_command, ["--model", str(DIGITS)])


def test_artifact_files_are_readable_by_others(fp32_artifact):
    assert os.stat(fp32_artifact).st_mode & 0o055 == 0o055


# -- the shapes detector (trained by models/train_shapes_detector.py) ---------------------------

SHAPES = REPO / "models" / "shapes_detector.onnx"


@pytest.mark.skipif(not SHAPES.is_file(), reason="models/shapes_detector.onnx is not trained yet")
def test_shapes_detector_int8_artifact(tmp_path):
    heldout = tmp_path / "heldout.json"
    heldout.write_text(json.dumps({"generator": "shapes", "width": 640, "height": 480, "seeds": [1000000, 1000012]}))
    manifest = build_artifact(SHAPES, tmp_path / "shapes-int8", BuildOptions(precision="int8",
                              calibration_data=str(REPO / "calibration" / "shapes"),
                              calibration_options=CalibrationOptions(method="minmax", samples=8),
                              validation_data=heldout, max_accuracy_drop=10.0), progress=False)
    assert manifest.accuracy.metric == "mAP@0.5" and manifest.accuracy.samples == 12
    assert manifest.accuracy.reference > 0.5
    assert manifest.source_model.metadata["lepton.task"] == "detect"
    assert inspect_onnx(tmp_path / "shapes-int8" / "model.onnx").has_qdq
