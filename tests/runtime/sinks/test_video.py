"""The annotated video draws masks (translucent), keypoints with their skeleton and rotated boxes."""

from __future__ import annotations

import numpy as np
import pytest

from lepton_edge.config.pipeline import VideoSinkConfig
from lepton_edge.runtime.sinks.video import MASK_ALPHA, VideoSink, annotate
from tests.runtime.sinks.results import HEIGHT, WIDTH, posed, result, rotated, segmented

cv2 = pytest.importorskip("cv2")


def test_masks_are_blended_in_their_class_colour():
    out = annotate(np.zeros((HEIGHT, WIDTH, 3), np.uint8), result(segmented()))
    inside = out[38:47, 25:36].reshape(-1, 3)  # inside the square, clear of the box outline and the label
    assert (inside == inside[0]).all() and 0 < inside[0].max() < 255
    assert inside[0].max() == pytest.approx(255 * MASK_ALPHA, abs=1)
    assert out[40:50, 60:75].max() == 0  # far from everything: untouched


def test_visible_keypoints_are_dots_joined_by_the_skeleton():
    out = annotate(np.zeros((HEIGHT, WIDTH, 3), np.uint8), result(posed()))
    assert out[10, 10].max() == 255 and out[10, 30].max() == 255  # the two visible dots (white centres)
    assert out[10, 20].max() > 0  # the skeleton line between them
    assert out[50, 50].max() == 0 and out[45:50, 48:53].max() == 0  # invisible keypoint, and no line to it
    assert out[30, 40].max() == 0  # inside the box, away from points and lines


def test_rotated_boxes_are_drawn_as_polygons_not_rectangles():
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    output = rotated()
    out = annotate(image, result(output))
    corners = output.rotated.corners()[0]
    edge_mid = np.round((corners[1] + corners[2]) / 2).astype(int)
    assert out[edge_mid[1], edge_mid[0]].max() > 0
    x1, _, _, y2 = np.round(output.boxes[0]).astype(int)
    assert out[y2 - 1, x1 + 1].max() == 0  # a corner of the enclosing box is not on the polygon


def test_the_sink_writes_every_frame(tmp_path):
    path = tmp_path / "annotated.avi"
    sink = VideoSink(VideoSinkConfig(type="video", path=path, fps=10, codec="MJPG"))
    for seq, output in enumerate((segmented(), posed(), rotated())):
        assert sink.offer(result(output, seq=seq, image=True))
    sink.close()
    assert sink.errors == 0 and sink.written == 3
    capture = cv2.VideoCapture(str(path))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    assert frames == 3


def test_the_video_is_rotated_at_max_bytes_into_a_playable_file(tmp_path):
    from lepton_edge.runtime.sinks.video import SIZE_CHECK_FRAMES

    path = tmp_path / "annotated.avi"
    sink = VideoSink(
        VideoSinkConfig(type="video", path=path, fps=10, codec="MJPG", max_bytes=64 << 10, queue_size=1024)
    )
    for seq in range(12 * SIZE_CHECK_FRAMES):  # small frames: about 1 KiB each
        assert sink.offer(result(segmented(), seq=seq, image=True))
    sink.close()
    rotated = tmp_path / "annotated.1.avi"
    assert sink.errors == 0 and sink.rotations >= 1 and rotated.exists()
    capture = cv2.VideoCapture(str(rotated))
    assert capture.read()[0]
    capture.release()
