"""The console sink counts masks, poses and rotated boxes without encoding them."""

from __future__ import annotations

import io

from lepton_edge.config.pipeline import ConsoleSinkConfig
from lepton_edge.core.results import Classification, Detections, RawOutputs
from lepton_edge.runtime.pipeline import PipelineStats
from lepton_edge.runtime.sinks.console import ConsoleSink, summarize_output
from tests.runtime.sinks.results import posed, result, rotated, segmented


def test_summaries_count_what_detections_carry():
    assert summarize_output(result(segmented())) == "1: dog 0.90 [1 mask(s), 400 px]"
    assert summarize_output(result(posed())) == "1: person 0.80 [1 pose(s) x 3 keypoints]"
    assert summarize_output(result(rotated())) == "1: ship 0.70 [1 rotated]"
    assert summarize_output(result(Detections.empty())) == "none"


def test_summaries_of_plain_results_are_unchanged():
    assert summarize_output(result(Detections([[0, 0, 1, 1]] * 8, [0.5] * 8, [0] * 8, ("x",)))).endswith("(+2)")
    assert summarize_output(result(Classification([2], [0.75], ("a", "b", "c")))) == "1: c 0.75"
    assert summarize_output(result(RawOutputs({"a": None, "b": None}))) == "2 raw output(s)"


def test_the_table_shows_the_last_result():
    stream = io.StringIO()
    sink = ConsoleSink(ConsoleSinkConfig(type="console", interval_s=60), PipelineStats(64), "cam", stream=stream)
    sink.write(result(segmented(), seq=7))
    assert sink.render()[-1] == "last #7: 1: dog 0.90 [1 mask(s), 400 px]"
