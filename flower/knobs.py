"""Flower's SecAgg+ knobs, mapped onto sealagg's parameter finder and federation policy.

Flower's ``SecAggPlusWorkflow`` takes ``num_shares``, ``reconstruction_threshold``,
``max_weight``, ``clipping_range``, ``quantization_range``, ``modulus_range`` and ``timeout``.
:class:`SealaggKnobs` takes the same names with the same meaning, so an app's constructor call
carries over; what Flower accepts but sealagg's rules refuse is refused here, by name, with the
reason (:class:`KnobRefusedError`), before a round starts:

* ``num_shares``: shares of each secret, the client's own included (Flower's count), so the
  graph degree is ``k = num_shares - 1``; ``num_shares >= n`` is the complete graph. A float is
  a fraction of the sampled clients (as in Flower). ``None`` (the default here) lets
  :func:`sealagg.crypto.params.choose_graph` pick k and t for ``dropout_rate``.
* ``reconstruction_threshold``: Shamir's t; a float is a fraction of ``num_shares``. Every
  (k, t) must pass :func:`sealagg.crypto.policy.check_round_against_policy`: t > c on the
  complete graph, the signature quorum that stops a lying server from equivocating, and on a
  sparse graph the malicious-dropper bound below 2^-security_bits. Flower checks none of
  these (it even turns ``reconstruction_threshold=1`` into "all shares").
* ``modulus_range``: sealagg masks in Z_(2^32) only; any other value is refused.
* ``quantization_range``: the fewest quantization levels a client's value gets. sealagg picks
  the scale itself so the sum of n clients never wraps the ring (2^32/n levels each, at least
  Flower's default 2^22 up to n = 1024); a range the ring cannot give n clients without
  wrapping is refused (Flower only warns, then returns a wrapped, wrong model).
* ``clipping_range``: each coordinate is clipped to ``[-clipping_range, clipping_range]``.
* ``max_weight``: a client's weight is ``num_examples / max_weight``, which must lie in
  (0, 1]; a client with more examples refuses to send (Flower silently clamps it, which
  biases the mean).
* ``timeout``: seconds each stage waits for replies. Flower's default is ``None`` (wait
  forever, so one silent client stalls the federation); sealagg's is 60 s and must be finite.

This module imports no Flower code: the refusals can be checked without Flower installed.
"""

from __future__ import annotations

import dataclasses
import math

from sealagg.crypto.config import RING_BITS
from sealagg.crypto.encoding import QuantizationSpec
from sealagg.crypto.errors import InfeasibleParametersError, PolicyRefusedError
from sealagg.crypto.params import choose_graph
from sealagg.crypto.policy import FederationPolicy, check_round_against_policy
from sealagg.crypto.rules import MIN_MASKED_PARTIES, minimum_quorum

__all__ = ["KnobRefusedError", "RoundPlan", "SealaggKnobs"]

MODULUS = 1 << RING_BITS
DEFAULT_TIMEOUT = 60.0


class KnobRefusedError(ValueError):
    """A knob, or a combination of knobs, that sealagg refuses; the message says why."""


@dataclasses.dataclass(frozen=True)
class RoundPlan:
    """One round's public parameters, for ``n`` clients (what every client re-checks)."""

    n: int
    degree: int  # n - 1 for the complete graph
    threshold: int
    minimum_survivors: int
    spec: QuantizationSpec
    max_weight: float
    note: str

    @property
    def mode(self) -> str:
        return "secagg" if self.degree >= self.n - 1 else "secagg+"


@dataclasses.dataclass(frozen=True)
class SealaggKnobs:
    """Flower's SecAgg+ knob names (same meaning), plus sealagg's finder and policy inputs."""

    num_shares: int | float | None = None
    reconstruction_threshold: int | float | None = None
    max_weight: float = 1000.0
    clipping_range: float = 8.0
    quantization_range: int = 1 << 22
    modulus_range: int = MODULUS
    timeout: float | None = DEFAULT_TIMEOUT
    dropout_rate: float = 0.1
    corrupt_fraction: float = 0.0
    policy: FederationPolicy = dataclasses.field(default_factory=FederationPolicy)

    def __post_init__(self) -> None:
        if self.modulus_range != MODULUS:
            raise KnobRefusedError(
                f"modulus_range={self.modulus_range}: sealagg masks in Z_(2^{RING_BITS}) only "
                f"(modulus_range={MODULUS}); a smaller ring would only lose precision"
            )
        if self.timeout is None or not (math.isfinite(self.timeout) and self.timeout > 0):
            raise KnobRefusedError(
                f"timeout={self.timeout!r}: every stage needs a finite deadline, or one silent "
                "client stalls the whole federation"
            )
        if not (math.isfinite(self.clipping_range) and self.clipping_range > 0):
            raise KnobRefusedError(f"clipping_range={self.clipping_range!r} must be positive")
        if not (math.isfinite(self.max_weight) and self.max_weight > 0):
            raise KnobRefusedError(f"max_weight={self.max_weight!r} must be positive")
        if (
            isinstance(self.quantization_range, bool)
            or not isinstance(self.quantization_range, int)
            or self.quantization_range < 2
        ):
            raise KnobRefusedError(
                f"quantization_range={self.quantization_range!r} must be an integer >= 2"
            )
        for name in ("num_shares", "reconstruction_threshold"):
            value = getattr(self, name)
            bad_type = isinstance(value, bool) or not isinstance(value, int | float)
            if value is not None and bad_type:
                raise KnobRefusedError(f"{name}={value!r} must be an int, a float or None")
        if (self.num_shares is None) != (self.reconstruction_threshold is None):
            raise KnobRefusedError(
                "num_shares and reconstruction_threshold go together: give both, or neither "
                "(then sealagg's parameter finder picks them for dropout_rate)"
            )
        if isinstance(self.reconstruction_threshold, int) and self.reconstruction_threshold < 2:
            raise KnobRefusedError(
                f"reconstruction_threshold={self.reconstruction_threshold}: a threshold below 2 "
                "is no secret sharing (one share reveals the secret)"
            )
        if isinstance(self.reconstruction_threshold, float) and not (
            0 < self.reconstruction_threshold <= 1
        ):
            raise KnobRefusedError(
                f"reconstruction_threshold={self.reconstruction_threshold} as a float is a "
                "fraction of num_shares in (0, 1]"
            )
        if isinstance(self.num_shares, float) and not 0 < self.num_shares <= 1:
            raise KnobRefusedError(
                f"num_shares={self.num_shares} as a float is a fraction of the clients in (0, 1]"
            )

    def plan(self, n: int) -> RoundPlan:
        """The round's (k, t, quorum, quantization) for ``n`` clients, or the refusal."""
        if n < MIN_MASKED_PARTIES:
            raise KnobRefusedError(
                f"{n} clients: a masked sum needs at least {MIN_MASKED_PARTIES} (with two, "
                "the sum reveals each input to the other)"
            )
        c = self.policy.colluders
        if self.num_shares is None:
            try:
                degree, threshold, note = choose_graph(
                    n,
                    "secagg+",
                    self.dropout_rate,
                    self.corrupt_fraction,
                    colluders=c,
                    minimum_sum=self.policy.minimum_sum,
                )
            except InfeasibleParametersError as error:
                raise KnobRefusedError(f"sealagg's parameter finder refuses: {error}") from None
            degree = n - 1 if degree is None else degree
        else:
            shares = self.num_shares
            if isinstance(shares, float):
                shares = max(3, round(shares * n))
            degree = min(int(shares), n) - 1
            if degree < 2:
                raise KnobRefusedError(
                    f"num_shares={self.num_shares}: each client needs at least 2 neighbours "
                    "(num_shares >= 3)"
                )
            threshold = self.reconstruction_threshold
            if isinstance(threshold, float):
                threshold = max(2, round(threshold * (degree + 1)))
            threshold = int(threshold)
            if threshold > degree:
                raise KnobRefusedError(
                    f"reconstruction_threshold={threshold} exceeds the {degree} shares a client "
                    f"hands to its neighbours (num_shares={degree + 1} with n={n}): no "
                    "dropped client could ever be recovered"
                )
            note = f"num_shares={degree + 1}, reconstruction_threshold={threshold} as given"
        quorum = minimum_quorum(n, threshold, c, self.policy.minimum_sum)
        if quorum > n:
            raise KnobRefusedError(
                f"n={n}, t={threshold}: the signature quorum {quorum} (stops a lying server "
                f"with {c} colluders from equivocating) exceeds the clients"
            )
        mode = "secagg" if degree >= n - 1 else "secagg+"
        try:
            check_round_against_policy(self.policy, mode, n, degree, threshold, quorum)
        except PolicyRefusedError as error:
            raise KnobRefusedError(f"the federation policy refuses: {error}") from None
        spec = QuantizationSpec(clip=float(self.clipping_range), max_clients=n)
        levels = int(2 * self.clipping_range * spec.scale)
        if levels < self.quantization_range:
            raise KnobRefusedError(
                f"quantization_range={self.quantization_range}: with n={n} clients each value "
                f"can get only {levels} levels before the sum wraps Z_(2^{RING_BITS}) "
                "(lower quantization_range or sample fewer clients)"
            )
        return RoundPlan(
            n=n,
            degree=degree,
            threshold=threshold,
            minimum_survivors=quorum,
            spec=spec,
            max_weight=float(self.max_weight),
            note=note,
        )
