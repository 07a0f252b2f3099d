"""Online backup, verification and restore of one federation's state.

A backup is a folder (or an uncompressed tar of the same layout)::

    MANIFEST.json          signed: every file's SHA-256 and size, schema version, federation,
                           audit head, creation time and who made it
    state.sqlite3          the state database, copied with SQLite's online backup API
    models/<sha>.safetensors   every model version's file the database references
    federation/...         the folder's public files: sealagg.toml, ca.pem, server.pem,
                           audit_public_key.pem, revoked.json, clients/, roster, policies
    private-keys/...       ONLY with ``include_private_keys``: ca.key, server.key,
                           audit_signing_key.pem (and any other file holding a private key)

Why it is built this way:

* **Online and consistent.** The database is copied by ``sqlite3.Connection.backup`` in one
  step from a read-only connection: one read transaction, so the copy is a state the
  appliance committed, never a torn file (a plain file copy of a live WAL database is not).
  The running appliance keeps writing meanwhile (WAL readers do not block writers). Model
  files are content-addressed and written before their rows commit, so every row in the copy
  has its file.
* **Secrets stay out by default.** Private keys (the three above, any ``*.key`` and any file
  holding a PEM private key) are listed by name in the manifest but copied only when asked
  (``--include-private-keys``); the manifest says which it is. Kits (``kits/``, the admin's
  ``admin-kit/``, any folder with a ``client.toml``) are never copied, only named: they hold
  their owners' keys, which are handed over, not kept. A restore needs the private keys back,
  from the backup or from the operator's key store.
* **Tamper-evident.** The manifest is signed by the federation's audit key under its own
  domain-separation prefix; verification checks that signature, every file's hash, SQLite's
  integrity check, the whole audit chain and that its head is the one the manifest names, and
  every model file against ``model_versions``. A verifier should pass the audit public key
  from its own records (``audit_public_key``): the copy inside the backup proves only that
  the backup is self-consistent.
* **Audited.** Making a backup appends ``state_backup`` to the live chain and a restore
  appends ``state_restored`` to the restored one (who, when, the manifest's SHA-256).

A restore is a rollback to the moment of the backup: clients issued or revoked after it are
not in it. Revoke them again after restoring (the command says so).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import sqlite3
import tarfile
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sealagg.appliance import pki
from sealagg.appliance.admins import Actor
from sealagg.appliance.audit import format_time
from sealagg.appliance.backup_format import (
    BACKUP_FORMAT,
    FOLDER_DIR,
    MANIFEST_CONTEXT,
    MANIFEST_NAME,
    SECRETS_DIR,
    BackupError,
    BackupReport,
    RestoreReport,
    VerifyReport,
    copy_file,
    current_user,
    remove_path,
    sha256_file,
    sign_manifest,
)
from sealagg.appliance.backup_restore import audit_actor, restore_backup
from sealagg.appliance.backup_verify import opened_backup, verify_backup, verify_root
from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.models import MODELS_DIRNAME, model_relpath
from sealagg.appliance.store import STATE_FILENAME, Store, default_state_path

__all__ = [
    "BACKUP_FORMAT",
    "MANIFEST_CONTEXT",
    "MANIFEST_NAME",
    "BackupError",
    "BackupReport",
    "RestoreReport",
    "VerifyReport",
    "create_backup",
    "restore_backup",
    "sign_manifest",
    "verify_backup",
]

#: Files a federation folder keeps its private keys in (anything else holding a PEM private
#: key, and any ``*.key``, is treated the same way; see :func:`_is_private`).
KNOWN_PRIVATE = frozenset({"ca.key", "server.key", "audit_signing_key.pem"})
#: Top-level entries of a federation folder that are not configuration: the state itself,
#: model files (copied by their rows), and client kits (clients' secrets; never copied).
_NOT_CONFIGURATION = frozenset({STATE_FILENAME, MODELS_DIRNAME, "kits"})
#: What marks a kit folder (appliance/kit.py), e.g. ``admin-kit/`` inside the folder.
_KIT_MARKER = "client.toml"
_KIT_SIGNATURE = "MANIFEST.sig"


def create_backup(
    folder: Path,
    destination: Path,
    *,
    include_private_keys: bool = False,
    by: Actor | str | None = None,
    clock: Callable[[], datetime] | None = None,
) -> BackupReport:
    """Back up the federation in ``folder`` to ``destination`` while the appliance may run.

    ``destination`` must not exist; a name ending in ``.tar`` makes a tar file, anything else
    a folder. The backup is built beside it and appears whole or not at all; it is then
    verified like :func:`verify_backup` would, and recorded as ``state_backup`` in the live
    audit chain (if that fails, the backup is removed again: no unrecorded copies).
    ``by`` is who asked (an :class:`~appliance.admins.Actor` from ``--as``/``--as-kit``, as
    every admin action records it); the manifest names it as text.
    """
    federation = FederationFolder.load(folder)
    destination = Path(destination)
    as_tar = destination.name.endswith(".tar")
    if destination.exists() or destination.is_symlink():
        raise BackupError(f"{destination} already exists; a backup never overwrites anything")
    if not destination.parent.is_dir():
        raise BackupError(f"{destination.parent} does not exist")
    database = default_state_path(federation.folder)
    if not database.is_file():
        raise BackupError(f"{federation.folder} has no state database to back up yet")
    when = format_time((clock or (lambda: datetime.now(UTC)))())
    who = _manifest_actor(by)
    # Opened as the appliance opens it (a database of an older schema is migrated here, as
    # by any writing command), kept open to record the backup at the end.
    with Store.open(database, audit_key=federation.audit_signing_key) as store:
        staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
        try:
            manifest = _stage(federation, database, staging, include_private_keys, when, who)
            data = sign_manifest(manifest, federation.audit_signing_key)
            (staging / MANIFEST_NAME).write_bytes(data)
            with opened_backup(staging) as root:  # check the backup before anyone relies on it
                key = federation.audit_signing_key.public_key()
                checked = verify_root(root, key, True, None)
            _publish(staging, destination, as_tar)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _record_backup(store, destination, checked, audit_actor(by), include_private_keys)
    return BackupReport(
        path=destination,
        manifest_sha256=checked.manifest_sha256,
        audit_head=checked.audit_head,
        files=checked.files,
        models=checked.models,
        private_keys=checked.private_keys,
        private_keys_included=include_private_keys,
    )


def _manifest_actor(by: Actor | str | None) -> str:
    """The manifest's ``created_by`` text: OS user and host, and the named administrator."""
    if isinstance(by, str):
        return by
    if by is None or by.admin is None:
        return current_user()
    how = "with its kit" if by.admin_proven else "claimed"
    return f"{current_user()} as {by.admin} ({how})"


def _record_backup(
    store: Store,
    destination: Path,
    checked: VerifyReport,
    who: str | dict[str, object],
    keys_included: bool,
) -> None:
    """Append ``state_backup``; a backup that cannot be recorded is removed again."""
    try:
        store.audit.append(
            "state_backup",
            {
                "by": who,
                "destination": str(destination.absolute()),
                "manifest_sha256": checked.manifest_sha256,
                "audit_head": {"count": checked.audit_head.count, "hash": checked.audit_head.hash},
                "files": checked.files,
                "models": checked.models,
                "private_keys_included": keys_included,
            },
        )
    except BaseException:
        remove_path(destination)
        raise


def _stage(
    federation: FederationFolder,
    database: Path,
    staging: Path,
    include_private_keys: bool,
    when: str,
    who: str,
) -> dict[str, Any]:
    os.chmod(staging, 0o700)
    _snapshot_database(database, staging / STATE_FILENAME)
    with Store.open(staging / STATE_FILENAME, read_only=True) as snapshot:
        version = _schema_version(snapshot)
        head = snapshot.audit.head()
        name = snapshot.federation().name
        models = snapshot.model_versions()
    if name != federation.name:
        raise BackupError(
            f"the state database belongs to federation {name!r}, the folder to "
            f"{federation.name!r}; not backing up a mixed folder"
        )
    for model in models:
        if model.path != model_relpath(model.sha256):
            raise BackupError(f"model version {model.version}: recorded path does not match")
        target = staging / model.path
        if not target.exists():  # several versions may share one file
            copy_file(federation.folder / model.path, target)
    private: list[str] = []
    left_out: list[str] = []
    for relpath, path in _folder_files(federation.folder, left_out):
        if _is_private(path):
            private.append(relpath)
            if not include_private_keys:
                continue
            copy_file(path, staging / SECRETS_DIR / relpath)
        else:
            copy_file(path, staging / FOLDER_DIR / relpath)
    files = {}
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        digest, size = sha256_file(path)
        files[path.relative_to(staging).as_posix()] = {"sha256": digest, "size": size}
    return {
        "format": BACKUP_FORMAT,
        "federation": federation.name,
        "created": when,
        "created_by": who,
        "sealagg_version": _version(),
        "schema_version": version,
        "audit_head": head.to_json(),
        "audit_public_key": federation.audit_signing_key.public_key().public_bytes_raw().hex(),
        "private_keys": sorted(private),
        "private_keys_included": include_private_keys,
        "kits_left_out": sorted(left_out),
        "files": files,
    }


def _schema_version(store: Store) -> int:
    with store.snapshot() as conn:
        return int(conn.execute("SELECT version FROM schema_version").fetchone()[0])


def _publish(staging: Path, destination: Path, as_tar: bool) -> None:
    if not as_tar:
        try:
            os.rename(staging, destination)  # fails if it appeared meanwhile (non-empty)
        except OSError as exc:
            raise BackupError(f"cannot create {destination}: {exc.strerror}") from None
        pki.fsync_directory(destination.parent)
        return
    try:
        fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise BackupError(f"cannot create {destination}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            with tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for path in sorted(staging.rglob("*")):
                    tar.add(path, arcname=path.relative_to(staging).as_posix(), recursive=False)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            destination.unlink()
        raise
    pki.fsync_directory(destination.parent)


def _snapshot_database(source: Path, target: Path) -> None:
    """Copy the live database with SQLite's online backup API, in one step (one read
    transaction: a committed state), into a self-contained rollback-journal file."""
    uri = f"file:{urllib.parse.quote(str(source.absolute()))}?mode=ro"
    try:
        src = sqlite3.connect(uri, uri=True, timeout=30.0)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open {source} for the backup: {exc}") from exc
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # pages=-1: everything in one step
            dst.execute("PRAGMA journal_mode = DELETE")  # no -wal/-shm beside the copy
            dst.commit()
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise BackupError(f"the online backup of {source} failed: {exc}") from exc
    finally:
        src.close()
    os.chmod(target, 0o600)


def _is_private(path: Path) -> bool:
    """A private key by name (``*.key``: kits keep raw identity seeds there), or any file
    that holds a PEM private key."""
    if path.name in KNOWN_PRIVATE or path.suffix == ".key":
        return True
    with open(path, "rb") as handle:
        return b"PRIVATE KEY-----" in handle.read(1 << 20)


def _is_kit(path: Path) -> bool:
    """A client or admin kit folder: it holds someone's private keys, never backed up."""
    return (path / _KIT_MARKER).exists() or (path / _KIT_SIGNATURE).exists()


def _folder_files(folder: Path, left_out: list[str]) -> Iterator[tuple[str, Path]]:
    """(relative POSIX path, path) of every configuration file of the federation folder.

    Hidden entries (locks, temporary files), the entries of :data:`_NOT_CONFIGURATION` and
    kit folders (named in ``left_out``) are skipped; a symlink is refused, never followed."""
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        top = here == folder
        kept = []
        for d in sorted(dirs):
            if d.startswith(".") or (top and d in _NOT_CONFIGURATION):
                continue
            if (here / d).is_symlink():
                raise BackupError(f"{here / d} is a symbolic link; refusing to follow it")
            if _is_kit(here / d):
                left_out.append(f"{(here / d).relative_to(folder).as_posix()}/")
                continue
            kept.append(d)
        dirs[:] = kept
        for name in sorted(files):
            if name.startswith(".") or (top and name.startswith(STATE_FILENAME)):
                continue
            path = here / name
            if path.is_symlink() or not path.is_file():
                raise BackupError(f"{path} is not a regular file; refusing to back it up")
            yield path.relative_to(folder).as_posix(), path


def _version() -> str:
    try:
        return importlib.metadata.version("sealagg")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
