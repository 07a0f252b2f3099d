"""An appliance started on a folder whose state an earlier release wrote: it migrates at
start and runs a round over real mutual TLS on the migrated state."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sealagg_testkit.old_state import RELEASES, fixture_audit_key, old_deployment
from sealagg_testkit.rounds import FAST, delta, run_clients, weight

from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.server import open_store
from sealagg.appliance.wire.modelcodec import Layout, flatten


@pytest.mark.parametrize("release", sorted(RELEASES))
def test_appliance_migrates_an_old_state_and_runs_a_round(
    running, tmp_path: Path, release: str
) -> None:
    dep = old_deployment(tmp_path, release, clients=4)
    dep.configure(aggregation={"mode": "secagg+", "min_clients": 4, "rounds": 1}, deadlines=FAST)
    database = dep.folder / "state.sqlite3"
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    old_head = conn.execute("SELECT seq + 1, hash FROM audit_head").fetchone()
    assert conn.execute("SELECT version FROM schema_version").fetchone() == (1,)
    conn.close()

    app = running(dep.folder)
    threads, reports, errors = run_clients(dep, sorted(dep.kits))
    app.wait(120)
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert all(r[0].outcome == "published" for r in reports.values()), reports

    with open_store(FederationFolder.load(dep.folder)) as store:
        report = store.audit.verify(fixture_audit_key().public_key(), expected_head=old_head)
        entries = store.audit.entries()
        rounds = store.rounds()
        current = store.current_model()
        parent = store.load_model(2)
        got = store.load_model(current.version)
    assert report.count == len(entries) > old_head[0]
    events = [e.event for e in entries[old_head[0] :]]
    assert events[:2] == ["schema_migrated", "schema_migrated"]  # first, before anything else
    assert [r.status for r in rounds[:4]] == ["accepted", "aborted", "rejected", "aborted"]
    assert rounds[3].reason == "appliance restarted during the round"  # the old crash
    assert rounds[4].id == 5 and rounds[4].status == "accepted"
    assert (current.version, current.parent, current.round) == (4, 2, 5)
    members = range(4)
    w = np.array([weight(i) for i in members])
    mean = np.average(np.clip(np.stack([delta(i) for i in members]), -1, 1), axis=0, weights=w)
    np.testing.assert_allclose(
        flatten(got, Layout.of(got)), flatten(parent, Layout.of(parent)) + mean, atol=2e-6
    )
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    assert conn.execute("SELECT version FROM schema_version").fetchone() == (3,)
    conn.close()


def test_sealagg_serve_migrates_the_first_release_state(tmp_path: Path) -> None:
    """The real ``sealagg serve`` process on a folder the first release left behind."""
    dep = old_deployment(tmp_path, "schema1_64a0780", clients=3)
    dep.configure(aggregation={"mode": "secagg+", "min_clients": 3, "rounds": 1}, deadlines=FAST)
    log = tmp_path / "serve.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "sealagg"), "serve", "-f", str(dep.folder)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            deadline = time.monotonic() + 120
            while "serving on port" not in log.read_text():  # migrated, recovered, listening
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "sealagg serve did not start"
                time.sleep(0.1)
            threads, reports, errors = run_clients(dep, sorted(dep.kits))
            for t in threads:
                t.join(120)
            code = proc.wait(120)  # the round budget is spent: the process ends by itself
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert code == 0, log.read_text()
    assert not errors, errors
    assert all(r[0].outcome == "published" for r in reports.values()), reports
    with open_store(FederationFolder.load(dep.folder)) as store:
        store.audit.verify(fixture_audit_key().public_key())
        migrated = [e.details for e in store.audit.entries() if e.event == "schema_migrated"]
        assert migrated == [{"from": 1, "to": 2}, {"from": 2, "to": 3}]
        assert store.current_model().version == 4 and store.rounds()[-1].status == "accepted"
