"""The soak benchmark (lepton_edge/tools/soak.py): its arithmetic, and a short real run."""

from __future__ import annotations

import json

import pytest

from lepton_edge.data import DEMO_MODEL
from lepton_edge.tools.soak import Minute, Sample, format_report, linear_slope, main, run_soak, summarize


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
