"""Who exchanges pairwise masks and secret shares with whom.

SecAgg (Bonawitz et al., CCS 2017) uses the *complete* graph: every client masks
with, and secret-shares its keys to, every other client. SecAgg+ (Bell et al.,
CCS 2020) replaces it with a sparse random graph of expected degree k = O(log n).
We use the Erdos-Renyi graph of Bell et al.: every pair of participants is an
edge independently with probability ``p = k / (n - 1)``.

Why not a Harary ring
---------------------
A k-regular Harary graph has vertex cuts of size k: a malicious server that
"drops" two blocks of k/2 ring-adjacent clients cuts off the arc between them and
unmasks that arc's sum (a 9-client component at n=100, k=20). In a random graph a
small set has few edges inside and many to the outside, so cutting it off needs
more drops than the quorum allows, and its members lack the t live neighbours that
unmasking their self-masks needs; :func:`crypto.params.log2_partition_bound`
bounds the chance that any such set exists, for an adversary who chooses the
drops after seeing the graph. Edges being independent, that bound (and the
correctness and threshold-privacy bounds) are exact binomial tails.

Deterministic derivation
------------------------
Every party recomputes the same graph from the same ``seed``; nobody has to
trust a graph sent by the server. The wire contract (``tests/crypto/test_graph.py``
re-derives it independently):

* keystream = ``B_0 ‖ B_1 ‖ …`` with
  ``B_c = SHA-256(b"sealagg/graph/v2" ‖ seed ‖ c.to_bytes(8, "big"))``;
* participants sorted ascending ``a[0..n-1]``; the pairs ``(i, j)``, ``i < j``, in
  lexicographic order, pair number ``l`` reading keystream bytes ``8l .. 8l+8`` as a
  big-endian integer ``r``;
* ``a[i]`` and ``a[j]`` are neighbours iff ``r < floor(k · 2^64 / (n - 1))``
  (integer arithmetic only, so every platform derives the same graph).

Degrees vary around k; :attr:`CommunicationGraph.degree` is the *smallest* degree,
which the round checks against the threshold.

Trust note
----------
The seed must be public round randomness nobody can steer: a server (or colluding
clients) that could grind seeds could look for a graph in which colluders surround
a victim. It comes from commit-then-reveal coin tossing over the round transcript
(:mod:`crypto.coins`), and clients recompute the graph themselves.

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

import numpy as np

from sealagg.crypto.rules import TWO_PARTY_EXPLANATION, require_masking_parties

__all__ = [
    "GRAPH_DOMAIN",
    "MIN_SEED_BYTES",
    "TWO_PARTY_EXPLANATION",
    "CommunicationGraph",
    "complete_graph",
    "random_graph",
]

#: Domain-separation label of the permutation keystream.
GRAPH_DOMAIN = b"sealagg/graph/v2"
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
        """The fewest neighbours any client has (every client's number on a regular graph).

        Every client needs t live neighbours to hold its shares, so this is what the
        threshold is checked against (n-1 for the complete graph).
        """
        return min(len(nbrs) for nbrs in self.adjacency.values())

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


def random_graph(participants: Iterable[int], degree: int, seed: bytes) -> CommunicationGraph:
    """The SecAgg+ graph: each pair an edge with probability ``degree / (n - 1)``.

    ``degree`` is k, the expected number of neighbours. If ``degree >= n - 1`` the
    complete graph is returned. ``seed`` is public round randomness of at least 16
    bytes bound to the round (see the module docstring); the same seed always yields
    the same graph.
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
    bound = (degree << 64) // (n - 1)
    pairs = n * (n - 1) // 2
    words = np.frombuffer(_keystream(seed, 8 * pairs), dtype=">u8")
    edge = words < np.uint64(bound)
    rows, cols = np.triu_indices(n, k=1)  # lexicographic (i, j), i < j
    nbrs: dict[int, list[int]] = {cid: [] for cid in ids}
    for i, j in zip(rows[edge].tolist(), cols[edge].tolist(), strict=True):
        nbrs[ids[i]].append(ids[j])
        nbrs[ids[j]].append(ids[i])
    return CommunicationGraph(participants=ids, adjacency={c: tuple(v) for c, v in nbrs.items()})


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


def _keystream(seed: bytes, count: int) -> bytes:
    """``count`` bytes of SHA-256 in counter mode over (domain ‖ seed ‖ counter)."""
    prefix = GRAPH_DOMAIN + seed
    blocks = (count + 31) // 32
    out = b"".join(hashlib.sha256(prefix + c.to_bytes(8, "big")).digest() for c in range(blocks))
    return out[:count]
