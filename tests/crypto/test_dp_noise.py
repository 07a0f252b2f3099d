"""Distributed-DP building blocks: noise distributions, rotation, the DP ring encoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from sealagg.crypto.dp import (
    DistributedDPSpec,
    Sampler,
    decode_dp_sum,
    encode_dp_update,
    fine_grid_step,
    hadamard_rotate,
    hadamard_unrotate,
    padded_length,
    rotation_seed,
)

N = 100_000
KEY = bytes(range(32))


def _within(value: float, expected: float, rel: float) -> bool:
    return abs(value - expected) <= rel * expected


def test_sampler_uses_fresh_unpredictable_keys_and_a_seam_for_tests():
    a, b = Sampler().words(8), Sampler().words(8)
    assert not np.array_equal(a, b)
    assert np.array_equal(Sampler(KEY).words(8), Sampler(KEY).words(8))
    u = Sampler(KEY).uniform(N)
    assert u.min() > 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002


@pytest.mark.parametrize("sigma", [1.0, 3.0, 25.0, 1e6])
def test_discrete_gaussian_is_integer_centred_with_variance_sigma_squared(sigma):
    x = Sampler().discrete_gaussian(sigma, N)
    assert x.dtype == np.int64
    assert abs(x.mean()) < 5 * sigma / math.sqrt(N)
    assert _within(x.var(), sigma**2, 0.03)


def test_discrete_gaussian_matches_its_probability_mass_function():
    sigma = 1.5
    x = Sampler(KEY).discrete_gaussian(sigma, N)  # fixed key: a goodness-of-fit test never flakes
    support = np.arange(-12, 13)
    pmf = np.exp(-(support**2) / (2 * sigma**2))
    pmf /= pmf.sum()
    observed = np.array([np.count_nonzero(x == k) for k in support])
    assert observed.sum() == N  # nothing outside ±12 (probability ~1e-14)
    big = pmf * N > 20
    chi2 = (((observed - pmf * N) ** 2) / (pmf * N))[big].sum()
    assert chi2 < stats.chi2.ppf(0.999, big.sum() - 1)


def test_discrete_gaussian_below_one_has_less_variance_than_sigma_squared():
    # Known property: for small sigma the discrete Gaussian's variance is < sigma^2.
    x = Sampler().discrete_gaussian(0.5, N)
    assert 0.8 * 0.25 < x.var() < 0.9 * 0.25


@pytest.mark.parametrize("mu", [0.5, 5.0, 1e3, 1e9])
def test_skellam_is_integer_symmetric_with_variance_two_mu(mu):
    x = Sampler().skellam(mu, N)
    assert x.dtype == np.int64
    assert abs(x.mean()) < 5 * math.sqrt(2 * mu / N)
    assert _within(x.var(), 2 * mu, 0.03)


def test_skellam_matches_its_probability_mass_function():
    mu = 2.0
    x = Sampler(KEY).skellam(mu, N)
    support = np.arange(-15, 16)
    pmf = stats.skellam.pmf(support, mu, mu)
    observed = np.array([np.count_nonzero(x == k) for k in support])
    big = pmf * N > 20
    chi2 = (((observed - pmf * N) ** 2) / (pmf * N))[big].sum()
    assert chi2 < stats.chi2.ppf(0.999, big.sum() - 1)


@pytest.mark.parametrize("mu", [3.0, 50.0])
def test_poisson_mean_and_variance(mu):
    x = Sampler().poisson(mu, N)
    assert x.min() >= 0
    assert abs(x.mean() - mu) < 5 * math.sqrt(mu / N)
    assert _within(x.var(), mu, 0.03)


def test_noise_parameters_are_validated():
    with pytest.raises(ValueError):
        Sampler().discrete_gaussian(-1.0, 3)
    with pytest.raises(ValueError):
        Sampler().skellam(float("nan"), 3)


@pytest.mark.parametrize("dimension", [1, 7, 136, 1024, 3000])
def test_rotation_round_trip_is_exact_to_float_precision_and_keeps_the_norm(dimension):
    x = np.random.default_rng(dimension).normal(size=dimension)
    seed = rotation_seed(b"r" * 32)
    y = hadamard_rotate(x, seed)
    assert y.shape == (padded_length(dimension),)
    assert math.isclose(np.linalg.norm(y), np.linalg.norm(x), rel_tol=1e-12)
    back = hadamard_unrotate(y, seed, dimension)
    assert np.abs(back - x).max() < 1e-12 * max(1.0, np.abs(x).max()) * math.log2(y.size + 1)


def test_rotation_spreads_a_spike_and_depends_on_the_round():
    spike = np.zeros(1024)
    spike[5] = 1.0
    a = hadamard_rotate(spike, rotation_seed(b"a" * 32))
    b = hadamard_rotate(spike, rotation_seed(b"b" * 32))
    assert np.allclose(np.abs(a), 1 / 32)  # the energy of one coordinate spread over all
    assert np.allclose(np.abs(b), 1 / 32)
    x = np.random.default_rng(0).normal(size=1024)
    assert not np.allclose(
        hadamard_rotate(x, rotation_seed(b"a" * 32)), hadamard_rotate(x, rotation_seed(b"b" * 32))
    )


def _spec(mechanism, **kw) -> DistributedDPSpec:
    base = dict(
        mechanism=mechanism,
        dimension=300,
        clip=1.0,
        noise_std=0.05,
        indicator_std=0.0,
        max_clients=10,
    )
    base.update(kw)
    return DistributedDPSpec(**base)


def _sum(vectors: list[np.ndarray]) -> np.ndarray:
    total = np.zeros_like(vectors[0])
    for v in vectors:
        total += v  # uint32 wrap-around, as the secure sum computes it
    return total


@pytest.mark.parametrize("mechanism", ["discrete_gaussian", "skellam", "gaussian"])
def test_summed_noise_has_the_configured_scale(mechanism):
    spec = _spec(mechanism, dimension=4096, noise_std=0.02)
    seed = rotation_seed(b"n" * 32)
    zeros = np.zeros(spec.dimension)
    vectors = [encode_dp_update(zeros, spec, seed)[0] for _ in range(10)]
    out = decode_dp_sum(_sum(vectors), spec, seed)
    noise = out.mean_update * out.count  # the sum's noise, back in update units
    expected = math.sqrt(10) * spec.noise_std  # the rotation keeps per-coordinate variance
    assert out.count == 10
    assert abs(noise.mean()) < 5 * expected / math.sqrt(spec.dimension)
    assert _within(noise.std(), expected, 0.05)
    assert out.wrapped_fraction == 0.0


@pytest.mark.parametrize("mechanism", ["discrete_gaussian", "skellam"])
def test_dp_sum_decodes_to_the_clipped_mean_plus_small_noise(mechanism):
    rng = np.random.default_rng(1)
    spec = _spec(mechanism, noise_std=1e-4, indicator_std=0.1)
    seed = rotation_seed(b"s" * 32)
    updates = [rng.normal(0, 0.03, spec.dimension) for _ in range(6)]
    updates[0] *= 100  # norm ~50: clipped to 1
    clipped = [u * min(1.0, spec.clip / np.linalg.norm(u)) for u in updates]
    encoded = [encode_dp_update(u, spec, seed) for u in updates]
    assert [below for _, below in encoded] == [False, True, True, True, True, True]
    out = decode_dp_sum(_sum([v for v, _ in encoded]), spec, seed)
    np.testing.assert_allclose(out.mean_update, np.mean(clipped, axis=0), atol=3e-4)
    assert abs(out.noisy_below_clip - 5) < 1.0


def test_conditional_rounding_bound_exceeds_the_clip_only_slightly():
    spec = _spec("discrete_gaussian", dimension=2**16)
    assert spec.clip < spec.sensitivity < 1.001 * spec.clip
    assert spec.tau(100) == 0.0  # noise >> grid step: sum of discrete Gaussians ~ one


def test_bad_inputs_are_refused():
    spec = _spec("discrete_gaussian")
    seed = rotation_seed(b"x" * 32)
    with pytest.raises(ValueError, match="shape"):
        encode_dp_update(np.zeros(5), spec, seed)
    bad = np.zeros(spec.dimension)
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        encode_dp_update(bad, spec, seed)
    with pytest.raises(ValueError, match="mechanism"):
        _spec("laplace")
    with pytest.raises(ValueError, match="without noise"):
        _spec("skellam", noise_std=0.0)
    with pytest.raises(TypeError):
        decode_dp_sum(np.zeros(3, dtype=np.uint32), spec, seed)


@pytest.mark.parametrize("t", [1, 3, 1000, 2**31])
def test_discrete_laplace_has_the_variance_of_its_scale_at_any_t(t):
    x = Sampler().discrete_laplace(t, N)
    q = math.exp(-1.0 / t)
    assert x.dtype == np.int64
    assert _within(x.var(), 2 * q / (1 - q) ** 2, 0.05)


def test_uniform_integers_are_exact_and_unbiased():
    x = Sampler(KEY).integers(3, N)
    counts = np.bincount(x, minlength=3)
    assert counts.sum() == N and set(np.unique(x)) == {0, 1, 2}
    assert stats.chisquare(counts).pvalue > 0.001
    big = Sampler().integers(2**62, 1000)
    assert big.min() >= 0 and big.max() > 2**60
    with pytest.raises(ValueError):
        Sampler().integers(0, 1)


@pytest.mark.parametrize("sigma", [1e-6, 0.1, 7.0])
def test_gaussian_mechanism_keeps_sigma_and_outputs_only_grid_points(sigma):
    """Mironov 2012: a float Gaussian's possible outputs near x depend on x. Here every output
    is an integer multiple of a grid step fixed by sigma and d alone, for any input."""
    d = 50_000
    step = fine_grid_step(sigma, d)
    assert step <= sigma * 2.0**-20 / math.sqrt(d) < 2 * step
    assert math.frexp(step)[0] == 0.5  # a power of two
    for x in (np.zeros(d), np.full(d, 0.3 * sigma + step * 1e-3)):
        out = Sampler().gaussian_mechanism(x, sigma)
        units = out / step
        assert np.array_equal(units, np.rint(units))
        assert _within(float(np.std(out - x)), sigma, 0.02)
    np.testing.assert_array_equal(Sampler().gaussian_mechanism(np.ones(3), 0.0), np.ones(3))
    with pytest.raises(ValueError, match="clip"):
        Sampler().gaussian_mechanism(np.array([1e30]), sigma)
