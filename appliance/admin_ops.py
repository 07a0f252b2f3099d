"""Every state-changing admin operation, authorized and audited in one place.

The gRPC Admin service, the console and (through the service) the Python admin API all call
:class:`AdminOperations`; the CLI's offline commands share its lower functions
(:func:`record_revocation`, :func:`check_audit`, :func:`stored_model`). One path means one
authorization rule and one audit record per operation, whichever front-end asked.

Authorization: each operation takes the acting administrator's name first, a name the caller
took from a verified identity (the mutual-TLS certificate, or a console session derived from
it), never from a request field. The administrator directory (appliance/admins.py) decides per
action and denies by default; a plain set of names (tests, older callers) allows its members
everything. A refusal raises :class:`PermissionError`; bad input raises ``ValueError`` or
``LookupError`` with the reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from sealagg.appliance.admins import LEGACY_ADMIN, Action, Actor, AdminDirectory, os_user
from sealagg.appliance.audit import VerifyKeys
from sealagg.appliance.errors import AuditVerificationError, ProvisioningError, StoreError
from sealagg.appliance.federation import ClientRecord, FederationFolder, revoke_client
from sealagg.appliance.models import ModelVersion, model_relpath
from sealagg.appliance.participant_sync import (
    REVOKE_REASON,
    record_client_added,
    record_client_revoked,
)

__all__ = [
    "AdminOperations",
    "Admins",
    "AuditCheck",
    "authorize",
    "check_audit",
    "record_revocation",
    "revoked_time",
    "stored_model",
]

#: The live administrator directory (``DirectoryWatch.current``), or a plain set of names
#: that may do everything (tests and older callers).
Admins = Callable[[], AdminDirectory] | Collection[str]
MAX_REASON_CHARS = 1000


def authorize(admins: Admins, name: str, action: Action | str) -> None:
    """Return if ``name`` may do ``action``; raise :class:`PermissionError` saying why not."""
    if callable(admins):  # roles per action; deny by default
        admins().authorize(name, action)
    elif name not in admins:
        raise PermissionError(f"{name} is not an administrator")


# ------------------------------------------------------------------ shared with the CLI


def revoked_time(federation: FederationFolder, record: ClientRecord) -> Any:
    """When ``record``'s certificate was revoked, as the revocation list says."""
    return next(
        (r.revoked_at for r in federation.revocations().entries if r.serial == record.serial),
        record.revoked_at,
    )


def record_revocation(
    store: Any,
    federation: FederationFolder,
    record: ClientRecord,
    *,
    by: Actor,
    reason: str = REVOKE_REASON,
) -> bool:
    """Audit a client's revocation (``client_revoked``) in ``store`` with its actor; a
    client issued while no database existed gets its (late) ``client_added`` first."""
    record_client_added(store, record, by=None, late=True)
    return record_client_revoked(
        store,
        name=record.name,
        serial=record.serial,
        revoked_at=revoked_time(federation, record),
        by=by,
        reason=reason,
    )


@dataclasses.dataclass(frozen=True)
class AuditCheck:
    """The result of verifying a state database's audit log."""

    ok: bool
    entries: int
    head_hash: str | None = None
    expected_head_checked: bool = False
    first_broken: dict[str, Any] | None = None  # {"seq": int | None, "reason": str}

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "head_hash": self.head_hash,
            "first_broken": self.first_broken,
        }


def check_audit(
    store: Any, key: VerifyKeys, *, expected_head: tuple[int, str] | None = None
) -> AuditCheck:
    """Verify every entry, the chain and the signed head (``sealagg audit verify``): a broken
    chain is a result (the first bad entry and why), not an exception."""
    try:
        report = store.audit.verify(key, expected_head=expected_head)
    except AuditVerificationError as error:
        return AuditCheck(
            ok=False,
            entries=len(store.audit),
            first_broken={"seq": error.seq, "reason": error.reason},
        )
    return AuditCheck(
        ok=True,
        entries=report.count,
        head_hash=report.head_hash,
        expected_head_checked=report.expected_head_checked,
    )


def stored_model(store: Any, version: int | None) -> tuple[ModelVersion, bytes]:
    """A model version (None or 0: the current one) and its stored safetensors bytes, byte for
    byte, after checking their SHA-256 against the store (so an export hashes to the value the
    store and the audit log record). LookupError: no such version."""
    if not version:
        model = store.current_model()
        if model is None:
            raise LookupError("there is no accepted model version yet")
    else:
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"{version!r} is not a model version (they count from 1)")
        try:
            model = store.model_version(version)
        except StoreError as error:
            raise LookupError(str(error)) from None
    path = Path(store.folder) / model_relpath(model.sha256)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise StoreError(f"cannot read model file {path}: {error.strerror}") from None
    if hashlib.sha256(data).hexdigest() != model.sha256:
        raise StoreError(
            f"model file {path} was modified or is corrupt (its SHA-256 does not match the "
            "recorded one); refusing to export it"
        )
    return model, data


# ----------------------------------------------------------------------- the operations


class AdminOperations:
    """Authorize, perform and audit every admin operation of one running appliance.

    ``orchestrator`` and ``store``: the appliance's; ``admins``: see :data:`Admins`;
    ``federation``: the loaded folder (revocation, the audit key); None: loaded from the
    store's folder on first use.
    """

    def __init__(
        self,
        orchestrator: Any,
        store: Any,
        admins: Admins,
        federation: FederationFolder | None = None,
    ) -> None:
        self._orch = orchestrator
        self._store = store
        self._admins = admins
        self._federation = federation

    @property
    def federation(self) -> FederationFolder:
        if self._federation is None:
            self._federation = FederationFolder.load(Path(self._store.folder))
        return self._federation

    # ------------------------------------------------------------------------ authorization

    def authorize(self, admin: str, action: Action | str) -> None:
        """Raise :class:`PermissionError` unless ``admin`` may do ``action``."""
        authorize(self._admins, admin, action)

    def authorize_view(self, admin: str) -> None:
        """Read access (every view, status): any administrator role."""
        self.authorize(admin, Action.LIST)

    # ------------------------------------------------------------------ decisions and runs

    def decide(self, admin: str, round_number: int, approve: bool, reason: str) -> str:
        """Approve or reject a pending candidate; audited (``approval``) with ``admin``.
        ValueError/StoreError: no pending candidate, stale, or decided already."""
        self.authorize(admin, Action.DECIDE)
        return self._orch.decide(round_number, approve, _reason(reason), admin)

    def create_run(
        self,
        admin: str,
        *,
        name: str,
        mode: str = "",
        rounds: int = 0,
        hyperparameters_json: str = "",
        base_model_version: int = 0,
        start: bool = False,
        schedule: str = "",
        async_json: str = "",
    ) -> Any:
        """A new run (RunError when refused); audited ``run_created`` with ``admin``.
        ``schedule`` "async" with ``async_json``: a buffered asynchronous run (issue 21)."""
        self.authorize(admin, Action.CREATE_RUN)
        extra = {k: v for k, v in (("schedule", schedule), ("async_json", async_json)) if v}
        return self._orch.create_run(
            name=name,
            mode=mode,
            rounds=rounds,
            hyperparameters_json=hyperparameters_json,
            base_model_version=base_model_version,
            start=start,
            by=admin,
            **extra,
        )

    def control_run(self, admin: str, run_id: str, action: str, reason: str) -> Any:
        """Start, pause, resume or stop a run; audited with ``admin``."""
        self.authorize(admin, Action.CONTROL_RUN)
        return self._orch.control_run(run_id, action, _reason(reason), admin)

    async def evaluate(
        self, admin: str, *, version: int, run_id: str, deadline_seconds: float
    ) -> dict:
        """A federated evaluation; waits until it closes; audited with ``admin``."""
        self.authorize(admin, Action.EVALUATE)
        return await self._orch.evaluate(
            version=version, run_id=run_id, deadline_seconds=deadline_seconds, by=admin
        )

    # --------------------------------------------------------------------------- revoke

    def revoke(self, admin: str, name: str, reason: str) -> str:
        """Revoke client ``name`` as ``sealagg revoke`` does: its serials go into the
        revocation list (the running appliance refuses it from its next call on), and the
        revocation is audited (``client_revoked``) with ``admin`` and ``reason``.

        Administrators are refused here: removing one is the federation owner's decision
        (``sealagg admins remove`` on the appliance host), not a remote call's.
        """
        self.authorize(admin, Action.REVOKE_CLIENT)
        if not isinstance(name, str) or not name:
            raise ValueError("give the name of the client to revoke")
        if self._is_admin(name):
            raise ValueError(
                f"{name!r} is an administrator, not a client: remove administrators with "
                "`sealagg admins remove` on the appliance host"
            )
        federation = self.federation
        try:
            record = federation.client_record(name)
        except ProvisioningError as error:  # an invalid name
            raise ValueError(str(error)) from None
        if record is None:
            raise LookupError(f"no client named {name!r} in federation {federation.name!r}")
        already = record.revoked and all(
            s in federation.revocations() for s in record.all_serials()
        )
        revoke_client(federation, name)
        record = federation.client_record(name) or record
        by = Actor(os_user(), admin, admin_proven=True)  # proven by its mTLS certificate
        recorded = record_revocation(
            self._store, federation, record, by=by, reason=_reason(reason) or REVOKE_REASON
        )
        if already and not recorded:
            return f"{name} was already revoked"
        return f"revoked {name}: the appliance refuses it from its next call on"

    def _is_admin(self, name: str) -> bool:
        if name == LEGACY_ADMIN:
            return True
        if not callable(self._admins):
            return name in self._admins
        if self._admins().is_admin(name):
            return True
        try:  # a removed administrator's name stays an administrator's (never a client's)
            every = AdminDirectory.load(Path(self.federation.folder), current_only=False)
        except (OSError, ProvisioningError):
            return True  # unreadable: fail closed, revoke nothing that might be an admin
        return every.entry(name) is not None

    # ------------------------------------------------------------------ audit and models

    def verify_audit(self, admin: str) -> dict[str, Any]:
        """Verify the audit log with the federation's audit public key(s), as ``sealagg audit
        verify`` does: {ok, entries, head_hash, first_broken: {seq, reason} | None}."""
        from sealagg.appliance.audit_rotation import audit_key_history

        self.authorize(admin, Action.AUDIT_VERIFY)
        keys = audit_key_history(Path(self.federation.folder))  # public keys from the folder
        return check_audit(self._store, keys).to_json()

    def export_model(self, admin: str, version: int) -> tuple[int, str, bytes]:
        """(version, sha256, safetensors bytes) of ``version`` (0: the current one), the bytes
        ``sealagg model export`` writes; audited ``model_exported`` with ``admin``."""
        self.authorize(admin, Action.LIST)
        model, data = stored_model(self._store, version)
        self._store.audit.append(
            "model_exported",
            {"version": model.version, "sha256": model.sha256, "bytes": len(data), "by": admin},
        )
        return model.version, model.sha256, data


def _reason(reason: str) -> str:
    if not isinstance(reason, str):
        raise ValueError("the reason must be text")
    return reason.strip()[:MAX_REASON_CHARS]
