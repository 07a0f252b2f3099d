"""Accounting: our ε equals the libraries' accountants for the same mechanism."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from sealagg.appliance.accounting import (
    RoundPrivacy,
    combine_noise_multipliers,
    conservative,
    epsilon,
    noise_multiplier_for,
)

DELTA = 1e-5


def _rounds(count: int, q: float, z: float) -> list[RoundPrivacy]:
    return [RoundPrivacy(i + 1, q, z) for i in range(count)]


@pytest.mark.parametrize(("q", "z", "rounds"), [(0.1, 1.1, 100), (0.01, 0.8, 1000), (1.0, 5.0, 3)])
def test_rdp_epsilon_equals_dp_accounting_composing_the_same_events(q, z, rounds):
    acc = rdp.RdpAccountant()
    event = dp_accounting.GaussianDpEvent(z)
    if q < 1:
        event = dp_accounting.PoissonSampledDpEvent(q, event)
    acc.compose(event, rounds)
    assert epsilon(_rounds(rounds, q, z), DELTA) == pytest.approx(acc.get_epsilon(DELTA), 1e-12)


def test_pld_epsilon_equals_the_pld_accountant():
    acc = pld.PLDAccountant()
    acc.compose(dp_accounting.PoissonSampledDpEvent(0.2, dp_accounting.GaussianDpEvent(1.0)), 5)
    ours = epsilon(_rounds(5, 0.2, 1.0), DELTA, "pld")
    assert ours == pytest.approx(acc.get_epsilon(DELTA), 1e-9)
    assert ours < epsilon(_rounds(5, 0.2, 1.0), DELTA, "rdp")  # PLD is tighter


@pytest.mark.parametrize(("q", "z", "rounds"), [(0.1, 1.1, 100), (0.02, 1.0, 500)])
def test_client_level_gaussian_matches_opacus_rdp_accountant(q, z, rounds):
    from opacus.accountants import RDPAccountant

    opacus = RDPAccountant()
    opacus.history = [(z, q, rounds)]
    # Same mechanism; the two libraries evaluate RDP at different orders, hence 2 %.
    assert epsilon(_rounds(rounds, q, z), DELTA) == pytest.approx(opacus.get_epsilon(DELTA), 0.02)


def test_varying_rounds_compose_like_the_library():
    rounds = [RoundPrivacy(1, 0.1, 1.0), RoundPrivacy(2, 0.1, 1.0), RoundPrivacy(3, 0.2, 1.3)]
    acc = rdp.RdpAccountant()
    for r in rounds:
        g = dp_accounting.GaussianDpEvent(r.noise_multiplier)
        acc.compose(dp_accounting.PoissonSampledDpEvent(r.sampling_rate, g))
    assert epsilon(rounds, DELTA) == pytest.approx(acc.get_epsilon(DELTA), 1e-12)
    assert epsilon(rounds[:2], DELTA) < epsilon(rounds, DELTA)


def test_update_and_clip_count_combine_into_one_gaussian():
    # Adaptive clipping releases two Gaussians on the same clients; the library composing
    # both equals one Gaussian of the combined multiplier (Andrew et al. 2021, Thm 1).
    z1, z2 = 1.2, 5.0
    acc = rdp.RdpAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(z1))
    acc.compose(dp_accounting.GaussianDpEvent(z2))
    combined = combine_noise_multipliers([z1, z2])
    assert combined < z1
    assert epsilon(_rounds(1, 1.0, combined), DELTA) == pytest.approx(acc.get_epsilon(DELTA))


def test_no_noise_means_no_guarantee_and_no_rounds_mean_nothing_spent():
    assert epsilon([], DELTA) == 0.0
    assert math.isinf(epsilon([RoundPrivacy(1, 0.5, 0.0)], DELTA))
    assert combine_noise_multipliers([1.0, 0.0]) == 0.0
    with pytest.raises(ValueError):
        RoundPrivacy(1, 0.0, 1.0)
    with pytest.raises(ValueError):
        epsilon(_rounds(1, 0.1, 1.0), 0.0)


def test_calibration_reaches_the_target():
    z = noise_multiplier_for(3.0, DELTA, 1.0, 10)
    assert epsilon(_rounds(10, 1.0, z), DELTA) == pytest.approx(3.0, rel=0.01)
    assert epsilon(_rounds(10, 1.0, z * 1.1), DELTA) < 3.0


def test_conservative_rounding_only_lowers_the_noise_multiplier():
    assert conservative(1.23456789) == 1.234
    assert conservative(0.0987654) == 0.09876
    assert conservative(0.0) == 0.0
    for z in (0.3, 1.0, 1.2345, 7.77777):
        assert 0.999 * z <= conservative(z) <= z
