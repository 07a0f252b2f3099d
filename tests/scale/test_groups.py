"""Many clients per round: the public grouping rule (no Ray), grouped rounds with real
protocol clients through the one-process server, and one grouped round on Ray stripes
that must give the same total, bit for bit.

The total of a grouped round is the Z_(2^32) sum of every group's survivors' inputs; a
group that falls below its quorum aborts the whole round (nothing is returned)."""

from __future__ import annotations

import numpy as np
import pytest

from sealagg.appliance.scale.groups import (
    GroupAbortedError,
    group_configs,
    run_grouped_round,
    striped_runner,
)
from sealagg.crypto import Phase
from sealagg.crypto.errors import BelowThresholdError, PolicyRefusedError
from sealagg.crypto.groups import (
    GroupingRefusedError,
    group_round_id,
    plan_groups,
    verify_group,
)
from sealagg.crypto.policy import FederationPolicy
from sealagg.crypto.simulation import run_round
from sealagg.crypto.testing import make_round

RID = bytes(range(32))
OTHER_RID = bytes(range(1, 33))


@pytest.mark.parametrize(
    ("n", "max_size", "m"),
    [(3, 3, 3), (10, 100, 3), (13, 5, 3), (40, 9, 4), (101, 10, 5), (1000, 64, 3), (20, 6, 5)],
)
def test_groups_are_balanced_bounded_and_cover_everyone(n: int, max_size: int, m: int) -> None:
    plan = plan_groups(RID, range(1, n + 1), max_size, m)
    sizes = [len(g) for g in plan.groups]
    assert len(plan.groups) == -(-n // max_size)  # as few groups as the maximum allows
    assert max(sizes) - min(sizes) <= 1
    assert min(sizes) >= max(m, 3) and max(sizes) <= max_size
    assert sorted(u for g in plan.groups for u in g) == list(range(1, n + 1))
    assert all(list(g) == sorted(g) for g in plan.groups)
    assert all(plan.group_of(u) == i for i, g in enumerate(plan.groups) for u in g)


@pytest.mark.parametrize(
    ("n", "max_size", "m"),
    [(7, 5, 4), (2, 10, 3), (0, 10, 3), (20, 4, 5), (11, 5, 4)],
)
def test_a_split_below_the_minimum_sum_is_refused(n: int, max_size: int, m: int) -> None:
    with pytest.raises(GroupingRefusedError, match="minimum sum"):
        plan_groups(RID, range(1, n + 1), max_size, m)
    assert issubclass(GroupingRefusedError, PolicyRefusedError)


def test_the_split_is_fixed_by_round_id_and_clients_only() -> None:
    clients = list(range(1, 61))
    plan = plan_groups(RID, clients, 10, 3)
    shuffled = list(clients)
    np.random.default_rng(0).shuffle(shuffled)
    assert plan_groups(RID, shuffled, 10, 3) == plan  # input order does not matter
    other = plan_groups(OTHER_RID, clients, 10, 3)
    assert other.groups != plan.groups  # another round, another split
    # Group round ids: 32 bytes, distinct per group and per round.
    ids = {plan.round_id_of(i) for i in range(6)} | {other.round_id_of(i) for i in range(6)}
    assert len(ids) == 12 and all(len(r) == 32 for r in ids)
    swapped = (*plan.groups[0][1:], plan.groups[1][0])  # same count and index, other members
    assert group_round_id(RID, 6, 0, plan.groups[0]) == plan.round_id_of(0)
    assert group_round_id(RID, 6, 0, swapped) != plan.round_id_of(0)
    # A client recomputes its group and refuses any other.
    assert verify_group(RID, shuffled, 10, 3, 2, plan.groups[2]) == plan.round_id_of(2)
    moved = (*plan.groups[2][1:], plan.groups[3][0])
    with pytest.raises(GroupingRefusedError, match="not the group"):
        verify_group(RID, clients, 10, 3, 2, moved)
    with pytest.raises(GroupingRefusedError):
        verify_group(RID, clients, 10, 3, 6, plan.groups[2])


def _grouped_kit(seed: int, n: int = 13, dimension: int = 257):
    kit = make_round(n, threshold=3, dimension=dimension, seed=seed)
    policy = FederationPolicy()
    plan = plan_groups(RID, kit.identities, 5, policy.minimum_sum)
    keys = {u: k.verify_key_bytes for u, k in kit.identities.items()}
    configs = group_configs(plan, keys, threshold=2, vector_length=dimension, policy=policy)
    return kit, plan, configs


def test_group_configs_meet_the_policy_per_group() -> None:
    kit, plan, configs = _grouped_kit(1, dimension=9)
    assert [len(g) for g in plan.groups] == [5, 4, 4]
    for i, config in enumerate(configs):
        assert config.participants == plan.groups[i]
        assert config.round_id == plan.round_id_of(i)
        assert config.minimum_survivors >= 3  # every revealed group sum covers >= m
    keys = {u: k.verify_key_bytes for u, k in kit.identities.items()}
    with pytest.raises(PolicyRefusedError, match="threshold"):  # t=2 <= c=2 colluders
        group_configs(
            plan_groups(RID, kit.identities, 5, 4),
            keys,
            threshold=2,
            vector_length=9,
            policy=FederationPolicy(colluders=2, minimum_sum=4),
        )


def _dropouts(plan) -> dict[int, Phase]:
    """Group 0 (5 clients, t=2): one survivor silent at unmasking (its 4 peers hold its
    shares); group 1 (4 clients, quorum 3): one client silent before masking."""
    return {plan.groups[0][0]: Phase.UNMASKING, plan.groups[1][1]: Phase.MASKED_INPUT}


def test_grouped_total_is_the_sum_over_every_survivor() -> None:
    kit, plan, configs = _grouped_kit(2)
    dropouts = _dropouts(plan)
    outcome = run_grouped_round(
        plan, configs, kit.identities, kit.inputs, dropouts, run_group=run_round
    )
    gone = plan.groups[1][1]
    assert outcome.survivors == tuple(u for u in range(1, 14) if u != gone)
    assert outcome.groups[1].dropped_after_masking == (gone,)  # its pair masks are rebuilt
    assert plan.groups[0][0] in outcome.groups[0].survivors  # masked, then silent: counted
    assert outcome.groups[2].survivors == plan.groups[2]
    assert outcome.total.dtype == np.uint32
    assert np.array_equal(outcome.total, kit.expected_sum(outcome.survivors))
    # The same as each group through the one-process server, added in Z_(2^32).
    by_group = np.zeros(257, dtype=np.uint32)
    for members, config in zip(plan.groups, configs, strict=True):
        ref = run_round(
            config,
            {u: kit.identities[u] for u in members},
            {u: kit.inputs[u] for u in members},
            {u: p for u, p in dropouts.items() if u in members},
        )
        by_group += ref.total
    assert np.array_equal(outcome.total, by_group)


def test_a_group_below_its_quorum_aborts_the_whole_round() -> None:
    kit, plan, configs = _grouped_kit(3)
    small = plan.groups[2]  # 4 clients, quorum 3: two silent before masking is too many
    dropouts = {small[0]: Phase.MASKED_INPUT, small[3]: Phase.MASKED_INPUT}
    with pytest.raises(GroupAbortedError, match="group 2") as aborted:
        run_grouped_round(plan, configs, kit.identities, kit.inputs, dropouts, run_group=run_round)
    assert aborted.value.index == 2 and aborted.value.members == small
    assert isinstance(aborted.value.__cause__, BelowThresholdError)


def test_grouped_round_on_ray_stripes_matches_the_one_process_groups(cluster) -> None:
    """Every group a StripedRound on two unequal stripes of the session's local Ray cluster
    (tests/scale/conftest.py)."""
    import ray

    from sealagg.appliance.scale.cluster import stripe_options
    from sealagg.appliance.scale.coordinator import stripe_actor_class

    kit, plan, configs = _grouped_kit(4)
    dropouts = _dropouts(plan)
    reference = run_grouped_round(
        plan, configs, kit.identities, kit.inputs, dropouts, run_group=run_round
    )
    actor = stripe_actor_class(**stripe_options())
    stripes = [actor.remote() for _ in range(2)]
    try:
        outcome = run_grouped_round(
            plan,
            configs,
            kit.identities,
            kit.inputs,
            dropouts,
            run_group=striped_runner(stripes, [3, 1], chunk_words=50),
        )
    finally:
        for stripe in stripes:
            ray.kill(stripe, no_restart=True)
    assert outcome.groups == reference.groups
    assert np.array_equal(outcome.total, reference.total)
    assert np.array_equal(outcome.total, kit.expected_sum(outcome.survivors))
