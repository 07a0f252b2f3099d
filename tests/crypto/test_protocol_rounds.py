"""Whole rounds: the unmasked result is the exact modular sum of the survivors' inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealagg.crypto import Phase
from sealagg.crypto.errors import BelowThresholdError, CoinRevealError
from sealagg.crypto.simulation import RoundStats, run_round
from sealagg.crypto.testing import make_round


def test_complete_graph_no_dropouts_gives_exact_sum():
    kit = make_round(5, threshold=3)
    stats = RoundStats()
    result = run_round(kit.config, kit.identities, kit.inputs, stats=stats)
    assert result.survivors == (1, 2, 3, 4, 5)
    np.testing.assert_array_equal(result.total, kit.expected_sum(range(1, 6)))
    assert stats.bytes_up > 5 * 4 * 33
    assert set(stats.client_seconds) == set(Phase) - {Phase.REVEAL_COINS}  # complete: no coins


def test_sparse_graph_with_dropouts_at_every_phase():
    """The sparse graph is drawn from the transcript (fresh keys each run), so which
    clients a low-degree neighbourhood prunes varies; the sum is always exact. (Degree 12:
    with a random graph of expected degree 8, a client with three neighbours, one of them
    dropping, is likely enough to abort this test now and then.)"""
    kit = make_round(24, threshold=3, degree=12, seed=3)
    dropouts = {
        2: Phase.ADVERTISE_KEYS,  # (a drop at REVEAL_COINS aborts: test_dropout_schedules)
        5: Phase.SHARE_KEYS,
        9: Phase.MASKED_INPUT,
        13: Phase.CONSISTENCY_CHECK,
        17: Phase.UNMASKING,
    }
    result = run_round(kit.config, kit.identities, kit.inputs, dropouts)
    # Clients that sent a masked input are in the sum, even if they vanished later.
    assert {13, 17} <= set(result.survivors)
    assert not {2, 5, 9} & set(result.survivors)
    assert len(result.survivors) >= 18
    np.testing.assert_array_equal(result.total, kit.expected_sum(result.survivors))


def test_masked_input_hides_the_input():
    from sealagg.crypto.client import SecAggClient
    from sealagg.crypto.server import SecAggServer

    kit = make_round(4, threshold=2, dimension=1000)
    server = SecAggServer(kit.config)
    clients = {u: SecAggClient(kit.config, u, kit.identities[u]) for u in kit.identities}
    for u, c in clients.items():
        c.set_input(kit.inputs[u])
        server.receive(u, c.advertise_keys())
    for u, m in server.close_phase().items():  # complete graph: the shares come straight
        server.receive(u, clients[u].receive_key_directory(m))
    bundles = server.close_phase()
    masked = clients[1].receive_share_bundle(bundles[1])
    y = np.frombuffer(masked.vector, dtype="<u4")
    assert np.count_nonzero(y == kit.inputs[1]) < 5  # essentially every coordinate changed


def test_below_threshold_aborts_without_partial_sum():
    kit = make_round(6, threshold=4)
    # Three vanish after masking: the survivors' self masks need 4 shares, only 3 holders answer.
    dropouts = {4: Phase.UNMASKING, 5: Phase.UNMASKING, 6: Phase.UNMASKING}
    with pytest.raises(BelowThresholdError, match="no partial sum"):
        run_round(kit.config, kit.identities, kit.inputs, dropouts)


def test_too_few_masked_inputs_aborts():
    kit = make_round(5, threshold=3)
    dropouts = {u: Phase.MASKED_INPUT for u in (1, 2, 3)}
    with pytest.raises(BelowThresholdError, match="masked input"):
        run_round(kit.config, kit.identities, kit.inputs, dropouts)


_phase = st.sampled_from(list(Phase))


@st.composite
def _schedules(draw):
    n = draw(st.integers(min_value=3, max_value=100))
    complete = n <= 12 or (draw(st.booleans()) and n <= 20)
    degree = None if complete else draw(st.sampled_from([4, 6, 8, 10]))
    k = n - 1 if degree is None else degree
    threshold = draw(st.integers(min_value=2, max_value=max(2, k // 2)))
    ids = list(range(1, n + 1))
    drops = draw(st.lists(st.sampled_from(ids), unique=True, max_size=n // 4))
    schedule = {u: draw(_phase) for u in drops}
    return n, degree, threshold, schedule


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_schedules(), st.integers(min_value=0, max_value=2**16))
def test_property_exact_sum_of_survivors_or_clean_abort(params, seed):
    n, degree, threshold, schedule = params
    kit = make_round(n, threshold=threshold, degree=degree, dimension=7, seed=seed)
    try:
        result = run_round(kit.config, kit.identities, kit.inputs, schedule)
    except (BelowThresholdError, CoinRevealError):
        return  # a clean abort: the property is that no wrong sum is ever released
    masked = [
        u for u in range(1, n + 1) if schedule.get(u, Phase.UNMASKING + 1) > Phase.MASKED_INPUT
    ]
    assert set(result.survivors) <= set(masked)
    np.testing.assert_array_equal(result.total, kit.expected_sum(result.survivors))
    # Survivors are exactly the clients that masked and were kept in the round.
    dropped_early = {u for u, p in schedule.items() if p <= Phase.MASKED_INPUT}
    assert not dropped_early & set(result.survivors)


@pytest.mark.parametrize(
    ("n", "degree", "threshold"),
    [(3, None, 2), (10, None, 5), (50, 16, 5), (200, 20, 6)],
)
@pytest.mark.parametrize("schedule_seed", range(4))
def test_random_dropout_schedules_up_to_200_clients(n, degree, threshold, schedule_seed):
    """Issue 17: with the transcript-derived graph, the signed shares and the checked
    reconstructions, random dropouts at every phase still give the exact sum of the
    survivors or a clean abort (never a wrong sum)."""
    rng = np.random.default_rng(1000 * n + schedule_seed)
    kit = make_round(n, threshold=threshold, degree=degree, dimension=5, seed=schedule_seed)
    drops = rng.choice(np.arange(1, n + 1), size=int(rng.integers(0, max(1, n // 8) + 1)))
    phases = list(Phase)
    schedule = {int(u): phases[int(rng.integers(0, len(phases)))] for u in drops}
    try:
        result = run_round(kit.config, kit.identities, kit.inputs, schedule)
    except (BelowThresholdError, CoinRevealError):
        return
    assert not {u for u, p in schedule.items() if p <= Phase.MASKED_INPUT} & set(result.survivors)
    assert len(result.survivors) >= kit.config.minimum_survivors
    np.testing.assert_array_equal(result.total, kit.expected_sum(result.survivors))
