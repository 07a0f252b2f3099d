"""The SecAgg / SecAgg+ communication graphs: shape, determinism, validation."""

from __future__ import annotations

import collections
import dataclasses
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealagg.crypto.graph import CommunicationGraph, _permute, complete_graph, harary_graph

SEED = b"public round randomness 0001"


def reference_order(ids, seed: bytes) -> list[int]:
    """The documented permutation, written out from the module docstring."""
    stream = b""
    counter = 0
    pos = 0

    def take(count: int) -> bytes:
        nonlocal stream, counter, pos
        while len(stream) - pos < count:
            stream += hashlib.sha256(
                b"sealagg/graph/v1" + seed + counter.to_bytes(8, "big")
            ).digest()
            counter += 1
        out = stream[pos : pos + count]
        pos += count
        return out

    order = sorted(ids)
    for i in range(len(order) - 1, 0, -1):
        w = i.bit_length()
        while True:
            r = int.from_bytes(take((w + 7) // 8), "big") % (1 << w)
            if r <= i:
                break
        order[i], order[r] = order[r], order[i]
    return order


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


@pytest.mark.parametrize(("n", "k"), [(20, 4), (21, 6), (50, 10), (7, 2), (100, 16)])
def test_harary_even_degree_is_k_regular_and_symmetric(n, k):
    g = harary_graph(range(1, n + 1), k, SEED)
    check_simple_undirected(g)
    assert g.degree == k
    assert all(len(g.neighbours(u)) == k for u in g.participants)
    assert not g.is_complete
    assert g.participants == tuple(range(1, n + 1))
    assert is_connected(g)


@pytest.mark.parametrize(("n", "k"), [(20, 5), (50, 11), (8, 3), (6, 3)])
def test_harary_odd_degree_with_even_n_is_k_regular(n, k):
    g = harary_graph(range(1, n + 1), k, SEED)
    check_simple_undirected(g)
    assert g.degree == k
    assert all(len(g.neighbours(u)) == k for u in g.participants)


def test_odd_degree_with_odd_n_asks_for_even_degree():
    with pytest.raises(ValueError, match="even degree"):
        harary_graph(range(1, 22), 5, SEED)


def test_layout_follows_the_documented_permutation():
    """Position i of the seed-derived order is joined to positions i±1..i±k/2 (+ i+n/2)."""
    ids = [3, 17, 4, 99, 23, 8, 42, 5, 61, 12, 7, 30]
    n = len(ids)
    for k in (4, 5):
        g = harary_graph(ids, k, SEED)
        order = reference_order(ids, SEED)
        for i, u in enumerate(order):
            expected = {order[(i + d) % n] for d in range(1, k // 2 + 1)}
            expected |= {order[(i - d) % n] for d in range(1, k // 2 + 1)}
            if k % 2:
                expected.add(order[(i + n // 2) % n])
            assert set(g.neighbours(u)) == expected


def test_permutation_known_answer():
    # Pinned so that independent client implementations can check themselves.
    assert _permute(tuple(range(1, 11)), bytes(range(16))) == (3, 1, 2, 8, 6, 7, 10, 5, 9, 4)
    assert reference_order(range(1, 11), bytes(range(16))) == [3, 1, 2, 8, 6, 7, 10, 5, 9, 4]


def test_permutation_is_uniform_for_three_clients():
    counts = collections.Counter(_permute((1, 2, 3), i.to_bytes(16, "big")) for i in range(6000))
    assert len(counts) == 6
    # Expected 1000 each, standard deviation ~29; a modulo-biased or broken shuffle
    # (e.g. the naive "swap with any position") lands far outside.
    assert all(880 <= c <= 1120 for c in counts.values()), counts


def test_same_seed_same_graph_different_seed_different_graph():
    ids = range(1, 41)
    g1 = harary_graph(ids, 6, SEED)
    g2 = harary_graph(list(reversed(range(1, 41))), 6, bytes(SEED))
    assert g1 == g2
    assert dict(g1.adjacency) == dict(g2.adjacency)
    g3 = harary_graph(ids, 6, SEED[:-1] + b"2")
    assert dict(g3.adjacency) != dict(g1.adjacency)
    assert _permute(tuple(ids), SEED) != _permute(tuple(ids), SEED[:-1] + b"2")


def test_complete_graph():
    g = complete_graph([5, 2, 9, 1])
    check_simple_undirected(g)
    assert g.participants == (1, 2, 5, 9)
    assert g.neighbours(5) == (1, 2, 9)
    assert g.degree == 3
    assert g.is_complete
    assert 9 in g and 3 not in g


@pytest.mark.parametrize("k", [9, 10, 50])
def test_harary_with_degree_at_least_n_minus_1_is_complete(k):
    g = harary_graph(range(1, 11), k, SEED)
    assert g.is_complete
    assert g == complete_graph(range(1, 11))


def test_unknown_client_is_a_clear_key_error():
    g = harary_graph(range(1, 11), 4, SEED)
    with pytest.raises(KeyError, match="not a participant"):
        g.neighbours(11)


@pytest.mark.parametrize("build", [complete_graph, lambda ids: harary_graph(ids, 2, SEED)])
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
        harary_graph(ids, degree, seed)


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
    with pytest.raises(ValueError, match="not regular"):
        _ = g.degree
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
def test_property_symmetric_regular_no_self_loops(params):
    ids, k, seed = params
    n = len(ids)
    if k < n - 1 and k % 2 == 1 and n % 2 == 1:
        with pytest.raises(ValueError, match="even degree"):
            harary_graph(ids, k, seed)
        return
    g = harary_graph(ids, k, seed)
    assert g.participants == tuple(sorted(ids))
    check_simple_undirected(g)
    assert g.degree == min(k, n - 1)
    assert all(len(g.neighbours(u)) == min(k, n - 1) for u in ids)
    assert g.is_complete == (k >= n - 1)
    assert is_connected(g)
    assert g == harary_graph(ids, k, seed)
