"""CI-sized load: 30 clients in one secure round over real gRPC, exact result.

The 200-client round and the multi-round soak are benchmarks/load.py (see docs/RELIABILITY.md).
"""

from __future__ import annotations

import numpy as np
import pytest
from sealagg_testkit.clients import expected_bias_and_weight, join, published_flat, run_clients

N = 30
PATIENT = {
    "advertise_keys": 120,
    "share_keys": 120,
    "masked_input": 120,
    "consistency_check": 120,
    "unmasking": 120,
}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_thirty_clients_one_secure_round(deployment, running):
    """30 threaded clients, SecAgg+ (sparse graph from the parameter finder): every client
    reports the publication and the model is the exact weighted mean of all 30 updates."""
    dep = deployment(clients=N)
    dep.configure(
        aggregation={"mode": "secagg+", "min_clients": N, "rounds": 1, "ready_window": 60.0},
        deadlines=PATIENT,
    )
    app = running(dep.folder)
    threads, reports, errors = run_clients(dep, sorted(dep.kits), timeout=120)
    app.wait(220)
    join(threads, 60)
    assert not errors, errors
    assert [r[0].outcome for r in reports.values()] == ["published"] * N
    outcome = app.app.orchestrator.history[-1]
    assert len(outcome.contributors) == N and outcome.dropped == ()
    version, flat, audited = published_flat(dep)
    assert version == 2 and audited > 10
    np.testing.assert_allclose(flat, expected_bias_and_weight(range(N)), atol=5e-6)


def test_identity_keys_are_cached_but_follow_every_change(deployment):
    """Every poll asks for the active clients' keys; the appliance re-reads the records only
    when one changed, and a revocation or a new client shows at the very next call."""
    from sealagg.appliance.federation import FederationFolder, add_client, revoke_client
    from sealagg.appliance.server import Appliance

    dep = deployment(clients=3)
    app = Appliance(dep.folder)
    try:
        assert sorted(app._identity_keys()) == ["client0", "client1", "client2"]
        assert app._identity_keys() is not app._identity_keys()  # callers get a copy
        revoke_client(FederationFolder.load(dep.folder), "client1")
        assert sorted(app._identity_keys()) == ["client0", "client2"]
        add_client(FederationFolder.load(dep.folder), "client9")
        assert sorted(app._identity_keys()) == ["client0", "client2", "client9"]
    finally:
        app.store.close()
