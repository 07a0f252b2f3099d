"""Bring a state backup back on a new or empty folder (``sealagg state restore``).

What an operator does on a new machine: install sealagg, copy the backup over, keep the
private keys in a key store (or in the backup, if it was made with them), and restore into an
empty folder. A folder made by ``sealagg init`` is refused: it is a *different* federation
(its own CA, server certificate and audit key), so clients' kits would not trust it and the
audit chain could not continue under its key. The restore verifies the backup first (from a
private copy, so what is installed is what was checked), holds the folder's instance lock
while it writes, checks that the operator's audit key is the federation's, and appends
``state_restored`` (who, the backup, its manifest's SHA-256 and audit head) to the chain,
which then verifies from the first key across the restore. Any failure leaves the folder
as it was (removed if the restore created it).

A restore is a rollback to the backup's moment: clients issued or revoked after it are not in
it; the command says so.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sealagg.appliance import pki
from sealagg.appliance.admins import Actor
from sealagg.appliance.audit import ExpectedHead
from sealagg.appliance.backup_format import (
    FOLDER_DIR,
    SECRETS_DIR,
    BackupError,
    RestoreReport,
    VerifyReport,
    copy_file,
    current_user,
    public_key_of,
    remove_path,
)
from sealagg.appliance.backup_verify import opened_backup, verify_root
from sealagg.appliance.errors import ProvisioningError
from sealagg.appliance.federation import FederationFolder, FederationPaths
from sealagg.appliance.instance_lock import LOCK_NAME, InstanceLock
from sealagg.appliance.models import MODELS_DIRNAME
from sealagg.appliance.store import STATE_FILENAME, Store, default_state_path

__all__ = ["restore_backup"]


def restore_backup(
    backup: Path,
    folder: Path,
    *,
    keys_from: Path | None = None,
    audit_public_key: Ed25519PublicKey | bytes | None = None,
    expected_head: ExpectedHead | None = None,
    by: Actor | str | Callable[[Path], Actor] | None = None,
) -> RestoreReport:
    """Recreate the federation of ``backup`` in ``folder`` (new or empty), after verifying it.

    The private keys come from ``keys_from`` if given (the operator's key store: a folder with
    the files the manifest lists, ``ca.key``, ``server.key``, ``audit_signing_key.pem``), else
    from the backup if it holds them; the audit key must be the federation's current one, so
    the chain continues under it.
    The folder's instance lock is taken before anything in it is checked or written: an
    appliance (or another restore) holding it is refused with its pid and nothing changes.
    The folder is removed again (or emptied, if it existed) when anything fails.
    ``by`` is who restores: an :class:`~appliance.admins.Actor`, a text, or a function of the
    restored folder returning the actor (``--as NAME`` is checked against the restored
    federation's administrators, which exist only once it is installed; a refusal undoes the
    restore). Appends ``state_restored`` naming it.
    """
    folder = Path(folder)
    key = None if audit_public_key is None else public_key_of(audit_public_key)
    with opened_backup(backup, private_copy=True) as root:
        checked = verify_root(root, key, key is not None, expected_head)
        created = _create(folder)
        had_lock = (folder / LOCK_NAME).exists()
        lock = InstanceLock(folder)
        try:
            lock.acquire()  # an appliance or another restore on it: refused, nothing touched
        except BaseException:
            if created:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        try:
            _claim(folder)  # a folder with anything in it is refused and left exactly as it was
        except BaseException:
            lock.release()
            if not had_lock:
                (folder / LOCK_NAME).unlink(missing_ok=True)
            raise
        try:
            source = _install(root, folder, checked, keys_from)
            who = by(folder) if callable(by) else by
            count = _record_restore(folder, checked, Path(backup), source, audit_actor(who))
        except BaseException:
            lock.release()
            _unclaim(folder, created, had_lock)
            raise
        lock.release()
    return RestoreReport(folder, checked, count, source)


def audit_actor(by: Actor | str | None) -> str | dict[str, Any]:
    """What the audit entry's ``by`` holds: the actor as every admin action records it (OS user,
    named administrator, whether proven), or the text a library caller gave."""
    if isinstance(by, Actor):
        return by.to_json()
    return by if by is not None else current_user()


def _create(folder: Path) -> bool:
    """Make the folder if it does not exist (returns whether it was created here), so that its
    instance lock can be taken before anything in it is looked at."""
    if folder.exists() or folder.is_symlink():
        if not folder.is_dir():
            raise BackupError(f"{folder} exists and is not a folder")
        return False
    try:
        folder.mkdir(mode=0o700, parents=True)
    except OSError as exc:
        raise BackupError(f"cannot create {folder}: {exc.strerror}") from None
    return True


def _claim(folder: Path) -> None:
    """Accept a new or empty folder (checked under its instance lock)."""
    paths = FederationPaths(folder)
    if default_state_path(folder).exists():
        raise BackupError(
            f"{folder} already holds a state database; a restore never overwrites state "
            "(restore into a new or empty folder)"
        )
    if paths.config.exists():
        raise BackupError(
            f"{folder} holds a federation (made by `sealagg init`: its own new CA and audit "
            "key); a restore brings back the backed-up federation's certificates and keys, "
            "so restore into a new or empty folder"
        )
    if any(p for p in folder.iterdir() if not p.name.startswith(LOCK_NAME)):
        raise BackupError(f"{folder} is not empty; restore into a new or empty folder")


def _unclaim(folder: Path, created: bool, had_lock: bool) -> None:
    """Undo a failed restore: nothing half-restored may be mistaken for a federation.

    A folder created here goes entirely; otherwise what the restore added goes (the lock file
    too, unless it was there before: ``_claim`` admits only lock files)."""
    if created:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for entry in folder.iterdir():
        if not (had_lock and entry.name.startswith(LOCK_NAME)):
            remove_path(entry)


def _install(root: Path, folder: Path, checked: VerifyReport, keys_from: Path | None) -> str:
    """Copy the folder files, private keys, models and database; returns where keys came from."""
    names = checked.private_keys
    if keys_from is not None:  # the operator's key store wins over keys inside the backup
        key_root, source = Path(keys_from), "operator"
        missing = [n for n in names if not (key_root / n).is_file()]
        if missing:
            raise BackupError(f"{keys_from} lacks the private key files {', '.join(missing)}")
        if "audit_signing_key.pem" in names:
            _check_audit_key(key_root / "audit_signing_key.pem", checked.audit_public_key)
    elif checked.private_keys_included:
        key_root, source = root / SECRETS_DIR, "backup"
    else:
        raise BackupError(
            "this backup holds no private keys (made without --include-private-keys): pass "
            f"--keys-from DIR holding {', '.join(names)} from your key store"
        )
    for path in sorted((root / FOLDER_DIR).rglob("*")):
        if path.is_file():
            relpath = path.relative_to(root / FOLDER_DIR)
            copy_file(path, folder / relpath, mode=0o644)
    for name in names:
        copy_file(key_root / name, folder / name, mode=0o600)
    for path in (
        sorted((root / MODELS_DIRNAME).glob("*")) if (root / MODELS_DIRNAME).is_dir() else ()
    ):
        copy_file(path, folder / MODELS_DIRNAME / path.name, mode=0o640)
    (folder / "kits").mkdir(mode=0o700, exist_ok=True)
    copy_file(root / STATE_FILENAME, default_state_path(folder), mode=0o600)
    pki.fsync_directory(folder)
    return source


def _check_audit_key(path: Path, manifest_key: str) -> None:
    """The operator's audit signing key must be the one that signed the backed-up chain."""
    try:
        key = pki.load_private_key(pki.read_file(path, limit=64 * 1024), None, what=str(path))
    except ProvisioningError as exc:
        raise BackupError(str(exc)) from None
    if (
        not isinstance(key, Ed25519PrivateKey)
        or key.public_key().public_bytes_raw().hex() != manifest_key
    ):
        raise BackupError(
            f"{path} is not this federation's audit signing key (its public key differs from "
            "the one that signed the backup): the audit chain could not continue under it"
        )


def _record_restore(
    folder: Path, checked: VerifyReport, backup: Path, source: str, who: str | dict[str, Any]
) -> int:
    try:  # certificates and keys must fit together before anything is written to the state
        federation = FederationFolder.load(folder)
    except ProvisioningError as exc:
        raise BackupError(f"the restored folder does not load: {exc}") from None
    with Store.open(default_state_path(folder), audit_key=federation.audit_signing_key) as store:
        store.audit.append(
            "state_restored",
            {
                "by": who,
                "backup": str(backup.absolute()),
                "manifest_sha256": checked.manifest_sha256,
                "backup_created": checked.created,
                "backup_created_by": checked.created_by,
                "backup_audit_head": {
                    "count": checked.audit_head.count,
                    "hash": checked.audit_head.hash,
                },
                "private_keys_from": source,
            },
        )
        report = store.audit.verify(
            list(checked.audit_key_history),
            expected_head=(checked.audit_head.count, checked.audit_head.hash),
        )
    return report.count
