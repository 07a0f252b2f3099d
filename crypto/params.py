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
* **Correctness.** Unmasking needs, for every client (survivor: its self-mask
  seed; dropped: its mask key), at least t shares from live neighbours. A client
  has k neighbours, each live independently with probability 1-delta, so by the
  union bound over the n clients::

      P[round fails] ≤ n · P[Binomial(k, 1-delta) < t] ≤ 2^-failure_bits.

* **Threshold privacy.** A client's secrets leak if at least t of its k
  neighbours are corrupt. Its k neighbours are a uniformly random k-subset of
  the other n-1 positions, of which at most c are corrupt, so::

      n · P[Hypergeometric(population n-1, c corrupt, k draws) ≥ t] ≤ 2^-security_bits.

  In semi-malicious mode we also require ``t > k/2``: the two shares of one
  client (self-mask seed, mask key) are requested from disjoint sets of
  neighbours (those the server declares alive / dropped), and two disjoint sets
  cannot both reach a majority, so a server lying about who dropped cannot
  collect both.
  Every t is also at least 2 (a threshold of 1 is no secret sharing: each share
  is the secret itself).
* **Connectivity** (Bell et al.: if the graph of honest surviving clients splits,
  the sum of each component leaks). Position clients on the Harary circle and
  remove the corrupt and dropped ones. Consecutive remaining clients (in circle
  order) are adjacent whenever fewer than k/2 removed positions separate them,
  so the remaining graph contains a Hamiltonian path — and is connected — unless
  at least *two* gaps consist of ≥ k/2 consecutive removed positions. Such two
  gaps contain two disjoint windows of exactly k/2 positions, i.e. k fixed
  positions all removed. A position is removed if corrupt (negatively associated
  indicators, sampling without replacement, each with probability c/n ≤ gamma) or
  else dropped (independent, delta), so k fixed positions are all removed with
  probability at most ``(gamma + delta)^k ≤ q^k``. A union bound over the at most
  C(n, 2) pairs of window starts gives::

      P[honest survivors disconnected] ≤ C(n, 2) · q^k ≤ 2^-security_bits.

  (Semi-malicious mode uses the larger q = gamma + 2·delta, so falsely "dropped" honest
  clients are counted as removed.) The complete graph never disconnects.
* **Search.** The smallest even k ≥ 4 (k < n-1) for which some t satisfies all
  three constraints; among those t, the largest: it meets the failure target
  and tolerates the most colluding neighbours beyond the assumed gamma (a
  smaller t would only buy reliability past the target that was asked for).
  If no sparse k works, the complete graph k = n-1 (plain SecAgg): there an
  honest client has exactly c corrupt neighbours, so ``t > c`` makes threshold
  privacy deterministic (probability 0); the correctness bound is kept. If that
  fails too, :class:`InfeasibleParametersError` explains which constraint
  fails.

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
from sealagg.crypto.rules import require_masking_parties

__all__ = [
    "MAX_REMOVED_FRACTION",
    "SecAggParameters",
    "choose_graph",
    "find_parameters",
    "log2_correctness_failure",
    "log2_disconnection_bound",
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

    def describe(self) -> str:
        """One line for logs and the operator console."""
        graph = "complete graph (SecAgg)" if self.complete else "Harary graph (SecAgg+)"
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
) -> SecAggParameters:
    """The smallest even degree k and its best threshold t under the module's model."""
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
    c = _num_corrupt(n, gamma)
    lf = _log_factorials(n)
    target_fail, target_priv = -float(failure_bits), -float(security_bits)

    def build(k: int, t: int, corr: float, priv: float, disc: float) -> SecAggParameters:
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
            log2_privacy_failure=max(priv, disc),
            log2_threshold_privacy_failure=priv,
            log2_disconnection_probability=disc,
        )

    # Sparse Harary graphs: the connectivity bound only improves with k, so start
    # at the first even k that meets it.
    k_conn = _min_connected_degree(n, q, security_bits)
    for k in range(max(4, k_conn), n - 1, 2):
        corr = _log2_live_lower_tails(k, delta, lf) + math.log2(n)
        priv = _log2_hypergeom_upper_tails(n - 1, c, k, lf) + math.log2(n)
        t = _best_threshold(k, corr, priv, target_fail, target_priv, malicious)
        if t is not None:
            disc = log2_disconnection_bound(n, k, q)
            return build(k, t, float(corr[t]), float(priv[t]), disc)

    # Complete graph: exactly c corrupt neighbours, so t > c is deterministic privacy.
    k = n - 1
    corr = _log2_live_lower_tails(k, delta, lf) + math.log2(n)
    priv = np.where(np.arange(k + 1) > c, -np.inf, math.log2(n))
    t = _best_threshold(k, corr, priv, target_fail, target_priv, malicious)
    if t is not None:
        return build(k, t, float(corr[t]), float(priv[t]), -math.inf)

    t_need = max(2, c + 1, k // 2 + 1 if malicious else 2)
    why = [f"t > {c} corrupt clients"]
    if malicious:
        why.append(f"t > k/2 = {k / 2:g} against a server lying about dropouts")
    t_allow = int(np.nonzero(corr <= target_fail)[0].max())
    sparse = (
        f"no sparse degree k < {n - 1} meets every constraint (connectivity alone needs "
        f"k >= {k_conn}); "
        if k_conn <= n - 2
        else f"connectivity needs k >= {k_conn}, more than a sparse graph on {n} clients has; "
    )
    raise InfeasibleParametersError(
        f"no (k, t) for n={n}, delta={delta:.3g}, gamma={gamma:.3g} ({c} corrupt), {adversary}, "
        f"targets 2^-{security_bits} privacy / 2^-{failure_bits} failure: {sparse}"
        f"on the complete graph (k={k}) correctness allows at most t={t_allow} but "
        f"privacy needs t >= {t_need} ({' and '.join(why)}). Use fewer dropouts, more "
        f"clients, or a lower security/failure target"
    )


def log2_correctness_failure(
    num_clients: int, degree: int, threshold: int, dropout: float
) -> float:
    """log2 of ``n · P[Binomial(k, 1-delta) < t]`` (union bound on the round failing)."""
    _check_kt(num_clients, degree, threshold)
    tails = _log2_live_lower_tails(degree, dropout, _log_factorials(degree))
    return float(tails[threshold]) + math.log2(num_clients)


def log2_threshold_privacy_failure(
    num_clients: int, num_corrupt: int, degree: int, threshold: int
) -> float:
    """log2 of ``n · P[Hypergeometric(n-1, c, k) ≥ t]`` (some client's shares leak)."""
    _check_kt(num_clients, degree, threshold)
    if not 0 <= num_corrupt <= num_clients:
        raise ValueError("num_corrupt must be between 0 and num_clients")
    c = min(num_corrupt, num_clients - 1)
    tails = _log2_hypergeom_upper_tails(num_clients - 1, c, degree, _log_factorials(num_clients))
    return float(tails[threshold]) + math.log2(num_clients)


def log2_disconnection_bound(num_clients: int, degree: int, removed_fraction: float) -> float:
    """log2 of ``C(n, 2) · q^k``; ``-inf`` for the complete graph or q = 0."""
    if degree >= num_clients - 1 or removed_fraction <= 0.0:
        return -math.inf
    return math.log2(math.comb(num_clients, 2)) + degree * math.log2(removed_fraction)


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


def _min_connected_degree(n: int, q: float, security_bits: int) -> int:
    """Smallest even k >= 2 with ``C(n, 2) · q^k <= 2^-security_bits`` (may exceed n)."""
    if q <= 0.0:
        return 2
    log2_pairs, log2_q = math.log2(math.comb(n, 2)), math.log2(q)

    def ok(k: int) -> bool:
        return log2_pairs + k * log2_q <= -security_bits

    k = max(2, math.ceil((log2_pairs + security_bits) / -log2_q))
    k += k % 2
    while k > 2 and ok(k - 2):  # guard against floating-point rounding in ceil()
        k -= 2
    while not ok(k):
        k += 2
    return k


def _best_threshold(
    k: int,
    log2_fail: np.ndarray,
    log2_priv: np.ndarray,
    target_fail: float,
    target_priv: float,
    malicious: bool,
) -> int | None:
    t = np.arange(k + 1)
    t_min = max(2, k // 2 + 1) if malicious else 2
    feasible = (t >= t_min) & (log2_fail <= target_fail) & (log2_priv <= target_priv)
    if not feasible.any():
        return None
    return int(np.nonzero(feasible)[0].max())


def _fmt_log2(value: float) -> str:
    return "0" if value == -math.inf else f"<= 2^{value:.1f}"


def choose_graph(
    n: int, mode: str, dropout_rate: float, corrupt_fraction: float
) -> tuple[int | None, int, str]:
    """(degree or None for complete, threshold, a note for the audit log).

    The parameter finder's targets (2^-40 privacy, 2^-20 failure) cannot be met by
    very small federations; there the complete graph with the smallest threshold
    that still exceeds the assumed corrupt clients is used, and the note says so.
    ``secagg`` mode always uses the complete graph.
    """
    try:
        params = find_parameters(n, dropout_rate, corrupt_fraction)
    except InfeasibleParametersError as error:
        threshold = max(2, int(corrupt_fraction * n) + 1)
        if threshold > n - 1:
            raise
        return (
            None,
            threshold,
            f"finder targets unreachable ({error}); complete graph, t={threshold}",
        )
    if mode == "secagg" or params.complete:
        threshold = params.threshold if params.complete else max(2, n // 2 + 1)
        return None, threshold, params.describe()
    return params.degree, params.threshold, params.describe()
