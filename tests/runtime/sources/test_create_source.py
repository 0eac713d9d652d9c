import subprocess
import sys
import textwrap

import pytest

from lepton_edge.config.pipeline import SourceConfig
from lepton_edge.core.errors import SourceError
from lepton_edge.runtime.sources import SUPPORTED_URIS, create_source, mask_uri
from lepton_edge.runtime.sources.images import ImageSource
from lepton_edge.runtime.sources.synthetic import SyntheticSource
from lepton_edge.runtime.sources.tensors import TensorSource
from lepton_edge.runtime.sources.video import StreamSource, VideoFileSource
from tests.runtime.sources.media import write_image, write_video


def test_kind_is_chosen_from_the_uri(tmp_path):
    video = write_video(tmp_path / "clip.avi", frames=2)
    image = write_image(tmp_path / "pic.webp", 5)
    (tmp_path / "rec.npy").write_bytes(b"")
    cases = {
        str(video): VideoFileSource,
        f"file://{video}": VideoFileSource,
        str(image): ImageSource,
        str(tmp_path): ImageSource,
        str(tmp_path / "rec.npy"): TensorSource,
        "synthetic://shapes": SyntheticSource,
        "rtsp://cam.local:554/live": StreamSource,
        "rtsps://cam.local/live": StreamSource,
        "https://cam.local/video.mjpg": StreamSource,
    }
    for uri, kind in cases.items():
        assert type(create_source(SourceConfig(uri=uri))) is kind, uri


def test_streams_are_live_and_files_offline_unless_configured(tmp_path):
    video = write_video(tmp_path / "clip.mp4", frames=2)
    assert create_source(SourceConfig(uri="rtsp://cam/live")).live is True
    assert create_source(SourceConfig(uri="rtsp://cam/live", live=False)).live is False
    assert create_source(SourceConfig(uri=str(video))).live is False
    assert create_source(SourceConfig(uri=str(video), live=True)).live is True


@pytest.mark.parametrize("uri", ["ftp://host/video.mp4", "rstp://typo/live", "s3://bucket/key"])
def test_unknown_scheme_lists_the_supported_forms(uri):
    with pytest.raises(SourceError) as info:
        create_source(SourceConfig(uri=uri))
    assert "unsupported source URI scheme" in str(info.value)
    assert SUPPORTED_URIS in str(info.value)


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(SourceError, match=r"source not found: .*nope\.mp4.*no such file or folder"):
        create_source(SourceConfig(uri=str(missing)))


def test_empty_uri_is_rejected():
    with pytest.raises(SourceError, match=r"source\.uri is empty"):
        create_source(SourceConfig(uri="  "))


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        ("rtsp://admin:s3cret@10.0.0.5:554/h264", "rtsp://***@10.0.0.5:554/h264"),
        ("rtsp://admin:p@ss@10.0.0.5/live", "rtsp://***@10.0.0.5/live"),
        ("http://cam/v.mjpg?user=bob&password=x1&res=hd", "http://cam/v.mjpg?user=bob&password=***&res=hd"),
        ("https://cam/live?token=abc.def", "https://cam/live?token=***"),
        (
            "gst:rtspsrc location=rtsp://u:p@cam/x user-pw=pw ! appsink",
            "gst:rtspsrc location=rtsp://***@cam/x user-pw=*** ! appsink",
        ),
        ("rtsp://cam/live", "rtsp://cam/live"),
        ("/data/video.mp4", "/data/video.mp4"),
    ],
)
def test_mask_uri_hides_credentials(uri, masked):
    assert mask_uri(uri) == masked


@pytest.mark.integration
def test_sources_import_and_fail_clearly_without_opencv():
    script = textwrap.dedent(
        """
        import sys
        sys.modules["cv2"] = None  # make `import cv2` fail as if OpenCV were not installed
        import lepton_edge.runtime.sources
        from lepton_edge.config.pipeline import SourceConfig
        from lepton_edge.core.errors import SourceError
        source = lepton_edge.runtime.sources.create_source(SourceConfig(uri="synthetic://shapes?fps=0"))
        try:
            source.open()
        except SourceError as e:
            print("ERROR", e)
        print("cv2 loaded:", any(m.startswith("cv2.") for m in sys.modules))
        """
    )
    command = [sys.executable, "-c", script]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    assert "ERROR OpenCV (cv2) is not installed" in out.stdout
    assert "pip install 'lepton-edge[opencv]'" in out.stdout
    assert "cv2 loaded: False" in out.stdout
