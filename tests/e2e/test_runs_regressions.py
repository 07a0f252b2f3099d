"""Regressions of issue 19 in round reporting, over mutual TLS on loopback with the shim's
participants: phase records counted the clients of the *next* phase (always 0 but the last),
and a round aborted after a refusal reported "0 clients" though two had answered."""

from __future__ import annotations

import threading

from sealagg_testkit.clients import FAST, join, run_clients
from sealagg_testkit.raw_clients import RawClient

from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.server import open_store


def test_every_phase_records_the_clients_that_answered_it(deployment, running):
    dep = deployment(clients=3)
    dep.configure(aggregation={"mode": "secagg+", "min_clients": 3, "rounds": 1}, deadlines=FAST)
    app = running(dep.folder)
    threads, _reports, errors = run_clients(dep, sorted(dep.kits))
    join(threads)
    app.wait(60)
    assert not errors, errors
    store = open_store(FederationFolder.load(dep.folder))
    try:
        phases = store.phases(1)
    finally:
        store.close()
    assert len(phases) >= 5
    assert [(p.phase, p.clients_in) for p in phases] == [(p.phase, 3) for p in phases]


def test_a_round_aborted_after_a_refusal_counts_the_clients_that_answered(deployment, running):
    dep = deployment(clients=3)
    dep.configure(aggregation={"mode": "secagg+", "min_clients": 3, "rounds": 1}, deadlines=FAST)
    app = running(dep.folder)
    mismatched = RawClient(dep.kits["client2"], dep.address)

    def refuse_the_model() -> None:  # as the shim does when the model's hash differs
        while (task := mismatched.poll()).WhichOneof("kind") != "round_start":
            pass
        mismatched.refuse(task.round_start.round_id, "other", "model sha256 does not match")

    refuser = threading.Thread(target=refuse_the_model, daemon=True)
    refuser.start()
    threads, reports, _errors = run_clients(dep, ["client0", "client1"])
    join([refuser, *threads])
    app.wait(60)
    (outcome,) = app.app.orchestrator.history
    assert outcome.outcome == "aborted"
    assert outcome.contributors == ("client0", "client1")  # not "0 clients"
    assert outcome.dropped == ("client2",)
    assert "refused by client2" in outcome.reason
    assert all(r[0].outcome == "aborted" for r in reports.values())
    mismatched.close()
