"""The JSON Lines sink writes real values: masks (COCO RLE or polygons), keypoints and rotated boxes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from lepton_edge.config.pipeline import JsonlSinkConfig
from lepton_edge.core.results import Detections, Masks
from lepton_edge.runtime.sinks.jsonl import JsonlSink
from tests.runtime.sinks.results import HEIGHT, WIDTH, posed, result, rotated, segmented, square_mask


def write(tmp_path, *outputs: Detections) -> list[dict]:
    sink = JsonlSink(JsonlSinkConfig(type="jsonl", path=tmp_path / "out" / "results.jsonl"))
    for i, output in enumerate(outputs):
        assert sink.offer(result(output, seq=i))
    sink.close()
    return [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]


def test_masks_are_written_as_coco_rle_that_decodes_to_the_mask(tmp_path):
    (line,) = write(tmp_path, segmented())
    item = line["detections"][0]
    assert item["label"] == "dog" and item["box"] == [20.0, 30.0, 40.0, 50.0]
    rle = item["mask"]["rle"]
    assert rle["size"] == [HEIGHT, WIDTH]
    decoded = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
    np.testing.assert_array_equal(decoded, square_mask().dense(0))
    assert coco_mask.area({"size": rle["size"], "counts": rle["counts"].encode()}) == 400


def test_masks_as_polygons(tmp_path):
    polygon = np.array([[20, 10], [29, 10], [29, 19], [20, 19]], np.float32)
    masks = Masks((np.ones((10, 10), bool),), [[20, 10]], HEIGHT, WIDTH, "polygon", ((polygon,),))
    (line,) = write(tmp_path, Detections([[20, 10, 30, 20]], [0.9], [0], masks=masks))
    assert line["detections"][0]["mask"] == {"polygons": [[20.0, 10.0, 29.0, 10.0, 29.0, 19.0, 20.0, 19.0]]}


def test_keypoints_and_rotated_boxes_are_written(tmp_path):
    pose, obb = write(tmp_path, posed(), rotated())
    assert pose["detections"][0]["keypoints"] == [[10.0, 10.0, 0.9], [30.0, 10.0, 0.9], [50.0, 50.0, 0.1]]
    item = obb["detections"][0]
    assert item["label"] == "ship"
    assert item["rotated_box"] == {"cx": 40.0, "cy": 30.0, "w": 30.0, "h": 10.0, "angle": pytest.approx(0.5236)}
    corners = np.array(item["corners"])
    assert corners.shape == (4, 2)
    np.testing.assert_allclose(corners.mean(axis=0), [40, 30], atol=0.1)
    np.testing.assert_allclose(np.linalg.norm(corners[0] - corners[1]), 10, atol=0.1)  # the short side


def test_plain_detections_keep_their_json(tmp_path):
    (line,) = write(tmp_path, Detections([[1, 2, 3, 4]], [0.5], [0], ("x",)))
    assert line["detections"] == [{"label": "x", "class_id": 0, "score": 0.5, "box": [1.0, 2.0, 3.0, 4.0]}]


def test_the_file_is_rotated_at_max_bytes_and_no_line_is_lost_or_split(tmp_path):
    path = tmp_path / "results.jsonl"
    sink = JsonlSink(JsonlSinkConfig(type="jsonl", path=path, max_bytes=64 << 10, flush_every=1))
    for seq in range(600):
        assert sink.offer(result(segmented(), seq=seq))
    sink.close()
    rotated = tmp_path / "results.1.jsonl"
    assert sink.rotations >= 2 and sink.stats()["rotations"] == sink.rotations
    assert path.stat().st_size <= 64 << 10 and rotated.stat().st_size <= 64 << 10
    seqs = [json.loads(line)["seq"] for p in (rotated, path) for line in p.read_text().splitlines()]
    assert seqs == list(range(seqs[0], 600))  # the newest results, whole lines, in order


def test_an_existing_file_counts_towards_the_limit(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes(b"{}\n" * ((64 << 10) // 3))
    sink = JsonlSink(JsonlSinkConfig(type="jsonl", path=path, max_bytes=64 << 10))
    assert sink.offer(result(segmented(), seq=1))
    sink.close()
    assert sink.rotations == 1 and [json.loads(line)["seq"] for line in path.read_text().splitlines()] == [1]
