"""Frame sources: :func:`create_source` picks one from a URI, :class:`FrameReader` reads it.

No module here imports OpenCV at import time; it is imported when a source is opened.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

from lepton_edge.config.pipeline import SourceConfig
from lepton_edge.core.errors import SourceError
from lepton_edge.runtime.sources.base import Source, SourceState
from lepton_edge.runtime.sources.images import IMAGE_SUFFIXES, ImageSource
from lepton_edge.runtime.sources.reader import FrameReader, mask_uri
from lepton_edge.runtime.sources.synthetic import SyntheticSource
from lepton_edge.runtime.sources.tensors import TENSOR_SUFFIXES, TensorSource, parse_npy_uri
from lepton_edge.runtime.sources.video import (
    GStreamerSource,
    StreamSource,
    V4L2Source,
    VideoFileSource,
    csi_source,
    gstreamer_available,
    require_gstreamer,
)

__all__ = [
    "SUPPORTED_URIS",
    "FrameReader",
    "Source",
    "SourceState",
    "create_source",
    "gstreamer_available",
    "mask_uri",
    "require_gstreamer",
]

SUPPORTED_URIS = """supported sources:
  video file         path/to/video.mp4 (any format FFmpeg reads)
  image or folder    path/to/image.jpg, path/to/folder (jpg, jpeg, png, bmp, webp, tif, tiff)
  tensor recording   path/to/frames.npy, path/to/frames.npz, npy://path/to/frames.npy?fps=10
  network stream     rtsp://..., rtsps://..., http://..., https://...
  V4L2 camera        /dev/video0, v4l2://0, v4l2:///dev/video0 (?width=&height=&fps=&fourcc=)
  Jetson CSI camera  csi://0?width=1920&height=1080&fps=30&flip=0
  GStreamer          gst:<pipeline ending in appsink>
  synthetic          synthetic://shapes?fps=30&width=640&height=480&count=3-6&seed=0&frames=0"""

STREAM_SCHEMES = frozenset({"rtsp", "rtsps", "http", "https"})
_SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*)://(.*)", re.S)


def create_source(config: SourceConfig) -> Source:
    """The source for ``config.uri`` (not opened yet); ``config.live``, when set, overrides the URI's
    default. Raises :class:`SourceError` for unknown URIs, missing files and unusable sources."""
    source = _from_uri(config.uri.strip(), config)
    if config.live is not None:
        source.live = config.live
    return source


def _from_uri(uri: str, config: SourceConfig) -> Source:
    if not uri:
        raise SourceError(f"source.uri is empty\n{SUPPORTED_URIS}")
    if uri.lower().startswith("gst:"):
        return GStreamerSource(uri, uri[4:])
    match = _SCHEME.fullmatch(uri)
    if match is None:
        if uri.startswith("/dev/video"):
            device, _, query = uri.partition("?")
            return V4L2Source(uri, device, query)
        return _from_path(uri, uri)
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme == "synthetic":
        return SyntheticSource(uri)
    if scheme == "npy":
        path, fps = parse_npy_uri(uri)
        if Path(path).suffix.lower() not in TENSOR_SUFFIXES:
            raise SourceError(f"{uri}: npy:// needs a .npy or .npz file")
        _require_exists(Path(path), uri)
        return TensorSource(path, fps=fps, uri=uri)
    if scheme in STREAM_SCHEMES:
        return StreamSource(uri, timeout_s=config.reconnect.stall_timeout_s)
    if scheme == "v4l2":
        target, _, query = rest.partition("?")
        if target.isdigit():
            return V4L2Source(uri, f"/dev/video{target}", query)
        if target.startswith("/dev/"):
            return V4L2Source(uri, target, query)
        raise SourceError(f"{uri}: expected v4l2://N or v4l2:///dev/videoN")
    if scheme == "csi":
        sensor, _, query = rest.partition("?")
        return csi_source(uri, sensor.rstrip("/"), query)
    if scheme == "file":
        return _from_path(uri, unquote(rest))
    raise SourceError(f"{mask_uri(uri)}: unsupported source URI scheme {scheme + '://'!r}\n{SUPPORTED_URIS}")


def _require_exists(path: Path, uri: str) -> None:
    if not path.exists():
        raise SourceError(
            f"source not found: {path} (from {uri!r}): no such file or folder. Relative paths in a config "
            f"file are relative to the config file's folder.\n{SUPPORTED_URIS}"
        )


def _from_path(uri: str, text: str) -> Source:
    path = Path(text).expanduser()
    _require_exists(path, uri)
    suffix = path.suffix.lower()
    if path.is_dir() or suffix in IMAGE_SUFFIXES:
        return ImageSource(path, uri=uri)
    if suffix in TENSOR_SUFFIXES:
        return TensorSource(path, uri=uri)
    return VideoFileSource(path, uri=uri)
