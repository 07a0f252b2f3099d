"""Audit key rotation: the chain continues across it, verified from the first key or the key
history; retired keys and self-made rotations are refused at their seq."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sealagg_testkit.audit import audit_details
from sealagg_testkit.clock import FakeClock

from sealagg.appliance.audit import (
    ENTRY_CONTEXT,
    HEAD_CONTEXT,
    KEY_ROTATION_EVENT,
    canonical_json,
    verify_jsonl,
)
from sealagg.appliance.audit_rotation import audit_key_history, rotate_audit_key
from sealagg.appliance.errors import AuditChainError, AuditVerificationError
from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.instance_lock import FolderInUseError, InstanceLock
from sealagg.appliance.server import open_store
from sealagg.appliance.store import Store
from sealagg.appliance.testing import make_deployment


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


@pytest.fixture
def rotated(tmp_path: Path):
    """A log of 3 entries under k1, a rotation to k2, then 2 entries under k2."""
    k1, k2 = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    folder = tmp_path / "fed"
    folder.mkdir()
    path = folder / "state.sqlite3"
    store = Store.open(path, audit_key=k1, clock=FakeClock())
    for i in range(2):
        store.audit.append("round_opened", {"round": i})
    entry = store.audit.rotate_key(k2)
    assert entry.details == {"previous_public_key": raw(k1).hex(), "new_public_key": raw(k2).hex()}
    for i in range(2):
        store.audit.append("round_opened", {"round": 10 + i})
    yield store, path, k1, k2, entry.seq
    store.close()


def forge(path: Path, key: Ed25519PrivateKey, event: str, details: dict) -> int:
    """Append an entry signed by ``key`` with a plain sqlite3 connection, head re-signed by
    ``key`` too (what someone holding only that key can do)."""
    conn = sqlite3.connect(path)
    try:
        seq, prev = conn.execute(
            "SELECT seq, entry_hash FROM audit_log ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        body = {
            "seq": seq + 1,
            "time": "2030-01-01T00:00:00.000000Z",
            "event": event,
            "details": details,
            "prev_hash": prev,
        }
        body["signature"] = key.sign(ENTRY_CONTEXT + canonical_json(body)).hex()
        data = canonical_json(body)
        import hashlib

        digest = hashlib.sha256(data).hexdigest()
        conn.execute(
            "INSERT INTO audit_log (seq, time, event, entry, entry_hash) VALUES (?, ?, ?, ?, ?)",
            (seq + 1, body["time"], event, data, digest),
        )
        head = key.sign(HEAD_CONTEXT + canonical_json({"count": seq + 2, "hash": digest})).hex()
        conn.execute(
            "UPDATE audit_head SET seq = ?, hash = ?, signature = ? WHERE id = 1",
            (seq + 1, digest, head),
        )
        conn.commit()
    finally:
        conn.close()
    return seq + 1


def test_chain_verifies_across_the_rotation_from_the_first_key(rotated):
    store, _, k1, k2, _ = rotated
    report = store.audit.verify(k1.public_key())
    assert report.count == 6
    assert store.audit.verify([raw(k1), raw(k2)]).count == 6
    assert len(store.audit.entries()) == 6  # read with the signer's key: rotations lead to it


def test_verify_with_the_new_key_alone_fails_at_the_start(rotated):
    store, _, _, k2, _ = rotated
    with pytest.raises(AuditVerificationError) as broken:
        store.audit.verify(k2.public_key())
    assert broken.value.seq == 0


def test_history_must_match_the_rotations(rotated):
    store, _, k1, k2, seq = rotated
    other = Ed25519PrivateKey.generate()
    with pytest.raises(AuditVerificationError, match="next key of the given key history") as bad:
        store.audit.verify([raw(k1), raw(other)])
    assert bad.value.seq == seq
    with pytest.raises(AuditVerificationError, match="next key of the given key history"):
        store.audit.verify([raw(k1)])  # the history stops before the chain's rotation
    # A history with a rotation the chain does not hold (the rotation entry was cut off).
    with pytest.raises(AuditVerificationError, match="history lists 2 rotation"):
        store.audit.verify([raw(k1), raw(k2), raw(other)])


def test_entry_signed_with_the_retired_key_after_the_rotation_is_refused(rotated):
    store, path, k1, _, _ = rotated
    seq = forge(path, k1, "round_opened", {"round": 99})
    with pytest.raises(AuditVerificationError, match="signature does not verify") as broken:
        store.audit.verify(k1.public_key())
    assert broken.value.seq == seq


def test_appliance_still_holding_the_old_key_cannot_append(rotated):
    _, path, k1, _, _ = rotated
    stale = Store.open(path, audit_key=k1, clock=FakeClock())
    try:
        with pytest.raises(AuditChainError, match="does not match its signed head"):
            stale.audit.append("round_opened", {"round": 7})
    finally:
        stale.close()


def test_attacker_cannot_rotate_to_his_own_key(tmp_path):
    k1, attacker = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    path = tmp_path / "state.sqlite3"
    store = Store.open(path, audit_key=k1, clock=FakeClock())
    store.audit.append("round_opened", {"round": 1})
    with pytest.raises(ValueError, match="rotate_key only"):
        store.audit.append(KEY_ROTATION_EVENT, {"new_public_key": raw(attacker).hex()})
    details = {"previous_public_key": raw(k1).hex(), "new_public_key": raw(attacker).hex()}
    seq = forge(path, attacker, KEY_ROTATION_EVENT, details)
    forge(path, attacker, "round_opened", {"round": 2})
    with pytest.raises(AuditVerificationError, match="signature does not verify") as broken:
        store.audit.verify(k1.public_key())
    assert broken.value.seq == seq
    store.close()


def test_rotation_entry_must_name_the_key_in_force(tmp_path):
    """A rotation signed by the key in force but naming another previous key is refused."""
    k1, k2 = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    path = tmp_path / "state.sqlite3"
    store = Store.open(path, audit_key=k1, clock=FakeClock())
    details = {"previous_public_key": raw(k2).hex(), "new_public_key": raw(k2).hex()}
    seq = forge(path, k1, KEY_ROTATION_EVENT, details)
    with pytest.raises(AuditVerificationError, match="another previous key") as broken:
        store.audit.verify(k1.public_key())
    assert broken.value.seq == seq
    store.close()


def test_export_verifies_offline_across_the_rotation(rotated, tmp_path):
    store, _, k1, k2, seq = rotated
    out = tmp_path / "audit.jsonl"
    store.audit.export_jsonl(out)
    assert verify_jsonl(out, k1.public_key()).count == 6
    assert verify_jsonl(out, [raw(k1), raw(k2)]).count == 6
    lines = out.read_bytes().splitlines()
    rotation = json.loads(lines[seq])
    assert rotation["event"] == KEY_ROTATION_EVENT


def test_federation_rotation_keeps_the_chain_and_the_history(tmp_path):
    dep = make_deployment(tmp_path, clients=3, authority=False)
    first = FederationFolder.load(dep.folder).signer_public_key
    with InstanceLock(dep.folder), pytest.raises(FolderInUseError):
        rotate_audit_key(dep.folder)  # a running appliance holds the lock: refused
    new = rotate_audit_key(dep.folder)
    assert audit_key_history(dep.folder) == [first, new]
    fed = FederationFolder.load(dep.folder)  # the folder's key files are the new key's
    assert fed.signer_public_key == new
    store = open_store(fed)
    try:
        store.audit.append("round_opened", {"round": 1})  # the appliance signs with the new key
        assert store.audit.verify(first).count == len(store.audit)
        assert store.audit.verify(audit_key_history(dep.folder)).count == len(store.audit)
    finally:
        store.close()
    (rotation,) = audit_details(dep.folder, KEY_ROTATION_EVENT)
    assert rotation["new_public_key"] == new.hex()
    assert not (dep.folder / "audit_signing_key.next.pem").exists()
