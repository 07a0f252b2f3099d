"""Schema migrations, from databases exactly as earlier releases wrote them.

The fixtures (tests/appliance/fixtures/old_state/) were written by the releases' own code
(``make_old_state.py`` rebuilds them from git history): schema 1 as first released (no
exclusions table) and schema 1 as the issue-17 release left it (exclusions created on open).
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sealagg_testkit.old_state import (
    MODEL_STATUSES,
    PARTICIPANTS,
    RELEASES,
    ROUND_STATUSES,
    fixture_audit_key,
    has_exclusions_table,
    install_state,
)

from sealagg.appliance import migrations
from sealagg.appliance.errors import StoreError
from sealagg.appliance.store import SCHEMA_VERSION, Store

pytestmark = pytest.mark.parametrize("release", sorted(RELEASES))


def _raw(path: Path, sql: str, args: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def _tables(path: Path) -> set[str]:
    rows = _raw(path, "SELECT name FROM sqlite_master WHERE type = 'table'")
    return {name for (name,) in rows}


def _version(path: Path) -> int:
    return _raw(path, "SELECT version FROM schema_version")[0][0]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _contents(path: Path) -> dict[str, list[tuple]]:
    """Every row the old release wrote, as it wrote it."""
    tables = ["federation", "participants", "phase_transitions", "model_versions", "audit_log"]
    out = {t: _raw(path, f"SELECT * FROM {t} ORDER BY rowid") for t in tables}
    out["rounds"] = _raw(
        path, "SELECT id, round_id, mode, status, opened_at, closed_at, reason FROM rounds"
    )
    if "exclusions" in _tables(path):
        out["exclusions"] = _raw(path, "SELECT * FROM exclusions ORDER BY id")
    return out


@pytest.fixture
def old_db(tmp_path: Path, release: str) -> Path:
    return install_state(release, tmp_path / "federation")


def _open(path: Path, **kwargs) -> Store:
    return Store.open(path, audit_key=fixture_audit_key(), **kwargs)


def test_fixture_is_what_the_old_release_wrote(old_db: Path, release: str) -> None:
    assert _version(old_db) == 1
    assert ("exclusions" in _tables(old_db)) == has_exclusions_table(release)
    assert "runs" not in _tables(old_db)
    assert [c[1] for c in _raw(old_db, "PRAGMA table_info(rounds)")].count("run") == 0


def test_old_state_migrates_with_data_intact_and_chain_continuing(
    old_db: Path, release: str
) -> None:
    before = _contents(old_db)
    old_head = _raw(old_db, "SELECT seq, hash FROM audit_head")[0]
    public = fixture_audit_key().public_key()

    store = _open(old_db)
    try:
        # The chain the old release signed is an exact prefix of today's, with the two steps.
        report = store.audit.verify(public, expected_head=(old_head[0] + 1, old_head[1]))
        assert report.count == old_head[0] + 3
        entries = store.audit.entries()
        migrated = [e for e in entries if e.event == "schema_migrated"]
        assert [m.details for m in migrated] == [{"from": 1, "to": 2}, {"from": 2, "to": 3}]
        assert [e.seq for e in migrated] == [old_head[0] + 1, old_head[0] + 2]

        participants = {p.name: p.status for p in store.participants(active_only=False)}
        assert participants == PARTICIPANTS
        assert [r.status for r in store.rounds()] == ROUND_STATUSES
        assert store.phases(1)[0].phase == "advertise_keys"
        assert store.phases(2)[-1].dropped == ("carol",)
        models = store.model_versions()
        assert [m.status for m in models] == MODEL_STATUSES
        assert models[1].metrics == {"accuracy": 0.81, "loss": 0.52}
        assert store.current_model().version == 2
        for model in models:  # every model file still matches its row
            assert set(store.load_model(model.version)) == {"layer.weight", "layer.bias"}
        excluded = store.excluded_participants()
        if has_exclusions_table(release):
            assert set(excluded) == {"carol"} and excluded["carol"].blamed_by == "bob"
        else:
            assert excluded == {}
    finally:
        store.close()

    assert _version(old_db) == SCHEMA_VERSION == 3
    assert {"runs", "approvals", "evaluations", "exclusions"} <= _tables(old_db)
    assert _raw(old_db, "SELECT count(*) FROM rounds WHERE run IS NOT NULL") == [(0,)]
    after = _contents(old_db)
    for table, rows in before.items():
        assert after[table][: len(rows)] == rows, f"{table} changed"
        if table != "audit_log":
            assert after[table] == rows, f"{table} gained rows"

    # Today's code works on it: the interrupted round is recovered, the next one opens.
    with _open(old_db) as store:
        assert store.abort_interrupted_rounds("restart") == [4]
        assert store.open_round("secagg+", bytes(range(9, 41))) == 5
        store.audit.verify(public)


def test_reopening_a_migrated_database_migrates_nothing(old_db: Path) -> None:
    _open(old_db).close()
    count = _raw(old_db, "SELECT count(*) FROM audit_log")[0][0]
    _open(old_db).close()
    assert _raw(old_db, "SELECT count(*) FROM audit_log")[0][0] == count
    assert _raw(old_db, "SELECT count(*) FROM audit_log WHERE event = 'schema_migrated'") == [(2,)]


def _crash_in_version_3(monkeypatch: pytest.MonkeyPatch) -> None:
    original = migrations.apply_one

    def apply_one(conn, version, audit):
        if version == 3:
            conn.execute(migrations.MIGRATIONS[3][0])  # half the step is done...
            raise RuntimeError("power cut during migration 3")  # ...then the crash
        return original(conn, version, audit)

    monkeypatch.setattr(migrations, "apply_one", apply_one)


def test_crash_during_a_step_leaves_the_earlier_version_usable(
    old_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _contents(old_db)
    _crash_in_version_3(monkeypatch)
    with pytest.raises(RuntimeError, match="power cut"):
        _open(old_db)
    # Step 2 committed, step 3 rolled back entirely (no half-created table).
    assert _version(old_db) == 2
    assert "runs" not in _tables(old_db) and "exclusions" in _tables(old_db)
    events = [e for (e,) in _raw(old_db, "SELECT event FROM audit_log ORDER BY seq")]
    assert events[-1] == "schema_migrated" and events.count("schema_migrated") == 1
    with pytest.raises(StoreError, match="older than this sealagg"):
        Store.open(old_db, read_only=True)  # a reader refuses it as older, not as damaged...
    monkeypatch.undo()
    store = _open(old_db)  # ...and the retry finishes the job
    try:
        assert store.audit.verify(fixture_audit_key().public_key()).count == len(events) + 1
        assert [e.details for e in store.audit.entries() if e.event == "schema_migrated"] == [
            {"from": 1, "to": 2},
            {"from": 2, "to": 3},
        ]
    finally:
        store.close()
    assert _version(old_db) == 3
    after = _contents(old_db)
    for table, rows in before.items():
        assert after[table][: len(rows)] == rows


_KILL_MID_MIGRATION = """
import os, sys
from pathlib import Path
from sealagg.appliance import migrations
from sealagg.appliance.store import Store
from sealagg_testkit.old_state import fixture_audit_key

original = migrations.apply_one
def apply_one(conn, version, audit):
    original(conn, version, audit)
    if version == 3:  # statements run and audited, not committed: the process dies
        os._exit(9)
migrations.apply_one = apply_one
Store.open(Path(sys.argv[1]), audit_key=fixture_audit_key())
"""


def test_process_killed_mid_migration_leaves_the_earlier_version(old_db: Path) -> None:
    support = Path(__file__).resolve().parents[1] / "support"
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_KILL_MID_MIGRATION), str(old_db)],
        env={"PYTHONPATH": str(support), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 9, result.stderr
    assert _version(old_db) == 2 and "runs" not in _tables(old_db)
    store = _open(old_db)
    store.close()
    assert _version(old_db) == 3


def test_read_only_open_of_an_older_database_is_refused_untouched(old_db: Path) -> None:
    digest = _digest(old_db)
    with pytest.raises(StoreError, match=r"older than this sealagg.*left untouched"):
        Store.open(old_db, read_only=True)
    assert _digest(old_db) == digest and _version(old_db) == 1


def test_migration_without_the_audit_key_is_refused_untouched(old_db: Path) -> None:
    digest = _digest(old_db)
    with pytest.raises(StoreError, match="without the audit signing key"):
        Store.open(old_db)
    assert _digest(old_db) == digest and _version(old_db) == 1


def test_newer_schema_is_refused_untouched(old_db: Path) -> None:
    conn = sqlite3.connect(old_db)
    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    digest = _digest(old_db)
    with pytest.raises(StoreError, match="newer than this sealagg supports"):
        _open(old_db)
    assert _digest(old_db) == digest


@pytest.mark.parametrize("dropped", ["runs", "approvals", "evaluations", "exclusions"])
def test_version_claiming_tables_it_lacks_is_refused_as_damaged(old_db: Path, dropped: str) -> None:
    _open(old_db).close()
    conn = sqlite3.connect(old_db)
    conn.execute(f"DROP TABLE {dropped}")
    conn.commit()
    conn.close()
    digest = _digest(old_db)
    with pytest.raises(StoreError, match=rf"missing tables \['{dropped}'\]: damaged"):
        _open(old_db)
    assert _digest(old_db) == digest


def test_version_2_without_the_exclusions_table_is_refused(old_db: Path, release: str) -> None:
    conn = sqlite3.connect(old_db)
    conn.execute("DROP TABLE IF EXISTS exclusions")
    conn.execute("UPDATE schema_version SET version = 2")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=r"missing tables \['exclusions'\]: damaged"):
        _open(old_db)
    assert _version(old_db) == 2


def test_version_claiming_a_column_it_lacks_is_refused_as_damaged(old_db: Path) -> None:
    """Schema 3 made by hand without ``rounds.run``: every other v3 table is there."""
    conn = sqlite3.connect(old_db)
    for version in (2, 3):
        for statement in migrations.MIGRATIONS[version]:
            if "rounds" not in statement.split("(")[0]:  # skip ALTER TABLE / INDEX on rounds
                conn.execute(statement)
    conn.execute("UPDATE schema_version SET version = 3")
    conn.commit()
    conn.close()
    digest = _digest(old_db)
    with pytest.raises(StoreError, match=r"missing columns \['rounds\.run'\]: damaged"):
        _open(old_db)
    with pytest.raises(StoreError, match=r"missing columns \['rounds\.run'\]: damaged"):
        Store.open(old_db, read_only=True)
    assert _digest(old_db) == digest
