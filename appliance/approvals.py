"""Approval decisions on a pending candidate, with an optional two-person rule.

``[gates] approvals_required`` = 1 (default) publishes on the first approval, as before. With
2, the first approval is recorded (row in ``approvals``, audit ``approval_recorded``) and the
candidate stays pending; a second approval by a *different* administrator publishes it. One
person can never publish alone: the same name approving twice is refused, and the table's
``UNIQUE (round, admin)`` enforces it again in the database. Any single rejection rejects,
because stopping a model must never need two people.

Who may decide at all (the approver role) is checked by the Admin service before calling
here (:meth:`appliance.admins.AdminDirectory.authorize`); this module counts distinct names.

Every decision is one write transaction: the pending-candidate and staleness checks, the
``approvals`` row, the status changes and the audit entry carrying the administrator's name
commit together, so two approvers racing cannot both be "the first", and a crash leaves
either the whole step or none of it.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from datetime import UTC, datetime
from typing import Literal

from sealagg.appliance.audit import format_time
from sealagg.appliance.errors import StoreError
from sealagg.appliance.store import Store
from sealagg.appliance.versions import superseded_during_round

__all__ = ["MAX_APPROVALS_REQUIRED", "DecisionResult", "record_decision"]

#: A third approver adds ceremony, not a guarantee the config should promise.
MAX_APPROVALS_REQUIRED = 2

Outcome = Literal["published", "rejected", "awaiting_approval"]


@dataclasses.dataclass(frozen=True)
class DecisionResult:
    """What a decision did: ``detail`` is the one-line answer for the administrator."""

    round: int
    version: int
    outcome: Outcome
    approvers: tuple[str, ...]
    required: int
    detail: str


def record_decision(
    store: Store,
    round_number: int,
    approve: bool,
    reason: str,
    admin: str,
    *,
    required: int = 1,
) -> DecisionResult:
    """Record ``admin``'s decision on the candidate of ``round_number`` (see the module doc).

    Raises ValueError for a round with no pending candidate, for approving a stale candidate
    (a rollback or import made while it waited), and for a second approval by the same
    administrator; nothing is written then.
    """
    if type(required) is not int or not 1 <= required <= MAX_APPROVALS_REQUIRED:
        raise ValueError(f"approvals_required must be 1 or {MAX_APPROVALS_REQUIRED}")
    if not isinstance(admin, str) or not admin:
        raise ValueError("the deciding administrator must be named")
    reason = reason or ""
    with store.transaction() as tx:
        pending = [
            m for m in store.model_versions() if m.round == round_number and m.status == "pending"
        ]
        if not pending:
            raise ValueError(f"round {round_number} has no model waiting for approval")
        model = pending[0]
        if approve:
            stale = None if model.parent is None else superseded_during_round(store, model.parent)
            if stale:  # approving would undo e.g. a rollback made while it waited
                raise ValueError(f"cannot approve round {round_number}: {stale}; reject it instead")
        approvers = _approvers(tx, round_number, model.version)
        if approve and admin in approvers:
            raise ValueError(
                f"{admin} already approved round {round_number}: publishing needs "
                f"{required} different approvers ({len(approvers)} so far)"
            )
        now = format_time(datetime.now(UTC))
        tx.execute(
            "INSERT INTO approvals (round, version, admin, approve, reason, at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (round, admin) DO UPDATE SET "
            "approve = excluded.approve, reason = excluded.reason, at = excluded.at",
            (round_number, model.version, admin, int(approve), reason or None, now),
        )
        if approve:
            approvers = (*approvers, admin)
        details = {
            "round": round_number,
            "version": model.version,
            "approve": approve,
            "by": admin,
            "reason": reason,
            "approvers": list(approvers),
            "required": required,
        }
        if approve and len(approvers) < required:
            store.audit.append("approval_recorded", details, conn=tx)
            return DecisionResult(
                round_number,
                model.version,
                "awaiting_approval",
                approvers,
                required,
                f"round {round_number}: approval {len(approvers)} of {required} recorded "
                f"({', '.join(approvers)}); model version {model.version} stays pending "
                "until a different approver approves",
            )
        store.audit.append("approval", details, conn=tx)
        status = "accepted" if approve else "rejected"
        store.set_model_status(model.version, status)
        store.set_round_status(round_number, status, reason or None)
    verb = "published" if approve else "rejected"
    return DecisionResult(
        round_number,
        model.version,
        "published" if approve else "rejected",
        approvers,
        required,
        f"round {round_number}: model version {model.version} {verb}",
    )


def _approvers(tx: sqlite3.Connection, round_number: int, version: int) -> tuple[str, ...]:
    try:
        rows = tx.execute(
            "SELECT admin FROM approvals WHERE round = ? AND version = ? AND approve = 1 "
            "ORDER BY id",
            (round_number, version),
        ).fetchall()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the approvals of round {round_number}: {exc}") from exc
    return tuple(name for (name,) in rows)
