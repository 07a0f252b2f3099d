"""Rotate the federation's audit key; the audit chain continues across the rotation.

The old key signs an ``audit_key_rotated`` entry naming the new public key (appliance/audit.py,
:meth:`AuditLog.rotate_key`); from then on the new key signs. ``audit_key_history.json`` keeps
every public key in order, oldest first: an auditor pins the first key (or the file) and
verifies the whole chain (``sealagg audit verify`` / :func:`audit_key_history`).

The appliance must be stopped: it holds the key in memory and would go on signing with the
retired one (its next append would then refuse the chain). The instance lock enforces it.

Crash safety: the new key is written to ``audit_signing_key.next.pem`` before the rotation
entry commits, and moved into place after. If a crash falls in between, running the rotation
again finishes it: when the stored head is already signed by the pending key the files are
swapped; otherwise the pending key was never used and a fresh rotation starts.

The audit key also signs kit manifests: kits issued from now on carry the new signer key, so a
client that pinned the old one (``load_kit(trusted_signer=)``) must be given the new one.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from sealagg.appliance import pki
from sealagg.appliance.errors import ProvisioningError
from sealagg.appliance.federation import FederationFolder, FederationPaths
from sealagg.appliance.instance_lock import InstanceLock
from sealagg.appliance.store import Store, default_state_path

__all__ = ["HISTORY_FORMAT", "audit_key_history", "rotate_audit_key"]

HISTORY_FORMAT = "sealagg-audit-keys/1"


def _pending_path(paths: FederationPaths) -> Path:
    return paths.folder / "audit_signing_key.next.pem"


def audit_key_history(folder: Path) -> list[bytes]:
    """Every audit public key of the federation in ``folder``, oldest first (raw 32 bytes).

    Without a history file (never rotated) that is the current key alone."""
    paths = FederationPaths(Path(folder))
    if paths.audit_key_history.exists():
        try:
            body = json.loads(pki.read_file(paths.audit_key_history, limit=1 << 20))
            if body["format"] != HISTORY_FORMAT:
                raise ValueError(f"unknown format {body['format']!r}")
            keys = [bytes.fromhex(k) for k in body["keys"]]
            if not keys or any(len(k) != 32 for k in keys):
                raise ValueError("keys must be 32-byte hex")
        except (ValueError, KeyError, TypeError) as exc:
            raise ProvisioningError(f"{paths.audit_key_history} is corrupt: {exc}") from None
        return keys
    key = serialization.load_pem_public_key(pki.read_file(paths.audit_public_key, limit=4096))
    if not isinstance(key, Ed25519PublicKey):
        raise ProvisioningError(f"{paths.audit_public_key} is not an Ed25519 key")
    return [key.public_bytes_raw()]


def rotate_audit_key(folder: Path) -> bytes:
    """Rotate the audit key of the (stopped) appliance in ``folder``; returns the new public
    key (raw 32 bytes)."""
    with InstanceLock(Path(folder)):
        federation = FederationFolder.load(folder)
        paths = federation.paths
        old_key = federation.audit_signing_key
        history = audit_key_history(folder)
        with federation._exclusive():
            store = Store.open(
                default_state_path(folder), audit_key=old_key, federation=federation.name
            )
            try:
                new_key = _resume(paths, store) or _rotate(paths, store, old_key)
            finally:
                store.close()
            new_public = new_key.public_key().public_bytes_raw()
            if history[-1] != new_public:
                history.append(new_public)
            body = {"format": HISTORY_FORMAT, "keys": [k.hex() for k in history]}
            pki.write_file_atomic(
                paths.audit_key_history,
                (json.dumps(body, indent=2) + "\n").encode(),
                mode=pki.PUBLIC_FILE_MODE,
            )
            pki.write_file_atomic(
                paths.audit_signing_key,
                pki.private_key_pem(new_key, None),
                mode=pki.PRIVATE_FILE_MODE,
            )
            pki.write_file_atomic(
                paths.audit_public_key,
                new_key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                ),
                mode=pki.PUBLIC_FILE_MODE,
            )
            with contextlib.suppress(FileNotFoundError):
                _pending_path(paths).unlink()
    return new_public


def _resume(paths: FederationPaths, store: Store) -> Ed25519PrivateKey | None:
    """The pending key if a rotation to it already committed; None otherwise (a pending
    key never used is discarded)."""
    pending = _pending_path(paths)
    if not pending.exists():
        return None
    key = pki.load_private_key(pki.read_file(pending, limit=4096), None, what=str(pending))
    if not isinstance(key, Ed25519PrivateKey):
        raise ProvisioningError(f"{pending} is not an Ed25519 key")
    if store.audit.head_signed_by(key.public_key()):
        return key
    pending.unlink()
    return None


def _rotate(paths: FederationPaths, store: Store, old_key: Ed25519PrivateKey) -> Ed25519PrivateKey:
    del old_key  # the store signs the rotation entry with it
    new_key = Ed25519PrivateKey.generate()
    pki.write_file_atomic(
        _pending_path(paths), pki.private_key_pem(new_key, None), mode=pki.PRIVATE_FILE_MODE
    )
    store.audit.rotate_key(new_key)
    return new_key
