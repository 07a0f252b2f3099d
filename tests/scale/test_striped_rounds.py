"""Striped rounds on a local 3-node Ray cluster give bit-identical sums to the one-process
protocol (same config, identities, inputs and dropouts), for W in {1, 2, 3, 7} stripes of
unequal sizes, secagg (complete graph) and secagg+ (sparse graph with coins), 0/10/30 %
dropouts; one survivor list for all stripes; each stripe's measured peak memory stays
within its share plus a stated constant; and (last: it takes a node away) a worker node
removed mid-round aborts the round cleanly while the next round completes on the other.

One cluster for the whole session (tests/scale/conftest.py: a head and two workers, one CPU
each, 80 MB object stores): starting one takes 20-200 s on this loaded 2-core machine, so
every test shares it; the node-loss test adds a replacement worker when it is done."""

from __future__ import annotations

import numpy as np
import pytest
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from sealagg_testkit.striped import stripe_pool

from sealagg.appliance.scale.cluster import STRIPE_RESOURCE, stripe_options
from sealagg.appliance.scale.coordinator import (
    StripedRound,
    StripeLostError,
    plan_stripes,
    stripe_actor_class,
)
from sealagg.appliance.scale.local import run_striped_round
from sealagg.appliance.scale.stripe import StripeRefusedError
from sealagg.crypto import Phase, QuantizationSpec, decode_sum, encode_update, encoded_length
from sealagg.crypto.errors import DuplicateMessageError, UnknownSenderError
from sealagg.crypto.messages import MaskedInput
from sealagg.crypto.simulation import run_round
from sealagg.crypto.testing import make_round

N = 10
DIMENSION = 20_003
CHUNK_WORDS = 4_096  # several chunks per stripe: staging is exercised
WEIGHTS = {1: [1], 2: [3, 1], 3: [1, 2, 4], 7: [1, 2, 3, 1, 5, 1, 2]}
#: 10 %: one client gone after sharing keys (its pairwise masks are rebuilt); 30 %: one
#: before sharing, one before masking, one survivor silent at unmasking.
DROPOUTS = {
    0: {},
    10: {4: Phase.MASKED_INPUT},
    30: {2: Phase.SHARE_KEYS, 5: Phase.MASKED_INPUT, 9: Phase.UNMASKING},
}
#: secagg+ draws a random graph (degrees vary, 6..9 seen for k=8): t=2 keeps every drawn
#: graph recoverable under the 30 % schedule, so the test never flakes on a legitimate abort.
MODES = {"secagg": {"threshold": 5}, "secagg+": {"threshold": 2, "degree": 8}}
#: Allowance above a stripe's share (accumulator + staged client ranges): the PRG's
#: 512 KiB scratch, one 256 KiB chunk in flight and Ray's call buffers.
MEMORY_CONSTANT = 2 << 20  # measured: 0.3-0.7 MiB above the share


@pytest.fixture(scope="module")
def stripes(cluster):
    yield from stripe_pool(max(WEIGHTS))


def one_round(pool, mode: str, w: int, rate: int, seed: int, *, on_phase=None):
    kit = make_round(N, dimension=DIMENSION, seed=seed, **MODES[mode])
    dropouts = DROPOUTS[rate]
    reference = run_round(kit.config, kit.identities, kit.inputs, dropouts)
    ranges = plan_stripes(DIMENSION, WEIGHTS[w])
    striped = StripedRound(kit.config, pool[:w], ranges, chunk_words=CHUNK_WORDS)
    outcome = run_striped_round(striped, kit.identities, kit.inputs, dropouts, on_phase=on_phase)
    return kit, reference, outcome, striped


def assert_identical(kit, reference, outcome) -> None:
    assert outcome.survivors == reference.survivors
    assert outcome.dropped_after_masking == reference.dropped_after_masking
    assert outcome.dropped_before_masking == reference.dropped_before_masking
    assert outcome.total.dtype == np.uint32
    assert np.array_equal(outcome.total, reference.total)
    assert np.array_equal(outcome.total, kit.expected_sum(outcome.survivors))


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("w", sorted(WEIGHTS))
def test_every_stripe_count_matches_the_one_process_sum(stripes, mode: str, w: int) -> None:
    kit, reference, outcome, _ = one_round(stripes, mode, w, 10, seed=w)
    assert_identical(kit, reference, outcome)
    assert 4 not in outcome.survivors


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("rate", [0, 30])
def test_dropout_rates_on_three_stripes(stripes, mode: str, rate: int) -> None:
    kit, reference, outcome, _ = one_round(stripes, mode, 3, rate, seed=100 + rate)
    assert_identical(kit, reference, outcome)
    assert len(outcome.survivors) == N - (2 if rate else 0)  # 9 survived masking, then fell silent


def test_a_client_complete_on_one_stripe_only_counts_nowhere(stripes) -> None:
    """Client 4 never sends its masked input; its whole range of stripe 0 is staged anyway
    (a front-end that forwarded half an upload). It must be a survivor on no stripe."""
    ranges = plan_stripes(DIMENSION, WEIGHTS[3])

    def half_upload(phase: Phase, striped: StripedRound) -> None:
        if phase is Phase.MASKED_INPUT:
            junk = np.arange(ranges[0].length, dtype="<u4").tobytes()
            striped.stripes[0].put.remote(striped.config.round_id, 4, 0, junk)
            assert 4 in ray.get(striped.stripes[0].complete.remote(striped.config.round_id))
            upload = MaskedInput(striped.config.round_id, bytes(4 * DIMENSION))
            with pytest.raises(DuplicateMessageError):  # client 1 uploaded already
                striped.receive(1, upload)
            with pytest.raises(UnknownSenderError):  # refused before any chunk is staged
                striped.receive(99, upload)

    kit, reference, outcome, _ = one_round(stripes, "secagg", 3, 10, seed=7, on_phase=half_upload)
    assert_identical(kit, reference, outcome)
    assert 4 not in outcome.survivors


def test_stripes_dequantize_their_ranges_like_decode_sum(stripes) -> None:
    """Real float updates, encoded with weights: the mean assembled from each stripe's own
    dequantization equals decode_sum of the one-process sum, bit for bit."""
    n, d = 6, 5_000
    spec = QuantizationSpec(clip=1.0, max_clients=n)
    kit = make_round(n, dimension=encoded_length(d), seed=21, threshold=3)
    rng = np.random.default_rng(21)
    for u in kit.inputs:
        kit.inputs[u] = encode_update(rng.uniform(-1, 1, d).astype(np.float32), 0.3 + u / 10, spec)
    dropouts = {2: Phase.MASKED_INPUT}
    reference = run_round(kit.config, kit.identities, kit.inputs, dropouts)
    striped = StripedRound(
        kit.config, stripes[:3], plan_stripes(kit.config.vector_length, [2, 1, 3])
    )
    run_striped_round(striped, kit.identities, kit.inputs, dropouts)
    mean, weight = striped.decode(spec)
    ref_mean, ref_weight = decode_sum(reference.total, spec)
    assert weight == ref_weight
    assert mean.shape == (d,) and np.array_equal(mean, ref_mean)


def test_stripe_peak_memory_is_its_share_plus_a_constant(stripes) -> None:
    """Measured in each actor (tracemalloc, reset at the round's start): the accumulator and
    every staged client range are the share; the rest must fit MEMORY_CONSTANT."""
    n, d = 5, 400_003
    kit = make_round(n, dimension=d, seed=11, threshold=3)
    ranges = plan_stripes(d, [1, 1, 2])
    striped = StripedRound(kit.config, stripes[:3], ranges, chunk_words=1 << 16)
    outcome = run_striped_round(striped, kit.identities, kit.inputs)
    assert np.array_equal(outcome.total, kit.expected_sum(range(1, n + 1)))
    for rng, mem in zip(ranges, striped.memory(), strict=True):
        share = 4 * rng.length * (n + 1)
        print(f"stripe {rng}: peak {mem['peak']} B, share {share} B")  # shown with -s
        assert mem["peak"] >= 4 * rng.length * n, (rng, mem)  # the staging is real
        assert mem["peak"] <= share + MEMORY_CONSTANT, (rng, mem, share)


def test_node_loss_aborts_the_round_and_the_next_round_completes(restored_cluster) -> None:
    """Runs last in this module: it removes a worker node (restored_cluster adds a
    replacement afterwards: the session's cluster serves the modules after this one)."""
    cluster = restored_cluster
    n, d = 6, 9_001
    worker_a, worker_b = cluster.workers[:2]

    def on(node, count: int) -> list:
        pin = NodeAffinitySchedulingStrategy(node_id=node.node_id, soft=False)
        actor = stripe_actor_class(resources={STRIPE_RESOURCE: 1}, scheduling_strategy=pin)
        return [actor.remote() for _ in range(count)]

    stripes = on(worker_a, 1) + on(worker_b, 1)
    assert ray.get([s.node_id.remote() for s in stripes]) == [worker_a.node_id, worker_b.node_id]
    kit = make_round(n, dimension=d, seed=5, threshold=3)
    striped = StripedRound(kit.config, stripes, plan_stripes(d, [2, 1]), chunk_words=1_000)

    def lose_a_node(phase: Phase, _: StripedRound) -> None:
        if phase is Phase.MASKED_INPUT:  # every masked input is staged; none committed
            cluster.remove_worker(worker_a)

    with pytest.raises(StripeLostError):
        run_striped_round(striped, kit.identities, kit.inputs, on_phase=lose_a_node)
    assert striped.outcome is None and striped.aborted is not None
    with pytest.raises(StripeLostError):  # the aborted round takes nothing more
        striped.close_phase()
    with pytest.raises(ray.exceptions.RayTaskError) as refused:  # the other stripe forgot it
        ray.get(stripes[1].complete.remote(kit.config.round_id))
    assert isinstance(refused.value.cause, StripeRefusedError)

    # The next round: fresh stripes (SPREAD finds only the remaining worker), exact sum.
    fresh = [stripe_actor_class(**stripe_options()).remote() for _ in range(3)]
    assert set(ray.get([s.node_id.remote() for s in fresh])) == {worker_b.node_id}
    kit2 = make_round(n, dimension=d, seed=6, threshold=3)
    nxt = StripedRound(kit2.config, fresh, plan_stripes(d, [1, 3, 1]), chunk_words=1_000)
    outcome = run_striped_round(nxt, kit2.identities, kit2.inputs, {3: Phase.MASKED_INPUT})
    assert 3 not in outcome.survivors
    assert np.array_equal(outcome.total, kit2.expected_sum(outcome.survivors))
