"""Detections for tracker and analytics tests: boxes from centres, optionally with tracks attached."""

import numpy as np

from lepton_edge.core.results import Detections, Tracks


def boxes_at(centres, size=(40.0, 80.0)):
    c = np.asarray(centres, np.float64).reshape(-1, 2)
    half = np.asarray(size) / 2
    return np.concatenate([c - half, c + half], axis=1)


def detections(centres, scores=None, classes=None, size=(40.0, 80.0), labels=("person", "car")):
    n = len(np.asarray(centres).reshape(-1, 2))
    return Detections(
        boxes_at(centres, size),
        np.full(n, 0.9) if scores is None else scores,
        np.zeros(n, np.int64) if classes is None else classes,
        labels,
    )


def tracked(ids, anchors, classes=None, size=(40.0, 80.0)):
    """Detections whose bottom-centre anchors are ``anchors``, on tracks ``ids``."""
    a = np.asarray(anchors, np.float64).reshape(-1, 2)
    centres = a - [0, size[1] / 2]
    d = detections(centres, classes=classes, size=size)
    n = len(a)
    d.tracks = Tracks(ids, np.zeros(n), np.zeros((n, 2)), d.boxes)
    return d
