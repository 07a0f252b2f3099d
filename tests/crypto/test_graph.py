"""The SecAgg / SecAgg+ communication graphs: shape, determinism, validation."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealagg.crypto.graph import CommunicationGraph, complete_graph, random_graph

SEED = b"public round randomness 0001"


def reference_graph(ids, k: int, seed: bytes) -> dict[int, set[int]]:
    """The documented derivation, written out from the module docstring."""
    order = sorted(ids)
    n = len(order)
    nbrs: dict[int, set[int]] = {u: set() for u in order}
    if k >= n - 1:
        return {u: set(order) - {u} for u in order}
    bound = (k << 64) // (n - 1)
    stream = b"".join(
        hashlib.sha256(b"sealagg/graph/v2" + seed + c.to_bytes(8, "big")).digest()
        for c in range(n * n // 8 + 1)
    )
    pair = 0
    for i in range(n):
        for j in range(i + 1, n):
            r = int.from_bytes(stream[8 * pair : 8 * pair + 8], "big")
            if r < bound:
                nbrs[order[i]].add(order[j])
                nbrs[order[j]].add(order[i])
            pair += 1
    return nbrs


def harary_ring(ids, k: int) -> dict[int, set[int]]:
    """The old SecAgg+ graph (k-regular Harary ring, identity placement) for the attack."""
    order = sorted(ids)
    n = len(order)
    return {
        u: {order[(i + d) % n] for d in range(-(k // 2), k // 2 + 1) if d}
        for i, u in enumerate(order)
    }


def components(adjacency, alive) -> list[set[int]]:
    left, out = set(alive), []
    while left:
        start = left.pop()
        comp, todo = {start}, [start]
        while todo:
            for v in adjacency[todo.pop()]:
                if v in left:
                    left.discard(v)
                    comp.add(v)
                    todo.append(v)
        out.append(comp)
    return out


def adjacent_block_attack(adjacency, order, k: int, t: int) -> list[set[int]]:
    """Drop two blocks of k/2 ring-adjacent clients; return the unmaskable small components.

    A component is unmaskable when each member has t live neighbours inside it (there are
    no colluders here), so the server can remove every member's self-mask.
    """
    n, half = len(order), k // 2
    found = []
    for gap in range(1, n // 2):
        dropped = {order[i % n] for i in range(half)} | {
            order[(half + gap + i) % n] for i in range(half)
        }
        alive = set(order) - dropped
        for comp in components(adjacency, alive):
            if all(len(adjacency[u] & comp) >= t for u in comp) and len(comp) < len(alive):
                found.append(comp)
    return found


def check_simple_undirected(g: CommunicationGraph) -> None:
    assert list(g.participants) == sorted(set(g.participants))
    edges = set()
    for u in g.participants:
        nbrs = g.neighbours(u)
        assert u not in nbrs
        assert list(nbrs) == sorted(set(nbrs))
        edges |= {(u, v) for v in nbrs}
    assert all((v, u) in edges for u, v in edges)


def is_connected(g: CommunicationGraph) -> bool:
    start = g.participants[0]
    seen = {start}
    todo = [start]
    while todo:
        for v in g.neighbours(todo.pop()):
            if v not in seen:
                seen.add(v)
                todo.append(v)
    return len(seen) == len(g.participants)


def test_layout_follows_the_documented_derivation():
    ids = [3, 17, 4, 99, 23, 8, 42, 5, 61, 12, 7, 30, 77, 2, 64]
    for k in (4, 7):
        g = random_graph(ids, k, SEED)
        assert {u: set(g.neighbours(u)) for u in ids} == reference_graph(ids, k, SEED)


def test_known_answer():
    # Pinned so that independent client implementations can check themselves.
    g = random_graph(range(1, 11), 4, bytes(range(16)))
    assert g.neighbours(1) == tuple(sorted(reference_graph(range(1, 11), 4, bytes(range(16)))[1]))


def test_expected_degree_and_independence():
    g = random_graph(range(1, 401), 20, SEED)
    degrees = [len(g.neighbours(u)) for u in g.participants]
    assert 19.0 <= sum(degrees) / len(degrees) <= 21.0
    check_simple_undirected(g)
    assert is_connected(g)


def test_same_seed_same_graph_different_seed_different_graph():
    ids = range(1, 41)
    g1 = random_graph(ids, 6, SEED)
    g2 = random_graph(list(reversed(range(1, 41))), 6, bytes(SEED))
    assert g1 == g2
    assert dict(g1.adjacency) == dict(g2.adjacency)
    g3 = random_graph(ids, 6, SEED[:-1] + b"2")
    assert dict(g3.adjacency) != dict(g1.adjacency)
    import sealagg.crypto as public
    import sealagg.crypto.graph as graph_module

    assert not hasattr(graph_module, "harary_graph")  # the alias is gone
    assert public.random_graph is random_graph


@pytest.mark.parametrize(("n", "k", "t"), [(100, 20, 8), (50, 20, 8)])
def test_adjacent_block_attack_isolated_a_component_on_the_harary_ring(n, k, t):
    """Before: dropping two blocks of k/2 ring neighbours cut off a 9-client arc."""
    ring = harary_ring(range(1, n + 1), k)
    found = adjacent_block_attack(ring, list(range(1, n + 1)), k, t)
    assert min(len(c) for c in found) == 9


@pytest.mark.parametrize(("n", "k", "t", "floor"), [(100, 57, 24, 45), (50, 41, 19, 22)])
def test_adjacent_block_attack_cuts_off_nothing_on_the_random_graph(n, k, t, floor):
    """After: with the finder's (k, t) no unmaskable component below the floor, any seed.

    The floor is half of the honest clients, ``(n - c) / 2`` for the policy's c: the
    partition bound promises no smaller set can be cut off and unmasked.
    """
    for s in range(60):
        g = random_graph(range(1, n + 1), k, SEED + s.to_bytes(4, "big"))
        adjacency = {u: set(g.neighbours(u)) for u in g.participants}
        found = adjacent_block_attack(adjacency, list(range(1, n + 1)), k, t)
        assert all(len(c) >= floor for c in found), (s, sorted(map(len, found)))


def test_complete_graph():
    g = complete_graph([5, 2, 9, 1])
    check_simple_undirected(g)
    assert g.participants == (1, 2, 5, 9)
    assert g.neighbours(5) == (1, 2, 9)
    assert g.degree == 3
    assert g.is_complete
    assert 9 in g and 3 not in g


@pytest.mark.parametrize("k", [9, 10, 50])
def test_random_graph_with_degree_at_least_n_minus_1_is_complete(k):
    g = random_graph(range(1, 11), k, SEED)
    assert g.is_complete
    assert g == complete_graph(range(1, 11))


def test_unknown_client_is_a_clear_key_error():
    g = random_graph(range(1, 11), 4, SEED)
    with pytest.raises(KeyError, match="not a participant"):
        g.neighbours(11)


@pytest.mark.parametrize("build", [complete_graph, lambda ids: random_graph(ids, 2, SEED)])
def test_two_parties_are_refused_with_an_explanation(build):
    with pytest.raises(ValueError, match="two parties") as err:
        build([1, 2])
    assert "attested aggregator" in str(err.value)
    with pytest.raises(ValueError, match="at least 3"):
        build([1])


@pytest.mark.parametrize(
    ("ids", "degree", "seed", "exc"),
    [
        ([1, 2, 2, 3], 2, SEED, ValueError),  # duplicate
        ([0, 1, 2, 3], 2, SEED, ValueError),  # non-positive
        ([-1, 1, 2, 3], 2, SEED, ValueError),
        ([1, 2, 3, 4.0], 2, SEED, TypeError),
        ([True, 2, 3, 4], 2, SEED, TypeError),
        (range(1, 10), 1, SEED, ValueError),  # degree < 2
        (range(1, 10), 0, SEED, ValueError),
        (range(1, 10), 4.0, SEED, TypeError),
        (range(1, 10), 4, b"short seed", ValueError),  # < 16 bytes
        (range(1, 10), 4, "a string seed of many bytes", TypeError),
    ],
)
def test_invalid_inputs_raise(ids, degree, seed, exc):
    with pytest.raises(exc):
        random_graph(ids, degree, seed)


def test_graph_constructor_rejects_broken_adjacency():
    with pytest.raises(ValueError, match="symmetric"):
        CommunicationGraph((1, 2, 3), {1: (2,), 2: (), 3: ()})
    with pytest.raises(ValueError, match="own neighbour"):
        CommunicationGraph((1, 2, 3), {1: (1,), 2: (), 3: ()})
    with pytest.raises(ValueError, match="not participants"):
        CommunicationGraph((1, 2, 3), {1: (4,), 2: (), 3: ()})
    with pytest.raises(ValueError, match="one entry per participant"):
        CommunicationGraph((1, 2, 3), {1: (), 2: ()})


def test_graph_is_immutable_and_reports_irregularity():
    g = CommunicationGraph((3, 1, 2), {1: (2,), 2: (1,), 3: ()})
    assert g.participants == (1, 2, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.participants = (1,)  # type: ignore[misc]
    with pytest.raises(TypeError):
        g.adjacency[3] = (1,)  # type: ignore[index]
    assert g.degree == 0  # the fewest neighbours of any client
    assert not g.is_complete
    hash(g)


@st.composite
def graph_params(draw):
    n = draw(st.integers(3, 200))
    k = draw(st.integers(2, n + 1))
    ids = draw(st.lists(st.integers(1, 10**9), min_size=n, max_size=n, unique=True))
    seed = draw(st.binary(min_size=16, max_size=40))
    return ids, k, seed


@settings(max_examples=100, deadline=None)
@given(graph_params())
def test_property_symmetric_no_self_loops_deterministic(params):
    ids, k, seed = params
    n = len(ids)
    g = random_graph(ids, k, seed)
    assert g.participants == tuple(sorted(ids))
    check_simple_undirected(g)
    assert g.is_complete == (k >= n - 1) or g.is_complete
    if k >= n - 1:
        assert g.degree == n - 1
    assert g == random_graph(ids, k, seed)
