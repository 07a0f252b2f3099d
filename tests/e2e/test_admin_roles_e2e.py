"""Named administrators over real mutual TLS: roles enforced by the Admin service, and the
two-person approval of a candidate (issue 19).

Needs the lead's wiring: ``[gates] approvals_required`` in appliance/config.py,
``Orchestrator.decide`` delegating to ``appliance.approvals.record_decision`` and
``AdminService`` calling ``AdminDirectory.authorize(name, action)`` for every call. Until that
is in, the test skips and says so.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sealagg_testkit.rounds import FAST, run_clients

from sealagg.appliance.admins import issue_admin
from sealagg.appliance.cli._admin import AdminClient
from sealagg.appliance.cli._common import CLIError
from sealagg.appliance.config import GatesSection
from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.server import open_store

pytestmark = pytest.mark.skipif(
    "approvals_required" not in GatesSection.model_fields,
    reason="needs [gates] approvals_required and the AdminService/decide wiring (issue 19)",
)


def _clients_done(threads: list[threading.Thread], errors: dict) -> None:
    for t in threads:
        t.join(60)
    assert not errors, errors


def test_two_named_approvers_publish_and_roles_are_enforced(deployment, running) -> None:
    dep = deployment(clients=3)
    dep.configure(
        aggregation={"mode": "secagg+", "min_clients": 3, "rounds": 0},  # keep serving
        deadlines=FAST,
        gates={"require_approval": True, "approvals_required": 2},
    )
    federation = FederationFolder.load(dep.folder)
    kits: dict[str, Path] = {}
    for name, roles in {
        "alice": ["approver"],
        "bob": ["approver", "auditor"],
        "carol": ["auditor"],
        "olga": ["operator"],
    }.items():
        kits[name] = dep.folder.parent / f"{name}-kit"
        issue_admin(federation, name, roles, out=kits[name], added_by="test")

    app = running(dep.folder)
    threads, reports, errors = run_clients(dep, sorted(dep.kits))
    _clients_done(threads, errors)
    assert all(r[0].outcome == "pending_approval" for r in reports.values())
    assert set(app.app.orchestrator.history[0].contributors) == set(dep.kits)  # no admin
    store = open_store(federation)
    try:
        number = store.rounds()[-1].id
    finally:
        store.close()

    def admin(name: str) -> AdminClient:
        return AdminClient(dep.folder, kit_path=kits[name], address=dep.address, timeout=10)

    with admin("carol") as carol:  # an auditor may read status, not decide
        assert "mode" in carol.status()
        with pytest.raises(CLIError, match="carol may not decide: that needs the role approver"):
            carol.decide(number, approve=True, reason="")
    with admin("olga") as olga, pytest.raises(CLIError, match="olga may not decide"):
        olga.decide(number, approve=True, reason="")

    with admin("alice") as alice:
        ok, detail = alice.decide(number, approve=True, reason="metrics fine")
        assert ok and "approval 1 of 2" in detail
        ok, detail = alice.decide(number, approve=True, reason="again")
        assert not ok and "alice already approved" in detail
    store = open_store(federation)
    try:
        assert store.current_model().version == 1  # one person cannot publish
    finally:
        store.close()

    with admin("bob") as bob:
        ok, detail = bob.decide(number, approve=True, reason="agreed")
        assert ok and "published" in detail

    store = open_store(federation)
    try:
        assert store.current_model().version == 2
        entries = store.audit.entries()
        recorded = [e.details["by"] for e in entries if e.event == "approval_recorded"]
        final = [e.details for e in entries if e.event == "approval"]
        participants = {p.name for p in store.participants(active_only=False)}
    finally:
        store.close()
    assert recorded == ["alice"]
    assert len(final) == 1 and final[0]["by"] == "bob"
    assert final[0]["approvers"] == ["alice", "bob"]
    assert participants == set(dep.kits)  # administrators are never participants
