"""The appliance's DP controller: round parameters, adaptive clip, budget, persistence."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sealagg.appliance.accounting import RoundPrivacy, epsilon
from sealagg.appliance.config import ApplianceConfig, PrivacySection, parse_config
from sealagg.appliance.errors import ConfigError
from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.privacy import PrivacyBudgetExhaustedError, PrivacyController
from sealagg.appliance.rounds import Aggregate
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import make_deployment
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.client_shim.privacy import PrivacyRefusedError, round_privacy
from sealagg.crypto.dp import encode_dp_update

ROUND_ID = b"\x07" * 32


@pytest.fixture
def store(tmp_path):
    dep = make_deployment(tmp_path, clients=3)
    s = open_store(FederationFolder.load(dep.folder))
    yield s
    s.close()


def _controller(store, **privacy) -> PrivacyController:
    return PrivacyController(PrivacySection(**privacy), store.folder, store.audit)


def _start(mode: str, n: int, minimum: int) -> pb.RoundStart:
    return pb.RoundStart(
        round_number=1,
        round_id=ROUND_ID,
        mode=mode,
        participants=[pb.Participant(index=i + 1, name=f"c{i}") for i in range(n)],
        max_clients=n,
        minimum_survivors=minimum,
    )


def test_config_refuses_distributed_dp_in_plaintext_and_bad_values():
    base = {"federation": {"name": "f"}}
    with pytest.raises(ConfigError, match="masked aggregation"):
        parse_config(
            {**base, "aggregation": {"mode": "plaintext"}, "privacy": {"mode": "distributed"}}
        )
    with pytest.raises(ConfigError, match="target_quantile"):
        parse_config({**base, "privacy": {"mode": "client", "target_quantile": 1.5}})
    config = parse_config({**base, "privacy": {"mode": "distributed", "mechanism": "skellam"}})
    assert isinstance(config, ApplianceConfig) and config.privacy.mechanism == "skellam"


def test_masked_round_plan_sizes_noise_for_the_protocol_minimum(store):
    ctl = _controller(store, mode="distributed", noise_multiplier=1.0, clip=0.5)
    start = _start("secagg+", n=20, minimum=11)
    plan = ctl.plan_for(start, dimension=100, minimum=11)
    assert start.privacy.mode == "distributed" and start.privacy.min_survivors == 11
    assert start.privacy.noise_std == pytest.approx(1.0 * 0.5 / math.sqrt(11))
    client = round_privacy(start, 100)
    assert client is not None and client.spec == plan.spec and client.seed == plan.seed


def test_client_refuses_noise_sized_for_more_survivors_than_the_protocol_keeps(store):
    ctl = _controller(store, mode="distributed")
    start = _start("secagg+", n=20, minimum=11)
    ctl.plan_for(start, dimension=10, minimum=11)
    start.minimum_survivors = 5  # the appliance would reveal sums over 5 with noise for 11
    with pytest.raises(PrivacyRefusedError, match="as few as 5"):
        round_privacy(start, 10)
    start.minimum_survivors = 11
    start.privacy.noise_std = 0.0
    with pytest.raises(PrivacyRefusedError, match="no noise"):
        round_privacy(start, 10)
    start.privacy.noise_std = 1.0
    start.mode = "plaintext"
    with pytest.raises(PrivacyRefusedError, match="plaintext"):
        round_privacy(start, 10)


def _aggregate(n: int, total_weight: float | None = None, **privacy) -> Aggregate:
    names = tuple(f"c{i}" for i in range(n))
    return Aggregate(np.zeros(4, np.float32), total_weight or float(n), names, (), privacy)


def test_finish_accounts_with_the_actual_survivors_and_audits(store):
    ctl = _controller(store, mode="distributed", noise_multiplier=1.0, population=100)
    start = _start("secagg", n=10, minimum=6)
    plan = ctl.plan_for(start, dimension=16, minimum=6)
    record = ctl.finish_round(plan, {"c0": {"epsilon": 2.5}}, _aggregate(9))
    # 9 survivors carry sqrt(9/6) times the configured noise; z over the rounded bound.
    z = math.sqrt(9) * plan.spec.noise_std / plan.spec.sensitivity
    recorded = record["effective_noise_multiplier"]
    assert z * 0.999 <= recorded <= z  # rounded down to 4 digits: never overstated
    assert z == pytest.approx(math.sqrt(9 / 6), rel=0.01)
    expected = epsilon([RoundPrivacy(1, 0.1, recorded)], 1e-5)
    assert record["epsilon_cumulative"] == pytest.approx(expected)
    status = ctl.status()
    assert status["epsilon_cumulative"] == record["epsilon_cumulative"]
    assert status["local_dp_epsilon"] == {"c0": 2.5}
    assert store.audit.entries()[-1].event == "privacy"


def test_plaintext_round_with_too_few_updates_is_not_published(store):
    ctl = _controller(store, mode="client", min_survivors=5)
    plan = ctl.plan_for(_start("plaintext", n=6, minimum=3), dimension=8, minimum=3)
    assert plan.min_survivors == 5
    with pytest.raises(ValueError, match="only 4 updates"):
        ctl.finish_round(plan, {}, _aggregate(4))
    with pytest.raises(ValueError, match="weight 1"):
        ctl.finish_round(plan, {}, _aggregate(5, total_weight=2.5))


def test_adaptive_clip_follows_the_quantile_and_survives_a_restart(store):
    ctl = _controller(
        store,
        mode="distributed",
        clip=1.0,
        target_quantile=0.5,
        noise_multiplier=0.5,
        quantile_noise=0.5,
        clip_learning_rate=0.5,
    )
    norms = np.full(12, 0.2)  # every update far below the clip: the clip must shrink
    clips = [ctl.clip]
    for rnd in range(3):
        start = _start("secagg", n=12, minimum=7)
        start.round_number = rnd + 1
        plan = ctl.plan_for(start, dimension=32, minimum=7)
        spec = plan.spec
        total = np.zeros(spec.vector_length, np.uint32)
        for norm in norms:
            x = np.zeros(32)
            x[0] = norm
            total += encode_dp_update(x, spec, plan.seed)[0]
        _, count, extras = plan.decode(total)
        agg = _aggregate(int(count), **extras)
        ctl.finish_round(plan, {}, agg)
        clips.append(ctl.clip)
    assert clips[1] < clips[0] * 0.85 and clips[3] < clips[2]
    again = _controller(
        store,
        mode="distributed",
        clip=1.0,
        target_quantile=0.5,
        noise_multiplier=0.5,
        quantile_noise=0.5,
    )
    assert again.clip == ctl.clip and len(again.rounds) == 3


def test_budget_refuses_the_round_that_would_exceed_the_target(store):
    ctl = _controller(store, mode="client", noise_multiplier=2.0, target_epsilon=4.0)
    plan = None
    opened = 0
    for rnd in range(20):
        try:
            ctl.check_budget(5)
        except PrivacyBudgetExhaustedError as error:
            assert "no more rounds" in str(error)
            break
        start = _start("plaintext", n=5, minimum=5)
        start.round_number = rnd + 1
        plan = ctl.plan_for(start, dimension=4, minimum=5)
        ctl.finish_round(plan, {}, _aggregate(5))
        opened += 1
    assert 0 < opened < 20
    assert ctl.spent() <= 4.0
    assert ctl.status()["exhausted"]
    events = [e.event for e in store.audit.entries()]
    assert events.count("privacy_budget_exhausted") == 1
