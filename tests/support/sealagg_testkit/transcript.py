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
    n: int = 5, *, threshold: int = 3, dimension: int = 17, drop: int | None = None, seed: int = 0
) -> list[Recorded]:
    """Run a complete round in-process and return every message in order.

    ``drop`` names a client that goes silent after advertising its keys and revealing its
    graph coin, so the transcript also holds mask-key shares (the unmasking of a dropped
    peer); a client silent before its coin would abort the round.
    """
    kit = make_round(n, threshold=threshold, dimension=dimension, seed=seed)
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
    """Distinct messages from two real rounds (one with a dropout), every type represented."""
    seen: dict[bytes, None] = {}
    for rec in record_round() + record_round(6, threshold=3, drop=6, seed=1):
        seen.setdefault(rec.data)
    return list(seen)
