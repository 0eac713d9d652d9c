"""Machine facts: the one module that reads them, fed with files as each kind of machine writes them."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

from lepton_edge.runtime import platform

X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse sse2 avx2 fma avx512f avx512bw avx512_vnni amx_int8
"""
ORIN_CPUINFO = """processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
"""


def test_x86_instruction_sets_and_model(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(X86_CPUINFO)
    facts = platform.cpu_facts(cpuinfo)
    assert facts.model == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert facts.instruction_sets == ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "amx_int8")
    assert facts.logical_cores >= 1


def test_arm_features_count_as_instruction_sets(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(ORIN_CPUINFO)
    assert platform.cpu_facts(cpuinfo).instruction_sets == ("asimd",)


def test_unreadable_cpuinfo_still_answers(tmp_path: Path) -> None:
    facts = platform.cpu_facts(tmp_path / "absent")
    assert facts.instruction_sets == () and facts.logical_cores >= 1


def test_jetson_module_from_the_device_tree(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson Orin Nano Engineering Reference Developer Kit\0")
    assert platform.jetson_model(model) == "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit"
    model.write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\0")
    assert platform.jetson_model(model) is None
    assert platform.jetson_model(tmp_path / "absent") is None


def test_l4t_release(tmp_path: Path) -> None:
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64\n")
    assert platform.l4t_release(release) == "35.4.1"
    release.write_text("garbage\n")
    assert platform.l4t_release(release) is None
    assert platform.l4t_release(tmp_path / "absent") is None


def test_cuda_toolkit_version_from_json_or_text(tmp_path: Path) -> None:
    (tmp_path / "version.json").write_text(json.dumps({"cuda": {"name": "CUDA SDK", "version": "12.6.68"}}))
    assert platform.cuda_toolkit_version(tmp_path) == "12.6.68"
    (tmp_path / "version.json").unlink()
    (tmp_path / "version.txt").write_text("CUDA Version 10.2.300\n")
    assert platform.cuda_toolkit_version(tmp_path) == "10.2.300"
    assert platform.cuda_toolkit_version(tmp_path / "absent") is None


def test_installed_runtimes_come_from_package_metadata() -> None:
    runtimes = platform.installed_runtimes()
    assert runtimes["onnxruntime"] == importlib.metadata.version("onnxruntime")
    assert "tensorrt" not in runtimes  # not installed on this machine


def test_a_machine_without_accelerators_reports_cpu() -> None:
    assert platform.available_accelerator({"onnxruntime": "1.20"}) == "cpu"
    assert platform.available_accelerator({"tensorrt": "10.3"}) == "cuda"
    assert platform.backend_accelerator("onnxruntime", ["CPUExecutionProvider"]) == "cpu"
    assert platform.backend_accelerator("onnxruntime", ["CUDAExecutionProvider"]) == "cuda"
    assert platform.backend_accelerator("tensorrt", []) == "cuda"


def test_machine_info_summarises_for_benchmarks() -> None:
    info = platform.machine_info()
    assert set(info) == {"cpu", "logical_cores", "physical_cores", "instruction_sets", "python", "onnxruntime",
                         "machine"}
    assert info["onnxruntime"] == importlib.metadata.version("onnxruntime")


def test_jetson_module_through_sysfs_when_proc_lacks_it(tmp_path: Path) -> None:
    """Containers often mount /sys but not /proc/device-tree; the module is read from either."""
    sysfs = tmp_path / "model"
    sysfs.write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\0")
    assert platform.jetson_model((tmp_path / "absent", sysfs)) == "NVIDIA Jetson AGX Orin Developer Kit"


class _Cudart:
    def __init__(self, version: int) -> None:
        self.version = version

    def cudaRuntimeGetVersion(self, pointer) -> int:
        pointer._obj.value = self.version
        return 0


def test_cuda_version_is_the_runtime_tensorrt_loaded(tmp_path: Path, monkeypatch) -> None:
    """Not cuda-python's own version: upgrading cuda-python must not look like another CUDA to the manifest."""
    from lepton_edge.runtime.backends import cuda

    maps = tmp_path / "maps"
    maps.write_text("7f00-7f10 r-xp 00000000 103:02 1234 /usr/local/cuda-12.6/targets/aarch64-linux/lib/"
                    "libcudart.so.12.6.68\n7f20-7f30 r-xp 00000000 103:02 99 /usr/lib/libnvinfer.so.10.3.0\n")
    loaded: list[str] = []

    def load(path: str) -> _Cudart:
        loaded.append(path)
        return _Cudart(12060)

    assert cuda.loaded_cudart_version(maps, load) == "12.6"
    assert loaded == ["/usr/local/cuda-12.6/targets/aarch64-linux/lib/libcudart.so.12.6.68"]
    toolkit = tmp_path / "cuda"
    toolkit.mkdir()
    (toolkit / "version.json").write_text('{"cuda": {"version": "12.2.140"}}')
    assert platform.tensorrt_cuda_version(tmp_path / "no-maps", toolkit) == "12.2"
    assert platform.tensorrt_cuda_version(tmp_path / "no-maps", tmp_path / "none") is None
