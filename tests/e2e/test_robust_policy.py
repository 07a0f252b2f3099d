"""Robust (bucketed) masked rounds meet the authority's signed policy (issue 17, item 4).

Each SecAgg bucket is a round of its own: its members check its threshold and quorum
against the federation policy (``c`` colluders, sums over at least ``m``) exactly as in a
plain masked round. The bucketed builder used to choose them without the policy (t=2 and a
majority quorum in a bucket of four), which every client of a c=2 federation refuses; now
it takes the governing policy (the one signed into the installed roster) and publishes.
"""

from __future__ import annotations

import numpy as np
import pytest
from sealagg_testkit.clients import FAST, delta, join, published_flat, run_clients, weight

from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import base_model
from sealagg.appliance.wire.modelcodec import Layout, flatten

pytestmark = [pytest.mark.timeout(150)]
NAMES = [f"client{i}" for i in range(12)]


def test_buckets_meet_the_signed_policy_for_c_2(deployment, running, accepted):
    dep = deployment(clients=12)
    dep.sign_roster(policy={"colluders": 2, "minimum_sum": 4, "allowed_modes": ["secagg"]})
    dep.configure(
        aggregation={
            "mode": "secagg",
            "min_clients": 12,
            "rounds": 1,
            "rule": "median",
            "bucket_size": 4,
        },
        deadlines={**FAST, "advertise_keys": 20},
    )
    app = running(dep.folder)
    threads, reports, errors = run_clients(dep, NAMES)
    app.wait(120)
    join(threads, timeout=90)
    assert not errors, errors
    assert all(r[0].outcome == "published" for r in reports.values()), reports
    store = open_store(FederationFolder.load(dep.folder))
    try:
        setup = [e.details for e in store.audit.entries() if e.event == "round_parameters"][-1]
        refusals = [e for e in store.audit.entries() if e.event == "round_refused_by_client"]
    finally:
        store.close()
    assert refusals == []
    # t > c in every bucket of four, and the quorum is every member (2(Q - c) > n - c, Q >= m).
    assert [p["threshold"] for p in setup["bucket_parameters"]] == [3, 3, 3]
    means = []
    for bucket in setup["buckets"]:
        members = [int(n.removeprefix("client")) for n in bucket]
        x = np.stack([delta(i) for i in members]).astype(np.float64)
        means.append(np.average(x, axis=0, weights=[weight(i) for i in members]))
    _, flat, _ = published_flat(dep)
    base = base_model()
    np.testing.assert_allclose(
        flat - flatten(base, Layout.of(base)), np.median(np.stack(means), axis=0), atol=2e-5
    )
