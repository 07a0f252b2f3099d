"""Adaptive phase deadlines: wait for slow-but-connected clients as long as this federation needs.

A phase closes as soon as every live member answered (a vanished member is noticed by
``[presence]``, not by a deadline). The deadline is therefore only how long the appliance
waits for members that are connected but have not answered yet. Instead of one hand-tuned
number per phase, :class:`PhaseTimings` derives it from how long this federation's members
actually took in recent rounds::

    chosen = min(configured, max(adaptive_floor, adaptive_factor * p95))

where ``configured`` is the ``[deadlines]`` value of the phase (the **maximum**) and ``p95``
the 95th percentile of the members' answer times in that phase over the last
``adaptive_rounds`` rounds (:func:`nearest_rank_p95`). With fewer than
``adaptive_min_rounds`` measured rounds, or ``adaptive = false``, the configured value is used.

Why this is safe (the security argument):

* **Survivors are decided as before.** A deadline only says when the appliance stops
  waiting. A member whose answer comes later is dropped for that phase, exactly as with any
  deadline; everything the protocol guarantees about dropped members (never a survivor of
  that phase later, never both shares revealed, the consistency check, at least ``t``
  survivors or the round aborts) does not depend on how long the wait was. A malicious
  appliance could always pick any deadline, so secure aggregation never rested on it:
  deadlines are about availability, not confidentiality.
* **Never above the configured maximum.** History can only shorten the wait, so a slow
  (or attacker-controlled) member can at worst bring the deadline back to what the
  security team configured.
* **Colluding members can shorten it, down to the floor.** The percentile is taken over
  all members' answers pooled, so one member alone moves it little. Members that answer
  at once (e.g. skipping local training) push honest answers to higher ranks: with a
  fraction ``g`` of the answers instant, the pooled p95 is the honest members'
  ``(0.95 - g) / (1 - g)`` quantile, and with ``g >= 0.95`` (or a history of only fast
  rounds) it is 0 and the deadline is ``adaptive_floor``. Shortening the wait can drop
  honest slow members (an availability attack, and a bias in whose updates count); it
  cannot reveal an update. ``adaptive_floor`` (and ``adaptive_factor``) bound how short
  the wait can become, so an honest member that hiccups once is not dropped because the
  history happened to be fast; raise the floor, or set ``adaptive = false``, where slow
  honest members matter more than round time.
* **Censoring does not ratchet it down.** Only answers that arrived are measured: a member
  that missed the deadline leaves no sample. Because the deadline sits ``adaptive_factor``
  (at least 1, default 4) times above the observed p95, cutting off the answers beyond it
  lowers the next p95 only if more than 5 % of the answers came that late.

Bounded memory: per phase at most ``adaptive_rounds`` rounds (the highest round numbers
seen; round numbers only grow), per round at most ``samples_per_round`` answers, kept as a
uniform reservoir sample (Vitter's algorithm R, CSPRNG-driven) so that a round with more
members than the cap is not biased towards its first (fastest) answers. Phase names come
from the appliance's own round classes, never from the wire, so their number is bounded by
the code.

Pure logic: no I/O, no clock, no asyncio; not thread-safe (the orchestrator's event loop
is its only user).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import random
from typing import Any

from sealagg.appliance.config import DeadlinesSection

#: Answers kept per phase and round; a larger round keeps a uniform sample of this size.
MAX_SAMPLES_PER_ROUND = 10_000


def nearest_rank_p95(values: list[float]) -> float:
    """The 95th percentile by nearest rank: the smallest value with at least 95 % of the
    values at or below it (numpy's ``method="inverted_cdf"``).

    Nearest rank never interpolates below an observed answer, and with fewer than 20
    values it is the maximum: a short history waits for its slowest member, not less."""
    if not values:
        raise ValueError("the percentile of no values is undefined")
    ordered = sorted(values)
    rank = (95 * len(ordered) + 99) // 100  # ceil(0.95 n), in integers: no rounding error
    return ordered[rank - 1]


@dataclasses.dataclass
class _RoundSamples:
    values: list[float] = dataclasses.field(default_factory=list)
    seen: int = 0  # answers offered, kept or not: the reservoir's denominator


class PhaseTimings:
    """Per-phase answer times of recent rounds, and the deadlines derived from them.

    ``section`` is the ``[deadlines]`` config; ``samples_per_round`` caps the answers kept
    per phase and round; ``rng`` drives the reservoir (a CSPRNG by default, so no member can
    time its answer into or out of the kept sample; tests pass a seeded ``random.Random``).
    """

    def __init__(
        self,
        section: DeadlinesSection,
        *,
        samples_per_round: int = MAX_SAMPLES_PER_ROUND,
        rng: random.Random | None = None,
    ) -> None:
        if samples_per_round < 1:
            raise ValueError("samples_per_round must be at least 1")
        self._section = section
        self._cap = samples_per_round
        self._rng = rng if rng is not None else random.SystemRandom()
        self._phases: dict[str, dict[int, _RoundSamples]] = {}

    def record(self, round_number: int, phase: str, seconds: float) -> None:
        """One member's answer time in ``phase`` of round ``round_number``: seconds since the
        phase opened (for the first phase, since the round opened, so local training counts).

        Non-numeric, non-finite or negative times, and non-integer round numbers, are
        ignored (a clock glitch must not shorten or crash anything). A round older than every
        round of a full window is evicted at once, so its answer is ignored too."""
        if isinstance(round_number, bool) or not isinstance(round_number, int):
            return
        if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real):
            return
        value = float(seconds)
        if not math.isfinite(value) or value < 0.0:
            return
        window = self._phases.setdefault(phase, {})
        samples = window.get(round_number)
        if samples is None:
            samples = window[round_number] = _RoundSamples()
            while len(window) > self._section.adaptive_rounds:
                del window[min(window)]
        self._keep(samples, value)

    def _keep(self, samples: _RoundSamples, value: float) -> None:
        """Algorithm R: after ``seen`` answers each one is kept with probability cap/seen."""
        samples.seen += 1
        if len(samples.values) < self._cap:
            samples.values.append(value)
            return
        slot = self._rng.randrange(samples.seen)
        if slot < self._cap:
            samples.values[slot] = value

    def forget(self, phase: str | None = None) -> None:
        """Drop the history of ``phase`` (every phase with None): its next deadline is the
        configured maximum again. The orchestrator calls it when a connected member missed an
        adaptive deadline (history predicted too short a wait) and when the run changes (other
        hyperparameters, e.g. more local epochs, make old answer times meaningless)."""
        if phase is None:
            self._phases.clear()
        else:
            self._phases.pop(phase, None)

    def deadline(self, phase: str, configured: float) -> float:
        """Seconds ``phase`` waits for connected-but-slow members: ``configured`` (the
        maximum) without enough history, else ``min(configured, max(floor, factor * p95))``."""
        return self.describe(phase, configured)["chosen"]

    def describe(self, phase: str, configured: float) -> dict[str, Any]:
        """JSON-safe account of the choice for the audit log and the status:
        ``{phase, configured, chosen, adaptive, rounds, samples, p95}``; ``adaptive`` says
        whether history was used, ``p95`` is ``None`` when nothing was measured."""
        configured = float(configured)
        if not math.isfinite(configured) or configured <= 0.0:
            raise ValueError(f"configured deadline must be a positive number, not {configured!r}")
        section = self._section
        window = self._phases.get(phase, {})
        pooled = [value for samples in window.values() for value in samples.values]
        p95 = nearest_rank_p95(pooled) if pooled else None
        rounds = sum(1 for samples in window.values() if samples.values)
        adaptive, chosen = False, configured
        if section.adaptive and p95 is not None and rounds >= section.adaptive_min_rounds:
            adaptive = True
            chosen = min(configured, max(section.adaptive_floor, section.adaptive_factor * p95))
        return {
            "phase": phase,
            "configured": configured,
            "chosen": chosen,
            "adaptive": adaptive,
            "rounds": rounds,
            "samples": len(pooled),
            "p95": p95,
        }
