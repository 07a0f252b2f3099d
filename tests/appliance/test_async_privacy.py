"""Per-client DP accounting of asynchronous runs (appliance/async_privacy.py): composition
per client against dp-accounting directly, per-client budgets, restart, refusals."""

from __future__ import annotations

import json
import math

import dp_accounting
import pytest
from sealagg_testkit.dp_ledger import DELTA, POLY, controller, open_state, rdp_epsilon

from sealagg.appliance.accounting import RoundPrivacy, epsilon
from sealagg.appliance.async_privacy import (
    STATE_FILE,
    AsyncPrivacyError,
    ClientBudgetExhaustedError,
    buffer_noise_multiplier,
    staleness_ratio_floor,
)
from sealagg.appliance.privacy import PrivacyBudgetExhaustedError
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.client_shim.privacy import round_privacy
from sealagg.crypto.staleness import StalenessPolicy


@pytest.fixture
def store(tmp_path):
    yield from open_state(tmp_path)


def test_buffer_multiplier_is_z_for_fresh_members_and_lower_for_unequal_staleness():
    z, clip, k = 1.2, 0.5, 4
    sigma_c = z * clip / math.sqrt(k)
    assert buffer_noise_multiplier(sigma_c, clip, [1.0] * k) == pytest.approx(z)
    # The appliance scales stale members' noise down with their signal: less noise.
    weights = [1.0, 1.0, POLY.weight(2), POLY.weight(3)]
    expected = sigma_c * math.sqrt(sum(w * w for w in weights)) / clip
    assert buffer_noise_multiplier(sigma_c, clip, weights) == pytest.approx(expected)
    assert expected < z
    # Scaling every weight leaves the mean, hence the mechanism, unchanged.
    scaled = [w * 0.3 for w in weights]
    assert buffer_noise_multiplier(sigma_c, clip, scaled) == pytest.approx(expected)
    # The plan's floor bounds every full buffer of the run from below (admission).
    r = staleness_ratio_floor(POLY)
    assert r == pytest.approx(POLY.weight(3))
    worst = [1.0] + [r] * (k - 1)
    assert buffer_noise_multiplier(sigma_c, clip, worst) == pytest.approx(
        z * math.sqrt((1 + (k - 1) * r * r) / k)
    )


def test_lease_params_are_what_the_shim_applies(store):
    ctl = controller(store, noise_multiplier=1.5, clip=0.8)
    plan = ctl.clients.plan(mode="plaintext", buffer_size=4, policy=POLY)
    start = pb.RoundStart(
        round_id=b"\x01" * 32, mode="plaintext", asynchronous=True, max_clients=4,
        privacy=plan.params(),
    )  # fmt: skip
    client = round_privacy(start, 10)
    assert client is not None and client.mode == "client"
    assert client.spec.noise_std == pytest.approx(1.5 * 0.8 / 2) == plan.noise_std
    assert client.spec.clip == 0.8 and start.privacy.min_survivors == 4


def _publish(ledger, plan, number: int, members: dict[str, int]) -> dict:
    """One buffer: members -> staleness tau; admitted, joined and recorded as the hooks do."""
    for name in members:
        ledger.admit(name, plan)
        ledger.join(name, number, plan)
    weights = {name: POLY.weight(tau) for name, tau in members.items()}
    return ledger.record(
        plan, round_number=number, run_id="r1", buffer_index=number, weights=weights
    )


def test_a_fast_client_composes_three_times_the_releases_of_a_slow_one(store):
    ctl = controller(store, noise_multiplier=1.0, clip=1.0)
    ledger = ctl.clients
    plan = ledger.plan(mode="plaintext", buffer_size=2, policy=POLY)
    schedule = [
        {"fast": 0, "slow": 1},
        {"fast": 0, "c": 0},
        {"fast": 1, "c": 2},
        {"fast": 0, "slow": 3},
        {"fast": 0, "c": 1},
        {"fast": 2, "c": 0},
    ]
    z_of: dict[str, list[float]] = {}
    for number, members in enumerate(schedule, start=1):
        record = _publish(ledger, plan, number, members)
        weights = [POLY.weight(t) for t in members.values()]
        z = plan.noise_std * math.sqrt(sum(w * w for w in weights)) / (max(weights) * plan.clip)
        for name in members:
            z_of.setdefault(name, []).append(z)
        assert record["effective_noise_multiplier"] == pytest.approx(z, rel=1e-3)
        assert record["effective_noise_multiplier"] <= z  # rounded down: ε never understated
        assert set(record["epsilon_per_client"]) == set(members)
    assert len(z_of["fast"]) == 3 * len(z_of["slow"])
    for name, zs in z_of.items():
        independent = rdp_epsilon(zs)
        assert ledger.epsilon(name) == pytest.approx(independent, rel=2e-3)
        assert ledger.epsilon(name) >= independent * (1 - 1e-9)
    assert ledger.epsilon("fast") > ledger.epsilon("c") > ledger.epsilon("slow") > 0
    status = ctl.status()
    assert status["participations_per_client"] == {"c": 4, "fast": 6, "slow": 2}
    assert status["epsilon_per_client"]["fast"] == pytest.approx(ledger.epsilon("fast"))
    # The federation ε is the most-charged client's.
    assert ctl.spent() == pytest.approx(ledger.epsilon("fast"), rel=1e-3)
    entries = [e for e in store.audit.entries() if e.event == "privacy"]
    assert len(entries) == 6 and all(e.details["schedule"] == "async" for e in entries)
    assert entries[-1].details["epsilon_cumulative"] == pytest.approx(ledger.epsilon("fast"))


def test_pld_accountant_matches_the_library_too(store):
    ctl = controller(store, noise_multiplier=2.0, accountant="pld")
    plan = ctl.clients.plan(mode="attested", buffer_size=2, policy=POLY)
    for number in (1, 2, 3):
        _publish(ctl.clients, plan, number, {"fast": 0, f"other{number}": 0})
    acc = dp_accounting.pld.PLDAccountant()
    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(2.0), 3))
    assert ctl.clients.epsilon("fast") == pytest.approx(acc.get_epsilon(DELTA), rel=1e-2)


def test_synchronous_rounds_count_for_every_async_client(store):
    ctl = controller(store, noise_multiplier=1.0)
    ctl.rounds.append(RoundPrivacy(1, 1.0, 3.0))
    plan = ctl.clients.plan(mode="plaintext", buffer_size=2, policy=POLY)
    _publish(ctl.clients, plan, 2, {"a": 0, "b": 0})
    z = ctl.clients.last["effective_noise_multiplier"]
    combined = (3.0**-2 + z**-2) ** -0.5
    assert ctl.clients.epsilon("a") == pytest.approx(
        epsilon([RoundPrivacy(0, 1.0, combined)], DELTA), rel=1e-3
    )
    assert ctl.clients.epsilon("never-seen") == pytest.approx(
        epsilon([RoundPrivacy(1, 1.0, 3.0)], DELTA)
    )


def test_a_spent_client_is_refused_while_the_others_continue(store):
    once = epsilon([RoundPrivacy(0, 1.0, 1.0)], DELTA)
    twice = epsilon([RoundPrivacy(0, 1.0, 2**-0.5)], DELTA)
    target = (twice + epsilon([RoundPrivacy(0, 1.0, 3**-0.5)], DELTA)) / 2  # room for 2, not 3
    ctl = controller(store, noise_multiplier=1.0, target_epsilon=target)
    ledger = ctl.clients
    constant = StalenessPolicy(kind="constant", max_staleness=3)
    plan = ledger.plan(mode="plaintext", buffer_size=2, policy=constant)
    assert plan.floor == pytest.approx(1.0)
    _publish(ledger, plan, 1, {"fast": 0, "a": 0})
    assert ledger.epsilon("fast") == pytest.approx(once, rel=1e-3)
    ledger.admit("fast", plan)
    ledger.join("fast", 2, plan)  # accepted into a buffer not yet published: pending
    with pytest.raises(ClientBudgetExhaustedError, match="privacy budget of fast spent") as err:
        ledger.admit("fast", plan)  # a third contribution (recorded + pending + next)
    assert err.value.client == "fast"
    ledger.admit("b", plan)
    ledger.join("b", 2, plan)
    ledger.record(
        plan, round_number=2, run_id="r1", buffer_index=2, weights={"fast": 1.0, "b": 1.0}
    )
    assert ledger.epsilon("fast") == pytest.approx(twice, rel=1e-3) and twice <= target
    with pytest.raises(ClientBudgetExhaustedError):
        ledger.admit("fast", plan)
    assert ledger.admissible(["fast", "a", "b", "c"], plan) == ["a", "b", "c"]
    exhausted = [e for e in store.audit.entries() if e.event == "privacy_budget_exhausted"]
    assert len(exhausted) == 1 and exhausted[0].details["client"] == "fast"  # audited once
    assert ctl.status()["clients_exhausted"] == ["fast"]
    # The safety net: a buffer that would pass a member's target is not charged or published.
    before = len(ledger.clients["fast"].participations)
    with pytest.raises(ClientBudgetExhaustedError, match="not published"):
        ledger.record(
            plan, round_number=3, run_id="r1", buffer_index=3, weights={"fast": 1, "c": 1}
        )
    assert len(ledger.clients["fast"].participations) == before and "c" not in ledger.clients


def test_an_abandoned_buffer_releases_its_pending_charges(store):
    target = epsilon([RoundPrivacy(0, 1.0, 1.0)], DELTA) * 1.01  # room for one
    ctl = controller(store, noise_multiplier=1.0, target_epsilon=target)
    plan = ctl.clients.plan(mode="plaintext", buffer_size=2, policy=StalenessPolicy("constant"))
    ctl.clients.admit("a", plan)
    ctl.clients.join("a", 7, plan)
    with pytest.raises(ClientBudgetExhaustedError):
        ctl.clients.admit("a", plan)
    ctl.clients.abandon(7)  # never published: no release, no cost
    ctl.clients.admit("a", plan)
    assert ctl.clients.epsilon("a") == 0.0


def test_the_ledger_survives_a_restart(store):
    ctl = controller(store, noise_multiplier=1.0, target_epsilon=50.0)
    plan = ctl.clients.plan(mode="plaintext", buffer_size=2, policy=POLY)
    _publish(ctl.clients, plan, 1, {"fast": 0, "slow": 2})
    _publish(ctl.clients, plan, 2, {"fast": 1, "c": 0})
    before = ctl.status()
    state = json.loads((store.folder / STATE_FILE).read_text())
    assert set(state["clients"]) == {"fast", "slow", "c"}
    again = controller(store, noise_multiplier=1.0, target_epsilon=50.0)
    after = again.status()
    for key in ("epsilon_per_client", "participations_per_client", "epsilon_cumulative"):
        assert after[key] == before[key]
    assert again.clients.epsilon("fast") == ctl.clients.epsilon("fast") > 0
    assert again.spent() == pytest.approx(ctl.clients.epsilon("fast"))


@pytest.mark.parametrize(
    ("privacy", "mode", "k", "match"),
    [
        ({}, "ckks", 3, "modes, not 'ckks'"),
        ({"mode": "distributed"}, "secagg+", 3, "discrete mechanism"),
        ({"mode": "distributed"}, "plaintext", 3, "client-level DP"),
        ({"target_quantile": 0.5}, "plaintext", 3, "adaptive clipping"),
        ({"min_survivors": 4}, "plaintext", 3, "exceeds buffer_size"),
        ({}, "plaintext", 0, "buffer_size"),
        ({"noise_multiplier": 0.3, "target_epsilon": 1.0}, "plaintext", 3, "one contribution"),
    ],
)
def test_plans_that_cannot_be_accounted_are_refused(store, privacy, mode, k, match):
    ctl = controller(store, **privacy)
    with pytest.raises(AsyncPrivacyError, match=match):
        ctl.clients.plan(mode=mode, buffer_size=k, policy=POLY)


def test_bad_records_and_names_are_refused_and_nothing_is_charged(store):
    ctl = controller(store)
    plan = ctl.clients.plan(mode="plaintext", buffer_size=2, policy=POLY)
    assert (
        controller(store, mode="none").clients.plan(mode="plaintext", buffer_size=2, policy=POLY)
        is None
    )
    bad = [
        ({"a": 1.0}, "only 1 updates"),
        ({"a": 1.0, "b": math.nan}, "finite and > 0"),
        ({"a": 1.0, "b": 0.0}, "finite and > 0"),
        ({"a": 1.0, "": 1.0}, "client name"),
    ]
    for weights, match in bad:
        with pytest.raises(AsyncPrivacyError, match=match):
            ctl.clients.record(plan, round_number=1, run_id="r", buffer_index=1, weights=weights)
    with pytest.raises(AsyncPrivacyError, match="client name"):
        ctl.clients.admit("", plan)
    assert ctl.clients.clients == {} and ctl.clients.status() == {}
    assert not (store.folder / STATE_FILE).exists()


def test_a_synchronous_round_is_refused_when_an_async_client_spent_the_budget(store):
    one = epsilon([RoundPrivacy(0, 1.0, 1.0)], DELTA)
    ctl = controller(store, noise_multiplier=1.0, target_epsilon=one * 1.2)
    ctl.check_budget(4)  # one synchronous round would fit
    plan = ctl.clients.plan(mode="plaintext", buffer_size=2, policy=StalenessPolicy("constant"))
    _publish(ctl.clients, plan, 1, {"a": 0, "b": 0})
    # Every client is in a synchronous round: a and b would be at two releases.
    with pytest.raises(PrivacyBudgetExhaustedError, match="another round would reach"):
        ctl.check_budget(4)
