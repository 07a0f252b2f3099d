"""Choose the SecAgg+ degree k and Shamir threshold t so users don't have to guess.

:func:`find_parameters` turns (number of clients n, dropout rate delta, corrupt
fraction gamma, security targets) into a graph degree k and a threshold t, or
refuses with :class:`~crypto.errors.InfeasibleParametersError` saying what to
change. All probabilities below are rigorous upper bounds (union bounds over
exact tails), computed in log space; the achieved values are reported in the
returned :class:`SecAggParameters`.

The model (this is the contract)
--------------------------------
Notation: n clients, each drops out independently with probability delta; the
adversary controls ``c = floor(gamma·n)`` clients (the server colludes with them),
and — because the graph is laid over a random permutation derived from public
round randomness (:mod:`crypto.graph`) — their positions are uniformly random.
Targets: round failure ≤ 2^-failure_bits, privacy failure ≤ 2^-security_bits.

* **Removed fraction.** ``q = gamma + delta`` (semi-honest) or ``q = gamma + 2·delta``
  (semi-malicious: a server may additionally claim that up to a delta fraction of
  live clients dropped). Refused when ``q > 0.9``, when a rate is outside
  ``[0, 1)``, or when ``n < 3`` (with two parties, pairwise masking hides
  nothing: the sum reveals the other input).
* **Graph.** Every pair of clients is an edge independently with probability
  ``p = k/(n-1)`` (:func:`crypto.graph.random_graph`, Bell et al. 2020), so all
  counts below are exact binomials.
* **Quorum.** ``Q = minimum_quorum(n, t, c, m)`` (:mod:`crypto.rules`): two survivor
  lists cannot both gather Q signatures, so one list L holds per round; the server
  may "drop" up to ``n - Q`` clients *of its choice, after seeing the graph*.
* **Correctness.** Unmasking needs, for every client, at least t shares from live
  neighbours; the number of live neighbours is ``Binomial(n-1, p·(1-delta))``::

      P[round fails] ≤ n · P[Binomial(n-1, p(1-delta)) < t] ≤ 2^-failure_bits.

* **Privacy against a malicious dropper** (threshold privacy and partitions in one
  bound). With one list L, the server learns the sum of each component S of the
  honest survivors' graph, and only if it can remove every member's self-mask:
  each ``u`` in S needs t shares from neighbours in ``S u C`` (C the colluders;
  honest survivors outside S are not adjacent to S, dropped ones do not answer).
  So a separate sum over S needs (ii) ``2·e(S) + e(S, C) ≥ s·t`` and (i) every
  honest client outside S adjacent to S dropped. The server may drop at most
  ``b = n - Q`` honest clients (L needs Q signers, at most c of them colluders).

  *Which sets matter.* The guarantee is: at most one sum per round, over at least
  ``m - c`` honest inputs. It fails only if (a) two or more components are
  unmaskable, or (b) one is, over fewer than ``m - c`` honest clients. In (a) take S
  the smallest unmaskable component: ``s ≤ h_L / 2`` with ``h_L`` the honest
  survivors, and since all of N(S) (the honest clients outside S adjacent to S) dropped,
  ``h_L ≤ h - |N(S)|``, i.e. ``|N(S)| ≤ h - 2s``. In (b) ``s < m - c``.
  (An unmaskable component holding at least half of the honest survivors and at
  least ``m - c`` of them, with every other component masked, is the one sum the
  guarantee allows.) So for each S only ``|N(S)| ≤ b_s`` counts, with
  ``b_s = b`` when ``s < m - c`` and ``b_s = min(b, h - 2s)`` otherwise. The
  pairs inside S, between S and C, and between S and the other honest clients are
  disjoint, so (i) and (ii) are independent, and for ``s = |S|``, ``h = n - c``::

      P[the server learns a second sum, or one over fewer than m - c honest inputs]
        ≤ Σ_{s=1}^{max(⌊h/2⌋, m-c-1)} C(h, s) · P[2·Bin(C(s,2), p) + Bin(s·c, p) ≥ s·t]
                          · P[Bin(h - s, 1 - (1-p)^s) ≤ b_s]  ≤ 2^-security_bits.

  The ``s = 1`` term is threshold privacy (a client with t corrupt neighbours). The
  earlier bound used ``b_s = b`` for every s; it counted, near ``s = h/2``, sets that
  are the *larger* side of a split, whose smaller side is already counted (or, if
  masked, leaves one allowed sum). That looseness alone raised the degree at n=50 from
  k=25 to k=39; this bound is exact in the same union-bound sense, and no weaker.
  Unmasking a component also needs the dropped neighbours' mask keys (t shares
  each); leaving that condition out only makes the bound larger. Corrupt clients
  are fixed before the graph seed (static corruption); the seed cannot be ground
  (:mod:`crypto.coins`), and each abort-and-restart is one more independent draw.
  In semi-malicious mode we also keep ``t > k/2``.
  Every t is also at least 2 (a threshold of 1 is no secret sharing).
* **Search.** The smallest k ≥ 4 (k < n-1) whose largest t meeting the failure
  target also meets the privacy bound (a larger t only helps privacy). If no
  sparse k works, the complete graph k = n-1 (plain SecAgg): there an honest
  client has exactly c corrupt neighbours, so ``t > c`` makes threshold privacy
  deterministic and the complete graph never splits. If that fails too,
  :class:`InfeasibleParametersError` explains which constraint fails.

The reported ``log2_privacy_failure`` is the larger of the threshold-privacy
and connectivity bounds (each meets the target on its own; the probability of
either privacy failure happening is at most their sum, i.e. at most
2^-(security_bits-1)).

Tails are summed exactly term by term in log space: log-binomial coefficients
come from a ``math.lgamma`` table (the same as ``log(math.comb(...))`` to
~1e-12 relative), so n up to 10,000 runs in milliseconds.

:func:`round_success_probability` is a Monte-Carlo *simulation* of the
correctness event for a concrete graph (numpy PCG64; not for security use).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from sealagg.crypto.errors import InfeasibleParametersError
from sealagg.crypto.graph import CommunicationGraph
from sealagg.crypto.rules import (
    DEFAULT_COLLUDERS,
    MIN_MASKED_PARTIES,
    minimum_quorum,
    require_masking_parties,
)

__all__ = [
    "MAX_REMOVED_FRACTION",
    "SecAggParameters",
    "choose_graph",
    "find_parameters",
    "log2_correctness_failure",
    "log2_partition_bound",
    "log2_threshold_privacy_failure",
    "round_success_probability",
]

Adversary = Literal["semi-honest", "semi-malicious"]
_ADVERSARIES = ("semi-honest", "semi-malicious")

#: Largest accepted removed fraction q (corrupt + dropped, or corrupt + 2·dropped).
MAX_REMOVED_FRACTION = 0.9
_LN2 = math.log(2.0)
# floor(gamma·n) is taken with this slack so 0.29·100 = 28.999999999999996 counts as 29
# (rounding the corrupt count up is the safe direction).
_COUNT_SLACK = 1e-9
# Monte-Carlo: at most this many float32 entries per trial chunk / dense adjacency.
_CHUNK_ELEMENTS = 1 << 22
_DENSE_MAX_CLIENTS = 2048


@dataclass(frozen=True)
class SecAggParameters:
    """A (k, t) choice together with the inputs and the bounds it achieves."""

    num_clients: int
    dropout_rate: float
    corrupt_fraction: float
    security_bits: int
    failure_bits: int
    adversary: Adversary
    degree: int
    threshold: int
    complete: bool
    num_corrupt: int
    removed_fraction: float
    log2_failure_probability: float
    log2_privacy_failure: float
    log2_threshold_privacy_failure: float
    log2_disconnection_probability: float
    #: The signature quorum Q (``minimum_survivors``) the bounds assume.
    minimum_survivors: int = 0

    def describe(self) -> str:
        """One line for logs and the operator console."""
        graph = "complete graph (SecAgg)" if self.complete else "random graph (SecAgg+)"
        return (
            f"{graph} k={self.degree}, t={self.threshold} for n={self.num_clients} "
            f"(dropout {self.dropout_rate:.3g}, corrupt {self.corrupt_fraction:.3g} = "
            f"{self.num_corrupt} of {self.num_clients} clients, {self.adversary}): round failure "
            f"{_fmt_log2(self.log2_failure_probability)} (target 2^-{self.failure_bits}), "
            f"privacy failure {_fmt_log2(self.log2_privacy_failure)} "
            f"(target 2^-{self.security_bits})"
        )


def find_parameters(
    num_clients: int,
    dropout_rate: float,
    corrupt_fraction: float,
    *,
    security_bits: int = 40,
    failure_bits: int = 20,
    adversary: Adversary = "semi-honest",
    colluders: int | None = None,
    minimum_sum: int = MIN_MASKED_PARTIES,
) -> SecAggParameters:
    """The smallest degree k and its best threshold t under the module's model.

    ``colluders`` (the policy's c) overrides ``floor(corrupt_fraction · n)`` when larger.
    """
    n = _check_inputs(
        num_clients, dropout_rate, corrupt_fraction, security_bits, failure_bits, adversary
    )
    delta, gamma = float(dropout_rate), float(corrupt_fraction)
    malicious = adversary == "semi-malicious"
    q = gamma + (2.0 * delta if malicious else delta)
    formula = "gamma + 2·delta" if malicious else "gamma + delta"
    if q > MAX_REMOVED_FRACTION:
        raise InfeasibleParametersError(
            f"removed fraction q = {formula} = {q:.3g} (gamma = {gamma:.3g} corrupt, delta = "
            f"{delta:.3g} dropout, {adversary}) exceeds {MAX_REMOVED_FRACTION}: too few honest "
            f"clients would remain; reduce dropouts or the corrupt fraction"
        )
    c = min(n, max(_num_corrupt(n, gamma), colluders or 0))
    target_fail, target_priv = -float(failure_bits), -float(security_bits)
    t_min = lambda k: max(2, k // 2 + 1) if malicious else 2  # noqa: E731

    def build(k: int, t: int, corr: float, priv: float, part: float) -> SecAggParameters:
        return SecAggParameters(
            num_clients=n,
            dropout_rate=delta,
            corrupt_fraction=gamma,
            security_bits=security_bits,
            failure_bits=failure_bits,
            adversary=adversary,
            degree=k,
            threshold=t,
            complete=k == n - 1,
            num_corrupt=c,
            removed_fraction=q,
            log2_failure_probability=corr,
            log2_privacy_failure=max(priv, part),
            log2_threshold_privacy_failure=priv,
            log2_disconnection_probability=part,
            minimum_survivors=minimum_quorum(n, t, c, minimum_sum),
        )

    def sparse(k: int) -> SecAggParameters | None:
        t = _largest_reliable_threshold(n, k, delta, target_fail, t_min(k))
        if t is None or minimum_quorum(n, t, c, minimum_sum) > n:
            return None
        quorum = minimum_quorum(n, t, c, minimum_sum)
        part = log2_partition_bound(n, c, k, t, n - quorum, minimum_sum=minimum_sum)
        if part > target_priv:
            return None
        corr = log2_correctness_failure(n, k, t, delta)
        return build(k, t, corr, log2_threshold_privacy_failure(n, c, k, t), part)

    # Feasibility grows with k (more neighbours: more reliable, harder to cut off), so
    # binary-search the smallest feasible k, then step down while smaller k still works.
    lo, hi = 4, n - 2
    best = sparse(hi) if hi >= lo else None
    while best is not None and lo < hi:
        mid = (lo + hi) // 2
        found = sparse(mid)
        if found is not None:
            best, hi = found, mid
        else:
            lo = mid + 1
    if best is not None:
        return best

    # Complete graph: exactly c corrupt neighbours, so t > c is deterministic privacy.
    k = n - 1
    t = _largest_reliable_threshold(n, k, delta, target_fail, t_min(k))
    if t is not None and t > c and minimum_quorum(n, t, c, minimum_sum) <= n:
        return build(k, t, log2_correctness_failure(n, k, t, delta), -math.inf, -math.inf)

    t_need = max(2, c + 1, k // 2 + 1 if malicious else 2)
    why = [f"t > {c} corrupt clients"]
    if malicious:
        why.append(f"t > k/2 = {k / 2:g} against a server lying about dropouts")
    t_allow = t if t is not None else 0
    raise InfeasibleParametersError(
        f"no (k, t) for n={n}, delta={delta:.3g}, gamma={gamma:.3g} ({c} corrupt), {adversary}, "
        f"targets 2^-{security_bits} privacy / 2^-{failure_bits} failure: no sparse degree "
        f"k < {n - 1} meets the malicious-dropper bound; on the complete graph (k={k}) "
        f"correctness allows at most t={t_allow} but privacy needs t >= {t_need} "
        f"({' and '.join(why)}) and a quorum of at most n. Use fewer dropouts, more "
        f"clients, or a lower security/failure target"
    )


def _largest_reliable_threshold(
    n: int, k: int, delta: float, target_fail: float, t_min: int
) -> int | None:
    """The largest t in ``t_min..k`` with ``n · P[live neighbours < t] <= 2^target_fail``."""
    tails = _correctness_tails(n, k, delta)
    ok = [t for t in range(t_min, k + 1) if tails[t] + math.log2(n) <= target_fail]
    return max(ok) if ok else None


def _correctness_tails(n: int, k: int, delta: float) -> np.ndarray:
    """``out[t] = log2 P[Binomial(n-1, p(1-delta)) < t]`` (complete graph: Bin(n-1, 1-delta))."""
    if k >= n - 1:
        return _log2_live_lower_tails(n - 1, delta, _log_factorials(n))
    live = (k / (n - 1)) * (1.0 - delta)
    return _log2_live_lower_tails(n - 1, 1.0 - live, _log_factorials(n))


def log2_correctness_failure(
    num_clients: int, degree: int, threshold: int, dropout: float
) -> float:
    """log2 of ``n · P[live neighbours < t]`` (union bound on the round failing)."""
    _check_kt(num_clients, degree, threshold)
    return float(_correctness_tails(num_clients, degree, dropout)[threshold]) + math.log2(
        num_clients
    )


def log2_threshold_privacy_failure(
    num_clients: int, num_corrupt: int, degree: int, threshold: int
) -> float:
    """log2 of ``n · P[Binomial(c, p) ≥ t]`` (some client has t corrupt neighbours)."""
    _check_kt(num_clients, degree, threshold)
    if not 0 <= num_corrupt <= num_clients:
        raise ValueError("num_corrupt must be between 0 and num_clients")
    c = min(num_corrupt, num_clients - 1)
    if degree >= num_clients - 1:
        return -math.inf if threshold > c else math.log2(num_clients)
    p = degree / (num_clients - 1)
    tail = _log2_binom_upper(c, p, threshold, _log_factorials(c))
    return tail + math.log2(num_clients)


def log2_partition_bound(
    num_clients: int,
    colluders: int,
    degree: int,
    threshold: int,
    allowed_drops: int,
    *,
    minimum_sum: int | None = None,
) -> float:
    """log2 of the malicious-dropper bound of the module docstring; ``-inf`` when complete.

    The server may drop ``allowed_drops`` clients of its choice after seeing the graph;
    the result bounds the probability that it can then learn a second sum, or one over
    fewer than ``minimum_sum - c`` honest clients (for ``s = 1``: one client's input).
    ``minimum_sum`` (the policy's m) enables the exact per-size drop budget ``b_s``;
    without it every set of up to half the honest clients counts with the whole budget
    (the older, looser bound, kept for callers that do not know m).
    """
    n, c, k, t, b = num_clients, colluders, degree, threshold, allowed_drops
    _check_kt(n, k, min(t, k))
    if k >= n - 1:
        return -math.inf
    p = k / (n - 1)
    h = n - c
    log_p, log_q = math.log(p), math.log1p(-p)
    lf_n = _log_factorials(n)
    terms: list[float] = []
    needs: list[tuple[int, float]] = []
    if minimum_sum is None:
        sizes = [(s, b) for s in range(1, h // 2 + 1)]
    else:  # s < m - c: any cut-off S counts; else only as the smaller side of a split
        small = max(1, minimum_sum - c)
        top = min(h, max(h // 2, small - 1))
        sizes = [(s, b if s < small else min(b, h - 2 * s)) for s in range(1, top + 1)]
    for s, budget in sizes:
        if budget < 0:
            continue  # S would be the larger side of every split: counted from the other
        pi = -math.expm1(s * log_q)  # P[an outside honest client is adjacent to S]
        log_cut = _ln_binom_lower(h - s, pi, budget, lf_n)  # ln P[Bin(h-s, pi) <= b_s]
        log_sets = float(lf_n[h] - lf_n[s] - lf_n[h - s])
        if log_sets + log_cut < -120.0:  # negligible even if (ii) is certain
            terms.append(log_sets + log_cut)
        else:
            needs.append((s, log_sets + log_cut))
    if needs:
        top = max(s * (s - 1) // 2 + s * c for s, _ in needs)
        lf = _log_factorials(max(top, n) + 1)
        for s, base in needs:
            terms.append(base + _ln_dense_enough(s, c, p, t, log_p, log_q, lf))
    if not terms:
        return -math.inf
    return float(np.logaddexp.reduce(np.array(terms))) / _LN2


def _ln_binom_pmf(trials: int, log_p: float, log_q: float, lf: np.ndarray) -> np.ndarray:
    j = np.arange(trials + 1)
    return lf[trials] - lf[j] - lf[trials - j] + _xlog(j, log_p) + _xlog(trials - j, log_q)


def _ln_binom_lower(trials: int, prob: float, at_most: int, lf: np.ndarray) -> float:
    """``ln P[Binomial(trials, prob) <= at_most]``."""
    if at_most >= trials:
        return 0.0
    if at_most < 0:
        return -math.inf
    log_p = math.log(prob) if prob > 0 else -math.inf
    log_q = math.log1p(-prob) if prob < 1 else -math.inf
    j = np.arange(at_most + 1)  # only the terms summed: O(at_most), not O(trials)
    pmf = lf[trials] - lf[j] - lf[trials - j] + _xlog(j, log_p) + _xlog(trials - j, log_q)
    return min(0.0, float(np.logaddexp.reduce(pmf)))


def _log2_binom_upper(trials: int, prob: float, at_least: int, lf: np.ndarray) -> float:
    """``log2 P[Binomial(trials, prob) >= at_least]``."""
    if at_least <= 0:
        return 0.0
    if at_least > trials:
        return -math.inf
    pmf = _ln_binom_pmf(trials, math.log(prob), math.log1p(-prob), lf)
    return min(0.0, float(np.logaddexp.reduce(pmf[at_least:]))) / _LN2


def _ln_dense_enough(
    s: int, c: int, p: float, t: int, log_p: float, log_q: float, lf: np.ndarray
) -> float:
    """``ln P[2·Bin(C(s,2), p) + Bin(s·c, p) >= s·t]`` (exact convolution)."""
    inside, across = s * (s - 1) // 2, s * c
    x_pmf = _ln_binom_pmf(inside, log_p, log_q, lf)
    x_upper = np.logaddexp.accumulate(x_pmf[::-1])[::-1]  # ln P[X >= x]
    y_pmf = _ln_binom_pmf(across, log_p, log_q, lf)
    need = -(-(s * t - np.arange(across + 1)) // 2)  # ceil((s·t - y) / 2)
    need = np.maximum(need, 0)
    reach = need <= inside
    if not reach.any():
        return -math.inf
    terms = y_pmf[reach] + x_upper[need[reach]]
    return min(0.0, float(np.logaddexp.reduce(terms)))


def round_success_probability(
    graph: CommunicationGraph,
    threshold: int,
    dropout_rate: float,
    trials: int,
    seed: int,
) -> float:
    """Monte-Carlo estimate of P[the round can be unmasked] (simulation, not security).

    Every client drops independently with probability ``dropout_rate``; a trial
    succeeds when at least ``threshold`` clients survive and every client (all
    joined the round) has at least ``threshold`` surviving neighbours.
    """
    for name, value in (("threshold", threshold), ("trials", trials), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int")
    if threshold < 1 or trials < 1 or seed < 0:
        raise ValueError("threshold and trials must be positive and seed non-negative")
    if not 0.0 <= dropout_rate <= 1.0:
        raise ValueError("dropout_rate must be in [0, 1]")
    ids = graph.participants
    n = len(ids)
    index = {cid: i for i, cid in enumerate(ids)}
    rng = np.random.Generator(np.random.PCG64(seed))
    if n <= _DENSE_MAX_CLIENTS:
        adjacency = np.zeros((n, n), dtype=np.float32)
        for cid in ids:
            adjacency[index[cid], [index[x] for x in graph.neighbours(cid)]] = 1.0
        chunk = max(1, _CHUNK_ELEMENTS // n)
    else:
        width = max(len(graph.neighbours(cid)) for cid in ids)
        # Pad with column n, which is always "dropped".
        nbr = np.full((n, width), n, dtype=np.intp)
        for cid in ids:
            row = [index[x] for x in graph.neighbours(cid)]
            nbr[index[cid], : len(row)] = row
        chunk = max(1, _CHUNK_ELEMENTS // (n * max(width, 1)))
    successes = 0
    done = 0
    while done < trials:
        m = min(chunk, trials - done)
        alive = rng.random((m, n)) >= dropout_rate
        if n <= _DENSE_MAX_CLIENTS:
            live_nbrs = alive.astype(np.float32) @ adjacency
        else:
            padded = np.concatenate([alive, np.zeros((m, 1), dtype=bool)], axis=1)
            live_nbrs = padded[:, nbr].sum(axis=2)
        ok = (alive.sum(axis=1) >= threshold) & (live_nbrs >= threshold).all(axis=1)
        successes += int(ok.sum())
        done += m
    return successes / trials


# --------------------------------------------------------------------------- helpers


def _check_inputs(
    num_clients: object,
    dropout_rate: object,
    corrupt_fraction: object,
    security_bits: object,
    failure_bits: object,
    adversary: object,
) -> int:
    if isinstance(num_clients, bool) or not isinstance(num_clients, int):
        raise TypeError("num_clients must be an int")
    for name, bits in (("security_bits", security_bits), ("failure_bits", failure_bits)):
        if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1:
            raise ValueError(f"{name} must be a positive int (got {bits!r})")
    if adversary not in _ADVERSARIES:
        raise ValueError(f"adversary must be one of {_ADVERSARIES} (got {adversary!r})")
    for name, rate in (("dropout_rate", dropout_rate), ("corrupt_fraction", corrupt_fraction)):
        if isinstance(rate, bool) or not isinstance(rate, int | float):
            raise TypeError(f"{name} must be a number")
        if not 0.0 <= rate < 1.0:  # also rejects NaN
            raise InfeasibleParametersError(f"{name} must be in [0, 1) (got {rate!r})")
    require_masking_parties(num_clients, "the parameter finder")
    return num_clients


def _check_kt(n: int, k: int, t: int) -> None:
    if not (n >= 2 and 1 <= k <= n - 1 and 0 <= t <= k):
        raise ValueError(f"need n >= 2, 1 <= k <= n-1, 0 <= t <= k (got n={n}, k={k}, t={t})")


def _num_corrupt(n: int, gamma: float) -> int:
    return min(n, math.floor(gamma * n + _COUNT_SLACK))


def _log_factorials(n: int) -> np.ndarray:
    """``lf[i] = ln(i!)`` for ``i = 0..n``."""
    return np.fromiter((math.lgamma(i + 1.0) for i in range(n + 1)), dtype=np.float64, count=n + 1)


def _log_comb(a: int | np.ndarray, b: np.ndarray, lf: np.ndarray) -> np.ndarray:
    """``ln C(a, b)`` elementwise; ``-inf`` where ``b`` is outside ``0..a``."""
    a_arr = np.broadcast_to(np.asarray(a), b.shape)
    valid = (b >= 0) & (b <= a_arr)
    bb = np.where(valid, b, 0)
    aa = np.where(valid, a_arr, 0)
    return np.where(valid, lf[aa] - lf[bb] - lf[aa - bb], -np.inf)


def _xlog(count: np.ndarray, log_p: float) -> np.ndarray:
    """``count · log_p`` with ``0 · (-inf) = 0``."""
    if math.isinf(log_p):
        return np.where(count == 0, 0.0, -np.inf)
    return count * log_p


def _log2_live_lower_tails(k: int, dropout: float, lf: np.ndarray) -> np.ndarray:
    """``out[t] = log2 P[Binomial(k, 1 - dropout) < t]`` for ``t = 0..k``.

    Takes the dropout rate itself (not 1 - dropout) so tiny rates keep their precision.
    """
    j = np.arange(k + 1)  # number of live neighbours
    log_live = math.log1p(-dropout) if dropout < 1.0 else -math.inf
    log_drop = math.log(dropout) if dropout > 0.0 else -math.inf
    log_pmf = _log_comb(k, j, lf) + _xlog(j, log_live) + _xlog(k - j, log_drop)
    out = np.empty(k + 1)
    out[0] = -np.inf
    out[1:] = np.logaddexp.accumulate(log_pmf)[:-1]
    return np.minimum(out, 0.0) / _LN2


def _log2_hypergeom_upper_tails(
    population: int, marked: int, draws: int, lf: np.ndarray
) -> np.ndarray:
    """``out[t] = log2 P[Hypergeometric(population, marked, draws) >= t]`` for ``t = 0..draws``."""
    j = np.arange(draws + 1)
    log_pmf = (
        _log_comb(marked, j, lf)
        + _log_comb(population - marked, draws - j, lf)
        - float(_log_comb(population, np.array(draws), lf))
    )
    out = np.logaddexp.accumulate(log_pmf[::-1])[::-1]
    return np.minimum(out, 0.0) / _LN2


def _fmt_log2(value: float) -> str:
    return "0" if value == -math.inf else f"<= 2^{value:.1f}"


def choose_graph(
    n: int,
    mode: str,
    dropout_rate: float,
    corrupt_fraction: float,
    *,
    colluders: int = DEFAULT_COLLUDERS,
    minimum_sum: int = MIN_MASKED_PARTIES,
) -> tuple[int | None, int, str]:
    """(degree or None for complete, threshold, a note for the audit log).

    The threshold and the quorum ``minimum_quorum(n, t, c, m)`` meet
    :func:`crypto.rules.require_malicious_server_conditions` for ``c = max(colluders,
    floor(corrupt_fraction · n))``: the clients run the same check and would refuse
    anything less. Very small federations cannot meet the finder's targets (2^-40
    privacy, 2^-20 failure); there the complete graph with ``t = c + 1`` is used and
    the note says so. ``secagg`` mode always uses the complete graph. Raises
    :class:`InfeasibleParametersError` when no threshold and quorum fit in n.
    """
    c = max(colluders, _num_corrupt(n, corrupt_fraction))
    try:
        params = find_parameters(
            n, dropout_rate, corrupt_fraction, colluders=c, minimum_sum=minimum_sum
        )
    except InfeasibleParametersError as error:
        threshold = max(2, c + 1)
        if threshold > n - 1 or minimum_quorum(n, threshold, c, minimum_sum) > n:
            raise InfeasibleParametersError(
                f"{n} clients cannot be protected against c={c} colluders with sums over "
                f"m={minimum_sum}: threshold {threshold} and quorum "
                f"{minimum_quorum(n, threshold, c, minimum_sum)} do not fit ({error})"
            ) from None
        return (
            None,
            threshold,
            f"finder targets unreachable ({error}); complete graph, t={threshold}, c={c}",
        )
    if mode == "secagg" or params.complete:
        threshold = params.threshold if params.complete else max(2, c + 1, n // 2 + 1)
        return None, threshold, params.describe()
    return params.degree, params.threshold, params.describe()
