"""A signing committee for the SecAgg+ consistency check (issue 20: no n² term).

Why
---
In the consistency check every client used to verify a quorum ``Q`` (about n/2) of
Ed25519 signatures on the survivor list: ``n · Q`` verifications per round, the one n²
term of SecAgg+. Neither ``cryptography`` nor PyNaCl offers batch verification, so a
sparse-graph round instead has a small *committee* ``M`` of ``m`` participants, and a
client unmasks once ``q`` committee members signed the very list it signed in the very
transcript (:func:`crypto._transcript.survivors_payload`). Per client that is ``q``
verifications, independent of n (``q`` grows only like ``log(1/2^-sigma)``, and like
``log n`` through the corrupt count of a larger federation).

The rule (what every client checks)
-----------------------------------
* Only sparse-graph rounds (SecAgg+; :attr:`crypto.config.RoundConfig.is_complete` is
  false), and only when the sizing below finds a committee smaller than the quorum.
  Otherwise the full-quorum check stays exactly as it was (complete graphs, small
  federations, corrupt/dropout rates where no committee pays off, and hand-picked graphs
  that miss the correctness target even without dropouts).
* Membership: a uniformly random ``m``-subset of the round's *participants* (the roster
  of the :class:`~crypto.config.RoundConfig`, not the advertisers the server relayed),
  drawn from the round's graph seed (:func:`crypto.coins.graph_seed`) with a keyed
  permutation: ``K = HKDF-SHA256(seed, salt=round id, info=COMMITTEE_INFO)``, every
  participant ``u`` gets the score ``HMAC-SHA256(K, u)``, the ``m`` smallest scores are
  the committee. The label keeps this use of the seed apart from the graph's
  (:data:`crypto.graph.GRAPH_DOMAIN`). Every party derives the committee itself; nothing
  the server sends chooses it.
* Sizes: ``(m, q)`` is a pure function (:func:`committee_for_round`) of ``n``, the
  degree ``k``, the threshold ``t`` and the quorum ``Q``, all in the round parameters each
  client checks against its policy and hashes into the transcript that its consistency
  signature binds. The server cannot pick a smaller committee without changing those
  parameters (refused by policy, or a different transcript whose signatures do not count).
* Check (:class:`crypto.client.SecAggClient`): the client still refuses a survivor list
  shorter than ``Q`` (``on_survivor_list``) and signatures from outside the list; then it
  verifies committee signatures in id order until ``q`` verify, and refuses the round
  (:class:`~crypto.errors.InconsistentSurvivorsError`) on a bad one or with fewer than
  ``q``. The server forwards only committee signatures (less bandwidth).

Security argument
-----------------
*One list per transcript.* The server breaks "never both shares of one client" only by
showing two different survivor lists, in one transcript, that each gather ``q`` valid
committee signatures. An honest member signs one list per transcript (its state machine
signs once; its ledger accepts one transcript per round id; the signature binds the
transcript hash), so two such lists share no honest signer and need at least ``2q - m``
corrupt members. The committee is a uniform ``m``-subset of the n participants, drawn
from a seed neither the server nor the colluders can bias (:mod:`crypto.coins`; corrupt
clients are fixed before the seed), so with ``C`` corrupt participants the number of
corrupt members is ``Hypergeometric(n, C, m)`` and::

    P[equivocation] ≤ P[Hypergeometric(n, C, m) ≥ 2q - m] ≤ 2^-sigma      (security)

Each abort-and-restart of a round is one more independent draw, counted by the clients'
reveal budget exactly as for the graph (:mod:`crypto.coins`). With ``m = n`` the bound
is deterministic and the rule is today's ``2(Q - C) > n - C``; the committee trades that
certainty for ``2^-sigma``, the statistical security the graph already has.

*The minimum sum.* With one list ``L``, the privacy bound of the graph
(:func:`crypto.params.log2_partition_bound`) assumes the server "drops" at most
``n - Q`` clients. That now rests on the list length check: every honest client refuses
a list shorter than ``Q``. A client listed as a survivor that never sent a masked input
does not help the server: honest neighbours reveal only its self-mask share, never its
mask key, so its pairwise masks stay in the sum (garbage, not a leak). So the dropped
set is still at most ``n - Q`` and the graph's bound holds unchanged; the committee
check adds ``2^-sigma`` for the second list.

*Which C.* Today's quorum tolerates exactly ``C = 2Q - n - 1`` colluders (the largest C
with ``2(Q - C) > n - C``), and every client refuses a quorum below its policy's
(:func:`crypto.config.check_round_parameters`), so ``C`` is at least the policy's
colluders and at least the finder's ``floor(gamma·n)`` (which set Q). Sizing for this C
keeps the guarantee of today's quorum, up to ``2^-sigma``.

Correctness
-----------
The round needs ``q`` honest committee members alive to sign (corrupt members may
refuse). With each client dropping independently with probability δ::

    P[fewer than q live honest members]
        = Σ_x P[Hyp(n, C, m) = x] · P[Binomial(m - x, 1 - δ) < q] ≤ 2^-η

δ is the largest dropout rate (a multiple of 1/4096) that the round's graph itself
tolerates at the same target (n·P[Binomial(n-1, p(1-δ)) < t] ≤ 2^-η,
:func:`crypto.params.log2_correctness_failure`): the parameter finder chose t as large as
its configured δ allows, so this δ is the configured one or more (less at most 1/4096),
and beyond it the graph's own failure bound is already above the target. Dropout is the
only input the server could inflate (by choosing k and t), and it moves only
correctness: the security bound is checked for every sizing whatever δ is.
sigma = 40 and η = 20 are the finder's defaults (:func:`crypto.params.find_parameters`).

Sizing: the smallest ``m`` (below ``Q``) for which the smallest ``q`` meeting the
security bound also meets the correctness bound; ``None`` (the full quorum) if none.

Determinism
-----------
Every party must derive the same ``(m, q)``: two clients using nested committees of
different sizes (the ``m`` smallest scores) could be shown lists that each pass their own
check with fewer corrupt members than the bound assumes. So no decision rests on a float
near its boundary: the log-space tails decide only when more than 1e-6 bits from the
target; closer, exact integer arithmetic decides (``math.comb``, ``Fraction``), and δ
lies on a fixed grid. Like the graph (:mod:`crypto.graph`, integer arithmetic only), the
result is the same on every platform.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from sealagg.crypto._primitives.kdf import derive_key
from sealagg.crypto.params import (
    _correctness_tails,
    _log2_hypergeom_upper_tails,
    _log2_live_lower_tails,
    _log_comb,
    _log_factorials,
)

__all__ = [
    "COMMITTEE_FAILURE_BITS",
    "COMMITTEE_INFO",
    "COMMITTEE_SECURITY_BITS",
    "CommitteeSizing",
    "committee_for_round",
    "draw_committee",
    "implied_colluders",
    "implied_dropout",
    "log2_committee_failure",
    "log2_equivocation",
    "size_committee",
]

#: Statistical security sigma of the committee (the graph finder's default target).
COMMITTEE_SECURITY_BITS = 40
#: Round-failure target η of the committee (the graph finder's default target).
COMMITTEE_FAILURE_BITS = 20
#: HKDF label of the committee's keyed permutation (apart from the graph's use of the seed).
COMMITTEE_INFO = b"sealagg/committee/v1"
#: Largest committee searched (beyond it the full quorum is cheap relative to the round).
_MAX_COMMITTEE = 4096
#: The implied dropout rate is a multiple of 1/_DROPOUT_GRID (exact in binary).
_DROPOUT_GRID = 4096
#: Bits of slack within which a float tail is too close to its target to call: then the
#: exact integer computation decides. Every party must derive the same committee on any
#: platform (libm's log/exp may differ in the last bit), so no decision rests on a float
#: that close to its boundary; the float error of the log-space tails is below 1e-9 bits.
_MARGIN_BITS = 1e-6


def _at_most(value: float, target: float, exact: Callable[[], bool]) -> bool:
    """``value <= target`` for a float log2 tail, decided exactly when too close to call."""
    if value < target - _MARGIN_BITS:
        return True
    if value > target + _MARGIN_BITS:
        return False
    return exact()


def _exact_equivocation_ok(n: int, c: int, m: int, q: int, bits: int) -> bool:
    """``P[Hypergeometric(n, c, m) >= 2q - m] <= 2^-bits`` in integers."""
    need = max(0, 2 * q - m)
    hits = sum(math.comb(c, x) * math.comb(n - c, m - x) for x in range(need, min(m, c) + 1))
    return hits << bits <= math.comb(n, m)


def _exact_failure_ok(n: int, c: int, m: int, q: int, dropout: float, bits: int) -> bool:
    """``P[fewer than q live honest members] <= 2^-bits`` in integers (dropout = j / J)."""
    frac = Fraction(dropout)
    j, big = frac.numerator, frac.denominator
    total = 0
    for x in range(0, min(m, c) + 1):
        weight = math.comb(c, x) * math.comb(n - c, m - x)
        if weight == 0:
            continue
        h = m - x
        below = sum(math.comb(h, a) * (big - j) ** a * j ** (h - a) for a in range(min(q, h + 1)))
        total += weight * below * big ** (m - h)
    return total << bits <= math.comb(n, m) * big**m


def _exact_graph_ok(n: int, k: int, t: int, dropout: Fraction, bits: int) -> bool:
    """``n · P[Binomial(n-1, p(1-δ)) < t] <= 2^-bits`` in integers (p = k/(n-1))."""
    whole = (n - 1) * dropout.denominator
    live = k * (dropout.denominator - dropout.numerator)
    total = sum(math.comb(n - 1, a) * live**a * (whole - live) ** (n - 1 - a) for a in range(t))
    return (n * total) << bits <= whole ** (n - 1)


@dataclass(frozen=True)
class CommitteeSizing:
    """A committee of ``size`` members of which ``quorum`` must sign, with its bounds."""

    size: int
    quorum: int
    num_clients: int
    colluders: int
    dropout_rate: float
    log2_equivocation: float
    log2_failure: float


def log2_equivocation(num_clients: int, colluders: int, size: int, quorum: int) -> float:
    """``log2 P[Hypergeometric(n, C, m) ≥ 2q - m]``: two lists each with q signatures."""
    need = 2 * quorum - size
    if need <= 0:
        return 0.0
    if need > min(size, colluders):
        return -math.inf
    lf = _log_factorials(num_clients)
    return float(_log2_hypergeom_upper_tails(num_clients, colluders, size, lf)[need])


def log2_committee_failure(
    num_clients: int, colluders: int, size: int, quorum: int, dropout: float
) -> float:
    """``log2 P[fewer than q committee members are honest and alive]``."""
    return _log2_failure(
        num_clients, colluders, size, quorum, dropout, _log_factorials(num_clients)
    )


def _log2_failure(n: int, c: int, m: int, quorum: int, dropout: float, lf: np.ndarray) -> float:
    xs = np.arange(0, min(m, c) + 1)
    log_hyp = (
        _log_comb(c, xs, lf) + _log_comb(n - c, m - xs, lf) - float(_log_comb(n, np.array(m), lf))
    )
    terms = []
    for x, lh in zip(xs.tolist(), log_hyp.tolist(), strict=True):
        if lh == -math.inf:
            continue
        honest = m - x
        if quorum > honest:
            tail = 0.0  # certain failure: fewer honest members than q
        else:
            tail = float(_log2_live_lower_tails(honest, dropout, lf)[quorum]) * math.log(2.0)
        terms.append(lh + tail)
    if not terms:
        return -math.inf
    return min(0.0, float(np.logaddexp.reduce(np.array(terms))) / math.log(2.0))


def size_committee(
    num_clients: int,
    colluders: int,
    dropout: float,
    *,
    below: int | None = None,
    security_bits: int = COMMITTEE_SECURITY_BITS,
    failure_bits: int = COMMITTEE_FAILURE_BITS,
) -> CommitteeSizing | None:
    """The smallest committee meeting both bounds, or ``None`` (keep the full quorum).

    ``below``: only committees smaller than this (the round's quorum Q) are worth it.
    """
    n, c = num_clients, colluders
    if not (n >= 3 and 0 <= c < n and 0.0 <= dropout < 1.0):
        raise ValueError(f"need n >= 3, 0 <= colluders < n, 0 <= dropout < 1 (n={n}, c={c})")
    limit = min(n, _MAX_COMMITTEE, n if below is None else below - 1)
    # With f = c/n, security needs q > (1+f)m/2 on average, correctness q below the mean live honest
    # count (1-f)(1-δ)m: if those cross no m works (a shortcut; falling back is always safe;
    # in exact fractions, so every platform takes it alike).
    if 2 * (n - c) * (1 - Fraction(dropout)) <= n + c:
        return None
    lf = _log_factorials(n)
    target_sec, target_fail = -float(security_bits), -float(failure_bits)

    def secure(m: int, q: int, upper: np.ndarray) -> bool:
        if 2 * q - m > c:
            return True  # more corrupt members needed than exist
        exact = functools.partial(_exact_equivocation_ok, n, c, m, q, security_bits)
        return _at_most(float(upper[2 * q - m]), target_sec, exact)

    for m in range(1, limit + 1):
        upper = _log2_hypergeom_upper_tails(n, c, m, lf)  # upper[j] = log2 P[X >= j]
        q = next((q for q in range(m // 2 + 1, m + 1) if secure(m, q, upper)), None)
        if q is None:
            continue
        fail = _log2_failure(n, c, m, q, dropout, lf)
        exact = functools.partial(_exact_failure_ok, n, c, m, q, dropout, failure_bits)
        if _at_most(fail, target_fail, exact):
            return CommitteeSizing(
                size=m,
                quorum=q,
                num_clients=n,
                colluders=c,
                dropout_rate=dropout,
                log2_equivocation=log2_equivocation(n, c, m, q),
                log2_failure=fail,
            )
    return None


def implied_colluders(num_clients: int, quorum: int) -> int:
    """The most colluders the full quorum ``Q`` resists: the largest C with 2(Q-C) > n-C."""
    return max(0, min(num_clients - 1, 2 * quorum - num_clients - 1))


@functools.lru_cache(maxsize=64)
def implied_dropout(
    num_clients: int, degree: int, threshold: int, failure_bits: int = COMMITTEE_FAILURE_BITS
) -> float | None:
    """The largest dropout rate, a multiple of 1/4096, at which the round's graph still
    meets the failure target (``n · P[Binomial(n-1, p(1-δ)) < t] ≤ 2^-η``); ``None`` when
    the graph misses it even without dropouts (hand-picked k and t the finder would not
    choose: no dropout rate is implied, so no committee may be sized for one).

    On a grid and decided exactly near the boundary, so every platform finds the same."""
    n, k, t = num_clients, degree, threshold
    target = -float(failure_bits) - math.log2(n)

    def ok(step: int) -> bool:
        delta = Fraction(step, _DROPOUT_GRID)
        value = float(_correctness_tails(n, k, float(delta))[t])
        return _at_most(
            value, target, functools.partial(_exact_graph_ok, n, k, t, delta, failure_bits)
        )

    if not ok(0):
        return None
    lo, hi = 0, _DROPOUT_GRID  # ok(lo); a dropout rate of 1 never is
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo / _DROPOUT_GRID


@functools.lru_cache(maxsize=64)
def committee_for_round(
    num_clients: int, degree: int, threshold: int, quorum: int
) -> CommitteeSizing | None:
    """The committee sizing of a sparse round with these public parameters, or ``None``.

    A pure function of what the transcript binds (n, k, t, Q), so server and clients agree
    without a message; see the module docstring for why these inputs are the right ones.
    """
    if degree >= num_clients - 1:
        return None  # complete graph (SecAgg): the full quorum, unchanged
    colluders = implied_colluders(num_clients, quorum)
    dropout = implied_dropout(num_clients, degree, threshold)
    if dropout is None:
        # The graph itself misses the correctness target: a committee sized for no dropouts
        # would abort the round on any dropped member (seen: n=10, k=8, t=2, three
        # dropouts, 2 of 4 members left). The full quorum is always safe.
        return None
    return size_committee(num_clients, colluders, dropout, below=quorum)


def draw_committee(
    seed: bytes, round_id: bytes, participants: Iterable[int], size: int
) -> frozenset[int]:
    """The ``size`` participants with the smallest ``HMAC-SHA256(K, id)``, K from the seed.

    A keyed pseudorandom permutation of the participants: with a uniform seed every
    ``size``-subset is equally likely (HMAC as a PRF), which the hypergeometric bound needs.
    """
    ids = sorted(participants)
    if not 1 <= size <= len(ids):
        raise ValueError(f"committee size {size} must lie in 1..{len(ids)}")
    key = derive_key(bytes(seed), salt=bytes(round_id), info=COMMITTEE_INFO)
    # HKDF is cryptography's (crypto._primitives.kdf); HMAC-SHA256 is the standard library's.
    scores = sorted((hmac.new(key, struct.pack(">I", u), hashlib.sha256).digest(), u) for u in ids)
    return frozenset(u for _, u in scores[:size])
