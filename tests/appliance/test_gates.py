"""Quality gate, human approval, and the server optimizer's state across restarts."""

from __future__ import annotations

import numpy as np
import pytest
from sealagg_testkit.rounds import FAST, published, run_clients

from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.server import open_store


def _finish(app, threads, errors) -> None:
    app.wait(60)
    for t in threads:
        t.join(30)
    assert not errors, errors


def test_quality_gate_rejection_keeps_the_previous_model(deployment, running):
    dep = deployment(clients=3)
    dep.configure(
        aggregation={"mode": "secagg", "min_clients": 3, "rounds": 1},
        deadlines=FAST,
        optimizer={"name": "fedavgm", "server_lr": 1.0, "momentum": 0.9},
    )
    seen = []

    def gate(candidate, aggregate):
        seen.append(aggregate.contributors)
        return False, "holdout accuracy fell"

    app = running(dep.folder, quality_gate=gate)
    threads, reports, errors = run_clients(dep, sorted(dep.kits))
    _finish(app, threads, errors)
    assert seen == [("client0", "client1", "client2")]
    assert all(r[0].outcome == "rejected" for r in reports.values())
    model, _, _audit, rounds = published(dep)
    assert model.version == 1  # the base model stays current
    assert rounds[-1].status == "rejected"
    assert app.app.orchestrator._optimizer.steps == 0  # momentum did not advance
    store = open_store(FederationFolder.load(dep.folder))
    try:
        versions = store.model_versions()
        assert [v.status for v in versions] == ["accepted", "rejected"]  # kept for audit
        events = [e.event for e in store.audit.entries()]
        assert "gate_decision" in events
    finally:
        store.close()


@pytest.fixture
def pending_round(deployment, running):
    """One secagg+ round whose candidate waits for approval: (orchestrator, open store)."""
    dep = deployment(clients=3)
    dep.configure(
        aggregation={"mode": "secagg+", "min_clients": 3, "rounds": 1},
        deadlines=FAST,
        gates={"require_approval": True},
    )
    app = running(dep.folder)
    threads, reports, errors = run_clients(dep, sorted(dep.kits))
    _finish(app, threads, errors)
    assert all(r[0].outcome == "pending_approval" for r in reports.values())
    store = open_store(FederationFolder.load(dep.folder))
    orchestrator = app.app.orchestrator
    orchestrator.store = store
    yield orchestrator, store
    store.close()


def test_human_approval_gate(pending_round):
    orchestrator, store = pending_round
    assert store.current_model().version == 1  # nothing published yet
    detail = orchestrator.decide(rounds_number(store), True, "looks good", "admin")
    assert "published" in detail
    assert store.current_model().version == 2
    assert [e.event for e in store.audit.entries()].count("approval") == 1


def test_a_pending_candidate_cannot_be_approved_over_a_newer_current_model(pending_round):
    orchestrator, store = pending_round
    base = store.load_model(1)
    imported = store.add_model_version(  # e.g. an import while the candidate waited
        {k: v + 1.0 for k, v in base.items()}, parent=None, round=None, status="accepted"
    )
    with pytest.raises(ValueError, match=r"cannot approve .* reject it instead"):
        orchestrator.decide(rounds_number(store), True, "", "admin")
    assert store.current_model().version == imported.version
    assert "approval" not in [e.event for e in store.audit.entries()]
    assert "rejected" in orchestrator.decide(rounds_number(store), False, "stale", "admin")
    assert store.current_model().version == imported.version


def rounds_number(store) -> int:
    return store.rounds()[-1].id


def test_optimizer_state_survives_a_restart(deployment, running):
    dep = deployment(clients=3)
    dep.configure(
        aggregation={"mode": "secagg", "min_clients": 3, "rounds": 1},
        deadlines=FAST,
        optimizer={"name": "fedavgm", "server_lr": 1.0, "momentum": 0.5},
    )
    app = running(dep.folder)
    threads, _, errors = run_clients(dep, sorted(dep.kits))
    _finish(app, threads, errors)
    first = app.app.orchestrator._optimizer.state_dict()
    assert int(first["step"][0]) == 1
    restarted = running(dep.folder)
    state = restarted.app.orchestrator._optimizer.state_dict()
    restarted.stop()
    assert set(state) == set(first)
    for key in first:
        np.testing.assert_array_equal(state[key], first[key])
