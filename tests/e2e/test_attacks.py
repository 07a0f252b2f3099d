"""Fast version of the Byzantine attack suite (benchmarks/attacks.py): digits, n=10, f=2.

The full table (every rule x every attack, more rounds and seeds) is in
benchmarks/RESULTS.md; here a few rounds check that the robust rules keep
learning where the mean collapses, and that each attack is what it claims.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "attacks.py"
_spec = importlib.util.spec_from_file_location("sealagg_attacks", _PATH)
attacks = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = attacks  # dataclasses look their module up there
_spec.loader.exec_module(attacks)

N, F, ROUNDS = 10, 2, 6


@pytest.fixture(scope="module")
def data():
    return attacks.load_data(N, seed=0)


def test_without_attack_fedavg_learns_digits(data):
    assert attacks.simulate("none", "mean", n=N, f=F, rounds=ROUNDS, data=data) > 0.85


def test_sign_flipping_collapses_the_mean(data):
    assert attacks.simulate("sign_flip", "mean", n=N, f=F, rounds=ROUNDS, data=data) < 0.3


@pytest.mark.parametrize("rule", ["median", "trimmed_mean", "krum"])
def test_robust_rules_keep_learning_under_sign_flipping(data, rule):
    assert attacks.simulate("sign_flip", rule, n=N, f=F, rounds=ROUNDS, data=data) > 0.8


def test_gaussian_noise_hurts_the_mean_not_the_median(data):
    mean = attacks.simulate("gaussian", "mean", n=N, f=F, rounds=ROUNDS, data=data)
    median = attacks.simulate("gaussian", "median", n=N, f=F, rounds=ROUNDS, data=data)
    assert median > 0.8 and median > mean + 0.2


def test_attack_vectors_follow_their_papers():
    rng = np.random.default_rng(0)
    honest = rng.normal(0, 1, (8, 5)).astype(np.float32)
    own = rng.normal(0, 1, (2, 5)).astype(np.float32)
    n, f = 10, 2
    alie = attacks.byzantine_updates("alie", honest, own, n, f, rng)
    s = math.floor(n / 2 + 1) - f  # Baruch et al.: supporters needed
    z = NormalDist().inv_cdf((n - s) / n)
    np.testing.assert_allclose(alie[0], honest.mean(0) - z * honest.std(0), rtol=1e-5)
    ipm = attacks.byzantine_updates("ipm", honest, own, n, f, rng)
    assert float(ipm[0] @ honest.mean(0)) < 0  # inner product with the true mean is negative
    np.testing.assert_allclose(
        attacks.byzantine_updates("sign_flip", honest, own, n, f, rng), -10 * own
    )
