"""Choosing (k, t): the finder's answers meet bounds recomputed here exactly."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sealagg.crypto.params as params_module
from sealagg.crypto.errors import InfeasibleParametersError
from sealagg.crypto.graph import CommunicationGraph, complete_graph, harary_graph
from sealagg.crypto.params import (
    SecAggParameters,
    find_parameters,
    log2_correctness_failure,
    log2_disconnection_bound,
    log2_threshold_privacy_failure,
    round_success_probability,
)

SEED = b"sealagg test round 0000000000001"


# ---------------------------------------------------------------- exact reference maths


def exact_correctness(n: int, k: int, t: int, delta: float) -> Fraction:
    """n · P[Binomial(k, 1-δ) < t] with exact rationals."""
    d = Fraction(delta)
    return n * sum(math.comb(k, j) * (1 - d) ** j * d ** (k - j) for j in range(t))


def exact_privacy(n: int, c: int, k: int, t: int) -> Fraction:
    """n · P[Hypergeometric(population n-1, c marked, k draws) >= t] with exact rationals."""
    hits = sum(math.comb(c, j) * math.comb(n - 1 - c, k - j) for j in range(t, k + 1))
    return n * Fraction(hits, math.comb(n - 1, k))


def exact_disconnection(n: int, k: int, q: float) -> Fraction:
    return math.comb(n, 2) * Fraction(q) ** k


def lg(x: Fraction) -> float:
    if x == 0:
        return -math.inf
    return math.log2(x.numerator) - math.log2(x.denominator)


def corrupt_count(n: int, gamma: float) -> int:
    return math.floor(Fraction(gamma) * n + Fraction(1, 10**9))


def feasible_thresholds(n, k, delta, gamma, s_bits, f_bits, malicious, complete):
    """All t meeting correctness and threshold privacy at degree k, with their margins."""
    c = corrupt_count(n, gamma)
    lo = max(2, k // 2 + 1) if malicious else 2
    out = {}
    for t in range(lo, k + 1):
        corr = exact_correctness(n, k, t, delta)
        priv = (0 if t > c else n) if complete else exact_privacy(n, c, k, t)
        if corr <= Fraction(1, 2**f_bits) and priv <= Fraction(1, 2**s_bits):
            out[t] = min(-f_bits - lg(Fraction(corr)), -s_bits - lg(Fraction(priv)))
    return out


def check_against_reference(p: SecAggParameters, *, check_minimal: bool = True) -> None:
    n, delta, gamma = p.num_clients, p.dropout_rate, p.corrupt_fraction
    s_bits, f_bits = p.security_bits, p.failure_bits
    malicious = p.adversary == "semi-malicious"
    q = gamma + (2 * delta if malicious else delta)
    k, t = p.degree, p.threshold
    assert p.complete == (k == n - 1)
    assert p.num_corrupt == corrupt_count(n, gamma)
    assert 2 <= t <= k
    if malicious:
        assert t > k / 2
    corr = exact_correctness(n, k, t, delta)
    assert corr <= Fraction(1, 2**f_bits)
    assert p.log2_failure_probability == pytest.approx(lg(corr), abs=1e-6)
    if p.complete:
        assert t > p.num_corrupt
        assert p.log2_threshold_privacy_failure == -math.inf
        assert p.log2_disconnection_probability == -math.inf
    else:
        assert k % 2 == 0
        priv = exact_privacy(n, p.num_corrupt, k, t)
        assert priv <= Fraction(1, 2**s_bits)
        assert p.log2_threshold_privacy_failure == pytest.approx(lg(priv), abs=1e-6)
        disc = exact_disconnection(n, k, q)
        assert disc <= Fraction(1, 2**s_bits)
        assert p.log2_disconnection_probability == pytest.approx(lg(disc), abs=1e-6)
    assert p.log2_failure_probability <= -f_bits
    assert p.log2_privacy_failure <= -s_bits
    # t is the largest feasible threshold (most collusion-resistant within the targets).
    options = feasible_thresholds(n, k, delta, gamma, s_bits, f_bits, malicious, p.complete)
    assert t == max(options)
    if not check_minimal:
        return
    # No smaller even k works (and if complete, no sparse k works at all).
    last = n - 2 if p.complete else k - 2
    for smaller in range(4, last + 1, 2):
        if exact_disconnection(n, smaller, q) > Fraction(1, 2**s_bits):
            continue
        assert not feasible_thresholds(
            n, smaller, delta, gamma, s_bits, f_bits, malicious, complete=False
        ), smaller


# ---------------------------------------------------------------- the finder


REPORTED = [
    (10, 0.1, 0.1),
    (50, 0.3, 0.1),
    (100, 0.1, 0.05),
    (1000, 0.05, 0.05),
    (1000, 0.3, 0.1),
]


@pytest.mark.parametrize(("n", "delta", "gamma"), REPORTED)
def test_finder_meets_independently_recomputed_bounds(n, delta, gamma):
    p = find_parameters(n, delta, gamma)
    print(p.describe())
    check_against_reference(p, check_minimal=n <= 100)


@pytest.mark.parametrize(
    ("n", "delta", "gamma"), [(100, 0.1, 0.05), (300, 0.05, 0.1), (1000, 0.05, 0.05)]
)
def test_semi_malicious_meets_bounds_and_majority_threshold(n, delta, gamma):
    p = find_parameters(n, delta, gamma, adversary="semi-malicious")
    print(p.describe())
    assert p.threshold > p.degree / 2
    check_against_reference(p, check_minimal=n <= 300)


def test_n50_parameters_survive_dropouts_where_flower_default_fails():
    p = find_parameters(50, 0.3, 0.1)
    assert not p.complete and p.degree < 49
    graph = harary_graph(range(1, 51), p.degree, SEED)
    ours = round_success_probability(graph, p.threshold, 0.3, 20000, seed=1)
    print(f"n=50 dropout 0.3: k={p.degree} t={p.threshold} succeeds in {ours:.4%} of rounds")
    assert ours >= 0.999

    # Flower's sparse setting k=11, t=7 at 30% dropout: each client keeps >= 7 of 11
    # neighbours only with probability ~0.79, so the round almost always fails.
    flower = harary_graph(range(1, 51), 11, SEED)
    theirs = round_success_probability(flower, 7, 0.3, 20000, seed=1)
    print(f"n=50 dropout 0.3: k=11 t=7 succeeds in {theirs:.4%} of rounds")
    # Measured ~6.1% (200k trials give 6.10%); standard error at 20k trials is 0.17%.
    assert theirs < 0.08
    assert log2_correctness_failure(50, 11, 7, 0.3) > 0  # the bound flags it: >= 1


@pytest.mark.parametrize(
    ("n", "delta", "gamma", "c"), [(10, 0.1, 0.1, 1), (10, 0.05, 0.2, 2), (12, 0.02, 0.25, 3)]
)
def test_complete_graph_fallback_for_small_n(n, delta, gamma, c):
    p = find_parameters(n, delta, gamma)
    assert p.complete and p.degree == n - 1
    # Privacy is deterministic once t exceeds the corrupt count; the largest t that
    # still meets the failure target is chosen.
    assert p.num_corrupt == c
    assert p.threshold > c
    assert log2_correctness_failure(n, n - 1, p.threshold + 1, delta) > -20 or p.threshold == n - 1
    assert p.log2_privacy_failure == -math.inf
    check_against_reference(p)


def test_large_n_needs_only_logarithmic_degree():
    small = find_parameters(100, 0.05, 0.05)
    big = find_parameters(1000, 0.05, 0.05)
    huge = find_parameters(10000, 0.05, 0.05)
    print(f"n=1000 dropout 0.05 corrupt 0.05 -> k={big.degree}, t={big.threshold}")
    print(f"n=10000 dropout 0.05 corrupt 0.05 -> k={huge.degree}, t={huge.threshold}")
    assert big.degree < 200
    assert big.degree / 1000 < small.degree / 100
    assert huge.degree < 2 * big.degree
    check_against_reference(huge, check_minimal=False)


def test_removed_fraction_above_0_9_is_refused():
    with pytest.raises(InfeasibleParametersError, match=r"0\.95") as err:
        find_parameters(1000, 0.5, 0.45)
    assert err.value.reason.value == "infeasible_parameters"
    with pytest.raises(InfeasibleParametersError, match=r"1\.02"):
        find_parameters(1000, 0.41, 0.2, adversary="semi-malicious")
    # The same rates are acceptable against a semi-honest server (q = 0.61).
    assert not find_parameters(1000, 0.41, 0.2).complete


@pytest.mark.parametrize(
    ("delta", "gamma"), [(-0.1, 0.1), (1.0, 0.0), (0.1, 1.0), (float("nan"), 0.1), (0.1, -1e-9)]
)
def test_rates_outside_unit_interval_are_refused(delta, gamma):
    with pytest.raises(InfeasibleParametersError, match=r"\[0, 1\)"):
        find_parameters(100, delta, gamma)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_fewer_than_three_clients_are_refused(n):
    with pytest.raises(InfeasibleParametersError, match="two parties"):
        find_parameters(n, 0.1, 0.1)


def test_bad_argument_types():
    with pytest.raises(ValueError, match="adversary"):
        find_parameters(100, 0.1, 0.1, adversary="malicious")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="security_bits"):
        find_parameters(100, 0.1, 0.1, security_bits=0)
    with pytest.raises(TypeError):
        find_parameters(100.0, 0.1, 0.1)  # type: ignore[arg-type]


def test_infeasible_request_explains_what_to_change():
    with pytest.raises(InfeasibleParametersError) as err:
        find_parameters(10, 0.1, 0.1, adversary="semi-malicious")
    text = str(err.value)
    assert "complete graph" in text and "t >= 5" in text and "k/2" in text
    assert "fewer dropouts" in text and "more clients" in text
    with pytest.raises(InfeasibleParametersError, match="correctness allows at most"):
        find_parameters(20, 0.4, 0.3)


def test_threshold_is_the_largest_feasible():
    # No dropouts and no corruption: every t in 2..k has zero failure and zero leak.
    p = find_parameters(20, 0.0, 0.0)
    assert (p.degree, p.threshold) == (4, 4)
    assert p.log2_failure_probability == -math.inf
    assert p.log2_privacy_failure == -math.inf


def test_corrupt_count_rounds_up_decimal_noise():
    assert find_parameters(100, 0.1, 0.29).num_corrupt == 29  # 0.29 * 100 = 28.999...


def test_describe_is_one_line_with_the_numbers():
    p = find_parameters(1000, 0.3, 0.1)
    text = p.describe()
    assert "\n" not in text
    assert f"k={p.degree}" in text and f"t={p.threshold}" in text and "n=1000" in text


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(3, 60),
    data=st.data(),
    delta=st.floats(0.0, 0.95),
    gamma=st.floats(0.0, 0.95),
)
def test_property_log_tails_match_exact_rationals(n, data, delta, gamma):
    k = data.draw(st.integers(1, n - 1))
    t = data.draw(st.integers(0, k))
    c = math.floor(gamma * n)
    corr = lg(exact_correctness(n, k, t, delta))
    priv = lg(exact_privacy(n, c, k, t))
    got_corr = log2_correctness_failure(n, k, t, delta)
    got_priv = log2_threshold_privacy_failure(n, c, k, t)
    for got, want in ((got_corr, corr), (got_priv, priv)):
        if want == -math.inf:
            assert got == -math.inf
        else:
            assert got == pytest.approx(want, abs=1e-7)
    if 0 < delta + gamma < 1 and k < n - 1:
        disc = lg(exact_disconnection(n, k, delta + gamma))
        assert log2_disconnection_bound(n, k, delta + gamma) == pytest.approx(disc, abs=1e-7)


# ---------------------------------------------------------------- the bound's premise


def circulant(n: int, k: int) -> CommunicationGraph:
    return CommunicationGraph(
        tuple(range(1, n + 1)),
        {
            i + 1: tuple(
                sorted(
                    {(i + d) % n + 1 for d in range(1, k // 2 + 1)}
                    | {(i - d) % n + 1 for d in range(1, k // 2 + 1)}
                )
            )
            for i in range(n)
        },
    )


def removed_runs(removed: list[bool]) -> list[int]:
    """Lengths of the maximal circular runs of removed positions."""
    n = len(removed)
    if all(removed):
        return [n]
    start = removed.index(False)
    runs, length = [], 0
    for i in range(1, n + 1):
        if removed[(start + i) % n]:
            length += 1
        else:
            if length:
                runs.append(length)
            length = 0
    return runs


@settings(max_examples=300, deadline=None)
@given(n=st.integers(5, 40), data=st.data())
def test_property_circulant_disconnects_only_with_two_long_removed_runs(n, data):
    """The connectivity bound's premise: a split needs two runs of >= k/2 removed clients."""
    k = data.draw(st.sampled_from([k for k in range(2, n - 1, 2)]))
    removed = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    g = circulant(n, k)
    alive = {i + 1 for i in range(n) if not removed[i]}
    if not alive:
        return
    start = min(alive)
    seen, todo = {start}, [start]
    while todo:
        for v in g.neighbours(todo.pop()):
            if v in alive and v not in seen:
                seen.add(v)
                todo.append(v)
    if seen != alive:
        assert sum(r >= k // 2 for r in removed_runs(removed)) >= 2


# ---------------------------------------------------------------- Monte Carlo


def test_monte_carlo_matches_an_exact_small_case():
    # Complete graph on 3, t = 1: succeeds iff at least two clients survive.
    g = complete_graph([1, 2, 3])
    est = round_success_probability(g, 1, 0.5, 200000, seed=3)
    assert est == pytest.approx(0.5, abs=0.006)
    # t = 2 with three clients: everyone needs both neighbours alive -> all survive.
    est = round_success_probability(g, 2, 0.2, 200000, seed=4)
    assert est == pytest.approx(0.8**3, abs=0.006)


def test_monte_carlo_edge_cases_and_determinism():
    g = harary_graph(range(1, 31), 6, SEED)
    assert round_success_probability(g, 6, 0.0, 1000, seed=0) == 1.0
    assert round_success_probability(g, 7, 0.0, 1000, seed=0) == 0.0  # t above the degree
    assert round_success_probability(g, 1, 1.0, 1000, seed=0) == 0.0
    a = round_success_probability(g, 4, 0.2, 5000, seed=9)
    assert a == round_success_probability(g, 4, 0.2, 5000, seed=9)
    assert 0.0 < a < 1.0
    with pytest.raises(ValueError):
        round_success_probability(g, 0, 0.2, 10, seed=1)
    with pytest.raises(ValueError):
        round_success_probability(g, 3, 1.5, 10, seed=1)


def test_monte_carlo_sparse_path_agrees_with_dense_path(monkeypatch):
    g = harary_graph(range(1, 61), 8, SEED)
    dense = round_success_probability(g, 5, 0.25, 3000, seed=5)
    monkeypatch.setattr(params_module, "_DENSE_MAX_CLIENTS", 10)
    monkeypatch.setattr(params_module, "_CHUNK_ELEMENTS", 60 * 8 * 1000)
    sparse = round_success_probability(g, 5, 0.25, 3000, seed=5)
    assert sparse == dense
    assert 0.0 < dense < 1.0


def test_monte_carlo_agrees_with_per_client_loop():
    g = harary_graph(range(1, 21), 4, SEED)
    rng = np.random.Generator(np.random.PCG64(7))
    alive = rng.random((4000, 20)) >= 0.3
    ok = alive.sum(axis=1) >= 3
    for i, u in enumerate(g.participants):
        cols = [v - 1 for v in g.neighbours(u)]
        ok &= alive[:, cols].sum(axis=1) >= 3
        assert u == i + 1
    assert round_success_probability(g, 3, 0.3, 4000, seed=7) == ok.mean()
