"""Who exchanges pairwise masks and secret shares with whom.

SecAgg (Bonawitz et al., CCS 2017) uses the *complete* graph: every client masks
with, and secret-shares its keys to, every other client. SecAgg+ (Bell et al.,
CCS 2020) replaces it with a sparse k-regular graph, so each client talks to
only k = O(log n) neighbours. We use the k-regular *Harary* graph (a circulant
graph: position ``i`` is joined to positions ``i±1 .. i±k/2 (mod n)``, and for
odd k also to ``i + n/2``) laid over a uniformly random permutation of the
participants. The random placement is what makes the privacy analysis in
:mod:`crypto.params` work: corrupt clients land on uniformly random positions,
so how many of a client's neighbours are corrupt is hypergeometric.

Deterministic derivation
------------------------
Every party recomputes the same graph from the same ``seed``; nobody has to
trust a graph sent by the server. The permutation is derived as follows (this
is the wire contract; ``tests/crypto/test_graph.py`` re-derives it independently):

* keystream = ``B_0 ‖ B_1 ‖ …`` with
  ``B_c = SHA-256(b"sealagg/graph/v1" ‖ seed ‖ c.to_bytes(8, "big"))``;
* start from the participants sorted ascending, ``a[0..n-1]``;
* Fisher-Yates: for ``i = n-1`` down to ``1``, let ``w = i.bit_length()``; read
  ``ceil(w/8)`` keystream bytes as a big-endian integer, keep its low ``w``
  bits as ``r``, and retry with the next bytes while ``r > i`` (rejection
  sampling: ``r`` is exactly uniform on ``0..i``, no modulo bias); swap
  ``a[i]`` and ``a[r]``;
* the participant at Harary position ``p`` is ``a[p]``.

Trust note
----------
The seed must be *public round randomness* that the server cannot choose
freely. A server that could pick the seed at will could try many seeds
("grind" permutations) until colluding clients surround a victim, which would
void the hypergeometric bound. The seed is therefore bound to the round: it is
derived from the round id together with randomness the server commits to before
it learns the participant list (or a public beacon), and clients recompute the
graph themselves and refuse a round whose graph differs. Never derive it from
:mod:`random` or anything the server picks after seeing who joined.

Two parties
-----------
With two participants pairwise masking hides nothing: the sum and one's own
input reveal the other input. Both constructors refuse fewer than three
participants (:func:`crypto.rules.require_masking_parties`); for two parties
use an attested aggregator and/or differential privacy instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from sealagg.crypto.rules import TWO_PARTY_EXPLANATION, require_masking_parties

__all__ = [
    "GRAPH_DOMAIN",
    "MIN_SEED_BYTES",
    "TWO_PARTY_EXPLANATION",
    "CommunicationGraph",
    "complete_graph",
    "harary_graph",
]

#: Domain-separation label of the permutation keystream.
GRAPH_DOMAIN = b"sealagg/graph/v1"
#: Shortest accepted graph seed (public round randomness).
MIN_SEED_BYTES = 16


@dataclass(frozen=True)
class CommunicationGraph:
    """An undirected graph on client ids: an edge means "mask with and share to".

    ``participants`` is normalised to a sorted tuple and ``adjacency`` to a
    read-only mapping from each participant to the sorted tuple of its
    neighbours. Construction checks that the graph is simple and undirected
    (symmetric, no self loops, no unknown ids).
    """

    participants: tuple[int, ...]
    adjacency: Mapping[int, tuple[int, ...]] = field(hash=False)

    def __post_init__(self) -> None:
        ids = _validate_ids(self.participants)
        known = set(ids)
        if set(self.adjacency) != known:
            raise ValueError("adjacency must have exactly one entry per participant")
        adjacency: dict[int, tuple[int, ...]] = {}
        for cid in ids:
            nbrs = tuple(sorted(self.adjacency[cid]))
            if len(set(nbrs)) != len(nbrs):
                raise ValueError(f"client {cid} lists a neighbour twice")
            if cid in nbrs:
                raise ValueError(f"client {cid} is listed as its own neighbour")
            unknown = set(nbrs) - known
            if unknown:
                raise ValueError(
                    f"client {cid} has neighbours {sorted(unknown)} that are not participants"
                )
            adjacency[cid] = nbrs
        edges = {(cid, other) for cid, nbrs in adjacency.items() for other in nbrs}
        for cid, other in edges:
            if (other, cid) not in edges:
                raise ValueError(
                    f"adjacency is not symmetric: {other} is a neighbour of {cid} "
                    f"but not the other way round"
                )
        object.__setattr__(self, "participants", ids)
        object.__setattr__(self, "adjacency", MappingProxyType(adjacency))

    def neighbours(self, client_id: int) -> tuple[int, ...]:
        """The sorted neighbours of ``client_id`` (never the client itself)."""
        try:
            return self.adjacency[client_id]
        except (KeyError, TypeError):
            raise KeyError(
                f"client {client_id!r} is not a participant of this graph "
                f"({len(self.participants)} participants)"
            ) from None

    @property
    def num_participants(self) -> int:
        return len(self.participants)

    @property
    def degree(self) -> int:
        """k, the number of neighbours of every client (n-1 for the complete graph).

        Raises ``ValueError`` for a graph that is not regular.
        """
        degrees = {len(nbrs) for nbrs in self.adjacency.values()}
        if len(degrees) != 1:
            raise ValueError(f"graph is not regular (degrees {sorted(degrees)})")
        return degrees.pop()

    @property
    def is_complete(self) -> bool:
        """True when every client is a neighbour of every other client."""
        n = len(self.participants)
        return all(len(nbrs) == n - 1 for nbrs in self.adjacency.values())

    def __contains__(self, client_id: object) -> bool:
        return client_id in self.adjacency


def complete_graph(participants: Iterable[int]) -> CommunicationGraph:
    """The complete graph of SecAgg: everyone is everyone's neighbour."""
    ids = _validate_ids(participants)
    require_masking_parties(len(ids))
    return _complete(ids)


def harary_graph(participants: Iterable[int], degree: int, seed: bytes) -> CommunicationGraph:
    """The SecAgg+ graph: a k-regular Harary graph over a seed-derived permutation.

    ``degree`` is k. For odd k the number of participants must be even (a
    k-regular graph on an odd number of vertices does not exist). If
    ``degree >= n - 1`` the complete graph is returned. ``seed`` is public
    round randomness of at least 16 bytes bound to the round id (see the module
    docstring); the same seed always yields the same graph.
    """
    ids = _validate_ids(participants)
    require_masking_parties(len(ids))
    if isinstance(degree, bool) or not isinstance(degree, int):
        raise TypeError("degree must be an int")
    if degree < 2:
        raise ValueError(f"degree must be at least 2 (got {degree})")
    if not isinstance(seed, bytes | bytearray | memoryview):
        raise TypeError("seed must be bytes (public round randomness)")
    seed = bytes(seed)
    if len(seed) < MIN_SEED_BYTES:
        raise ValueError(f"seed must be at least {MIN_SEED_BYTES} bytes (got {len(seed)})")
    n = len(ids)
    if degree >= n - 1:
        return _complete(ids)
    if degree % 2 == 1 and n % 2 == 1:
        raise ValueError(
            f"no {degree}-regular graph exists on {n} participants (odd degree needs an "
            f"even number of participants); pick an even degree such as {degree + 1}"
        )
    order = _permute(ids, seed)
    half = degree // 2
    adjacency: dict[int, tuple[int, ...]] = {}
    for pos, cid in enumerate(order):
        nbr_pos = {(pos + d) % n for d in range(1, half + 1)}
        nbr_pos |= {(pos - d) % n for d in range(1, half + 1)}
        if degree % 2 == 1:
            nbr_pos.add((pos + n // 2) % n)
        adjacency[cid] = tuple(sorted(order[p] for p in nbr_pos))
    return CommunicationGraph(participants=ids, adjacency=adjacency)


def _validate_ids(participants: Iterable[int]) -> tuple[int, ...]:
    ids = list(participants)
    for cid in ids:
        if isinstance(cid, bool) or not isinstance(cid, int):
            raise TypeError(f"client ids must be ints (got {cid!r})")
        if cid <= 0:
            raise ValueError(f"client ids must be positive (got {cid})")
    if len(set(ids)) != len(ids):
        dupes = sorted({cid for cid in ids if ids.count(cid) > 1})
        raise ValueError(f"client ids must be distinct (repeated: {dupes})")
    return tuple(sorted(ids))


def _complete(ids: tuple[int, ...]) -> CommunicationGraph:
    adjacency = {cid: tuple(x for x in ids if x != cid) for cid in ids}
    return CommunicationGraph(participants=ids, adjacency=adjacency)


class _Keystream:
    """SHA-256 in counter mode over (domain ‖ seed ‖ counter), read byte by byte."""

    def __init__(self, seed: bytes) -> None:
        self._prefix = GRAPH_DOMAIN + seed
        self._counter = 0
        self._buffer = b""
        self._pos = 0

    def read(self, count: int) -> bytes:
        while len(self._buffer) - self._pos < count:
            block = hashlib.sha256(self._prefix + self._counter.to_bytes(8, "big")).digest()
            self._buffer = self._buffer[self._pos :] + block
            self._pos = 0
            self._counter += 1
        out = self._buffer[self._pos : self._pos + count]
        self._pos += count
        return out

    def below_or_equal(self, bound: int) -> int:
        """A uniform integer in ``0..bound`` by masked rejection sampling."""
        bits = bound.bit_length()
        mask = (1 << bits) - 1
        nbytes = (bits + 7) // 8
        while True:
            r = int.from_bytes(self.read(nbytes), "big") & mask
            if r <= bound:
                return r


def _permute(ids: tuple[int, ...], seed: bytes) -> tuple[int, ...]:
    """Unbiased Fisher-Yates shuffle of the sorted ids driven by the seed keystream."""
    order = list(ids)
    stream = _Keystream(seed)
    for i in range(len(order) - 1, 0, -1):
        j = stream.below_or_equal(i)
        order[i], order[j] = order[j], order[i]
    return tuple(order)
