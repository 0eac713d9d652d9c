"""Which machine a TensorRT artifact may run on (issue 11, items 4 and 6): the Jetson module, SM and DLA core counts
in the manifest and its reuse verification, the DLA core an engine is opened on, the CUDA device it is built on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lepton_edge.config.pipeline import TensorRTBackendConfig
from lepton_edge.core.errors import ConfigError, ModelError
from lepton_edge.engines.artifacts import compute_fingerprint, open_artifact, read_manifest, verify_artifact
from lepton_edge.engines.builder import build_artifact
from lepton_edge.engines.options import BuildOptions, TrtOptions
from lepton_edge.engines.tensorrt_builder import build_engine
from lepton_edge.runtime import platform
from tests.runtime.backends.conftest import static_model
from tests.support.fake_cuda import FakeGpu, block_cuda_python, block_pycuda, install_cuda_python
from tests.support.fake_tensorrt import install_tensorrt

DIGITS = Path(__file__).resolve().parents[2] / "models" / "digits_classifier.onnx"
AGX = b"NVIDIA Jetson AGX Orin Developer Kit\0"
NANO = b"NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\0"


@pytest.fixture
def orin(monkeypatch, tmp_path):
    """A Jetson whose device tree says ``tree`` holds; the GPU says Orin, 8.7 whichever module it is."""
    tree = tmp_path / "device-tree-model"
    tree.write_bytes(AGX)
    real = platform.jetson_model
    monkeypatch.setattr(platform, "jetson_model", lambda files=None: real((tmp_path / "absent", tree)))
    monkeypatch.setattr(platform, "tensorrt_cuda_version", lambda *args: "12.6")
    gpu = FakeGpu(name="Orin", multiprocessors=16)
    install_cuda_python(monkeypatch, gpu)
    block_pycuda(monkeypatch)
    trt = install_tensorrt(monkeypatch, "10.3.0", gpu, dla_cores=2)
    return tree, gpu, trt


def _build(out: Path, **trt) -> None:
    build_artifact(DIGITS, out, BuildOptions(target="tensorrt", precision="fp16", trt=TrtOptions(**trt)),
                   progress=False)


def test_an_agx_orin_engine_is_refused_on_an_orin_nano(orin, tmp_path):
    tree, gpu, trt = orin
    _build(tmp_path / "a")
    manifest = read_manifest(tmp_path / "a")
    assert manifest.device.module == "NVIDIA Jetson AGX Orin Developer Kit"
    assert (manifest.device.multiprocessors, manifest.device.dla_cores) == (16, 2)
    assert manifest.runtime.cuda == "12.6"
    assert verify_artifact(tmp_path / "a") == []
    tree.write_bytes(NANO)  # same GPU name and compute capability, fewer SMs, no DLA
    gpu.multiprocessors = 8
    trt._state["dla_cores"] = 0
    assert verify_artifact(tmp_path / "a") == [
        "device.module: built with NVIDIA Jetson AGX Orin Developer Kit, running NVIDIA Jetson Orin Nano "
        "Engineering Reference Developer Kit Super",
        "device.multiprocessors: built with 16, running 8",
        "device.dla_cores: built with 2, running 0",
    ]
    with pytest.raises(ModelError, match=r"device\.module"):
        open_artifact(tmp_path / "a", TensorRTBackendConfig(type="tensorrt", warmup_runs=0))


def test_manifests_written_before_the_identity_keep_their_fingerprint(orin, tmp_path):
    """Counts a manifest did not record are not compared, and leave its fingerprint as it was."""
    _build(tmp_path / "a")
    path = tmp_path / "a" / "manifest.json"
    raw = json.loads(path.read_text())
    raw["device"] = {k: v for k, v in raw["device"].items() if k not in ("multiprocessors", "dla_cores")}
    manifest = read_manifest(tmp_path / "a").model_validate(raw)
    raw["fingerprint"] = compute_fingerprint(manifest)
    path.write_text(json.dumps(raw))
    assert verify_artifact(tmp_path / "a") == []
    assert raw["fingerprint"] == compute_fingerprint(manifest.model_copy(
        update={"device": manifest.device.model_copy(update={"multiprocessors": None})}))


def test_a_dla_artifact_opens_on_its_core(orin, tmp_path):
    _, _, trt = orin
    _build(tmp_path / "dla", dla_core=1)
    assert read_manifest(tmp_path / "dla").builder.dla_core == 1
    with open_artifact(tmp_path / "dla", TensorRTBackendConfig(type="tensorrt", warmup_runs=0)) as backend:
        assert backend.describe()["dla_core"] == 1
    assert ("Runtime.DLA_core", (1,)) in trt.calls
    with pytest.raises(ConfigError, match=r"built for DLA core 1, but backend\.dla_core is 0"):
        open_artifact(tmp_path / "dla", TensorRTBackendConfig(type="tensorrt", dla_core=0))


def test_the_build_runs_on_the_chosen_device_and_records_it(monkeypatch, tmp_path):
    gpu = FakeGpu(device_count=2)
    install_cuda_python(monkeypatch, gpu)
    block_pycuda(monkeypatch)
    install_tensorrt(monkeypatch, "10.3.0", gpu)
    _, facts = build_engine(static_model(tmp_path / "m.onnx"), precision="fp32", device=1)
    assert facts["device_index"] == 1
    assert "cudaSetDevice" in gpu.calls  # made current on the building thread
    block_cuda_python(monkeypatch)
    with pytest.raises(ConfigError, match="CUDA device 1 needs cuda-python or pycuda"):
        build_engine(static_model(tmp_path / "m.onnx"), precision="fp32", device=1)


def test_an_artifact_built_on_device_1_records_it_and_verifies_there(monkeypatch, tmp_path):
    gpu = FakeGpu(device_count=2)
    install_cuda_python(monkeypatch, gpu)
    block_pycuda(monkeypatch)
    install_tensorrt(monkeypatch, "10.3.0", gpu)
    monkeypatch.setattr(platform, "tensorrt_cuda_version", lambda *args: "12.6")
    _build(tmp_path / "a", device=1)
    assert read_manifest(tmp_path / "a").device.device_index == 1
    assert verify_artifact(tmp_path / "a", device_index=1) == []
    with open_artifact(tmp_path / "a", TensorRTBackendConfig(type="tensorrt", device=1, warmup_runs=0)):
        pass
