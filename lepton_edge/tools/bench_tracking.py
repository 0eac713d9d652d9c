"""``lepton-edge bench --tracking``: our tracker against supervision's ByteTrack on the same detections.

Sequences are generated with exact ground truth (a seed makes them repeatable): objects enter at one edge and
leave at another on crossing paths, change speed, pass behind two occluding pillars (where they are mostly
missed or weakly detected). A detector is simulated from the truth: jittered boxes, missed detections, false
positives, scores that vary (some true ones low, ByteTrack's second stage). Both trackers get the same detections,
at the full frame rate and with half of the frames dropped at random (what latest-frame-wins does under load);
ours also gets each frame's capture time, the peer only the order. py-motmetrics scores IDF1, MOTA and ID
switches; our line and zone counts are compared with the exact counts of the truth; the cost per frame of
tracking plus analytics is timed with 50 objects in view. Needs the ``bench`` extra.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lepton_edge.config.pipeline import AnalyticsConfig, TrackingConfig
from lepton_edge.core.results import Detections
from lepton_edge.runtime.analytics import Analytics, anchor_points
from lepton_edge.runtime.analytics.geometry import inside_polygon, signed_distance_to_line
from lepton_edge.runtime.tracking import Tracker
from lepton_edge.runtime.tracking.association import iou_matrix

WIDTH, HEIGHT, FPS = 1280, 720, 30.0
PILLARS = np.array([[380, 60, 460, 250], [880, 60, 960, 250]], np.float64)
"""Occluders (xyxy): an object whose centre is behind one is mostly missed. They hide neither the counting lines
nor the zone: a crossing no detector sees cannot be counted by any tracker (they test identity)."""
LINES = {"vertical": ((640.0, 60.0), (640.0, 660.0)), "horizontal": ((120.0, 400.0), (1160.0, 400.0))}
ZONE = ((480.0, 100.0), (820.0, 100.0), (820.0, 330.0), (480.0, 330.0))
LABELS = ("person", "car")


@dataclass(frozen=True)
class DetectorNoise:
    """How the simulated detector departs from the truth."""

    jitter: float = 0.04  # spread of each box edge, fraction of the box height
    miss: float = 0.08  # chance a visible object is not detected
    low_score: float = 0.12  # chance a detection scores 0.15..0.5 instead of 0.55..0.95
    false_positives: float = 1.0  # per frame (Poisson), scores 0.1..0.65
    occluded_seen: float = 0.3  # chance an object behind a pillar is detected (with a low score)


@dataclass
class Sequence:
    """Ground truth and detections per frame, with capture times."""

    times: np.ndarray
    truth: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # ids, boxes xyxy, classes
    detections: list[Detections]
    anchors: dict[int, list[tuple[int, np.ndarray]]] = field(default_factory=dict)  # id -> (frame, anchor)


def _objects(rng: np.random.Generator, seconds: float, count: int) -> list[dict[str, Any]]:
    objects = []
    for i in range(count):
        edge = int(rng.integers(4))
        w = float(rng.uniform(30, 90))
        h = w * float(rng.uniform(0.8, 2.2))
        speed = float(rng.uniform(80, 320))
        if edge < 2:  # from the left or right
            y = float(rng.uniform(0.15, 0.85)) * HEIGHT
            start = np.array([-w if edge == 0 else WIDTH + w, y])
            heading = np.array([1.0 if edge == 0 else -1.0, float(rng.uniform(-0.25, 0.25))])
        else:  # from the top or bottom
            x = float(rng.uniform(0.1, 0.9)) * WIDTH
            start = np.array([x, -h if edge == 2 else HEIGHT + h])
            heading = np.array([float(rng.uniform(-0.25, 0.25)), 1.0 if edge == 2 else -1.0])
        changes = sorted(rng.uniform(0, 12, int(rng.integers(1, 4))).tolist())
        objects.append(
            {
                "id": i + 1,
                "t0": float(rng.uniform(0, max(seconds - 3, 0.1))),
                "start": start,
                "velocity": heading / np.linalg.norm(heading) * speed,
                "size": (w, h),
                "changes": [(c, float(rng.uniform(0.3, 1.8))) for c in changes],
                "cls": int(rng.integers(2)),
            }
        )
    return objects


def _position(obj: dict[str, Any], t: float) -> np.ndarray:
    """Centre at time ``t`` (exact integral of the piecewise-constant speed)."""
    age, travelled, factor, last = t - obj["t0"], 0.0, 1.0, 0.0
    for at, new in obj["changes"]:
        if at >= age:
            break
        travelled += factor * (at - last)
        factor, last = new, at
    travelled += factor * (age - last)
    return obj["start"] + obj["velocity"] * travelled


def generate(seed: int, seconds: float = 30.0, objects: int = 70, noise: DetectorNoise | None = None) -> Sequence:
    """A deterministic sequence at ``FPS`` frames per second."""
    noise = noise or DetectorNoise()
    rng = np.random.default_rng(seed)
    objs = _objects(rng, seconds, objects)
    times = np.arange(int(seconds * FPS)) / FPS
    seq = Sequence(times, [], [])
    for f, t in enumerate(times):
        ids, boxes, classes = [], [], []
        for obj in objs:
            if t < obj["t0"]:
                continue
            (cx, cy), (w, h) = _position(obj, t), obj["size"]
            box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
            clipped = np.clip(box, [0, 0, 0, 0], [WIDTH, HEIGHT, WIDTH, HEIGHT])
            visible = (clipped[2] - clipped[0]) * (clipped[3] - clipped[1]) / (w * h)
            if visible >= 0.5:
                ids.append(obj["id"])
                boxes.append(clipped)
                classes.append(obj["cls"])
                seq.anchors.setdefault(obj["id"], []).append((f, anchor_points(clipped[None], "bottom_center")[0]))
        boxes_a = np.array(boxes).reshape(-1, 4)
        seq.truth.append((np.array(ids, np.int64), boxes_a, np.array(classes, np.int64)))
        seq.detections.append(_detect(rng, boxes_a, np.array(classes, np.int64), noise))
    return seq


def _detect(rng: np.random.Generator, boxes: np.ndarray, classes: np.ndarray, noise: DetectorNoise) -> Detections:
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    behind = (
        (centres[:, None, 0] > PILLARS[None, :, 0])
        & (centres[:, None, 0] < PILLARS[None, :, 2])
        & (centres[:, None, 1] > PILLARS[None, :, 1])
        & (centres[:, None, 1] < PILLARS[None, :, 3])
    ).any(1)
    n = len(boxes)
    seen = np.where(behind, rng.random(n) < noise.occluded_seen, rng.random(n) >= noise.miss)
    low = behind | (rng.random(n) < noise.low_score)
    scores = np.where(low, rng.uniform(0.15, 0.5, n), rng.uniform(0.55, 0.95, n))
    heights = (boxes[:, 3] - boxes[:, 1])[:, None]
    jittered = boxes + rng.normal(0, noise.jitter, (n, 4)) * heights
    fp = int(rng.poisson(noise.false_positives))
    fw = rng.uniform(30, 90, fp)
    fx, fy = rng.uniform(0, WIDTH - 90, fp), rng.uniform(0, HEIGHT - 180, fp)
    fp_boxes = np.stack([fx, fy, fx + fw, fy + fw * rng.uniform(0.8, 2.2, fp)], axis=1)
    return Detections(
        np.concatenate([jittered[seen], fp_boxes]),
        np.concatenate([scores[seen], rng.uniform(0.1, 0.65, fp)]),
        np.concatenate([classes[seen], rng.integers(0, 2, fp)]),
        LABELS,
    )


def truth_counts(seq: Sequence) -> dict[str, int]:
    """Exact counts: line crossings per direction from consecutive true positions, zone entries."""
    counts = {f"{name} {d}": 0 for name in LINES for d in ("in", "out")} | {"zone entries": 0}
    zone = np.array(ZONE)
    for track in seq.anchors.values():
        points = np.array([p for _, p in track])
        for name, (a, b) in LINES.items():
            a_, b_ = np.array(a), np.array(b)
            s = signed_distance_to_line(points, a_, b_)
            d = b_ - a_
            for i in np.flatnonzero(np.sign(s[1:]) != np.sign(s[:-1])):
                x = points[i] + (points[i + 1] - points[i]) * (s[i] / (s[i] - s[i + 1]))
                if 0 <= np.dot(x - a_, d) / np.dot(d, d) <= 1:
                    counts[f"{name} {'in' if s[i + 1] > 0 else 'out'}"] += 1
        inside = inside_polygon(points, zone)
        counts["zone entries"] += int(inside[0]) + int((inside[1:] & ~inside[:-1]).sum())
    return counts


def analytics_config() -> AnalyticsConfig:
    return AnalyticsConfig.model_validate(
        {
            "zones": [{"name": "zone", "polygon": [list(p) for p in ZONE]}],
            "lines": [{"name": name, "start": list(a), "end": list(b)} for name, (a, b) in LINES.items()],
        }
    )


def keep_frames(n: int, drop: float, seed: int) -> np.ndarray:
    """Indices of the frames a tracker sees when ``drop`` of them are dropped at random. The first and the last are
    kept: latest-frame-wins drops a frame only for a newer one, and nothing newer replaces a stream's last frame."""
    keep = np.random.default_rng(seed + 7919).random(n) >= drop
    keep[0] = keep[-1] = True
    return np.flatnonzero(keep)


def run_ours(seq: Sequence, frames: np.ndarray, config: TrackingConfig) -> tuple[list, dict[str, int], list[float]]:
    tracker, analytics = Tracker(config), Analytics(analytics_config())
    out, costs = [], []
    for f in frames:
        t0 = time.perf_counter()
        update = tracker.update(seq.detections[f], float(seq.times[f]))
        analytics.update(update.detections, float(seq.times[f]), (WIDTH, HEIGHT), update.ended)
        costs.append((time.perf_counter() - t0) * 1000)
        d = update.detections
        on = d.tracks.ids >= 0
        out.append((d.tracks.ids[on], d.boxes[on]))
    # The sequence ends: so do its tracks (a crossing on its last frames counts, a zone visit ends).
    analytics.update(Detections.empty(LABELS), float(seq.times[frames[-1]]), (WIDTH, HEIGHT), tuple(tracker.reset()))
    counts = {f"{line.name} {d}": line.totals[d] for line, _ in analytics.lines for d in ("in", "out")}
    counts["zone entries"] = sum(z.entered.total() for z, _ in analytics.zones)
    return out, counts, costs


def run_peer(seq: Sequence, frames: np.ndarray, config: TrackingConfig) -> tuple[list, dict[str, int], list[float]]:
    """supervision's ByteTrack with the same thresholds and lost-track time (in frames of the full rate), and
    supervision's LineZone on its tracks."""
    import supervision as sv

    tracker = sv.ByteTrack(
        track_activation_threshold=config.high_threshold,
        lost_track_buffer=round(config.max_lost_s * FPS),
        minimum_matching_threshold=1 - config.match_iou,
        frame_rate=round(FPS),
        minimum_consecutive_frames=config.confirm_hits,
    )
    lines = {
        name: sv.LineZone(sv.Point(*a), sv.Point(*b), triggering_anchors=[sv.Position.BOTTOM_CENTER])
        for name, (a, b) in LINES.items()
    }
    out, costs = [], []
    for f in frames:
        det = seq.detections[f]
        t0 = time.perf_counter()
        tracked = tracker.update_with_detections(
            sv.Detections(det.boxes.copy(), confidence=det.scores.copy(), class_id=det.class_ids.copy())
        )
        for line in lines.values():
            line.trigger(tracked)
        costs.append((time.perf_counter() - t0) * 1000)
        ids = tracked.tracker_id if tracked.tracker_id is not None else np.zeros(0, np.int64)
        out.append((np.asarray(ids, np.int64), tracked.xyxy))
    # LineZone's in/out follow its own convention: compared as totals.
    counts = {f"{name} total": line.in_count + line.out_count for name, line in lines.items()}
    return out, counts, costs


def score(seq: Sequence, frames: np.ndarray, hypotheses: list, name: str) -> Any:
    import motmetrics as mm

    acc = mm.MOTAccumulator(auto_id=True)
    for f, (hyp_ids, hyp_boxes) in zip(frames, hypotheses, strict=True):
        ids, boxes, _ = seq.truth[f]
        # motmetrics' own iou_matrix (the same 1 - IoU, NaN below 0.5) calls np.asfarray, gone in NumPy 2.
        distance = 1.0 - iou_matrix(boxes, np.asarray(hyp_boxes, np.float64).reshape(-1, 4))
        acc.update(ids.tolist(), hyp_ids.tolist(), np.where(distance <= 0.5, distance, np.nan))
    return acc


@dataclass(frozen=True)
class TrackingBenchOptions:
    seeds: tuple[int, ...] = (1, 2, 3)
    seconds: float = 30.0
    objects: int = 70
    drop: float = 0.5
    cost_frames: int = 300


def hota_data(seq: Sequence, frames: np.ndarray, hypotheses: list) -> dict[str, Any]:
    """One sequence in TrackEval's form: per frame, contiguous truth and tracker ids and their IoU."""
    gt_index: dict[int, int] = {}
    hyp_index: dict[int, int] = {}
    gt_ids, hyp_ids, similarity = [], [], []
    for f, (ids, boxes) in zip(frames, hypotheses, strict=True):
        truth_ids, truth_boxes, _ = seq.truth[f]
        gt_ids.append(np.array([gt_index.setdefault(int(i), len(gt_index)) for i in truth_ids], np.int64))
        hyp_ids.append(np.array([hyp_index.setdefault(int(i), len(hyp_index)) for i in ids], np.int64))
        similarity.append(iou_matrix(truth_boxes, np.asarray(boxes, np.float64).reshape(-1, 4)))
    return {
        "gt_ids": gt_ids,
        "tracker_ids": hyp_ids,
        "similarity_scores": similarity,
        "num_gt_ids": len(gt_index),
        "num_tracker_ids": len(hyp_index),
        "num_gt_dets": sum(len(i) for i in gt_ids),
        "num_tracker_dets": sum(len(i) for i in hyp_ids),
    }


def hota(sequences: list[dict[str, Any]]) -> float | None:
    """HOTA over the sequences by TrackEval (averaged over its IoU thresholds); None when it is not installed."""
    try:
        from trackeval.metrics import HOTA
    except ImportError:
        return None
    metric = HOTA()
    combined = metric.combine_sequences({str(i): metric.eval_sequence(d) for i, d in enumerate(sequences)})
    return float(np.mean(combined["HOTA"]))


def _metrics(accs: list, names: list[str]) -> dict[str, float]:
    import motmetrics as mm

    mh = mm.metrics.create()
    summary = mh.compute_many(
        accs,
        metrics=["idf1", "mota", "num_switches", "num_false_positives", "num_misses"],
        names=names,
        generate_overall=True,
    )
    row = summary.loc["OVERALL"]
    return {
        "IDF1": float(row["idf1"]),
        "MOTA": float(row["mota"]),
        "ID switches": float(row["num_switches"]),
        "FP": float(row["num_false_positives"]),
        "FN": float(row["num_misses"]),
    }


def cost_with_objects(
    objects: int, frames: int, config: TrackingConfig, seed: int = 11, rounds: int = 3
) -> dict[str, float]:
    """Milliseconds per frame (median and p99, the median of ``rounds`` interleaved rounds) of tracking +
    analytics with ``objects`` in view the whole time."""
    rng = np.random.default_rng(seed)
    starts = rng.uniform([50, 50], [WIDTH - 150, HEIGHT - 200], (objects, 2))
    velocity = rng.uniform(-60, 60, (objects, 2))
    size = rng.uniform([30, 40], [60, 120], (objects, 2))
    seq_dets = []
    for f in range(frames):
        c = starts + velocity * f / FPS
        c = np.abs((c + WIDTH * 2) % (2 * np.array([WIDTH, HEIGHT])) - np.array([WIDTH, HEIGHT]))  # bounce
        boxes = np.concatenate([c - size / 2, c + size / 2], axis=1) + rng.normal(0, 1.5, (objects, 4))
        seq_dets.append(Detections(boxes, rng.uniform(0.3, 0.95, objects), rng.integers(0, 2, objects), LABELS))
    seq = Sequence(np.arange(frames) / FPS, [], seq_dets)
    warm = frames // 10
    figures: dict[str, list[float]] = {}
    for _ in range(rounds):  # interleaved, so both see the same load on a shared machine
        for who, runner in (("ours", run_ours), ("peer", run_peer)):
            costs = runner(seq, np.arange(frames), config)[2][warm:]
            figures.setdefault(f"{who} median", []).append(float(np.median(costs)))
            figures.setdefault(f"{who} p99", []).append(float(np.percentile(costs, 99)))
    return {name: float(np.median(values)) for name, values in figures.items()}


def run_tracking_bench(
    options: TrackingBenchOptions | None = None, config: TrackingConfig | None = None
) -> dict[str, Any]:
    """Every figure of the comparison, from one run."""
    options = options or TrackingBenchOptions()
    config = config or TrackingConfig()
    report: dict[str, Any] = {"options": options.__dict__, "tracking": config.model_dump()}
    sequences = {seed: generate(seed, options.seconds, options.objects) for seed in options.seeds}
    for case, drop in (("full rate", 0.0), (f"{round(options.drop * 100)} % dropped", options.drop)):
        accs: dict[str, list] = {"ours": [], "peer": []}
        hota_inputs: dict[str, list] = {"ours": [], "peer": []}
        counts: dict[str, dict[str, int]] = {"truth": {}, "ours": {}, "peer": {}}
        for seed, seq in sequences.items():
            frames = keep_frames(len(seq.times), drop, seed)
            for who, runner in (("ours", run_ours), ("peer", run_peer)):
                hyps, got, _ = runner(seq, frames, config)
                accs[who].append(score(seq, frames, hyps, who))
                hota_inputs[who].append(hota_data(seq, frames, hyps))
                for k, v in got.items():
                    counts[who][k] = counts[who].get(k, 0) + v
            for k, v in truth_counts(seq).items():
                counts["truth"][k] = counts["truth"].get(k, 0) + v
        names = [str(s) for s in options.seeds]
        report[case] = {who: {"HOTA": hota(hota_inputs[who]), **_metrics(accs[who], names)} for who in ("ours", "peer")}
        report[case]["counts"] = counts
    report["cost 50 objects (ms/frame)"] = cost_with_objects(50, options.cost_frames, config)
    return report


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{'':28}{'ours':>10}{'supervision':>13}{'ratio':>8}   target"]
    for case in [k for k in report if k.endswith("rate") or k.endswith("dropped")]:
        ours, peer = report[case]["ours"], report[case]["peer"]
        dropped = case != "full rate"
        lines.append(f"{case}:")
        targets = {"IDF1": ">= 1.1x" if dropped else ">= 1.0x", "ID switches": "<= 0.5x" if dropped else ""}
        for metric in ("HOTA", "IDF1", "MOTA", "ID switches", "FP", "FN"):
            if ours.get(metric) is None:
                continue  # HOTA without TrackEval
            fmt = "{:.3f}" if metric in ("HOTA", "IDF1", "MOTA") else "{:.0f}"
            lines.append(
                f"  {metric:26}{fmt.format(ours[metric]):>10}{fmt.format(peer[metric]):>13}"
                f"{_ratio(ours[metric], peer[metric]):>8}   {targets.get(metric, '')}"
            )
        truth, mine, theirs = (report[case]["counts"][k] for k in ("truth", "ours", "peer"))
        for key, exact in truth.items():
            err = abs(mine.get(key, 0) - exact)
            lines.append(
                f"  count {key:20}{mine.get(key, 0):>10}{'':>13}{'':>8}   truth {exact}, error {err} "
                f"({100 * err / max(exact, 1):.1f} %)"
            )
        for key, got in theirs.items():
            name = key.split()[0]
            exact = truth[f"{name} in"] + truth[f"{name} out"]
            lines.append(
                f"  count {key:20}{mine[f'{name} in'] + mine[f'{name} out']:>10}{got:>13}{'':>8}   truth {exact}"
            )
    cost = report["cost 50 objects (ms/frame)"]
    lines.append("cost, 50 objects (ms/frame, tracking + lines/zones):")
    for stat in ("median", "p99"):
        target = "<= 1 ms" if stat == "median" else ""
        lines.append(
            f"  {stat:26}{cost[f'ours {stat}']:>10.3f}{cost[f'peer {stat}']:>13.3f}"
            f"{_ratio(cost[f'ours {stat}'], cost[f'peer {stat}']):>8}   {target}"
        )
    return "\n".join(lines)
