"""The vendor gate's Evaluate task answered from the CKKS client path (issue 8), real gRPC.

In ``ckks`` mode the round runs through client_shim/ckks.py; the gate party must still
evaluate the candidate on its own holdout while it follows the round, or the appliance
rejects every candidate at the evaluation deadline (fail closed).
"""

from __future__ import annotations

import pytest
from sealagg_testkit.vendor_gate import FAST, HARMFUL, benign, run_parties

from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.server import open_store
from sealagg.crypto.roster import Role

pytest.importorskip("tenseal")


def test_ckks_gate_party_evaluates_candidates_during_the_round(deployment, running):
    dep = deployment(clients=4)  # ckks: three data owners and a designated key holder
    dep.configure(
        aggregation={"mode": "ckks", "min_clients": 4, "rounds": 2},
        deadlines=FAST,
        ckks={"key_holder": "client3"},
        gates={
            "vendor": "client0",
            "metric": "accuracy",
            "higher_is_better": True,
            "tolerance": 0.02,
            "evaluate_deadline": 10,
        },
    )
    dep.sign_roster(roles={"client3": Role.KEY_HOLDER})  # the authority designates it
    app = running(dep.folder)
    evaluated: list[float] = []
    plan = {
        "client0": [benign(1), benign(4)],
        "client1": [benign(2), benign(5)],
        "client2": [benign(3), HARMFUL],  # at weight 1/3 it still ruins the vendor's holdout
        "client3": [benign(6), benign(7)],  # the key holder: it sends no update
    }
    threads, reports, errors = run_parties(dep, plan, evaluated)
    app.wait(120)
    for t in threads:
        t.join(30)
    assert not errors, errors
    for name in plan:
        assert [r.outcome for r in reports[name]] == ["published", "rejected"], reports
    # the base (baseline), round 1's candidate, round 2's harmful candidate: all answered
    assert len(evaluated) == 3
    assert evaluated[0] == 1.0 and evaluated[1] >= 0.98 and evaluated[2] < 0.5
    store = open_store(FederationFolder.load(dep.folder))
    try:
        versions = store.model_versions()
        assert [v.status for v in versions] == ["accepted", "accepted", "rejected"]
        assert [v.metrics["accuracy"] for v in versions] == evaluated
        gate = [e.details for e in store.audit.entries() if e.event == "gate_decision"]
        assert [g["accept"] for g in gate] == [True, False]
        assert "worse than" in gate[1]["reason"]
    finally:
        store.close()
