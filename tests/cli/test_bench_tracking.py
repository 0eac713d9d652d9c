"""`lepton-edge bench --tracking` on a short sequence: the side-by-side table and its JSON report."""

import json

import pytest

from lepton_edge.cli import main
from lepton_edge.tools.bench_tracking import generate, keep_frames, truth_counts

pytest.importorskip("supervision")
pytest.importorskip("motmetrics")
# supervision 0.27's LineZone calls np.cross on 2-D vectors (deprecated in NumPy 2): the peer's, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:Arrays of 2-dimensional vectors are deprecated:DeprecationWarning")


def test_the_tracking_bench_prints_both_trackers_side_by_side(tmp_path, capsys):
    assert (
        main(
            [
                "bench",
                "--tracking",
                "--tracking-seeds",
                "4",
                "--tracking-seconds",
                "3",
                "--output",
                str(tmp_path / "bench.json"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    for row in ("full rate:", "50 % dropped:", "IDF1", "ID switches", "count zone entries", "cost, 50 objects"):
        assert row in out
    report = json.loads((tmp_path / "tracking.json").read_text())
    for case in ("full rate", "50 % dropped"):
        assert 0 <= report[case]["ours"]["IDF1"] <= 1 and 0 <= report[case]["peer"]["IDF1"] <= 1
        assert report[case]["counts"]["truth"] == report["full rate"]["counts"]["truth"]


def test_generated_sequences_are_repeatable_and_drops_are_half():
    a, b = generate(9, seconds=2), generate(9, seconds=2)
    assert all((x.boxes == y.boxes).all() for x, y in zip(a.detections, b.detections, strict=True))
    assert truth_counts(a) == truth_counts(b)
    kept = keep_frames(10_000, 0.5, 1)
    assert kept[0] == 0 and 0.48 < len(kept) / 10_000 < 0.52
