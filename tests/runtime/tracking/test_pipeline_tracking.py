"""Tracking and analytics inside the real pipeline: the demo detector on the synthetic scene."""

import json

import cv2

from lepton_edge.config.device import parse_config
from lepton_edge.data import DEMO_MODEL
from lepton_edge.engines.engine_cache import load_backend
from lepton_edge.runtime.assembly import build_pipeline

SOURCE = "synthetic://shapes?fps=0&width=320&height=240&frames=90"


def run(tmp_path, **sections):
    out = tmp_path / "results.jsonl"
    data = {
        "model": {"path": str(DEMO_MODEL)},
        "source": {"uri": SOURCE},
        "sinks": [
            {"type": "jsonl", "path": str(out)},
            {"type": "video", "path": str(tmp_path / "v.avi"), "codec": "MJPG"},
        ],
        **sections,
    }
    config = parse_config(data, "test")
    build_pipeline(config, load_backend(config)).run()
    return [json.loads(line) for line in out.read_text().splitlines()], tmp_path / "v.avi"


def test_tracked_results_carry_track_ids_ages_and_velocities(tmp_path):
    results, video = run(
        tmp_path,
        tracking={},
        analytics={
            "coordinates": "normalized",
            "zones": [{"name": "left", "polygon": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]}],
            "lines": [{"name": "middle", "start": [0.5, 0], "end": [0.5, 1]}],
            "counts_interval_s": 0.5,
        },
    )
    assert len(results) == 90
    tracked = [d for r in results for d in r["detections"] if d["track_id"] >= 0]
    assert tracked, "no detection was on a confirmed track"
    ids = {d["track_id"] for d in tracked}
    assert len(ids) < len(tracked) / 5, f"ids are not kept across frames: {len(ids)} ids for {len(tracked)} boxes"
    assert max(d["track_age_s"] for d in tracked) > 0
    assert all(len(d["velocity"]) == 2 for d in tracked)
    assert all("track" in r["stage_ms"] for r in results)
    events = [e for r in results for e in r.get("events", [])]
    assert {e["kind"] for e in events} >= {"zone_enter"}
    assert any("counts" in r for r in results)
    capture = cv2.VideoCapture(str(video))
    assert capture.read()[0]


def test_without_tracking_results_have_no_track_fields(tmp_path):
    results, _ = run(tmp_path)
    assert all("track_id" not in d for r in results for d in r["detections"])
    assert all("track" not in r["stage_ms"] and "events" not in r for r in results)
