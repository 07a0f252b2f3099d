"""Named administrators, their roles, and who did an administrative action.

The directory is ``<federation folder>/admins.json``: each named administrator with its roles
(operator, approver, auditor) and the serial of the one certificate those roles belong to.
The file is signed with the federation's provisioning key (the Ed25519 key that signs every
kit, ``audit_public_key.pem`` verifies it) and written under the folder's lock.

Why this is enough, and what it does not claim: whoever can write the federation folder can
also read that key, and already controls the appliance (its CA, its server key, its audit
key). The signature does not protect against the folder's owner; it makes a hand edit, a
partial write or a file dropped by someone who can write ``admins.json`` but not read the
private key fail closed (the appliance then knows only the legacy ``admin``). The serial of
the certificate issued with the roles is recorded for the record; roles follow the name,
because a renewed certificate (same name, new serial) keeps them, and a name cannot be issued
again while it is in the directory (``add-client`` refuses it, ``admins remove`` revokes it).

Enforcement: the appliance identifies a caller by the name in its mutual-TLS certificate
(the per-call check also refuses revoked and superseded certificates), then asks
:meth:`AdminDirectory.authorize`. An administrator's name is never a participant's: issuing
either refuses a name the other holds, and participant sync skips administrators.

The legacy identity ``admin`` (the kit ``sealagg init`` writes) keeps every role and is the
only one that may manage administrators: granting roles is the folder owner's decision, so an
operator cannot make itself an approver and defeat the two-person rule.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from sealagg.appliance import pki
from sealagg.appliance.audit import canonical_json
from sealagg.appliance.errors import ApplianceError, ProvisioningError
from sealagg.appliance.federation import (
    ClientRecord,
    FederationFolder,
    FederationPaths,
    add_client,
    revoke_client,
)

__all__ = [
    "ADMINS_FILENAME",
    "LEGACY_ADMIN",
    "Action",
    "Actor",
    "AdminDirectory",
    "AdminEntry",
    "AdminPermissionError",
    "DirectoryWatch",
    "Role",
    "admin_directory_path",
    "issue_admin",
    "os_user",
    "remove_admin",
    "save_directory",
]

_log = logging.getLogger("sealagg.admins")

ADMINS_FILENAME = "admins.json"
#: The administrator ``sealagg init`` issues; every role, for backward compatibility.
LEGACY_ADMIN = "admin"
_FORMAT = "sealagg-admins-1"
#: Domain separation: a signature over the directory can never pass for a kit's or an entry's.
_SIGNATURE_CONTEXT = b"sealagg admin directory v1\x00"
_MAX_FILE_BYTES = 1024 * 1024


class Role(StrEnum):
    OPERATOR = "operator"
    APPROVER = "approver"
    AUDITOR = "auditor"


class Action(StrEnum):
    """What an administrator may ask for; :data:`REQUIRED_ROLES` says who may."""

    STATUS = "status"
    LIST = "list"
    DECIDE = "decide"
    CREATE_RUN = "create_run"
    CONTROL_RUN = "control_run"
    EVALUATE = "evaluate"
    AUDIT_VERIFY = "audit_verify"
    AUDIT_EXPORT = "audit_export"
    ADD_CLIENT = "add_client"
    REVOKE_CLIENT = "revoke_client"
    READMIT_CLIENT = "readmit_client"
    MANAGE_ADMINS = "manage_admins"
    STATE_BACKUP = "state_backup"
    STATE_RESTORE = "state_restore"


_ANY = frozenset(Role)
#: Any one of the listed roles allows the action; an empty set: the legacy admin only.
REQUIRED_ROLES: Mapping[Action, frozenset[Role]] = {
    Action.STATUS: _ANY,
    Action.LIST: _ANY,
    Action.DECIDE: frozenset({Role.APPROVER}),
    Action.CREATE_RUN: frozenset({Role.OPERATOR}),
    Action.CONTROL_RUN: frozenset({Role.OPERATOR}),
    Action.EVALUATE: frozenset({Role.OPERATOR}),
    Action.AUDIT_VERIFY: frozenset({Role.AUDITOR}),
    Action.AUDIT_EXPORT: frozenset({Role.AUDITOR}),
    Action.ADD_CLIENT: frozenset({Role.OPERATOR}),
    Action.REVOKE_CLIENT: frozenset({Role.OPERATOR}),
    Action.READMIT_CLIENT: frozenset({Role.OPERATOR}),
    Action.MANAGE_ADMINS: frozenset(),
    Action.STATE_BACKUP: frozenset({Role.OPERATOR}),
    Action.STATE_RESTORE: frozenset({Role.OPERATOR}),
}


class AdminPermissionError(ApplianceError, PermissionError):
    """An identity asked for an action its roles do not allow; the message names both."""


def admin_directory_path(folder: Path) -> Path:
    return Path(folder) / ADMINS_FILENAME


def parse_roles(values: Iterable[str]) -> frozenset[Role]:
    """Role names to roles; refuses an unknown name and an empty set (an administrator with
    no role could still read status, which should be a deliberate grant of some role)."""
    roles: set[Role] = set()
    for value in values:
        try:
            roles.add(Role(value))
        except ValueError:
            known = ", ".join(r.value for r in Role)
            raise ProvisioningError(f"unknown role {value!r} (roles: {known})") from None
    if not roles:
        raise ProvisioningError("give at least one --role (operator, approver, auditor)")
    return frozenset(roles)


@dataclasses.dataclass(frozen=True)
class AdminEntry:
    """One named administrator: its roles belong to the certificate with ``serial``."""

    name: str
    roles: frozenset[Role]
    serial: int
    added_at: datetime
    added_by: str

    def to_json(self) -> dict[str, Any]:
        return {
            "roles": sorted(r.value for r in self.roles),
            "serial": format(self.serial, "x"),
            "added_at": pki.iso_time(self.added_at),
            "added_by": self.added_by,
        }


class AdminDirectory:
    """The named administrators of one federation, as the appliance enforces them."""

    def __init__(self, entries: Mapping[str, AdminEntry] | None = None, version: int = 0) -> None:
        self._entries = dict(entries or {})
        self.version = version

    # ---- reading ------------------------------------------------------------------------

    @classmethod
    def load(cls, folder: Path, *, current_only: bool = True) -> AdminDirectory:
        """The directory of federation ``folder`` (empty when no administrator was named).

        Raises :class:`ProvisioningError` for a file that is corrupt, for another federation,
        or not signed by the folder's provisioning key: an unreadable directory must not be
        mistaken for a valid one. An entry whose name has no current certificate (record
        missing or revoked) is left out (``current_only``): nobody can present it.
        """
        folder = Path(folder)
        path = admin_directory_path(folder)
        if not path.exists():
            return cls()
        raw = pki.read_file(path, limit=_MAX_FILE_BYTES)
        verify_key = _provisioning_key(folder)
        try:
            document = json.loads(raw)
            if not isinstance(document, dict):
                raise ValueError("not a JSON object")
            signature = bytes.fromhex(document.pop("signature"))
            verify_key.verify(signature, _SIGNATURE_CONTEXT + canonical_json(document))
        except InvalidSignature:
            raise ProvisioningError(
                f"{path} is not signed by this federation's provisioning key: edited by hand "
                "or copied from elsewhere; refusing every named administrator"
            ) from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProvisioningError(f"{path} is corrupt: {exc}") from None
        entries = _parse(document, path, _federation_name(folder))
        current = {}
        for name, entry in entries.items():
            if current_only and _current_serial(folder, name) is None:
                _log.warning("administrator %s has no current certificate; ignored", name)
                continue
            current[name] = entry
        return cls(current, int(document["version"]))

    def names(self) -> frozenset[str]:
        """Every administrator name, the legacy ``admin`` included (never a participant)."""
        return frozenset(self._entries) | {LEGACY_ADMIN}

    def entries(self) -> list[AdminEntry]:
        return [self._entries[n] for n in sorted(self._entries)]

    def entry(self, name: str) -> AdminEntry | None:
        return self._entries.get(name)

    def is_admin(self, name: str) -> bool:
        return name == LEGACY_ADMIN or name in self._entries

    def roles_of(self, name: str) -> frozenset[Role]:
        if name == LEGACY_ADMIN:
            return frozenset(Role)
        entry = self._entries.get(name)
        return entry.roles if entry is not None else frozenset()

    def authorize(self, name: str, action: Action | str) -> None:
        """Return if ``name`` may do ``action``; raise :class:`AdminPermissionError` saying
        which role it lacks. Unknown actions are refused (deny by default)."""
        try:
            wanted = Action(action)
        except ValueError:
            raise AdminPermissionError(f"unknown administrative action {action!r}") from None
        if name == LEGACY_ADMIN:
            return
        if name not in self._entries:
            raise AdminPermissionError(f"{name} is not an administrator")
        required = REQUIRED_ROLES[wanted]
        if not required:
            raise AdminPermissionError(
                f"{name} may not {wanted.value.replace('_', ' ')}: only the federation's "
                f"owner ({LEGACY_ADMIN!r} kit or the folder's owner) may"
            )
        if not required & self._entries[name].roles:
            need = " or ".join(sorted(r.value for r in required))
            have = ", ".join(sorted(r.value for r in self._entries[name].roles))
            raise AdminPermissionError(
                f"{name} may not {wanted.value.replace('_', ' ')}: that needs the role {need} "
                f"({name} has: {have})"
            )

    # ---- writing ------------------------------------------------------------------------

    def with_entry(self, entry: AdminEntry) -> AdminDirectory:
        return AdminDirectory({**self._entries, entry.name: entry}, self.version)

    def without(self, name: str) -> AdminDirectory:
        return AdminDirectory({n: e for n, e in self._entries.items() if n != name}, self.version)


def save_directory(
    folder: Path, directory: AdminDirectory, *, federation: str, signer: Ed25519PrivateKey
) -> None:
    """Sign and write ``directory`` atomically with the next version number. Callers hold the
    federation folder's lock (``FederationFolder._exclusive``), so versions never fork."""
    previous = _stored_version(folder)
    document: dict[str, Any] = {
        "format": _FORMAT,
        "federation": federation,
        "version": max(previous, directory.version) + 1,
        "admins": {e.name: e.to_json() for e in directory.entries()},
    }
    signature = signer.sign(_SIGNATURE_CONTEXT + canonical_json(document)).hex()
    body = json.dumps({**document, "signature": signature}, indent=2, sort_keys=True) + "\n"
    pki.write_file_atomic(admin_directory_path(folder), body.encode(), mode=pki.PUBLIC_FILE_MODE)


class DirectoryWatch:
    """The directory for a running appliance: re-read when ``admins.json`` changed.

    Fails closed: a directory that cannot be read (corrupt, wrong signature) yields one that
    knows only the legacy ``admin`` until the file is fixed; the error is logged once per
    change of the file.
    """

    def __init__(self, folder: Path) -> None:
        self._folder = Path(folder)
        self._lock = threading.Lock()
        self._stamp: object = ()
        self._directory = AdminDirectory()
        self._ever: set[str] = {LEGACY_ADMIN}
        self.error: str | None = None

    def current(self) -> AdminDirectory:
        with self._lock:
            stamp = self._file_stamp()
            if stamp != self._stamp:
                try:
                    self._directory = AdminDirectory.load(self._folder)
                    every = AdminDirectory.load(self._folder, current_only=False)
                    self._ever |= every.names()
                    self.error = None
                except (ProvisioningError, OSError) as error:
                    self._directory = AdminDirectory()
                    self.error = str(error)
                    _log.error(
                        "admin directory refused (%s): only %r is an admin", error, LEGACY_ADMIN
                    )
                self._stamp = stamp
            return self._directory

    def never_participants(self) -> frozenset[str]:
        """Names the protocol must never count as clients: every administrator this process
        has seen, even after the directory became unreadable or the entry was removed (a
        broken directory must not turn an administrator's certificate into a client's)."""
        return frozenset(self._ever | self.current().names())

    def _file_stamp(self) -> object:  # the directory, and clients/ (a revocation drops roles)
        stamps = []
        for path in (admin_directory_path(self._folder), self._folder / "clients"):
            try:
                st = os.stat(path)
            except OSError:
                stamps.append(None)
                continue
            stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(stamps)


# ---- issuing and removing ------------------------------------------------------------------


def issue_admin(
    federation: FederationFolder,
    name: str,
    roles: Iterable[Role | str],
    *,
    out: Path,
    added_by: str,
    archive: bool = False,
    now: datetime | None = None,
) -> tuple[Path, AdminEntry]:
    """Issue an administrator kit for ``name`` (a client certificate with that name, written to
    ``out``) and record its roles; returns the kit's path and the new entry.

    Refused for the legacy name, a name already in the directory, and any name that ever had
    a client certificate: an administrator is never a participant, so its certificate cannot
    be counted as a client in a round, and a participant's history never becomes an
    administrator's. Needs the CA key (``federation`` loaded with its passphrase).
    """
    name = pki.validate_client_name(name)
    granted = parse_roles(r.value if isinstance(r, Role) else r for r in roles)
    if name == LEGACY_ADMIN:
        raise ProvisioningError(
            f"{LEGACY_ADMIN!r} is the federation owner's administrator (every role); name "
            "administrators otherwise"
        )
    folder = federation.folder
    if AdminDirectory.load(folder, current_only=False).entry(name) is not None:
        raise ProvisioningError(f"{name!r} is already an administrator (see `sealagg admins list`)")
    if federation.client_record(name) is not None:
        raise ProvisioningError(
            f"{name!r} already names a client certificate: an administrator must never also be "
            "a participant; choose another name"
        )
    moment = pki.issuance_time(now)
    path = add_client(federation, name, out=out, archive=archive, now=moment)
    record = federation.client_record(name)
    if record is None:  # add_client wrote it; only a concurrent removal could get here
        raise ProvisioningError(f"the certificate of {name!r} vanished while it was issued")
    entry = AdminEntry(name, granted, record.serial, moment, added_by)
    with federation._exclusive():  # re-read under the lock: concurrent grants never fork
        directory = AdminDirectory.load(folder, current_only=False)
        save_directory(
            folder,
            directory.with_entry(entry),
            federation=federation.name,
            signer=federation.audit_signing_key,
        )
    return path, entry


def remove_admin(
    federation: FederationFolder, name: str, *, now: datetime | None = None
) -> AdminEntry:
    """Revoke ``name``'s certificate (the appliance refuses it from its next call) and drop it
    from the directory. The revocation comes first: should the second step fail, the name is
    already powerless. Works on an administrator whose certificate is already revoked."""
    if name == LEGACY_ADMIN:
        raise ProvisioningError(
            f"{LEGACY_ADMIN!r} is not a named administrator: revoke it with `sealagg revoke "
            f"{LEGACY_ADMIN}` and issue a new owner kit"
        )
    entry = AdminDirectory.load(federation.folder, current_only=False).entry(name)
    if entry is None:
        raise ProvisioningError(f"{name!r} is not a named administrator")
    if federation.client_record(name) is not None:
        revoke_client(federation, name, now=now)
    with federation._exclusive():
        directory = AdminDirectory.load(federation.folder, current_only=False)
        save_directory(
            federation.folder,
            directory.without(name),
            federation=federation.name,
            signer=federation.audit_signing_key,
        )
    return entry


# ---- who did it -----------------------------------------------------------------------------


def os_user() -> str:
    """The operating-system account running this process (what the host vouches for)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.geteuid()}"


@dataclasses.dataclass(frozen=True)
class Actor:
    """Who did an administrative action from the command line.

    ``os_user`` is the account that ran the command: the host vouches for it, and it can write
    the folder, so it holds every power anyway. ``admin`` is the named administrator the
    command acts as (``--as NAME``); ``admin_proven`` says whether the command held that
    administrator's kit (its private key matched the current certificate of NAME) or only
    claimed the name. A claim is attribution for the record, not authentication.
    """

    os_user: str
    admin: str | None = None
    admin_proven: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"os_user": self.os_user, "admin": self.admin, "admin_proven": self.admin_proven}

    def __str__(self) -> str:
        if self.admin is None:
            return f"os user {self.os_user}"
        how = "with its kit" if self.admin_proven else "claimed"
        return f"{self.admin} ({how}; os user {self.os_user})"


def acting(
    folder: Path,
    action: Action,
    *,
    as_name: str | None = None,
    proven: bool = False,
    directory: AdminDirectory | None = None,
) -> Actor:
    """The actor of a command, after checking that ``as_name`` (if given) may do ``action``."""
    if as_name is None:
        return Actor(os_user())
    directory = directory if directory is not None else AdminDirectory.load(folder)
    directory.authorize(as_name, action)
    return Actor(os_user(), as_name, proven)


def prove_kit_holder(folder: Path, name: str, kit_path: Path) -> None:
    """Check that the kit at ``kit_path`` is ``name``'s current kit and holds the private key
    of its certificate; raise :class:`AdminPermissionError` otherwise."""
    from sealagg.appliance.kit import load_kit, raw_public_key

    verify_key = _provisioning_key(folder)
    kit = load_kit(kit_path, trusted_signer=raw_public_key(verify_key))
    if kit.name != name:
        raise AdminPermissionError(f"the kit at {kit_path} belongs to {kit.name!r}, not {name!r}")
    cert = kit.certificate
    if _current_serial(folder, name) != cert.serial_number:
        raise AdminPermissionError(f"the kit at {kit_path} is not {name!r}'s current certificate")
    try:
        key = pki.load_tls_key(kit.client_key_pem, None, what="the kit's TLS key")
    except ProvisioningError:
        key = None
    if key is None or not pki.same_public_key(key, cert):
        raise AdminPermissionError(
            f"the kit at {kit_path} does not hold the private key of {name!r}'s certificate"
        )


# ---- internals ------------------------------------------------------------------------------


def _provisioning_key(folder: Path) -> Ed25519PublicKey:
    path = Path(folder) / "audit_public_key.pem"
    try:
        key = load_pem_public_key(pki.read_file(path, limit=64 * 1024))
    except (OSError, ValueError) as exc:
        raise ProvisioningError(f"cannot read the provisioning key {path}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ProvisioningError(f"{path} is not an Ed25519 public key")
    return key


def _federation_name(folder: Path) -> str | None:
    import tomllib

    try:
        with open(Path(folder) / "sealagg.toml", "rb") as handle:
            name = tomllib.load(handle)["federation"]["name"]
    except (OSError, KeyError, TypeError, ValueError):
        return None
    return name if isinstance(name, str) else None


def _current_serial(folder: Path, name: str) -> int | None:
    """The serial of ``name``'s current, unrevoked certificate (None: none)."""
    path = FederationPaths(Path(folder)).client_record(name)
    try:
        record = ClientRecord.from_json(pki.read_file(path, limit=_MAX_FILE_BYTES), source=path)
    except (OSError, ProvisioningError):
        return None
    if record.name != name or record.revoked:
        return None
    return record.serial


def _stored_version(folder: Path) -> int:
    try:
        document = json.loads(pki.read_file(admin_directory_path(folder), limit=_MAX_FILE_BYTES))
        return int(document["version"])
    except (OSError, ValueError, KeyError, TypeError, ProvisioningError):
        return 0


def _parse(document: dict[str, Any], path: Path, federation: str | None) -> dict[str, AdminEntry]:
    try:
        if document["format"] != _FORMAT:
            raise ValueError(f"unknown format {document['format']!r}")
        if federation is not None and document["federation"] != federation:
            raise ValueError(f"it belongs to federation {document['federation']!r}")
        if type(document["version"]) is not int or document["version"] < 1:
            raise ValueError("version is not a positive integer")
        entries = {}
        for name, body in document["admins"].items():
            pki.validate_client_name(name)
            if name == LEGACY_ADMIN:
                raise ValueError(f"{LEGACY_ADMIN!r} cannot be a named administrator")
            entries[name] = AdminEntry(
                name=name,
                roles=parse_roles(body["roles"]),
                serial=int(body["serial"], 16),
                added_at=datetime.fromisoformat(body["added_at"]).astimezone(UTC),
                added_by=str(body["added_by"]),
            )
        return entries
    except (ValueError, KeyError, TypeError, AttributeError, ProvisioningError) as exc:
        raise ProvisioningError(f"{path} is corrupt: {exc}") from None
