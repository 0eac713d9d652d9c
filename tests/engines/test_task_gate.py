"""The int8 fidelity gate judges segment, pose and obb models on their boxes, as detectors."""

from __future__ import annotations

import pytest

from lepton_edge.engines.builder import FidelityData, FidelityGateError, check_fidelity, fidelity_minimums
from lepton_edge.engines.evaluation.fidelity import FidelityReport
from lepton_edge.engines.options import BuildOptions

DATA = FidelityData("frames", "the test frames", held_out=True)


@pytest.mark.parametrize("task", ["segment", "pose", "obb"])
def test_detection_family_tasks_get_the_detection_minimums(task):
    options = BuildOptions()
    assert fidelity_minimums(task, options) == fidelity_minimums("detect", options)
    good = FidelityReport(task, "mAP@0.5 vs reference", 0.99, 32, boxes_kept=0.98, reference_boxes=40, threshold=0.25)
    check_fidelity(good, fidelity_minimums(task, options), DATA)
    bad = FidelityReport(task, "mAP@0.5 vs reference", 0.99, 32, boxes_kept=0.5, reference_boxes=40, threshold=0.25)
    with pytest.raises(FidelityGateError, match=r"boxes_kept 0\.5000 < required"):
        check_fidelity(bad, fidelity_minimums(task, options), DATA)


def test_nothing_detected_by_the_fp32_model_cannot_be_judged_for_any_detection_task():
    empty = FidelityReport("segment", "mAP@0.5 vs reference", float("nan"), 32, boxes_kept=float("nan"),
                           reference_boxes=0, threshold=0.25)
    check_fidelity(empty, fidelity_minimums("segment", BuildOptions()), DATA)  # warns, does not fail
