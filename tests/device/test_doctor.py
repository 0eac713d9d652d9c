"""lepton_edge/device/doctor.py: the checks on this (CPU-only) machine, a real config and model, a real socket."""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lepton_edge.cli.doctor import add_arguments
from lepton_edge.cli.doctor import run as main_doctor
from lepton_edge.core.errors import ConfigError
from lepton_edge.device.doctor import (
    Check,
    check_cameras,
    check_clock,
    check_disk,
    check_jetson,
    format_report,
    opencv_video_io,
    parse_host_port,
    run_checks,
)
from tests.support.onnx_models import mean_color_classifier


def by_name(checks: list[Check]) -> dict[str, Check]:
    names = [c.name for c in checks]
    assert len(names) == len(set(names)), f"duplicate check names: {names}"
    return {c.name: c for c in checks}


def write_config(folder: Path, **overrides: object) -> Path:
    model = mean_color_classifier(folder / "model.onnx")
    data = {"device_id": "doctor-test", "model": {"path": model.name},
            "source": {"uri": "synthetic://shapes?fps=10"}, **overrides}
    path = folder / "device.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def plain_checks() -> dict[str, Check]:
    return by_name(run_checks(None))


def test_machine_checks_without_a_config(plain_checks: dict[str, Check]) -> None:
    assert list(plain_checks) == ["python", "lepton-edge", "onnxruntime", "tensorrt", "cuda", "opencv", "cameras",
                                  "jetson", "disk-state", "disk-cache", "clock"]
    assert plain_checks["python"].status == "ok"
    assert plain_checks["python"].detail.startswith(f"{sys.version_info.major}.{sys.version_info.minor}.")
    onnxruntime = plain_checks["onnxruntime"]
    assert onnxruntime.status == "ok"
    assert "CPUExecutionProvider" in onnxruntime.detail
    assert plain_checks["clock"].status in ("ok", "warn")  # warn: NTP not synchronized on this host


def test_missing_tensorrt_and_cuda_warn_on_a_cpu_box(plain_checks: dict[str, Check]) -> None:
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    assert plain_checks["tensorrt"].status == "warn"
    assert "pip install tensorrt" in plain_checks["tensorrt"].detail
    assert plain_checks["cuda"].status in ("warn", "ok")


def test_opencv_without_gstreamer_warns(plain_checks: dict[str, Check]) -> None:
    import cv2

    opencv = plain_checks["opencv"]
    assert cv2.__version__ in opencv.detail
    if opencv_video_io(cv2.getBuildInformation())["gstreamer"]:
        pytest.skip("this OpenCV has GStreamer")
    assert opencv.status == "warn"
    assert "GStreamer: no" in opencv.detail


def test_opencv_build_information_parsing() -> None:
    with_gst = "  Video I/O:\n    DC1394:    NO\n    FFMPEG:   YES\n      avcodec:  YES (58.54.100)\n" \
               "    GStreamer:                   YES (1.16.3)\n    v4l/v4l2:   YES (linux/videodev2.h)\n"
    assert opencv_video_io(with_gst) == {"gstreamer": True, "ffmpeg": True}
    assert opencv_video_io(with_gst.replace("YES (1.16.3)", "NO")) == {"gstreamer": False, "ffmpeg": True}
    assert opencv_video_io("nothing here") == {"gstreamer": False, "ffmpeg": False}


def test_gstreamer_source_without_gstreamer_fails(tmp_path: Path) -> None:
    import cv2

    if opencv_video_io(cv2.getBuildInformation())["gstreamer"]:
        pytest.skip("this OpenCV has GStreamer")
    checks = by_name(run_checks(write_config(tmp_path, source={"uri": "csi://0"})))
    assert checks["opencv"].status == "fail"
    assert "needs GStreamer" in checks["opencv"].detail


def test_valid_config_and_model_load(tmp_path: Path) -> None:
    checks = by_name(run_checks(write_config(tmp_path)))
    assert checks["config"].status == "ok"
    assert "device_id=doctor-test" in checks["config"].detail
    assert checks["model"].status == "ok", checks["model"].detail
    assert "images[1, 3, 32, 32]" in checks["model"].detail
    assert "broker" not in checks  # no agent section and no --broker: nothing to reach


def test_bad_config_fails_with_the_validation_message(tmp_path: Path) -> None:
    path = write_config(tmp_path, sorce={"uri": "x"})
    checks = by_name(run_checks(path))
    assert checks["config"].status == "fail"
    assert "sorce" in checks["config"].detail and str(path) in checks["config"].detail
    assert "model" not in checks  # nothing to load from a config that does not validate


def test_missing_model_fails(tmp_path: Path) -> None:
    path = write_config(tmp_path, model={"path": "absent.onnx"})
    checks = by_name(run_checks(path))
    assert checks["config"].status == "ok"
    assert checks["model"].status == "fail"
    assert "absent.onnx not found" in checks["model"].detail


def test_corrupt_model_fails_with_the_loader_message(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"not an onnx file")
    checks = by_name(run_checks(path))
    assert checks["model"].status == "fail"
    assert "cannot load this model" in checks["model"].detail


def test_tensorrt_backend_in_config_makes_missing_tensorrt_fail(tmp_path: Path) -> None:
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    checks = by_name(run_checks(write_config(tmp_path, backend={"type": "tensorrt"})))
    assert checks["tensorrt"].status == "fail"
    assert "backend is tensorrt" in checks["tensorrt"].detail
    assert checks["model"].status == "fail"


def test_broker_reachable_on_a_listening_socket() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        checks = by_name(run_checks(None, broker=f"127.0.0.1:{port}"))
    assert checks["broker"].status == "ok"
    assert f"127.0.0.1:{port}" in checks["broker"].detail


def test_broker_unreachable_on_a_closed_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    checks = by_name(run_checks(None, broker=f"127.0.0.1:{port}"))
    assert checks["broker"].status == "fail"
    assert f"127.0.0.1:{port}" in checks["broker"].detail and "refused" in checks["broker"].detail.lower()


def test_broker_from_the_config_agent_section(tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        agent = {"mqtt": {"host": "127.0.0.1", "port": port}, "state_dir": str(tmp_path / "state")}
        checks = by_name(run_checks(write_config(tmp_path, agent=agent)))
    assert checks["config"].status == "ok", checks["config"].detail
    assert checks["broker"].status == "ok"
    assert f"127.0.0.1:{port}" in checks["broker"].detail


def test_broker_argument_is_validated() -> None:
    assert parse_host_port("mqtt.local:8883") == ("mqtt.local", 8883)
    assert parse_host_port("[::1]:1883") == ("::1", 1883)
    for bad in ("mqtt.local", "host:0", "host:99999", ":1883"):
        with pytest.raises(ConfigError, match="--broker"):
            parse_host_port(bad)
    checks = by_name(run_checks(None, broker="nohostport"))
    assert checks["broker"].status == "fail"
    assert "expected HOST:PORT" in checks["broker"].detail


def test_disk_space_below_the_minimum_warns(tmp_path: Path) -> None:
    assert check_disk("state", tmp_path).status == "ok"
    low = check_disk("state", tmp_path / "not" / "yet", min_free=1 << 62)
    assert low.status == "warn"
    assert "below" in low.detail and str(tmp_path) in low.detail


def test_service_directories_follow_systemd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    monkeypatch.setenv("CACHE_DIRECTORY", str(tmp_path / "cache"))
    checks = by_name(run_checks(None))
    assert str(tmp_path / "state") in checks["disk-state"].detail
    assert str(tmp_path / "cache") in checks["disk-cache"].detail


def test_clock_before_the_installation_fails() -> None:
    installed = 1_800_000_000.0
    wrong = check_clock(now=installed - 86400, built=installed, ntp=True)
    assert wrong.status == "fail"
    assert "clock is wrong" in wrong.detail
    assert check_clock(now=0.0, built=0.0, ntp=True).status == "fail"  # an RTC reset to 1970
    assert check_clock(now=installed + 60, built=installed, ntp=True).status == "ok"
    assert check_clock(now=installed + 60, built=installed, ntp=False).status == "warn"
    unknown = check_clock(now=installed + 60, built=installed, ntp="timedatectl not installed")
    assert unknown.status == "ok" and "unknown" in unknown.detail


def test_camera_named_by_the_config_must_exist(tmp_path: Path) -> None:
    class Source:
        uri = "v4l2://7"

    class Config:
        source = Source()

    missing = check_cameras(Config(), dev_glob=str(tmp_path / "video*"))
    assert missing.status == "fail" and "/dev/video7 does not exist" in missing.detail
    (tmp_path / "video0").touch()
    present = check_cameras(None, dev_glob=str(tmp_path / "video*"))
    assert present.status == "ok" and "video0" in present.detail


def test_jetson_module_and_l4t_release_are_reported(tmp_path: Path) -> None:
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64\n")
    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\0")
    status = tmp_path / "no-dpkg-status"
    assert check_jetson(release, model, status) == Check(
        "jetson", "ok", "NVIDIA Jetson AGX Orin Developer Kit, L4T 36.4.0, JetPack 6.1")
    assert check_jetson(release, tmp_path / "no-model", status).detail == \
        "Jetson (module unknown), L4T 36.4.0, JetPack 6.1"
    assert check_jetson(tmp_path / "absent", tmp_path / "no-model").detail.startswith("not a Jetson")


def test_main_prints_a_table_and_fails_only_on_failures(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert main_doctor(parser.parse_args(["--broker", f"127.0.0.1:{port}"])) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["CHECK", "STATUS", "DETAIL"]
    assert any(line.split()[:2] == ["broker", "FAIL"] for line in out.splitlines())
    assert "failure(s)" in out.splitlines()[-1]

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        code = main_doctor(parser.parse_args(["--broker", f"127.0.0.1:{server.getsockname()[1]}"]))
    checks = run_checks(None)
    assert code == (1 if any(c.status == "fail" for c in checks) else 0)


def test_multiline_details_stay_in_their_column() -> None:
    text = format_report([Check("config", "fail", "first\nsecond"), Check("python", "ok", "3.11")])
    lines = text.splitlines()
    assert lines[1].index("first") == lines[2].index("second")


def test_doctor_imports_no_optional_or_heavy_package() -> None:
    code = ("import sys, lepton_edge.device.doctor; "
            "print(sorted(m for m in ('onnxruntime', 'cv2', 'tensorrt', 'pycuda', 'cuda') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert result.stdout.strip() == "[]"
