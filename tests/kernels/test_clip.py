"""kernels.l2_norm / kernels.clip_l2 against the numpy reference, plus input errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sealagg.kernels import clip_l2, l2_norm
from sealagg.kernels import reference as ref

FLOAT_DTYPES = [np.float32, np.float64]
# Crosses the 16384-element block boundary of the partial sums, with a remainder.
LARGE = 3 * (1 << 14) + 7

finite_vectors = st.sampled_from(FLOAT_DTYPES).flatmap(
    lambda dt: hnp.arrays(
        dt,
        st.integers(0, 300),
        elements=st.floats(-1e6, 1e6, allow_nan=False, width=32),
    )
)


@settings(deadline=None, max_examples=60)
@given(finite_vectors)
def test_l2_norm_matches_reference(x):
    assert l2_norm(x) == pytest.approx(ref.l2_norm(x), rel=1e-12, abs=0.0)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_l2_norm_large_vector_matches_reference(dtype):
    x = np.random.default_rng(1).standard_normal(LARGE).astype(dtype)
    assert l2_norm(x) == pytest.approx(ref.l2_norm(x), rel=1e-12)


def test_l2_norm_is_float_and_handles_empty_and_zero():
    assert l2_norm(np.zeros(0, np.float32)) == 0.0
    assert l2_norm(np.zeros(10, np.float64)) == 0.0
    assert type(l2_norm(np.ones(4, np.float32))) is float
    assert l2_norm(np.ones(4, np.float32)) == 2.0


def test_l2_norm_float64_does_not_overflow_or_underflow():
    assert l2_norm(np.array([3e200, 4e200])) == pytest.approx(5e200, rel=1e-15)
    assert l2_norm(np.array([3e-200, 4e-200])) == pytest.approx(5e-200, rel=1e-15)


def test_l2_norm_accepts_non_contiguous_input():
    x = np.arange(20, dtype=np.float32)[::2]
    assert l2_norm(x) == pytest.approx(ref.l2_norm(x), rel=1e-12)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_clip_inside_ball_is_an_unchanged_float32_copy(dtype):
    x = np.array([0.5, -0.25, 0.125], dtype=dtype)
    out, norm = clip_l2(x, 1.0)
    assert out.dtype == np.float32
    assert not np.shares_memory(out, x)
    np.testing.assert_array_equal(out, x.astype(np.float32))
    assert norm == pytest.approx(ref.l2_norm(x), rel=1e-15)


def test_clip_exactly_on_the_bound_keeps_float32_input():
    x = np.array([3.0, 4.0], dtype=np.float32)
    out, norm = clip_l2(x, 5.0)
    assert norm == 5.0
    np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_clip_outside_ball_matches_reference_and_respects_bound(dtype):
    x = (np.random.default_rng(2).standard_normal(LARGE) * 10).astype(dtype)
    out, norm = clip_l2(x, 1.5)
    expected, expected_norm = ref.clip_l2(x, 1.5)
    assert norm == pytest.approx(expected_norm, rel=1e-12)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=0)
    assert l2_norm(out) <= 1.5
    assert l2_norm(out) >= 1.5 * (1 - 1e-6)


@settings(deadline=None, max_examples=80)
@given(
    finite_vectors,
    st.floats(1e-3, 1e4, allow_nan=False),
)
def test_clipped_norm_never_exceeds_bound(x, max_norm):
    out, norm = clip_l2(x, max_norm)
    assert out.dtype == np.float32 and out.shape == x.shape
    assert l2_norm(out) <= max_norm
    assert norm == pytest.approx(ref.l2_norm(x), rel=1e-12, abs=0.0)


def test_float64_input_just_inside_bound_is_not_rounded_over_it():
    # float64 values whose float32 rounding would push the norm above max_norm.
    rng = np.random.default_rng(3)
    for _ in range(200):
        x = rng.standard_normal(50)
        max_norm = ref.l2_norm(x)  # exactly on the bound in float64
        out, _ = clip_l2(x, max_norm)
        assert l2_norm(out) <= max_norm


def test_clip_float64_with_huge_values():
    x = np.array([3e200, 4e200])
    out, norm = clip_l2(x, 10.0)
    assert norm == pytest.approx(5e200)
    np.testing.assert_allclose(out, [6.0, 8.0], rtol=1e-6)
    with pytest.raises(ValueError, match="float32"):
        clip_l2(x, 1e300)


@pytest.mark.parametrize("func", [l2_norm, lambda x: clip_l2(x, 1.0)])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_non_finite_input_is_rejected_with_index(func, bad, dtype):
    x = np.ones(100, dtype=dtype)
    x[37] = bad
    x[80] = bad
    with pytest.raises(ValueError, match=r"NaN or Inf .*index 37"):
        func(x)


@pytest.mark.parametrize("func", [l2_norm, lambda x: clip_l2(x, 1.0)])
@pytest.mark.parametrize(
    ("x", "error", "message"),
    [
        ([1.0, 2.0], TypeError, "numpy.ndarray"),
        (np.ones(3, dtype=np.int32), TypeError, "dtype"),
        (np.ones(3, dtype=np.float16), TypeError, "dtype"),
        (np.ones(3, dtype=">f4"), TypeError, "byte order"),
        (np.ones((2, 3), dtype=np.float32), ValueError, "1-D"),
        (np.float32(1.0), TypeError, "numpy.ndarray"),
    ],
)
def test_bad_vectors_are_rejected(func, x, error, message):
    with pytest.raises(error, match=message):
        func(x)


@pytest.mark.parametrize(
    ("max_norm", "error"),
    [
        (0.0, ValueError),
        (-1.0, ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        ("1.0", TypeError),
        (None, TypeError),
        (True, TypeError),
    ],
)
def test_bad_max_norm_is_rejected(max_norm, error):
    with pytest.raises(error, match="max_norm"):
        clip_l2(np.ones(3, np.float32), max_norm)
