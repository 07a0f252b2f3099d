"""The Python admin API (appliance/admin_api.py) against a real appliance over mutual TLS:
views after a real round, approval, revocation, audit verification (and a row edited on
disk), model export, and who may call what."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import grpc
import pytest
from sealagg_testkit.rounds import FAST, run_clients

from sealagg.appliance import admin_api
from sealagg.appliance.admins import issue_admin
from sealagg.appliance.cli._common import ADMIN_KIT_DIRNAME, ADMIN_NAME
from sealagg.appliance.federation import FederationFolder, add_client
from sealagg.appliance.server import open_store
from sealagg.appliance.store import default_state_path
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire import sealagg_pb2_grpc as pb_grpc
from sealagg.client_shim.connection import Connection


def _with_admins(dep, **named: list[str]) -> dict[str, Path]:
    """The legacy admin kit (``<folder>/admin-kit``) and named administrators' kits."""
    add_client(dep.federation, ADMIN_NAME, out=dep.folder / ADMIN_KIT_DIRNAME)
    federation = FederationFolder.load(dep.folder)
    kits = {}
    for name, roles in named.items():
        kits[name] = dep.folder.parent / f"{name}-kit"
        issue_admin(federation, name, roles, out=kits[name], added_by="test")
    return kits


def _round(dep) -> None:
    threads, _, errors = run_clients(dep, sorted(dep.kits))
    for t in threads:
        t.join(60)
    assert not errors, errors


def _stored(dep, what):
    store = open_store(FederationFolder.load(dep.folder))
    try:
        return what(store)
    finally:
        store.close()


def test_views_approve_revoke_export_and_verify(deployment, running, tmp_path) -> None:
    dep = deployment(clients=3)
    kits = _with_admins(dep, carol=["auditor"], olga=["operator"])
    dep.configure(
        aggregation={"mode": "plaintext", "min_clients": 3, "rounds": 0},
        deadlines=FAST,
        gates={"require_approval": True},
    )
    running(dep.folder)
    _round(dep)

    def named(name: str) -> admin_api.AdminClient:
        return admin_api.connect(dep.folder, kit=kits[name], address=dep.address, timeout=15)

    with admin_api.connect(dep.folder, address=dep.address, timeout=15) as admin:
        (round_,) = admin.rounds()
        assert round_["status"] == "pending_approval" and round_["members"] == 3
        assert [r["status"] for r in admin.runs()] == [r["status"] for r in admin.list_runs()]
        assert {c["name"] for c in admin.clients()} == {"client0", "client1", "client2"}
        (pending,) = admin.approvals()
        assert pending["round"] == round_["number"] and pending["version"] == 2
        assert admin.federation_view()["mode"] == "plaintext"
        assert admin.live()["round"] is None and admin.privacy()["enabled"] is False

        # An auditor may read and verify, not decide or revoke.
        with named("carol") as carol:
            assert [v["version"] for v in carol.versions()] == [1, 2]
            with pytest.raises(admin_api.AdminAPIError, match="carol may not decide"):
                carol.approve(round_["number"], "looks fine")
            with pytest.raises(admin_api.AdminAPIError, match="carol may not revoke client"):
                carol.revoke("client1", "")
            assert carol.verify_audit()["ok"] is True

        detail = admin.approve(round_["number"], "accuracy fine on the holdout")
        assert "published" in detail, detail
        current = [v for v in admin.versions() if v["current"]]
        assert [v["version"] for v in current] == [2] and current[0]["status"] == "accepted"
        assert admin.approvals() == []
        with pytest.raises(admin_api.AdminAPIError, match="refused"):
            admin.approve(round_["number"], "again")  # nothing pending any more

        # Export: the stored bytes, checked against the stored SHA-256 on arrival.
        out = tmp_path / "model.safetensors"
        exported = admin.export_model(0, out=out)
        stored_sha = _stored(dep, lambda s: s.model_version(2).sha256)
        assert exported.version == 2 and exported.sha256 == stored_sha
        assert hashlib.sha256(out.read_bytes()).hexdigest() == stored_sha
        assert admin.export_model(1).version == 1
        with pytest.raises(admin_api.AdminAPIError, match="NOT_FOUND: there is no model version 9"):
            admin.export_model(9)

        # Revocation by an operator: refused at the client's next call, shown, audited.
        before = Connection(dep.kits["client0"], address=dep.address, timeout=5, retry_seconds=0)
        assert before.get_task(0.1).WhichOneof("kind") in ("idle", "round_start", "round_end")
        with named("olga") as olga:
            assert "revoked client0" in olga.revoke("client0", "laptop lost")
            with pytest.raises(admin_api.AdminAPIError, match="olga may not audit verify"):
                olga.verify_audit()
        with pytest.raises(grpc.RpcError) as refused:
            before.stub.GetTask(pb.TaskRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "client0" in refused.value.details()
        before.close()
        client0 = next(c for c in admin.clients() if c["name"] == "client0")
        assert client0["state"] == "revoked" and client0["revoke_reason"] == "laptop lost"
        assert client0["revoked_at"] and not client0["kit_valid"]
        with pytest.raises(admin_api.AdminAPIError, match="INVALID_ARGUMENT: 'admin' is an admin"):
            admin.revoke("admin", "no")
        with pytest.raises(admin_api.AdminAPIError, match="INVALID_ARGUMENT: 'carol' is an admin"):
            admin.revoke("carol", "no")
        with pytest.raises(admin_api.AdminAPIError, match="NOT_FOUND: no client named 'nobody'"):
            admin.revoke("nobody", "no")

        entries = admin.audit(limit=500)["entries"]
        (revoked,) = [e for e in entries if e["kind"] == "client_revoked"]
        assert revoked["actor"] == "olga" and revoked["summary"]["reason"] == "laptop lost"
        (approval,) = [e for e in entries if e["kind"] == "approval"]
        assert approval["actor"] == "admin"
        assert any(e["kind"] == "model_exported" and e["actor"] == "admin" for e in entries)

        # Verify: OK, then one audit row edited on disk is the first broken entry.
        report = admin.verify_audit()
        count = _stored(dep, lambda s: len(s.audit))
        assert report == {**report, "ok": True, "entries": count, "first_broken": None}
        edited = _edit_audit_row(dep.folder, event="client_revoked")
        report = admin.verify_audit()
        assert report["ok"] is False and report["first_broken"]["seq"] == edited, report
        assert report["first_broken"]["reason"]


def _edit_audit_row(folder: Path, *, event: str) -> int:
    """Change one field of the first ``event`` entry in the SQLite file (as an intruder with
    the file would); returns its seq."""
    conn = sqlite3.connect(default_state_path(folder), timeout=10)
    try:
        seq, raw = conn.execute(
            "SELECT seq, entry FROM audit_log WHERE event = ? ORDER BY seq LIMIT 1", (event,)
        ).fetchone()
        entry = json.loads(raw)
        entry["details"]["reason"] = "routine rotation"
        conn.execute(
            "UPDATE audit_log SET entry = ? WHERE seq = ?",
            (json.dumps(entry, sort_keys=True, separators=(",", ":")).encode(), seq),
        )
        conn.commit()
    finally:
        conn.close()
    return seq


def test_a_clients_kit_is_refused_for_every_admin_call(deployment, running) -> None:
    dep = deployment(clients=3)
    _with_admins(dep)
    dep.configure(aggregation={"mode": "plaintext", "min_clients": 3})
    running(dep.folder)
    kit = dep.kits["client1"]
    with pytest.raises(admin_api.AdminAPIError, match="belongs to client 'client1'"):
        admin_api.connect(dep.folder, kit=dep.folder / "kits" / "client1", address=dep.address)

    ca, key, cert = kit.channel_credentials_material()
    channel = grpc.secure_channel(
        dep.address,
        grpc.ssl_channel_credentials(ca, key, cert),
        options=[("grpc.ssl_target_name_override", kit.server_name)],
    )
    stub = pb_grpc.AdminStub(channel)
    methods = pb.DESCRIPTOR.services_by_name["Admin"].methods
    assert {"Query", "Revoke", "VerifyAudit", "ExportModel", "OpenConsole"} <= {
        m.name for m in methods
    }
    requests = {
        "Query": pb.AdminQuery(view="clients"),
        "Revoke": pb.RevokeRequest(name="client2", reason="x"),
        "Decide": pb.DecisionRequest(round_number=1, approve=True),
        "ExportModel": pb.ExportModelRequest(version=0),
    }
    try:
        for method in methods:
            request = requests.get(method.name) or getattr(pb, method.input_type.name)()
            call = getattr(stub, method.name)
            with pytest.raises(grpc.RpcError) as refused:
                if method.server_streaming:
                    list(call(request, timeout=10))
                else:
                    call(request, timeout=10)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, method.name
            assert "client1 is not an administrator" in refused.value.details(), method.name
    finally:
        channel.close()
    active = _stored(dep, lambda s: {p.name for p in s.participants(active_only=True)})
    assert "client2" in active  # the refused Revoke changed nothing

    with admin_api.connect(dep.folder, address=dep.address, timeout=15) as admin:
        # The console is off by default: an admin is told so, not handed a URL.
        off = "FAILED_PRECONDITION: the console is off"
        with pytest.raises(admin_api.AdminAPIError, match=off):
            admin.console_url()
        with pytest.raises(admin_api.AdminAPIError, match="INVALID_ARGUMENT: unknown view"):
            admin.query("keys")
        with pytest.raises(admin_api.AdminAPIError, match="INVALID_ARGUMENT: limit must be"):
            admin.audit(limit=501)


def test_masked_mode_over_the_api_shows_no_per_client_values(deployment, running) -> None:
    dep = deployment(clients=3)
    _with_admins(dep)
    dep.configure(aggregation={"mode": "secagg", "min_clients": 3, "rounds": 0}, deadlines=FAST)
    running(dep.folder)
    _round(dep)
    with admin_api.connect(dep.folder, address=dep.address, timeout=15) as admin:
        (round_,) = admin.rounds()
        assert round_["status"] == "accepted" and round_["survivors"] == 3
        forbidden = {"update", "gradient", "loss", "accuracy", "metrics", "n", "weight", "reports"}
        for client in admin.clients():
            assert not forbidden & set(client), client
        fed = admin.federation_view()
        assert fed["threshold"] and fed["neighbours"] == 2  # secagg: the complete graph
        entries = admin.audit(limit=500)["entries"]
        for entry in entries:
            if entry["kind"] == "client_reports":
                assert entry["summary"]["reports"] == {"clients": ["client0", "client1", "client2"]}
        assert any(e["kind"] == "client_reports" for e in entries)
