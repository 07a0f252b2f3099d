"""Run a whole round in one process: every client and the server, with dropouts.

Every message goes through the wire schema (encode, then decode), so what is
timed and counted is what a transport would carry. Used by the tests, the
benchmarks and the in-process demo; the appliance drives the same objects
over gRPC instead.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping

import numpy as np

from sealagg.crypto._primitives.signing import IdentityKey
from sealagg.crypto.client import SecAggClient
from sealagg.crypto.config import RoundConfig
from sealagg.crypto.errors import SecAggError
from sealagg.crypto.messages import Message, Phase, decode
from sealagg.crypto.server import AggregateResult, SecAggServer


@dataclasses.dataclass
class RoundStats:
    """Where the time and the bytes went, per side and per phase."""

    client_seconds: dict[Phase, float] = dataclasses.field(default_factory=dict)
    server_seconds: dict[Phase, float] = dataclasses.field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0
    wire_seconds: float = 0.0
    client_aborts: dict[int, SecAggError] = dataclasses.field(default_factory=dict)

    @property
    def client_total(self) -> float:
        return sum(self.client_seconds.values())

    @property
    def server_total(self) -> float:
        return sum(self.server_seconds.values())

    def add(self, table: dict[Phase, float], phase: Phase, seconds: float) -> None:
        table[phase] = table.get(phase, 0.0) + seconds


def _wire(msg: Message, stats: RoundStats) -> tuple[Message, int]:
    t0 = time.perf_counter()
    data = msg.encode()
    decoded = decode(data)
    stats.wire_seconds += time.perf_counter() - t0
    return decoded, len(data)


def run_round(
    config: RoundConfig,
    identities: Mapping[int, IdentityKey],
    inputs: Mapping[int, np.ndarray],
    dropouts: Mapping[int, Phase] | None = None,
    stats: RoundStats | None = None,
    *,
    tamper: Callable[[int, Message], Message] | None = None,
    on_server: Callable[[SecAggServer], None] | None = None,
) -> AggregateResult:
    """Run one round; a client listed in ``dropouts`` goes silent from that phase on.

    ``tamper(client, reply)`` (tests only) may replace any client's reply before it is
    sent: a corrupt client. ``on_server`` (tests only) is handed the server when the round
    starts, so a test can read its blames after an abort. Raises whatever the server
    raises when the round cannot finish (for example
    :class:`~crypto.errors.BelowThresholdError`).
    """
    dropouts = dict(dropouts or {})
    stats = stats if stats is not None else RoundStats()
    bases = config.buffer.base_versions if config.buffer is not None else {}
    clients = {
        u: SecAggClient(config, u, identities[u], trained_on=bases.get(u))
        for u in sorted(config.identities)
    }
    server = SecAggServer(config)
    if on_server is not None:
        on_server(server)

    def alive(u: int, phase: Phase) -> bool:
        return u not in dropouts or dropouts[u] > phase

    def deliver(phase: Phase, u: int, reply: Message) -> None:
        if tamper is not None:
            reply = tamper(u, reply)
        msg, size = _wire(reply, stats)
        stats.bytes_up += size
        t0 = time.perf_counter()
        server.receive(u, msg)
        stats.add(stats.server_seconds, phase, time.perf_counter() - t0)

    def close(phase: Phase) -> dict[int, Message]:
        t0 = time.perf_counter()
        out = server.close_phase()
        stats.add(stats.server_seconds, phase, time.perf_counter() - t0)
        delivered = {}
        for u, m in out.items():
            msg, size = _wire(m, stats)
            stats.bytes_down += size
            delivered[u] = msg
        return delivered

    for u, client in clients.items():
        client.set_input(inputs[u])
        if alive(u, Phase.ADVERTISE_KEYS):
            t0 = time.perf_counter()
            reply = client.advertise_keys()
            stats.add(stats.client_seconds, Phase.ADVERTISE_KEYS, time.perf_counter() - t0)
            deliver(Phase.ADVERTISE_KEYS, u, reply)
    inbox = close(Phase.ADVERTISE_KEYS)

    while server.phase is not None:  # coins (sparse graphs), shares, masked input, ...
        phase = server.phase
        for u, msg in inbox.items():
            if alive(u, phase):
                t0 = time.perf_counter()
                try:
                    reply = clients[u].handle(msg)
                except SecAggError as error:  # this client aborts; the round goes on
                    stats.client_aborts[u] = error
                    dropouts[u] = phase
                    continue
                finally:
                    stats.add(stats.client_seconds, phase, time.perf_counter() - t0)
                deliver(phase, u, reply)
        inbox = close(phase)
    return server.result
