"""Differential privacy on Ray stripes (issue 22, ``[scale]`` with ``[privacy]``).

- Bit-identical: for each masked DP mechanism (``client`` mode's gaussian, ``distributed``
  mode's discrete Gaussian and Skellam), the same clients' DP-encoded inputs (fixed sampler
  keys) summed by the one-process protocol and by W = 2 and W = 3 unequal stripes, with a
  client gone before its masked input, give the same ring sum, the same survivors and the
  same decoded mean, count and extras (the privacy plan's own decode).
- End to end: a real appliance with ``[scale]`` and ``privacy.mode = distributed`` (secagg+,
  unequal stripes, shim clients over gRPC and mutual TLS): one round publishes; the
  aggregate is the plan's decode of the assembled sum (whose digest is the audited one),
  the published model is the base plus that mean, and the privacy record, the controller's
  status and its persisted state account the round as tests/e2e/test_dp.py expects of the
  one-process appliance.

The Ray cluster is the session's (tests/scale/conftest.py).
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
from sealagg_testkit.audit import audit_details
from sealagg_testkit.clients import join, published_flat, run_clients
from sealagg_testkit.striped import record_aggregates, stripe_pool

from sealagg.appliance.accounting import RoundPrivacy, epsilon
from sealagg.appliance.privacy import RoundPlan
from sealagg.appliance.scale.coordinator import StripedRound, plan_stripes
from sealagg.appliance.scale.local import run_striped_round
from sealagg.appliance.testing import base_model
from sealagg.appliance.wire.modelcodec import Layout, flatten
from sealagg.crypto import Phase
from sealagg.crypto.dp import DistributedDPSpec, Sampler, encode_dp_update, rotation_seed
from sealagg.crypto.simulation import run_round
from sealagg.crypto.testing import make_round

N = 5
DIMENSION = 100  # padded to 128: 130 ring coordinates (rotated update, count, indicator)
CHUNK_WORDS = 16  # several chunks per stripe
WEIGHTS = {2: [3, 1], 3: [1, 2, 4]}
DROPOUTS = {4: Phase.MASKED_INPUT}  # client 4 shared keys, then vanished: its masks removed
#: (privacy.mode, mechanism): client mode uses the gaussian mechanism in masked rounds.
MECHANISMS = [
    ("client", "gaussian"),
    ("distributed", "discrete_gaussian"),
    ("distributed", "skellam"),
]


@pytest.fixture(scope="module")
def stripes(cluster):
    yield from stripe_pool(max(WEIGHTS))


def _plan(mode: str, mechanism: str, round_id: bytes) -> RoundPlan:
    """A masked round's plan as PrivacyController.plan makes it (noise for 3 survivors)."""
    m = 3
    spec = DistributedDPSpec(
        mechanism=mechanism,  # type: ignore[arg-type]
        dimension=DIMENSION,
        clip=1.0,
        noise_std=0.5 / math.sqrt(m),
        indicator_std=2.0 / math.sqrt(m),  # adaptive clipping on: the indicator is summed too
        max_clients=N,
    )
    return RoundPlan(1, mode, True, spec, rotation_seed(round_id), m, 1.0, 2.0)


@pytest.mark.parametrize(("mode", "mechanism"), MECHANISMS)
def test_dp_sums_on_stripes_are_bit_identical_to_one_process(stripes, mode, mechanism) -> None:
    kit = make_round(N, threshold=3, dimension=DIMENSION + 30, seed=7)
    plan = _plan(mode, mechanism, kit.config.round_id)
    assert plan.spec.vector_length == kit.config.vector_length
    rng = np.random.default_rng(11)
    updates = {u: rng.normal(0.0, 0.08, DIMENSION) for u in kit.identities}
    updates[2] *= 30.0  # one update over the clip: clipped, counted under the indicator
    inputs = {
        u: encode_dp_update(updates[u], plan.spec, plan.seed, sampler=Sampler(bytes([u]) * 32))[0]
        for u in kit.identities
    }
    reference = run_round(kit.config, kit.identities, inputs, DROPOUTS)
    assert reference.survivors == (1, 2, 3, 5)
    mean, count, extras = plan.decode(reference.total)
    assert count == 4.0 and extras["wrapped"] == 0.0
    # Sanity: the decoded mean is the survivors' clipped mean plus noise of the planned size.
    clipped = [updates[u] / max(1.0, float(np.linalg.norm(updates[u]))) for u in (1, 2, 3, 5)]
    noise = mean - np.mean(clipped, axis=0)
    assert np.abs(noise).max() < 8 * math.sqrt(4) * plan.spec.noise_std / 4

    for w, weights in WEIGHTS.items():
        ranges = plan_stripes(kit.config.vector_length, weights)
        assert len({r.stop - r.start for r in ranges}) == w  # unequal stripes
        striped = StripedRound(kit.config, stripes[:w], ranges, chunk_words=CHUNK_WORDS)
        outcome = run_striped_round(striped, kit.identities, inputs, DROPOUTS)
        assert outcome.survivors == reference.survivors
        assert outcome.total.dtype == np.uint32
        assert np.array_equal(outcome.total, reference.total)
        striped_mean, striped_count, striped_extras = plan.decode(outcome.total)
        assert np.array_equal(striped_mean, mean) and striped_count == count
        assert striped_extras == extras


# ------------------------------------------------------------------------------ end to end

DEADLINES = dict.fromkeys(
    ("advertise_keys", "share_keys", "masked_input", "consistency_check", "unmasking"), 60
)
BASE = flatten(base_model(), Layout.of(base_model()))


@pytest.fixture
def aggregated(monkeypatch) -> list[tuple[np.ndarray, object, object]]:
    return record_aggregates(monkeypatch)


def test_serve_publishes_a_distributed_dp_round_summed_on_stripes(
    cluster, deployment, running, aggregated
) -> None:
    dep = deployment(clients=N)
    z, clip, delta = 0.5, 1.0, 1e-5
    dep.configure(
        aggregation={"mode": "secagg+", "min_clients": N, "max_clients": N, "rounds": 1},
        deadlines=DEADLINES,
        privacy={
            "mode": "distributed",
            "noise_multiplier": z,
            "clip": clip,
            "population": 50,
            "delta": delta,
        },
        scale={"stripes": [3, 1], "chunk_words": 16, "address": cluster.cluster.address},
    )
    app = running(dep.folder)
    orchestrator = app.app.orchestrator
    assert orchestrator.scale is not None and len(orchestrator.scale.stripes) == 2

    names = [f"client{i}" for i in range(N)]
    threads, _, errors = run_clients(dep, names)
    app.wait(150)
    join(threads, 30)
    assert not errors, errors
    outcome = orchestrator.history[-1]
    assert outcome.outcome == "published", outcome
    assert outcome.contributors == tuple(names)

    # The aggregate is the privacy plan's decode of the sum the stripes assembled.
    ((total, aggregate, decoder),) = aggregated
    plan = decoder.__self__  # the orchestrator set the round's plan.decode as its decoder
    assert isinstance(plan, RoundPlan) and decoder == plan.decode and plan.mode == "distributed"
    assert total.shape == (plan.spec.vector_length,)
    mean, count, extras = plan.decode(total)
    assert np.array_equal(aggregate.mean_update, mean.astype(np.float32))
    assert aggregate.total_weight == count == N
    np.testing.assert_equal(aggregate.privacy, extras)  # no adaptive clip: noisy count is NaN
    (audited,) = audit_details(dep, "aggregate")
    assert audited["aggregate_sha256"] == hashlib.sha256(total.tobytes()).hexdigest()
    (parameters,) = audit_details(dep, "round_parameters")
    assert parameters["stripes"] == 2 and parameters["stripe_weights"] == [3.0, 1.0]
    version, flat, _ = published_flat(dep)
    assert version == 2
    np.testing.assert_allclose(flat, BASE + mean, atol=1e-6)

    # Accounted as the one-process appliance accounts it (tests/e2e/test_dp.py).
    status = orchestrator.privacy.status()
    (record,) = audit_details(dep, "privacy")
    m = record["min_survivors"]
    assert record["survivors"] == N and record["mechanism"] == "discrete_gaussian"
    assert m == plan.min_survivors
    z_eff = record["effective_noise_multiplier"]
    assert z_eff == pytest.approx(z * math.sqrt(N / m), rel=0.01)
    eps = epsilon([RoundPrivacy(1, N / 50, z_eff)], delta)
    assert record["epsilon_cumulative"] == pytest.approx(eps)
    assert status["epsilon_cumulative"] == pytest.approx(eps)
    assert status["mode"] == "distributed" and status["rounds_accounted"] == 1
    state = json.loads((dep.folder / "privacy_state.json").read_text())  # survives a restart
    assert len(state["rounds"]) == 1
