"""ByteTrack-style association over a time-based motion model.

Per frame at capture time ``t`` (seconds):

1. every track is predicted ``t - t_previous`` seconds forward (:class:`~.motion.BoxMotion`);
2. high-score detections are matched to confirmed tracks, live or lost, by IoU with the predicted boxes;
3. low-score detections are matched to the confirmed tracks still live and unmatched (ByteTrack's second stage:
   an occluded object's weak detection keeps its track);
4. tentative tracks take the high-score detections left, by IoU; a tentative track that misses is dropped;
5. confirmed tracks still unmatched may take a high-score detection left whose centre lies within ``recover_gate``
   standard deviations of the predicted centre (the prediction's uncertainty grows with the time it was lost), or,
   for a moving track, one on its path: within ``recover_gate`` deviations of the line through where it was last
   seen along its velocity, between that point and four times the predicted displacement (an object that braked or
   sped up since it was last seen, which a constant-velocity prediction misses);
6. high-score detections still left with at least ``new_track_threshold`` start tentative tracks, confirmed (and
   given an id) after ``confirm_hits`` detections;
7. a confirmed track without a detection for more than ``max_lost_s`` seconds of capture time ends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from lepton_edge.config.pipeline import TrackingConfig
from lepton_edge.core.results import Detections, Tracks
from lepton_edge.runtime.tracking.association import assign, iou_matrix
from lepton_edge.runtime.tracking.motion import BoxMotion

PATH_SPAN = 4.0
"""The path gate reaches this many times the predicted displacement since a track was last seen."""


@dataclass(slots=True)
class TrackUpdate:
    """One frame's tracking: the detections with their tracks, and the ids of tracks that ended."""

    detections: Detections
    ended: tuple[int, ...]


class Tracker:
    """Tracks of one stream. ``update`` takes each frame's detections with its capture time (seconds)."""

    def __init__(self, config: TrackingConfig) -> None:
        self.config = config
        self.next_id = 1
        """Ids are never reused, not even after a reset."""
        self.reset()

    def __len__(self) -> int:
        return len(self.ids)

    def reset(self) -> list[int]:
        """Forget every track (a new source); returns the ids that ended."""
        ended = [int(i) for i in getattr(self, "ids", ()) if i > 0]
        self.motion = BoxMotion(self.config.motion_noise, self.config.measurement_noise)
        self.ids = np.zeros(0, np.int64)  # 0 while tentative
        self.classes = np.zeros(0, np.int64)
        self.hits = np.zeros(0, np.int64)
        self.first_ts = np.zeros(0)
        self.last_ts = np.zeros(0)
        self.seen_at = np.zeros((0, 2))
        """Centre of each track when it was last detected (after correction)."""
        self.clock: float | None = None
        self._previous_frame_ts = -np.inf
        return ended

    def update(self, detections: Detections, t: float) -> TrackUpdate:
        cfg = self.config
        ended: list[int] = []
        if self.clock is not None and t < self.clock:
            ended += self.reset()  # time went backwards: another source, not the same objects
        self.motion.predict(t - self.clock if self.clock is not None else 0.0)
        self.clock = t

        n = len(detections)
        boxes, scores, classes = detections.boxes.astype(np.float64), detections.scores, detections.class_ids
        det_track = np.full(n, -1, np.int64)  # row of the track each detection went to
        free_det = scores >= cfg.low_threshold
        high = scores >= cfg.high_threshold
        free_track = np.ones(len(self), bool)
        confirmed = self.ids > 0
        predicted = self.motion.boxes()

        def same_class(rows: np.ndarray, cols: np.ndarray) -> np.ndarray | bool:
            return True if cfg.class_agnostic else self.classes[rows][:, None] == classes[cols][None, :]

        def overlap_cost(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
            return 1.0 - np.where(same_class(rows, cols), iou_matrix(predicted[rows], boxes[cols]), 0.0)

        def position_cost(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
            d2 = self.motion.centre_distance2(rows, boxes[cols])
            ratio = (boxes[cols, 3] - boxes[cols, 1])[None, :] / np.maximum(self.motion.x[rows, 3:4], 1.0)
            return np.where(same_class(rows, cols) & (ratio > 0.5) & (ratio < 2.0), d2, np.inf)

        def path_cost(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
            """Squared distance, in deviations, from each detection's centre to the line each track moves along,
            for detections between where it was last seen and ``PATH_SPAN`` times its predicted displacement."""
            shift = self.motion.v[rows, :2] * (t - self.last_ts[rows])[:, None]
            length = np.maximum(np.hypot(shift[:, 0], shift[:, 1]), 1e-9)
            heading = shift / length[:, None]
            centres = (boxes[cols, :2] + boxes[cols, 2:]) / 2
            rel = centres[None, :, :] - self.seen_at[rows, None, :]
            along = (rel * heading[:, None, :]).sum(axis=2) / length[:, None]
            across = rel[..., 0] * heading[:, None, 1] - rel[..., 1] * heading[:, None, 0]
            moving = (length > 0.25 * self.motion.x[rows, 3])[:, None]  # a path, not a point (position_cost)
            on_path = moving & (along >= 0) & (along <= PATH_SPAN) & (position_cost(rows, cols) < np.inf)
            return np.where(on_path, across * across / self.p_across(rows)[:, None], np.inf)

        def match(track_mask: np.ndarray, det_mask: np.ndarray, cost: Callable, max_cost: float) -> None:
            rows, cols = np.flatnonzero(track_mask & free_track), np.flatnonzero(det_mask & free_det)
            if not len(rows) or not len(cols):
                return
            r, c = assign(cost(rows, cols), max_cost)
            det_track[cols[c]] = rows[r]
            free_track[rows[r]] = False
            free_det[cols[c]] = False

        max_iou_cost = 1.0 - cfg.match_iou
        seen_last = self.last_ts >= self._previous_frame_ts
        match(confirmed, high, overlap_cost, max_iou_cost)  # stage 1: high scores, live and lost tracks
        match(confirmed & seen_last, ~high, overlap_cost, max_iou_cost)  # stage 2: low scores, live tracks
        match(~confirmed, high, overlap_cost, max_iou_cost)  # tentative tracks
        if cfg.recover_gate > 0:  # tracks left unmatched by overlap (missed or lost), by predicted position
            match(confirmed, high, position_cost, cfg.recover_gate**2)
            match(confirmed, high, path_cost, cfg.recover_gate**2)

        matched = det_track >= 0
        rows = det_track[matched]
        self.motion.update(rows, boxes[matched])
        self.seen_at[rows] = self.motion.x[rows, :2]
        self.hits[rows] += 1
        self.last_ts[rows] = t
        if cfg.class_agnostic:
            self.classes[rows] = classes[matched]
        newly = rows[(self.ids[rows] == 0) & (self.hits[rows] >= cfg.confirm_hits)]
        self.ids[newly] = np.arange(self.next_id, self.next_id + len(newly))
        self.next_id += len(newly)

        keep = np.ones(len(self), bool)
        keep &= ~((self.ids == 0) & free_track)  # a tentative track that missed
        expired = (self.ids > 0) & (t - self.last_ts > cfg.max_lost_s)
        ended += self.ids[expired].tolist()
        keep &= ~expired
        self._keep(keep, det_track)

        starts = np.flatnonzero(free_det & high & (scores >= cfg.new_track_threshold))
        if len(starts):
            det_track[starts] = np.arange(len(self), len(self) + len(starts))
            self.motion.add(boxes[starts])
            self.ids = np.concatenate([self.ids, np.zeros(len(starts), np.int64)])
            self.classes = np.concatenate([self.classes, classes[starts]])
            self.hits = np.concatenate([self.hits, np.ones(len(starts), np.int64)])
            self.first_ts = np.concatenate([self.first_ts, np.full(len(starts), t)])
            self.last_ts = np.concatenate([self.last_ts, np.full(len(starts), t)])
            self.seen_at = np.concatenate([self.seen_at, self.motion.x[-len(starts) :, :2]])
            if cfg.confirm_hits <= 1:
                self.ids[-len(starts) :] = np.arange(self.next_id, self.next_id + len(starts))
                self.next_id += len(starts)
        ended += self._cap(det_track)
        self._previous_frame_ts = t
        return TrackUpdate(self._annotate(detections, det_track, t), tuple(ended))

    def _keep(self, keep: np.ndarray, det_track: np.ndarray) -> None:
        """Drop the rows not in ``keep`` and renumber ``det_track`` (in place) to the rows that stay."""
        if keep.all():
            return
        new_row = np.cumsum(keep) - 1
        valid = det_track >= 0
        det_track[valid] = np.where(keep[det_track[valid]], new_row[det_track[valid]], -1)
        self.motion.keep(keep)
        for name in ("ids", "classes", "hits", "first_ts", "last_ts", "seen_at"):
            setattr(self, name, getattr(self, name)[keep])

    def p_across(self, rows: np.ndarray) -> np.ndarray:
        """Variance across a track's path: its centre's position variance plus a detection's."""
        x = self.motion.x[rows]
        return self.motion.p00[rows, :2].mean(axis=1) + self.motion.measurement_var(x)[:, 0]

    def _cap(self, det_track: np.ndarray) -> list[int]:
        """End the longest-lost tracks beyond ``max_tracks``."""
        extra = len(self) - self.config.max_tracks
        if extra <= 0:
            return []
        oldest = np.argsort(self.last_ts, kind="stable")[:extra]
        keep = np.ones(len(self), bool)
        keep[oldest] = False
        ended = [int(i) for i in self.ids[oldest] if i > 0]
        self._keep(keep, det_track)
        return ended

    def _annotate(self, detections: Detections, det_track: np.ndarray, t: float) -> Detections:
        n = len(detections)
        ids = np.full(n, -1, np.int64)
        ages = np.zeros(n, np.float32)
        velocities = np.zeros((n, 2), np.float32)
        on = det_track >= 0
        rows = det_track[on]
        ids[on] = np.where(self.ids[rows] > 0, self.ids[rows], -1)
        ages[on] = t - self.first_ts[rows]
        velocities[on] = self.motion.v[rows, :2]
        smoothed = detections.boxes.copy()
        smoothed[on] = self.motion.boxes()[rows]
        return replace(detections, tracks=Tracks(ids, ages, velocities, smoothed))
