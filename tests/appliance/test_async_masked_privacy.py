"""Distributed DP for masked asynchronous buffers (issue 21; appliance/async_privacy.py,
"Masked buffers"): the plan, the per-survivor charges, the staleness-weighted decode of the
real crypto encoding (s(tau) on the signal, the full noise share on top), and that the
run-level controller never counts a buffer a second time."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sealagg_testkit.dp_ledger import POLY, controller, open_state, rdp_epsilon

from sealagg.appliance.async_privacy import (
    STATE_FILE,
    AsyncPrivacyError,
    ClientBudgetExhaustedError,
)
from sealagg.appliance.async_schedule import AsyncSpec
from sealagg.appliance.config import PrivacySection
from sealagg.appliance.privacy import BufferRoundPlan
from sealagg.appliance.rounds import Aggregate
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.client_shim.privacy import round_privacy
from sealagg.crypto.dp import encode_dp_update


@pytest.fixture
def store(tmp_path):
    yield from open_state(tmp_path)


def _record(ledger, number: int, survivors: list[str], *, m: int = 3, sigma: float, clip=1.0):
    return ledger.record_masked(
        round_number=number,
        run_id="r1",
        buffer_index=number,
        buffer_size=4,
        survivors=survivors,
        min_survivors=m,
        clip=clip,
        noise_std=sigma,
        staleness_weights=dict.fromkeys(survivors, 1.0),
    )


# ------------------------------------------------------------------------------ the plan


def test_masked_modes_plan_distributed_dp_with_z_as_the_floor(store):
    ctl = controller(store, noise_multiplier=1.3, clip=0.7)
    for mode in ("secagg", "secagg+"):
        plan = ctl.clients.plan(mode=mode, buffer_size=4, policy=POLY)
        assert plan is not None and plan.masked
        # No buffer round can carry less than z: the floor is z (rounded down, never above).
        assert 1.3 * (1 - 1e-3) <= plan.floor <= 1.3
        with pytest.raises(AsyncPrivacyError, match="its round does"):
            plan.params()  # a masked lease carries no DP parameters
        with pytest.raises(AsyncPrivacyError, match="record_masked"):
            ctl.clients.record(plan, round_number=1, run_id="r", buffer_index=1, weights={})
    # Staleness does not lower a masked buffer's floor (its noise is never scaled down).
    plain = ctl.clients.plan(mode="plaintext", buffer_size=4, policy=POLY)
    masked = ctl.clients.plan(mode="secagg+", buffer_size=4, policy=POLY)
    assert plain.floor < masked.floor
    # The schedule's own check takes DP in masked modes now; ckks stays refused.
    spec = AsyncSpec.parse('{"buffer_size": 3}')
    common = {"min_clients": 3, "registered": 5, "privacy": True, "rule": "mean"}
    spec.check_run(mode="secagg+", **common)
    spec.check_run(mode="secagg", **common)


@pytest.mark.parametrize(
    ("privacy", "match"),
    [
        ({"mode": "distributed"}, "discrete mechanism"),
        ({"target_quantile": 0.5}, "adaptive clipping"),
        ({"min_survivors": 5}, "exceeds buffer_size"),
        ({"noise_multiplier": 0.3, "target_epsilon": 1.0}, "one contribution"),
    ],
)
def test_masked_plans_that_cannot_be_accounted_are_refused(store, privacy, match):
    ctl = controller(store, **privacy)
    with pytest.raises(AsyncPrivacyError, match=match):
        ctl.clients.plan(mode="secagg+", buffer_size=4, policy=POLY)


# --------------------------------------------------------------------------- charging


def test_survivors_are_charged_their_round_multiplier_and_compose_per_client(store):
    ctl = controller(store, noise_multiplier=1.0, clip=1.0)
    ledger = ctl.clients
    plan = ledger.plan(mode="secagg+", buffer_size=4, policy=POLY)
    sigma = 1.0 / math.sqrt(3)  # each member's share: z·C/√m, m = 3
    schedule = [
        (["fast", "a", "b", "c"], ["fast", "a", "b", "c"]),  # all survive: √4/√3·z
        (["fast", "a", "b", "d"], ["fast", "a", "b"]),  # d dropped out: not in the sum
        (["fast", "c", "d", "e"], ["fast", "c", "e"]),
    ]
    z_of: dict[str, list[float]] = {}
    for number, (members, survivors) in enumerate(schedule, start=1):
        for name in members:
            ledger.admit(name, plan)
            ledger.join(name, number, plan)
        record = _record(ledger, number, survivors, sigma=sigma)
        z = math.sqrt(len(survivors)) * sigma
        assert z >= 1.0 - 1e-12  # never below z: the sum covers at least m survivors
        assert record["effective_noise_multiplier"] == pytest.approx(z, rel=1e-3)
        assert record["effective_noise_multiplier"] <= z  # rounded down: ε never understated
        assert record["masked"] and record["survivors"] == len(survivors)
        assert set(record["epsilon_per_client"]) == set(survivors)
        for name in survivors:
            z_of.setdefault(name, []).append(z)
        assert not ledger._pending  # recorded: the dropped members' charges are gone too
    assert "d" not in ledger.clients  # in two buffers, in neither revealed sum
    for name, zs in z_of.items():
        independent = rdp_epsilon(zs)
        assert ledger.epsilon(name) == pytest.approx(independent, rel=2e-3)
        assert ledger.epsilon(name) >= independent * (1 - 1e-9)
    assert ledger.epsilon("fast") > ledger.epsilon("a") > ledger.epsilon("e") > 0
    assert ctl.status()["participations_per_client"]["fast"] == 3
    # Persisted: a restart reloads the same per-client ε.
    state = json.loads((store.folder / STATE_FILE).read_text())
    assert len(state["clients"]["fast"]) == 3
    again = controller(store, noise_multiplier=1.0, clip=1.0)
    assert again.clients.epsilon("fast") == pytest.approx(ledger.epsilon("fast"))


def test_a_masked_record_below_the_noise_minimum_or_past_a_budget_charges_nothing(store):
    once = rdp_epsilon([1.0])
    twice = rdp_epsilon([1.0, 1.0])
    ctl = controller(store, noise_multiplier=1.0, target_epsilon=(once + twice) / 2)
    ledger = ctl.clients
    plan = ledger.plan(mode="secagg", buffer_size=3, policy=POLY)
    sigma = 1.0 / math.sqrt(3)
    with pytest.raises(AsyncPrivacyError, match="the DP noise needs 3"):
        _record(ledger, 1, ["a", "b"], sigma=sigma)
    with pytest.raises(AsyncPrivacyError, match="listed twice"):
        _record(ledger, 1, ["a", "a", "b"], sigma=sigma)
    assert not ledger.clients
    _record(ledger, 2, ["a", "b", "c"], sigma=sigma)
    # a spent its budget: refused at admission, and a record naming it charges no one.
    with pytest.raises(ClientBudgetExhaustedError):
        ledger.admit("a", plan)
    before = {n: ledger.epsilon(n) for n in "abcd"}
    with pytest.raises(ClientBudgetExhaustedError, match="not published"):
        _record(ledger, 3, ["a", "d", "e"], sigma=sigma)
    assert {n: ledger.epsilon(n) for n in "abcd"} == before
    ledger.admit("d", plan)  # the others go on


def test_an_aborted_buffer_releases_its_pending_charges(store):
    once = rdp_epsilon([1.0])
    twice = rdp_epsilon([1.0, 1.0])
    ctl = controller(store, noise_multiplier=1.0, target_epsilon=(once + twice) / 2)
    ledger = ctl.clients
    plan = ledger.plan(mode="secagg+", buffer_size=3, policy=POLY)
    ledger.admit("a", plan)
    ledger.join("a", 7, plan)
    with pytest.raises(ClientBudgetExhaustedError):  # pending at the floor: no second one
        ledger.admit("a", plan)
    ledger.abandon(7)  # the buffer's round aborted below its minimum
    ledger.admit("a", plan)
    assert ledger.epsilon("a") == 0.0 and not ledger.clients


# ---------------------------------------------------------------------- decode + finish


def _buffer_plan(ctl, *, members: int, d: int, weights: dict[int, float], m: int = 3):
    start = pb.RoundStart(
        round_number=5,
        round_id=b"\x07" * 32,
        mode="secagg+",
        participants=[pb.Participant(index=i, name=f"c{i}") for i in range(1, members + 1)],
        max_clients=members,
        minimum_survivors=m,
    )
    plan = ctl.plan_for(start, dimension=d, minimum=m)
    names = {i: f"c{i}" for i in weights}
    dp = ctl.for_buffer(
        plan, run_id="r1", buffer_index=2, buffer_size=members, weights=weights, names=names
    )
    return start, dp


def test_the_decode_is_the_staleness_weighted_mean_of_the_survivors(store):
    """The shim's own encoder with s(tau) on the signal: the appliance's decode divides by
    the survivors' Σ s(tau) (from the transcript) and gets the weighted mean back."""
    ctl = controller(store, noise_multiplier=1e-7, clip=1.0)
    d = 50
    weights = {1: 1.0, 2: POLY.weight(1), 3: POLY.weight(3), 4: POLY.weight(2)}
    start, dp = _buffer_plan(ctl, members=4, d=d, weights=weights)
    assert isinstance(dp, BufferRoundPlan) and dp.min_survivors == 3
    client = round_privacy(start, d)  # what each member applies
    assert client is not None and client.spec == dp.spec
    rng = np.random.default_rng(3)
    updates = {u: rng.normal(0, 0.05, d) for u in weights}
    updates[4] *= 100.0  # over the clip: clipped before s(tau) scales it
    vectors = {u: client.encode(updates[u], scale=weights[u])[0] for u in weights}
    survivors = [1, 2, 4]  # 3 dropped out before its masked input
    total = np.zeros(dp.spec.vector_length, dtype=np.uint32)
    for u in survivors:
        total += vectors[u]
    mean, total_weight, extras = dp.decode_survivors(total, survivors)
    clipped = {u: x * min(1.0, 1.0 / np.linalg.norm(x)) for u, x in updates.items()}
    den = sum(weights[u] for u in survivors)
    expected = sum(weights[u] * clipped[u] for u in survivors) / den
    assert total_weight == pytest.approx(den)
    assert np.abs(mean - expected).max() < 1e-4
    unweighted = sum(clipped[u] for u in survivors) / len(survivors)
    assert np.abs(mean - unweighted).max() > 1e-2  # the weights matter
    assert extras["wrapped"] == 0.0
    # A count coordinate that does not match the survivors is refused (no release).
    with pytest.raises(ValueError, match="does not count once"):
        dp.decode_survivors(total, [1, 2])
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        encode_dp_update(updates[1], dp.spec, dp.seed, scale=1.5)


def test_each_member_adds_its_full_noise_share_whatever_its_staleness(store):
    """All members very stale (s = 1/4): the signal shrinks, the noise does not — the
    revealed sum's noise has std √survivors·sigma_c (= z·C at m survivors)."""
    z, clip, d = 2.0, 1.0, 4096
    ctl = controller(store, noise_multiplier=z, clip=clip)
    weights = dict.fromkeys((1, 2, 3), 0.25)
    start, dp = _buffer_plan(ctl, members=3, d=d, weights=weights)
    assert dp.spec.noise_std == pytest.approx(z * clip / math.sqrt(3))
    client = round_privacy(start, d)
    total = np.zeros(dp.spec.vector_length, dtype=np.uint32)
    for u in weights:
        total += client.encode(np.zeros(d), scale=weights[u])[0]
    mean, den, _ = dp.decode_survivors(total, list(weights))
    noise_of_sum = np.std(mean * den)
    assert noise_of_sum == pytest.approx(z * clip, rel=0.05)  # not z·C/4


def test_a_buffer_round_is_charged_per_survivor_and_never_in_the_run_ledger(store):
    ctl = controller(store, noise_multiplier=1.0, clip=1.0)
    weights = {1: 1.0, 2: POLY.weight(1), 3: 1.0, 4: 1.0}
    _start, dp = _buffer_plan(ctl, members=4, d=20, weights=weights)
    aggregate = Aggregate(np.zeros(20, np.float32), 2.7, ("c1", "c2", "c4"), ("c3",))
    record = ctl.finish_round(dp, {"c1": {"epsilon": 0.5}}, aggregate)
    z = math.sqrt(3) * dp.spec.noise_std / dp.spec.sensitivity
    assert record["effective_noise_multiplier"] == pytest.approx(z, rel=1e-3)
    assert record["staleness_weights"] == {"c1": 1.0, "c2": pytest.approx(2**-0.5), "c4": 1.0}
    assert ctl.rounds == []  # the run-level controller records nothing: no double count
    assert set(ctl.clients.clients) == {"c1", "c2", "c4"}
    assert ctl.spent() == pytest.approx(ctl.clients.epsilon("c1"), rel=1e-3)
    assert ctl.local_epsilon == {"c1": 0.5}
    entries = [e.details for e in store.audit.entries() if e.event == "privacy"]
    assert len(entries) == 1 and entries[0]["schedule"] == "async" and entries[0]["masked"]
    # Fewer survivors than the noise was sized for: ValueError, the round is aborted.
    short = Aggregate(np.zeros(20, np.float32), 2.0, ("c1", "c2"), ("c3", "c4"))
    with pytest.raises(ValueError, match="the DP noise needs 3"):
        ctl.finish_round(dp, {}, short)
    # A survivor past its budget: ValueError too (the orchestrator aborts on it).
    ctl.config = ctl.clients.config = PrivacySection(
        mode="client", noise_multiplier=1.0, target_epsilon=ctl.clients.epsilon("c1") * 1.2
    )
    with pytest.raises(ValueError, match="not published"):
        ctl.finish_round(dp, {}, aggregate)
    assert len(ctl.clients.clients["c1"].participations) == 1


def test_for_buffer_refuses_what_it_cannot_account(store):
    ctl = controller(store, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="staleness weight in \\(0, 1\\]"):
        _buffer_plan(ctl, members=3, d=8, weights={1: 1.0, 2: 0.0, 3: 1.0})
    start = pb.RoundStart(
        round_number=1, round_id=b"\x01" * 32, mode="plaintext",
        participants=[pb.Participant(index=1, name="c1")],
    )  # fmt: skip
    plain = ctl.plan_for(start, dimension=8, minimum=1)
    with pytest.raises(ValueError, match="masked buffer"):
        ctl.for_buffer(
            plain, run_id="r", buffer_index=1, buffer_size=1, weights={1: 1.0}, names={1: "c1"}
        )
