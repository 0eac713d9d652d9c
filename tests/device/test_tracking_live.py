"""Tracking and analytics changed live by a new config: the demo detector on the synthetic scene, a real
controller and pipeline; and tracking refused where there is nothing to track."""

import pytest

from lepton_edge.config.device import parse_config
from lepton_edge.core.errors import ConfigError
from lepton_edge.data import DEMO_MODEL
from lepton_edge.device.controller import RuntimeController, plan_changes
from tests.device.helpers import ListSink, agent_data, wait_until

SCENE = "synthetic://shapes?fps=30&width=160&height=120"
VERTICAL = {"name": "vertical", "start": [0.5, 0], "end": [0.5, 1]}
HORIZONTAL = {"name": "horizontal", "start": [0, 0.5], "end": [1, 0.5]}


def detector_config(tmp_path, *lines, **sections):
    """The demo detector on the live scene; with ``lines``, tracking and those counting lines."""
    if lines:
        sections |= {"tracking": {}, "analytics": {"coordinates": "normalized", "lines": list(lines)}}
    data = agent_data(tmp_path, DEMO_MODEL, 1883, "live", source=SCENE, postprocess={"type": "detect"}, **sections)
    return parse_config(data, "test")


def crossed(results, start=0):
    """Names of the lines crossed in ``results[start:]``."""
    return {
        e.name
        for r in results[start:]
        if r.analytics is not None
        for e in r.analytics.events
        if e.kind == "line_crossed"
    }


def test_a_tracking_or_analytics_change_is_planned_as_tracking(tmp_path):
    base = detector_config(tmp_path, VERTICAL)
    assert plan_changes(base, detector_config(tmp_path, HORIZONTAL)) == {"tracking"}
    assert plan_changes(base, detector_config(tmp_path)) == {"tracking"}
    assert plan_changes(detector_config(tmp_path), base) == {"tracking"}


def test_a_new_line_counts_live_without_reopening_the_source(tmp_path):
    sinks: list[ListSink] = []

    def extra(config):
        sinks.append(ListSink())
        return [sinks[-1]]

    controller = RuntimeController(detector_config(tmp_path, VERTICAL), extra_sinks=extra).start()
    try:
        sink = sinks[0]
        wait_until(lambda: "vertical" in crossed(sink.results), 30)
        pipeline, reader = controller.pipeline, controller.pipeline.reader
        result = controller.apply(detector_config(tmp_path, HORIZONTAL), 1)
        assert (result.outcome, result.changes) == ("applied", {"tracking"})
        start = len(sink.results)
        wait_until(lambda: "horizontal" in crossed(sink.results, start), 30)
        later = len(sink.results) + 2  # frames in flight may still be counted by the old step
        wait_until(lambda: len(sink.results) > later + 30, 30)
        assert crossed(sink.results, later) <= {"horizontal"}
        assert controller.pipeline is pipeline and controller.pipeline.reader is reader  # source not reopened
        assert len(sinks) == 1  # the sinks were not rebuilt either
        assert controller.apply(detector_config(tmp_path), 2).changes == {"tracking"}
        assert controller.pipeline.tracking is None
    finally:
        controller.stop(10)


@pytest.mark.parametrize(
    "sections",
    [
        {"postprocess": {"type": "classify", "top_k": 1}},
        {"postprocess": {"type": "raw"}},
        {"model": {"path": "m.onnx", "task": "classify"}, "postprocess": None},
    ],
)
def test_tracking_on_a_model_without_boxes_is_refused_naming_tracking(sections):
    data = {"model": {"path": "m.onnx"}, "source": {"uri": SCENE}, "tracking": {}, **sections}
    if data["postprocess"] is None:
        del data["postprocess"]
    with pytest.raises(ConfigError, match=r"tracking follows boxes.*(classify|raw)"):
        parse_config(data, "test")
