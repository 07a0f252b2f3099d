"""Issuing, revoking and readmitting are audited when they happen, with who did it.

Regression (issue 19): ``client_revoked`` used to be written at the appliance's next start,
with that start's time ("revoked at 02:06:49, audited at 02:12:52").
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from sealagg.appliance.admins import issue_admin, os_user
from sealagg.appliance.errors import ProvisioningError
from sealagg.appliance.federation import FederationFolder, add_client, revoke_client
from sealagg.appliance.participant_sync import sync_at_start
from sealagg.appliance.server import open_store

runner = CliRunner()


def sealagg(*args: object) -> Result:
    return runner.invoke(app_(), [str(a) for a in args], env={"COLUMNS": "200"})


def app_():
    from sealagg.appliance.cli import app

    return app


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "federation"
    ok(sealagg("init", "-f", path, "--name", "auditfed", "--host", "localhost"))
    return path


def create_state(folder: Path) -> None:
    """The state database as the appliance's first start (or a model import) creates it."""
    open_store(FederationFolder.load(folder)).close()


def entries(folder: Path, event: str) -> list:
    store = open_store(FederationFolder.load(folder))
    try:
        return [e for e in store.audit.entries() if e.event == event]
    finally:
        store.close()


def start_sync(folder: Path) -> list[str]:
    """What the appliance does at start (participant_sync replaces server.sync_participants)."""
    federation = FederationFolder.load(folder)
    store = open_store(federation)
    try:
        return sync_at_start(federation, store)
    finally:
        store.close()


def revocation_time(folder: Path, name: str) -> datetime:
    federation = FederationFolder.load(folder)
    serial = federation.client_record(name).serial
    return next(r.revoked_at for r in federation.revocations().entries if r.serial == serial)


def stamp(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def test_revoke_is_audited_at_once_with_who_and_when(folder: Path) -> None:
    create_state(folder)
    ok(sealagg("add-client", "alice", "-f", folder))
    added = entries(folder, "client_added")
    assert [e.details["name"] for e in added] == ["alice"]  # at once, not at the next start
    assert added[0].details["by"]["os_user"] == os_user()

    ok(sealagg("revoke", "alice", "-f", folder))  # the appliance is down
    revoked = entries(folder, "client_revoked")
    assert len(revoked) == 1, "the revocation must be audited when it happens"
    entry = revoked[0]
    assert entry.details["name"] == "alice" and entry.details["by"]["os_user"] == os_user()
    assert datetime.fromisoformat(entry.time) == stamp(revocation_time(folder, "alice"))

    assert start_sync(folder) == []  # the next start writes nothing twice
    assert len(entries(folder, "client_revoked")) == 1
    assert len(entries(folder, "client_added")) == 1
    store = open_store(FederationFolder.load(folder))
    try:
        assert store.participants(active_only=True) == []
        assert store.participants(active_only=False)[0].status == "revoked"
    finally:
        store.close()


def test_changes_made_before_any_database_get_their_own_time(folder: Path) -> None:
    """No state database yet: the first start records each change once, at the time the
    folder's records give (issue, revocation), never the start's time."""
    federation = FederationFolder.load(folder)
    # Times the records carry, far from the start's own clock (the CA is valid from now on).
    issued = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    revoked = issued + timedelta(hours=1)
    add_client(federation, "alice", now=issued)
    add_client(federation, "bob", now=issued)
    revoke_client(federation, "alice", now=revoked)

    recorded = start_sync(folder)  # the first start, much later
    assert sorted(recorded) == ["client_added alice", "client_added bob", "client_revoked alice"]
    added = {e.details["name"]: e for e in entries(folder, "client_added")}
    assert set(added) == {"alice", "bob"}  # never the admin kit
    assert datetime.fromisoformat(added["alice"].time) == issued
    assert added["alice"].details["by"] is None and "recorded_at" in added["alice"].details
    (gone,) = entries(folder, "client_revoked")
    assert datetime.fromisoformat(gone.time) == revoked
    assert start_sync(folder) == []  # a second start: nothing again
    assert len(entries(folder, "client_revoked")) == 1


def test_revoked_and_reissued_while_down_ends_the_old_certificate(folder: Path) -> None:
    create_state(folder)
    start_sync(folder)
    federation = FederationFolder.load(folder)
    add_client(federation, "alice")
    start_sync(folder)  # an appliance start registered alice's first certificate
    first = federation.client_record("alice").serial
    revoke_client(federation, "alice")  # library calls, not the CLI: nothing audited yet
    add_client(federation, "alice", out=folder.parent / "alice2")
    recorded = start_sync(folder)
    assert recorded == ["client_revoked alice", "client_added alice"]
    (gone,) = entries(folder, "client_revoked")
    assert gone.details["cert_serial"] == format(first, "x")


def test_admins_granted_before_any_database_are_recorded_once(folder: Path) -> None:
    federation = FederationFolder.load(folder)
    when = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    issue_admin(federation, "alice", ["approver"], out=folder.parent / "a", added_by="x", now=when)
    add_client(federation, "client0")
    assert sorted(start_sync(folder)) == ["admin_added alice", "client_added client0"]
    (granted,) = entries(folder, "admin_added")
    assert granted.details["name"] == "alice" and datetime.fromisoformat(granted.time) == when
    assert start_sync(folder) == []
    assert [e.details["name"] for e in entries(folder, "client_added")] == ["client0"]
    revoke_client(federation, "alice")  # revoked by a library call while the appliance is down
    assert start_sync(folder) == ["admin_removed alice"]
    assert start_sync(folder) == []


def test_start_refuses_a_tampered_admin_directory(folder: Path) -> None:
    """Starting with a directory it cannot trust could make an administrator a participant."""
    ok(sealagg("admins", "add", "alice", "--role", "approver", "-f", folder))
    path = folder / "admins.json"
    path.write_text(path.read_text().replace('"approver"', '"operator"'))
    with pytest.raises(ProvisioningError, match="not signed by this federation's provisioning"):
        start_sync(folder)


def test_add_client_with_as_records_the_named_admin(folder: Path) -> None:
    create_state(folder)
    olga_kit = folder.parent / "olga-kit"
    ok(sealagg("admins", "add", "olga", "--role", "operator", "-f", folder, "--out", olga_kit))
    (granted,) = entries(folder, "admin_added")
    assert granted.details["name"] == "olga" and granted.details["roles"] == ["operator"]
    assert granted.details["by"]["os_user"] == os_user()

    ok(sealagg("add-client", "c1", "-f", folder, "--as", "olga", "--as-kit", olga_kit))
    ok(sealagg("add-client", "c2", "-f", folder, "--as", "olga"))
    by = {e.details["name"]: e.details["by"] for e in entries(folder, "client_added")}
    assert by["c1"] == {"os_user": os_user(), "admin": "olga", "admin_proven": True}
    assert by["c2"] == {"os_user": os_user(), "admin": "olga", "admin_proven": False}

    ok(sealagg("admins", "remove", "olga", "-f", folder))
    (removed,) = entries(folder, "admin_removed")
    assert removed.details["name"] == "olga"
    assert datetime.fromisoformat(removed.time) == stamp(revocation_time(folder, "olga"))


def test_readmit_records_who(folder: Path) -> None:
    create_state(folder)
    ok(sealagg("add-client", "c1", "-f", folder))
    store = open_store(FederationFolder.load(folder))
    try:
        store.exclude_participant("c1", round=None, reason="blamed", blamed_by="test")
    finally:
        store.close()
    ok(sealagg("clients", "readmit", "c1", "-f", folder))
    (readmitted,) = entries(folder, "client_readmitted")
    assert os_user() in readmitted.details["by"]


_APPLIANCE_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from sealagg.appliance.federation import FederationFolder
    from sealagg.appliance.server import open_store

    store = open_store(FederationFolder.load(Path(sys.argv[1])))
    print("ready", flush=True)
    for i in range(int(sys.argv[2])):
        store.audit.append("client_not_on_roster", {"client": f"x{i}", "reason": "test"})
    store.close()
    """
)


def test_cli_writes_while_the_appliance_appends_keep_one_chain(folder: Path) -> None:
    """Another process appends to the same audit chain (as a running appliance does) while
    the CLI issues and revokes: every entry lands once and the chain verifies (the head is
    read inside each BEGIN IMMEDIATE transaction, so the chain cannot fork)."""
    create_state(folder)
    writes = 300
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    writer = subprocess.Popen(
        [sys.executable, "-c", _APPLIANCE_WRITER, str(folder), str(writes)],
        stdout=subprocess.PIPE,
        env=env,
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == b"ready"
    names = [f"c{i}" for i in range(4)]
    for name in names:
        ok(sealagg("add-client", name, "-f", folder))
    for name in names[:2]:
        ok(sealagg("revoke", name, "-f", folder))
    assert writer.wait(120) == 0
    federation = FederationFolder.load(folder)
    store = open_store(federation)
    try:
        report = store.audit.verify(federation.signer_public_key)
        events = [e.event for e in store.audit.entries()]
    finally:
        store.close()
    assert report.ok
    assert events.count("client_not_on_roster") == writes
    assert events.count("client_added") == len(names)
    assert events.count("client_revoked") == 2


def test_revoke_while_the_appliance_runs_is_audited_at_once(deployment, running) -> None:
    dep = deployment(clients=3)
    app = running(dep.folder)
    ok(sealagg("revoke", "client1", "-f", dep.folder))
    revoked = entries(dep.folder, "client_revoked")  # before any restart
    assert [e.details["name"] for e in revoked] == ["client1"]
    assert revoked[0].details["by"]["os_user"] == os_user()
    assert datetime.fromisoformat(revoked[0].time) == stamp(revocation_time(dep.folder, "client1"))
    app.app.store.audit.append("config_loaded", {"probe": True})  # the appliance appends on
    app.stop()
    assert start_sync(dep.folder) == []  # the next start adds nothing
    federation = FederationFolder.load(dep.folder)
    store = open_store(federation)
    try:
        assert store.audit.verify(federation.signer_public_key).ok
        assert [e.event for e in store.audit.entries()].count("client_revoked") == 1
    finally:
        store.close()
