"""Staleness weights for asynchronous buffered aggregation (FedBuff / FedAsync, issue 21).

An update computed on model version ``b`` and accepted while version ``v`` is current has
staleness ``tau = v - b``. Its weight is multiplied by ``s(tau)`` in ``(0, 1]``:

- ``constant``: ``s = 1`` (FedBuff's plain buffer);
- ``polynomial``: ``s = (1 + tau) ** -a`` (FedAsync's polynomial, Xie et al. 2019);
- ``exponential``: ``s = alpha ** tau`` (Flower's FedAsync weighting);
- ``hinge``: ``s = 1`` up to ``b`` versions late, then ``1 / (a * (tau - b) + 1)``.

Why the rule lives here, once: the appliance applies ``s`` in plaintext and attested modes,
while in masked modes each client folds it into the weight coordinate of its own masked vector
(crypto/encoding.py) from the base version it signed; both sides must compute the same number
from the same integers, so the function is pure, total on ``0..max_staleness`` and refuses
anything outside it. ``s(0) = 1`` for every kind and ``s`` never increases with ``tau``, so a
late client can never outweigh a fresh one by claiming an older base.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

__all__ = ["StaleUpdateError", "StalenessPolicy", "staleness"]

Kind = Literal["constant", "polynomial", "exponential", "hinge"]
KINDS: tuple[Kind, ...] = ("constant", "polynomial", "exponential", "hinge")


class StaleUpdateError(ValueError):
    """An update older than the run's maximum staleness, or from a version not yet published."""


def staleness(current_version: int, base_version: int) -> int:
    """``current - base``; a base newer than the current version cannot exist."""
    if base_version < 0 or current_version < 0:
        raise StaleUpdateError("model versions are non-negative")
    if base_version > current_version:
        raise StaleUpdateError(
            f"base version {base_version} is newer than the current version {current_version}"
        )
    return current_version - base_version


@dataclasses.dataclass(frozen=True)
class StalenessPolicy:
    """How much an update computed ``tau`` versions ago counts, and how old it may be."""

    kind: Kind = "polynomial"
    max_staleness: int = 10
    #: polynomial exponent; hinge slope
    a: float = 0.5
    #: exponential base, in (0, 1]
    alpha: float = 0.6
    #: hinge: versions of lateness that cost nothing
    b: int = 2

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"staleness kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not isinstance(self.max_staleness, int) or self.max_staleness < 0:
            raise ValueError(f"max_staleness must be an integer >= 0, got {self.max_staleness!r}")
        if not (math.isfinite(self.a) and self.a >= 0):
            raise ValueError(f"a must be finite and >= 0, got {self.a!r}")
        if not (math.isfinite(self.alpha) and 0 < self.alpha <= 1):
            raise ValueError(f"alpha must lie in (0, 1], got {self.alpha!r}")
        if not isinstance(self.b, int) or self.b < 0:
            raise ValueError(f"b must be an integer >= 0, got {self.b!r}")

    def check(self, tau: int) -> None:
        """Refuse an update past the maximum staleness (with the reason the client is told)."""
        if tau < 0:
            raise StaleUpdateError(f"staleness {tau} is negative")
        if tau > self.max_staleness:
            raise StaleUpdateError(
                f"the update is {tau} versions old; this run accepts at most "
                f"{self.max_staleness} (download the current model and train again)"
            )

    def weight(self, tau: int) -> float:
        """``s(tau)`` in (0, 1]; refuses ``tau`` outside ``0..max_staleness``."""
        self.check(tau)
        if self.kind == "constant":
            return 1.0
        if self.kind == "polynomial":
            return float((1.0 + tau) ** -self.a)
        if self.kind == "exponential":
            return float(self.alpha**tau)
        if tau <= self.b:
            return 1.0
        return 1.0 / (self.a * (tau - self.b) + 1.0)
