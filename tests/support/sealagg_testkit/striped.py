"""Helpers the Ray-striped tests share (tests/scale/): stripe pools, a client that kills a
stripe mid-round, one that vanishes before its masked input, and a record of what each
striped round aggregated. Imports Ray: only the scale tests import this module."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import numpy as np
import ray

from sealagg.appliance.scale.cluster import stripe_options
from sealagg.appliance.scale.coordinator import stripe_actor_class
from sealagg.appliance.scale.masked_round import StripedMaskedRound
from sealagg.client_shim.session import Participant
from sealagg.crypto import Phase
from sealagg_testkit.clients import expected_bias_and_weight, join, published_flat, run_clients

#: Every masked phase's deadline, generous: presence ends a vanished client's wait at once;
#: these only bound a hang.
MASKED_DEADLINES = dict.fromkeys(
    ("advertise_keys", "share_keys", "masked_input", "consistency_check", "unmasking"), 60
)


def stripe_pool(count: int) -> Iterator[list[Any]]:
    """``count`` stripe actors on the worker nodes (a fixture body: ``yield from``); each is
    a worker process, killed afterwards to free it for the next module."""
    actor = stripe_actor_class(**stripe_options())
    pool = [actor.remote() for _ in range(count)]
    yield pool
    for stripe in pool:
        ray.kill(stripe, no_restart=True)


def record_aggregates(monkeypatch: Any) -> list[tuple[np.ndarray, Any, Any]]:
    """(assembled sum, Aggregate, decoder) of every striped round that aggregated (observed,
    nothing changed)."""
    seen: list[tuple[np.ndarray, Any, Any]] = []
    original = StripedMaskedRound.aggregate

    def aggregate(self):
        result = original(self)
        seen.append((self.striped.outcome.total.copy(), result, self.decoder))
        return result

    monkeypatch.setattr(StripedMaskedRound, "aggregate", aggregate)
    return seen


class KillsAStripe(Participant):
    """Kills the appliance's first stripe actor just before sending its round-1 masked input."""

    stripe: ClassVar[object] = None

    def _send(self, start, phase, message, *rest):
        if phase == Phase.MASKED_INPUT and start.round_number == 1 and self.stripe is not None:
            ray.kill(self.stripe, no_restart=True)
        return super()._send(start, phase, message, *rest)


def two_rounds_with_a_stripe_killed(dep: Any, app: Any, n: int, monkeypatch: Any) -> dict:
    """Two rounds of ``n`` shim clients; client0 kills the first stripe in round 1. Returns
    each client's reports (the callers assert what the round outcomes must be)."""
    monkeypatch.setattr(KillsAStripe, "stripe", app.app.orchestrator.scale.stripes[0])

    def make(conn):
        kind = KillsAStripe if conn.kit.name == "client0" else Participant
        return kind(conn, poll_seconds=0.5)

    names = [f"client{i}" for i in range(n)]
    threads, reports, errors = run_clients(dep, names, rounds=2, make=make)
    app.wait(200)
    join(threads, 30)
    assert not errors, errors
    return reports


class VanishedError(Exception):
    """A test client 'dies': its connection and presence stream close."""


class VanishBeforeMasking(Participant):
    """Closes its connection instead of sending its masked input."""

    def _send(self, start, phase, message, *rest):
        if phase == Phase.MASKED_INPUT:
            self.connection.close()
            raise VanishedError("vanished before its masked input")
        return super()._send(start, phase, message, *rest)


def one_round_without(dep: Any, app: Any, n: int, vanishing: str) -> None:
    """One round of ``n`` shim clients in which ``vanishing`` closes its connection instead
    of sending its masked input: it is the only client that fails, and the round publishes
    the exact weighted mean over the others (:func:`assert_published_mean`)."""

    def make(conn):
        kind = VanishBeforeMasking if conn.kit.name == vanishing else Participant
        return kind(conn, poll_seconds=0.5)

    threads, _, errors = run_clients(dep, [f"client{i}" for i in range(n)], make=make)
    app.wait(150)
    join(threads, 30)
    assert set(errors) == {vanishing} and isinstance(errors[vanishing], VanishedError), errors
    outcome = app.app.orchestrator.history[-1]
    assert outcome.outcome == "published", outcome
    members = [i for i in range(n) if f"client{i}" != vanishing]
    assert outcome.contributors == tuple(f"client{i}" for i in members)
    assert_published_mean(dep, members)


def assert_published_mean(dep: Any, members: Iterable[int]) -> None:
    """The one model published (version 2: any round before it published nothing) is the
    weighted mean of ``members``' updates (within the quantization bound)."""
    version, flat, _ = published_flat(dep)
    assert version == 2
    np.testing.assert_allclose(flat, expected_bias_and_weight(members), atol=2e-6)
