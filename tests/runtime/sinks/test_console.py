"""The console sink counts masks, poses and rotated boxes without encoding them."""

from __future__ import annotations

import io

from lepton_edge.config.pipeline import ConsoleSinkConfig
from lepton_edge.core.results import Classification, Detections, RawOutputs
from lepton_edge.runtime.analytics.events import AnalyticsEvent, AnalyticsFrame, Geometry
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


def _frame(events: tuple[AnalyticsEvent, ...], crossed: int, inside: int) -> AnalyticsFrame:
    return AnalyticsFrame(events, {"middle": {"in": crossed, "out": 0}}, {"left-half": inside}, Geometry({}, {}))


def _crossed(track: int) -> AnalyticsEvent:
    return AnalyticsEvent("line_crossed", "middle", track, 0, "circle", 1.0, direction="in")


def test_every_event_is_printed_once_and_the_counts_follow_the_stream(tmp_path):
    """Offered results the table skips (it keeps only the newest) still have their events printed and counted."""
    stream = io.StringIO()
    sink = ConsoleSink(ConsoleSinkConfig(type="console", interval_s=60), PipelineStats(64), "shapes-a", stream=stream)
    enter = AnalyticsEvent("zone_enter", "left-half", 3, 1, "square", 1.0)
    for seq, (events, crossed, inside) in enumerate([((enter,), 0, 1), ((_crossed(1),), 1, 1), ((), 1, 0),
                                                     ((_crossed(2), _crossed(4)), 3, 0)]):
        one = result(Detections.empty(), seq=seq)
        one.analytics = _frame(events, crossed, inside)
        sink.offer(one)
    sink.close()
    out = stream.getvalue()
    printed = [line for line in out.splitlines() if line.startswith("event ")]
    assert len(printed) == 4 and printed[0].endswith(" cam: zone_enter left-half: track 3 square")
    assert printed[-1].endswith("line_crossed middle in: track 4 circle")
    counts = "cam: lines: middle in=3 out=0  zones: left-half now=0 entered=1  events: 4 (line_crossed 3, zone_enter 1)"
    assert sink.analytics.counts_line() == counts and counts in out
    table = sink.render()
    assert table[-1].startswith("last #") and counts in table and table[-2].endswith("track 4 circle")


def test_the_table_has_no_counts_line_without_analytics():
    sink = ConsoleSink(ConsoleSinkConfig(type="console", interval_s=60), PipelineStats(64), "cam", stream=io.StringIO())
    sink.write(result(Detections.empty(), seq=2))
    assert not any("lines:" in line or "events:" in line for line in sink.render())
