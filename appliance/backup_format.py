"""The state backup format: its layout, its signed manifest, and what every step shares.

See appliance/backup.py for why a backup is made this way; appliance/backup_verify.py checks
one and appliance/backup_restore.py brings one back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import hashlib
import os
import shutil
import socket
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sealagg.appliance.audit import AuditHead, canonical_json
from sealagg.appliance.errors import StoreError

__all__ = [
    "BACKUP_FORMAT",
    "FOLDER_DIR",
    "MANIFEST_CONTEXT",
    "MANIFEST_FIELDS",
    "MANIFEST_NAME",
    "SECRETS_DIR",
    "BackupError",
    "BackupReport",
    "RestoreReport",
    "VerifyReport",
    "copy_file",
    "current_user",
    "manifest_message",
    "public_key_of",
    "remove_path",
    "safe_relpath",
    "sha256_file",
    "sign_manifest",
]

BACKUP_FORMAT = "sealagg-state-backup/1"
MANIFEST_NAME = "MANIFEST.json"
#: Domain separation: the audit key also signs audit entries, heads and kit manifests.
MANIFEST_CONTEXT = b"sealagg/state-backup-manifest/v1\x00"
#: Inside a backup: the federation folder's public files, and (only on request) its keys.
FOLDER_DIR = "federation"
SECRETS_DIR = "private-keys"
MANIFEST_FIELDS = frozenset(
    {
        "format",
        "federation",
        "created",
        "created_by",
        "sealagg_version",
        "schema_version",
        "audit_head",
        "audit_public_key",
        "private_keys",
        "private_keys_included",
        "kits_left_out",
        "files",
        "signature",
    }
)
_CHUNK = 1 << 20


class BackupError(StoreError):
    """A backup cannot be made, is damaged or tampered with, or cannot be restored."""


@dataclasses.dataclass(frozen=True)
class BackupReport:
    path: Path
    manifest_sha256: str
    audit_head: AuditHead
    files: int
    models: int
    private_keys: tuple[str, ...]
    private_keys_included: bool


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    federation: str
    created: str
    created_by: str
    schema_version: int
    manifest_sha256: str
    audit_head: AuditHead
    files: int
    models: int
    private_keys: tuple[str, ...]
    private_keys_included: bool
    audit_public_key: str
    #: Every audit public key the chain was signed with, oldest first (one unless rotated).
    audit_key_history: tuple[bytes, ...]
    #: True when the audit key came from the caller; False: the backup's own copy was used.
    key_from_caller: bool


@dataclasses.dataclass(frozen=True)
class RestoreReport:
    folder: Path
    backup: VerifyReport
    audit_count: int
    private_keys_from: str


def sha256_file(path: Path) -> tuple[str, int]:
    """(hex SHA-256, size) of a file, read in chunks (model files can be large)."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def copy_file(source: Path, target: Path, mode: int = 0o600) -> None:
    """Copy a regular file (never following a symlink), fsynced, with ``mode``."""
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise BackupError(f"cannot read {source}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as src:
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(out, "wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
            dst.flush()
            os.fsync(dst.fileno())


def current_user() -> str:
    """Who ran the command, for the audit entry: the OS account (the host vouches for it) and
    the host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def remove_path(path: Path) -> None:
    """Undo a half-made backup or restore (a folder or a file; never follows a link)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def safe_relpath(relpath: str) -> bool:
    """A name from a (possibly hostile) manifest stays inside the backup: relative, no
    ``..``, no backslashes."""
    path = PurePosixPath(relpath)
    return (
        bool(relpath) and not path.is_absolute() and ".." not in path.parts and "\\" not in relpath
    )


def public_key_of(key: Ed25519PublicKey | bytes) -> Ed25519PublicKey:
    """The caller's pinned audit key as a ``cryptography`` key."""
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, bytes | bytearray) and len(key) == 32:
        return Ed25519PublicKey.from_public_bytes(bytes(key))
    raise TypeError("the audit public key is an Ed25519PublicKey or 32 raw bytes")


def manifest_message(manifest: dict[str, Any]) -> bytes:
    """What the audit key signs: the manifest without its signature, behind its own prefix."""
    return MANIFEST_CONTEXT + canonical_json(
        {k: v for k, v in manifest.items() if k != "signature"}
    )


def sign_manifest(manifest: dict[str, Any], key: Ed25519PrivateKey) -> bytes:
    """The manifest's file bytes, signed by the audit key (canonical JSON and a newline)."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    body["signature"] = key.sign(manifest_message(body)).hex()
    return canonical_json(body) + b"\n"
