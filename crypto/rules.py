"""Protocol rules that every party checks the same way, stated once.

The appliance's configuration check, the round it builds, the graph
constructors, the parameter finder and the client that refuses a weak round
all ask this module, so the rule and its explanation cannot drift apart.
"""

from __future__ import annotations

from sealagg.crypto.errors import PolicyRefusedError, TooFewPartiesError

__all__ = [
    "DEFAULT_COLLUDERS",
    "MIN_MASKED_PARTIES",
    "TWO_PARTY_EXPLANATION",
    "minimum_quorum",
    "require_malicious_server_conditions",
    "require_masking_parties",
]

#: The fewest parties whose sum may be revealed. With two, the sum minus one's own
#: input *is* the other party's input, so masking (or a CKKS sum, or a bucket) hides nothing.
MIN_MASKED_PARTIES = 3

#: Colluding data owners assumed when a federation's policy names none: one data owner
#: working with the appliance is the smallest collusion worth defending against, and the
#: largest that today's three-client federations can survive (n=3: t=2, quorum 3).
DEFAULT_COLLUDERS = 1

TWO_PARTY_EXPLANATION = (
    "secure aggregation needs at least 3 participants: with two parties pairwise "
    "masking hides nothing, because each party can subtract its own input from the sum "
    "and read the other's; use an attested aggregator and/or differential privacy instead"
)


def require_masking_parties(parties: int, what: str = "secure aggregation") -> None:
    """Refuse a revealed sum over fewer than :data:`MIN_MASKED_PARTIES` parties.

    Raises :class:`~sealagg.crypto.errors.TooFewPartiesError` (a ``ValueError`` and an
    ``InfeasibleParametersError``) whose text names ``what`` and the one explanation.
    """
    if parties < MIN_MASKED_PARTIES:
        raise TooFewPartiesError(f"{what} with {parties} parties refused: {TWO_PARTY_EXPLANATION}")


def minimum_quorum(participants: int, threshold: int, colluders: int, minimum_sum: int) -> int:
    """The smallest signature quorum meeting :func:`require_malicious_server_conditions`."""
    return max(threshold, (participants + colluders) // 2 + 1, minimum_sum)


def require_malicious_server_conditions(
    *,
    participants: int,
    complete: bool,
    threshold: int,
    quorum: int,
    colluders: int,
    minimum_sum: int,
) -> None:
    """Refuse (t, quorum) that a malicious server colluding with ``c`` clients could break.

    n participants, Shamir threshold t, quorum Q (``minimum_survivors``: the fewest
    survivors a list may name *and* the fewest consistency signatures a client needs
    before it answers an unmask request), at most c clients colluding with the server,
    m the fewest clients any revealed sum may cover. Required, each with its reason:

    1. ``t > c`` on the complete graph (Bonawitz et al., CCS 2017, Thm. 6.3: the
       adversary's own shares must not reconstruct an honest client's mask key or
       self-mask seed). On a sparse graph only a client's *neighbours* hold its
       shares; there the condition is per neighbourhood and probabilistic over the
       graph seed: the bound :func:`crypto.params.log2_partition_bound` (its
       ``s = 1`` term is ``P[some client has >= t corrupt neighbours]``) must meet
       the policy's security target, which :mod:`crypto.policy` checks.
    2. ``2(Q - c) > n - c``, i.e. ``Q >= floor((n + c) / 2) + 1`` (no equivocation).
       An honest client signs one survivor list per round and answers only a request
       for the list it signed, carrying Q valid signatures on it. A list with Q
       signatures has at least ``Q - c`` honest signers; two different lists would
       need two *disjoint* honest signer sets inside the ``n - c`` honest clients,
       impossible iff ``2(Q - c) > n - c``. So every honest answer in a round refers
       to one list L: for each peer an honest client reveals either its self-mask
       share (peer in L) or its mask-key share (peer not in L), never both, and the
       colluders' fewer than t shares (condition 1) cannot supply the other secret.
       Bonawitz et al.'s consistency round asks for t signatures with t > 2n/3 and
       c < n/3, which implies this; we state the exact intersection bound instead.
    3. ``Q >= m`` and ``m >= c + 2`` (checked when the policy is made): the one
       revealed sum is over L, ``|L| >= Q >= m`` clients, at least ``Q - c >= 2``
       of them honest (a "sum" over one honest client is that client's input once
       the colluders subtract theirs). On a sparse graph the server learns one sum
       per component of the honest survivors, so the partition bound of (1) also
       covers that no component smaller than half of the honest clients can be cut
       off by the dropouts the quorum allows (Bell et al., CCS 2020, Sec. 3-4).
    4. ``t <= Q <= n``: unmasking needs t shares of every secret, and a quorum larger
       than the round could never be met (the round would only ever abort).

    Hence at most one sum per round is revealed, over at least ``max(Q, m)`` clients
    of which at most c are the server's. Raises
    :class:`~sealagg.crypto.errors.PolicyRefusedError` naming the inequality that fails.
    """
    n, t, q, c, m = participants, threshold, quorum, colluders, minimum_sum
    require_masking_parties(n, "a masked round")
    if complete and t <= c:
        raise PolicyRefusedError(
            f"threshold t={t} must exceed the c={c} colluders the policy assumes: "
            f"{c} colluders would hold t shares of every honest client's secrets"
        )
    if 2 * (q - c) <= n - c:
        raise PolicyRefusedError(
            f"quorum {q} of n={n} with c={c} colluders allows equivocation: two survivor "
            f"lists could each gather {q} signatures; need quorum >= {(n + c) // 2 + 1} "
            f"(2(quorum - c) > n - c)"
        )
    if q < m:
        raise PolicyRefusedError(
            f"quorum {q} would let the appliance reveal a sum over fewer than m={m} clients"
        )
    if not t <= q <= n:
        raise PolicyRefusedError(f"need threshold {t} <= quorum {q} <= participants {n}")
