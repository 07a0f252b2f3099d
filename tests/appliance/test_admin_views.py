"""The admin views (appliance/admin_views.py) over a real appliance's state after real rounds:
what each view shows, that views only read, and that bad arguments are refused clearly."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from sealagg_testkit.rounds import FAST, run_clients

from sealagg.appliance.admin_views import VIEWS, AdminViews, ViewError
from sealagg.appliance.testing import RunningAppliance


def _on_loop(app: RunningAppliance, call: Callable[[], Any]) -> Any:
    """Run ``call`` on the appliance's event loop (the orchestrator's state belongs to it)."""

    async def go() -> Any:
        return call()

    return asyncio.run_coroutine_threadsafe(go(), app.loop).result(15)


def _views(app: RunningAppliance) -> Callable[..., Any]:
    a = app.app
    views = AdminViews(a.orchestrator, a.store, a.federation, admins=a.admins.current)
    return lambda name, args=None: _on_loop(app, lambda: views.view(name, args))


def _one_round(dep, running, **config) -> RunningAppliance:
    dep.configure(deadlines=FAST, **config)
    app = running(dep.folder)
    threads, _, errors = run_clients(dep, sorted(dep.kits))
    for t in threads:
        t.join(60)
    assert not errors, errors
    return app


def test_every_view_after_a_round_held_for_approval(deployment, running) -> None:
    dep = deployment(clients=3)
    app = _one_round(
        dep,
        running,
        aggregation={"mode": "plaintext", "min_clients": 3, "rounds": 0},
        gates={"require_approval": True},
    )
    view = _views(app)
    audit_before = len(app.app.store.audit)
    every = {name: view(name) for name in VIEWS}
    for data in every.values():  # JSON-safe, no NaN
        json.dumps(data, allow_nan=False)
    assert len(app.app.store.audit) == audit_before  # views never write

    fed = every["federation"]
    assert fed["name"] == "testfed" and fed["mode"] == "plaintext"
    assert fed["colluders"] is None and fed["threshold"] is None  # plaintext has neither
    assert fed["require_approval"] is True and fed["approvals_required"] == 1
    assert fed["server_certificate"]["days_left"] > 300
    assert fed["ca_certificate"]["not_after"].endswith("Z")
    assert fed["roster"]["installed"] and fed["roster"]["entries"] == 3
    assert fed["roster"]["authority_pinned"] and fed["roster"]["signed_by"]
    assert {"name": "admin", "roles": ["approver", "auditor", "operator"], "legacy": True} in (
        fed["admins"]
    )

    (round_,) = every["rounds"]
    assert round_["status"] == "pending_approval" and round_["mode"] == "plaintext"
    assert round_["members"] == 3 and round_["survivors"] == 3
    assert round_["phases"] and all(p["seconds"] is not None for p in round_["phases"])
    assert round_["started_at"] <= round_["phases"][-1]["at"]

    versions = {v["version"]: v for v in every["versions"]}
    assert versions[1]["current"] and versions[1]["status"] == "accepted"
    assert versions[2]["status"] == "pending" and not versions[2]["current"]
    assert versions[2]["round"] == round_["number"]

    (pending,) = every["approvals"]
    assert pending["round"] == round_["number"] and pending["version"] == 2
    assert pending["approvals"] == [] and pending["approvals_count"] == 0
    assert pending["required"] == 1

    clients = {c["name"]: c for c in every["clients"]}
    assert set(clients) == {"client0", "client1", "client2"}  # the admin is not a client
    for c in clients.values():
        assert c["state"] == "active" and c["kit_valid"] and not c["revoked"]
        assert c["last_seen"] is not None and c["days_left"] > 300
        assert c["excluded"] is None and c["attestation"] is None

    live = every["live"]
    assert live["mode"] == "plaintext" and live["round"] is None
    assert live["bytes_in"] > 0 and live["history"]

    page = every["audit"]
    assert page["total"] == audit_before and page["offset"] == 0
    assert [e["seq"] for e in page["entries"]] == list(range(min(100, audit_before)))
    tail = view("audit", {"offset": audit_before - 2, "limit": 500})
    assert [e["seq"] for e in tail["entries"]] == [audit_before - 2, audit_before - 1]
    assert every["privacy"]["enabled"] is False and every["attestations"] == []

    only_run = view("rounds", {"run_id": "run-that-is-not", "limit": 5})
    assert only_run == []


def test_views_refuse_unknown_names_and_bad_arguments(deployment, running) -> None:
    dep = deployment(clients=3)
    dep.configure(aggregation={"mode": "plaintext", "min_clients": 3})
    view = _views(running(dep.folder))
    with pytest.raises(ViewError, match="unknown view 'secrets'; views: federation, live"):
        view("secrets")
    with pytest.raises(ViewError, match="limit must be an integer from 1 to 500"):
        view("audit", {"limit": 501})
    with pytest.raises(ViewError, match="offset must be an integer from 0"):
        view("audit", {"offset": -1})
    with pytest.raises(ViewError, match="limit must be an integer"):
        view("rounds", {"limit": "10"})
    with pytest.raises(ViewError, match="view 'clients' takes no arguments; unknown: x"):
        view("clients", {"x": 1})
    with pytest.raises(ViewError, match="run_id must be a string"):
        view("rounds", {"run_id": 3})


def test_masked_mode_views_show_nothing_per_client_beyond_liveness(deployment, running) -> None:
    """secagg+: the appliance never holds one client's update, and no view may look as if
    it did. What each client declared (its example count) stays out of every view; the
    audit view keeps only who declared."""
    dep = deployment(clients=3)
    app = _one_round(dep, running, aggregation={"mode": "secagg+", "min_clients": 3, "rounds": 0})
    view = _views(app)
    clients = view("clients")
    allowed = {
        "name", "state", "ready", "in_round", "vanished", "last_seen", "cert_serial",
        "issued_at", "not_after", "days_left", "kit_valid", "revoked", "revoked_at",
        "revoke_reason", "excluded", "attestation",
    }  # fmt: skip
    assert clients and all(set(c) == allowed for c in clients)
    fed = view("federation")
    assert fed["colluders"] is not None and fed["minimum_survivors"] >= 3
    assert fed["threshold"] >= 2 and fed["neighbours"] >= 2
    page = view("audit", {"limit": 500})
    reports = [e for e in page["entries"] if e["kind"] == "client_reports"]
    assert reports, [e["kind"] for e in page["entries"]]
    for entry in reports:
        assert entry["summary"]["reports"] == {"clients": ["client0", "client1", "client2"]}
    text = json.dumps([view(name) for name in VIEWS if name != "audit"])
    assert '"n":' not in text.replace(" ", "")  # the clients' declared {"n": i}


def test_privacy_view_has_an_epsilon_series_per_run(deployment, running) -> None:
    dep = deployment(clients=3)
    dep.configure(
        aggregation={"mode": "plaintext", "min_clients": 3, "rounds": 0},
        deadlines=FAST,
        privacy={"mode": "client", "noise_multiplier": 1.0, "clip": 5.0},
    )
    app = running(dep.folder)
    threads, _, errors = run_clients(dep, sorted(dep.kits), rounds=2)
    for t in threads:
        t.join(90)
    assert not errors, errors
    privacy = _views(app)("privacy")
    assert privacy["enabled"] is True and privacy["mode"] == "client"
    assert privacy["delta"] > 0 and privacy["accountant"]
    (run,) = privacy["runs"]
    assert run["run_id"] == "run-1"  # the implicit run of the configuration's rounds
    first, second = run["series"]
    assert first["round"] < second["round"]
    assert 0 < first["epsilon_cumulative"] < second["epsilon_cumulative"]
    assert second["epsilon_cumulative"] == pytest.approx(privacy["epsilon_cumulative"])
