"""client_shim.metrics: hand-computed cases and agreement with scikit-learn's ROC."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from sealagg.client_shim.metrics import detection_metrics, equal_error_rate, rates_at, roc_points


def test_sklearn_docs_example_by_hand():
    # roc_curve's documented example: fpr [0, 0, .5, .5, 1], tpr [0, .5, .5, 1, 1]
    scores, labels = np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])
    fpr, fnr, thresholds = roc_points(scores, labels)
    np.testing.assert_array_equal(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_array_equal(fnr, [1, 0.5, 0.5, 0, 0])
    np.testing.assert_array_equal(thresholds, [np.inf, 0.8, 0.4, 0.35, 0.1])
    m = detection_metrics(scores, labels, threshold=0.5)
    assert m.eer == 0.5 and m.eer_threshold == 0.4  # FPR = FNR = 1/2 exactly at 0.4
    assert (m.fpr_at_eer, m.fnr_at_eer, m.hter_at_eer, m.accuracy_at_eer) == (0.5, 0.5, 0.5, 0.5)
    # at 0.5 only 0.8 is flagged: FP 0 of 2, FN 1 of 2
    assert (m.fpr, m.fnr, m.hter, m.accuracy) == (0.0, 0.5, 0.25, 0.75)
    assert (m.positives, m.negatives) == (2, 2)


def test_interpolated_crossing_by_hand():
    # negatives 0.2, 0.6; positives 0.4, 0.7, 0.9. ROC points (fpr, fnr):
    # (0, 1), (0, 2/3) @.9, (0, 1/3) @.7, (1/2, 1/3) @.6 ... FNR - FPR goes 1/3 -> -1/6:
    # the crossing is 2/3 of the way, at FPR = FNR = 1/3; the closer point is @0.6.
    scores, labels = np.array([0.2, 0.6, 0.4, 0.7, 0.9]), np.array([0, 0, 1, 1, 1])
    eer, threshold = equal_error_rate(scores, labels)
    assert eer == pytest.approx(1 / 3, abs=1e-12)
    assert threshold == 0.6
    assert rates_at(scores, labels, 0.6) == {
        "accuracy": pytest.approx(3 / 5),
        "fpr": 0.5,
        "fnr": pytest.approx(1 / 3),
        "hter": pytest.approx(5 / 12),
    }


def test_perfect_separation_and_ties():
    m = detection_metrics([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert m.eer == 0.0 and m.eer_threshold == 0.8 and m.hter_at_eer == 0.0
    assert m.accuracy == 1.0
    tied = detection_metrics([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1])  # no information: EER 1/2
    assert tied.eer == pytest.approx(0.5)
    inverted = detection_metrics([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1])
    assert inverted.eer == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_sklearn_roc_curve(seed):
    rng = np.random.default_rng(seed)
    n = 400
    labels = (rng.random(n) < 0.3).astype(int)
    scores = np.round(rng.normal(labels * 1.2, 1.0), 1)  # rounding makes ties
    fpr_s, tpr_s, thr_s = roc_curve(labels, scores, drop_intermediate=False)
    fpr, fnr, thr = roc_points(scores, labels)
    np.testing.assert_allclose(fpr, fpr_s, atol=1e-12)
    np.testing.assert_allclose(fnr, 1 - tpr_s, atol=1e-12)
    np.testing.assert_array_equal(thr[1:], thr_s[1:])
    # the EER straight from sklearn's points, interpolated at the FNR = FPR crossing
    d = (1 - tpr_s) - fpr_s
    i = int(np.argmax(d <= 0))
    a = d[i - 1] / (d[i - 1] - d[i])
    expected = fpr_s[i - 1] + a * (fpr_s[i] - fpr_s[i - 1])
    m = detection_metrics(scores, labels, threshold=0.6)
    assert m.eer == pytest.approx(expected, abs=1e-12)
    # the rates at any threshold equal sklearn's point for that threshold
    j = int(np.flatnonzero(thr_s == m.eer_threshold)[0])
    assert m.fpr_at_eer == pytest.approx(fpr_s[j]) and m.fnr_at_eer == pytest.approx(1 - tpr_s[j])


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match="positive and one negative"):
        detection_metrics([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="labels must be 0"):
        detection_metrics([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="NaN"):
        detection_metrics([np.nan, 0.2], [0, 1])
    with pytest.raises(ValueError, match="3 scores but 2 labels"):
        detection_metrics([0.1, 0.2, 0.3], [0, 1])


def test_report_is_json_numbers():
    m = detection_metrics([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]).as_dict()
    assert set(m) >= {"accuracy", "eer", "eer_threshold", "fpr", "fnr", "hter", "hter_at_eer"}
    assert all(isinstance(v, int | float) for v in m.values())
