"""Label-free fidelity: how closely a candidate engine reproduces its reference, the reference's outputs as truth.

- detection: mAP@0.5 of the candidate's detections (decoded at a low threshold) against the reference's
  detections at or above the decoder's confidence threshold, and the fraction of those reference boxes the
  candidate keeps (same class, IoU >= 0.5, candidate score above the same threshold);
- segmentation, pose, oriented boxes: the same, plus, over the boxes kept, the mean mask IoU (segment) or the
  mean OKS of the keypoints (pose); oriented boxes are matched by their rotated IoU (the mAP stays that of the
  axis-aligned boxes around them);
- classification: top-1 agreement and top-5 overlap of the two score vectors;
- every output: cosine, absolute and relative error, and the agreement of thresholded values (> 0.5 for
  outputs the reference keeps within [0, 1], such as probabilities; the sign otherwise).

Per-output cosine alone hides broken builds: capped class scores barely move the cosine of a detector's
output, whose largest values are box coordinates, yet nothing is detected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lepton_edge.config.pipeline import DetectConfig
from lepton_edge.core.results import Detections
from lepton_edge.engines.evaluation.accuracy import mean_average_precision
from lepton_edge.runtime.postprocess.nms import box_iou
from lepton_edge.runtime.postprocess.obb import rotated_iou

DEFAULT_CONF_THRESHOLD: float = DetectConfig.model_fields["conf_threshold"].default
"""The detection decoder's default confidence threshold: reference boxes at or above it are the truth."""
IOU_THRESHOLD = 0.5
TOP_K = 5
PROBABILITY_THRESHOLD = 0.5
DETECTION_TASKS = ("detect", "segment", "pose", "obb")
"""Tasks whose results are :class:`Detections`: box mAP and boxes kept apply to all of them."""
KEYPOINT_VISIBLE = 0.5
"""Reference keypoints with a lower visibility are left out of OKS, as COCO leaves out unlabelled ones."""
OKS_KAPPA = 0.1
"""Per-keypoint OKS constant (2 sigma) when the keypoints are not COCO's 17; COCO's average is about 0.1."""
COCO_OKS_KAPPAS = np.array([0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87,
                            0.87, 0.89, 0.89]) / 10.0
"""COCO's per-keypoint constants (2 sigma) for its 17 person keypoints."""


@dataclass
class OutputDiff:
    """How far one candidate output is from the reference output, over all samples.

    Relative errors are scale-free: ``max_rel_error`` is the largest absolute error over the reference's
    largest magnitude, ``mean_rel_error`` the summed absolute error over the reference's summed magnitude.
    ``agreement`` is the fraction of values on the same side of ``threshold`` in both models.
    """

    name: str
    cosine_mean: float
    cosine_min: float
    max_abs_error: float
    mean_abs_error: float = 0.0
    max_rel_error: float = 0.0
    mean_rel_error: float = 0.0
    agreement: float = 1.0
    threshold: float = 0.0


@dataclass
class FidelityReport:
    """The candidate against the reference without labels; values are fractions (0..1).

    ``metric``/``value``: mAP@0.5 against the reference's detections (detectors), top-1 agreement
    (classifiers) or the lowest thresholded agreement of any output (raw models).
    """

    task: str
    metric: str
    value: float
    samples: int
    boxes_kept: float | None = None
    """Detectors: fraction of the reference's boxes (score >= ``threshold``) the candidate also reports."""
    reference_boxes: int | None = None
    threshold: float | None = None
    """Detectors: the confidence threshold that makes reference boxes truth and candidate boxes kept."""
    agreement: float | None = None
    """Classifiers: top-1 agreement; raw models: thresholded agreement (lowest of the outputs)."""
    top5_overlap: float | None = None
    """Classifiers: mean fraction of the reference's top-5 classes also in the candidate's top 5."""
    mask_iou: float | None = None
    """Segmenters: mean mask IoU of the boxes kept (NaN when none is kept)."""
    keypoint_oks: float | None = None
    """Pose models: mean OKS of the keypoints of the boxes kept (NaN when none is kept)."""
    max_rel_error: float = 0.0
    """Largest relative error of any output (see :class:`OutputDiff`)."""

    def format(self) -> str:
        """One or two human-readable lines."""
        line = f"fidelity ({self.samples} samples, no labels needed): {self.metric} {self.value:.4f}"
        if self.boxes_kept is not None:
            line += (f"  boxes kept {self.boxes_kept:.1%} of {self.reference_boxes} reference boxes "
                     f"(score >= {self.threshold:g}, IoU >= {IOU_THRESHOLD:g}, same class)")
        if self.top5_overlap is not None:
            line += f"  top-{TOP_K} overlap {self.top5_overlap:.4f}"
        if self.mask_iou is not None:
            line += f"  mask IoU {self.mask_iou:.4f}"
        if self.keypoint_oks is not None:
            line += f"  keypoint OKS {self.keypoint_oks:.4f}"
        return f"{line}\nlargest relative error of any output: {self.max_rel_error:.4g}"


# ----------------------------------------------------------------------------------------------
# Detection
# ----------------------------------------------------------------------------------------------

@dataclass
class DetectionFidelity:
    map: float
    """mAP@0.5 of the candidate against the reference's confident boxes (NaN when the reference has none)."""
    boxes_kept: float
    """Fraction of the reference's confident boxes the candidate keeps (NaN when there are none)."""
    reference_boxes: int


def confident(detections: Detections, conf_threshold: float) -> Detections:
    """The detections scoring at or above ``conf_threshold``, with their masks, keypoints and rotated boxes."""
    return detections.select(detections.scores >= conf_threshold)


def reference_truth(reference: list[Detections], conf_threshold: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """The reference's confident boxes as ``(boxes, class_ids)`` ground truth, one pair per image."""
    return [(d.boxes, d.class_ids) for d in (confident(r, conf_threshold) for r in reference)]


def overlaps(reference: Detections, candidate: Detections) -> np.ndarray:
    """Pairwise IoU: of the rotated boxes when both carry them, else of the boxes."""
    if reference.rotated is not None and candidate.rotated is not None:
        return rotated_iou(reference.rotated.corners(), candidate.rotated.corners())
    return box_iou(reference.boxes, candidate.boxes)


def matched_pairs(reference: Detections, candidate: Detections,
                  iou_threshold: float = IOU_THRESHOLD) -> list[tuple[int, int]]:
    """(reference, candidate) index pairs: same class, IoU >= threshold, each candidate used once.

    Reference boxes are matched in falling score order, each to its best unused candidate box.
    """
    if not len(reference) or not len(candidate):
        return []
    ious = overlaps(reference, candidate)
    ious[reference.class_ids[:, None] != candidate.class_ids[None, :]] = -1.0
    used = np.zeros(len(candidate), bool)
    pairs = []
    for row in np.argsort(-reference.scores, kind="stable"):
        row_overlaps = np.where(used, -1.0, ious[row])
        best = int(np.argmax(row_overlaps))
        if row_overlaps[best] >= iou_threshold:
            used[best] = True
            pairs.append((int(row), best))
    return pairs


def kept_in_image(reference: Detections, candidate: Detections, iou_threshold: float = IOU_THRESHOLD) -> int:
    """How many reference boxes a candidate box matches (same class, IoU >= threshold), each used once."""
    return len(matched_pairs(reference, candidate, iou_threshold))


def boxes_kept(reference: list[Detections], candidate: list[Detections],
               conf_threshold: float = DEFAULT_CONF_THRESHOLD) -> tuple[int, int]:
    """(kept, total): the reference's boxes at or above ``conf_threshold`` the candidate reports above it too."""
    kept = total = 0
    for ref, cand in zip(reference, candidate, strict=True):
        ref, cand = confident(ref, conf_threshold), confident(cand, conf_threshold)
        kept += kept_in_image(ref, cand)
        total += len(ref)
    return kept, total


def detection_fidelity(reference: list[Detections], candidate: list[Detections],
                       conf_threshold: float = DEFAULT_CONF_THRESHOLD) -> DetectionFidelity:
    """mAP@0.5 and boxes kept of ``candidate`` (decoded at a low threshold) against ``reference``'s boxes."""
    if len(reference) != len(candidate):
        raise ValueError(f"detection_fidelity: {len(reference)} reference images but {len(candidate)} candidate")
    truth = reference_truth(reference, conf_threshold)
    kept, total = boxes_kept(reference, candidate, conf_threshold)
    if not total:
        return DetectionFidelity(float("nan"), float("nan"), 0)
    num_classes = 1 + max(int(d.class_ids.max()) for d in [*reference, *candidate] if len(d))
    result = mean_average_precision(candidate, truth, num_classes, iou_threshold=IOU_THRESHOLD)
    return DetectionFidelity(result["map"], kept / total, total)


# ----------------------------------------------------------------------------------------------
# Masks and keypoints of the boxes kept
# ----------------------------------------------------------------------------------------------

def mask_iou(reference: Detections, candidate: Detections, pair: tuple[int, int]) -> float:
    """IoU of the masks of one (reference, candidate) pair (1.0 when both are empty)."""
    assert reference.masks is not None and candidate.masks is not None
    a, b = reference.masks.dense(pair[0]), candidate.masks.dense(pair[1])
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 1.0


def keypoint_oks(reference: Detections, candidate: Detections, pair: tuple[int, int]) -> float | None:
    """COCO's object keypoint similarity of one pair: the mean over the reference's visible keypoints of
    ``exp(-d^2 / (2 s^2 kappa^2))``, ``s^2`` the reference box's area, ``kappa`` COCO's per keypoint for 17
    keypoints, else :data:`OKS_KAPPA`. None when no reference keypoint is visible."""
    assert reference.keypoints is not None and candidate.keypoints is not None
    ref, cand = reference.keypoints.data[pair[0]], candidate.keypoints.data[pair[1]]
    visible = ref[:, 2] >= KEYPOINT_VISIBLE if ref.shape[1] == 3 else np.ones(len(ref), bool)
    if not visible.any():
        return None
    x1, y1, x2, y2 = reference.boxes[pair[0]].astype(np.float64)
    area = max((x2 - x1) * (y2 - y1), 1.0)
    kappa = COCO_OKS_KAPPAS if len(ref) == len(COCO_OKS_KAPPAS) else np.full(len(ref), OKS_KAPPA)
    distance2 = np.sum((ref[:, :2].astype(np.float64) - cand[:, :2]) ** 2, axis=1)
    return float(np.mean(np.exp(-distance2 / (2 * area * kappa**2))[visible]))


def kept_agreement(reference: list[Detections], candidate: list[Detections], task: str,
                   conf_threshold: float = DEFAULT_CONF_THRESHOLD) -> float | None:
    """Mean mask IoU (segment) or keypoint OKS (pose) over the boxes kept; None for other tasks, NaN when no box is
    kept (or, for pose, no kept box has a visible keypoint)."""
    if task not in ("segment", "pose"):
        return None
    values: list[float] = []
    for ref, cand in zip(reference, candidate, strict=True):
        ref, cand = confident(ref, conf_threshold), confident(cand, conf_threshold)
        for pair in matched_pairs(ref, cand):
            value = mask_iou(ref, cand, pair) if task == "segment" else keypoint_oks(ref, cand, pair)
            if value is not None:
                values.append(value)
    return float(np.mean(values)) if values else float("nan")


# ----------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------

def top_classes(scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best class ids of a score vector, best first."""
    return np.argsort(-np.asarray(scores), kind="stable")[:k]


def classification_agreement(reference: list[np.ndarray], candidate: list[np.ndarray],
                             k: int = TOP_K) -> tuple[float, float]:
    """(top-1 agreement, mean top-``k`` overlap) of per-sample class score vectors."""
    if not reference or len(reference) != len(candidate):
        raise ValueError(f"classification_agreement: {len(reference)} reference and {len(candidate)} candidate "
                         "samples; need the same number, at least one")
    top1 = [int(np.argmax(r)) == int(np.argmax(c)) for r, c in zip(reference, candidate, strict=True)]
    overlap = []
    for r, c in zip(reference, candidate, strict=True):
        best_r, best_c = top_classes(r, k), top_classes(c, k)
        overlap.append(len(np.intersect1d(best_r, best_c)) / len(best_r))
    return float(np.mean(top1)), float(np.mean(overlap))


# ----------------------------------------------------------------------------------------------
# Any output
# ----------------------------------------------------------------------------------------------

def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays, flattened (1.0 when both are zero)."""
    a = a.reshape(-1).astype(np.float64)
    b = b.reshape(-1).astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def output_threshold(reference: np.ndarray) -> float:
    """0.5 for values within [0, 1] (probabilities), else 0 (the sign)."""
    values = np.asarray(reference)
    in_unit_range = values.size and values.min() >= 0.0 and values.max() <= 1.0
    return PROBABILITY_THRESHOLD if in_unit_range else 0.0


def thresholded_agreement(reference: np.ndarray, candidate: np.ndarray, threshold: float | None = None) -> float:
    """Fraction of values on the same side of ``threshold`` (by default :func:`output_threshold`)."""
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    if not reference.size:
        return 1.0
    threshold = output_threshold(reference) if threshold is None else threshold
    return float(np.mean((reference > threshold) == (candidate > threshold)))


def _ratio(numerator: float, denominator: float) -> float:
    if denominator > 0:
        return numerator / denominator
    return 0.0 if numerator == 0 else float("inf")


class OutputErrors:
    """Numeric differences of one output, accumulated sample by sample."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.cosines: list[float] = []
        self.count = 0
        self.max_abs = self.sum_abs = 0.0
        self.ref_peak = self.ref_sum = 0.0
        self.in_unit_range = True
        self.same_side = {PROBABILITY_THRESHOLD: 0, 0.0: 0}

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        """Add one sample's reference and candidate values (same shape)."""
        r, c = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
        self.cosines.append(cosine(r, c))
        if not r.size:
            return
        error, magnitude = np.abs(r - c), np.abs(r)
        self.count += r.size
        self.max_abs = max(self.max_abs, float(error.max()))
        self.sum_abs += float(error.sum())
        self.ref_peak = max(self.ref_peak, float(magnitude.max()))
        self.ref_sum += float(magnitude.sum())
        self.in_unit_range = self.in_unit_range and output_threshold(r) == PROBABILITY_THRESHOLD
        for threshold in self.same_side:
            self.same_side[threshold] += int(np.count_nonzero((r > threshold) == (c > threshold)))

    def diff(self) -> OutputDiff:
        nan = float("nan")
        threshold = PROBABILITY_THRESHOLD if self.in_unit_range and self.count else 0.0
        return OutputDiff(
            self.name,
            float(np.mean(self.cosines)) if self.cosines else nan,
            float(np.min(self.cosines)) if self.cosines else nan,
            self.max_abs,
            mean_abs_error=_ratio(self.sum_abs, self.count),
            max_rel_error=_ratio(self.max_abs, self.ref_peak),
            mean_rel_error=_ratio(self.sum_abs, self.ref_sum),
            agreement=_ratio(self.same_side[threshold], self.count) if self.count else 1.0,
            threshold=threshold,
        )


def largest_rel_error(outputs: list[OutputDiff]) -> float:
    return max((o.max_rel_error for o in outputs), default=0.0)


def detection_report(reference: list[Detections], candidate: list[Detections], outputs: list[OutputDiff],
                     conf_threshold: float = DEFAULT_CONF_THRESHOLD, task: str = "detect") -> FidelityReport:
    """The report of a detection-family model (``task`` one of :data:`DETECTION_TASKS`)."""
    found = detection_fidelity(reference, candidate, conf_threshold)
    agreement = kept_agreement(reference, candidate, task, conf_threshold)
    return FidelityReport(task, "mAP@0.5 vs reference", found.map, len(reference), boxes_kept=found.boxes_kept,
                          reference_boxes=found.reference_boxes, threshold=conf_threshold,
                          max_rel_error=largest_rel_error(outputs),
                          mask_iou=agreement if task == "segment" else None,
                          keypoint_oks=agreement if task == "pose" else None)


def classification_report(reference: list[np.ndarray], candidate: list[np.ndarray],
                          outputs: list[OutputDiff]) -> FidelityReport:
    top1, overlap = classification_agreement(reference, candidate)
    return FidelityReport("classify", "top-1 agreement", top1, len(reference), agreement=top1,
                          top5_overlap=overlap, max_rel_error=largest_rel_error(outputs))


def raw_report(outputs: list[OutputDiff], samples: int) -> FidelityReport:
    lowest = min((o.agreement for o in outputs), default=1.0)
    return FidelityReport("raw", "thresholded agreement", lowest, samples, agreement=lowest,
                          max_rel_error=largest_rel_error(outputs))
