"""Check a state backup completely before anyone relies on it (``sealagg state verify``).

In order: the manifest (one canonical encoding, signed by the federation's audit key under its
own prefix), every file's SHA-256 and size against it (nothing missing, nothing added, no
links), the configuration's federation name, SQLite's integrity and foreign-key checks, the
schema version, the whole audit chain (across audit-key rotations, from the first key) and
that its signed head is the one the manifest names, and every model file against the SHA-256
its ``model_versions`` row records. The first problem raises :class:`BackupError` naming it;
hostile input (a crafted tar, manifest or database) raises nothing else.

The database is read with ``mode=ro&immutable=1``: verifying never writes to a backup, and a
backup of an earlier schema verifies as it is (the restore migrates it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sqlite3
import tarfile
import tempfile
import tomllib
import urllib.parse
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sealagg.appliance import pki
from sealagg.appliance.audit import AuditHead, AuditLog, ExpectedHead, canonical_json
from sealagg.appliance.backup_format import (
    BACKUP_FORMAT,
    FOLDER_DIR,
    MANIFEST_FIELDS,
    MANIFEST_NAME,
    BackupError,
    VerifyReport,
    manifest_message,
    public_key_of,
    safe_relpath,
    sha256_file,
)
from sealagg.appliance.errors import AuditVerificationError, ProvisioningError
from sealagg.appliance.models import MODELS_DIRNAME
from sealagg.appliance.store import SCHEMA_VERSION, STATE_FILENAME

__all__ = ["opened_backup", "verify_backup", "verify_root"]

_SIGNATURE_RE = re.compile(r"[0-9a-f]{128}")
#: Written by an audit key rotation (appliance/audit_rotation.py, HISTORY_FORMAT there).
_KEY_HISTORY = "audit_key_history.json"
_KEY_HISTORY_FORMAT = "sealagg-audit-keys/1"
_MAX_MANIFEST_BYTES = 64 << 20


@contextlib.contextmanager
def opened_backup(backup: Path, *, private_copy: bool = False) -> Iterator[Path]:
    """The backup's root folder: itself, or a tar safely unpacked into a temporary folder.

    ``private_copy``: a backup folder is copied first too, so what is restored is exactly
    what was verified (nobody can swap a file between the check and the copy)."""
    backup = Path(backup)
    if backup.is_dir() and not private_copy:
        yield backup
        return
    if backup.is_dir():
        with tempfile.TemporaryDirectory(prefix="sealagg-backup-") as tmp:
            try:
                shutil.copytree(backup, Path(tmp) / "b", symlinks=True)
            except (OSError, shutil.Error) as exc:
                raise BackupError(f"cannot read the backup {backup}: {exc}") from None
            yield Path(tmp) / "b"
        return
    if not backup.is_file():
        raise BackupError(f"no backup at {backup}")
    with tempfile.TemporaryDirectory(prefix="sealagg-backup-") as tmp:
        try:
            with tarfile.open(backup, mode="r:") as tar:
                members = tar.getmembers()
                for member in members:
                    _check_member(member)
                tar.extractall(tmp, members=members, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise BackupError(f"{backup} is not a readable backup tar: {exc}") from None
        yield Path(tmp)


def _check_member(member: tarfile.TarInfo) -> None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or "\\" in member.name:
        raise BackupError(f"the backup tar holds an unsafe path {member.name!r}; refusing it")
    if not (member.isfile() or member.isdir()):
        raise BackupError(f"the backup tar holds {member.name!r}, which is not a regular file")


def verify_backup(
    backup: Path,
    *,
    audit_public_key: Ed25519PublicKey | bytes | None = None,
    expected_head: ExpectedHead | None = None,
) -> VerifyReport:
    """Check a backup completely; raise :class:`BackupError` naming the first problem.

    ``audit_public_key``: the federation's audit key from the verifier's own records. Without
    it the backup's own copy is used, which proves consistency, not origin (someone who
    replaced the whole backup, keys included, would pass). ``expected_head``: an audit head
    recorded outside the appliance, which the backup's chain must contain.
    """
    key = None if audit_public_key is None else public_key_of(audit_public_key)
    with opened_backup(backup) as root:
        return verify_root(root, key, key is not None, expected_head)


def verify_root(
    root: Path,
    key: Ed25519PublicKey | None,
    key_from_caller: bool,
    expected_head: ExpectedHead | None,
) -> VerifyReport:
    manifest, manifest_sha = _read_manifest(root)
    try:
        signer = Ed25519PublicKey.from_public_bytes(bytes.fromhex(manifest["audit_public_key"]))
    except ValueError:
        raise BackupError("MANIFEST.json's audit_public_key is not an Ed25519 key") from None
    if key is None:
        key = _backup_public_key(root)
    given = key.public_bytes_raw()
    # The caller's key is the federation's current audit key (it signed the manifest) or,
    # after rotations, its first one (the chain's rotations then lead to the manifest's key).
    if given != signer.public_bytes_raw() and given != _first_history_key(root):
        raise BackupError(
            "MANIFEST.json names another audit key than the one given: this backup is not from "
            "this federation (or its manifest was replaced)"
        )
    try:
        signer.verify(bytes.fromhex(manifest["signature"]), manifest_message(manifest))
    except (InvalidSignature, ValueError):
        raise BackupError(
            "MANIFEST.json's signature does not verify under the audit key: the manifest was "
            "edited or forged"
        ) from None
    _check_files(root, manifest["files"])
    copy = root / FOLDER_DIR / "audit_public_key.pem"
    if copy.is_file() and _load_public_pem(copy).public_bytes_raw() != signer.public_bytes_raw():
        raise BackupError(f"{FOLDER_DIR}/audit_public_key.pem is not the manifest's audit key")
    history = _key_history(root, signer.public_bytes_raw())
    if given not in (history[0], history[-1]):
        raise BackupError("the audit key given is neither the first nor the current one")
    key = history  # the chain is walked from the first key through every rotation
    _check_config(root, manifest["federation"])
    models = _check_database(root / STATE_FILENAME, key, manifest, expected_head)
    stored = manifest["audit_head"]
    return VerifyReport(
        federation=manifest["federation"],
        created=manifest["created"],
        created_by=manifest["created_by"],
        schema_version=manifest["schema_version"],
        manifest_sha256=manifest_sha,
        audit_head=AuditHead(stored["count"], stored["hash"], stored["signature"]),
        files=len(manifest["files"]),
        models=models,
        private_keys=tuple(manifest["private_keys"]),
        private_keys_included=manifest["private_keys_included"],
        audit_public_key=manifest["audit_public_key"],
        audit_key_history=tuple(key),
        key_from_caller=key_from_caller,
    )


def _read_history(root: Path) -> list[bytes] | None:
    """The audit key history of the backed-up folder (audit_rotation.py), None if never
    rotated; hostile content is a :class:`BackupError`."""
    path = root / FOLDER_DIR / _KEY_HISTORY
    if not path.is_file():
        return None
    try:
        body = json.loads(pki.read_file(path, limit=1 << 20))
        keys = [bytes.fromhex(k) for k in body["keys"]]
        if body["format"] != _KEY_HISTORY_FORMAT or not keys or any(len(k) != 32 for k in keys):
            raise ValueError("malformed")
    except (ValueError, KeyError, TypeError, ProvisioningError):
        raise BackupError(f"{FOLDER_DIR}/{_KEY_HISTORY} is malformed") from None
    return keys


def _first_history_key(root: Path) -> bytes | None:
    history = _read_history(root)
    return None if history is None else history[0]


def _key_history(root: Path, current: bytes) -> list[bytes]:
    """Every audit key the chain was signed with, oldest first, ending at ``current``."""
    history = _read_history(root)
    if history is None:
        return [current]
    if history[-1] != current:
        raise BackupError(
            f"{FOLDER_DIR}/{_KEY_HISTORY} does not end at the manifest's audit key (the current "
            "one): the history and the manifest are from different moments"
        )
    return history


def _read_manifest(root: Path) -> tuple[dict[str, Any], str]:
    path = root / MANIFEST_NAME
    try:
        data = pki.read_file(path, limit=_MAX_MANIFEST_BYTES)
    except ProvisioningError as exc:
        raise BackupError(f"no readable {MANIFEST_NAME} in the backup: {exc}") from None
    try:
        manifest = json.loads(data)
    except ValueError:
        raise BackupError(f"{MANIFEST_NAME} is not valid JSON: the manifest is damaged") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise BackupError(f"{MANIFEST_NAME} is malformed: {problem}")
    # One encoding only, so the manifest's SHA-256 (recorded in the audit log) names exactly
    # one manifest: no re-encoded or re-cased copy of a genuine one verifies.
    if data != canonical_json(manifest) + b"\n" or not _SIGNATURE_RE.fullmatch(
        manifest["signature"]
    ):
        raise BackupError(f"{MANIFEST_NAME} is not in its canonical encoding: it was edited")
    return manifest, hashlib.sha256(data).hexdigest()


def _manifest_problem(manifest: Any) -> str | None:
    if not isinstance(manifest, dict) or set(manifest) != MANIFEST_FIELDS:
        return "unexpected or missing fields"
    if manifest["format"] != BACKUP_FORMAT:
        return f"format {manifest['format']!r} is not {BACKUP_FORMAT!r}"
    strings = ("federation", "created", "created_by", "sealagg_version", "audit_public_key")
    if not all(isinstance(manifest[k], str) for k in (*strings, "signature")):
        return "a text field is not text"
    if (
        type(manifest["schema_version"]) is not int
        or type(manifest["private_keys_included"]) is not bool
    ):
        return "schema_version or private_keys_included has the wrong type"
    head = manifest["audit_head"]
    if not (
        isinstance(head, dict)
        and set(head) == {"count", "hash", "signature"}
        and type(head["count"]) is int
        and isinstance(head["hash"], str)
    ):
        return "audit_head is malformed"
    for field in ("private_keys", "kits_left_out"):
        names = manifest[field]
        if not isinstance(names, list) or not all(
            isinstance(k, str) and safe_relpath(k) for k in names
        ):
            return f"{field} is malformed"
    files = manifest["files"]
    if not isinstance(files, dict) or not all(
        safe_relpath(name)
        and isinstance(entry, dict)
        and set(entry) == {"sha256", "size"}
        and isinstance(entry["sha256"], str)
        and type(entry["size"]) is int
        for name, entry in files.items()
    ):
        return "files is malformed"
    return None


def _backup_public_key(root: Path) -> Ed25519PublicKey:
    path = root / FOLDER_DIR / "audit_public_key.pem"
    if not path.is_file():
        raise BackupError(f"the backup has no {FOLDER_DIR}/audit_public_key.pem; pass the key")
    return _load_public_pem(path)


def _load_public_pem(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pki.read_file(path, limit=64 * 1024))
    except (ValueError, UnsupportedAlgorithm, ProvisioningError):
        raise BackupError(f"{path.name} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BackupError(f"{path.name} is not an Ed25519 public key")
    return key


def _check_files(root: Path, files: dict[str, dict[str, Any]]) -> None:
    present = set()
    for here, dirs, names in os.walk(root):  # never follows a link out of the backup
        for name in (*dirs, *names):
            path = Path(here) / name
            if path.is_symlink():
                raise BackupError(
                    f"{path.relative_to(root).as_posix()} is a symbolic link; a backup holds "
                    "regular files only"
                )
        present.update((Path(here) / n).relative_to(root).as_posix() for n in names)
    present.discard(MANIFEST_NAME)
    missing = sorted(set(files) - present)
    if missing:
        raise BackupError(f"files listed in the manifest are missing: {', '.join(missing)}")
    extra = sorted(present - set(files))
    if extra:
        raise BackupError(f"files not in the manifest were added: {', '.join(extra)}")
    for name, entry in sorted(files.items()):
        digest, size = sha256_file(root / name)
        if digest != entry["sha256"] or size != entry["size"]:
            raise BackupError(
                f"{name}: its SHA-256 does not match the manifest (the file was changed or is "
                "damaged)"
            )


def _check_config(root: Path, federation: str) -> None:
    path = root / FOLDER_DIR / "sealagg.toml"
    try:
        config = tomllib.loads(path.read_text("utf-8"))
        name = config["federation"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        raise BackupError(f"{FOLDER_DIR}/sealagg.toml is missing or unreadable") from None
    if name != federation:
        raise BackupError(
            f"{FOLDER_DIR}/sealagg.toml names federation {name!r}, not {federation!r}"
        )


class _BackupDatabase:
    """The audit log's view of a backup's database: reads only, whatever its schema version
    (a backup made by an earlier release still verifies; the restore migrates it)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        yield self._conn

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        raise BackupError("a backup is verified, never written")


def _check_database(
    path: Path,
    key: list[bytes],
    manifest: dict[str, Any],
    expected_head: ExpectedHead | None,
) -> int:
    """Integrity check, schema, audit chain and head, federation, model files; model count."""
    uri = f"file:{urllib.parse.quote(str(path.absolute()))}?mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise BackupError(f"{STATE_FILENAME} cannot be opened: {exc}") from None
    try:
        return _check_open_database(conn, key, manifest, expected_head)
    except sqlite3.Error as exc:
        raise BackupError(f"{STATE_FILENAME} is not a readable sealagg state: {exc}") from None
    except (ValueError, TypeError, LookupError, AttributeError):  # hostile values in rows
        raise BackupError(f"{STATE_FILENAME} holds malformed values: not a sealagg state") from None
    finally:
        conn.close()


def _check_open_database(
    conn: sqlite3.Connection,
    key: list[bytes],
    manifest: dict[str, Any],
    expected_head: ExpectedHead | None,
) -> int:
    result = [row[0] for row in conn.execute("PRAGMA integrity_check")]
    if result != ["ok"]:
        raise BackupError(f"{STATE_FILENAME} fails SQLite's integrity check: {result[0]}")
    foreign = conn.execute("PRAGMA foreign_key_check").fetchall()
    if foreign:
        raise BackupError(f"{STATE_FILENAME} has rows pointing at missing rows: {foreign[0]}")
    versions = conn.execute("SELECT version FROM schema_version").fetchall()
    version = versions[0][0] if len(versions) == 1 else None
    if type(version) is not int or version != manifest["schema_version"]:
        raise BackupError(
            f"{STATE_FILENAME} has schema {version!r}, the manifest says "
            f"{manifest['schema_version']}"
        )
    if version > SCHEMA_VERSION:
        raise BackupError(
            f"the backup has schema {version}, newer than this sealagg's {SCHEMA_VERSION}: "
            "verify and restore it with the release that made it, or a newer one"
        )
    audit = AuditLog(_BackupDatabase(conn), None)
    try:
        report = audit.verify(key, expected_head=expected_head)
    except AuditVerificationError as exc:
        raise BackupError(f"the audit chain in the backup is broken: {exc}") from None
    head = audit.head()
    stored = manifest["audit_head"]
    if (head.count, head.hash, head.signature) != (
        stored["count"],
        stored["hash"],
        stored["signature"],
    ) or report.count != stored["count"]:
        raise BackupError(
            f"the audit head in {STATE_FILENAME} ({head.count} entries, {head.hash[:16]}…) does "
            f"not match the manifest's ({stored['count']} entries, {str(stored['hash'])[:16]}…)"
        )
    names = conn.execute("SELECT name FROM federation WHERE id = 1").fetchall()
    if names != [(manifest["federation"],)]:
        raise BackupError(f"{STATE_FILENAME} does not belong to {manifest['federation']!r}")
    files = manifest["files"]
    referenced = set()
    for number, sha, recorded in conn.execute(
        "SELECT version, sha256, path FROM model_versions ORDER BY version"
    ):
        relpath = f"{MODELS_DIRNAME}/{sha}.safetensors"
        if not isinstance(sha, str) or recorded != relpath or relpath not in files:
            raise BackupError(f"model version {number}'s file is not in the backup")
        referenced.add(relpath)
        if files[relpath]["sha256"] != sha:
            raise BackupError(
                f"model version {number}'s file does not match the SHA-256 recorded in "
                "model_versions (the model file was replaced)"
            )
    unreferenced = sorted(
        n for n in files if n.startswith(f"{MODELS_DIRNAME}/") and n not in referenced
    )
    if unreferenced:
        raise BackupError(f"model files no model version refers to: {', '.join(unreferenced)}")
    return len(referenced)
