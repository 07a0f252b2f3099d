"""Client-level (ε, δ) accounting over rounds with Google's dp-accounting (no torch here).

Each round is one Poisson-sampled Gaussian mechanism: a client is in the round with
probability q = round size / population, and the published sum carries Gaussian noise of
``z`` times its L2 sensitivity. When a round also releases the noisy clip-indicator count
(adaptive clipping), both Gaussians act on the same sampled clients; their composition is
exactly one Gaussian with z⁻² = Σ zᵢ⁻² (Andrew et al. 2021, Thm 1), which is what is
recorded. The distributed mechanisms are mapped to that Gaussian as their papers do (see
:mod:`crypto.dp`): sensitivity = the conditional-rounding norm bound, sigma = the summed noise.

ε itself always comes from the library: ``RdpAccountant`` (default) or ``PLDAccountant``
over ``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` composed over the rounds.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Literal

import dp_accounting
from dp_accounting import pld, rdp

Accountant = Literal["rdp", "pld"]


class _QuietConvergence(logging.Filter):
    """dp-accounting logs, per evaluation, orders it skips; keep the appliance log readable."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to converge" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietConvergence())
__all__ = [
    "Accountant",
    "RoundPrivacy",
    "combine_noise_multipliers",
    "conservative",
    "epsilon",
    "noise_multiplier_for",
    "round_event",
]


@dataclasses.dataclass(frozen=True)
class RoundPrivacy:
    """One round as the accountant sees it: sampling rate and effective noise multiplier."""

    round: int
    sampling_rate: float
    noise_multiplier: float

    def __post_init__(self) -> None:
        if not 0.0 < self.sampling_rate <= 1.0:
            raise ValueError(f"sampling_rate must lie in (0, 1], got {self.sampling_rate!r}")
        if not (self.noise_multiplier >= 0.0):
            raise ValueError(f"noise_multiplier must be >= 0, got {self.noise_multiplier!r}")


def combine_noise_multipliers(multipliers: Iterable[float]) -> float:
    """The one Gaussian equal to several on the same sample: z = (Σ zᵢ⁻²)^(-1/2)."""
    inverse = 0.0
    for z in multipliers:
        if z <= 0.0:
            return 0.0
        if math.isfinite(z):
            inverse += z**-2
    return math.inf if inverse == 0.0 else inverse**-0.5


def round_event(sampling_rate: float, noise_multiplier: float) -> dp_accounting.DpEvent:
    """The library's event for one round."""
    if noise_multiplier <= 0.0:
        return dp_accounting.NonPrivateDpEvent()
    if math.isinf(noise_multiplier):
        return dp_accounting.NoOpDpEvent()
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_rate >= 1.0:
        return gaussian
    return dp_accounting.PoissonSampledDpEvent(sampling_rate, gaussian)


def _accountant(kind: Accountant) -> dp_accounting.PrivacyAccountant:
    if kind == "rdp":
        return rdp.RdpAccountant()
    if kind == "pld":
        return pld.PLDAccountant()
    raise ValueError(f"accountant must be 'rdp' or 'pld', got {kind!r}")


def epsilon(rounds: Sequence[RoundPrivacy], delta: float, accountant: Accountant = "rdp") -> float:
    """Cumulative ε at ``delta`` over ``rounds`` (0.0 for none; inf if a round had no noise)."""
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}")
    if accountant not in ("rdp", "pld"):
        raise ValueError(f"accountant must be 'rdp' or 'pld', got {accountant!r}")
    if not rounds:
        return 0.0
    if any(r.noise_multiplier <= 0.0 for r in rounds):
        return math.inf
    # Identical rounds are composed as one self-composed event (RDP of a subsampled Gaussian
    # costs ~0.1-0.4 s per distinct event), and whole compositions are cached: the appliance
    # asks again before every round.
    groups = Counter((r.sampling_rate, r.noise_multiplier) for r in rounds)
    return _composed_epsilon(tuple(sorted(groups.items())), delta, accountant)


@functools.lru_cache(maxsize=64)
def _composed_epsilon(
    groups: tuple[tuple[tuple[float, float], int], ...], delta: float, accountant: Accountant
) -> float:
    events = [
        dp_accounting.SelfComposedDpEvent(round_event(q, z), count) for (q, z), count in groups
    ]
    acc = _accountant(accountant)
    event = events[0] if len(events) == 1 else dp_accounting.ComposedDpEvent(events)
    if not acc.supports(event):
        raise ValueError(f"the {accountant} accountant cannot account for {event}")
    acc.compose(event)
    return float(acc.get_epsilon(delta))


def conservative(noise_multiplier: float, digits: int = 4) -> float:
    """``noise_multiplier`` rounded *down* to ``digits`` significant digits.

    Rounds whose survivors differ slightly then share one accountant event (fast), and
    rounding down only ever overstates ε.
    """
    if noise_multiplier <= 0.0 or not math.isfinite(noise_multiplier):
        return noise_multiplier
    scale = 10.0 ** (digits - 1 - math.floor(math.log10(noise_multiplier)))
    return math.floor(noise_multiplier * scale) / scale


def noise_multiplier_for(
    target_epsilon: float,
    delta: float,
    sampling_rate: float,
    rounds: int,
    accountant: Accountant = "rdp",
) -> float:
    """The smallest z reaching ``target_epsilon`` after ``rounds`` rounds (library search)."""
    if target_epsilon <= 0.0 or rounds < 1:
        raise ValueError("target_epsilon must be > 0 and rounds >= 1")

    def make(z: float) -> dp_accounting.DpEvent:
        return dp_accounting.SelfComposedDpEvent(round_event(sampling_rate, z), rounds)

    return float(
        dp_accounting.calibrate_dp_mechanism(
            lambda: _accountant(accountant),
            make,
            target_epsilon,
            delta,
            dp_accounting.LowerEndpointAndGuess(0.05, 1.0),
        )
    )
