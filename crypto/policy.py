"""The federation's policy, and the one check of a round against it.

Clients run :func:`check_round_against_policy` on every round start, before anything
of theirs leaves; the appliance runs the same function on its configuration at start
and on every round it builds, so a round the clients would refuse is refused first by
the appliance, with the same reason. The inequalities themselves live in
:func:`crypto.rules.require_malicious_server_conditions` (deterministic ones) and
:func:`crypto.params.log2_partition_bound` (the sparse graph's probabilistic one).

:func:`check_privacy_against_policy` is the differential-privacy counterpart: the round's
DP parameters come from the appliance (``RoundStart.privacy``), so a malicious appliance
could shrink every client's noise share; the authority's signed floor on the noise
multiplier (and the DP modes it requires) is checked by every client, and by the
appliance on its own configuration and on every round it plans.
"""

from __future__ import annotations

import dataclasses
import math

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
    "MAX_ROUNDING_INFLATION",
    "MODES",
    "PRIVACY_MODES",
    "FederationPolicy",
    "PrivacyFloorError",
    "RoundNoise",
    "check_privacy_against_policy",
    "check_round_against_policy",
]

#: Every aggregation mode; the masked ones hide individual updates from the appliance.
MODES = frozenset({"plaintext", "secagg", "secagg+", "ckks", "attested"})
MASKED_MODES = frozenset({"secagg", "secagg+"})
#: Modes allowed when a policy names none: the appliance never sees an update in clear.
DEFAULT_ALLOWED_MODES = frozenset({"secagg", "secagg+"})
#: The round DP modes (``[privacy] mode``); "none" is the absence of DP.
PRIVACY_MODES = frozenset({"client", "distributed"})
#: A discrete mechanism rounds the update to a grid whose step the appliance picks (through
#: ``range_bits`` and the round size); the rounded sum's L2 sensitivity (the conditional
#: rounding bound) may exceed C by at most this factor, so a coarse grid cannot stand in for
#: missing noise. At range_bits = 20 the factor is of order 1 + 5e-6·n/√d (n clients, d
#: coordinates; ~1e-5 more from the noise): honest rounds stay far below it unless n
#: exceeds ~150·√d (then raise range_bits).
MAX_ROUNDING_INFLATION = 1.0 + 2.0**-10
#: Float rounding of z·C/√m·√m/C (and of the adaptive split z_D⁻² + sigma_e⁻² = z⁻²): a round
#: sized exactly at the floor must not be refused for the last bit of a float.
_FLOAT_SLACK = 1e-9


class PrivacyFloorError(PolicyRefusedError):
    """A round's differential privacy is weaker than the federation's signed floor, or
    missing where the policy requires it."""


@dataclasses.dataclass(frozen=True)
class FederationPolicy:
    """What every client of a federation enforces, whatever the appliance says.

    ``colluders`` (c): data owners that may work with the appliance. ``minimum_sum`` (m):
    the fewest clients any revealed sum may cover; at least ``c + 2``, so at least two
    honest inputs remain in every sum after the colluders subtract theirs (and at least
    three: a sum over two parties reveals each to the other). ``allowed_modes``: modes
    a client takes part in; ``plaintext`` (the appliance sees every update) only if
    listed. ``security_bits``: the sparse graph's privacy target (2^-bits).

    ``min_noise_multiplier`` (z_min, 0 = no floor): the least noise multiplier any round's
    DP may have, noise std over the sum's L2 sensitivity, whatever clip C the appliance
    picks (z is the privacy parameter; C scales the noise and the sensitivity alike). A
    floor above 0 makes DP required: a floor that a round without DP escaped would stop
    nothing. ``required_privacy``: the DP modes (``client``, ``distributed``) a round must
    use; non-empty also makes DP required. Both default to "no requirement", so rosters
    signed before they existed keep their meaning.
    """

    colluders: int = DEFAULT_COLLUDERS
    minimum_sum: int = MIN_MASKED_PARTIES
    allowed_modes: frozenset[str] = DEFAULT_ALLOWED_MODES
    security_bits: int = 40
    min_noise_multiplier: float = 0.0
    required_privacy: frozenset[str] = frozenset()

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
        floor = self.min_noise_multiplier
        if isinstance(floor, bool) or not isinstance(floor, int | float):
            raise TypeError(f"policy min_noise_multiplier must be a number (got {floor!r})")
        if not (math.isfinite(floor) and floor >= 0.0):
            raise ValueError(f"policy min_noise_multiplier must be finite and >= 0 (got {floor})")
        object.__setattr__(self, "min_noise_multiplier", float(floor))
        required = self.required_privacy
        if isinstance(required, str) or not frozenset(required) <= PRIVACY_MODES:
            raise ValueError(
                f"policy required_privacy must be a subset of {sorted(PRIVACY_MODES)} "
                f"(got {required!r})"
            )
        object.__setattr__(self, "required_privacy", frozenset(required))

    @property
    def requires_privacy(self) -> bool:
        """Whether every round must carry DP (a floor, or required DP modes)."""
        return self.min_noise_multiplier > 0.0 or bool(self.required_privacy)


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


@dataclasses.dataclass(frozen=True)
class RoundNoise:
    """A round's DP as the appliance states it (``RoundStart.privacy``): what bounds the noise.

    ``noise_std`` is each client's share sigma_c, sized so that a sum over ``min_survivors``
    (m) carries sqrt(m)·sigma_c; ``indicator_std`` each client's noise on its ±1 clip bit (0:
    no bit is released, or, in plaintext, the appliance noises the count itself).
    ``sensitivity``: the rounded sum's L2 sensitivity of a discrete mechanism once the
    dimension is known (:attr:`crypto.dp.DistributedDPSpec.sensitivity`); None: C.
    That no sum over fewer than m clients is revealed is checked where m is known (the
    client against the round's minimum survivors, the appliance before publishing).
    """

    mode: str
    mechanism: str = ""
    clip: float = 0.0
    noise_std: float = 0.0
    indicator_std: float = 0.0
    min_survivors: int = 0
    sensitivity: float | None = None

    def noise_multiplier(self, sensitivity: float | None = None) -> float:
        """z of the sum over m clients: the update's sqrt(m)·sigma_c / sensitivity combined,
        as the accountant combines them (z⁻² = Σ zᵢ⁻², Andrew et al. 2021), with the clip
        bit's sqrt(m)·sigma_e (sensitivity 1) when the clients noise it; 0.0 if malformed."""
        sens = self.clip if sensitivity is None else sensitivity
        values = (self.clip, self.noise_std, self.indicator_std, sens)
        if not all(math.isfinite(v) for v in values) or self.min_survivors < 1:
            return 0.0
        if sens <= 0.0 or self.noise_std <= 0.0 or self.indicator_std < 0.0:
            return 0.0
        root = math.sqrt(self.min_survivors)
        inverse = (root * self.noise_std / sens) ** -2
        if self.indicator_std > 0.0:
            inverse += (root * self.indicator_std) ** -2
        return inverse**-0.5


def check_privacy_against_policy(policy: FederationPolicy, noise: RoundNoise | None) -> None:
    """Refuse a round whose DP is weaker than ``policy`` allows (``noise`` None: no DP).

    Why the floor is on z and not on sigma: the appliance picks the clip C (adaptive
    clipping moves it) and C scales the noise and the sensitivity alike, so only the ratio
    bounds what one client's update can shift the released sum by, in units of its noise.
    The ratio is computed from the very numbers each client adds (sigma_c, sigma_e, m, C),
    never from a z the appliance merely states. A discrete mechanism's rounding raises the
    sensitivity above C by a factor the appliance steers (its grid); once the dimension is
    known (``noise.sensitivity``) that factor must stay within
    :data:`MAX_ROUNDING_INFLATION`, so the effective z is at least z_min / that factor.
    Raises :class:`PrivacyFloorError` with the reason.
    """
    if noise is None or noise.mode in ("", "none"):
        if policy.requires_privacy:
            raise PrivacyFloorError(
                "the federation's policy requires differential privacy "
                f"({_requirement(policy)}) and the round has none"
            )
        return
    if policy.required_privacy and noise.mode not in policy.required_privacy:
        raise PrivacyFloorError(
            f"the round's DP mode {noise.mode!r} is not one the federation's policy requires "
            f"({', '.join(sorted(policy.required_privacy))})"
        )
    floor = policy.min_noise_multiplier
    if floor <= 0.0:
        return
    z = noise.noise_multiplier()
    if z < floor * (1.0 - _FLOAT_SLACK):
        raise PrivacyFloorError(
            f"the round's noise multiplier {z:.6g} (each of m={noise.min_survivors} clients "
            f"adds {noise.noise_std:.6g} at clip {noise.clip:.6g}) is below the federation's "
            f"signed floor {floor:g}"
        )
    if noise.sensitivity is None or noise.mechanism == "gaussian":
        return
    inflation = noise.sensitivity / noise.clip
    if not inflation <= MAX_ROUNDING_INFLATION:
        raise PrivacyFloorError(
            f"the round's {noise.mechanism} grid rounds the update to a sensitivity "
            f"{inflation:.6g} times the clip (at most {MAX_ROUNDING_INFLATION:.6g}): its "
            f"effective noise multiplier {noise.noise_multiplier(noise.sensitivity):.6g} "
            f"falls short of the federation's signed floor {floor:g}"
        )


def _requirement(policy: FederationPolicy) -> str:
    parts = []
    if policy.required_privacy:
        parts.append("mode " + " or ".join(sorted(policy.required_privacy)))
    if policy.min_noise_multiplier > 0.0:
        parts.append(f"noise multiplier >= {policy.min_noise_multiplier:g}")
    return ", ".join(parts)
