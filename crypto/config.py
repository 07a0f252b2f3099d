"""The public description of one secure-aggregation round, shared by every party."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from sealagg.crypto import committee as _committee
from sealagg.crypto.buffer_context import BufferContext
from sealagg.crypto.errors import RoundParametersRefusedError
from sealagg.crypto.graph import CommunicationGraph, complete_graph, random_graph
from sealagg.crypto.messages import ROUND_ID_BYTES
from sealagg.crypto.rules import MIN_MASKED_PARTIES, minimum_quorum, require_masking_parties

RING_BITS = 32


@dataclasses.dataclass(frozen=True)
class RoundConfig:
    """Everything public about a round: who, how densely connected, how many must survive.

    ``identities`` maps each participant's round index (its Shamir x-coordinate)
    to its Ed25519 verify key. ``degree`` is the SecAgg+ graph's k (``n - 1``: the
    complete graph of SecAgg). ``minimum_survivors`` is the smallest number of masked
    inputs whose sum the server may learn; clients refuse to unmask below it.
    ``roster_version`` names the authority's roster the members come from. ``buffer`` is
    set for an asynchronous buffer's round: every member's base version, the parent and the
    staleness function (:mod:`crypto.buffer_context`), bound into the transcript.

    There is no graph here: the SecAgg+ graph is drawn only once every advertised key
    is known, seeded by the hash of the round transcript (:meth:`graph_for`), so the
    appliance cannot pick it by picking the round id (issue 17, item 3).
    """

    round_id: bytes
    identities: Mapping[int, bytes]
    degree: int
    threshold: int
    vector_length: int
    minimum_survivors: int
    roster_version: int = 0
    buffer: BufferContext | None = None

    def __post_init__(self) -> None:
        if len(self.round_id) != ROUND_ID_BYTES:
            raise ValueError(f"round_id must be {ROUND_ID_BYTES} bytes")
        object.__setattr__(self, "identities", MappingProxyType(dict(self.identities)))
        ids = sorted(self.identities)
        require_masking_parties(len(ids), "pairwise masking")
        if any(type(u) is not int or u < 1 for u in ids):
            raise ValueError("participant indices are positive integers")
        if not 2 <= self.degree <= len(ids) - 1:
            raise ValueError(f"degree {self.degree} must lie in 2..{len(ids) - 1}")
        if not 2 <= self.threshold <= self.degree:
            raise ValueError(
                f"threshold {self.threshold} must lie in 2..{self.degree} (the degree)"
            )
        if self.minimum_survivors < max(2, self.threshold):
            raise ValueError("minimum_survivors must be at least the threshold (and 2)")
        if self.vector_length < 1:
            raise ValueError("vector_length must be positive")
        if type(self.roster_version) is not int or self.roster_version < 0:
            raise ValueError("roster_version is a non-negative integer")
        if self.buffer is not None and set(self.buffer.base_versions) != set(ids):
            raise ValueError("a buffer's round lists one base version per participant")

    @property
    def participants(self) -> tuple[int, ...]:
        return tuple(sorted(self.identities))

    @property
    def is_complete(self) -> bool:
        """SecAgg's complete graph (every client masks with every other)."""
        return self.degree >= len(self.identities) - 1

    @property
    def reveals_coins(self) -> bool:
        """Whether the round has the coin-reveal phase: only a sparse graph has one.

        Derived from the degree and the participants alone, which every client checks
        and the transcript hash binds, never from anything the server chooses after
        seeing keys (the security argument: :mod:`crypto.coins`, "Complete graphs").
        """
        return not self.is_complete

    def graph_for(self, transcript_hash: bytes) -> CommunicationGraph:
        """The round's graph, drawn from the hash of the transcript's advertised keys.

        Both sides call this after the key directory is known. The seed covers every
        advertised key, which the appliance cannot choose (each is signed by its
        client), so trying round ids no longer moves clients around. What it does not
        stop: colluding clients re-drawing their own keys, or the appliance leaving
        advertisements out, until the graph suits them (a commit-then-reveal of the
        keys would; see the issue-17 report).
        """
        return _graph(self.participants, self.degree, bytes(transcript_hash))

    @property
    def committee_sizing(self) -> _committee.CommitteeSizing | None:
        """The consistency check's signing committee size and quorum, or ``None`` for the
        full quorum (complete graphs; sparse rounds where no committee below Q meets the
        bounds). A pure function of n, degree, threshold and minimum_survivors, which the
        transcript binds (:mod:`crypto.committee` has the security argument)."""
        if self.is_complete:
            return None
        return _committee.committee_for_round(
            len(self.identities), self.degree, self.threshold, self.minimum_survivors
        )

    def committee_for(self, graph_seed: bytes) -> frozenset[int] | None:
        """The round's signing committee, drawn from the coin-tossed graph seed
        (:func:`crypto.coins.graph_seed`) by both sides; ``None``: the full quorum."""
        sizing = self.committee_sizing
        if sizing is None:
            return None
        return _committee_members(bytes(graph_seed), self.round_id, self.participants, sizing.size)

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
        roster_version: int = 0,
        buffer: BufferContext | None = None,
    ) -> RoundConfig:
        """Build a config; ``degree=None`` (or ``>= n - 1``) means the complete graph."""
        n = len(identities)
        return cls(
            round_id=round_id,
            identities=identities,
            degree=n - 1 if degree is None or degree >= n - 1 else degree,
            threshold=threshold,
            vector_length=vector_length,
            minimum_survivors=(
                default_minimum_survivors(n, threshold)
                if minimum_survivors is None
                else minimum_survivors
            ),
            roster_version=roster_version,
            buffer=buffer,
        )


@functools.lru_cache(maxsize=8)
def _graph(participants: tuple[int, ...], degree: int, seed: bytes) -> CommunicationGraph:
    """One build per (participants, degree, seed): in a one-process simulation every client
    of a round draws the same graph (it is immutable, so sharing it is safe)."""
    if degree >= len(participants) - 1:
        return complete_graph(participants)
    return random_graph(participants, degree, seed=seed)


@functools.lru_cache(maxsize=8)
def _committee_members(
    seed: bytes, round_id: bytes, participants: tuple[int, ...], size: int
) -> frozenset[int]:
    """One draw per round in a one-process simulation (immutable, so sharing is safe)."""
    return _committee.draw_committee(seed, round_id, participants, size)


def active_after_pruning(
    graph: CommunicationGraph, advertised: Iterable[int], threshold: int
) -> frozenset[int]:
    """Advertisers left once every client with fewer than t advertising neighbours is
    removed (repeatedly): their secrets could not be recovered from t shares. Server and
    clients both compute it from the transcript, so nobody has to be told who is in."""
    active = set(advertised)
    changed = True
    while changed:
        changed = False
        for u in sorted(active):
            if sum(v in active for v in graph.neighbours(u)) < threshold:
                active.discard(u)
                changed = True
    return frozenset(active)


def default_minimum_survivors(num_clients: int, threshold: int, colluders: int = 0) -> int:
    """The smallest quorum that stops equivocation by a server with ``colluders`` clients.

    The consistency check stops a server from showing different survivor lists to
    different clients only if two lists cannot both gather a quorum of signatures:
    with ``2(quorum - c) > n - c`` two quorums share an honest signer, who signs one
    list only (derivation: :func:`crypto.rules.require_malicious_server_conditions`).
    With ``c = 0`` that is a majority. At least the threshold (unmasking needs t
    shares), and never fewer than three: a sum over two reveals each input to the other.
    """
    return minimum_quorum(num_clients, threshold, colluders, min(MIN_MASKED_PARTIES, num_clients))


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
