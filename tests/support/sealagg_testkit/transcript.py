"""Record every message of a real secure-aggregation round, as the wire carries it.

The fuzzers start from these bytes (a corpus seeded from real transcripts) and mutate them.
"""

from __future__ import annotations

import dataclasses

from sealagg.crypto import SecAggClient, SecAggServer
from sealagg.crypto.messages import Message, Phase, decode
from sealagg.crypto.testing import make_round


@dataclasses.dataclass(frozen=True)
class Recorded:
    """One message of the round: direction, phase, its encoded bytes."""

    direction: str  # "up" (client to appliance) | "down"
    phase: Phase
    sender: int
    data: bytes


def record_round(
    n: int = 5,
    *,
    threshold: int = 3,
    dimension: int = 17,
    drop: int | None = None,
    seed: int = 0,
    degree: int | None = None,
) -> list[Recorded]:
    """Run a whole round in-process and return every message in order.

    ``drop`` names a client that goes silent after answering the key directory (with its
    shares on a complete graph), so the transcript also holds mask-key shares (the
    unmasking of a dropped peer); on a sparse graph (``degree``) that answer is its coin
    and its silence then aborts the round, so only complete rounds take ``drop``.
    """
    kit = make_round(n, threshold=threshold, dimension=dimension, seed=seed, degree=degree)
    clients = {u: SecAggClient(kit.config, u, kit.identities[u]) for u in kit.identities}
    server = SecAggServer(kit.config)
    out: list[Recorded] = []

    def up(u: int, msg: Message) -> None:
        data = msg.encode()
        out.append(Recorded("up", msg.PHASE, u, data))
        server.receive(u, decode(data))

    def close() -> dict[int, Message]:
        replies = server.close_phase()
        for u, msg in replies.items():
            out.append(Recorded("down", msg.PHASE, u, msg.encode()))
        return {u: decode(m.encode()) for u, m in replies.items()}

    for u, c in clients.items():
        c.set_input(kit.inputs[u])
        up(u, c.advertise_keys())
    inbox = close()
    while server.phase is not None:
        for u, msg in inbox.items():
            if u != drop or msg.PHASE == Phase.ADVERTISE_KEYS:  # the key directory: reveal
                up(u, clients[u].handle(msg))
        inbox = close()
    return out


def corpus() -> list[bytes]:
    """Distinct messages from three real rounds (one with a dropout, one on a sparse graph
    for the coin reveal, which complete graphs skip), every type represented."""
    seen: dict[bytes, None] = {}
    sparse = record_round(8, threshold=2, degree=6, seed=2)
    for rec in record_round() + record_round(6, threshold=3, drop=6, seed=1) + sparse:
        seen.setdefault(rec.data)
    return list(seen)
