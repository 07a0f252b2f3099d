"""Robust aggregation kernels against kernels.reference: median, trimmed mean, Krum, Weiszfeld."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sealagg import kernels
from sealagg.kernels import reference as ref
from sealagg.kernels._coordinate import sorting_network

# Crosses the 256-coordinate block boundary with a remainder.
WIDE = 3 * 256 + 7


@st.composite
def matrices(draw, min_rows=1, max_rows=12):
    n = draw(st.integers(min_rows, max_rows))
    d = draw(st.integers(0, 40))
    # A small alphabet makes ties frequent.
    values = st.one_of(st.sampled_from([-1.0, 0.0, 0.5, 2.0]), st.floats(-1e3, 1e3, width=32))
    return draw(hnp.arrays(np.float32, (n, d), elements=values))


@settings(deadline=None, max_examples=40)
@given(matrices())
def test_median_equals_reference_exactly(x):
    assert np.array_equal(kernels.coordinate_median(x), ref.coordinate_median(x))


@settings(deadline=None, max_examples=40)
@given(matrices(), st.floats(0.0, 0.49))
def test_trimmed_mean_matches_reference(x, beta):
    if x.shape[0] - 2 * int(np.floor(beta * x.shape[0] + 1e-9)) < 1:
        return
    out = kernels.trimmed_mean(x, beta)
    np.testing.assert_allclose(out, ref.trimmed_mean(x, beta), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 8, 20, 21, 100])
def test_median_even_and_odd_wide(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, WIDE)).astype(np.float32)
    x[:, :50] = np.round(x[:, :50])  # many ties
    got = kernels.coordinate_median(x)
    assert np.array_equal(got, ref.coordinate_median(x))
    if n == 2:  # even: the midpoint of the two middle values
        np.testing.assert_array_equal(
            got, ((x[0].astype(np.float64) + x[1]) / 2).astype(np.float32)
        )


def test_median_with_all_ties_and_one_outlier_per_coordinate():
    x = np.ones((5, WIDE), dtype=np.float32)
    x[np.arange(WIDE) % 5, np.arange(WIDE)] = 1e30
    np.testing.assert_array_equal(kernels.coordinate_median(x), np.ones(WIDE, np.float32))


@pytest.mark.parametrize(
    ("n", "beta", "trim"), [(10, 0.1, 1), (10, 0.3, 3), (7, 0.2, 1), (3, 0.34, 1)]
)
def test_trimmed_mean_trims_floor_beta_n_per_side(n, beta, trim):
    assert kernels.trim_count(n, beta) == trim
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, WIDE)).astype(np.float32)
    x[:trim] += 1e6  # huge values are dropped exactly when `trim` per side is dropped
    np.testing.assert_allclose(kernels.trimmed_mean(x, beta), ref.trimmed_mean(x, beta), rtol=1e-6)
    assert np.abs(kernels.trimmed_mean(x, beta)).max() < 10


def test_trimmed_mean_beta_zero_is_the_mean():
    x = np.random.default_rng(3).standard_normal((6, WIDE)).astype(np.float32)
    np.testing.assert_allclose(kernels.trimmed_mean(x, 0.0), x.mean(axis=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 5, 8, 13])
def test_networks_select_correctly_by_the_zero_one_principle(n):
    for lo, hi in {((n - 1) // 2, n // 2 + 1), (0, n), (n // 4, n - n // 4)}:
        net = sorting_network(n, lo, hi)
        for bits in itertools.product((0, 1), repeat=n):
            a = list(bits)
            for i, j in net:
                if a[i] > a[j]:
                    a[i], a[j] = a[j], a[i]
            assert a[lo:hi] == sorted(bits)[lo:hi]


# ------------------------------------------------------------------------------------ Krum


@pytest.mark.parametrize(("n", "f"), [(4, 0), (5, 1), (6, 1), (7, 2), (8, 2), (11, 4), (12, 4)])
def test_krum_scores_match_reference_at_the_bound(n, f):
    assert n > 2 * f + 2 and n <= 2 * (f + 1) + 2  # f is at its largest for n
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, WIDE)).astype(np.float32)
    np.testing.assert_allclose(kernels.krum_scores(x, f), ref.krum_scores(x, f), rtol=1e-5)
    np.testing.assert_allclose(
        kernels.pairwise_sq_distances(x), ref.pairwise_sq_distances(x), rtol=1e-5, atol=1e-3
    )
    assert kernels.krum(x, f) == ref.krum(x, f)
    for m in (1, n - f, n):
        mean, chosen = kernels.multi_krum(x, f, m)
        want_mean, want_chosen = ref.multi_krum(x, f, m)
        assert list(chosen) == list(want_chosen)
        np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-6)


def test_krum_rejects_the_byzantine_outliers():
    rng = np.random.default_rng(5)
    honest = rng.normal(0, 0.1, (7, 1000)).astype(np.float32)
    byzantine = np.full((2, 1000), 50.0, dtype=np.float32)
    x = np.concatenate([byzantine, honest])
    assert kernels.krum(x, 2) >= 2
    _, chosen = kernels.multi_krum(x, 2)
    assert set(chosen.tolist()) == set(range(2, 9))


def test_krum_ties_pick_the_lowest_index():
    x = np.zeros((5, 10), dtype=np.float32)
    assert kernels.krum(x, 1) == 0
    _, chosen = kernels.multi_krum(x, 1, 3)
    assert list(chosen) == [0, 1, 2]


def _naive_float32_gram_distances(x: np.ndarray) -> np.ndarray:
    """What Flower >= 1.22 does: |x|^2 + |y|^2 - 2 x.y, all in float32."""
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float32)
    gram = (x @ x.T).astype(np.float32)
    return (sq[:, None] + sq[None, :] - np.float32(2) * gram).astype(np.float32)


def test_near_identical_full_weights_pick_the_right_winner():
    """Updates = one large weight vector + tiny client offsets; one client sits at the centre."""
    rng = np.random.default_rng(7)
    n, f, d = 9, 2, 50_000
    weights = rng.normal(0, 3.0, d).astype(np.float32)  # |w|^2 ~ 4.5e5
    offsets = rng.normal(0, 1e-3, (n, d))
    offsets[4] = 0.0  # the true Krum winner: at the centre of the honest cloud
    x = (weights.astype(np.float64) + offsets).astype(np.float32)
    truth = ref.krum(x, f)
    assert truth == 4
    naive_dist = _naive_float32_gram_distances(x).astype(np.float64)
    naive = int(np.argmin(kernels._krum.krum_scores_from_distances(naive_dist, f)))
    assert naive != truth  # the float32 Gram form is lost in cancellation here
    assert kernels.krum(x, f) == truth
    np.testing.assert_allclose(kernels.krum_scores(x, f), ref.krum_scores(x, f), rtol=1e-4)


@pytest.mark.parametrize(("n", "f"), [(4, 1), (6, 2), (5, 2), (2, 0), (7, 3)])
def test_krum_refuses_f_beyond_the_bound(n, f):
    x = np.zeros((n, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="n > 2f \\+ 2"):
        kernels.krum(x, f)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda x: kernels.krum(x, -1), ValueError, "f must be >= 0"),
        (lambda x: kernels.krum(x, 1.5), TypeError, "f must be an int"),
        (lambda x: kernels.krum(x, True), TypeError, "f must be an int"),
        (lambda x: kernels.multi_krum(x, 1, 0), ValueError, "m must lie in"),
        (lambda x: kernels.multi_krum(x, 1, 9), ValueError, "m must lie in"),
        (lambda x: kernels.trimmed_mean(x, 0.5), ValueError, "beta must lie in"),
        (lambda x: kernels.trimmed_mean(x, -0.1), ValueError, "beta must lie in"),
        (lambda x: kernels.trimmed_mean(x, float("nan")), ValueError, "beta must lie in"),
        (lambda x: kernels.trimmed_mean(x, "0.1"), TypeError, "beta must be a real"),
        (lambda x: kernels.coordinate_median(x.astype(np.float64)), TypeError, "float32"),
        (lambda x: kernels.coordinate_median(x[0]), ValueError, "2-D"),
        (lambda x: kernels.coordinate_median(x[:0]), ValueError, "at least one row"),
        (lambda x: kernels.krum(list(x), 1), TypeError, "numpy.ndarray"),
        (lambda x: kernels.geometric_median(x, nu=0.0), ValueError, "nu must be finite"),
        (lambda x: kernels.geometric_median(x, max_iter=0), ValueError, "max_iter"),
    ],
)
def test_invalid_arguments_are_refused_clearly(call, error, match):
    x = np.random.default_rng(0).standard_normal((8, 300)).astype(np.float32)
    with pytest.raises(error, match=match):
        call(x)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize(
    "rule",
    [
        kernels.coordinate_median,
        lambda x: kernels.trimmed_mean(x, 0.2),
        lambda x: kernels.krum(x, 1),
        kernels.geometric_median,
    ],
)
def test_non_finite_updates_are_refused(rule, bad):
    x = np.random.default_rng(0).standard_normal((7, WIDE)).astype(np.float32)
    x[3, 700] = bad  # even where trimming would have dropped it
    with pytest.raises(ValueError, match="NaN or Inf"):
        rule(x)


# -------------------------------------------------------------------------- geometric median


@pytest.mark.parametrize("n", [3, 4, 9, 10])
def test_geometric_median_matches_reference(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, WIDE)).astype(np.float32)
    got, steps = kernels.geometric_median(x)
    assert 1 <= steps <= 100
    np.testing.assert_allclose(got, ref.geometric_median(x), rtol=1e-4, atol=1e-5)


def test_geometric_median_resists_a_minority_of_huge_updates():
    rng = np.random.default_rng(1)
    honest = rng.normal(1.0, 0.01, (7, 500)).astype(np.float32)
    x = np.concatenate([honest, np.full((3, 500), 1e4, np.float32)])
    got, _ = kernels.geometric_median(x, max_iter=200, ftol=1e-9)
    assert np.abs(got - 1.0).max() < 0.05
    assert np.abs(x.mean(axis=0) - 1.0).max() > 1000  # the mean is ruined


def test_geometric_median_of_collinear_points_is_the_middle_point():
    x = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]], dtype=np.float32)
    got, _ = kernels.geometric_median(x, max_iter=500, ftol=1e-12)
    np.testing.assert_allclose(got, [1.0, 0.0], atol=1e-3)
