"""Issuing and revoking, audited when they happen, and mirrored once at appliance start.

The federation folder (``clients/*.json``, ``revoked.json``) is what handshakes consult; the
state database mirrors it in ``participants`` with an audit entry per change. The CLI writes
that entry at once, with who did it (:class:`~appliance.admins.Actor`). When no database
exists yet (before the first start) there is no chain to append to: the appliance's start
records the change then, with the time from the record itself (``issued_at`` of the client
record, ``revoked_at`` of the revocation list), never the start's time, and marks when it
was recorded (``recorded_at``).

Every step is idempotent and one write transaction that re-reads the participant row first
(``BEGIN IMMEDIATE``), keyed by certificate serial: the CLI and a starting appliance racing
on the same change write its entry once. The audit chain's head is read inside that same
transaction (``AuditLog._append``), so two processes appending cannot fork the chain.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sealagg.appliance.admins import Actor, AdminDirectory
from sealagg.appliance.audit import format_time
from sealagg.appliance.errors import StoreError
from sealagg.appliance.federation import ClientRecord, FederationFolder
from sealagg.appliance.store import Store

__all__ = [
    "REVOKE_REASON",
    "record_admin_event",
    "record_client_added",
    "record_client_revoked",
    "sync_admins",
    "sync_at_start",
    "sync_participants",
]

_log = logging.getLogger("sealagg.participants")

REVOKE_REASON = "certificate revoked"


def record_client_added(
    store: Store, record: ClientRecord, *, by: Actor | None, late: bool = False
) -> bool:
    """Register ``record``'s certificate as an active participant and audit ``client_added``
    at the record's ``issued_at``; False (and nothing written) when that serial is known."""
    serial = format(record.serial, "x")
    with store.transaction() as tx:
        if _row(tx, serial) is not None:
            return False
        if tx.execute(
            "SELECT 1 FROM participants WHERE name = ? AND status = 'active'", (record.name,)
        ).fetchone():
            raise StoreError(
                f"participant {record.name!r} is active with another certificate: revoke it first"
            )
        if tx.execute(
            "SELECT 1 FROM participants WHERE identity_key = ? AND status = 'active'",
            (record.identity_public_key,),
        ).fetchone():
            raise StoreError("this identity key already belongs to an active participant")
        tx.execute(
            "INSERT INTO participants (name, cert_serial, identity_key, status, added_at) "
            "VALUES (?, ?, ?, 'active', ?)",
            (record.name, serial, record.identity_public_key, format_time(record.issued_at)),
        )
        details = {
            "name": record.name,
            "cert_serial": serial,
            "identity_key": record.identity_public_key.hex(),
            "by": None if by is None else by.to_json(),
        }
        store.audit.append("client_added", _late(details, late), conn=tx, time=record.issued_at)
    return True


def record_client_revoked(
    store: Store,
    *,
    name: str,
    serial: int,
    revoked_at: datetime,
    by: Actor | None,
    reason: str = REVOKE_REASON,
    late: bool = False,
) -> bool:
    """Mark the participant with certificate ``serial`` revoked and audit ``client_revoked`` at
    ``revoked_at`` (the revocation list's time); False when already revoked or never known."""
    hex_serial = format(serial, "x")
    with store.transaction() as tx:
        row = _row(tx, hex_serial)
        if row is None or row[1] != "active":
            return False
        tx.execute(
            "UPDATE participants SET status = 'revoked', revoked_at = ?, revoke_reason = ? "
            "WHERE id = ?",
            (format_time(revoked_at), reason, row[0]),
        )
        details = {
            "name": name,
            "cert_serial": hex_serial,
            "reason": reason,
            "by": None if by is None else by.to_json(),
        }
        store.audit.append("client_revoked", _late(details, late), conn=tx, time=revoked_at)
    return True


def record_admin_event(
    store: Store,
    event: str,
    details: Mapping[str, Any],
    *,
    by: Actor | None,
    time: datetime | None = None,
    late: bool = False,
) -> bool:
    """Audit an administrator change (``admin_added``, ``admin_removed``) with its actor, once
    per event, name and certificate serial; False when that entry already exists."""
    with store.transaction() as tx:
        if _admin_event_logged(tx, event, str(details["name"]), str(details["cert_serial"])):
            return False
        body = {**details, "by": None if by is None else by.to_json()}
        store.audit.append(event, _late(body, late), conn=tx, time=time)
    return True


def sync_admins(federation: FederationFolder, store: Store, directory: AdminDirectory) -> list[str]:
    """Record administrator grants and removals made while no database existed, once, at the
    time the folder gives (the directory's ``added_at``, the revocation list's time)."""
    done = []
    for entry in directory.entries():
        if record_admin_event(
            store,
            "admin_added",
            {
                "name": entry.name,
                "roles": sorted(r.value for r in entry.roles),
                "cert_serial": format(entry.serial, "x"),
                "added_by": entry.added_by,
            },
            by=None,
            time=entry.added_at,
            late=True,
        ):
            done.append(f"admin_added {entry.name}")
    granted = _logged_admin_serials(store)
    for revocation in federation.revocations().entries:
        serial = format(revocation.serial, "x")
        if (revocation.name, serial) in granted and record_admin_event(
            store,
            "admin_removed",
            {"name": revocation.name, "cert_serial": serial},
            by=None,
            time=revocation.revoked_at,
            late=True,
        ):
            done.append(f"admin_removed {revocation.name}")
    return done


def sync_participants(
    federation: FederationFolder, store: Store, *, admin_names: Iterable[str]
) -> list[str]:
    """Mirror every issued and revoked client certificate into the store, once.

    Replaces ``server.sync_participants``: safe to run at every start and concurrently with
    the CLI. A change the CLI already recorded is skipped; a change made while no database
    existed is recorded now with the record's own time. Administrators are never
    participants. Returns what was recorded (``"client_added alice"``, ...).
    """
    admins = frozenset(admin_names)
    revocations = {r.serial: r for r in federation.revocations().entries}
    done: list[str] = []
    # Revocations first: a certificate revoked and superseded by a new one while no appliance
    # ran is named only by the revocation list now, and its row must end before the new one.
    for revocation in sorted(revocations.values(), key=lambda r: r.revoked_at):
        if revocation.name not in admins and record_client_revoked(
            store,
            name=revocation.name,
            serial=revocation.serial,
            revoked_at=revocation.revoked_at,
            by=None,
            late=True,
        ):
            done.append(f"client_revoked {revocation.name}")
    for record in federation.client_records():
        if record.name in admins:
            continue
        if record_client_added(store, record, by=None, late=True):
            done.append(f"client_added {record.name}")
        revocation = revocations.get(record.serial)
        when = revocation.revoked_at if revocation is not None else record.revoked_at
        if (record.revoked or revocation is not None) and record_client_revoked(
            store,
            name=record.name,
            serial=record.serial,
            revoked_at=when or datetime.now(UTC),
            by=None,
            late=True,
        ):
            done.append(f"client_revoked {record.name}")
    if done:
        _log.info("recorded client changes made while no appliance recorded them: %s", done)
    return done


def sync_at_start(federation: FederationFolder, store: Store) -> list[str]:
    """Everything the appliance records at start (replaces ``server.sync_participants``).

    Raises :class:`~appliance.errors.ProvisioningError` when ``admins.json`` is unreadable
    or wrongly signed: starting anyway could register a named administrator as a
    participant, so the appliance refuses to start, as it does for a corrupt revocation list.
    """
    directory = AdminDirectory.load(federation.folder, current_only=False)
    done = sync_participants(federation, store, admin_names=directory.names())
    return done + sync_admins(federation, store, directory)


def _row(tx: sqlite3.Connection, serial: str) -> tuple[int, str] | None:
    return tx.execute(
        "SELECT id, status FROM participants WHERE cert_serial = ?", (serial,)
    ).fetchone()


def _logged(tx: sqlite3.Connection, event: str) -> Iterable[dict[str, Any]]:
    for (raw,) in tx.execute("SELECT entry FROM audit_log WHERE event = ?", (event,)):
        details = json.loads(raw).get("details")
        if isinstance(details, dict):
            yield details


def _admin_event_logged(tx: sqlite3.Connection, event: str, name: str, serial: str) -> bool:
    return any(d.get("name") == name and d.get("cert_serial") == serial for d in _logged(tx, event))


def _logged_admin_serials(store: Store) -> set[tuple[str, str]]:
    with store.snapshot() as tx:
        return {(str(d.get("name")), str(d.get("cert_serial"))) for d in _logged(tx, "admin_added")}


def _late(details: dict[str, Any], late: bool) -> dict[str, Any]:
    """Entries written after the fact keep the action's time and say when they were written."""
    if late:
        details["recorded_at"] = format_time(datetime.now(UTC))
    return details
