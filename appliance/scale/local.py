"""Drive a striped round in one process with real protocol clients (tests, benchmarks).

The same loop as :func:`crypto.simulation.run_round`, every message through the wire
schema, but the server side is a :class:`~appliance.scale.coordinator.StripedRound` whose
stripes are Ray actors. ``on_phase(phase, round)`` runs before each phase closes (tests use
it to take a node away mid-round).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from sealagg.appliance.scale.coordinator import StripedOutcome, StripedRound
from sealagg.crypto import IdentityKey, Message, Phase, SecAggClient, decode
from sealagg.crypto.errors import SecAggError


def _wire(msg: Message) -> Message:
    return decode(msg.encode())


def run_striped_round(
    striped: StripedRound,
    identities: Mapping[int, IdentityKey],
    inputs: Mapping[int, np.ndarray],
    dropouts: Mapping[int, Phase] | None = None,
    *,
    on_phase: Callable[[Phase, StripedRound], None] | None = None,
) -> StripedOutcome:
    """One round; a client listed in ``dropouts`` goes silent from that phase on. Raises
    what the coordinator raises when the round cannot finish (nothing is assembled then)."""
    config = striped.config
    dropouts = dict(dropouts or {})
    clients = {u: SecAggClient(config, u, identities[u]) for u in sorted(config.identities)}

    def alive(u: int, phase: Phase) -> bool:
        return u not in dropouts or dropouts[u] > phase

    def close(phase: Phase) -> dict[int, Message]:
        if on_phase is not None:
            on_phase(phase, striped)
        return {u: _wire(m) for u, m in striped.close_phase().items()}

    for u, client in clients.items():
        client.set_input(inputs[u])
        if alive(u, Phase.ADVERTISE_KEYS):
            striped.receive(u, _wire(client.advertise_keys()))
    inbox = close(Phase.ADVERTISE_KEYS)
    while striped.phase is not None:
        phase = striped.phase
        for u, msg in inbox.items():
            if alive(u, phase):
                try:
                    reply = clients[u].handle(msg)
                except SecAggError:
                    dropouts[u] = phase
                    continue
                striped.receive(u, _wire(reply))
        inbox = close(phase)
    assert striped.outcome is not None
    return striped.outcome
