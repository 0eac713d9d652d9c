"""Facts about this machine, read in one place: CPU and instruction sets, memory, installed inference runtimes,
CUDA, TensorRT, cuDNN, Jetson module and L4T release, GPU name and compute capability.

The engine fingerprint (``engines.artifacts``), the device's birth capabilities, ``doctor`` and ``bench`` all ask
this module. TensorRT and CUDA are asked through their one wrapper each (``runtime.backends.tensorrt`` and
``runtime.backends.cuda``), only when a caller wants accelerator facts; every reader here returns None (or an
empty result) where a fact is absent instead of raising.

Lives in ``runtime`` rather than ``core`` because the accelerator facts come from the runtime's TensorRT and CUDA
wrappers.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from lepton_edge.runtime.backends.cuda import PROC_MAPS, cuda_adapter, loaded_cudart_version
from lepton_edge.runtime.backends.tensorrt import dla_core_count, import_tensorrt

log = logging.getLogger(__name__)

INFERENCE_ISA = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "neon", "asimd")
"""Instruction sets that change inference speed (VNNI and AMX make INT8 fast on x86, NEON/ASIMD on ARM)."""
CUDA_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider"})
TEGRA_RELEASE = Path("/etc/nv_tegra_release")
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
FIRMWARE_MODEL = Path("/sys/firmware/devicetree/base/model")
"""The same device-tree node through sysfs (/proc/device-tree links to it; containers often mount only /sys)."""
CUDA_ROOT = Path("/usr/local/cuda")
CUDNN_HEADERS = (
    Path("/usr/include/cudnn_version.h"),
    Path("/usr/include/aarch64-linux-gnu/cudnn_version.h"),
    Path("/usr/include/x86_64-linux-gnu/cudnn_version.h"),
    Path("/usr/local/cuda/include/cudnn_version.h"),
)
_RUNTIME_DISTRIBUTIONS = (
    ("onnxruntime", "onnxruntime"),
    ("onnxruntime-gpu", "onnxruntime"),
    ("tensorrt", "tensorrt"),
    ("cuda-python", "cuda-python"),
    ("pycuda", "pycuda"),
)


@dataclass(frozen=True)
class CpuFacts:
    model: str
    logical_cores: int
    physical_cores: int | None
    instruction_sets: tuple[str, ...]
    machine: str


def cpu_facts(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuFacts:
    """The CPU model, core counts and the inference-relevant instruction sets it has."""
    flags: set[str] = set()
    model = platform.processor()
    try:
        for line in cpuinfo.read_text().splitlines():
            key = line.split(":", 1)[0].strip()
            if key in ("flags", "Features") and not flags:  # x86 says flags, ARM says Features
                flags = set(line.split(":", 1)[1].split())
            elif key == "model name":
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return CpuFacts(
        model=model,
        logical_cores=os.cpu_count() or 1,
        physical_cores=psutil.cpu_count(logical=False),
        instruction_sets=tuple(f for f in INFERENCE_ISA if f in flags),
        machine=platform.machine(),
    )


def memory_bytes() -> int:
    return int(psutil.virtual_memory().total)


def installed_runtimes() -> dict[str, str]:
    """Inference runtimes installed here, name -> version (from package metadata, nothing imported), plus the
    system CUDA toolkit's version where one is installed."""
    runtimes: dict[str, str] = {}
    for dist, name in _RUNTIME_DISTRIBUTIONS:
        try:
            runtimes.setdefault(name, importlib.metadata.version(dist)[:128])
        except importlib.metadata.PackageNotFoundError:
            continue
    cuda = cuda_toolkit_version()
    if cuda:
        runtimes["cuda"] = cuda
    return runtimes


def onnxruntime_version() -> str | None:
    try:
        return importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        try:
            return importlib.metadata.version("onnxruntime-gpu")
        except importlib.metadata.PackageNotFoundError:
            return None


def cuda_toolkit_version(root: Path = CUDA_ROOT) -> str | None:
    """The CUDA toolkit under ``root`` (``version.json``, or ``version.txt`` on CUDA 10), or None."""
    try:
        data = json.loads((root / "version.json").read_text())
        return str(data["cuda"]["version"])[:128]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        text = (root / "version.txt").read_text().strip()  # "CUDA Version 10.2.300"
        return text.rsplit(" ", 1)[-1][:128] or None
    except OSError:
        return None


def jetson_model(model_file: Path | tuple[Path, ...] = (DEVICE_TREE_MODEL, FIRMWARE_MODEL)) -> str | None:
    """The Jetson module from the device tree (``NVIDIA Jetson AGX Orin Developer Kit``), or None elsewhere.

    Every Orin reports the GPU name "Orin" and compute capability 8.7; this string (with the SM and DLA core
    counts) is what tells an AGX Orin from an Orin NX or Nano.
    """
    for path in (model_file,) if isinstance(model_file, Path) else model_file:
        try:
            model = path.read_bytes().rstrip(b"\0").decode(errors="replace").strip()
        except OSError:
            continue
        return model[:256] if "jetson" in model.lower() or "nvidia" in model.lower() else None
    return None


def l4t_release(release_file: Path = TEGRA_RELEASE) -> str | None:
    """The Jetson Linux (L4T) release: ``# R36 (release), REVISION: 3.0, ...`` -> ``36.3.0``; None elsewhere."""
    try:
        first = release_file.read_text(errors="replace").splitlines()[0]
    except (OSError, IndexError):
        return None
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", first)
    return f"{match.group(1)}.{match.group(2)}" if match else None


DPKG_STATUS = Path("/var/lib/dpkg/status")
L4T_JETPACK = (("36.4.4", "6.2.1"), ("36.4.3", "6.2"), ("36.4", "6.1"), ("36.3", "6.0"), ("36.2", "6.0 DP"),
               ("35.6", "5.1.4"), ("35.5", "5.1.3"), ("35.4", "5.1.2"), ("35.3", "5.1.1"), ("35.2", "5.1"))
"""L4T release prefix -> the JetPack that ships it (NVIDIA's JetPack archive), for systems without the
``nvidia-jetpack`` meta-package."""


def jetpack_version(status: Path = DPKG_STATUS, release_file: Path = TEGRA_RELEASE) -> str | None:
    """The JetPack release: the installed ``nvidia-jetpack`` package's version (``6.1+b123`` -> ``6.1``), else
    the JetPack of the L4T release (:data:`L4T_JETPACK`); None off Jetson or for an unknown release."""
    try:
        text = status.read_text(errors="replace")
    except OSError:
        text = ""
    for block in text.split("\n\n"):
        if re.search(r"^Package: nvidia-jetpack$", block, re.M) and re.search(r"^Status: .* installed$", block, re.M):
            match = re.search(r"^Version: ([0-9.]+)", block, re.M)
            if match:
                return match.group(1)
    release = l4t_release(release_file)
    if release is None:
        return None
    for prefix, jetpack in L4T_JETPACK:
        if release == prefix or release.startswith(prefix + "."):
            return jetpack
    return None


def cudnn_version(headers: tuple[Path, ...] = CUDNN_HEADERS) -> str | None:
    for header in headers:
        try:
            text = header.read_text(errors="replace")
        except OSError:
            continue
        parts = [re.search(rf"#define\s+CUDNN_{key}\s+(\d+)", text) for key in ("MAJOR", "MINOR", "PATCHLEVEL")]
        if all(parts):
            return ".".join(m.group(1) for m in parts)  # type: ignore[union-attr]
    return None


def probe_tensorrt() -> tuple[str | None, str | None]:
    """(version, None) with the installed TensorRT's version as its bindings report it, or (None, why not)."""
    try:
        return str(import_tensorrt().__version__), None
    except Exception as e:  # BackendUnavailable, or a broken installation (OSError from libnvinfer)
        return None, f"{type(e).__name__}: {e}"


def tensorrt_version() -> str | None:
    return probe_tensorrt()[0]


def tensorrt_cuda_version(maps: Path = PROC_MAPS, toolkit: Path = CUDA_ROOT) -> str | None:
    """The CUDA version TensorRT runs with (major.minor): the CUDA runtime library loaded in this process once
    TensorRT is imported, else the CUDA toolkit installed with it (JetPack's ``/usr/local/cuda``); None when
    neither is found. Not cuda-python's version, which follows the pip package and not the engine."""
    loaded = loaded_cudart_version(maps)
    if loaded:
        return loaded
    installed = cuda_toolkit_version(toolkit)
    return ".".join(installed.split(".")[:2]) if installed else None


def probe_dla_cores() -> tuple[int | None, str | None]:
    """(DLA cores TensorRT can use, None), or (None, why not) where TensorRT is absent or fails."""
    try:
        return dla_core_count(import_tensorrt()), None
    except Exception as e:  # BackendUnavailable, or a TensorRT that cannot start here
        return None, f"{type(e).__name__}: {e}"


def probe_gpu(device: int = 0) -> tuple[dict[str, Any], str | None]:
    """(facts, None) with the CUDA package, runtime and driver versions, GPU name, compute capability and SM
    count of ``device``, or ({}, why not) where CUDA is absent or unusable."""
    try:
        with cuda_adapter(device) as cuda:
            major, minor = cuda.compute_capability()
            return {
                "cuda_package": cuda.package,
                "cuda_runtime": cuda.runtime_version(),
                "cuda_driver": cuda.driver_version(),
                "gpu": cuda.device_name(),
                "compute_capability": f"{major}.{minor}",
                "multiprocessors": cuda.multiprocessor_count(),
                "device_index": device,
            }, None
    except Exception as e:  # never fail a report because CUDA is absent or broken
        log.debug("no CUDA device information: %s", e)
        return {}, str(e)


def gpu_facts(device: int = 0) -> dict[str, Any]:
    return probe_gpu(device)[0]


def accelerator_facts(device: int = 0, *, tegra_release: Path = TEGRA_RELEASE,
                      cudnn_headers: tuple[Path, ...] = CUDNN_HEADERS,
                      model_files: tuple[Path, ...] = (DEVICE_TREE_MODEL, FIRMWARE_MODEL),
                      maps: Path = PROC_MAPS, cuda_root: Path = CUDA_ROOT) -> dict[str, Any]:
    """TensorRT, CUDA, cuDNN, L4T, Jetson module and GPU facts of ``device``, whichever are found (keys absent
    otherwise). ``cuda`` is the CUDA TensorRT runs with (:func:`tensorrt_cuda_version`), ``cuda_runtime`` the
    CUDA package's own; ``dla_cores`` is asked of TensorRT."""
    trt = tensorrt_version()
    facts: dict[str, Any] = {"tensorrt": trt, **gpu_facts(device),
                             "cudnn": cudnn_version(cudnn_headers), "l4t": l4t_release(tegra_release),
                             "module": jetson_model(model_files)}
    if trt is not None:
        facts["cuda"] = tensorrt_cuda_version(maps, cuda_root)
        facts["dla_cores"] = probe_dla_cores()[0]
    return {key: value for key, value in facts.items() if value is not None}


def physical_cores() -> int:
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def available_accelerator(runtimes: dict[str, str]) -> str:
    """What this machine offers to run models on (asked while no model is loaded): the Jetson module, else
    ``cuda`` when TensorRT is installed or onnxruntime offers a CUDA provider, else ``cpu``."""
    jetson = jetson_model()
    if jetson:
        return jetson
    if "tensorrt" in runtimes:
        return "cuda"
    import onnxruntime  # the runtime's own dependency, imported late: it costs a third of a second

    return "cuda" if CUDA_PROVIDERS & set(onnxruntime.get_available_providers()) else "cpu"


def backend_accelerator(backend_name: str, providers: list[str]) -> str:
    """What a loaded backend runs on: the Jetson module, else ``cuda`` for TensorRT or a CUDA provider, else
    ``cpu``."""
    jetson = jetson_model()
    if jetson:
        return jetson
    return "cuda" if backend_name == "tensorrt" or CUDA_PROVIDERS & set(providers) else "cpu"


def machine_info() -> dict[str, Any]:
    """A summary for benchmark reports: CPU, cores, instruction sets, Python and onnxruntime versions."""
    cpu = cpu_facts()
    return {
        "cpu": cpu.model,
        "logical_cores": cpu.logical_cores,
        "physical_cores": cpu.physical_cores,
        "instruction_sets": list(cpu.instruction_sets),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime_version(),
        "machine": cpu.machine,
    }
