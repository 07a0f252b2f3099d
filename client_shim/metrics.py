"""Detection metrics from scores and labels: Accuracy, EER, FPR, FNR, HTER (numpy only).

Each party computes these on its own data in its own process (the vendor on its holdout,
the client on its site data); only the summary numbers leave, e.g. in a vendor's gate
report. The module needs numpy alone (no torch), so a torch-free evaluator can use it too.
It lives in the client shim because only the parties compute metrics: the appliance merely
compares the numbers it is sent, by name, and never needs this code.

Conventions: label 1 = positive (anomaly / attack), 0 = negative (normal / bona fide);
a higher score means "more positive"; a sample is predicted positive when
``score >= threshold``.

- FPR = FP / negatives (false alarms; FAR in biometrics), FNR = FN / positives (misses).
- HTER = (FPR + FNR) / 2 at a given threshold.
- EER: the rate where FPR and FNR are equal on the ROC curve, linearly interpolated between
  the two ROC points that straddle the crossing (the usual definition; exact when a point
  lies on it). ``eer_threshold`` is the score threshold of the ROC point closest to the
  crossing, so the "at EER threshold" figures are actual decisions on the data.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

__all__ = [
    "DetectionMetrics",
    "detection_metrics",
    "equal_error_rate",
    "no_worse",
    "rates_at",
    "roc_points",
]


@dataclasses.dataclass(frozen=True)
class DetectionMetrics:
    """The per-round report of one party: rates as fractions in [0, 1]."""

    accuracy: float
    fpr: float
    fnr: float
    hter: float
    threshold: float
    eer: float
    eer_threshold: float
    accuracy_at_eer: float
    fpr_at_eer: float
    fnr_at_eer: float
    hter_at_eer: float
    positives: int
    negatives: int

    def as_dict(self) -> dict[str, float | int]:
        """JSON-safe numbers (what a gate report carries)."""
        return dataclasses.asdict(self)


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or Inf")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (negative) or 1 (positive)")
    y = y.astype(np.int64)
    if y.sum() == 0 or y.sum() == y.size:
        raise ValueError("need at least one positive and one negative sample")
    return s, y


def roc_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, ...]:
    """(fpr, fnr, thresholds) at every distinct score, from the strictest threshold (+inf).

    Same points as ``sklearn.metrics.roc_curve(..., drop_intermediate=False)`` with
    fnr = 1 - tpr.
    """
    s, y = _check(scores, labels)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # end of each run of equal scores
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    positives, negatives = int(y.sum()), int(y.size - y.sum())
    fpr = np.r_[0.0, fp / negatives]
    fnr = np.r_[1.0, 1.0 - tp / positives]
    thresholds = np.r_[np.inf, s[last]]
    return fpr, fnr, thresholds


def equal_error_rate(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(EER, threshold): the interpolated FPR = FNR crossing and the closest point's threshold."""
    fpr, fnr, thresholds = roc_points(scores, labels)
    diff = fnr - fpr  # starts at 1, decreases to -1 (weakly monotone)
    i = int(np.argmax(diff <= 0))  # first point at or past the crossing; diff[0] = 1 > 0
    before, after = diff[i - 1], diff[i]
    alpha = before / (before - after)
    eer = float(fpr[i - 1] + alpha * (fpr[i] - fpr[i - 1]))
    nearest = i if abs(after) <= abs(before) else i - 1
    # diff[0] = 1 and |diff| <= 1, so ``nearest`` is never the +inf point.
    return eer, float(thresholds[nearest])


def rates_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """accuracy, fpr, fnr and hter when ``score >= threshold`` means positive."""
    s, y = _check(scores, labels)
    predicted = s >= threshold
    positives, negatives = int(y.sum()), int(y.size - y.sum())
    fn = int(np.count_nonzero(~predicted & (y == 1)))
    fp = int(np.count_nonzero(predicted & (y == 0)))
    fpr, fnr = fp / negatives, fn / positives
    return {
        "accuracy": 1.0 - (fp + fn) / y.size,
        "fpr": fpr,
        "fnr": fnr,
        "hter": (fpr + fnr) / 2.0,
    }


def detection_metrics(
    scores: np.ndarray, labels: np.ndarray, *, threshold: float = 0.5
) -> DetectionMetrics:
    """Every figure of the per-round report: at the fixed ``threshold`` and at the EER's."""
    s, y = _check(scores, labels)
    eer, eer_threshold = equal_error_rate(s, y)
    fixed = rates_at(s, y, threshold)
    at_eer = rates_at(s, y, eer_threshold)
    return DetectionMetrics(
        accuracy=fixed["accuracy"],
        fpr=fixed["fpr"],
        fnr=fixed["fnr"],
        hter=fixed["hter"],
        threshold=float(threshold),
        eer=eer,
        eer_threshold=eer_threshold,
        accuracy_at_eer=at_eer["accuracy"],
        fpr_at_eer=at_eer["fpr"],
        fnr_at_eer=at_eer["fnr"],
        hter_at_eer=at_eer["hter"],
        positives=int(y.sum()),
        negatives=int(y.size - y.sum()),
    )


def no_worse(
    candidate: Mapping[str, float],
    baseline: Mapping[str, float],
    metric: str,
    *,
    higher_is_better: bool,
    tolerance: float = 0.0,
) -> bool:
    """The gate's rule, for local use (e.g. a study): candidate within tolerance of baseline."""
    new, old = float(candidate[metric]), float(baseline[metric])
    if not (math.isfinite(new) and math.isfinite(old)):
        return False
    return new >= old - tolerance if higher_is_better else new <= old + tolerance
