"""Runs: a named series of rounds with a mode, a round budget and hyperparameters.

A federation holds several runs; the appliance assigns each an id. A run moves
``created → running ⇄ paused`` and ends ``finished`` (its round budget spent) or
``stopped`` (by an administrator); ended runs are final. The rules, each with its reason:

- **At most one run is running.** Rounds draw on the same clients and the same current
  model; two runs interleaving rounds would train each other's models. A created run waits
  (queued) until an administrator starts it, and starting it while another run is running
  is refused with the other run's id.
- **A run uses the federation's configured mode.** The loaded configuration was checked for
  that mode only (the policy's ``c``/``m`` against it, its deadlines, the CKKS key holder,
  DP accounting); another mode would run unchecked parameters, so it is refused.
- **Hyperparameters are a JSON object of at most 16 KiB.** They travel to every client with
  each round (``RoundStart.hyperparameters_json``); the clients' own code interprets them,
  the appliance never does, so it only bounds their size and shape.
- **A run's schedule** is synchronous rounds, or ``async`` (issue 21): buffered aggregation
  with staleness weights, its rules in :mod:`appliance.async_schedule`; the round budget
  then counts published buffers.
- **Pause** opens no new round (the round in flight finishes); **stop** ends the run: no new
  round, and every client gets ``Task(run_end=RunEnd(...))``.

Pure rules and types here; persistence is :mod:`appliance.run_store`, scheduling the
orchestrator.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from sealagg.appliance.audit import canonical_json, check_json_value

__all__ = [
    "ACTIONS",
    "ASYNC_KEY",
    "IMPLICIT_CREATOR",
    "LIVE_STATUSES",
    "MAX_HYPERPARAMETER_BYTES",
    "MAX_RUN_NAME",
    "Run",
    "RunError",
    "check_hyperparameters",
    "check_name",
    "next_status",
]

MAX_HYPERPARAMETER_BYTES = 16 * 1024
#: Where an asynchronous run's parameters are stored beside its hyperparameters (issue 21,
#: appliance/run_store.py); the model owner's hyperparameters may not use this key.
ASYNC_KEY = "sealagg.async"
MAX_RUN_NAME = 64
#: ``created_by`` of the run the appliance makes itself from ``[aggregation] rounds`` when no
#: administrator ever created one (backward compatibility: such a federation works as before).
IMPLICIT_CREATOR = "config"
LIVE_STATUSES = ("running", "paused")
ENDED_STATUSES = ("finished", "stopped")

#: action -> (statuses it applies to, the status it leads to)
ACTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "start": (("created",), "running"),
    "pause": (("running",), "paused"),
    "resume": (("paused",), "running"),
    "stop": (("created", "running", "paused"), "stopped"),
}


class RunError(ValueError):
    """A refused run request; the message is the reason shown to the administrator."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One run as stored (``runs`` table)."""

    row: int  # the table's primary key (rounds.run refers to it)
    run_id: str  # the public id, assigned by the appliance
    name: str
    mode: str
    status: str
    rounds: int  # budget, 0 = unbounded
    rounds_done: int
    hyperparameters: str  # canonical JSON object
    base_model_version: int | None
    created_at: str
    created_by: str
    ended_at: str | None
    reason: str | None
    #: Issue 21: the asynchronous parameters as canonical JSON; None = synchronous rounds
    #: (stored under ASYNC_KEY beside the hyperparameters: appliance/run_store.py).
    async_params: str | None = None

    @property
    def asynchronous(self) -> bool:
        return self.async_params is not None

    @property
    def implicit(self) -> bool:
        return self.created_by == IMPLICIT_CREATOR

    @property
    def budget_spent(self) -> bool:
        return self.rounds > 0 and self.rounds_done >= self.rounds

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe view for status, ListRuns and the CLI."""
        return {
            "id": self.run_id,
            "name": self.name,
            "mode": self.mode,
            "status": self.status,
            "rounds": self.rounds,
            "rounds_done": self.rounds_done,
            "hyperparameters": json.loads(self.hyperparameters),
            "base_model_version": self.base_model_version,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "ended_at": self.ended_at,
            "reason": self.reason,
            "schedule": "async" if self.asynchronous else "sync",
            "async": json.loads(self.async_params) if self.async_params else None,
        }


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_RUN_NAME or not name.isprintable():
        raise RunError(f"a run name is 1 to {MAX_RUN_NAME} printable characters")
    return name


def check_hyperparameters(text: str) -> dict[str, Any]:
    """A JSON object of at most 16 KiB with finite numbers ("" = {})."""
    if not text.strip():
        return {}
    if len(text.encode("utf-8")) > MAX_HYPERPARAMETER_BYTES:
        raise RunError(f"hyperparameters are at most {MAX_HYPERPARAMETER_BYTES} bytes of JSON")

    def no_constant(value: str) -> float:
        raise RunError(f"hyperparameters must be finite numbers, not {value}")

    try:
        value = json.loads(text, parse_constant=no_constant)
    except RunError:
        raise
    except (ValueError, RecursionError):
        raise RunError("hyperparameters are not valid JSON") from None
    if not isinstance(value, dict):
        raise RunError('hyperparameters must be a JSON object, e.g. {"lr": 0.05}')
    if ASYNC_KEY in value:
        raise RunError(f"the hyperparameter key {ASYNC_KEY!r} is reserved (async parameters)")
    if any(isinstance(v, float) and not math.isfinite(v) for v in _leaves(value)):
        raise RunError("hyperparameters must be finite numbers")
    try:  # what the state database and the audit log can hold, byte for byte
        check_json_value(value, "hyperparameters")
        canonical_json(value)
    except (ValueError, TypeError, UnicodeError) as error:
        raise RunError(f"hyperparameters: {error}") from None
    return value


def _leaves(value: Any, depth: int = 0) -> list[Any]:
    if depth > 32:
        raise RunError("hyperparameters are nested too deeply")
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v, depth + 1)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v, depth + 1)]
    return [value]


def next_status(run: Run, action: str, running: Run | None) -> str:
    """The status ``action`` leads ``run`` to, or RunError with the reason."""
    if action not in ACTIONS:
        raise RunError(f"unknown action {action!r}: one of {', '.join(ACTIONS)}")
    sources, target = ACTIONS[action]
    if run.status not in sources:
        raise RunError(f"run {run.run_id} is {run.status}: it cannot {action}")
    if target == "running" and running is not None and running.row != run.row:
        raise RunError(
            f"run {running.run_id} ({running.name}) is running: at most one run runs at a time "
            "(pause or stop it first)"
        )
    return target
