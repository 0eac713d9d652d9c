"""`lepton-edge bench --streams` in a tiny mode: every case runs and the report has its structure (not its speed)."""

import json

import pytest

from lepton_edge.cli import main
from lepton_edge.data.yolov8n_sized import build_bench_model
from lepton_edge.tools.bench import ensure_bench_video
from lepton_edge.tools.bench_streams import memory_summary

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("streams-inputs")
    model = build_bench_model(folder / "det.onnx", size=128)
    video = ensure_bench_video(folder / "video.mp4", frames=20, size=(320, 240))
    return model, video


def test_bench_streams_reports_every_case_side_by_side(inputs, tmp_path, monkeypatch, capsys):
    model, video = inputs
    monkeypatch.chdir(tmp_path)  # generated and scratch files go to ./out/bench
    argv = ["bench", "--streams", "2", "--model", str(model), "--source", str(video), "--rounds", "1",
            "--case-seconds", "1", "--threads", "1", "--streams-warmup", "0.2", "--streams-live", "2",
            "--streams-seconds", "1.5", "--output", str(tmp_path / "report" / "bench.json")]
    assert main(argv) == 0

    report = json.loads((tmp_path / "report" / "streams.json").read_text())
    offline = report["offline"]
    assert {"a", "b", "c"} <= set(offline)
    for case in offline.values():
        assert set(case["per_stream_fps"]) == {"s0", "s1"}
        assert case["aggregate_fps"] == pytest.approx(sum(case["per_stream_fps"].values()), rel=0.5)
        assert case["aggregate_fps"] > 0 and len(case["aggregate_fps_rounds"]) == 1
        assert case["cpu_cores_used"] > 0 and case["fps_per_cpu_second"] > 0
    assert offline["c"]["processes"] == 2
    assert offline["a"]["runners"] >= 1
    assert set(report["ratios"]) >= {"a_vs_c", "a_vs_b"} and report["ratios"]["a_vs_c"] > 0
    assert report["threads"] == {"budget": 1, "a": 1, "b_each": 1, "c_each": 1, "inter_op": 1}

    live = report["live"]
    assert live["streams"] == 2 and set(live["per_stream"]) == {"s0", "s1"}
    for stream in live["per_stream"].values():
        assert stream["fps"] > 0 and stream["p99_ms"] >= stream["p50_ms"] > 0
    assert live["memory"]["samples"] >= 1 and live["max_frame_age_ms"] == 500

    table = (tmp_path / "report" / "streams.md").read_text()
    out = capsys.readouterr().out
    for row in ("| a: one device runtime", "| b: N single-stream", "| c: N `lepton-edge run` processes",
                "| a / c |", "| a / b |", "| s1 |"):
        assert row in table and row in out
    assert not list((tmp_path / "out" / "bench").glob("streams-c-*")), "case c leaves no scratch folder"


def test_memory_summary_reports_growth_and_slope_after_the_start():
    samples = [(float(t), 100.0 + t) for t in range(0, 61)]  # +1 MB a second
    summary = memory_summary(samples, since=30.0)
    assert summary["samples"] == 31
    assert summary["growth_mb"] == pytest.approx(30.0)
    assert summary["slope_mb_per_min"] == pytest.approx(60.0)
    assert memory_summary(samples[:1], since=0.0) == {"samples": 1}
