"""The audit log: a signed hash chain whose every kind of tampering is caught at the right seq."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import nacl.signing
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sealagg_testkit.clock import FakeClock

from sealagg.appliance.audit import (
    ENTRY_CONTEXT,
    GENESIS_HASH,
    HEAD_CONTEXT,
    canonical_json,
    verify_jsonl,
)
from sealagg.appliance.errors import AuditChainError, AuditVerificationError, StoreError
from sealagg.appliance.store import Store
from sealagg.crypto import IdentityKey


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    folder = tmp_path / "fed"
    folder.mkdir()
    return folder / "state.sqlite3"


@pytest.fixture
def store(db_path: Path, key: Ed25519PrivateKey):
    s = Store.open(db_path, audit_key=key, clock=FakeClock())
    yield s
    s.close()


def fill(store: Store, count: int) -> None:
    """Append ``count`` entries after store_created (seq 0): seqs 1..count."""
    for i in range(count):
        store.audit.append("round_opened", {"round": i, "mode": "secagg+", "note": f"n{i}"})


@contextlib.contextmanager
def raw_db(path: Path):
    """An attacker's own connection: plain sqlite3, committed on exit."""
    conn = sqlite3.connect(path)
    try:
        yield conn
        conn.commit()
    finally:
        conn.close()


def raw_entry(path: Path, seq: int) -> dict:
    with raw_db(path) as conn:
        row = conn.execute("SELECT entry FROM audit_log WHERE seq = ?", (seq,)).fetchone()
    return json.loads(row[0])


def rewrite_entry(path: Path, seq: int, obj: dict, *, new_seq: int | None = None) -> None:
    """Replace entry ``seq`` by ``obj``, keeping every side column consistent with it."""
    raw = canonical_json(obj)
    with raw_db(path) as conn:
        conn.execute(
            "UPDATE audit_log SET seq = ?, entry = ?, entry_hash = ?, time = ?, event = ? "
            "WHERE seq = ?",
            (
                seq if new_seq is None else new_seq,
                raw,
                hashlib.sha256(raw).hexdigest(),
                obj["time"],
                obj["event"],
                seq,
            ),
        )


def expect_broken(store: Store, key: Ed25519PrivateKey, seq: int | None, *words: str, **kw):
    with pytest.raises(AuditVerificationError) as info:
        store.audit.verify(key.public_key(), **kw)
    assert info.value.seq == seq, str(info.value)
    for word in words:
        assert word in info.value.reason, str(info.value)
    assert isinstance(info.value, AuditChainError)
    return info.value


# ------------------------------------------------------------------------------ happy path


def test_chain_verifies_after_many_appends(store: Store, key: Ed25519PrivateKey) -> None:
    fill(store, 150)
    with store.transaction() as tx:  # and a batch committed as one transaction
        for i in range(150):
            store.audit.append("dropouts", {"round": 1, "dropped": [i, i + 1]}, conn=tx)
    report = store.audit.verify(key.public_key())
    assert report.ok and report.count == 301
    assert report.stored_head_checked and not report.expected_head_checked
    head = store.audit.head()
    assert (head.count, head.hash) == (301, report.head_hash)
    entries = store.audit.entries()
    assert [e.seq for e in entries] == list(range(301))
    assert entries[0].event == "store_created"
    assert entries[1].time == "2025-01-01T00:00:03.000000Z"  # deterministic clock
    assert store.audit.verify(key.public_key(), expected_head=head).expected_head_checked
    assert store.audit.verify(key.public_key(), expected_head=(301, head.hash)).ok
    assert "301 entries" in str(report)


def test_entry_format_is_canonical_chained_and_signed(
    store: Store, db_path: Path, key: Ed25519PrivateKey
) -> None:
    first = store.audit.append("config_loaded", {"b": [1, 2.5, None, True], "a": "ü"})
    second = store.audit.append("approval", {}, time=datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC))
    with raw_db(db_path) as conn:
        rows = conn.execute("SELECT seq, entry, entry_hash FROM audit_log ORDER BY seq").fetchall()
    raws = [bytes(r[1]) for r in rows]
    assert (
        raws[1]
        == (
            '{"details":{"a":"ü","b":[1,2.5,null,true]},"event":"config_loaded",'
            f'"prev_hash":"{hashlib.sha256(raws[0]).hexdigest()}","seq":1,'
            f'"signature":"{first.signature}","time":"{first.time}"}}'
        ).encode()
    )
    assert json.loads(raws[0])["prev_hash"] == GENESIS_HASH
    assert json.loads(raws[2])["time"] == "2030-05-06T07:08:09.000000Z"
    for raw, (_, _, stored_hash) in zip(raws, rows, strict=True):
        assert hashlib.sha256(raw).hexdigest() == stored_hash
    # Independent check with plain cryptography: signature over context + entry sans signature.
    obj = json.loads(raws[2])
    signature = bytes.fromhex(obj.pop("signature"))
    key.public_key().verify(signature, ENTRY_CONTEXT + canonical_json(obj))
    assert second.hash == hashlib.sha256(raws[2]).hexdigest()
    head = store.audit.head()
    key.public_key().verify(
        bytes.fromhex(head.signature),
        HEAD_CONTEXT + canonical_json({"count": 3, "hash": second.hash}),
    )


@pytest.mark.parametrize(
    ("details", "error", "where"),
    [
        ({"update": np.zeros(3, dtype=np.float32)}, TypeError, "numpy"),
        ({"norm": np.float32(1.5)}, TypeError, "numpy"),
        ({"norm": np.float64(1.5)}, TypeError, "numpy"),
        ({"count": np.int64(3)}, TypeError, "numpy"),
        ({"nested": {"deeper": [1, {"x": np.ones(2)}]}}, TypeError, "numpy"),
        ({"key": b"secret-bytes-value"}, TypeError, "hex"),
        ({"members": {1, 2}}, TypeError, "set"),
        ({"loss": float("nan")}, ValueError, "NaN"),
        ({"loss": float("inf")}, ValueError, "NaN"),
        ({1: "int key"}, TypeError, "keys must be str"),
        ({"big": 2**60}, ValueError, "2**53"),
        ({"when": datetime(2025, 1, 1, tzinfo=UTC)}, TypeError, "datetime"),
        ({"blob": "x" * 70_000}, ValueError, "bytes"),
        ({"update": [0.1] * 20_000}, ValueError, "bytes"),
    ],
)
def test_refuses_non_json_details_and_bulk_data(
    store: Store, key: Ed25519PrivateKey, details: dict, error: type, where: str
) -> None:
    before = store.audit.head()
    with pytest.raises(error) as info:
        store.audit.append("aggregate", details)
    assert where in str(info.value)
    assert "secret-bytes-value" not in str(info.value)  # values never appear in errors
    assert store.audit.head() == before
    store.audit.verify(key.public_key())


def test_refuses_bad_event_names_times_and_details_types(store: Store) -> None:
    for event in ("", "Round", "round opened", "x" * 65, 5):
        with pytest.raises(ValueError, match="event"):
            store.audit.append(event, {})
    with pytest.raises(ValueError, match="timezone"):
        store.audit.append("approval", {}, time=datetime(2025, 1, 1))
    with pytest.raises(TypeError):
        store.audit.append("approval", [("a", 1)])
    assert len(store.audit) == 1


def test_append_without_conn_commits_on_its_own(store: Store, db_path: Path) -> None:
    entry = store.audit.append("config_loaded", {"path": "sealagg.toml"})
    with raw_db(db_path) as other:  # a second connection sees it at once
        row = other.execute("SELECT entry_hash FROM audit_log WHERE seq = 1").fetchone()
    assert row == (entry.hash,)


def test_append_with_conn_outside_transaction_is_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="open transaction"):
        store.audit.append("approval", {}, conn=store._conn)


def test_all_supported_key_types_interoperate(db_path: Path) -> None:
    seed = bytes(range(32))
    crypto_key = Ed25519PrivateKey.from_private_bytes(seed)
    with Store.open(db_path, audit_key=IdentityKey.from_seed(seed)) as s:
        s.audit.append("approval", {"by": "identity key"})
    with Store.open(db_path, audit_key=nacl.signing.SigningKey(seed)) as s:
        s.audit.append("approval", {"by": "nacl key"})
    with Store.open(db_path, audit_key=crypto_key) as s:
        s.audit.append("approval", {"by": "cryptography key"})
        public = crypto_key.public_key()
        assert s.audit.verify(public).count == 4
        assert s.audit.verify(public.public_bytes_raw()).count == 4
        assert s.audit.verify(nacl.signing.SigningKey(seed).verify_key).count == 4
        with pytest.raises(ValueError, match="Ed25519 public key"):
            s.audit.verify(b"short")


def test_read_only_auditor_verifies_without_the_signing_key(
    store: Store, db_path: Path, key: Ed25519PrivateKey
) -> None:
    fill(store, 5)
    store.close()
    with Store.open(db_path, read_only=True) as auditor:
        assert auditor.audit.verify(key.public_key()).count == 6
        with pytest.raises(AuditChainError, match="signing key"):
            auditor.audit.append("approval", {})


# ---------------------------------------------------------------------------- tampering


def test_edited_details_are_caught_at_their_seq(
    store: Store, db_path: Path, key: Ed25519PrivateKey
) -> None:
    fill(store, 10)
    obj = raw_entry(db_path, 5)
    obj["details"]["mode"] = "plaintext"
    rewrite_entry(db_path, 5, obj)
    expect_broken(store, key, 5, "signature")


def test_edited_time_is_caught_at_its_seq(
    store: Store, db_path: Path, key: Ed25519PrivateKey
) -> None:
    fill(store, 10)
    obj = raw_entry(db_path, 7)
    obj["time"] = "2024-12-31T23:59:59.000000Z"
    rewrite_entry(db_path, 7, obj)
    expect_broken(store, key, 7, "signature")


def test_edited_side_columns_are_caught(
    store: Store, db_path: Path, key: Ed25519PrivateKey
) -> None:
    fill(store, 10)
    with raw_db(db_path) as conn:
        conn.execute("UPDATE audit_log SET time = '2020-01-01T00:00:00.000000Z' WHERE seq = 3")
    expect_broken(store, key, 3, "columns disagree")
    signed_time = raw_entry(db_path, 3)["time"]
    with raw_db(db_path) as conn:
        conn.execute("UPDATE audit_log SET time = ? WHERE seq = 3", (signed_time,))
        conn.execute("UPDATE audit_log SET entry_hash = ? WHERE seq = 4", ("ab" * 32,))
    expect_broken(store, key, 4, "entry_hash")


def test_non_canonical_reencoding_is_caught(
    store: Store, db_path: Path, key: Ed25519PrivateKey
) -> None:
    fill(store, 4)
    obj = raw_entry(db_path, 2)
    with raw_db(db_path) as conn:  # same content, pretty-printed
        conn.execute(
            "UPDATE audit_log SET entry = ? WHERE seq = 2", (json.dumps(obj, indent=1).encode(),)
        )
    expect_broken(store, key, 2, "canonical")


def test_deleted_middle_entry_is_caught(
    store: Store, db_path: Path, key: Ed25519PrivateKey
) -> None:
    fill(store, 10)
    with raw_db(db_path) as conn:
        conn.execute("DELETE FROM audit_log WHERE seq = 4")
    expect_broken(store, key, 4, "missing")


def test_deleted_entry_with_renumbering_is_caught(
    store: Store, db_path: Path, key: Ed25519PrivateKey
) -> None:
    fill(store, 10)
    with raw_db(db_path) as conn:
        conn.execute("DELETE FROM audit_log WHERE seq = 4")
        conn.execute("UPDATE audit_log SET seq = seq + 1000 WHERE seq > 4")
        conn.execute("UPDATE audit_log SET seq = seq - 1001 WHERE seq > 1000")
    expect_broken(store, key, 4, "says seq 5")


def test_reordered_entries_are_caught_at_the_first_position(
    store: Store, db_path: Path, key: Ed25519PrivateKey
) -> None:
    fill(store, 10)
    a, b = raw_entry(db_path, 3), raw_entry(db_path, 6)
    rewrite_entry(db_path, 3, b)  # entries 3 and 6 swap places
    rewrite_entry(db_path, 6, a)
    expect_broken(store, key, 3, "reordered")


def test_reordered_and_renumbered_entries_are_caught(
    store: Store, db_path: Path, key: Ed25519PrivateKey
) -> None:
    fill(store, 10)
    a, b = raw_entry(db_path, 3), raw_entry(db_path, 4)
    a["seq"], b["seq"] = 4, 3  # the attacker also fixes the seq inside each entry
    rewrite_entry(db_path, 3, b, new_seq=999)
    rewrite_entry(db_path, 4, a)
    with raw_db(db_path) as conn:
        conn.execute("UPDATE audit_log SET seq = 3 WHERE seq = 999")
    expect_broken(store, key, 3, "signature")


def test_truncated_tail_is_caught_through_the_signed_head(
    store: Store, db_path: Path, key: Ed25519PrivateKey
) -> None:
    fill(store, 12)
    with raw_db(db_path) as conn:
        conn.execute("DELETE FROM audit_log WHERE seq >= 9")
    expect_broken(store, key, 9, "truncated tail", "9..12")
    with pytest.raises(AuditChainError, match="damaged chain"):  # and appends do not paper over
        store.audit.append("approval", {})


def test_truncation_with_a_replayed_old_head_needs_the_external_head(
    store: Store, db_path: Path, key: Ed25519PrivateKey
) -> None:
    """The documented limit: an old genuine head row makes a cut log look whole, unless the
    verifier brings a head recorded outside the appliance."""
    fill(store, 7)
    with raw_db(db_path) as conn:
        saved_head = conn.execute("SELECT seq, hash, signature FROM audit_head").fetchone()
    fill(store, 5)
    external = store.audit.head()
    assert external.count == 13
    with raw_db(db_path) as conn:
        conn.execute("DELETE FROM audit_log WHERE seq > ?", (saved_head[0],))
        conn.execute("UPDATE audit_head SET seq = ?, hash = ?, signature = ?", saved_head)
    assert store.audit.verify(key.public_key()).count == 8  # looks fine on its own
    expect_broken(store, key, 8, "truncated", "externally recorded", expected_head=external)
    expect_broken(store, key, 8, "truncated", expected_head=(13, external.hash))


def test_rewritten_log_does_not_match_external_head(
    store: Store, db_path: Path, key: Ed25519PrivateKey
) -> None:
    fill(store, 5)
    expect_broken(store, key, 3, "externally recorded", expected_head=(4, "cd" * 32))
    expect_broken(store, key, None, "externally recorded", expected_head=(0, "cd" * 32))
    with pytest.raises(ValueError, match="64 lowercase hex"):
        store.audit.verify(key.public_key(), expected_head=(4, "nothex"))


def test_deleted_head_row_is_caught(store: Store, db_path: Path, key: Ed25519PrivateKey) -> None:
    fill(store, 3)
    with raw_db(db_path) as conn:
        conn.execute("DELETE FROM audit_head")
    expect_broken(store, key, 3, "missing")


def test_forged_head_signature_is_caught(
    store: Store, db_path: Path, key: Ed25519PrivateKey
) -> None:
    fill(store, 6)
    with raw_db(db_path) as conn:
        conn.execute("DELETE FROM audit_log WHERE seq = 6")
        row = conn.execute("SELECT entry_hash FROM audit_log WHERE seq = 5").fetchone()
        forged = Ed25519PrivateKey.generate().sign(
            HEAD_CONTEXT + canonical_json({"count": 6, "hash": row[0]})
        )
        conn.execute(
            "UPDATE audit_head SET seq = 5, hash = ?, signature = ?", (row[0], forged.hex())
        )
    expect_broken(store, key, 5, "forged head")


def test_forged_entry_signature_is_caught(
    store: Store, db_path: Path, key: Ed25519PrivateKey
) -> None:
    fill(store, 10)
    obj = raw_entry(db_path, 6)
    obj["details"]["mode"] = "plaintext"
    del obj["signature"]
    mallory = Ed25519PrivateKey.generate()
    obj["signature"] = mallory.sign(ENTRY_CONTEXT + canonical_json(obj)).hex()
    rewrite_entry(db_path, 6, obj)
    expect_broken(store, key, 6, "signature")


def test_wrong_verify_key_fails_at_seq_zero(store: Store) -> None:
    fill(store, 3)
    expect_broken(store, Ed25519PrivateKey.generate(), 0, "wrong")


def test_verify_checks_every_entry_up_to_the_last(
    store: Store, db_path: Path, key: Ed25519PrivateKey
) -> None:
    fill(store, 40)
    obj = raw_entry(db_path, 40)
    obj["details"]["note"] = "changed"
    rewrite_entry(db_path, 40, obj)
    expect_broken(store, key, 40, "signature")


def test_garbage_entry_is_caught(store: Store, db_path: Path, key: Ed25519PrivateKey) -> None:
    fill(store, 3)
    with raw_db(db_path) as conn:
        conn.execute("UPDATE audit_log SET entry = ? WHERE seq = 2", (b"\xff\x00 not json",))
    expect_broken(store, key, 2, "JSON")


# --------------------------------------------------------------------------- JSONL export


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


@pytest.fixture
def export(store: Store, tmp_path: Path) -> Path:
    fill(store, 9)
    path = tmp_path / "audit.jsonl"
    head = store.audit.export_jsonl(path)
    assert head == store.audit.head()
    return path


def expect_jsonl_broken(path: Path, key, seq: int | None, *words: str, **kw) -> None:
    with pytest.raises(AuditVerificationError) as info:
        verify_jsonl(path, key.public_key(), **kw)
    assert info.value.seq == seq, str(info.value)
    for word in words:
        assert word in info.value.reason, str(info.value)


def test_jsonl_export_verifies_offline(store: Store, export: Path, key) -> None:
    lines = lines_of(export)
    assert len(lines) == 11
    with raw_db(store.path) as conn:
        stored = [bytes(r[0]) for r in conn.execute("SELECT entry FROM audit_log ORDER BY seq")]
    assert lines[:-1] == stored  # byte for byte the signed entries
    assert json.loads(lines[-1]) == {"audit_head": store.audit.head().to_json()}
    head = store.audit.head()
    store.close()  # offline: no database needed
    report = verify_jsonl(export, key.public_key(), expected_head=(head.count, head.hash))
    assert report.count == 10 and report.expected_head_checked


def test_jsonl_edited_line_is_caught(export: Path, key) -> None:
    lines = lines_of(export)
    obj = json.loads(lines[4])
    obj["details"]["mode"] = "plaintext"
    lines[4] = canonical_json(obj)
    write_lines(export, lines)
    expect_jsonl_broken(export, key, 4, "signature")


def test_jsonl_deleted_and_reordered_lines_are_caught(export: Path, key) -> None:
    original = lines_of(export)
    write_lines(export, original[:3] + original[4:])
    expect_jsonl_broken(export, key, 3, "says seq 4")
    swapped = list(original)
    swapped[2], swapped[6] = swapped[6], swapped[2]
    write_lines(export, swapped)
    expect_jsonl_broken(export, key, 2, "reordered")


def test_jsonl_truncation_is_caught(export: Path, key) -> None:
    original = lines_of(export)
    write_lines(export, original[:7] + original[-1:])  # tail cut, trailer kept
    expect_jsonl_broken(export, key, 7, "truncated tail")
    write_lines(export, original[:7])  # tail and trailer cut
    expect_jsonl_broken(export, key, None, "trailer")
    export.write_bytes(b"".join(line + b"\n" for line in original)[:-20])  # cut mid-line
    expect_jsonl_broken(export, key, None, "newline")
    export.write_bytes(b"")
    expect_jsonl_broken(export, key, None, "empty")


def test_jsonl_old_genuine_export_needs_external_head(
    store: Store, export: Path, key, tmp_path: Path
) -> None:
    fill(store, 3)
    newer = store.audit.head()
    expect_jsonl_broken(export, key, 10, "truncated", expected_head=newer)
    later = tmp_path / "later.jsonl"
    store.audit.export_jsonl(later)
    assert verify_jsonl(later, key.public_key(), expected_head=newer).count == 13


def test_jsonl_wrong_key_fails_at_seq_zero(export: Path) -> None:
    expect_jsonl_broken(export, Ed25519PrivateKey.generate(), 0, "wrong")


def test_export_to_missing_folder_is_a_clear_error(store: Store, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot export"):
        store.audit.export_jsonl(tmp_path / "no" / "such" / "audit.jsonl")
