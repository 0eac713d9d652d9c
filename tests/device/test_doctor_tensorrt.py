"""doctor on a Jetson / TensorRT machine (issue 11): module, JetPack, TensorRT's CUDA and DLA cores, and the
known version mismatches, from fake device-tree and package files and the TensorRT/CUDA fakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from lepton_edge.device import doctor
from lepton_edge.runtime import platform
from tests.support.fake_cuda import FakeGpu, block_pycuda, install_cuda_python
from tests.support.fake_tensorrt import install_tensorrt

DPKG_STATUS = """Package: nvidia-l4t-core
Status: install ok installed
Version: 36.4.3-20250107174145

Package: nvidia-jetpack
Status: install ok installed
Priority: standard
Version: 6.2+b77
"""


def test_jetpack_from_the_meta_package_else_from_l4t(tmp_path: Path) -> None:
    status, release = tmp_path / "status", tmp_path / "nv_tegra_release"
    status.write_text(DPKG_STATUS)
    release.write_text("# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64\n")
    assert platform.jetpack_version(status, release) == "6.2"
    assert platform.jetpack_version(tmp_path / "absent", release) == "6.0"
    release.write_text("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64\n")
    assert platform.jetpack_version(tmp_path / "absent", release) == "5.1.2"
    assert platform.jetpack_version(tmp_path / "absent", tmp_path / "absent") is None


def test_jetson_check_reads_the_module_through_sysfs(tmp_path: Path) -> None:
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n")
    sysfs = tmp_path / "model"
    sysfs.write_bytes(b"NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\0")
    check = doctor.check_jetson(release, (tmp_path / "no-proc", sysfs), tmp_path / "no-status")
    assert check.detail == "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super, L4T 36.4.3, JetPack 6.2"


def test_tensorrt_check_reports_its_cuda_and_dla_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = FakeGpu()
    install_cuda_python(monkeypatch, gpu)
    block_pycuda(monkeypatch)
    install_tensorrt(monkeypatch, "10.3.0", gpu, dla_cores=2)
    monkeypatch.setattr(doctor, "tensorrt_cuda_version", lambda: "12.6")
    check = doctor.check_tensorrt()
    assert check == doctor.Check("tensorrt", "ok", "10.3.0; runs with CUDA 12.6; 2 DLA core(s)")


@pytest.mark.parametrize(("facts", "expected"), [
    ({"cuda_python": "13.0.2", "driver_cuda": "12.6", "tensorrt": "10.3.0", "tensorrt_cuda": "12.6",
      "l4t": "36.4.0"},
     ["cuda-python 13.0.2 is built for CUDA 13, newer than the CUDA 12.6 the driver supports (JetPack 6 ships "
      "CUDA 12.x): pip install 'cuda-python>=12,<13'",
      "cuda-python 13.0.2 (CUDA 13) differs from the CUDA 12.6 TensorRT runs with: pip install "
      "'cuda-python>=12,<13'"]),
    ({"cuda_python": "13.0.2", "driver_cuda": None, "tensorrt": None, "tensorrt_cuda": None, "l4t": None,
      "gpu_problem": "cudaGetDeviceCount failed: cudaErrorInsufficientDriver"},
     ["cuda-python 13.0.2 needs a newer driver than this one (cudaGetDeviceCount failed: "
      "cudaErrorInsufficientDriver): pin cuda-python to your CUDA's major"]),
    ({"cuda_python": "12.6.2", "driver_cuda": "12.6", "tensorrt": "11.2.0", "tensorrt_cuda": "12.6",
      "l4t": "36.4.0"},
     ["TensorRT 11.2.0 does not support JetPack 6 (L4T 36.4.0): use JetPack's TensorRT 10.x (python3-libnvinfer)",
      "TensorRT 11.2.0 has no DLA (TensorRT 11.0-11.3); DLA engines need TensorRT 10.x or 11.4.1+"]),
    ({"cuda_python": "12.6.2", "driver_cuda": "12.6", "tensorrt": "10.3.0", "tensorrt_cuda": "12.6",
      "l4t": "36.4.0"}, []),
])
def test_known_version_mismatches(facts: dict, expected: list[str]) -> None:
    assert doctor.cuda_version_mismatches(**facts) == expected


def test_version_check_warns_on_the_machine_it_finds(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = FakeGpu(driver_version=12060, runtime_version=13000)
    install_cuda_python(monkeypatch, gpu)
    block_pycuda(monkeypatch)
    install_tensorrt(monkeypatch, "10.3.0", gpu)
    monkeypatch.setattr(doctor, "installed_runtimes", lambda: {"tensorrt": "10.3.0", "cuda-python": "13.0.2"})
    monkeypatch.setattr(doctor, "tensorrt_cuda_version", lambda: "12.6")
    monkeypatch.setattr(doctor, "l4t_release", lambda: "36.4.0")
    check = doctor.check_cuda_versions()
    assert check is not None and check.status == "warn"
    assert "pip install 'cuda-python>=12,<13'" in check.detail
    monkeypatch.setattr(doctor, "installed_runtimes", lambda: {})
    assert doctor.check_cuda_versions() is None
