"""The soak benchmark (lepton_edge/tools/soak.py): its arithmetic, and a short real run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from lepton_edge.data import DEMO_MODEL
from lepton_edge.tools.soak import (
    CLIP_QUOTA_BYTES,
    Minute,
    Sample,
    format_report,
    linear_slope,
    main,
    run_soak,
    summarize,
)

SHORT_SOAK_S = 20.0


def sample(t: float, rss: float, *, warmup: bool = False, drops: int = 0) -> Sample:
    return Sample(t, rss, 30.0, int(t * 30), 8.0, 10.0, 0.5, 1.0, drops, 0, True, warmup)


def minute(index: int, p99: float, partial: bool = False) -> Minute:
    return Minute(index, 30.0 + 60 * index, 90.0 + 60 * index, 1800, 8.0, p99, 0.5, 2.0, 100.0, partial)


def test_linear_slope_recovers_a_line_and_is_zero_without_spread():
    xs = [0.0, 10.0, 20.0, 30.0]
    assert linear_slope(xs, [5 + 0.25 * x for x in xs]) == pytest.approx(0.25)
    assert linear_slope([3.0, 3.0], [1.0, 9.0]) == 0.0
    assert linear_slope([1.0], [1.0]) == 0.0


def test_summary_excludes_the_warm_up_and_compares_first_and_last_minutes():
    warm = [sample(t, 50.0 + t, warmup=True, drops=3) for t in (5.0, 10.0, 25.0)]  # steep warm-up growth
    steady = [sample(30.0 + t, 100.0 + t / 60.0, drops=3 + int(t > 100)) for t in range(0, 181, 5)]
    minutes = [minute(0, 10.0), minute(1, 12.0), minute(2, 15.0), minute(3, 99.0, partial=True)]
    summary = summarize(warm + steady, minutes, warmup_s=30.0, minute_s=60.0)
    memory = summary["memory"]
    assert memory["slope_mb_per_min"] == pytest.approx(1.0)  # 1 MB per minute after the warm-up only
    assert memory["last_minus_first_mb"] == pytest.approx(2.0, abs=0.1)  # means of [30, 90) and [150, 210]
    assert summary["drops"] == 1  # drops during the warm-up are not counted
    latency = summary["latency"]
    assert latency["minutes"] == 3  # the partial minute is left out
    assert (latency["e2e_p99_min_ms"], latency["e2e_p99_max_ms"]) == (10.0, 15.0)
    assert latency["e2e_p99_worst_over_best"] == pytest.approx(1.5)


def test_a_duration_within_the_warm_up_is_refused_with_the_reason(capsys):
    assert main(["--duration", "10", "--warmup", "30"]) == 2
    assert "must be longer than the warm-up" in capsys.readouterr().out


@pytest.mark.integration
def test_short_soak_samples_the_running_device(tmp_path):
    if not DEMO_MODEL.is_file():
        pytest.skip(f"{DEMO_MODEL} is missing (models/train_shapes_detector.py makes it)")
    report = run_soak(7.0, sample_interval_s=1.0, warmup_s=2.0, minute_s=2.0, telemetry_s=0.5)
    samples = report["samples"]
    assert len(samples) == 7 and samples[-1]["t_s"] >= 7.0
    assert [s["warmup"] for s in samples[:3]] == [True, False, False]
    assert all(s["rss_mb"] > 0 and s["connected"] for s in samples[1:])
    assert sum(s["results"] > 0 for s in samples) >= 6
    minutes = report["minutes"]
    assert [m["partial"] for m in minutes] == [False, False, True]  # [2, 4), [4, 6), [6, 7]
    assert all(m["results"] > 0 and m["e2e_p99_ms"] >= m["e2e_p50_ms"] > 0 for m in minutes)
    summary = report["summary"]
    assert summary["fps"]["mean"] > 5 and summary["latency"]["minutes"] == 2
    json.dumps(report, allow_nan=False)  # soak.json is strict JSON
    text = format_report(report)
    assert "per minute" in text and "memory: slope" in text and "(partial)" in text


def prefill_clip_folder(folder: Path, quota: int, clip_bytes: int = 25_000, margin: int = 4096) -> int:
    """Fill ``folder`` with complete-looking old clips (video bytes and metadata) to between ``margin`` and
    ``margin`` + 200 bytes below ``quota``, so every clip of more than that the soak writes deletes at least one;
    returns how many."""
    folder.mkdir(parents=True)
    old, used, count = time.time() - 3600, 0, 0
    while True:
        clip_id = f"prefill-{count:03d}"
        size = min(clip_bytes, quota - margin - used - 200)  # 200: more than the metadata takes
        if size <= 0:
            return count
        metadata = json.dumps({"id": clip_id, "stream": "prefill", "end_wall": old + count, "bytes": size})
        (folder / f"{clip_id}.mp4").write_bytes(os.urandom(size))
        (folder / f"{clip_id}.json").write_text(metadata)
        used += size + len(metadata)
        count += 1


@pytest.mark.integration
@pytest.mark.reliability
def test_short_soak_with_clips_written_and_deleted_keeps_memory_flat(scenario, tmp_path):
    """Issue 14: the soak with clips being written and deleted for the quota all the time (the long run is
    ``python -m lepton_edge.tools.soak --clips --duration 600``; docs/reliability.md has its figures)."""
    if not DEMO_MODEL.is_file():
        pytest.skip(f"{DEMO_MODEL} is missing (models/train_shapes_detector.py makes it)")
    record = scenario(
        "12 soak with clips",
        f"the soak (`lepton_edge.tools.soak --clips`) for {SHORT_SOAK_S:g} s: the demo camera and detector, "
        "tracking, a clip around every line crossing in a folder already at its 1 MiB quota, so every clip "
        "written deletes older ones",
    )
    folder = tmp_path / "clips"
    prefilled = prefill_clip_folder(folder, CLIP_QUOTA_BYTES)
    report = run_soak(
        SHORT_SOAK_S, sample_interval_s=1.0, warmup_s=6.0, minute_s=6.0, telemetry_s=0.5, clips=True,
        clips_folder=folder,
    )  # fmt: skip
    summary = report["summary"]
    memory, clips = summary["memory"], summary["clips"]
    record.metrics.update(
        {
            "rss_slope_mb_per_min": round(memory["slope_mb_per_min"], 2),
            "rss_first_to_last_mb": f"{memory['first_minute_mb']:.1f} -> {memory['last_minute_mb']:.1f}",
            "rss_max_mb": round(memory["max_mb"], 1),
            "fps_mean": round(summary["fps"]["mean"], 1),
            "clips_written": clips["written"],
            "clips_deleted": clips["deleted"],
            "clips_failed": clips["failed"],
            "events_queued": clips["events"],
        }
    )
    left = sorted(p.name for p in folder.iterdir())
    folder_bytes = sum((folder / n).stat().st_size for n in left)
    record.note(
        f"{clips['written']} clip(s) written and {clips['deleted']} deleted for the quota ({prefilled} old ones "
        f"prefilled), {clips['failed']} failed; the folder holds {folder_bytes} bytes after the run (quota "
        f"{CLIP_QUOTA_BYTES}); RSS slope {memory['slope_mb_per_min']:+.2f} MB/min after the warm-up"
    )
    assert clips["written"] >= 3 and clips["deleted"] >= clips["written"] and clips["failed"] == 0
    assert folder_bytes <= CLIP_QUOTA_BYTES and not [n for n in left if n.endswith(".part")]
    # A short run only catches a gross leak: its slope over 14 s swings by tens of MB/min as clips hold their raw
    # frames (up to 28 MB for a 4 s clip) until written, so it is reported, not judged. The frames of the 7 or so
    # clips written, kept, would be about 100 MB; the long run in docs/reliability.md is the verdict on flatness.
    assert memory["max_mb"] - memory["first_minute_mb"] < 60.0
