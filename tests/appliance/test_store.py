"""The state database: schema, transactions with their audit entries, models, crash safety."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sealagg_testkit.clock import FakeClock

from sealagg.appliance.errors import AuditChainError, StoreError
from sealagg.appliance.models import MODELS_DIRNAME, save_tensors, validate_tensors
from sealagg.appliance.store import SCHEMA_VERSION, Store, default_state_path

REPO = Path(__file__).resolve().parents[2]
RID = bytes(range(32))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "fed-a"
    path.mkdir()
    return path


@pytest.fixture
def db_path(folder: Path) -> Path:
    return default_state_path(folder)


@pytest.fixture
def store(db_path: Path, key: Ed25519PrivateKey):
    s = Store.open(db_path, audit_key=key, clock=FakeClock())
    yield s
    s.close()


def events(store: Store) -> list[str]:
    return [e.event for e in store.audit.entries()]


def rid(n: int) -> bytes:
    return hashlib.sha256(n.to_bytes(4, "big")).digest()


def tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "layer1.weight": rng.standard_normal((4, 3)).astype(np.float32),
        "layer1.bias": rng.standard_normal(4).astype(np.float32),
    }


# ------------------------------------------------------------------------------- opening


def test_first_open_creates_a_versioned_wal_database(
    store: Store, db_path: Path, key: Ed25519PrivateKey
) -> None:
    assert db_path.name == "state.sqlite3"
    fed = store.federation()
    assert fed.name == "fed-a" and fed.created == "2025-01-01T00:00:01.000000Z"
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()
    assert {"federation", "participants", "rounds", "phase_transitions", "model_versions"} <= (
        tables
    )
    assert {"audit_log", "audit_head"} <= tables
    assert store._conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
    assert store._conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    assert events(store) == ["store_created"]
    store.close()
    with Store.open(db_path, audit_key=key) as again:  # reopening does not re-create
        assert events(again) == ["store_created"]
        assert again.audit.verify(key.public_key()).count == 1


def test_federation_name_can_be_given(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    with Store.open(tmp_path / "x.sqlite3", audit_key=key, federation="hospitals-eu") as s:
        assert s.federation().name == "hospitals-eu"
        assert s.audit.entries()[0].details == {
            "federation": "hospitals-eu",
            "schema_version": SCHEMA_VERSION,
        }


def test_creating_needs_the_audit_key(db_path: Path) -> None:
    with pytest.raises(StoreError, match="audit signing key"):
        Store.open(db_path)


def test_newer_schema_is_refused_untouched(store: Store, db_path: Path, key) -> None:
    store.close()
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer than this sealagg supports"):
        Store.open(db_path, audit_key=key)
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT version FROM schema_version").fetchone() == (SCHEMA_VERSION + 1,)
    conn.close()


def test_foreign_database_is_refused(tmp_path: Path, key) -> None:
    other = tmp_path / "other.sqlite3"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE notes (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a sealagg state database"):
        Store.open(other, audit_key=key)


def test_planted_trigger_is_refused(store: Store, db_path: Path, key) -> None:
    store.close()
    conn = sqlite3.connect(db_path)
    conn.execute(
        "CREATE TRIGGER hide AFTER INSERT ON audit_log BEGIN DELETE FROM participants; END"
    )
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="trigger hide"):
        Store.open(db_path, audit_key=key)


def test_corrupt_file_is_a_clear_error(folder: Path, key) -> None:
    path = folder / "state.sqlite3"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(StoreError, match="not an SQLite database"):
        Store.open(path, audit_key=key)


def test_directory_or_missing_folder_is_a_clear_error(folder: Path, key) -> None:
    (folder / "state.sqlite3").mkdir()
    with pytest.raises(StoreError, match="is a directory"):
        Store.open(folder / "state.sqlite3", audit_key=key)
    with pytest.raises(StoreError, match="does not exist"):
        Store.open(folder / "nope" / "state.sqlite3", audit_key=key)
    with pytest.raises(StoreError, match="does not exist"):
        Store.open(folder / "absent.sqlite3", read_only=True)


def test_unopenable_path_gives_sqlites_own_error_clearly(folder: Path, key) -> None:
    """As root no folder is unwritable, so a dangling symlink makes SQLite itself fail to
    create the file (SQLITE_CANTOPEN), the error a read-only folder gives a normal user."""
    (folder / "state.sqlite3").symlink_to(folder / "gone" / "state.sqlite3")
    with pytest.raises(StoreError, match="not writable") as info:
        Store.open(folder / "state.sqlite3", audit_key=key)
    assert "unable to open database file" in str(info.value)


def test_read_only_database_gives_a_clear_error(store: Store, db_path: Path, key) -> None:
    """Tests run as root, where chmod does not stop writes; SQLite's mode=ro raises the same
    SQLITE_READONLY error a read-only folder or mount does, so that is what is checked."""
    store.add_participant("alice", cert_serial=1, identity_key=b"\x01" * 32)
    store.close()
    with Store.open(db_path, audit_key=key, read_only=True) as ro:
        assert [p.name for p in ro.participants()] == ["alice"]
        with pytest.raises(StoreError, match="read-only") as info:
            ro.add_participant("bob", cert_serial=2, identity_key=b"\x02" * 32)
        assert str(db_path) in str(info.value)
        with pytest.raises(StoreError, match="read-only"):
            ro.audit.append("approval", {})
        assert ro.audit.verify(key.public_key()).count == 2


def test_full_disk_gives_a_clear_error_and_loses_nothing_committed(
    store: Store, key: Ed25519PrivateKey
) -> None:
    """A size cap makes SQLite report SQLITE_FULL exactly as a full disk does."""
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    added = 0
    with pytest.raises(StoreError, match="disk is full"):
        for i in range(1000):
            store.add_participant(f"site-{i}", cert_serial=i + 1, identity_key=bytes([i]) * 32)
            added += 1
    assert 0 < added < 1000
    assert len(store.participants()) == added
    assert events(store).count("client_added") == added  # state and log still agree
    assert store.audit.verify(key.public_key()).count == added + 1


def test_closed_store_refuses_use(store: Store) -> None:
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.participants()


# --------------------------------------------------------------------------- transactions


def test_rollback_leaves_neither_state_nor_audit_entry(store: Store, key) -> None:
    head = store.audit.head()
    with pytest.raises(RuntimeError, match="boom"), store.transaction() as tx:
        store.add_participant("alice", cert_serial=10, identity_key=b"\x0a" * 32)
        store.audit.append("approval", {"by": "op"}, conn=tx)
        assert len(store.participants()) == 1  # visible inside the transaction
        raise RuntimeError("boom")
    assert store.participants(active_only=False) == []
    assert store.audit.head() == head
    assert events(store) == ["store_created"]
    store.audit.verify(key.public_key())
    with store.transaction() as tx:  # the same work commits as one unit
        store.add_participant("alice", cert_serial=10, identity_key=b"\x0a" * 32)
        store.audit.append("approval", {"by": "op"}, conn=tx)
    assert events(store) == ["store_created", "client_added", "approval"]


def test_failed_operation_inside_a_transaction_rolls_back_only_itself(store: Store) -> None:
    with store.transaction():
        store.add_participant("alice", cert_serial=10, identity_key=b"\x0a" * 32)
        with pytest.raises(StoreError, match="already exists"):
            store.add_participant("alice", cert_serial=11, identity_key=b"\x0b" * 32)
        store.add_participant("bob", cert_serial=12, identity_key=b"\x0c" * 32)
    assert [p.name for p in store.participants()] == ["alice", "bob"]
    assert events(store) == ["store_created", "client_added", "client_added"]


def test_concurrent_threads_keep_one_consistent_chain(store: Store, key) -> None:
    def work(n: int) -> None:
        for i in range(25):
            store.audit.append("participants", {"thread": n, "i": i})

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.audit.verify(key.public_key()).count == 101


def test_a_second_process_connection_sees_commits_and_appends_after(
    store: Store, db_path: Path, key
) -> None:
    store.add_participant("alice", cert_serial=1, identity_key=b"\x01" * 32)
    with Store.open(db_path, audit_key=key) as other:
        other.add_participant("bob", cert_serial=2, identity_key=b"\x02" * 32)
    store.add_participant("carol", cert_serial=3, identity_key=b"\x03" * 32)
    assert [p.name for p in store.participants()] == ["alice", "bob", "carol"]
    assert store.audit.verify(key.public_key()).count == 4


# --------------------------------------------------------------------------- participants


def test_participants_add_revoke_and_readd(store: Store) -> None:
    a = store.add_participant("alice", cert_serial=0xABCDEF, identity_key=b"\x01" * 32)
    assert (a.cert_serial, a.status) == ("abcdef", "active")
    store.add_participant("bob", cert_serial="00FF", identity_key=b"\x02" * 32)
    with pytest.raises(StoreError, match="already exists"):
        store.add_participant("alice", cert_serial=99, identity_key=b"\x03" * 32)
    with pytest.raises(StoreError, match="serial ff is already"):
        store.add_participant("carol", cert_serial=255, identity_key=b"\x03" * 32)
    with pytest.raises(StoreError, match="identity key"):
        store.add_participant("carol", cert_serial=98, identity_key=b"\x01" * 32)
    revoked = store.revoke_participant("alice", reason="key compromised")
    assert (revoked.status, revoked.revoke_reason) == ("revoked", "key compromised")
    with pytest.raises(StoreError, match="no active participant"):
        store.revoke_participant("alice")
    assert [p.name for p in store.participants()] == ["bob"]
    assert [p.status for p in store.participants(active_only=False)] == ["revoked", "active"]
    store.add_participant("alice", cert_serial=0x1234, identity_key=b"\x01" * 32)  # new cert
    assert [p.name for p in store.participants()] == ["bob", "alice"]
    log = store.audit.entries()
    assert [e.event for e in log] == [
        "store_created",
        "client_added",
        "client_added",
        "client_revoked",
        "client_added",
    ]
    assert log[3].details == {"name": "alice", "cert_serial": "abcdef", "reason": "key compromised"}


def test_participant_input_is_validated(store: Store) -> None:
    with pytest.raises(ValueError, match="participant name"):
        store.add_participant("../etc", cert_serial=1, identity_key=b"\x01" * 32)
    with pytest.raises(ValueError, match="cert_serial"):
        store.add_participant("ok", cert_serial="xyz", identity_key=b"\x01" * 32)
    with pytest.raises(ValueError, match="identity_key"):
        store.add_participant("ok", cert_serial=1, identity_key=b"\x01" * 31)
    assert events(store) == ["store_created"]


def test_store_without_audit_key_refuses_changes(store: Store, db_path: Path) -> None:
    store.close()
    with Store.open(db_path) as reader:
        with pytest.raises(StoreError, match="audit signing key"):
            reader.add_participant("a", cert_serial=1, identity_key=b"\x01" * 32)
        with pytest.raises(StoreError, match="audit signing key"):
            reader.abort_interrupted_rounds("restart")


# -------------------------------------------------------------------------------- rounds


def test_round_lifecycle(store: Store) -> None:
    r1 = store.open_round("secagg+", rid(1))
    r2 = store.open_round("plaintext", rid(2))
    assert (r1, r2) == (1, 2)
    with pytest.raises(StoreError, match="never reused"):
        store.open_round("secagg", rid(1))
    store.record_phase(r1, "advertise_keys", 10, [])
    store.record_phase(r1, "masked_input", 9, [7])
    store.record_phase(r1, "unmasking", 8, ["site-3"])
    assert [(p.phase, p.clients_in, p.dropped) for p in store.phases(r1)] == [
        ("advertise_keys", 10, ()),
        ("masked_input", 9, (7,)),
        ("unmasking", 8, ("site-3",)),
    ]
    store.set_round_status(r1, "aggregating")
    with pytest.raises(StoreError, match="from aggregating to open"):
        store.set_round_status(r1, "open")
    store.set_round_status(r1, "pending_approval")
    done = store.set_round_status(r1, "accepted", reason="approved by op")
    assert done.closed_at is not None and done.terminal
    assert store.round(r1) == done
    assert store.round(r1).round_id == rid(1)
    with pytest.raises(StoreError, match="already accepted"):
        store.set_round_status(r1, "aborted")
    with pytest.raises(StoreError, match="no more phases"):
        store.record_phase(r1, "late", 1, [])
    with pytest.raises(StoreError, match="no round 99"):
        store.set_round_status(99, "aborted")
    with pytest.raises(ValueError, match="round status"):
        store.set_round_status(r2, "done")
    aborted = store.set_round_status(r2, "aborted", reason="too few clients")
    assert (aborted.status, aborted.reason) == ("aborted", "too few clients")
    assert [r.status for r in store.rounds()] == ["accepted", "aborted"]
    assert events(store)[1:] == [
        "round_opened",
        "round_opened",
        "phase_recorded",
        "phase_recorded",
        "phase_recorded",
        "round_status",
        "round_status",
        "round_status",
        "round_aborted",
    ]


def test_round_input_is_validated(store: Store) -> None:
    with pytest.raises(ValueError, match="round_id"):
        store.open_round("secagg", b"short")
    with pytest.raises(ValueError, match="mode"):
        store.open_round("Sec Agg", rid(1))
    r = store.open_round("secagg", rid(1))
    with pytest.raises(TypeError, match="dropped"):
        store.record_phase(r, "masked_input", 3, "abc")
    with pytest.raises(TypeError, match="dropped"):
        store.record_phase(r, "masked_input", 3, [np.int64(2)])
    with pytest.raises(TypeError, match="clients_in"):
        store.record_phase(r, "masked_input", -1, [])


def test_abort_interrupted_rounds(store: Store, key) -> None:
    base = store.add_model_version(tensors(0), parent=None, status="accepted")
    done = store.open_round("secagg", rid(1))
    store.set_round_status(done, "accepted")
    fresh = store.open_round("secagg", rid(2))
    busy = store.open_round("secagg+", rid(3))
    store.set_round_status(busy, "aggregating")
    waiting = store.open_round("secagg+", rid(4))
    store.set_round_status(waiting, "pending_approval")
    candidate = store.add_model_version(
        tensors(1), parent=base.version, round=waiting, status="pending"
    )
    assert store.abort_interrupted_rounds("appliance restarted") == [fresh, busy, waiting]
    assert [r.status for r in store.rounds()] == ["accepted", "aborted", "aborted", "aborted"]
    assert {store.round(r).reason for r in (fresh, busy, waiting)} == {"appliance restarted"}
    assert store.model_version(candidate.version).status == "rejected"
    assert store.current_model() == base
    log = store.audit.entries()
    aborts = [e.details for e in log if e.event == "round_aborted"]
    assert [(d["round"], d["previous"]) for d in aborts] == [
        (fresh, "open"),
        (busy, "aggregating"),
        (waiting, "pending_approval"),
    ]
    assert all(d["interrupted"] and d["reason"] == "appliance restarted" for d in aborts)
    assert log[-1].event == "model_status" and log[-1].details["status"] == "rejected"
    assert store.abort_interrupted_rounds("again") == []
    store.audit.verify(key.public_key())


# -------------------------------------------------------------------------------- models


ALL_DTYPES = [
    np.float16,
    np.float32,
    np.float64,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
]


def test_model_versions_round_trip_bytes_identically(store: Store, folder: Path) -> None:
    rng = np.random.default_rng(7)
    model: dict[str, np.ndarray] = {}
    for dtype in ALL_DTYPES:
        info = np.finfo(dtype) if np.issubdtype(dtype, np.floating) else np.iinfo(dtype)
        values = rng.integers(-100, 100, size=(3, 5)).astype(dtype)
        values.flat[0], values.flat[1] = info.min, info.max
        model[f"t.{np.dtype(dtype).name}"] = values
    model["special"] = np.array([np.nan, -0.0, np.inf, -np.inf, 1e-45], dtype=np.float32)
    model["scalar"] = np.array(3.25, dtype=np.float64)
    model["empty"] = np.zeros((0, 4), dtype=np.float32)
    model["strided"] = np.arange(40, dtype=np.int32).reshape(5, 8)[:, ::3]
    model["big_endian"] = np.arange(6, dtype=">f4")
    version = store.add_model_version(
        model, parent=None, status="accepted", metrics={"loss": 0.25, "n": 3}
    )
    loaded = store.load_model(version.version)
    assert set(loaded) == set(model)
    for name, original in model.items():
        got = loaded[name]
        assert got.shape == original.shape
        assert got.dtype == original.dtype.newbyteorder("=")
        assert got.tobytes() == np.ascontiguousarray(original, got.dtype).tobytes(), name
        assert got.flags.writeable
    file = folder / version.path
    assert version.path == f"{MODELS_DIRNAME}/{version.sha256}.safetensors"
    assert hashlib.sha256(file.read_bytes()).hexdigest() == version.sha256
    assert not [p for p in file.parent.iterdir() if p.name.endswith(".tmp")]
    assert store.model_version(version.version).metrics == {"loss": 0.25, "n": 3}
    entry = store.audit.entries()[-1]
    assert entry.event == "model_added" and entry.details["sha256"] == version.sha256
    assert "special" not in json.dumps(entry.details)  # no tensor contents in the log


def test_current_model_is_the_latest_accepted(store: Store) -> None:
    assert store.current_model() is None
    v1 = store.add_model_version(tensors(1), parent=None, status="accepted")
    r = store.open_round("secagg", rid(1))
    v2 = store.add_model_version(tensors(2), parent=1, round=r, status="candidate")
    v3 = store.add_model_version(tensors(3), parent=1, round=r, status="accepted")
    v4 = store.add_model_version(tensors(4), parent=3, round=r, status="pending")
    assert [m.version for m in store.model_versions()] == [1, 2, 3, 4]
    assert store.current_model() == v3
    store.set_model_status(v4.version, "accepted")
    assert store.current_model().version == 4
    store.set_model_status(v4.version, "rejected")  # withdrawn
    assert store.current_model() == v3
    store.set_model_status(v2.version, "rejected")
    with pytest.raises(StoreError, match="from rejected to accepted"):
        store.set_model_status(v2.version, "accepted")
    assert store.current_model() == v3
    assert v1.parent is None and v1.round is None
    np.testing.assert_array_equal(
        store.load_model(store.current_model().version)["layer1.bias"], tensors(3)["layer1.bias"]
    )
    log = store.audit.entries()
    assert [e.details["version"] for e in log if e.event == "model_published"] == [4]


def test_model_references_are_checked_before_writing(store: Store, folder: Path) -> None:
    with pytest.raises(StoreError, match="parent model version 5"):
        store.add_model_version(tensors(), parent=5, status="candidate")
    with pytest.raises(ValueError, match="model status"):
        store.add_model_version(tensors(), parent=None, status="published")
    store.add_model_version(tensors(), parent=None, status="accepted")
    with pytest.raises(StoreError, match="no round 3"):
        store.add_model_version(tensors(1), parent=1, round=3, status="candidate")
    with pytest.raises(ValueError, match="needs its parent"):
        store.add_model_version(tensors(1), parent=None, round=1, status="candidate")
    with pytest.raises(StoreError, match="no model version 9"):
        store.set_model_status(9, "accepted")
    assert len(list((folder / MODELS_DIRNAME).iterdir())) == 1
    assert len(store.model_versions()) == 1


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        ({"w": np.array([object(), 1], dtype=object)}, TypeError, "object array"),
        ({"w": np.array([True, False])}, TypeError, "dtype bool"),
        ({"w": np.zeros(2, dtype=np.complex64)}, TypeError, "dtype complex64"),
        ({"w": np.array(["a", "b"])}, TypeError, "dtype"),
        ({"w": [1.0, 2.0]}, TypeError, "not a numpy array"),
        ({"../escape": np.zeros(2)}, ValueError, "invalid tensor name"),
        ({"": np.zeros(2)}, ValueError, "invalid tensor name"),
        ({"x" * 300: np.zeros(2)}, ValueError, "invalid tensor name"),
        ({}, ValueError, "at least one tensor"),
    ],
)
def test_invalid_tensors_are_refused_and_nothing_is_written(
    store: Store, folder: Path, bad: dict, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        store.add_model_version(bad, parent=None, status="accepted")
    assert store.model_versions() == []
    assert not (folder / MODELS_DIRNAME).exists() or not list((folder / MODELS_DIRNAME).iterdir())


def test_tampered_model_file_is_refused(store: Store, folder: Path) -> None:
    version = store.add_model_version(tensors(), parent=None, status="accepted")
    file = folder / version.path
    data = bytearray(file.read_bytes())
    data[-1] ^= 0x01  # one flipped bit in the last weight
    file.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="modified or is corrupt"):
        store.load_model(version.version)
    file.unlink()
    with pytest.raises(StoreError, match="no such file"):
        store.load_model(version.version)
    # Writing the same content again repairs the content-addressed file.
    store.add_model_version(tensors(), parent=1, status="candidate")
    assert store.load_model(version.version).keys() == tensors().keys()


def test_edited_model_row_is_refused(store: Store, db_path: Path, folder: Path) -> None:
    a = store.add_model_version(tensors(1), parent=None, status="accepted")
    b = store.add_model_version(tensors(2), parent=1, status="candidate")
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE model_versions SET path = '../../etc/passwd' WHERE version = 1")
    conn.execute("UPDATE model_versions SET sha256 = ? WHERE version = 2", (a.sha256,))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="recorded path"):
        store.load_model(1)
    with pytest.raises(StoreError, match="recorded path"):
        store.load_model(b.version)


def test_save_tensors_is_deterministic_and_content_addressed(folder: Path) -> None:
    first = save_tensors(folder, {"b": np.ones(3, np.float32), "a": np.zeros(2, np.int64)})
    second = save_tensors(folder, {"a": np.zeros(2, np.int64), "b": np.ones(3, np.float32)})
    assert first == second
    assert validate_tensors({"x": np.arange(3, dtype=">i4")})["x"].dtype == np.dtype("<i4")


def test_unwritable_models_folder_is_a_clear_error(store: Store, folder: Path) -> None:
    (folder / MODELS_DIRNAME).write_text("a file where the folder should be")
    with pytest.raises(StoreError, match="cannot write model file"):
        store.add_model_version(tensors(), parent=None, status="accepted")
    assert store.model_versions() == []


# ------------------------------------------------------------------------ crash durability


CHILD = r"""
import sys
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sealagg.appliance.store import Store

path, seed, start = Path(sys.argv[1]), bytes.fromhex(sys.argv[2]), int(sys.argv[3])
store = Store.open(path, audit_key=Ed25519PrivateKey.from_private_bytes(seed))
i = start
while True:
    if i % 3 == 0:
        v = store.add_model_version(
            {"w": np.full(256, i, dtype=np.float32)}, parent=None, status="candidate"
        )
        line = f"M {v.version} {v.sha256} {i}\n"
    else:
        e = store.audit.append("aggregate", {"i": i})
        line = f"A {e.seq} {e.hash} {i}\n"
    sys.stdout.write(line)  # only after the call returned, i.e. committed
    sys.stdout.flush()
    i += 1
"""


def run_and_kill(db_path: Path, seed: bytes, start: int, reports: int) -> list[list[str]]:
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db_path), seed.hex(), str(start)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
        env=env,
    )
    try:
        seen = []
        while len(seen) < reports:
            line = proc.stdout.readline()
            assert line, f"child died early: {proc.stderr.read().decode()}"
            seen.append(line)
        assert proc.poll() is None  # still appending when killed
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        rest = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    complete = [*seen, *rest.splitlines(keepends=True)]
    return [line.decode().split() for line in complete if line.endswith(b"\n")]


@pytest.mark.timeout(60)
def test_sigkill_loses_no_reported_append(db_path: Path) -> None:
    seed = os.urandom(32)
    key = Ed25519PrivateKey.from_private_bytes(seed)
    Store.open(db_path, audit_key=key).close()
    reported: list[list[str]] = []
    for attempt, reports in enumerate((40, 57)):  # two crashes, the second on a recovered db
        reported += run_and_kill(db_path, seed, start=1000 * attempt, reports=reports)
        with Store.open(db_path, audit_key=key) as store:
            report = store.audit.verify(key.public_key())
            log = store.audit.entries()
            for kind, number, digest, i in reported:
                if kind == "A":
                    entry = log[int(number)]
                    assert (entry.hash, entry.details) == (digest, {"i": int(i)})
                else:
                    model = store.model_version(int(number))
                    assert model.sha256 == digest
                    weights = store.load_model(model.version)["w"]
                    np.testing.assert_array_equal(weights, np.full(256, int(i), np.float32))
            assert report.count >= 1 + sum(1 for r in reported if r[0] == "A")
            models = store.model_versions()
            assert len(models) >= sum(1 for r in reported if r[0] == "M")
            for model in models:  # every recorded model's file is complete
                store.load_model(model.version)
    assert len(reported) >= 97


def test_appending_to_a_cut_log_is_refused(store: Store, db_path: Path) -> None:
    store.audit.append("approval", {})
    conn = sqlite3.connect(db_path)
    conn.execute("DELETE FROM audit_log WHERE seq = 1")
    conn.commit()
    conn.close()
    with pytest.raises(AuditChainError, match="damaged chain"):
        store.add_participant("alice", cert_serial=1, identity_key=b"\x01" * 32)
    assert store.participants() == []  # the state change was rolled back with it
