"""``sealagg serve`` with ``[scale]`` and ``max_group_size`` (issue 22): a grouped secagg+
round whose groups are all summed by the same Ray stripes, side by side, in lockstep.

Eight real shim clients over gRPC and mutual TLS, two groups of four: one member vanishes
just before its masked input (its group recovers its masks at quorum 3). The published model
is the weighted mean over all seven survivors (within the quantization bound); while the
round ran, every stripe held both groups' rounds at once (keyed by each group's round id),
and masked inputs were streamed to the stripes. A stripe killed in one group's round aborts
the whole round (nothing published); the next round, on the replaced stripe, publishes.
"""

from __future__ import annotations

import numpy as np
import pytest
import ray
from sealagg_testkit.audit import audit_details
from sealagg_testkit.striped import (
    MASKED_DEADLINES,
    assert_published_mean,
    one_round_without,
    two_rounds_with_a_stripe_killed,
)

from sealagg.appliance.grouped_round import GroupedRound
from sealagg.appliance.scale.stripe import Stripe, StripeRefusedError
from sealagg.client_shim import connection as shim_connection
from sealagg.crypto.groups import plan_groups

N = 8


def test_groups_run_side_by_side_on_the_same_stripes(
    cluster, deployment, running, monkeypatch
) -> None:
    monkeypatch.setattr(shim_connection, "CHUNK_BYTES", 40)  # uploads streamed in pieces
    dep = deployment(clients=N)
    dep.configure(
        aggregation={"mode": "secagg+", "min_clients": N, "rounds": 1, "max_group_size": 4},
        deadlines=MASKED_DEADLINES,
        scale={"stripes": [3, 1], "chunk_words": 16, "address": cluster.cluster.address},
    )
    held: list[list[list[bytes]]] = []  # what each stripe held, at each close
    streamed: list[int] = []
    original = GroupedRound.close_phase

    def close_phase(self):
        held.append(ray.get([s.rounds.remote() for s in self.groups[0].striped.stripes]))
        streamed.append(sum(len(g.streams) for g in self.groups))
        return original(self)

    monkeypatch.setattr(GroupedRound, "close_phase", close_phase)
    app = running(dep.folder)
    one_round_without(dep, app, N, "client5")

    (setup,) = audit_details(dep, "grouped_round")
    assert setup["stripes"] == 2 and [g["size"] for g in setup["groups"]] == [4, 4]
    plan = plan_groups(bytes.fromhex(setup["round_id"]), range(1, N + 1), 4, 3)
    assert [g["round_id"] for g in setup["groups"]] == [plan.round_id_of(i).hex() for i in range(2)]
    group_ids = {plan.round_id_of(i) for i in range(2)}
    # Every stripe held both groups at every close: lockstep, not one group after another.
    assert held and all({bytes(r) for r in rounds} == group_ids for at in held for rounds in at)
    assert max(streamed) == N - 1  # every masked input went to the stripes as it arrived
    (survivors,) = audit_details(dep, "grouped_round_survivors")
    assert sorted(n for g in survivors["groups"] for n in g["dropped"]) == ["client5"]


def test_a_stripe_lost_in_one_group_aborts_the_whole_round(
    cluster, deployment, running, monkeypatch
) -> None:
    """client0 kills a stripe before its round-1 masked input: its group cannot finish, so
    the whole round aborts (every member told why, nothing published); round 2, on the
    replaced stripe, publishes over everyone."""
    dep = deployment(clients=N)
    dep.configure(
        aggregation={"mode": "secagg+", "min_clients": N, "rounds": 2, "max_group_size": 4},
        deadlines=MASKED_DEADLINES,
        scale={"stripes": [3, 1], "chunk_words": 16, "address": cluster.cluster.address},
    )
    app = running(dep.folder)
    runtime = app.app.orchestrator.scale
    reports = two_rounds_with_a_stripe_killed(dep, app, N, monkeypatch)
    for name, (first, second) in reports.items():
        assert first.outcome == "aborted" and "stripe" in first.reason, (name, first)
        assert "so the whole round is aborted and nothing is published" in first.reason, first
        assert second.outcome == "published", (name, second)
    aborted, published = app.app.orchestrator.history[-2:]
    assert aborted.outcome == "aborted" and "group" in aborted.reason, aborted
    assert published.contributors == tuple(f"client{i}" for i in range(N))
    assert runtime.replaced == 1
    assert_published_mean(dep, range(N))  # round 1 published nothing
    assert [r["round"] for r in audit_details(dep, "grouped_round_survivors")] == [2]


def test_a_stripe_holds_a_grouped_rounds_groups_side_by_side() -> None:
    """In process: two groups' rounds on one stripe stay apart (own chunks, survivors and
    sums); a new round that begins without them makes the stripe forget both."""
    a, b, later = b"a" * 32, b"b" * 32, b"c" * 32
    stripe = Stripe()
    stripe.begin(a, 4, 3)
    stripe.begin(b, 4, 3, [a])
    assert stripe.rounds() == [a, b]
    stripe.put(a, 1, 4, np.array([1, 2, 3], dtype="<u4").tobytes())
    stripe.put(b, 1, 4, np.array([10, 20, 30], dtype="<u4").tobytes())  # same index, group b
    stripe.put(b, 2, 4, np.array([5, 5, 5], dtype="<u4").tobytes())
    assert stripe.complete(a) == [1] and stripe.complete(b) == [1, 2]
    stripe.commit(a, [1])
    stripe.commit(b, [1, 2])
    assert np.frombuffer(stripe.unmask(a, []), dtype="<u4").tolist() == [1, 2, 3]
    assert np.frombuffer(stripe.unmask(b, []), dtype="<u4").tolist() == [15, 25, 35]
    stripe.begin(later, 0, 2)  # the next round: nothing of the grouped round outlives it
    assert stripe.rounds() == [later]
    with pytest.raises(StripeRefusedError, match="not serving that round"):
        stripe.complete(a)
