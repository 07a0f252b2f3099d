"""kernels.weighted_mean against np.average (float64), plus input errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sealagg.kernels import reference as ref
from sealagg.kernels import weighted_mean

# Crosses the 4096-coordinate block boundary, with a remainder.
WIDE = 2 * (1 << 12) + 3


def assert_close_to_reference(updates, weights):
    out = weighted_mean(updates, weights)
    expected = ref.weighted_mean(updates, weights)
    assert out.dtype == np.float32 and out.shape == (updates.shape[1],)
    scale = float(np.max(np.abs(updates), initial=0.0))
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6 * scale)


@st.composite
def problems(draw):
    n = draw(st.integers(1, 8))
    d = draw(st.integers(0, 60))
    updates = draw(hnp.arrays(np.float32, (n, d), elements=st.floats(-1e4, 1e4, width=32)))
    weights = draw(hnp.arrays(np.float64, n, elements=st.floats(0.0, 1e3)))
    if not weights.sum() > 0:
        weights[0] = 1.0
    return updates, weights


@settings(deadline=None, max_examples=80)
@given(problems())
def test_matches_reference(problem):
    assert_close_to_reference(*problem)


def test_large_problem_matches_reference():
    rng = np.random.default_rng(10)
    updates = rng.standard_normal((20, WIDE)).astype(np.float32)
    assert_close_to_reference(updates, rng.uniform(0.1, 5.0, 20))


def test_single_client_and_equal_weights():
    rng = np.random.default_rng(11)
    updates = rng.standard_normal((3, 100)).astype(np.float32)
    np.testing.assert_array_equal(weighted_mean(updates[:1], np.array([7.0])), updates[0])
    np.testing.assert_array_equal(weighted_mean(updates, np.array([0.0, 2.5, 0.0])), updates[1])
    np.testing.assert_allclose(
        weighted_mean(updates, np.ones(3, np.int64)),
        updates.astype(np.float64).mean(axis=0),
        rtol=1e-6,
        atol=1e-7,
    )


def test_accumulates_in_float64():
    # float32 accumulation of 1e8 + 1 - 1e8 would lose the 1.
    updates = np.array([[1e8], [1.0], [-1e8]], np.float32)
    np.testing.assert_allclose(weighted_mean(updates, np.ones(3)), [1 / 3], rtol=1e-6)


def test_integer_weights_and_extreme_weight_ranges():
    updates = np.array([[1.0, -2.0], [3.0, 4.0]], np.float32)
    expected = np.array([2.0, 1.0], np.float32)
    np.testing.assert_array_equal(weighted_mean(updates, np.array([5, 5], np.uint8)), expected)
    np.testing.assert_array_equal(weighted_mean(updates, np.array([1e308, 1e308])), expected)
    np.testing.assert_array_equal(weighted_mean(updates, np.array([5e-324, 5e-324])), expected)


def test_non_contiguous_updates():
    rng = np.random.default_rng(12)
    updates = rng.standard_normal((4, 50)).astype(np.float32)[:, ::2]
    assert_close_to_reference(updates, np.arange(1.0, 5.0))


def test_empty_coordinates():
    assert weighted_mean(np.zeros((3, 0), np.float32), np.ones(3)).shape == (0,)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("weight", [1.0, 0.0])
def test_non_finite_updates_are_rejected_with_index(bad, weight):
    updates = np.zeros((3, WIDE), np.float32)
    updates[1, 4100] = bad
    with pytest.raises(ValueError, match=r"updates contains NaN or Inf .*index \(1, 4100\)"):
        weighted_mean(updates, np.array([1.0, weight, 1.0]))


UPDATES = np.zeros((3, 4), np.float32)


@pytest.mark.parametrize(
    ("updates", "weights", "error", "message"),
    [
        (UPDATES.astype(np.float64), np.ones(3), TypeError, "updates must have dtype float32"),
        (UPDATES.astype(np.float16), np.ones(3), TypeError, "updates must have dtype float32"),
        (UPDATES.tolist(), np.ones(3), TypeError, "updates must be a numpy.ndarray"),
        (UPDATES[0], np.ones(1), ValueError, "updates must be 2-D"),
        (UPDATES[None], np.ones(1), ValueError, "updates must be 2-D"),
        (UPDATES, [1.0, 1.0, 1.0], TypeError, "weights must be a numpy.ndarray"),
        (UPDATES, np.ones(3, bool), TypeError, "real numeric dtype"),
        (UPDATES, np.ones(3, complex), TypeError, "real numeric dtype"),
        (UPDATES, np.ones(3, object), TypeError, "real numeric dtype"),
        (UPDATES, np.ones((3, 1)), ValueError, "weights must be 1-D"),
        (UPDATES, np.ones(2), ValueError, "weights has 2 entries but updates has 3 rows"),
        (UPDATES, np.array([1.0, -0.5, 1.0]), ValueError, r"weights must be >= 0.*index 1"),
        (UPDATES, np.array([1.0, np.nan, 1.0]), ValueError, "weights contains NaN or Inf"),
        (UPDATES, np.array([1.0, np.inf, 1.0]), ValueError, "weights contains NaN or Inf"),
        (UPDATES, np.zeros(3), ValueError, "positive sum"),
        (np.zeros((0, 4), np.float32), np.zeros(0), ValueError, "positive sum"),
    ],
)
def test_bad_input_is_rejected(updates, weights, error, message):
    with pytest.raises(error, match=message):
        weighted_mean(updates, weights)
