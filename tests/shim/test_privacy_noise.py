"""Client-level DP noise: drawn from the crypto sampler (AES-CTR keyed by os.urandom), never
from numpy.random, on a fine integer grid so its floating-point values leak nothing (Mironov
2012); the standard deviation is unchanged."""

from __future__ import annotations

import os

import numpy as np
import pytest

from sealagg.client_shim.privacy import ClientDP, RoundPrivacy, add_gaussian_noise, protect_update
from sealagg.crypto import dp as dp_module
from sealagg.crypto.dp import DistributedDPSpec, rotation_seed


@pytest.fixture
def no_numpy_random(monkeypatch):
    """Every numpy.random entry point a noise sampler could use raises."""

    def refuse(*args, **kwargs):
        raise AssertionError("numpy.random used for DP noise")

    for name in (
        "default_rng",
        "Generator",
        "RandomState",
        "normal",
        "standard_normal",
        "uniform",
        "random",
        "rand",
        "randn",
        "laplace",
        "seed",
    ):
        monkeypatch.setattr(np.random, name, refuse)


@pytest.fixture
def urandom_calls(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = os.urandom

    def counted(n: int) -> bytes:
        calls.append(n)
        return real(n)

    monkeypatch.setattr(dp_module.os, "urandom", counted)
    return calls


def test_client_level_dp_needs_no_numpy_random_and_keys_from_os_urandom(
    no_numpy_random, urandom_calls
):
    dp = ClientDP(clip=0.5, noise_multiplier=0.8)
    zero = np.zeros(200_000, dtype=np.float32)
    first, second = protect_update(zero, dp=dp), protect_update(zero, dp=dp)
    assert urandom_calls and all(n == 32 for n in urandom_calls)  # one fresh AES key each
    assert first.dtype == np.float32
    assert float(np.std(first)) == pytest.approx(dp.noise_std, rel=0.02)
    assert abs(float(np.mean(first))) < 0.01
    assert not np.array_equal(first, second)


def test_round_client_dp_plain_and_masked_need_no_numpy_random(no_numpy_random, urandom_calls):
    spec = DistributedDPSpec(
        mechanism="gaussian",
        dimension=4096,
        clip=1.0,
        noise_std=0.3,
        indicator_std=0.0,
        max_clients=10,
    )
    privacy = RoundPrivacy("client", spec, rotation_seed(b"r" * 32))
    noisy, below = privacy.protect_plain(np.zeros(4096, dtype=np.float32))
    assert below and float(np.std(noisy)) == pytest.approx(0.3, rel=0.05)
    vector, below = privacy.encode(np.zeros(4096))
    assert below and vector.dtype == np.uint32
    assert len(urandom_calls) >= 2


@pytest.mark.parametrize("std", [1e-4, 0.05, 1.0, 30.0])
def test_the_noise_standard_deviation_is_unchanged(std):
    x = np.full(100_000, 0.25, dtype=np.float32)
    residual = add_gaussian_noise(x, std).astype(np.float64) - 0.25
    assert float(np.std(residual)) == pytest.approx(std, rel=0.02)
    assert abs(float(np.mean(residual))) < 5 * std / np.sqrt(x.size)
    np.testing.assert_array_equal(add_gaussian_noise(x, 0.0), x)
