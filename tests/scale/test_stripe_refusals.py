"""A stripe in process (no Ray): it stages, refuses what does not fit its round, adds only
committed survivors that it holds completely, and removes exactly its range of each mask."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sealagg.appliance.scale.coordinator import plan_stripes
from sealagg.appliance.scale.stripe import Stripe, StripeRefusedError
from sealagg.crypto import SecAggClient
from sealagg.crypto.errors import MalformedMessageError
from sealagg.crypto.mask_slice import mask_range
from sealagg.crypto.messages import MaskedInput, Phase
from sealagg.crypto.striped_server import StripedSecAggServer
from sealagg.crypto.testing import make_round

RID = b"r" * 32


def words(values) -> bytes:
    return np.asarray(values, dtype="<u4").tobytes()


@pytest.fixture
def stripe() -> Stripe:
    s = Stripe()
    s.begin(RID, start=10, length=6)  # coordinates 10..15
    return s


def test_commit_adds_only_survivors_and_unmask_removes_its_range(stripe: Stripe) -> None:
    stripe.put(RID, 1, 10, words([1, 2, 3]))
    stripe.put(RID, 1, 13, words([4, 5, 6]))
    stripe.put(RID, 2, 10, words([2**32 - 1] * 6))
    stripe.put(RID, 3, 10, words([7] * 3))  # incomplete: never a survivor
    assert stripe.complete(RID) == [1, 2]
    stripe.commit(RID, [1, 2])
    key = b"k" * 32
    total = np.frombuffer(stripe.unmask(RID, [(key, -1)]), dtype="<u4")
    expected = (np.array([0, 1, 2, 3, 4, 5], dtype=np.uint32) - mask_range(key, 10, 6)).astype(
        np.uint32
    )
    assert np.array_equal(total, expected)
    assert stripe.memory()["peak"] > 0


@pytest.mark.parametrize(
    ("client", "offset", "chunk", "match"),
    [
        (1, 9, words([1]), "outside"),
        (1, 15, words([1, 2]), "outside"),
        (1, 10, b"\x00\x01\x02", "whole number"),
        (1, 10, b"", "whole number"),
    ],
)
def test_stray_chunks_are_refused(stripe: Stripe, client, offset, chunk, match) -> None:
    with pytest.raises(StripeRefusedError, match=match):
        stripe.put(RID, client, offset, chunk)
    assert stripe.complete(RID) == []


def test_overlaps_late_chunks_partial_survivors_and_other_rounds_are_refused(
    stripe: Stripe,
) -> None:
    stripe.put(RID, 1, 10, words([1, 2, 3, 4]))
    with pytest.raises(StripeRefusedError, match="overlapping"):
        stripe.put(RID, 1, 13, words([9, 9]))
    with pytest.raises(StripeRefusedError, match="not serving"):
        stripe.put(b"x" * 32, 1, 14, words([5, 6]))
    with pytest.raises(StripeRefusedError, match="unmasking needs"):
        stripe.unmask(RID, [])
    with pytest.raises(StripeRefusedError, match="incomplete"):
        stripe.commit(RID, [1])  # a survivor list naming a client not held completely
    stripe.put(RID, 1, 14, words([5, 6]))
    stripe.commit(RID, [1])
    with pytest.raises(StripeRefusedError, match="committed"):
        stripe.put(RID, 2, 10, words([0] * 6))
    stripe.abort(RID)
    with pytest.raises(StripeRefusedError, match="not serving"):
        stripe.complete(RID)


def test_plan_stripes_tiles_the_vector_unequally() -> None:
    ranges = plan_stripes(20_003, [1, 2, 3, 1, 5, 1, 2])
    assert ranges[0].start == 0 and ranges[-1].stop == 20_003
    assert all(a.stop == b.start for a, b in itertools.pairwise(ranges))
    assert len({r.length for r in ranges}) > 1
    with pytest.raises(ValueError):
        plan_stripes(2, [1, 1, 1])


def test_striped_server_takes_blames_only_at_masked_input() -> None:
    """The coordinator's state machine refuses a masked input that still carries a vector:
    vectors go to the stripes, never into the one process that holds the keys."""
    kit = make_round(4, threshold=3, dimension=8)
    server = StripedSecAggServer(kit.config)
    clients = {u: SecAggClient(kit.config, u, kit.identities[u]) for u in kit.config.participants}
    for u, c in clients.items():
        c.set_input(kit.inputs[u])
        server.receive(u, c.advertise_keys())
    inbox = server.close_phase()
    while server.phase is not Phase.MASKED_INPUT:
        replies = {u: clients[u].handle(m) for u, m in inbox.items()}
        for u, r in replies.items():
            server.receive(u, r)
        inbox = server.close_phase()
    replies = {u: clients[u].handle(m) for u, m in inbox.items()}
    with pytest.raises(MalformedMessageError, match="blames only"):
        server.receive(1, replies[1])
    server.receive(1, MaskedInput(kit.config.round_id, b"", replies[1].blames))
