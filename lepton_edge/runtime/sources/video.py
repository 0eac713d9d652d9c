"""Sources read through ``cv2.VideoCapture``: video files, network streams, V4L2 cameras, Jetson CSI
cameras and raw GStreamer pipelines.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lepton_edge.core.errors import SourceError
from lepton_edge.runtime.sources.base import Source
from lepton_edge.runtime.sources.reader import Pacer, import_cv2, int_param, mask_uri, parse_query

log = logging.getLogger(__name__)


class CaptureSource(Source):
    """Common part of the ``cv2.VideoCapture`` sources: subclasses create the capture."""

    kind: Literal["image", "tensor"] = "image"
    finite = False
    """True when the end of the stream is the end of the content (files), not a lost connection."""

    def __init__(self, uri: str, live: bool) -> None:
        self.uri = uri
        self.live = live
        self._cap: Any = None
        self._cv2: Any = None

    def _create(self, cv2: Any) -> Any:
        """Return a new ``cv2.VideoCapture`` (opened or not)."""
        raise NotImplementedError

    def _open_error(self) -> str:
        """The message when the capture did not open."""
        raise NotImplementedError

    def open(self) -> None:
        self.close()
        cv2 = import_cv2()
        try:
            cap = self._create(cv2)
        except cv2.error as e:
            raise SourceError(f"{self._open_error()} (OpenCV: {e})") from None
        if not cap.isOpened():
            cap.release()
            raise SourceError(self._open_error())
        self._cv2, self._cap = cv2, cap

    def _grab(self) -> np.ndarray | None:
        if self._cap is None:
            raise SourceError(f"{mask_uri(self.uri)}: read() called before open()")
        try:
            ok, frame = self._cap.read()
        except self._cv2.error as e:
            raise SourceError(f"{mask_uri(self.uri)}: decoding failed: {e}") from None
        return frame if ok and frame is not None else None

    def read(self) -> np.ndarray | None:
        return self._grab()

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"uri": mask_uri(self.uri), "live": self.live, "kind": self.kind}
        cap, cv2 = self._cap, self._cv2
        if cap is not None:
            fps = cap.get(cv2.CAP_PROP_FPS)
            info.update(
                backend=cap.getBackendName(),
                width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                fps=round(fps, 3) if fps == fps and fps > 0 else None,
            )
        return info


class VideoFileSource(CaptureSource):
    """A video file decoded by FFmpeg; offline unless made live, which plays it at its own frame rate."""

    finite = True

    def __init__(self, path: str | Path, uri: str | None = None, live: bool = False) -> None:
        super().__init__(uri or str(path), live)
        self.path = Path(path)
        self._first: np.ndarray | None = None
        self._pacer: Pacer | None = None

    def _create(self, cv2: Any) -> Any:
        if not self.path.is_file():
            raise SourceError(f"video file not found: {self.path}")
        return cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)

    def _open_error(self) -> str:
        return (
            f"{self.path}: cannot decode this file as a video (FFmpeg could not open it). Check that it is a "
            "complete video in a format FFmpeg reads; images need an image suffix (.jpg, .png, ...) and "
            "tensor recordings .npy or .npz"
        )

    def open(self) -> None:
        super().open()
        # Decode the first frame now, so that a file that opens but holds no decodable video fails here.
        first = self._grab()
        if first is None:
            self.close()
            raise SourceError(
                f"{self.path}: the file opened but no video frame could be decoded; it may be truncated, "
                "have no video stream, or use a codec this FFmpeg build lacks"
            )
        self._first = first
        fps = self._cap.get(self._cv2.CAP_PROP_FPS)
        self._pacer = Pacer(fps) if self.live and fps == fps and fps > 0 else None

    def read(self) -> np.ndarray | None:
        if self._pacer is not None:
            self._pacer.wait()
        if self._first is not None:
            frame, self._first = self._first, None
            return frame
        return self._grab()

    def close(self) -> None:
        self._first = None
        super().close()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self._cap is not None:
            count = int(self._cap.get(self._cv2.CAP_PROP_FRAME_COUNT))
            info.update(path=str(self.path), frame_count=count if count > 0 else None)
        return info


class StreamSource(CaptureSource):
    """An RTSP or HTTP(S) stream (MJPEG, HLS, ...) read by FFmpeg, with open and read timeouts so a dead
    or stalled stream returns instead of blocking forever."""

    def __init__(self, uri: str, timeout_s: float, live: bool = True) -> None:
        super().__init__(uri, live)
        self.timeout_s = timeout_s

    def _create(self, cv2: Any) -> Any:
        ms = max(1, round(self.timeout_s * 1000))
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        return cv2.VideoCapture(self.uri, cv2.CAP_FFMPEG, params)

    def _open_error(self) -> str:
        return (
            f"cannot open stream {mask_uri(self.uri)}: FFmpeg could not connect, or found no decodable video "
            f"within {self.timeout_s:g} s (reconnect.stall_timeout_s). Check the address, port, path and "
            "credentials, and that the camera or server is up"
        )


def _video_devices() -> str:
    found = sorted(str(p) for p in Path("/dev").glob("video*"))
    return ", ".join(found) if found else "none"


class V4L2Source(CaptureSource):
    """A V4L2 camera (``/dev/videoN``), with optional ``width``, ``height``, ``fps`` and ``fourcc``."""

    PARAMS = {"width": int_param(1), "height": int_param(1), "fps": int_param(1), "fourcc": str}

    def __init__(self, uri: str, device: str, query: str = "", live: bool = True) -> None:
        super().__init__(uri, live)
        self.device = device
        self.settings = parse_query(uri, query, self.PARAMS)
        fourcc = self.settings.get("fourcc")
        if fourcc is not None and len(fourcc) != 4:
            raise SourceError(f"{uri}: fourcc must be 4 characters such as MJPG or YUYV, got {fourcc!r}")

    def _create(self, cv2: Any) -> Any:
        if not Path(self.device).exists():
            raise SourceError(
                f"camera {self.device} not found (source {self.uri}); video devices present: "
                f"{_video_devices()}. Check that the camera is plugged in and the device number is right"
            )
        cap = cv2.VideoCapture(self.device, cv2.CAP_V4L2)
        if cap.isOpened():
            self._apply_settings(cv2, cap)
        return cap

    def _apply_settings(self, cv2: Any, cap: Any) -> None:
        props = {
            "width": cv2.CAP_PROP_FRAME_WIDTH,
            "height": cv2.CAP_PROP_FRAME_HEIGHT,
            "fps": cv2.CAP_PROP_FPS,
        }
        if "fourcc" in self.settings:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*self.settings["fourcc"]))
        for name, prop in props.items():
            if name in self.settings:
                cap.set(prop, self.settings[name])
                got = cap.get(prop)
                if round(got) != self.settings[name]:
                    wanted = self.settings[name]
                    log.warning("%s: asked for %s=%s, the camera uses %s", self.uri, name, wanted, got)

    def _open_error(self) -> str:
        return (
            f"cannot open camera {self.device} (source {self.uri}): it exists but V4L2 could not start "
            "it. It may be in use by another program, not a capture device, or need permissions "
            "(group `video`)"
        )


def gstreamer_available() -> bool:
    """Whether the installed OpenCV was built with GStreamer (``cv2.getBuildInformation()``)."""
    cv2 = import_cv2()
    for line in cv2.getBuildInformation().splitlines():
        name, _, value = line.strip().partition(":")
        if name.strip() == "GStreamer":
            return value.strip().upper().startswith("YES")
    return False


def require_gstreamer(uri: str) -> None:
    """Raise :class:`SourceError` explaining the fix when this OpenCV has no GStreamer support."""
    if gstreamer_available():
        return
    import cv2

    raise SourceError(
        f"{mask_uri(uri)}: this OpenCV ({cv2.__version__}, {Path(cv2.__file__).parent}) was built without "
        "GStreamer, which csi:// and gst: sources need. The pip wheels (opencv-python, "
        "opencv-python-headless) never include it. On Jetson, use the system OpenCV from JetPack "
        "(`sudo apt install python3-opencv`): install lepton-edge without the `opencv` extra (`make setup` "
        "with LEPTON_SYSTEM_OPENCV=1, in a virtual environment created with --system-site-packages) and "
        "`pip uninstall opencv-python opencv-python-headless` so the wheel does not hide it"
    )


class GStreamerSource(CaptureSource):
    """A GStreamer pipeline ending in ``appsink`` (``gst:<pipeline>``, and ``csi://N`` built on it)."""

    def __init__(self, uri: str, pipeline: str, live: bool = True, hint: str = "") -> None:
        super().__init__(uri, live)
        pipeline = pipeline.strip()
        if not pipeline:
            raise SourceError(f"{uri!r}: empty GStreamer pipeline; write gst:<pipeline> ending in appsink")
        if "appsink" not in pipeline:
            raise SourceError(
                f"{mask_uri(uri)}: a gst: pipeline must end in appsink (for example "
                "`gst:videotestsrc ! videoconvert ! video/x-raw,format=BGR ! appsink drop=true "
                "max-buffers=1`)"
            )
        self.pipeline = pipeline
        self._hint = hint
        require_gstreamer(uri)

    def _create(self, cv2: Any) -> Any:
        return cv2.VideoCapture(self.pipeline, cv2.CAP_GSTREAMER)

    def _open_error(self) -> str:
        return (
            f"{mask_uri(self.uri)}: GStreamer could not start the pipeline `{mask_uri(self.pipeline)}`. "
            + (self._hint or "Run it with gst-launch-1.0 (appsink replaced by fakesink) to see why")
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "pipeline": mask_uri(self.pipeline)}


CSI_PARAMS = {"width": int_param(1), "height": int_param(1), "fps": int_param(1), "flip": int_param(0)}


def csi_source(uri: str, sensor: str, query: str, live: bool = True) -> GStreamerSource:
    """A Jetson CSI camera through nvarguscamerasrc: ``csi://N?width=1920&height=1080&fps=30&flip=0``."""
    try:
        sensor_id = int(sensor)
    except ValueError:
        raise SourceError(f"{uri}: the CSI sensor id must be a number (csi://0), got {sensor!r}") from None
    p = {"width": 1920, "height": 1080, "fps": 30, "flip": 0, **parse_query(uri, query, CSI_PARAMS)}
    if p["flip"] > 7:
        raise SourceError(f"{uri}: bad value {p['flip']} for parameter 'flip': nvvidconv flip-method is 0..7")
    pipeline = (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM),width={p['width']},height={p['height']},"
        f"framerate={p['fps']}/1,format=NV12 ! "
        f"nvvidconv flip-method={p['flip']} ! video/x-raw,format=BGRx ! videoconvert ! "
        "video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false"
    )
    hint = (
        "Check that the camera is connected to that port, that the mode is supported "
        "(gst-launch-1.0 nvarguscamerasrc sensor-id=N num-buffers=1 ! fakesink), and restart the daemon "
        "(sudo systemctl restart nvargus-daemon)"
    )
    return GStreamerSource(uri, pipeline, live=live, hint=hint)
