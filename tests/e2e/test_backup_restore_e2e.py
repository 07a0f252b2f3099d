"""A federation backed up while it serves, restored on a fresh folder, and continued.

Over real mutual TLS on loopback: a round, ``sealagg state backup`` (its own process) while
the appliance serves, the appliance stopped (the old machine is gone), ``sealagg state
restore`` into a new folder with the private keys from the operator's key store, the
appliance started there, another round with the same client kits, and the audit chain
verified across both machines.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from sealagg_testkit.rounds import FAST, delta, run_clients, weight

from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.server import open_store
from sealagg.appliance.store import Store
from sealagg.appliance.testing import Deployment
from sealagg.appliance.wire.modelcodec import Layout, flatten

SEALAGG = str(Path(sys.executable).parent / "sealagg")


def _cli(*args: object) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [SEALAGG, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "PYTHONSAFEPATH": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _round(dep: Deployment, names: list[str]) -> None:
    threads, reports, errors = run_clients(dep, names)
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert all(r[0].outcome == "published" for r in reports.values()), reports


def _check_step(store, version: int, members: list[int]) -> None:
    """``version`` is its parent plus the weighted mean of ``members``' updates."""
    model = store.model_version(version)
    parent = store.load_model(model.parent)
    w = np.array([weight(i) for i in members])
    mean = np.average(np.clip(np.stack([delta(i) for i in members]), -1, 1), axis=0, weights=w)
    got = store.load_model(version)
    np.testing.assert_allclose(
        flatten(got, Layout.of(got)), flatten(parent, Layout.of(parent)) + mean, atol=2e-6
    )


def test_backup_while_serving_restore_on_a_fresh_folder_and_continue(
    deployment, running, tmp_path: Path
) -> None:
    dep = deployment(clients=4)
    dep.configure(aggregation={"mode": "secagg+", "min_clients": 4, "rounds": 0}, deadlines=FAST)
    names = sorted(dep.kits)
    app = running(dep.folder)
    _round(dep, names)

    # Online: the appliance is still serving (waiting for its next round) during the backup.
    backup = tmp_path / "offsite" / "fed-backup.tar"
    backup.parent.mkdir()
    out = _cli("state", "backup", backup, "--folder", dep.folder).stdout
    assert app.thread.is_alive() and app.error is None
    assert "private keys NOT included" in out
    _cli("state", "verify", backup, "--audit-key", dep.folder / "audit_public_key.pem")
    app.stop()

    with open_store(FederationFolder.load(dep.folder)) as old:
        (backup_entry,) = [e for e in old.audit.entries() if e.event == "state_backup"]
    head = backup_entry.details["audit_head"]

    # The new machine: an empty folder, the keys from the operator's key store.
    keystore = tmp_path / "keystore"
    keystore.mkdir(mode=0o700)
    for name in ("ca.key", "server.key", "audit_signing_key.pem"):
        (keystore / name).write_bytes((dep.folder / name).read_bytes())
    public_key = tmp_path / "audit_public_key.pem"  # the auditor's own copy
    public_key.write_bytes((dep.folder / "audit_public_key.pem").read_bytes())
    new = tmp_path / "new-machine" / "federation"
    _cli(
        "state", "restore", backup, "--folder", new, "--keys-from", keystore,
        "--audit-key", public_key, "--expected-count", head["count"], "--expected-hash",
        head["hash"],
    )  # fmt: skip

    with Store.open(new / "state.sqlite3", read_only=True) as copy:  # what the backup held
        backed_up_rounds = copy.rounds()
        old_current = copy.current_model()
    assert old_current.version == 2  # the first round's model

    restored = dataclasses.replace(dep, folder=new, federation=FederationFolder.load(new))
    app2 = running(new)
    _round(restored, names)
    app2.stop()

    with open_store(FederationFolder.load(new)) as store:
        rounds = store.rounds()
        # The backed-up rounds are all there (one open at backup time is aborted by the
        # restart); the new round's number comes after them.
        assert [r.id for r in rounds[: len(backed_up_rounds)]] == [r.id for r in backed_up_rounds]
        for before, after in zip(backed_up_rounds, rounds, strict=False):
            assert after.status == (before.status if before.terminal else "aborted")
        (new_round,) = [r for r in rounds[len(backed_up_rounds) :] if r.status == "accepted"]
        assert new_round.id > backed_up_rounds[-1].id
        current = store.current_model()
        assert current.parent == old_current.version  # continued from the backed-up model
        assert current.round == new_round.id
        _check_step(store, current.version, list(range(4)))
        entries = store.audit.entries()
    report = _cli(
        "audit", "verify", "--folder", new, "--public-key", public_key,
        "--expected-count", head["count"], "--expected-hash", head["hash"],
    ).stdout  # fmt: skip
    assert "OK" in report and "matches the expected head" in report
    events = [e.event for e in entries]
    restored_at = events.index("state_restored")
    assert restored_at == head["count"]  # right after the backed-up head
    assert entries[restored_at].details["private_keys_from"] == "operator"
    assert "round_opened" in events[restored_at:]
    assert "state_backup" not in events  # that entry is in the old machine's chain
    assert json.loads(json.dumps(entries[restored_at].details))["backup_audit_head"] == head
