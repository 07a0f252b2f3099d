"""Durable exclusions after proven blames (issue 17): one row per exclusion, every blame
audited, kept across a restart (a reopened store), ended only by an audited readmission."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sealagg_testkit.clock import FakeClock

from sealagg.appliance.errors import StoreError
from sealagg.appliance.store import Store, default_state_path


def _open(folder: Path, key: Ed25519PrivateKey) -> Store:
    return Store.open(default_state_path(folder), audit_key=key, clock=FakeClock())


def test_an_exclusion_survives_a_restart_until_readmitted(tmp_path: Path, key):
    store = _open(tmp_path, key)
    number = store.open_round("secagg+", bytes(range(32)))
    reason = "its signed sealed share does not decrypt under the pair's proven key"
    assert store.exclude_participant("client4", round=number, reason=reason, blamed_by="client0")
    assert not store.exclude_participant("client4", round=number, reason=reason, blamed_by="c1")
    store.close()

    store = _open(tmp_path, key)  # the appliance restarted
    (record,) = store.excluded_participants().values()
    assert (record.name, record.round, record.reason, record.blamed_by) == (
        "client4",
        number,
        reason,
        "client0",
    )
    audited = [e.details for e in store.audit.entries() if e.event == "client_excluded"]
    assert [d["blamed_by"] for d in audited] == ["client0", "c1"]  # each blame on the record
    assert all(d["round"] == number and d["reason"] == reason for d in audited)

    back = store.readmit_participant("client4", by="operator")
    assert back.round == number and store.excluded_participants() == {}
    (readmitted,) = [e.details for e in store.audit.entries() if e.event == "client_readmitted"]
    assert readmitted == {
        "client": "client4",
        "by": "operator",
        "excluded_in_round": number,
        "reason": reason,
    }
    with pytest.raises(StoreError, match="not excluded"):
        store.readmit_participant("client4")
    assert store.exclude_participant("client4", round=None, reason="again", blamed_by=None)
    assert set(store.excluded_participants()) == {"client4"}
    store.audit.verify(key.public_key())
    store.close()


def test_a_database_from_before_exclusions_gains_the_table(tmp_path: Path, key):
    store = _open(tmp_path, key)
    store.close()
    conn = sqlite3.connect(default_state_path(tmp_path))  # back to schema 1, as released
    for statement in (
        "DROP INDEX exclusions_active",
        "DROP TABLE exclusions",
        "DROP TABLE approvals",
        "DROP TABLE evaluations",
        "DROP INDEX rounds_run",
        "ALTER TABLE rounds DROP COLUMN run",
        "DROP TABLE runs",
        "UPDATE schema_version SET version = 1",
    ):
        conn.execute(statement)
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="older than this sealagg"):
        Store.open(default_state_path(tmp_path), read_only=True)  # read-only: left untouched
    store = _open(tmp_path, key)
    assert store.exclude_participant("client1", round=None, reason="proof", blamed_by=None)
    assert [e.event for e in store.audit.entries()][-3:-1] == ["schema_migrated"] * 2
    store.close()
