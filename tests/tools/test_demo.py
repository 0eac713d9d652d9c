"""The demo: two synthetic streams through one batched detector with a cascaded colour classifier, a line and a zone
on the first with clips, handed to the scheduler as two workloads that become one device document."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from lepton_edge.config.device import parse_config
from lepton_edge.data import DATA_DIR, DEMO_BATCHED_MODEL, DEMO_COLOUR_CLASSIFIER
from lepton_edge.engines.batching import batch_capability
from lepton_edge.scheduler.desired import device_conflicts, device_document, workload_problems
from lepton_edge.scheduler.models import Workload
from lepton_edge.tools.demo import demo_config, demo_workloads, run_demo
from tests.support.mosquitto import require_mosquitto


def test_the_demo_config_runs_two_streams_through_one_batched_detector_and_a_cascade(tmp_path):
    config = demo_config(tmp_path)
    assert set(config.streams) == {"shapes-a", "shapes-b"}
    detector = config.models["shapes"]
    assert detector.path == DEMO_BATCHED_MODEL and detector.batch is not None and detector.batch.max_batch == 2
    assert batch_capability(DEMO_BATCHED_MODEL).kind == "dynamic"
    assert config.models["colour"].path == DEMO_COLOUR_CLASSIFIER
    assert {w.model for w in config.workloads.values()} == {"shapes"}
    assert all([c.model for c in w.cascade] == ["colour"] and w.tracking is not None
               for w in config.workloads.values())
    clips = config.streams["shapes-a"].clips
    assert clips is not None and clips.enabled and (clips.pre_s, clips.post_s) == (2, 2)
    assert clips.folder == tmp_path / "clips" and config.streams["shapes-b"].clips is None
    analytics = config.workloads["shapes-a"].analytics
    assert analytics is not None and [z.name for z in analytics.zones] == ["left-half"]
    assert [line.name for line in analytics.lines] == ["middle"]


def test_the_scheduler_makes_one_device_document_sharing_the_detector(tmp_path):
    workloads = [Workload.model_validate(w) for w in demo_workloads(demo_config(tmp_path), "demo-device")]
    assert [w.workload_id for w in workloads] == ["shapes-a", "shapes-b"]
    assert all(w.pinned_device == "demo-device" for w in workloads)
    assert [workload_problems(w) for w in workloads] == [[], []]
    assert device_conflicts(workloads) == {}
    document = device_document(workloads)
    config = parse_config(document, "document")  # what the device validates
    assert set(config.streams) == {"shapes-a", "shapes-b"}
    (detector,) = {w.model for w in config.workloads.values()}
    assert config.models[detector].path == DEMO_BATCHED_MODEL and config.models[detector].batch.max_batch == 2
    assert config.models["colour"].path == DEMO_COLOUR_CLASSIFIER
    assert Path(config.models[detector].path).parent == DATA_DIR


@pytest.mark.integration
@pytest.mark.slow
def test_the_demo_batches_both_streams_classifies_counts_and_writes_a_clip(tmp_path, capsys):
    require_mosquitto()
    assert run_demo(16.0, tmp_path / "demo") == 0
    out_dir = tmp_path / "demo"
    for name in ("results.jsonl", "results-b.jsonl"):
        results = [json.loads(line) for line in (out_dir / name).read_text().splitlines()]
        assert len(results) >= 20, name
        assert any(r["stage_ms"].get("batch") == 2 for r in results), f"{name}: no batch of 2"
        detections = [d for r in results for d in r.get("detections", [])]
        assert detections and all(d["attributes"]["colour"]["label"] in
                                  ("red", "yellow", "green", "cyan", "blue", "magenta") for d in detections)
    with sqlite3.connect(out_dir / "scheduler.db") as db:
        kinds = [k for (k,) in db.execute("SELECT kind FROM events WHERE device_id = 'demo-device'")]
    assert "device.config.applied" in kinds and "device.config.rejected" not in kinds
    assert any(k.startswith("device.analytics.") for k in kinds)
    clips = [p for p in (out_dir / "clips").glob("*.mp4") if p.with_suffix(".json").is_file()]
    assert clips and all(p.stat().st_size > 0 for p in clips)
    assert not list((out_dir / "clips").glob("*.part"))
    printed = capsys.readouterr().out
    assert "demo summary:" in printed and f"clips: {len(clips)} in {out_dir / 'clips'}" in printed
    assert "shapes-a: lines: middle" in printed
