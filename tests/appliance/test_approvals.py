"""Two-person approval (appliance/approvals.py) on a real state database."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sealagg.appliance.approvals import record_decision
from sealagg.appliance.store import Store


def _tensors(shift: float) -> dict[str, np.ndarray]:
    return {"w": np.full((4,), shift, dtype=np.float32)}


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def pending(tmp_path: Path, key: Ed25519PrivateKey):
    """A store whose round 1 candidate (version 2, trained from 1) waits for approval."""
    folder = tmp_path / "fed"
    folder.mkdir()
    store = Store.open(folder / "state.sqlite3", audit_key=key, federation="fed")
    store.add_model_version(_tensors(0.0), parent=None, status="accepted")
    number = store.open_round("secagg+", os.urandom(16))
    store.set_round_status(number, "aggregating")
    store.add_model_version(_tensors(1.0), parent=1, round=number, status="pending")
    store.set_round_status(number, "pending_approval")
    yield store, number
    store.close()


def _events(store: Store) -> list[str]:
    return [e.event for e in store.audit.entries()]


def _approval_rows(store: Store) -> list[tuple]:
    with store.snapshot() as conn:
        return conn.execute("SELECT admin, approve FROM approvals ORDER BY id").fetchall()


def test_one_approval_publishes_when_one_is_required(pending) -> None:
    store, number = pending
    result = record_decision(store, number, True, "fine", "alice", required=1)
    assert result.outcome == "published" and "published" in result.detail
    assert store.current_model().version == 2
    entry = [e for e in store.audit.entries() if e.event == "approval"][-1]
    assert entry.details["by"] == "alice" and entry.details["approvers"] == ["alice"]


def test_two_person_rule_needs_a_second_different_approver(pending) -> None:
    store, number = pending
    first = record_decision(store, number, True, "looks good", "alice", required=2)
    assert first.outcome == "awaiting_approval"
    assert store.current_model().version == 1  # still pending
    assert store.model_version(2).status == "pending"
    assert store.round(number).status == "pending_approval"
    recorded = [e for e in store.audit.entries() if e.event == "approval_recorded"]
    assert len(recorded) == 1 and recorded[0].details["by"] == "alice"
    assert "approval" not in _events(store)
    assert _approval_rows(store) == [("alice", 1)]

    second = record_decision(store, number, True, "agreed", "bob", required=2)
    assert second.outcome == "published" and second.approvers == ("alice", "bob")
    assert store.current_model().version == 2
    assert store.round(number).status == "accepted"
    final = [e for e in store.audit.entries() if e.event == "approval"]
    assert len(final) == 1 and final[0].details["by"] == "bob"
    assert final[0].details["approvers"] == ["alice", "bob"]


def test_the_same_admin_cannot_approve_twice(pending) -> None:
    store, number = pending
    record_decision(store, number, True, "", "alice", required=2)
    before = len(store.audit)
    with pytest.raises(ValueError, match="alice already approved round 1: publishing needs 2"):
        record_decision(store, number, True, "again", "alice", required=2)
    assert len(store.audit) == before  # nothing written
    assert store.model_version(2).status == "pending"
    assert store.current_model().version == 1


def test_the_database_refuses_a_second_row_for_the_same_admin(pending) -> None:
    """Even a caller that skipped record_decision's check cannot count one person twice."""
    store, number = pending
    record_decision(store, number, True, "", "alice", required=2)
    with store.transaction() as tx, pytest.raises(sqlite3.IntegrityError):
        tx.execute(
            "INSERT INTO approvals (round, version, admin, approve, at) "
            "VALUES (?, 2, 'alice', 1, 'now')",
            (number,),
        )


def test_any_single_rejection_rejects(pending) -> None:
    store, number = pending
    record_decision(store, number, True, "", "alice", required=2)
    result = record_decision(store, number, False, "holdout regressed", "bob", required=2)
    assert result.outcome == "rejected"
    assert store.model_version(2).status == "rejected"
    assert store.round(number).status == "rejected"
    assert store.current_model().version == 1
    with pytest.raises(ValueError, match="no model waiting for approval"):
        record_decision(store, number, True, "", "carol", required=2)


def test_the_first_approver_may_still_reject(pending) -> None:
    store, number = pending
    record_decision(store, number, True, "", "alice", required=2)
    result = record_decision(store, number, False, "changed my mind", "alice", required=2)
    assert result.outcome == "rejected"
    assert _approval_rows(store) == [("alice", 0)]
    assert store.model_version(2).status == "rejected"


def test_a_stale_candidate_cannot_be_approved_even_with_two(pending) -> None:
    store, number = pending
    record_decision(store, number, True, "", "alice", required=2)
    store.add_model_version(_tensors(5.0), parent=None, status="accepted")  # an import
    with pytest.raises(ValueError, match=r"cannot approve round 1: .* reject it instead"):
        record_decision(store, number, True, "", "bob", required=2)
    assert store.model_version(2).status == "pending"
    assert record_decision(store, number, False, "stale", "bob", required=2).outcome == "rejected"


def test_no_pending_candidate_and_bad_settings_are_refused(pending) -> None:
    store, number = pending
    with pytest.raises(ValueError, match="round 99 has no model waiting for approval"):
        record_decision(store, 99, True, "", "alice", required=2)
    with pytest.raises(ValueError, match="approvals_required must be 1 or 2"):
        record_decision(store, number, True, "", "alice", required=3)
    assert _approval_rows(store) == []


def test_two_approvers_racing_publish_exactly_once(pending, tmp_path: Path, key) -> None:
    """Two stores (two connections, as two processes would have) approve at the same time:
    one is recorded first, the other publishes; never two publications, never two 'firsts'."""
    store, number = pending
    other = Store.open(store.path, audit_key=key)
    results: dict[str, object] = {}
    barrier = threading.Barrier(2)

    def approve(which: Store, name: str) -> None:
        barrier.wait()
        results[name] = record_decision(which, number, True, "", name, required=2)

    threads = [
        threading.Thread(target=approve, args=(store, "alice")),
        threading.Thread(target=approve, args=(other, "bob")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    other.close()
    outcomes = sorted(r.outcome for r in results.values())
    assert outcomes == ["awaiting_approval", "published"]
    assert _events(store).count("approval") == 1
    assert _events(store).count("approval_recorded") == 1
    store.audit.verify(key.public_key().public_bytes_raw())
