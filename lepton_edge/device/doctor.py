"""``lepton-edge doctor``: check that this machine can run the service, and say what to fix.

Each check returns a :class:`Check` (ok, warn or fail, with a detail line). Only failures make the command
exit non-zero: a missing optional part (TensorRT on a CPU box, GStreamer when no CSI camera is used) is a
warning, unless the given config needs it. Optional packages are imported inside the checks, never at
module level, so ``doctor`` runs on a machine that lacks them.
"""

from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lepton_edge import __version__
from lepton_edge.config.device import load_config
from lepton_edge.core.errors import ConfigError, LeptonError
from lepton_edge.runtime.backends import create_backend
from lepton_edge.runtime.backends.cuda import available_packages
from lepton_edge.runtime.platform import (
    DEVICE_TREE_MODEL,
    DPKG_STATUS,
    FIRMWARE_MODEL,
    TEGRA_RELEASE,
    installed_runtimes,
    jetpack_version,
    jetson_model,
    l4t_release,
    probe_dla_cores,
    probe_gpu,
    probe_tensorrt,
    tensorrt_cuda_version,
)

Status = Literal["ok", "warn", "fail"]
GIB = 1024**3
MIN_FREE_BYTES = GIB
BROKER_TIMEOUT_S = 3.0
SERVICE_STATE_DIR = Path("/var/lib/lepton-edge")
SERVICE_CACHE_DIR = Path("/var/cache/lepton-edge")
EARLIEST_PLAUSIBLE_TIME = 1735689600.0  # 2025-01-01: a clock before this was reset (RTC without battery)


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str
    status: Status
    detail: str


# ------------------------------------------------------------------------------------- environment


def check_python() -> Check:
    return Check("python", "ok", f"{platform.python_version()} at {sys.executable}")


def check_lepton_edge() -> Check:
    from importlib import metadata

    try:
        installed = metadata.version("lepton-edge")
    except metadata.PackageNotFoundError:
        return Check("lepton-edge", "warn", f"{__version__} imported from {Path(__file__).parent}, but not "
                     "installed as a package (pip install .)")
    if installed != __version__:
        return Check("lepton-edge", "warn", f"imported {__version__} but the installed package says {installed}: "
                     "reinstall (pip install .)")
    return Check("lepton-edge", "ok", f"{__version__} at {Path(__file__).parent}")


def check_onnxruntime(config: Any = None) -> Check:
    try:
        import onnxruntime as ort
    except ImportError as e:
        return Check("onnxruntime", "fail", f"cannot import onnxruntime ({e}): pip install onnxruntime "
                     "(onnxruntime-gpu on NVIDIA GPUs)")
    available = ort.get_available_providers()
    detail = f"{ort.__version__}; providers: {', '.join(available)}"
    backend = getattr(config, "backend", None)
    if getattr(backend, "type", None) == "onnxruntime":
        missing = [p for p in backend.providers if p not in available]
        if missing:
            return Check("onnxruntime", "warn", f"{detail}; the config asks for {', '.join(missing)}, not "
                         "available here: those are skipped")
    return Check("onnxruntime", "ok", detail)


def _needs_tensorrt(config: Any) -> bool:
    return getattr(getattr(config, "backend", None), "type", None) == "tensorrt"


def check_tensorrt(config: Any = None) -> Check:
    needed = _needs_tensorrt(config)
    version, problem = probe_tensorrt()
    if version is None:
        status: Status = "fail" if needed else "warn"
        why = "the config's backend is tensorrt" if needed else "only needed for TensorRT engines"
        return Check("tensorrt", status, f"not available ({problem}); {why}. On Jetson it comes "
                     "with JetPack (python3-libnvinfer), elsewhere: pip install tensorrt")
    cuda = tensorrt_cuda_version()
    dla, why = probe_dla_cores()
    dla_text = f"{dla} DLA core(s)" if dla is not None else f"DLA cores unknown ({why})"
    return Check("tensorrt", "ok", f"{version}; runs with CUDA {cuda or 'unknown (no libcudart loaded, no toolkit)'}"
                 f"; {dla_text}")


def _major(version: str | None) -> int | None:
    match = re.match(r"\s*(\d+)", version or "")
    return int(match.group(1)) if match else None


def cuda_version_mismatches(*, cuda_python: str | None, driver_cuda: str | None, tensorrt: str | None,
                            tensorrt_cuda: str | None, l4t: str | None, gpu_problem: str | None = None) -> list[str]:
    """The known version mismatches between cuda-python, the driver, TensorRT and JetPack, as advice lines."""
    found = []
    python_major, driver_major = _major(cuda_python), _major(driver_cuda)
    trt_major, trt_cuda_major = _major(tensorrt), _major(tensorrt_cuda)
    pin = driver_major or trt_cuda_major
    pin_advice = f"pip install 'cuda-python>={pin},<{pin + 1}'" if pin else "pin cuda-python to your CUDA's major"
    if python_major and driver_major and python_major > driver_major:
        found.append(f"cuda-python {cuda_python} is built for CUDA {python_major}, newer than the CUDA {driver_cuda} "
                     f"the driver supports (JetPack 6 ships CUDA 12.x): {pin_advice}")
    elif python_major and gpu_problem and "insufficientdriver" in gpu_problem.replace(" ", "").lower():
        found.append(f"cuda-python {cuda_python} needs a newer driver than this one ({gpu_problem}): {pin_advice}")
    if python_major and trt_cuda_major and python_major != trt_cuda_major:
        found.append(f"cuda-python {cuda_python} (CUDA {python_major}) differs from the CUDA {tensorrt_cuda} TensorRT "
                     f"runs with: {pin_advice}")
    if trt_major and trt_major >= 11 and l4t and _major(l4t) == 36:
        found.append(f"TensorRT {tensorrt} does not support JetPack 6 (L4T {l4t}): use JetPack's TensorRT 10.x "
                     "(python3-libnvinfer)")
    if tensorrt and re.match(r"11\.[0-3]\.", tensorrt) and l4t:
        found.append(f"TensorRT {tensorrt} has no DLA (TensorRT 11.0-11.3); DLA engines need TensorRT 10.x or 11.4.1+")
    return found


def check_cuda_versions(config: Any = None) -> Check | None:
    """Warn about the known CUDA / cuda-python / TensorRT / JetPack mismatches (skipped with neither installed)."""
    runtimes = installed_runtimes()
    if "tensorrt" not in runtimes and "cuda-python" not in runtimes:
        return None
    device = getattr(getattr(config, "backend", None), "device", 0)
    gpu, problem = probe_gpu(device)
    tensorrt = probe_tensorrt()[0]
    facts = {
        "cuda_python": runtimes.get("cuda-python"), "driver_cuda": gpu.get("cuda_driver"), "tensorrt": tensorrt,
        "tensorrt_cuda": tensorrt_cuda_version() if tensorrt else None, "l4t": l4t_release(),
    }
    found = cuda_version_mismatches(**facts, gpu_problem=problem)
    if found:
        return Check("cuda-versions", "warn", "\n".join(found))
    shown = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in facts.items() if v)
    return Check("cuda-versions", "ok", f"consistent: {shown}")


def check_cuda(config: Any = None) -> Check:
    needed = _needs_tensorrt(config)
    bad: Status = "fail" if needed else "warn"
    packages = available_packages()
    if not packages:
        return Check("cuda", bad, "no CUDA Python package (cuda-python or pycuda); "
                     + ("the tensorrt backend needs one" if needed else "only needed for TensorRT engines"))
    device = getattr(getattr(config, "backend", None), "device", 0)
    gpu, problem = probe_gpu(device)
    if problem is not None:
        return Check("cuda", bad, f"{', '.join(packages)} installed but CUDA is unusable: {problem}")
    major, minor = gpu["compute_capability"].split(".")
    return Check("cuda", "ok", f"{packages[0]}: device {device} {gpu['gpu']} (sm_{major}{minor}), runtime "
                 f"{gpu['cuda_runtime']}, driver supports {gpu['cuda_driver']}")


def opencv_video_io(build_information: str) -> dict[str, bool]:
    """Which video back-ends an OpenCV build has, from ``cv2.getBuildInformation()``."""
    found = {}
    for name, label in (("gstreamer", "GStreamer"), ("ffmpeg", "FFMPEG")):
        match = re.search(rf"^\s*{label}:\s*(\S+)", build_information, re.M)
        found[name] = bool(match) and match.group(1).upper() == "YES"
    return found


def _source_uri(config: Any) -> str:
    return str(getattr(getattr(config, "source", None), "uri", "") or "")


def _needs_gstreamer(uri: str) -> bool:
    return uri.startswith(("csi://", "gst:"))


def _needs_opencv(uri: str) -> bool:
    return bool(uri) and not (uri.startswith("npy://") or uri.endswith((".npy", ".npz")))


def check_opencv(config: Any = None) -> Check:
    uri = _source_uri(config)
    try:
        import cv2
    except ImportError as e:
        status: Status = "fail" if _needs_opencv(uri) else "warn"
        return Check("opencv", status, f"cannot import cv2 ({e}): pip install opencv-python-headless, or on "
                     "Jetson use JetPack's OpenCV (python3-opencv, built with GStreamer)")
    io = opencv_video_io(cv2.getBuildInformation())
    detail = f"{cv2.__version__}; GStreamer: {'yes' if io['gstreamer'] else 'no'}, " \
             f"FFmpeg: {'yes' if io['ffmpeg'] else 'no'}"
    if not io["gstreamer"]:
        if _needs_gstreamer(uri):
            return Check("opencv", "fail", f"{detail}; the source {uri} needs GStreamer: use an OpenCV built "
                         "with it (Jetson: JetPack's, with LEPTON_SYSTEM_OPENCV=1 at install)")
        return Check("opencv", "warn", f"{detail}; without GStreamer there are no csi:// or gst: sources")
    if not io["ffmpeg"]:
        return Check("opencv", "warn", f"{detail}; without FFmpeg, video files and RTSP go through GStreamer only")
    return Check("opencv", "ok", detail)


def _camera_node(uri: str) -> str | None:
    if uri.startswith("/dev/video"):
        return uri
    match = re.fullmatch(r"v4l2://(\d+)(\?.*)?", uri)
    return f"/dev/video{match.group(1)}" if match else None


def check_cameras(config: Any = None, dev_glob: str = "/dev/video*") -> Check:
    nodes = sorted(glob.glob(dev_glob))
    wanted = _camera_node(_source_uri(config))
    if wanted is not None:
        if not os.path.exists(wanted):
            return Check("cameras", "fail", f"the source {wanted} does not exist (found: "
                         f"{', '.join(nodes) or 'none'}); is the camera plugged in?")
        if not os.access(wanted, os.R_OK | os.W_OK):
            return Check("cameras", "fail", f"no permission to open {wanted}: add the user to the video group")
    if not nodes:
        return Check("cameras", "warn", "no /dev/video* devices (fine for files, streams and CSI via Argus)")
    return Check("cameras", "ok", ", ".join(nodes))


def check_jetson(release_file: Path = TEGRA_RELEASE,
                 model_file: Path | tuple[Path, ...] = (DEVICE_TREE_MODEL, FIRMWARE_MODEL),
                 dpkg_status: Path = DPKG_STATUS) -> Check:
    model, release = jetson_model(model_file), l4t_release(release_file)
    if model is None and release is None:
        return Check("jetson", "ok", f"not a Jetson (no {release_file})")
    jetpack = jetpack_version(dpkg_status, release_file)
    return Check("jetson", "ok", f"{model or 'Jetson (module unknown)'}, L4T {release or 'unknown'}, "
                 f"JetPack {jetpack or 'unknown'}")


# --------------------------------------------------------------------------------- config and model


def check_config(config_path: Path) -> tuple[Check, Any]:
    """The config check and the loaded config (None when it does not validate)."""

    try:
        config = load_config(config_path)
    except ConfigError as e:
        return Check("config", "fail", str(e)), None
    return Check("config", "ok", f"{config_path} is valid (device_id={config.device_id})"), config


def check_model(config: Any) -> Check:
    if config.model is None:
        return Check("model", "ok", "idle: true: no model to load (the device waits for a workload)")
    path = config.model.path
    if not Path(path).exists():
        return Check("model", "fail", f"{path} not found (model.path in the config)")
    try:
        backend = create_backend(path, config.backend)
        with backend:
            inputs = ", ".join(f"{s.name}{list(s.shape)} {s.dtype}" for s in backend.inputs)
            providers = getattr(backend, "providers", None)
    except LeptonError as e:
        return Check("model", "fail", str(e))
    where = f" on {', '.join(providers)}" if providers else ""
    return Check("model", "ok", f"{path} loads with {backend.name}{where}; inputs: {inputs}")


# ------------------------------------------------------------------------------------------ network


def parse_host_port(text: str) -> tuple[str, int]:
    """``host:port`` or ``[ipv6]:port``; raises ConfigError naming the value."""
    match = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", text.strip())
    if not match:
        raise ConfigError(f"--broker {text!r}: expected HOST:PORT, e.g. mqtt.local:8883 or [::1]:1883")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 < port < 65536:
        raise ConfigError(f"--broker {text!r}: port {port} is out of range 1-65535")
    return host, port


def broker_from_config(config: Any) -> tuple[str, int] | None:
    mqtt = getattr(getattr(config, "agent", None), "mqtt", None)
    if mqtt is None:
        return None
    return mqtt.host, mqtt.port


def check_broker(host: str, port: int, timeout: float = BROKER_TIMEOUT_S) -> Check:
    start = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        return Check("broker", "fail", f"cannot connect to {host}:{port} within {timeout:g} s: {e}; is the broker "
                     "running there, and is the port open in the firewalls on the way?")
    ms = (time.monotonic() - start) * 1000
    return Check("broker", "ok", f"{host}:{port} accepts TCP connections ({ms:.0f} ms)")


def check_mqtt_tls_files(config: Any) -> Check | None:
    tls = getattr(getattr(getattr(config, "agent", None), "mqtt", None), "tls", None)
    if tls is None:
        return None
    problems = []
    for field in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, field, None)
        if path is not None and not os.access(path, os.R_OK):
            reason = "not found" if not Path(path).exists() else "not readable by this user"
            problems.append(f"agent.mqtt.tls.{field} {path}: {reason}")
    if problems:
        return Check("mqtt-tls", "fail", "; ".join(problems))
    return Check("mqtt-tls", "ok", "certificate files readable")


# ------------------------------------------------------------------------------------- disk and time


def service_dirs() -> dict[str, Path]:
    """The state and cache folders the service uses: systemd's (when run by it) or the unit's defaults."""
    dirs = {"state": SERVICE_STATE_DIR, "cache": SERVICE_CACHE_DIR}
    for name, variable in (("state", "STATE_DIRECTORY"), ("cache", "CACHE_DIRECTORY")):
        if os.environ.get(variable):
            dirs[name] = Path(os.environ[variable].split(":")[0])
    return dirs


def check_disk(name: str, path: Path, min_free: int = MIN_FREE_BYTES) -> Check:
    measured = Path(path)
    while not measured.exists() and measured != measured.parent:
        measured = measured.parent
    free = shutil.disk_usage(measured).free
    where = str(path) if measured == Path(path) else f"{path} (not created yet; measured {measured})"
    detail = f"{free / GIB:.1f} GiB free at {where}"
    if free < min_free:
        return Check(f"disk-{name}", "warn", f"{detail}: below {min_free / GIB:.1f} GiB; the outbox, engine "
                     "cache and artifact slots need room")
    return Check(f"disk-{name}", "ok", detail)


def package_time() -> float:
    """When this lepton-edge was built or installed: the newest modification time of its files."""
    return max(p.stat().st_mtime for p in Path(__file__).parent.glob("*.py"))


def ntp_synchronized(run: Callable[..., Any] = subprocess.run) -> bool | str:
    """True/False from timedatectl, or why it could not be asked."""
    timedatectl = shutil.which("timedatectl")
    if timedatectl is None:
        return "timedatectl not installed"
    try:
        result = run([timedatectl, "show", "-p", "NTPSynchronized", "--value"], capture_output=True, text=True,
                     timeout=5)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"timedatectl failed: {e}"
    answer = result.stdout.strip()
    if result.returncode != 0 or answer not in ("yes", "no"):
        return f"timedatectl: {(result.stderr.strip() or answer or 'no answer').splitlines()[0]}"
    return answer == "yes"


def check_clock(now: float | None = None, built: float | None = None,
                ntp: bool | str | None = None) -> Check:
    now = time.time() if now is None else now
    built = package_time() if built is None else built
    floor = max(built, EARLIEST_PLAUSIBLE_TIME)
    shown = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    if now < floor:
        return Check("clock", "fail", f"system time {shown} is before {time.strftime('%Y-%m-%d', time.gmtime(floor))}"
                     " (this installation or earlier): the clock is wrong, so TLS certificates fail to verify "
                     "and timestamps lie. Enable NTP (timedatectl set-ntp true) or set the time")
    ntp = ntp_synchronized() if ntp is None else ntp
    if ntp is False:
        return Check("clock", "warn", f"{shown}; not NTP-synchronized: enable systemd-timesyncd or chrony "
                     "(timedatectl set-ntp true)")
    if ntp is True:
        return Check("clock", "ok", f"{shown}; NTP-synchronized")
    return Check("clock", "ok", f"{shown}; NTP status unknown ({ntp})")


# ------------------------------------------------------------------------------------------- runner


def _guarded(name: str, check: Callable[[], Check | None]) -> Check | None:
    try:
        return check()
    except Exception as e:  # a crashing check is a finding, not a crash of the doctor
        return Check(name, "fail", f"the check itself failed: {type(e).__name__}: {e}")


def run_checks(config_path: Path | None = None, broker: str | None = None) -> list[Check]:
    """Every check, in report order. ``broker`` (HOST:PORT) overrides the config's ``agent.mqtt``."""
    config = None
    config_check = None
    if config_path is not None:
        config_check, config = check_config(Path(config_path))
    steps: list[tuple[str, Callable[[], Check | None]]] = [
        ("python", check_python),
        ("lepton-edge", check_lepton_edge),
        ("onnxruntime", lambda: check_onnxruntime(config)),
        ("tensorrt", lambda: check_tensorrt(config)),
        ("cuda", lambda: check_cuda(config)),
        ("opencv", lambda: check_opencv(config)),
        ("cameras", lambda: check_cameras(config)),
        ("jetson", check_jetson),
        ("cuda-versions", lambda: check_cuda_versions(config)),
    ]
    if config_check is not None:
        steps.append(("config", lambda: config_check))
    if config is not None:
        steps.append(("model", lambda: check_model(config)))
        steps.append(("mqtt-tls", lambda: check_mqtt_tls_files(config)))
    if broker is not None:
        try:
            host, port = parse_host_port(broker)
        except ConfigError as e:
            message = str(e)
            steps.append(("broker", lambda: Check("broker", "fail", message)))
        else:
            steps.append(("broker", lambda: check_broker(host, port)))
    elif (address := broker_from_config(config)) is not None:
        steps.append(("broker", lambda: check_broker(*address)))
    for name, path in service_dirs().items():
        steps.append((f"disk-{name}", lambda name=name, path=path: check_disk(name, path)))
    steps.append(("clock", check_clock))
    return [c for name, step in steps if (c := _guarded(name, step)) is not None]


def format_report(checks: list[Check]) -> str:
    """The checks as an aligned table, then a summary line."""
    width = max([len(c.name) for c in checks] + [5])
    lines = [f"{'CHECK':<{width}}  STATUS  DETAIL"]
    for c in checks:
        detail_lines = c.detail.splitlines() or [""]
        lines.append(f"{c.name:<{width}}  {c.status.upper():<6}  {detail_lines[0]}")
        lines.extend(f"{'':<{width}}  {'':<6}  {more}" for more in detail_lines[1:])
    counts = {s: sum(c.status == s for c in checks) for s in ("ok", "warn", "fail")}
    lines.append(f"\n{counts['ok']} ok, {counts['warn']} warning(s), {counts['fail']} failure(s)")
    return "\n".join(lines)
