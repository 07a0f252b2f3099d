"""The federation's signed DP floor: the one rule both sides run
(:func:`crypto.policy.check_privacy_against_policy`), its boundaries, old rosters, and the
discrete mechanisms' effective noise."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import pytest

from sealagg.appliance import authority as auth
from sealagg.appliance.config import PrivacySection
from sealagg.appliance.errors import ConfigError
from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.privacy import PrivacyController
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import make_deployment
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.client_shim.errors import PrivacyRefusedError
from sealagg.client_shim.privacy import round_privacy
from sealagg.client_shim.session import refusal_code
from sealagg.crypto import IdentityKey
from sealagg.crypto.dp import DistributedDPSpec
from sealagg.crypto.errors import MalformedRosterError
from sealagg.crypto.policy import (
    MAX_ROUNDING_INFLATION,
    FederationPolicy,
    PrivacyFloorError,
    RoundNoise,
    check_privacy_against_policy,
)
from sealagg.crypto.refusal import RefusalCode
from sealagg.crypto.roster import IdentityKeySigner, Roster, sign_roster, verify_roster

FLOOR = FederationPolicy(min_noise_multiplier=1.0)


def _noise(z: float, clip: float = 1.0, m: int = 5, **kw) -> RoundNoise:
    """The parameters an honest appliance sends for multiplier ``z`` (sigma_c = zC/√m)."""
    kw.setdefault("mode", "distributed")
    kw.setdefault("mechanism", "discrete_gaussian")
    return RoundNoise(clip=clip, noise_std=z * clip / math.sqrt(m), min_survivors=m, **kw)


# ----------------------------------------------------------------------------- the policy


def test_defaults_require_nothing_and_bad_values_are_refused():
    policy = FederationPolicy()
    assert policy.min_noise_multiplier == 0.0 and policy.required_privacy == frozenset()
    assert not policy.requires_privacy
    check_privacy_against_policy(policy, None)  # no DP: fine when nothing is required
    check_privacy_against_policy(policy, _noise(1e-6))  # no floor: any noise
    assert FederationPolicy(min_noise_multiplier=2).min_noise_multiplier == 2.0
    assert FederationPolicy(required_privacy=frozenset({"client"})).requires_privacy
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="min_noise_multiplier"):
            FederationPolicy(min_noise_multiplier=bad)
    with pytest.raises(TypeError, match="min_noise_multiplier"):
        FederationPolicy(min_noise_multiplier=True)
    for bad in ("distributed", frozenset({"local"}), frozenset({"none"})):
        with pytest.raises(ValueError, match="required_privacy"):
            FederationPolicy(required_privacy=bad)


@pytest.mark.parametrize("m", [1, 3, 7, 10, 99, 1000])
@pytest.mark.parametrize("clip", [1e-6, 0.1, 0.3, 1.0, 7.0, 1e6])
def test_exactly_at_the_floor_is_accepted_and_just_below_is_refused_whatever_the_clip(m, clip):
    """z, not sigma, is bounded: the clip scales noise and sensitivity alike, so a tiny C with
    the same multiplier is as private, and a tiny C with a smaller one is not."""
    for z in (1.0, 1.1, 3.0):
        check_privacy_against_policy(FLOOR, _noise(z, clip, m))
    for z in (1.0 - 1e-6, 0.5, 1e-6):
        with pytest.raises(PrivacyFloorError, match="below the federation's signed floor 1"):
            check_privacy_against_policy(FLOOR, _noise(z, clip, m))


def test_the_clip_bit_noise_counts_with_the_update_noise_as_the_accountant_counts_it():
    """Adaptive clipping splits z: z_D⁻² + sigma_e⁻² = z⁻². At the floor it passes; a
    generous update noise does not buy back a nearly noise-free clip bit."""
    z, sigma_e, m = 1.0, 4.0, 6
    z_update = (z**-2 - sigma_e**-2) ** -0.5
    split = _noise(z_update, 0.7, m, indicator_std=sigma_e / math.sqrt(m))
    assert split.noise_multiplier() == pytest.approx(z, rel=1e-12)
    check_privacy_against_policy(FLOOR, split)
    leaky = _noise(50.0, 0.7, m, indicator_std=0.01 / math.sqrt(m))
    with pytest.raises(PrivacyFloorError, match=r"noise multiplier 0\.01 "):
        check_privacy_against_policy(FLOOR, leaky)


def test_no_privacy_or_another_mode_is_refused_when_the_policy_requires_it():
    with pytest.raises(PrivacyFloorError, match=r"requires differential privacy \(noise"):
        check_privacy_against_policy(FLOOR, None)
    with pytest.raises(PrivacyFloorError, match="requires differential privacy"):
        check_privacy_against_policy(FLOOR, RoundNoise(mode="none"))
    distributed = FederationPolicy(required_privacy=frozenset({"distributed"}))
    check_privacy_against_policy(distributed, _noise(1e-3))  # no floor: any positive noise
    with pytest.raises(PrivacyFloorError, match="'client' is not one the federation's policy"):
        check_privacy_against_policy(distributed, _noise(9.0, mode="client", mechanism="gaussian"))
    with pytest.raises(PrivacyFloorError, match="mode distributed"):
        check_privacy_against_policy(distributed, None)


@pytest.mark.parametrize(
    "noise",
    [
        RoundNoise("client", "gaussian", clip=1.0, noise_std=0.0, min_survivors=3),
        RoundNoise("client", "gaussian", clip=0.0, noise_std=1.0, min_survivors=3),
        RoundNoise("client", "gaussian", clip=1.0, noise_std=math.nan, min_survivors=3),
        RoundNoise("client", "gaussian", clip=math.inf, noise_std=1.0, min_survivors=3),
        RoundNoise("client", "gaussian", clip=1.0, noise_std=1.0, min_survivors=0),
        RoundNoise("client", "gaussian", clip=1.0, noise_std=1.0, indicator_std=-1.0),
    ],
)
def test_malformed_noise_counts_as_none_under_a_floor(noise):
    with pytest.raises(PrivacyFloorError, match="noise multiplier 0 "):
        check_privacy_against_policy(FLOOR, noise)


# ------------------------------------------------------------------- discrete mechanisms


@pytest.mark.parametrize("mechanism", ["discrete_gaussian", "skellam"])
@pytest.mark.parametrize(("n", "d"), [(3, 136), (10, 1000), (100, 1 << 16)])
def test_discrete_mechanisms_at_the_floor_pass_with_their_rounded_sensitivity(mechanism, n, d):
    """Honest grids (range_bits 20) inflate the sensitivity far less than the slack."""
    m = n // 2 + 1
    spec = DistributedDPSpec(mechanism, d, 0.5, 1.0 * 0.5 / math.sqrt(m), 0.0, n)
    assert 1.0 < spec.sensitivity / spec.clip < 1.0 + 2**-14
    noise = _noise(1.0, 0.5, m, mechanism=mechanism, sensitivity=spec.sensitivity)
    check_privacy_against_policy(FLOOR, noise)
    assert noise.noise_multiplier(spec.sensitivity) >= 1.0 / MAX_ROUNDING_INFLATION


@pytest.mark.parametrize("mechanism", ["discrete_gaussian", "skellam"])
def test_a_coarse_grid_that_outweighs_the_noise_is_refused(mechanism):
    """range_bits 8: the rounding raises the sensitivity ~7 % over C with the noise unchanged,
    so the effective multiplier falls below the floor though the stated one meets it."""
    n, d, m = 4, 136, 3
    spec = DistributedDPSpec(mechanism, d, 1.0, 1.0 / math.sqrt(m), 0.0, n, range_bits=8)
    assert spec.sensitivity / spec.clip > 1.05
    noise = _noise(1.0, 1.0, m, mechanism=mechanism, sensitivity=spec.sensitivity)
    check_privacy_against_policy(FLOOR, _noise(1.0, 1.0, m, mechanism=mechanism))  # nominal
    with pytest.raises(PrivacyFloorError, match="grid rounds the update to a sensitivity"):
        check_privacy_against_policy(FLOOR, noise)
    check_privacy_against_policy(FederationPolicy(), noise)  # no floor, no grid rule


def test_the_rounding_slack_boundary_and_the_gaussian_mechanism():
    at = _noise(1.0, 2.0, 4, sensitivity=2.0 * MAX_ROUNDING_INFLATION)
    check_privacy_against_policy(FLOOR, at)
    over = _noise(1.0, 2.0, 4, sensitivity=2.0 * MAX_ROUNDING_INFLATION * (1 + 1e-9))
    with pytest.raises(PrivacyFloorError, match="grid"):
        check_privacy_against_policy(FLOOR, over)
    # The Gaussian mechanism's sensitivity is C (its fine grid is argued in crypto.dp).
    gaussian = _noise(1.0, 2.0, 4, mode="client", mechanism="gaussian", sensitivity=2.0)
    check_privacy_against_policy(FLOOR, gaussian)


# ---------------------------------------------------------------------------- the roster


def _roster(policy: dict) -> Roster:
    return Roster("fed", 1, datetime(2026, 1, 1, tzinfo=UTC), (), policy)


def test_an_old_roster_without_the_fields_means_no_floor_and_a_new_one_round_trips():
    signer = IdentityKeySigner(IdentityKey.generate())
    old = _roster({"colluders": 1, "minimum_sum": 3, "allowed_modes": ["secagg+"]})
    parsed = verify_roster(
        sign_roster(old, signer), authority_key=signer.public_key(), federation="fed"
    )
    policy = parsed.federation_policy()
    assert policy.min_noise_multiplier == 0.0 and not policy.requires_privacy
    new = _roster({"min_noise_multiplier": 1.5, "required_privacy": ["distributed"]})
    data = sign_roster(new, signer)
    body = json.loads(json.loads(data)["body"])
    assert body["policy"] == {"min_noise_multiplier": 1.5, "required_privacy": ["distributed"]}
    policy = verify_roster(
        data, authority_key=signer.public_key(), federation="fed"
    ).federation_policy()
    assert policy.min_noise_multiplier == 1.5
    assert policy.required_privacy == frozenset({"distributed"})


@pytest.mark.parametrize(
    "policy",
    [
        {"min_noise_multiplier": -1.0},
        {"min_noise_multiplier": float("nan")},
        {"min_noise_multiplier": "1.0"},
        {"min_noise_multiplier": True},
        {"required_privacy": "distributed"},
        {"required_privacy": ["local"]},
    ],
)
def test_a_malformed_floor_makes_the_roster_malformed(policy):
    with pytest.raises(MalformedRosterError):
        _roster(policy)


def test_the_authority_policy_plumbing_sets_and_clears_the_floor():
    policy = auth.policy_with(
        {"colluders": 1}, min_noise_multiplier=0.8, required_privacy=["distributed", "client"]
    )
    assert policy == {
        "colluders": 1,
        "min_noise_multiplier": 0.8,
        "required_privacy": ["client", "distributed"],
    }
    assert auth.policy_with(policy, minimum_sum=4)["min_noise_multiplier"] == 0.8  # kept
    cleared = auth.policy_with(policy, min_noise_multiplier=0.0, required_privacy=["none"])
    assert cleared == {"colluders": 1}


# ------------------------------------------------------- both sides run the same rule


def _start(privacy: pb.PrivacyParams, minimum: int = 3) -> pb.RoundStart:
    return pb.RoundStart(
        round_id=b"\x01" * 32,
        mode="secagg",
        participants=[pb.Participant(index=i + 1, name=f"c{i}") for i in range(4)],
        max_clients=4,
        minimum_survivors=minimum,
        privacy=privacy,
    )


def test_the_client_refuses_below_the_floor_with_the_privacy_code():
    honest = pb.PrivacyParams(
        mode="distributed",
        mechanism="discrete_gaussian",
        clip=1.0,
        noise_std=1.0 / math.sqrt(3),
        min_survivors=3,
        range_bits=20,
    )
    assert round_privacy(_start(honest), 136, FLOOR) is not None
    weak = pb.PrivacyParams()
    weak.CopyFrom(honest)
    weak.noise_std *= 1e-6
    assert round_privacy(_start(weak), 136) is not None  # without the policy: the old hole
    with pytest.raises(PrivacyRefusedError, match="signed floor 1; nothing was sent") as caught:
        round_privacy(_start(weak), 136, FLOOR)
    assert refusal_code(caught.value) is RefusalCode.PRIVACY
    weak.CopyFrom(honest)
    weak.range_bits = 8
    with pytest.raises(PrivacyRefusedError, match="grid"):
        round_privacy(_start(weak), 136, FLOOR)
    with pytest.raises(PrivacyRefusedError, match="requires differential privacy"):
        round_privacy(_start(pb.PrivacyParams()), 136, FLOOR)


@pytest.fixture
def store(tmp_path):
    dep = make_deployment(tmp_path, clients=3)
    s = open_store(FederationFolder.load(dep.folder))
    yield s
    s.close()


@pytest.mark.parametrize(
    "privacy",
    [
        {"mode": "distributed", "noise_multiplier": 1.0},
        {"mode": "distributed", "mechanism": "skellam", "noise_multiplier": 1.0, "clip": 0.2},
        {"mode": "client", "noise_multiplier": 1.0, "target_quantile": 0.5, "quantile_noise": 1},
        {
            "mode": "distributed",
            "noise_multiplier": 1.0,
            "target_quantile": 0.5,
            "quantile_noise": 2,
        },
    ],
)
def test_an_honest_appliance_at_the_floor_plans_rounds_its_clients_accept(store, privacy):
    ctl = PrivacyController(PrivacySection(**privacy), store.folder, store.audit)
    ctl.use_policy(lambda: FLOOR)
    for mode, n, minimum in (("secagg", 4, 3), ("secagg+", 30, 16), ("plaintext", 5, 5)):
        if mode == "plaintext" and privacy["mode"] == "distributed":
            continue
        start = _start(pb.PrivacyParams(), minimum)
        start.mode = mode
        del start.participants[:]
        start.participants.extend(pb.Participant(index=i + 1, name=f"c{i}") for i in range(n))
        start.max_clients = n
        plan = ctl.plan_for(start, dimension=136, minimum=minimum)
        assert plan is not None
        assert round_privacy(start, 136, FLOOR) is not None  # what the clients then run


def test_an_appliance_below_the_floor_refuses_to_start_and_to_plan(store):
    ctl = PrivacyController(
        PrivacySection(mode="client", noise_multiplier=0.9), store.folder, store.audit
    )
    with pytest.raises(ConfigError, match=r"noise multiplier 0\.9 .*signed floor 1"):
        ctl.use_policy(lambda: FLOOR)
    off = PrivacyController(PrivacySection(), store.folder, store.audit)
    with pytest.raises(ConfigError, match="requires differential privacy"):
        off.use_policy(lambda: FLOOR)
    policy = [FederationPolicy()]
    ctl.use_policy(lambda: policy[0])  # no floor yet: accepted
    policy[0] = FLOOR  # a roster with a floor installed while serving
    with pytest.raises(PrivacyFloorError, match="signed floor 1"):
        ctl.plan_for(_start(pb.PrivacyParams()), dimension=136, minimum=3)


def test_the_authority_cli_signs_the_floor_into_the_roster(tmp_path):
    from typer.testing import CliRunner

    from sealagg.appliance.cli import app

    env = {"SEALAGG_AUTHORITY_PASSPHRASE": "a long test passphrase", "COLUMNS": "200"}
    folder = tmp_path / "authority"
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, ["authority", *args], env=env)

    result = run("init", "--out", str(folder), "--federation", "fed",
                 "--min-noise-multiplier", "1.5", "--require-privacy", "distributed")  # fmt: skip
    assert result.exit_code == 0, result.output
    signer = auth.FileSigner.load(folder, env["SEALAGG_AUTHORITY_PASSPHRASE"].encode())
    policy = auth.current_roster(folder, signer).federation_policy()
    assert policy.min_noise_multiplier == 1.5
    assert policy.required_privacy == frozenset({"distributed"})
    result = run("sign-roster", "--dir", str(folder), "--require-privacy", "local")
    assert result.exit_code == 1 and "required_privacy" in result.output, result.output
    assert run("sign-roster", "--dir", str(folder), "--min-noise-multiplier", "-1").exit_code
    result = run("sign-roster", "--dir", str(folder), "--min-noise-multiplier", "0",
                 "--require-privacy", "none")  # fmt: skip
    assert result.exit_code == 0 and "version 2" in result.output, result.output
    roster = auth.current_roster(folder, signer)
    assert roster.policy == {} and not roster.federation_policy().requires_privacy
    assert "--min-noise-multiplier" in run("sign-roster", "--help").output
