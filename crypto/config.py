"""The public description of one secure-aggregation round, shared by every party."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

from sealagg.crypto.errors import RoundParametersRefusedError
from sealagg.crypto.graph import CommunicationGraph, complete_graph, harary_graph
from sealagg.crypto.messages import ROUND_ID_BYTES
from sealagg.crypto.rules import MIN_MASKED_PARTIES, require_masking_parties

RING_BITS = 32


@dataclasses.dataclass(frozen=True)
class RoundConfig:
    """Everything public about a round: who, with whom, how many must survive.

    ``identities`` maps each participant's round index (its Shamir x-coordinate)
    to its Ed25519 verify key; the appliance fills it from client certificates.
    ``minimum_survivors`` is the smallest number of masked inputs whose sum the
    server may learn; clients refuse to unmask below it.
    """

    round_id: bytes
    identities: Mapping[int, bytes]
    graph: CommunicationGraph
    threshold: int
    vector_length: int
    minimum_survivors: int

    def __post_init__(self) -> None:
        if len(self.round_id) != ROUND_ID_BYTES:
            raise ValueError(f"round_id must be {ROUND_ID_BYTES} bytes")
        object.__setattr__(self, "identities", MappingProxyType(dict(self.identities)))
        if tuple(sorted(self.identities)) != tuple(self.graph.participants):
            raise ValueError("the graph must cover exactly the participants with identities")
        require_masking_parties(len(self.identities), "pairwise masking")
        if not 2 <= self.threshold <= self.graph.degree:
            raise ValueError(
                f"threshold {self.threshold} must lie in 2..{self.graph.degree} (the degree)"
            )
        if self.minimum_survivors < max(2, self.threshold):
            raise ValueError("minimum_survivors must be at least the threshold (and 2)")
        if self.vector_length < 1:
            raise ValueError("vector_length must be positive")

    @classmethod
    def create(
        cls,
        *,
        round_id: bytes,
        identities: Mapping[int, bytes],
        threshold: int,
        vector_length: int,
        degree: int | None = None,
        minimum_survivors: int | None = None,
    ) -> RoundConfig:
        """Build a config; ``degree=None`` means the complete graph (SecAgg).

        The Harary graph's permutation is seeded by the round id, so every party
        derives the same graph and a server cannot pick it per client.
        """
        ids = sorted(identities)
        if degree is None or degree >= len(ids) - 1:
            graph = complete_graph(ids)
        else:
            graph = harary_graph(ids, degree, seed=round_id)
        return cls(
            round_id=round_id,
            identities=identities,
            graph=graph,
            threshold=threshold,
            vector_length=vector_length,
            minimum_survivors=(
                default_minimum_survivors(len(ids), threshold)
                if minimum_survivors is None
                else minimum_survivors
            ),
        )


def default_minimum_survivors(num_clients: int, threshold: int) -> int:
    """A majority of the participants, at least the threshold, and never fewer than three.

    The consistency check stops a server from showing different survivor lists
    to different clients only if two lists cannot both gather a quorum of
    signatures: with a majority quorum, that takes corrupt clients signing both.
    A sum over two clients would reveal each input to the other, hence the three.
    """
    return max(threshold, num_clients // 2 + 1, min(MIN_MASKED_PARTIES, num_clients))


def check_round_parameters(
    *,
    participants: int,
    threshold: int,
    minimum_survivors: int,
    minimum_survivors_floor: int = MIN_MASKED_PARTIES,
) -> None:
    """A client's refusal of masked-round parameters that would not protect its input.

    The round must have at least three parties, and the appliance may not ask clients to
    unmask a sum over fewer survivors than :func:`default_minimum_survivors` (capped at
    the number of participants) or the client's own ``minimum_survivors_floor``: a
    smaller quorum lets a lying appliance show different survivor lists to different
    clients, or reveal a sum over too few inputs. Raises ``TooFewPartiesError`` or
    :class:`~sealagg.crypto.errors.RoundParametersRefusedError` with the reason.
    """
    require_masking_parties(participants, "a masked round")
    default = default_minimum_survivors(participants, threshold)
    floor = max(minimum_survivors_floor, min(default, participants))
    if minimum_survivors < floor:
        raise RoundParametersRefusedError(
            f"the appliance asks for only {minimum_survivors} survivors; this client needs {floor}"
        )
