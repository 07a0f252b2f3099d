"""``sealagg state backup|restore``: refused on a folder a running appliance holds, and audited
with their actor (``--as``/``--as-kit``) like every other administrative action.

A restore onto a live folder must never get as far as looking at (let alone writing) the
running appliance's files: it takes the folder's instance lock first and names the holder.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from pathlib import Path

from typer.testing import CliRunner, Result

from sealagg.appliance.admins import os_user
from sealagg.appliance.backup import create_backup
from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.server import open_store

SEALAGG = str(Path(sys.executable).parent / "sealagg")
runner = CliRunner()


def sealagg(*args: object) -> Result:
    from sealagg.appliance.cli import app

    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def entries(folder: Path, event: str) -> list:
    store = open_store(FederationFolder.load(folder))
    try:
        return [e for e in store.audit.entries() if e.event == event]
    finally:
        store.close()


def entries_all(folder: Path) -> list:
    store = open_store(FederationFolder.load(folder))
    try:
        return list(store.audit.entries())
    finally:
        store.close()


def snapshot(folder: Path) -> dict[str, str]:
    """Every file of the folder and its SHA-256, but the live database's (the running appliance
    writes it; its audit chain is compared instead). The lock's pid file is the holder's."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith("state.sqlite3")
    }


def _wait_for(condition, timeout: float = 60.0) -> None:
    pause = threading.Event()
    for _ in range(int(timeout / 0.1)):
        if condition():
            return
        pause.wait(0.1)
    raise AssertionError("condition not met in time")


def test_restore_onto_a_folder_held_by_a_running_appliance_is_refused(deployment, tmp_path):
    dep = deployment(clients=2)
    dep.configure(aggregation={"mode": "plaintext", "min_clients": 2})
    log = tmp_path / "serve.log"
    with log.open("wb") as handle:
        serve = subprocess.Popen(
            [SEALAGG, "serve", "-f", str(dep.folder)], stdout=subprocess.DEVNULL, stderr=handle
        )
    try:
        _wait_for(lambda: "serving on port" in log.read_text(encoding="utf-8"))
        backup = tmp_path / "backup"
        create_backup(dep.folder, backup, include_private_keys=True)  # online, while it runs
        before = snapshot(dep.folder)
        events = [e.event for e in entries_all(dep.folder)]

        result = sealagg("state", "restore", backup, "-f", dep.folder)
        assert result.exit_code == 1
        text = " ".join(result.output.split())
        assert f"in use by another appliance (pid {serve.pid})" in text, text
        assert "state database" not in text  # refused by the lock, before looking at the state
        assert snapshot(dep.folder) == before  # nothing read-modified, nothing written
        assert [e.event for e in entries_all(dep.folder)] == events  # nothing audited
        assert serve.poll() is None  # the appliance keeps serving
    finally:
        serve.terminate()
        serve.wait(60)
    # Once it stopped, the same restore is refused for what the folder holds (not the lock).
    result = sealagg("state", "restore", backup, "-f", dep.folder)
    assert result.exit_code == 1 and "already holds a state database" in result.output


def test_backup_and_restore_record_the_named_admin(tmp_path: Path) -> None:
    folder = tmp_path / "federation"
    ok(sealagg("init", "-f", folder, "--name", "statefed", "--host", "localhost"))
    open_store(FederationFolder.load(folder)).close()
    olga_kit = tmp_path / "olga-kit"
    ok(sealagg("admins", "add", "olga", "--role", "operator", "-f", folder, "--out", olga_kit))
    ok(sealagg("admins", "add", "alice", "--role", "approver", "-f", folder))

    proven = tmp_path / "proven"
    ok(sealagg("state", "backup", proven, "-f", folder, "--as", "olga", "--as-kit", olga_kit))
    claimed = tmp_path / "claimed.tar"
    ok(sealagg("state", "backup", claimed, "-f", folder, "--as", "olga"))
    refused = sealagg("state", "backup", tmp_path / "refused", "-f", folder, "--as", "alice")
    assert refused.exit_code == 1
    assert "alice may not state backup: that needs the role operator" in refused.output
    assert not (tmp_path / "refused").exists()
    me = os_user()
    by = [e.details["by"] for e in entries(folder, "state_backup")]
    assert by == [
        {"os_user": me, "admin": "olga", "admin_proven": True},
        {"os_user": me, "admin": "olga", "admin_proven": False},
    ]

    verified = " ".join(ok(sealagg("state", "verify", proven)).output.split())
    assert "as olga (with its kit)" in verified  # the signed manifest names the admin too

    # Restore: --as is checked against the restored federation's administrators.
    denied = tmp_path / "denied"
    result = sealagg(
        "state", "restore", proven, "-f", denied, "--keys-from", folder, "--as", "alice"
    )
    assert result.exit_code == 1
    assert "alice may not state restore: that needs the role operator" in result.output
    assert not denied.exists()  # the refused restore was undone
    new = tmp_path / "new"
    ok(
        sealagg(
            "state",
            "restore",
            claimed,
            "-f",
            new,
            "--keys-from",
            folder,
            "--as",
            "olga",
            "--as-kit",
            olga_kit,
        )
    )
    (restored,) = entries(new, "state_restored")
    assert restored.details["by"] == {"os_user": me, "admin": "olga", "admin_proven": True}
    # Without --as: the OS user, recorded the same way.
    plain = tmp_path / "plain"
    ok(sealagg("state", "restore", proven, "-f", plain, "--keys-from", folder))
    (restored,) = entries(plain, "state_restored")
    assert restored.details["by"] == {"os_user": me, "admin": None, "admin_proven": False}
