"""The annotated video shows zones, lines with their counts and track ids."""

import numpy as np

from lepton_edge.config.pipeline import AnalyticsConfig
from lepton_edge.core.results import Result
from lepton_edge.runtime.analytics import Analytics
from lepton_edge.runtime.sinks.video import annotate
from tests.runtime.tracking.helpers import tracked


def test_zones_lines_counts_and_track_ids_are_drawn():
    config = AnalyticsConfig.model_validate(
        {
            "zones": [{"name": "door", "polygon": [[20, 20], [120, 20], [120, 120], [20, 120]]}],
            "lines": [{"name": "gate", "start": [0, 200], "end": [320, 200]}],
        }
    )
    analytics = Analytics(config)
    analytics.update(tracked([7], [(250, 150)]), 0.0, (320, 240))
    detections = tracked([7], [(250, 230)])
    frame = analytics.update(detections, 0.1, (320, 240))
    assert frame.line_counts == {"gate": {"in": 1, "out": 0}}
    image = np.zeros((240, 320, 3), np.uint8)
    result = Result(detections, 1, "s", 0.0, 0.0, {}, analytics=frame)
    plain = annotate(image, Result(detections, 1, "s", 0.0, 0.0, {}))
    drawn = annotate(image, result)
    assert (drawn[200, 5:315] != 0).any(axis=1).mean() > 0.5  # the line, across the frame
    assert (drawn[20:121, 20] != 0).any(axis=1).mean() > 0.9  # the zone's left edge
    assert (drawn != plain).any(axis=2).sum() > 500  # plus the labels
    detections.tracks.ids[:] = -1
    assert (annotate(image, Result(detections, 1, "s", 0.0, 0.0, {})) != plain).any()  # "#7" is in the label
