"""Tamper-evident audit log: a signed hash chain of JSON entries kept in the state database.

Each entry is a JSON object in canonical encoding (sorted keys, no whitespace, UTF-8, no NaN)::

    {"details": {...}, "event": "round_opened", "prev_hash": "<64 hex>", "seq": 7,
     "signature": "<128 hex>", "time": "2025-01-31T12:00:00.000000Z"}

* ``seq`` counts from 0 with no gaps.
* ``prev_hash`` is the hex SHA-256 of the previous entry's canonical bytes *including* its
  signature; entry 0 carries :data:`GENESIS_HASH`.
* ``signature`` is Ed25519, by the appliance's audit key, over
  ``ENTRY_CONTEXT + canonical(entry without "signature")`` (the context string is a domain
  separator so an entry signature can never be confused with a head signature).
* The *head* (latest seq and the hash of that entry) is kept in the one-row table
  ``audit_head`` and signed over ``HEAD_CONTEXT + canonical({"count": n, "hash": h})``.

Entries are appended in the same SQLite transaction as the state change they record (pass the
connection of ``store.transaction()``), so the log and the state never disagree after a crash.

Key rotation
------------
:meth:`AuditLog.rotate_key` appends an ``audit_key_rotated`` entry, signed by the *old* key,
whose details name the old and the new public key; every later entry and the head are signed
by the new key. A verifier given the first key (or the whole key history, oldest first)
follows the chain across each rotation: it switches keys only on a rotation entry that the key
in force signed, so nobody can insert a rotation to a key of his own without the private key
in force at that point, and an entry signed with a retired key after its rotation is refused.
Only :meth:`AuditLog.rotate_key` writes that event (``append`` refuses it).

What the chain proves, and what it does not
-------------------------------------------
Someone who can write the database but does not hold the audit signing key cannot edit, insert,
delete, reorder or re-sign entries without :meth:`AuditLog.verify` naming the first bad seq.
They *can*, however, roll the whole database back to an earlier copy, or delete the newest
entries together with the head row and put back an older signed head row they saved earlier:
every signature in such a prefix is genuine. Only a head recorded *outside* the appliance
(``AuditLog.head()`` copied to an operator's notes, a ticket, a model release, a transparency
log) detects that: pass it as ``expected_head``. Someone who holds the signing key (root on the
appliance) can rewrite everything; the external head is the only defence there as well.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import nacl.exceptions
import nacl.signing
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from sealagg.appliance.errors import AuditChainError, AuditVerificationError, StoreError

__all__ = [
    "ENTRY_CONTEXT",
    "GENESIS_HASH",
    "HEAD_CONTEXT",
    "KEY_ROTATION_EVENT",
    "MAX_DETAILS_BYTES",
    "AuditEntry",
    "AuditHead",
    "AuditKey",
    "AuditLog",
    "AuditReport",
    "AuditSigner",
    "ExpectedHead",
    "VerifyKeyLike",
    "canonical_json",
    "check_json_value",
    "format_time",
    "verify_jsonl",
]

_log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
#: The one event that changes the key later entries are signed with.
KEY_ROTATION_EVENT = "audit_key_rotated"
ENTRY_CONTEXT = b"sealagg/audit-entry/v1\x00"
HEAD_CONTEXT = b"sealagg/audit-head/v1\x00"
#: Details larger than this are refused: the log records decisions and counts, never updates.
MAX_DETAILS_BYTES = 64 * 1024
_MAX_DEPTH = 16
_MAX_SAFE_INT = 2**53  # beyond this other JSON readers lose precision
_FIELDS = frozenset({"seq", "time", "event", "details", "prev_hash", "signature"})
_EVENT_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_HEX128_RE = re.compile(r"[0-9a-f]{128}")
_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
_VERIFY_KEY_BYTES = 32

SCHEMA_SQL = """
CREATE TABLE audit_log (
    seq INTEGER PRIMARY KEY CHECK (seq >= 0),
    time TEXT NOT NULL,
    event TEXT NOT NULL,
    entry BLOB NOT NULL,
    entry_hash TEXT NOT NULL
);
CREATE TABLE audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    signature TEXT NOT NULL
);
"""


class AuditSigner(Protocol):
    """What the log needs from the audit key (``crypto.IdentityKey`` fits)."""

    @property
    def verify_key_bytes(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


#: An audit signing key: the federation's ``Ed25519PrivateKey`` (``cryptography``), a PyNaCl
#: ``SigningKey``, or anything with ``sign(bytes) -> bytes`` and ``verify_key_bytes``.
AuditKey = AuditSigner | Ed25519PrivateKey | nacl.signing.SigningKey
#: A verify key: 32 raw bytes, an ``Ed25519PublicKey`` or a PyNaCl ``VerifyKey``.
VerifyKeyLike = bytes | Ed25519PublicKey | nacl.signing.VerifyKey
#: The first key, or the key history (oldest first) the chain's rotations must follow.
VerifyKeys = VerifyKeyLike | Sequence[VerifyKeyLike]


class _CryptographySigner:
    __slots__ = ("_key", "verify_key_bytes")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.verify_key_bytes = key.public_key().public_bytes_raw()

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def __reduce__(self) -> object:
        raise TypeError("an audit signing key cannot be pickled")


class _NaclSigner:
    __slots__ = ("_key", "verify_key_bytes")

    def __init__(self, key: nacl.signing.SigningKey) -> None:
        self._key = key
        self.verify_key_bytes = bytes(key.verify_key)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message).signature

    def __reduce__(self) -> object:
        raise TypeError("an audit signing key cannot be pickled")


def _as_signer(key: AuditKey) -> AuditSigner:
    if isinstance(key, Ed25519PrivateKey):
        return _CryptographySigner(key)
    if isinstance(key, nacl.signing.SigningKey):
        return _NaclSigner(key)
    if callable(getattr(key, "sign", None)) and hasattr(key, "verify_key_bytes"):
        return key
    raise TypeError(f"not an Ed25519 audit signing key: {type(key).__name__}")


class Database(Protocol):
    """What the log needs from the store: nested-safe write transactions and read snapshots."""

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def snapshot(self) -> AbstractContextManager[sqlite3.Connection]: ...


# --------------------------------------------------------------------------------- encoding


def canonical_json(value: Any) -> bytes:
    """The canonical encoding: sorted keys, no whitespace, UTF-8, NaN and infinities refused."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def check_json_value(value: Any, where: str = "details", _depth: int = 0) -> None:
    """Refuse anything that is not plain JSON data (dict/list/tuple/str/int/float/bool/None).

    numpy arrays and scalars, bytes, sets and other objects are refused, as are NaN and
    infinities, integers beyond 2**53 and strings that are not valid Unicode. Error messages
    name the position, never the value (it might be a secret).
    """
    if _depth > _MAX_DEPTH:
        raise ValueError(f"{where}: nested deeper than {_MAX_DEPTH} levels")
    kind = type(value)
    if value is None or kind is bool:
        return
    if kind is int:
        if abs(value) > _MAX_SAFE_INT:
            raise ValueError(f"{where}: integer beyond ±2**53 (store it as a string)")
        return
    if kind is float:
        if not math.isfinite(value):
            raise ValueError(f"{where}: NaN and infinities are not JSON")
        return
    if kind is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{where}: string is not valid Unicode") from None
        return
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(f"{where}: dict keys must be str, got {type(key).__name__}")
            check_json_value(key, f"{where} key", _depth + 1)
            check_json_value(item, f"{where}[{key!r}]", _depth + 1)
        return
    if kind in (list, tuple):
        for index, item in enumerate(value):
            check_json_value(item, f"{where}[{index}]", _depth + 1)
        return
    module = getattr(kind, "__module__", "")
    hint = ""
    if module.startswith("numpy"):
        hint = " (numpy values are refused: the audit log never holds tensors or updates)"
    elif kind in (bytes, bytearray, memoryview):
        hint = " (encode bytes as hex)"
    raise TypeError(f"{where}: {kind.__name__} is not a JSON value{hint}")


def format_time(moment: datetime) -> str:
    """ISO-8601 UTC with microseconds and a ``Z`` suffix; naive datetimes are refused."""
    if not isinstance(moment, datetime):
        raise TypeError(f"time must be a datetime, got {type(moment).__name__}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("time must be timezone-aware (naive datetimes are ambiguous)")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _verify_key(verify_key: VerifyKeyLike) -> nacl.signing.VerifyKey:
    if isinstance(verify_key, nacl.signing.VerifyKey):
        return verify_key
    if isinstance(verify_key, Ed25519PublicKey):
        verify_key = verify_key.public_bytes_raw()
    if not isinstance(verify_key, bytes | bytearray) or len(verify_key) != _VERIFY_KEY_BYTES:
        raise ValueError(
            "verify_key must be an Ed25519 public key (32 raw bytes or Ed25519PublicKey)"
        )
    return nacl.signing.VerifyKey(bytes(verify_key))


def _signature_ok(key: nacl.signing.VerifyKey, message: bytes, signature_hex: str) -> bool:
    try:
        key.verify(message, bytes.fromhex(signature_hex))
    except (nacl.exceptions.BadSignatureError, ValueError):
        return False
    return True


def _head_message(count: int, head_hash: str) -> bytes:
    return HEAD_CONTEXT + canonical_json({"count": count, "hash": head_hash})


# ------------------------------------------------------------------------------ data types


@dataclasses.dataclass(frozen=True)
class AuditEntry:
    """One verified or freshly written entry. ``hash`` is what the next entry's prev_hash is."""

    seq: int
    time: str
    event: str
    details: dict[str, Any]
    prev_hash: str
    signature: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "event": self.event,
            "details": self.details,
            "prev_hash": self.prev_hash,
            "signature": self.signature,
        }

    def canonical(self) -> bytes:
        return canonical_json(self.to_json())


@dataclasses.dataclass(frozen=True)
class AuditHead:
    """The end of the chain: how many entries, and the hash of the last one.

    Record ``(count, hash)`` somewhere the appliance cannot rewrite and pass it back to
    :meth:`AuditLog.verify` / :func:`verify_jsonl` as ``expected_head``: that is the only check
    against a rollback or a truncation together with the stored head.
    """

    count: int
    hash: str
    signature: str | None = None

    @property
    def seq(self) -> int:
        """Seq of the last entry (-1 for an empty log)."""
        return self.count - 1

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "hash": self.hash, "signature": self.signature}


@dataclasses.dataclass(frozen=True)
class AuditReport:
    """A successful verification: every entry checked, chain intact."""

    count: int
    head_hash: str
    stored_head_checked: bool
    expected_head_checked: bool

    @property
    def ok(self) -> bool:
        return True

    def __str__(self) -> str:
        checks = []
        if self.stored_head_checked:
            checks.append("signed head")
        if self.expected_head_checked:
            checks.append("expected head")
        against = f", matches {' and '.join(checks)}" if checks else ""
        return f"audit log OK: {self.count} entries, head {self.head_hash[:16]}…{against}"


ExpectedHead = AuditHead | tuple[int, str]


def _expected(expected_head: ExpectedHead | None) -> tuple[int, str] | None:
    if expected_head is None:
        return None
    if isinstance(expected_head, AuditHead):
        count, head_hash = expected_head.count, expected_head.hash
    else:
        count, head_hash = expected_head
    if type(count) is not int or count < 0:
        raise ValueError("expected_head count must be a non-negative int")
    if not isinstance(head_hash, str) or not _HEX64_RE.fullmatch(head_hash):
        raise ValueError("expected_head hash must be 64 lowercase hex digits")
    return count, head_hash


# ------------------------------------------------------------------------------ verification


class _ChainChecker:
    """Walks entries in order; raises :class:`AuditVerificationError` at the first bad one."""

    def __init__(self, verify_key: VerifyKeys, expected_head: ExpectedHead | None) -> None:
        if isinstance(verify_key, list | tuple):
            if not verify_key:
                raise ValueError("the key history is empty")
            history = [bytes(_verify_key(k)) for k in verify_key]
            self._history: list[bytes] | None = history[1:]
            verify_key = history[0]
        else:
            self._history = None
        self._key = _verify_key(verify_key)
        #: Keys the chain rotated to, in order (checked against the history at the end).
        self.rotations: list[bytes] = []
        self._expected = _expected(expected_head)
        self.count = 0
        self.prev_hash = GENESIS_HASH
        self._hash_at_expected: str | None = None

    def feed(
        self,
        raw: bytes,
        *,
        column_seq: int | None = None,
        column_event: str | None = None,
        column_time: str | None = None,
        column_hash: str | None = None,
    ) -> AuditEntry:
        seq = self.count
        if column_seq is not None and column_seq != seq:
            raise AuditVerificationError(
                seq,
                f"entry missing: the log goes from seq {seq - 1} to seq {column_seq} "
                "(an entry was deleted)",
            )
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise AuditVerificationError(seq, "entry is not valid UTF-8 JSON") from None
        if not isinstance(obj, dict) or set(obj) != _FIELDS:
            found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise AuditVerificationError(
                seq, f"entry has fields {found}, expected {sorted(_FIELDS)}"
            )
        if canonical_json(obj) != raw:
            raise AuditVerificationError(
                seq, "entry is not in canonical encoding (edited outside the appliance)"
            )
        claimed = obj["seq"]
        if type(claimed) is not int or claimed != seq:
            raise AuditVerificationError(
                seq,
                f"expected seq {seq} here but the entry says seq {claimed!r}: entries were "
                "deleted, inserted or reordered",
            )
        self._check_fields(seq, obj)
        digest = _sha256_hex(raw)
        if column_event is not None and (column_event, column_time) != (obj["event"], obj["time"]):
            raise AuditVerificationError(
                seq, "the event/time columns disagree with the signed entry (edited)"
            )
        if column_hash is not None and column_hash != digest:
            raise AuditVerificationError(seq, "stored entry_hash does not match the entry")
        unsigned = {k: v for k, v in obj.items() if k != "signature"}
        if not _signature_ok(self._key, ENTRY_CONTEXT + canonical_json(unsigned), obj["signature"]):
            raise AuditVerificationError(
                seq,
                "signature does not verify under the given key: the entry was edited, its "
                "signature forged, or the verify key is wrong",
            )
        if obj["prev_hash"] != self.prev_hash:
            raise AuditVerificationError(
                seq,
                f"prev_hash does not match the hash of entry {seq - 1}: an earlier entry was "
                "deleted, replaced or reordered"
                if seq
                else "entry 0 does not start from the genesis hash",
            )
        if obj["event"] == KEY_ROTATION_EVENT:
            self._rotate(seq, obj["details"])
        self.prev_hash = digest
        self.count += 1
        if self._expected is not None and self._expected[0] == self.count:
            self._hash_at_expected = digest
        return AuditEntry(
            seq=seq,
            time=obj["time"],
            event=obj["event"],
            details=obj["details"],
            prev_hash=obj["prev_hash"],
            signature=obj["signature"],
            hash=digest,
        )

    def _rotate(self, seq: int, details: dict[str, Any]) -> None:
        """Follow a rotation the key in force signed (checked by the caller just before)."""
        previous, new = details.get("previous_public_key"), details.get("new_public_key")
        if not isinstance(new, str) or not _HEX64_RE.fullmatch(new):
            raise AuditVerificationError(seq, "the key rotation does not name a new key")
        if previous != bytes(self._key).hex():
            raise AuditVerificationError(
                seq, "the key rotation names another previous key than the one in force"
            )
        position = len(self.rotations)
        if self._history is not None and (
            position >= len(self._history) or self._history[position].hex() != new
        ):
            raise AuditVerificationError(
                seq, "the key rotation is not to the next key of the given key history"
            )
        self._key = _verify_key(bytes.fromhex(new))
        self.rotations.append(bytes.fromhex(new))

    def check_history_complete(self) -> None:
        if self._history is not None and len(self.rotations) != len(self._history):
            raise AuditVerificationError(
                None,
                f"the key history lists {len(self._history)} rotation(s), the chain holds "
                f"{len(self.rotations)}: rotation entries were removed, or the history is not "
                "this log's",
            )

    @staticmethod
    def _check_fields(seq: int, obj: dict[str, Any]) -> None:
        if not isinstance(obj["time"], str) or not _TIME_RE.fullmatch(obj["time"]):
            raise AuditVerificationError(seq, "time is not ISO-8601 UTC (…T…Z)")
        if not isinstance(obj["event"], str) or not _EVENT_RE.fullmatch(obj["event"]):
            raise AuditVerificationError(seq, "event is not a valid event name")
        if not isinstance(obj["details"], dict):
            raise AuditVerificationError(seq, "details is not an object")
        if not isinstance(obj["prev_hash"], str) or not _HEX64_RE.fullmatch(obj["prev_hash"]):
            raise AuditVerificationError(seq, "prev_hash is not 64 hex digits")
        if not isinstance(obj["signature"], str) or not _HEX128_RE.fullmatch(obj["signature"]):
            raise AuditVerificationError(seq, "signature is not 128 hex digits")

    def check_signed_head(self, head: AuditHead | None, *, what: str) -> None:
        """Compare the walked chain with a head signed by the audit key."""
        if head is None or (head.count == 0 and head.signature is None):
            if self.count:
                raise AuditVerificationError(
                    self.count - 1, f"{what} is missing although the log has entries"
                )
            if head is not None and head.hash != GENESIS_HASH:
                raise AuditVerificationError(None, f"the empty log's {what} is malformed")
            return
        if head.signature is None or not _signature_ok(
            self._key, _head_message(head.count, head.hash), head.signature
        ):
            raise AuditVerificationError(
                head.seq if head.seq >= 0 else None,
                f"{what} signature does not verify (forged head or wrong verify key)",
            )
        if head.count > self.count:
            raise AuditVerificationError(
                self.count,
                f"truncated tail: the log ends at seq {self.count - 1} but the {what} records "
                f"seq {head.seq}: entries {self.count}..{head.seq} were deleted",
            )
        if head.count < self.count:
            raise AuditVerificationError(
                head.count,
                f"entries from seq {head.count} on are not covered by the {what} "
                f"(it ends at seq {head.seq}): appended outside the appliance, or the head was "
                "rolled back",
            )
        if head.hash != self.prev_hash:
            raise AuditVerificationError(
                head.seq, f"the {what} hash does not match entry {head.seq}"
            )

    def check_expected_head(self) -> bool:
        if self._expected is None:
            return False
        count, head_hash = self._expected
        if count > self.count:
            raise AuditVerificationError(
                self.count,
                f"truncated: the externally recorded head has {count} entries but the log has "
                f"only {self.count} (tail deleted or database rolled back)",
            )
        at = GENESIS_HASH if count == 0 else self._hash_at_expected
        if at != head_hash:
            raise AuditVerificationError(
                count - 1 if count else None,
                "does not match the externally recorded head: the log was rewritten or rolled back",
            )
        return True

    def report(self, *, stored_head_checked: bool) -> AuditReport:
        self.check_history_complete()
        return AuditReport(
            count=self.count,
            head_hash=self.prev_hash,
            stored_head_checked=stored_head_checked,
            expected_head_checked=self.check_expected_head(),
        )


# ------------------------------------------------------------------------------------- log


class AuditLog:
    """The audit chain in the tables ``audit_log`` and ``audit_head`` of a state database.

    Get one from ``Store.audit``. Appends need the signing key; verification needs only the
    32-byte verify key.
    """

    def __init__(
        self,
        db: Database,
        signer: AuditKey | None,
        *,
        clock: Callable[[], datetime] | None = None,
        max_details_bytes: int = MAX_DETAILS_BYTES,
    ) -> None:
        self._db = db
        self._signer = None if signer is None else _as_signer(signer)
        self._clock = clock or _utc_now
        self._max_details_bytes = max_details_bytes
        self._own_key = (
            None if self._signer is None else _verify_key(bytes(self._signer.verify_key_bytes))
        )

    @staticmethod
    def create_schema(conn: sqlite3.Connection) -> None:
        """Create the audit tables (called by the store inside its schema transaction)."""
        for statement in SCHEMA_SQL.split(";"):
            if statement.strip():
                conn.execute(statement)

    @property
    def verify_key_bytes(self) -> bytes | None:
        return None if self._signer is None else bytes(self._signer.verify_key_bytes)

    # ---------------------------------------------------------------------------- append

    def append(
        self,
        event: str,
        details: Mapping[str, Any] | None = None,
        *,
        conn: sqlite3.Connection | None = None,
        time: datetime | None = None,
    ) -> AuditEntry:
        """Append one signed entry and return it.

        With ``conn`` (the connection of ``store.transaction()``) the entry commits or rolls
        back with the caller's state change. Without it the entry is committed before this
        returns (joining the store's transaction instead if one is open in this thread).
        Commits are durable: WAL with ``synchronous=FULL``.
        """
        if self._signer is None:
            raise AuditChainError("this audit log was opened without the audit signing key")
        if not isinstance(event, str) or not _EVENT_RE.fullmatch(event):
            raise ValueError("event must match [a-z][a-z0-9_]{0,63}")
        if event == KEY_ROTATION_EVENT:
            raise ValueError(f"{KEY_ROTATION_EVENT} is written by rotate_key only")
        details = {} if details is None else details
        if type(details) is not dict:
            if not isinstance(details, Mapping):
                raise TypeError(f"details must be a dict, got {type(details).__name__}")
            details = dict(details)
        check_json_value(details)
        encoded = canonical_json(details)
        if len(encoded) > self._max_details_bytes:
            raise ValueError(
                f"details encode to {len(encoded)} bytes, more than {self._max_details_bytes}: "
                "the audit log records decisions and counts, not data"
            )
        stamp = format_time(self._clock() if time is None else time)
        if conn is not None:
            if not conn.in_transaction:
                raise StoreError("append(conn=...) needs the connection of an open transaction")
            return self._append(conn, event, json.loads(encoded), stamp)
        with self._db.transaction() as tx:
            return self._append(tx, event, json.loads(encoded), stamp)

    def _append(
        self, conn: sqlite3.Connection, event: str, details: dict[str, Any], stamp: str
    ) -> AuditEntry:
        signer, own_key = self._signer, self._own_key
        if signer is None or own_key is None:
            raise AuditChainError("this audit log was opened without the audit signing key")
        head = _read_head(conn)
        last = conn.execute(
            "SELECT seq, entry_hash FROM audit_log ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        if head is None and last is None:
            seq, prev_hash = 0, GENESIS_HASH
        else:
            if (
                head is None
                or last is None
                or (last[0], last[1]) != (head.seq, head.hash)
                or head.signature is None
                or not _signature_ok(own_key, _head_message(head.count, head.hash), head.signature)
            ):
                raise AuditChainError(
                    "the audit log does not match its signed head; refusing to append to a "
                    "damaged chain (run verify to find the first bad entry)"
                )
            seq, prev_hash = head.count, head.hash
        body = {
            "seq": seq,
            "time": stamp,
            "event": event,
            "details": details,
            "prev_hash": prev_hash,
        }
        signature = signer.sign(ENTRY_CONTEXT + canonical_json(body)).hex()
        entry = AuditEntry(hash="", signature=signature, **body)
        raw = entry.canonical()
        digest = _sha256_hex(raw)
        conn.execute(
            "INSERT INTO audit_log (seq, time, event, entry, entry_hash) VALUES (?, ?, ?, ?, ?)",
            (seq, stamp, event, raw, digest),
        )
        head_signature = signer.sign(_head_message(seq + 1, digest)).hex()
        conn.execute(
            "INSERT INTO audit_head (id, seq, hash, signature) VALUES (1, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, "
            "signature = excluded.signature",
            (seq, digest, head_signature),
        )
        _log.debug("audit entry %d: %s", seq, event)
        return dataclasses.replace(entry, hash=digest)

    def rotate_key(self, new_key: AuditKey, *, time: datetime | None = None) -> AuditEntry:
        """Sign from now on with ``new_key``: one ``audit_key_rotated`` entry signed by the
        current key names both public keys; the head is re-signed by the new key in the same
        transaction, so the chain is never left signed by neither."""
        new_signer = _as_signer(new_key)
        old_signer = self._signer
        if old_signer is None:
            raise AuditChainError("this audit log was opened without the audit signing key")
        new_public = bytes(new_signer.verify_key_bytes)
        old_public = bytes(old_signer.verify_key_bytes)
        if new_public == old_public:
            raise ValueError("the new audit key is the current one")
        details = {"previous_public_key": old_public.hex(), "new_public_key": new_public.hex()}
        stamp = format_time(self._clock() if time is None else time)
        with self._db.transaction() as tx:
            entry = self._append(tx, KEY_ROTATION_EVENT, details, stamp)
            tx.execute(
                "UPDATE audit_head SET signature = ? WHERE id = 1",
                (new_signer.sign(_head_message(entry.seq + 1, entry.hash)).hex(),),
            )
        self._signer = new_signer
        self._own_key = _verify_key(new_public)
        return entry

    def head_signed_by(self, verify_key: VerifyKeyLike) -> bool:
        """Whether the stored head verifies under ``verify_key`` (which key is in force)."""
        head = self.head()
        if head.signature is None:
            return False
        return _signature_ok(
            _verify_key(verify_key), _head_message(head.count, head.hash), head.signature
        )

    # ------------------------------------------------------------------------------ read

    def head(self) -> AuditHead:
        """The stored signed head (count 0 and the genesis hash for an empty log)."""
        with self._db.snapshot() as conn:
            head = _read_head(conn)
        return head if head is not None else AuditHead(0, GENESIS_HASH, None)

    def __len__(self) -> int:
        with self._db.snapshot() as conn:
            return int(conn.execute("SELECT count(*) FROM audit_log").fetchone()[0])

    def entries(self, verify_key: VerifyKeyLike | None = None) -> list[AuditEntry]:
        """Every entry, checked against the chain (with ``verify_key``, or the signer's key)."""
        key = verify_key if verify_key is not None else self.verify_key_bytes
        if key is None:
            raise ValueError("pass the verify key: this log was opened without the signing key")
        with self._db.snapshot() as conn:
            start = key if verify_key is not None else _first_key(conn, key)
            checker = _ChainChecker(start, None)
            entries = [checker.feed(**row) for row in _iter_rows(conn)]
        if verify_key is None and bytes(checker._key) != bytes(_verify_key(key)):
            # Read with the signer's key: the rotations must lead to it (a prefix signed by
            # another key is only trusted through the key it rotated to).
            raise AuditVerificationError(None, "the chain's key rotations do not end at this key")
        return entries

    # ---------------------------------------------------------------------------- verify

    def verify(
        self, verify_key: VerifyKeys, *, expected_head: ExpectedHead | None = None
    ) -> AuditReport:
        """Check every entry, then the signed head, then ``expected_head`` if given.

        ``verify_key``: the log's first key (rotations are followed from it), or the key
        history, oldest first (then the chain's rotations must be exactly its keys).

        Raises :class:`~appliance.errors.AuditVerificationError` naming the first bad seq and
        the reason; returns an :class:`AuditReport` with the entry count otherwise. The stored
        head catches a deleted tail; it cannot catch a tail deleted together with the head row
        being replaced by an older genuine one (or a restored old database): only
        ``expected_head``, recorded outside the appliance, catches that.
        """
        checker = _ChainChecker(verify_key, expected_head)
        with self._db.snapshot() as conn:
            for row in _iter_rows(conn):
                checker.feed(**row)
            head = _read_head(conn)
        checker.check_signed_head(head, what="signed head (audit_head row)")
        return checker.report(stored_head_checked=True)

    # ---------------------------------------------------------------------------- export

    def export_jsonl(self, path: Path) -> AuditHead:
        """Write every entry (one canonical JSON object per line) and a signed-head trailer.

        The last line is ``{"audit_head":{"count":…,"hash":…,"signature":…}}``. The file is
        written to a temporary name, fsynced and renamed. Returns the exported head.
        """
        path = Path(path)
        with self._db.snapshot() as conn:
            head = _read_head(conn) or AuditHead(0, GENESIS_HASH, None)
            rows = [bytes(r[0]) for r in conn.execute("SELECT entry FROM audit_log ORDER BY seq")]
        trailer = canonical_json({"audit_head": head.to_json()})
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as out:
                for raw in rows:
                    out.write(raw + b"\n")
                out.write(trailer + b"\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StoreError(f"cannot export the audit log to {path}: {exc.strerror}") from exc
        return head


def verify_jsonl(
    path: Path, verify_key: VerifyKeys, expected_head: ExpectedHead | None = None
) -> AuditReport:
    """Verify an export of :meth:`AuditLog.export_jsonl` offline (no database needed).

    Every entry is checked in order, then the signed-head trailer (which catches a file cut
    short), then ``expected_head`` if given. Raises
    :class:`~appliance.errors.AuditVerificationError` at the first problem. An attacker who
    kept an older genuine export can present it as current; ``expected_head`` catches that.
    """
    checker = _ChainChecker(verify_key, expected_head)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}") from exc
    if data and not data.endswith(b"\n"):
        raise AuditVerificationError(None, "export does not end with a newline (cut short?)")
    lines = data.split(b"\n")[:-1] if data else []
    if not lines:
        raise AuditVerificationError(None, "export is empty: no signed-head trailer")
    *entry_lines, last = lines
    head = _parse_trailer(last, checker.count + len(entry_lines))
    for raw in entry_lines:
        checker.feed(raw)
    checker.check_signed_head(head, what="signed-head trailer")
    return checker.report(stored_head_checked=True)


def _parse_trailer(raw: bytes, position: int) -> AuditHead:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        obj = None
    if not isinstance(obj, dict) or set(obj) != {"audit_head"}:
        raise AuditVerificationError(
            None,
            f"the last line (line {position + 1}) is not the signed-head trailer: the export "
            "was cut short or edited",
        )
    head = obj["audit_head"]
    if (
        not isinstance(head, dict)
        or set(head) != {"count", "hash", "signature"}
        or type(head["count"]) is not int
        or not isinstance(head["hash"], str)
        or not (head["signature"] is None or isinstance(head["signature"], str))
    ):
        raise AuditVerificationError(None, "the signed-head trailer is malformed")
    return AuditHead(head["count"], head["hash"], head["signature"])


def _first_key(conn: sqlite3.Connection, current: VerifyKeyLike) -> VerifyKeyLike:
    """The key the log started with, as its first rotation names it (``current`` if none)."""
    row = conn.execute(
        "SELECT entry FROM audit_log WHERE event = ? ORDER BY seq LIMIT 1", (KEY_ROTATION_EVENT,)
    ).fetchone()
    if row is None:
        return current
    try:
        previous = json.loads(row[0])["details"]["previous_public_key"]
        return bytes.fromhex(previous)
    except (ValueError, KeyError, TypeError):
        return current  # the walk then names the bad entry


def _read_head(conn: sqlite3.Connection) -> AuditHead | None:
    row = conn.execute("SELECT seq, hash, signature FROM audit_head WHERE id = 1").fetchone()
    if row is None:
        return None
    return AuditHead(count=int(row[0]) + 1, hash=str(row[1]), signature=str(row[2]))


def _iter_rows(conn: sqlite3.Connection) -> Iterator[dict[str, Any]]:
    cursor: Iterable[tuple[Any, ...]] = conn.execute(
        "SELECT seq, event, time, entry_hash, entry FROM audit_log ORDER BY seq"
    )
    for seq, event, stamp, entry_hash, entry in cursor:
        raw = entry if isinstance(entry, bytes) else str(entry).encode("utf-8")
        yield {
            "raw": raw,
            "column_seq": seq,
            "column_event": event,
            "column_time": stamp,
            "column_hash": entry_hash,
        }
