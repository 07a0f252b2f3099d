"""The federation's policy, and the one check of a round against it.

Clients run :func:`check_round_against_policy` on every round start, before anything
of theirs leaves; the appliance runs the same function on its configuration at start
and on every round it builds, so a round the clients would refuse is refused first by
the appliance, with the same reason. The inequalities themselves live in
:func:`crypto.rules.require_malicious_server_conditions` (deterministic ones) and
:func:`crypto.params.log2_partition_bound` (the sparse graph's probabilistic one).
"""

from __future__ import annotations

import dataclasses

from sealagg.crypto.errors import ModeNotAllowedError, PolicyRefusedError
from sealagg.crypto.params import log2_partition_bound
from sealagg.crypto.rules import (
    DEFAULT_COLLUDERS,
    MIN_MASKED_PARTIES,
    require_malicious_server_conditions,
)

__all__ = [
    "DEFAULT_COLLUDERS",
    "MASKED_MODES",
    "MODES",
    "FederationPolicy",
    "check_round_against_policy",
]

#: Every aggregation mode; the masked ones hide individual updates from the appliance.
MODES = frozenset({"plaintext", "secagg", "secagg+", "ckks", "attested"})
MASKED_MODES = frozenset({"secagg", "secagg+"})
#: Modes allowed when a policy names none: the appliance never sees an update in clear.
DEFAULT_ALLOWED_MODES = frozenset({"secagg", "secagg+"})


@dataclasses.dataclass(frozen=True)
class FederationPolicy:
    """What every client of a federation enforces, whatever the appliance says.

    ``colluders`` (c): data owners that may work with the appliance. ``minimum_sum`` (m):
    the fewest clients any revealed sum may cover; at least ``c + 2``, so at least two
    honest inputs remain in every sum after the colluders subtract theirs (and at least
    three: a sum over two parties reveals each to the other). ``allowed_modes``: modes
    a client takes part in; ``plaintext`` (the appliance sees every update) only if
    listed. ``security_bits``: the sparse graph's privacy target (2^-bits).
    """

    colluders: int = DEFAULT_COLLUDERS
    minimum_sum: int = MIN_MASKED_PARTIES
    allowed_modes: frozenset[str] = DEFAULT_ALLOWED_MODES
    security_bits: int = 40

    def __post_init__(self) -> None:
        for name in ("colluders", "minimum_sum", "security_bits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"policy {name} must be an int (got {value!r})")
        if self.colluders < 0:
            raise ValueError(f"policy colluders must be >= 0 (got {self.colluders})")
        floor = max(MIN_MASKED_PARTIES, self.colluders + 2)
        if self.minimum_sum < floor:
            raise ValueError(
                f"policy minimum_sum {self.minimum_sum} is below {floor}: with "
                f"{self.colluders} colluders a sum over fewer clients reveals an honest input"
            )
        if not 20 <= self.security_bits <= 128:
            raise ValueError("policy security_bits must lie in 20..128")
        modes = frozenset(self.allowed_modes)
        if not modes or not modes <= MODES:
            raise ValueError(f"policy allowed_modes must be a non-empty subset of {sorted(MODES)}")
        object.__setattr__(self, "allowed_modes", modes)


def check_round_against_policy(
    policy: FederationPolicy,
    mode: str,
    n: int,
    degree: int | None,
    threshold: int,
    quorum: int,
) -> None:
    """Refuse a round whose mode, n, k, t or quorum break ``policy``.

    ``degree`` None (or 0, or >= n-1) means the complete graph. Masked modes must meet
    :func:`crypto.rules.require_malicious_server_conditions` for the policy's c and m,
    and a sparse graph must keep the malicious-dropper bound (which includes threshold
    privacy per neighbourhood) below ``2^-security_bits``. Other modes are checked for
    being allowed only (their own checks live with them: ``crypto.ckks``, attestation).
    Raises :class:`ModeNotAllowedError` or :class:`PolicyRefusedError` with the reason.
    """
    if mode not in policy.allowed_modes:
        raise ModeNotAllowedError(
            f"mode {mode!r} is not allowed by the federation's policy "
            f"(allowed: {', '.join(sorted(policy.allowed_modes))})"
        )
    if mode not in MASKED_MODES:
        return
    complete = not degree or degree >= n - 1
    c, m = policy.colluders, policy.minimum_sum
    require_malicious_server_conditions(
        participants=n,
        complete=complete,
        threshold=threshold,
        quorum=quorum,
        colluders=c,
        minimum_sum=m,
    )
    if complete:
        return
    if degree < 2 or threshold > degree:
        raise PolicyRefusedError(f"threshold {threshold} exceeds the degree {degree}")
    bound = log2_partition_bound(n, min(c, n - 1), degree, threshold, n - quorum, minimum_sum=m)
    if bound > -policy.security_bits:
        raise PolicyRefusedError(
            f"sparse graph k={degree}, t={threshold}, quorum {quorum} for n={n} with c={c} "
            f"colluders: a server dropping {n - quorum} clients of its choice could cut off "
            f"and unmask a small set with probability up to 2^{bound:.1f} "
            f"(policy: 2^-{policy.security_bits})"
        )
