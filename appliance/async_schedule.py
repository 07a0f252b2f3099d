"""The asynchronous schedule of a run (issue 21): its parameters and the rules they obey.

A run is created with ``schedule = "async"`` and a JSON object of parameters:

- ``buffer_size`` K (>= 1): a new model version is published from every K accepted updates;
- ``max_staleness`` (>= 0): an update trained on a version more than this many versions older
  than the current one is refused (and the client told so);
- ``staleness``: the weight function of :mod:`crypto.staleness` (``constant``,
  ``polynomial`` with ``a``, ``exponential`` with ``alpha``, ``hinge`` with ``a`` and ``b``);
- ``max_open_buffers`` (>= 1): buffers filling or being published at once; each holds one
  O(d) float64 sum, so this bounds the appliance's memory for the run.

The rules, each with its reason:

- **Plaintext, attested, secagg, secagg+ and ckks modes.** In plaintext and attested modes
  the appliance sees each update (in the TEE for attested) and weights it; in masked modes each
  buffer is one secure-aggregation round among its K registered members, each folding its
  own staleness weight into its masked vector (:mod:`appliance.async_runs`); in ckks mode each
  buffer is one CKKS round among its K registered data owners and the run's key holder, each
  data owner folding its staleness weight into its encrypted vector and signing every
  member's base version with it (:mod:`appliance.ckks_buffer`).
- **K meets the run's minimum.** A buffer's weighted mean is what a synchronous round with K
  clients would publish, so K is at least ``[aggregation] min_clients``, the rule synchronous
  rounds obey (async must not be a way around it). In masked and ckks modes K is also at least three
  (a masked sum over two reveals each input to the other) and at least the policy's ``m``
  (the fewest clients any revealed sum may cover): the buffer's round then enforces ``m`` on
  its survivors, per buffer, exactly as a synchronous round does.
- **K is reachable.** One update per client per buffer, so a buffer needs K distinct clients;
  more than the registered clients would never fill.
- **DP in plaintext, attested, secagg and secagg+ modes; no robust rule yet.** Client-level
  DP is accounted per client over the buffers each client joins (:mod:`appliance.async_privacy`,
  whose ``plan`` holds the DP rules); in masked modes each buffer's round carries distributed
  noise sized for its own minimum of survivors. Robust rules need the whole set of updates at
  once.

Pure rules; the scheduler is :mod:`appliance.async_runs`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from sealagg.appliance.runs import RunError
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.crypto.rules import MIN_MASKED_PARTIES
from sealagg.crypto.staleness import KINDS, StalenessPolicy

__all__ = [
    "ASYNC",
    "BUFFER_ROUND_MODES",
    "MASKED_ASYNC_MODES",
    "SCHEDULES",
    "SYNC",
    "AsyncSpec",
    "check_schedule",
]

SYNC = "sync"
ASYNC = "async"
SCHEDULES = (SYNC, ASYNC)
#: Modes whose appliance sees (and so can weight) each update.
PLAIN_ASYNC_MODES = ("plaintext", "attested")
#: Modes where each buffer is one secure-aggregation round among its members.
MASKED_ASYNC_MODES = ("secagg", "secagg+")
#: Modes where each buffer is one round among its registered members (appliance/ckks_buffer.py).
BUFFER_ROUND_MODES = (*MASKED_ASYNC_MODES, "ckks")
ASYNC_MODES = PLAIN_ASYNC_MODES + BUFFER_ROUND_MODES
MAX_BUFFER_SIZE = 100_000
MAX_OPEN_BUFFERS = 16
MAX_STALENESS = 1_000
_KEYS = frozenset(
    {"buffer_size", "max_staleness", "staleness", "a", "alpha", "b", "max_open_buffers"}
)


@dataclasses.dataclass(frozen=True)
class AsyncSpec:
    """An asynchronous run's parameters, checked (:meth:`parse`)."""

    buffer_size: int
    policy: StalenessPolicy
    max_open_buffers: int = 2

    @classmethod
    def parse(cls, text: str) -> AsyncSpec:
        """From the run's ``async_json``; RunError naming what is wrong."""
        try:
            raw = json.loads(text or "{}")
        except (ValueError, RecursionError):
            raise RunError("async parameters are not valid JSON") from None
        if not isinstance(raw, dict):
            raise RunError('async parameters must be a JSON object, e.g. {"buffer_size": 5}')
        unknown = sorted(set(raw) - _KEYS)
        if unknown:
            known = ", ".join(sorted(_KEYS))
            raise RunError(f"unknown async parameter(s) {', '.join(unknown)}: one of {known}")
        if "buffer_size" not in raw:
            raise RunError("an async run needs buffer_size (K, the updates per published version)")
        k = _integer(raw, "buffer_size", 1, MAX_BUFFER_SIZE)
        opened = _integer(raw, "max_open_buffers", 1, MAX_OPEN_BUFFERS, default=2)
        kind = raw.get("staleness", "polynomial")
        if kind not in KINDS:
            raise RunError(f"staleness must be one of {', '.join(KINDS)}, got {_shown(kind)}")
        defaults = StalenessPolicy()
        try:
            policy = StalenessPolicy(
                kind=kind,
                max_staleness=_integer(raw, "max_staleness", 0, MAX_STALENESS, default=10),
                a=_number(raw, "a", defaults.a),
                alpha=_number(raw, "alpha", defaults.alpha),
                b=_integer(raw, "b", 0, MAX_STALENESS, default=defaults.b),
            )
        except ValueError as error:  # the policy's own bounds (alpha in (0, 1], a >= 0)
            raise RunError(f"async parameters: {error}") from None
        return cls(k, policy, opened)

    def as_dict(self) -> dict[str, Any]:
        """Canonical form: what is stored, audited and listed."""
        p = self.policy
        return {
            "buffer_size": self.buffer_size,
            "max_staleness": p.max_staleness,
            "staleness": p.kind,
            "a": p.a,
            "alpha": p.alpha,
            "b": p.b,
            "max_open_buffers": self.max_open_buffers,
        }

    def wire(self) -> pb.AsyncParams:
        p = self.policy
        return pb.AsyncParams(
            buffer_size=self.buffer_size,
            max_staleness=p.max_staleness,
            staleness=p.kind,
            a=p.a,
            alpha=p.alpha,
            b=p.b,
            max_open_buffers=self.max_open_buffers,
        )

    def check_run(
        self,
        *,
        mode: str,
        min_clients: int,
        registered: int,
        privacy: bool,
        rule: str,
        minimum_sum: int = 0,
    ) -> None:
        """The rules of the module docstring for a run in ``mode`` (``minimum_sum``: the
        governing policy's ``m``); RunError with the reason."""
        if mode not in ASYNC_MODES:
            raise RunError(f"async runs work in {', '.join(ASYNC_MODES)} modes, not {mode!r}")
        if privacy and mode not in PLAIN_ASYNC_MODES + MASKED_ASYNC_MODES:
            dp_modes = ", ".join(PLAIN_ASYNC_MODES + MASKED_ASYNC_MODES)
            raise RunError(f"async runs combine with DP in {dp_modes} modes only, not {mode!r}")
        if rule != "mean":
            raise RunError(f"async runs aggregate with the weighted mean, not the {rule!r} rule")
        if self.buffer_size < min_clients:
            raise RunError(
                f"buffer_size {self.buffer_size} is below the run's minimum of {min_clients} "
                "clients ([aggregation] min_clients): a buffer's published mean must cover as "
                "many clients as a synchronous round's"
            )
        if mode in BUFFER_ROUND_MODES:
            floor = max(MIN_MASKED_PARTIES, minimum_sum)
            if self.buffer_size < floor:
                raise RunError(
                    f"buffer_size {self.buffer_size} is below {floor} in {mode} mode: each "
                    f"buffer is one secure-aggregation round, which needs at least "
                    f"{MIN_MASKED_PARTIES} parties and at least the policy's m = {minimum_sum} "
                    "clients in any revealed sum"
                )
        if self.buffer_size > registered:
            raise RunError(
                f"buffer_size {self.buffer_size} exceeds the {registered} registered clients: each "
                "client adds at most one update to a buffer, so it would never fill"
            )


def check_schedule(schedule: str, async_json: str) -> tuple[str, AsyncSpec | None]:
    """(canonical schedule, its parameters or None); RunError when they do not fit."""
    schedule = schedule.strip() or SYNC
    if schedule not in SCHEDULES:
        raise RunError(f"schedule is one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if schedule == SYNC:
        if async_json.strip():
            raise RunError('async parameters are given but the schedule is not "async"')
        return SYNC, None
    if len(async_json) > 4096:
        raise RunError("async parameters are at most 4096 characters of JSON")
    return ASYNC, AsyncSpec.parse(async_json)


def _integer(raw: dict, key: str, low: int, high: int, *, default: int | None = None) -> int:
    value = raw.get(key, default)
    if type(value) is not int or not low <= value <= high:
        raise RunError(f"{key} is a whole number from {low} to {high}, got {_shown(value)}")
    return value


def _number(raw: dict, key: str, default: float) -> float:
    value = raw.get(key, default)
    try:
        number = float(value) if isinstance(value, int | float) else math.nan
    except OverflowError:  # an integer beyond float range
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise RunError(f"{key} is a finite number, got {_shown(value)}")
    return number


def _shown(value: object) -> str:
    """A refused value as the administrator sees it, bounded (it came from the request)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
