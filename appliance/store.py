"""Durable state of one federation: an SQLite database (WAL, synchronous=FULL, foreign keys).

Every state change is one transaction that also appends its audit entry, so after a crash the
state and the audit log always agree. Use :meth:`Store.transaction` to group several changes
(and your own :meth:`AuditLog.append` calls with ``conn=tx``) into one atomic unit::

    with store.transaction() as tx:
        store.set_round_status(round_, "accepted")
        store.set_model_status(version, "accepted")
        store.audit.append("approval", {"round": round_, "by": "operator"}, conn=tx)

Transactions nest (inner ones are savepoints), and the store is safe to share between threads
(one lock serialises access to the connection). Every mutating operation audits itself:

=============================  ======================================================
operation                      audit event
=============================  ======================================================
(first open)                   ``store_created``
``add_participant``            ``client_added``
``revoke_participant``         ``client_revoked``
``exclude_participant``        ``client_excluded`` (each proven blame; one durable row)
``readmit_participant``        ``client_readmitted``
``open_round``                 ``round_opened``
``record_phase``               ``phase_recorded``
``set_round_status``           ``round_aborted`` if aborted, else ``round_status``
``abort_interrupted_rounds``   ``round_aborted`` per round (+ ``model_status`` for its
                               undecided model versions, which become rejected)
``add_model_version``          ``model_added``
``set_model_status``           ``model_published`` if accepted, else ``model_status``
=============================  ======================================================

Events that record no state change here (``config_loaded``, ``participants``, ``dropouts``,
``aggregate``, ``gate_decision``, ``approval``) are appended by the caller via ``store.audit``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from sealagg.appliance import migrations
from sealagg.appliance.audit import (
    MAX_DETAILS_BYTES,
    AuditKey,
    AuditLog,
    canonical_json,
    check_json_value,
    format_time,
)
from sealagg.appliance.errors import StoreError
from sealagg.appliance.models import (
    MODEL_STATUSES,
    ModelVersion,
    load_tensors,
    model_relpath,
    save_tensors,
)

__all__ = [
    "MODEL_STATUSES",
    "ROUND_STATUSES",
    "SCHEMA_VERSION",
    "STATE_FILENAME",
    "TERMINAL_ROUND_STATUSES",
    "ExclusionRecord",
    "FederationRecord",
    "ModelVersion",
    "ParticipantRecord",
    "PhaseTransition",
    "Round",
    "Store",
    "default_state_path",
]

#: The newest schema: schema 1 (below) plus the numbered migrations of appliance/migrations.py.
SCHEMA_VERSION = migrations.LATEST
#: The schema of the first release; a new database is created at it and then migrated.
_BASE_SCHEMA_VERSION = 1
STATE_FILENAME = "state.sqlite3"
ROUND_STATUSES = ("open", "aggregating", "pending_approval", "accepted", "rejected", "aborted")
TERMINAL_ROUND_STATUSES = frozenset({"accepted", "rejected", "aborted"})
_ROUND_RANK = {"open": 0, "aggregating": 1, "pending_approval": 2}
_MODEL_TRANSITIONS = {
    "candidate": frozenset({"pending", "accepted", "rejected"}),
    "pending": frozenset({"accepted", "rejected"}),
    "accepted": frozenset({"rejected"}),  # withdrawing a published model (roll back)
    "rejected": frozenset(),
}
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@:+\-]{0,127}")
_TOKEN_RE = re.compile(r"[a-z][a-z0-9_+\-]{0,31}")
_SERIAL_RE = re.compile(r"[0-9a-fA-F]{1,64}")
_MAX_TEXT = 1000
_ROUND_ID_BYTES = (16, 64)

_SCHEMA_SQL = f"""
CREATE TABLE schema_version (
    version INTEGER NOT NULL
);
CREATE TABLE federation (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    name TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE participants (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    cert_serial TEXT NOT NULL UNIQUE,
    identity_key BLOB NOT NULL CHECK (length(identity_key) = 32),
    status TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    added_at TEXT NOT NULL,
    revoked_at TEXT,
    revoke_reason TEXT
);
CREATE UNIQUE INDEX participants_active_name ON participants (name) WHERE status = 'active';
CREATE UNIQUE INDEX participants_active_key
    ON participants (identity_key) WHERE status = 'active';
CREATE TABLE rounds (
    id INTEGER PRIMARY KEY,
    round_id TEXT NOT NULL UNIQUE,
    mode TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ({", ".join(f"'{s}'" for s in ROUND_STATUSES)})),
    opened_at TEXT NOT NULL,
    closed_at TEXT,
    reason TEXT
);
CREATE TABLE phase_transitions (
    id INTEGER PRIMARY KEY,
    round INTEGER NOT NULL REFERENCES rounds (id),
    phase TEXT NOT NULL,
    at TEXT NOT NULL,
    clients_in INTEGER NOT NULL CHECK (clients_in >= 0),
    dropped TEXT NOT NULL
);
CREATE INDEX phase_transitions_round ON phase_transitions (round);
CREATE TABLE model_versions (
    version INTEGER PRIMARY KEY CHECK (version >= 1),
    parent INTEGER REFERENCES model_versions (version),
    round INTEGER REFERENCES rounds (id),
    sha256 TEXT NOT NULL CHECK (length(sha256) = 64),
    path TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ({", ".join(f"'{s}'" for s in MODEL_STATUSES)})),
    created_at TEXT NOT NULL,
    metrics TEXT
);
"""
_TABLES = frozenset(
    {
        "schema_version",
        "federation",
        "participants",
        "rounds",
        "phase_transitions",
        "model_versions",
        "audit_log",
        "audit_head",
    }
)


def _tables_of(version: int) -> frozenset[str]:
    """The tables a database of schema ``version`` must hold."""
    added = (migrations.TABLES_ADDED.get(v, frozenset()) for v in range(2, version + 1))
    return _TABLES.union(*added)


def _missing_columns(conn: sqlite3.Connection, version: int) -> list[str]:
    """``table.column`` for every column migrations up to ``version`` added that is absent."""
    missing = []
    for v in range(2, version + 1):
        for table, columns in migrations.COLUMNS_ADDED.get(v, {}).items():
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            missing += [f"{table}.{c}" for c in sorted(columns - present)]
    return missing


# SQLite primary result codes -> what an operator should be told.
_SQLITE_CAUSES = {
    3: "permission denied",
    5: "the database is locked by another process",
    6: "a table is locked",
    8: "the database is read-only (read-only folder, file or mount, or opened read-only)",
    10: "disk I/O error (failing or removed storage, or a full disk)",
    11: "the database file is corrupt (database disk image is malformed)",
    13: "the disk is full (or the database reached its size limit)",
    14: (
        "cannot open the database file: the folder does not exist or is not writable, "
        "or the path is not a regular file"
    ),
    19: "a constraint was violated",
    23: "access denied",
    26: "the file is not an SQLite database (corrupt, or some other file)",
}
_MESSAGE_CAUSES = (
    ("readonly", 8),
    ("read-only", 8),
    ("disk is full", 13),
    ("not a database", 26),
    ("malformed", 11),
    ("unable to open", 14),
    ("locked", 5),
    ("disk i/o", 10),
)


def default_state_path(folder: Path) -> Path:
    """Where a federation folder keeps its state database."""
    return Path(folder) / STATE_FILENAME


def _store_error(exc: sqlite3.Error, path: Path, action: str) -> StoreError:
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary not in _SQLITE_CAUSES:
        text = str(exc).lower()
        primary = next((c for needle, c in _MESSAGE_CAUSES if needle in text), None)
    cause = _SQLITE_CAUSES.get(primary, "database error") if primary is not None else None
    detail = f"{cause} (SQLite: {exc})" if cause else f"SQLite: {exc}"
    return StoreError(f"{path}: cannot {action}: {detail}")


def _utc_now() -> datetime:
    return datetime.now(UTC)


# ------------------------------------------------------------------------------ records


@dataclasses.dataclass(frozen=True)
class FederationRecord:
    name: str
    created: str


@dataclasses.dataclass(frozen=True)
class ParticipantRecord:
    name: str
    cert_serial: str
    identity_key: bytes
    status: str
    added_at: str
    revoked_at: str | None
    revoke_reason: str | None


@dataclasses.dataclass(frozen=True)
class ExclusionRecord:
    """A client kept out of rounds after a proven blame, until an operator readmits it."""

    name: str
    round: int | None
    reason: str
    blamed_by: str | None
    excluded_at: str


@dataclasses.dataclass(frozen=True)
class Round:
    id: int
    round_id: bytes
    mode: str
    status: str
    opened_at: str
    closed_at: str | None
    reason: str | None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_ROUND_STATUSES


@dataclasses.dataclass(frozen=True)
class PhaseTransition:
    round: int
    phase: str
    at: str
    clients_in: int
    dropped: tuple[int | str, ...]


_SELECT_PARTICIPANTS = (
    "SELECT name, cert_serial, identity_key, status, added_at, revoked_at, revoke_reason "
    "FROM participants"
)
_SELECT_ROUNDS = "SELECT id, round_id, mode, status, opened_at, closed_at, reason FROM rounds"
_SELECT_MODELS = (
    "SELECT version, parent, round, sha256, path, status, created_at, metrics FROM model_versions"
)


def _participant(row: tuple[Any, ...]) -> ParticipantRecord:
    return ParticipantRecord(row[0], row[1], bytes(row[2]), row[3], row[4], row[5], row[6])


def _round(row: tuple[Any, ...]) -> Round:
    return Round(row[0], bytes.fromhex(row[1]), row[2], row[3], row[4], row[5], row[6])


def _model(row: tuple[Any, ...]) -> ModelVersion:
    metrics = None if row[7] is None else json.loads(row[7])
    return ModelVersion(row[0], row[1], row[2], row[3], row[4], row[5], row[6], metrics)


# ------------------------------------------------------------------------------ validation


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"{what} must be 1-128 of [A-Za-z0-9_.@:+-], starting alphanumeric")
    return name


def _check_token(value: object, what: str) -> str:
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise ValueError(f"{what} must match [a-z][a-z0-9_+-]{{0,31}}, got {value!r}")
    return value


def _check_text(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        raise ValueError(f"{what} must be a string of at most {_MAX_TEXT} characters")
    check_json_value(value, what)
    return value


def _check_int(value: object, what: str) -> int:
    if type(value) is not int or value < 0:
        raise TypeError(f"{what} must be a non-negative int")
    return value


def _serial(value: object) -> str:
    """Certificate serials are stored as lowercase hex without leading zeros."""
    if type(value) is int and value >= 0:
        return format(value, "x")
    if isinstance(value, str) and _SERIAL_RE.fullmatch(value):
        return value.lower().lstrip("0") or "0"
    raise ValueError("cert_serial must be a non-negative int or a hex string")


def _check_metrics(metrics: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if metrics is None:
        return None
    if not isinstance(metrics, Mapping):
        raise TypeError("metrics must be a dict of JSON values")
    metrics = dict(metrics)
    check_json_value(metrics, "metrics")
    if len(canonical_json(metrics)) > MAX_DETAILS_BYTES // 2:
        raise ValueError("metrics are too large: they are summary numbers, not data")
    return json.loads(canonical_json(metrics))


# ----------------------------------------------------------------------------------- store


class Store:
    """The state database of one federation. Open with :meth:`Store.open`."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        read_only: bool,
        audit_key: AuditKey | None,
        clock: Callable[[], datetime] | None,
    ) -> None:
        self._conn: sqlite3.Connection | None = conn
        self.path = path
        self.folder = path.parent
        self.read_only = read_only
        self._clock = clock or _utc_now
        self._lock = threading.RLock()
        self._depth = 0
        self.audit = AuditLog(self, audit_key, clock=self._clock)

    # -------------------------------------------------------------------------- opening

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        audit_key: AuditKey | None = None,
        federation: str | None = None,
        clock: Callable[[], datetime] | None = None,
        read_only: bool = False,
    ) -> Store:
        """Open (or, on first use, create) the state database at ``path``.

        ``path`` is the database file, normally ``<federation folder>/state.sqlite3``
        (:func:`default_state_path`); model files go to ``<its folder>/models``. Creating a
        database needs ``audit_key`` (the first audit entry records the creation) and names
        the federation ``federation`` or, by default, after the folder. Without ``audit_key``
        the store can be read and verified but every change is refused. ``read_only`` opens
        with SQLite's ``mode=ro``. ``clock`` returns aware datetimes (tests pass a fake one).
        """
        path = Path(path)
        if path.is_dir():
            raise StoreError(
                f"{path} is a directory, not a database file (the state database is "
                f"<federation folder>/{STATE_FILENAME})"
            )
        if not path.parent.is_dir():
            raise StoreError(f"{path}: the folder {path.parent} does not exist")
        if read_only and not path.exists():
            raise StoreError(f"{path} does not exist (opened read-only, so it is not created)")
        mode = "ro" if read_only else "rwc"
        uri = f"file:{urllib.parse.quote(str(path.absolute()))}?mode={mode}"
        try:
            conn = sqlite3.connect(
                uri, uri=True, isolation_level=None, check_same_thread=False, timeout=10.0
            )
        except sqlite3.Error as exc:
            raise _store_error(exc, path, "open the state database") from exc
        try:
            store = cls(conn, path, read_only=read_only, audit_key=audit_key, clock=clock)
            store._setup(federation)
        except BaseException:
            conn.close()
            raise
        return store

    def _setup(self, federation: str | None) -> None:
        conn = self._connection()
        try:
            if not self.read_only:
                journal = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(journal).lower() != "wal":
                    raise StoreError(f"{self.path}: cannot switch to WAL (got {journal!r})")
                conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA trusted_schema = OFF")
            tables = self._tables(conn)
        except sqlite3.Error as exc:
            raise _store_error(exc, self.path, "open the state database") from exc
        if not tables:
            self._create(federation)
            tables = self._tables(conn)
        version = self._check_schema(tables)
        if version < SCHEMA_VERSION:
            self._migrate(version)

    def _migrate(self, version: int) -> None:
        """Bring an older database to :data:`SCHEMA_VERSION`, one audited step at a time."""
        if self.read_only:
            raise StoreError(
                f"{self.path} has schema version {version}, older than this sealagg's "
                f"{SCHEMA_VERSION}: start the appliance (or any writing command) once to "
                "migrate it; opened read-only, it was left untouched"
            )
        self._require_audit()

        def audit(old: int, new: int, tx: sqlite3.Connection) -> None:
            self.audit.append("schema_migrated", {"from": old, "to": new}, conn=tx)

        for step in range(version, SCHEMA_VERSION):
            with self.transaction() as tx:
                current = tx.execute("SELECT version FROM schema_version").fetchone()[0]
                if current != step:  # another process migrated meanwhile
                    continue
                try:
                    migrations.apply_one(tx, step + 1, audit)
                except sqlite3.Error as exc:
                    raise _store_error(exc, self.path, f"migrate to schema {step + 1}") from exc
        missing = _tables_of(SCHEMA_VERSION) - self._tables(self._connection())
        if missing:
            raise StoreError(f"{self.path} is missing tables {sorted(missing)}: damaged")

    @staticmethod
    def _tables(conn: sqlite3.Connection) -> set[str]:
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
        return {name for (name,) in rows}

    def _create(self, federation: str | None) -> None:
        if self.read_only:
            raise StoreError(f"{self.path} is empty: not a sealagg state database")
        if self.audit.verify_key_bytes is None:
            raise StoreError(f"{self.path}: creating a state database needs the audit signing key")
        name = _check_name(federation if federation is not None else self.folder.name, "federation")
        with self.transaction() as tx:
            if self._tables(tx):  # another process created it meanwhile
                return
            for statement in _SCHEMA_SQL.split(";"):
                if statement.strip():
                    tx.execute(statement)
            AuditLog.create_schema(tx)
            tx.execute("INSERT INTO schema_version (version) VALUES (?)", (_BASE_SCHEMA_VERSION,))
            now = self._now()
            tx.execute("INSERT INTO federation (id, name, created) VALUES (1, ?, ?)", (name, now))
            self.audit.append(
                "store_created",
                {"federation": name, "schema_version": SCHEMA_VERSION},
                conn=tx,
            )
            # A new database takes the same migrations as an upgraded one, in this transaction.
            for version in range(_BASE_SCHEMA_VERSION + 1, SCHEMA_VERSION + 1):
                migrations.apply_one(tx, version, None)

    def _check_schema(self, tables: set[str]) -> int:
        """The database's schema version, after refusing what this sealagg cannot use."""
        conn = self._connection()
        if "schema_version" not in tables:
            raise StoreError(
                f"{self.path} is not a sealagg state database (no schema_version table)"
            )
        try:
            rows = conn.execute("SELECT version FROM schema_version").fetchall()
            extras = conn.execute(
                "SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'view')"
            ).fetchall()
        except sqlite3.Error as exc:
            raise _store_error(exc, self.path, "read the schema version") from exc
        if len(rows) != 1 or type(rows[0][0]) is not int:
            raise StoreError(f"{self.path}: the schema_version table is damaged")
        version = rows[0][0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this sealagg supports "
                f"({SCHEMA_VERSION}): upgrade sealagg; the database was left untouched"
            )
        if version < _BASE_SCHEMA_VERSION:
            raise StoreError(f"{self.path}: the schema_version table is damaged")
        missing = _tables_of(version) - tables
        if missing:
            raise StoreError(f"{self.path} is missing tables {sorted(missing)}: damaged")
        try:
            columns = _missing_columns(conn, version)
        except sqlite3.Error as exc:
            raise _store_error(exc, self.path, "read the schema") from exc
        if columns:
            raise StoreError(f"{self.path} is missing columns {columns}: damaged")
        if extras:
            found = ", ".join(f"{kind} {name}" for kind, name in extras)
            raise StoreError(
                f"{self.path} contains {found}, which sealagg never creates: the database was "
                "modified outside the appliance; refusing to use it"
            )
        return version

    # ------------------------------------------------------------------ connection & txns

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"{self.path}: the store is closed")
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _now(self) -> str:
        return format_time(self._clock())

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``); nested calls become savepoints.

        Yields the connection to pass to ``store.audit.append(..., conn=tx)``. Commits when
        the block ends normally (durably: WAL, synchronous=FULL), rolls back on any exception.
        """
        with self._lock:
            conn = self._connection()
            if self._depth:
                savepoint = f"sp{self._depth}"
                self._execute(conn, f"SAVEPOINT {savepoint}", "start a savepoint")
                self._depth += 1
                try:
                    yield conn
                except BaseException as exc:
                    self._depth -= 1
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute(f"ROLLBACK TO {savepoint}")
                        conn.execute(f"RELEASE {savepoint}")
                    if isinstance(exc, sqlite3.Error):
                        raise _store_error(exc, self.path, "write") from exc
                    raise
                self._depth -= 1
                self._execute(conn, f"RELEASE {savepoint}", "release a savepoint")
                return
            self._execute(conn, "BEGIN IMMEDIATE", "start a write transaction")
            self._depth = 1
            try:
                yield conn
            except BaseException as exc:
                self._depth = 0
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise _store_error(exc, self.path, "write") from exc
                raise
            self._depth = 0
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise _store_error(exc, self.path, "commit") from exc

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A consistent read view (joins the open transaction if there is one)."""
        with self._lock:
            conn = self._connection()
            if self._depth or conn.in_transaction:
                try:
                    yield conn
                except sqlite3.Error as exc:
                    raise _store_error(exc, self.path, "read") from exc
                return
            self._execute(conn, "BEGIN", "start a read transaction")
            try:
                yield conn
            except sqlite3.Error as exc:
                raise _store_error(exc, self.path, "read") from exc
            finally:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("COMMIT")

    def _execute(self, conn: sqlite3.Connection, sql: str, action: str) -> None:
        try:
            conn.execute(sql)
        except sqlite3.Error as exc:
            raise _store_error(exc, self.path, action) from exc

    def _require_audit(self) -> None:
        if self.audit.verify_key_bytes is None:
            raise StoreError(
                "this store was opened without the audit signing key: state changes must be "
                "audited, so they are refused"
            )

    # ----------------------------------------------------------------------- federation

    def federation(self) -> FederationRecord:
        with self.snapshot() as conn:
            row = conn.execute("SELECT name, created FROM federation WHERE id = 1").fetchone()
        if row is None:
            raise StoreError(f"{self.path}: the federation row is missing")
        return FederationRecord(row[0], row[1])

    # --------------------------------------------------------------------- participants

    def add_participant(
        self, name: str, *, cert_serial: int | str, identity_key: bytes
    ) -> ParticipantRecord:
        """Register an active participant (unique active name, serial and identity key)."""
        self._require_audit()
        name = _check_name(name, "participant name")
        serial = _serial(cert_serial)
        if not isinstance(identity_key, bytes) or len(identity_key) != 32:
            raise ValueError("identity_key must be the 32-byte Ed25519 public key")
        with self.transaction() as tx:
            if tx.execute(
                "SELECT 1 FROM participants WHERE name = ? AND status = 'active'", (name,)
            ).fetchone():
                raise StoreError(f"participant {name!r} already exists and is active")
            if tx.execute("SELECT 1 FROM participants WHERE cert_serial = ?", (serial,)).fetchone():
                raise StoreError(f"certificate serial {serial} is already registered")
            if tx.execute(
                "SELECT 1 FROM participants WHERE identity_key = ? AND status = 'active'",
                (identity_key,),
            ).fetchone():
                raise StoreError("this identity key already belongs to an active participant")
            now = self._now()
            tx.execute(
                "INSERT INTO participants (name, cert_serial, identity_key, status, added_at) "
                "VALUES (?, ?, ?, 'active', ?)",
                (name, serial, identity_key, now),
            )
            self.audit.append(
                "client_added",
                {"name": name, "cert_serial": serial, "identity_key": identity_key.hex()},
                conn=tx,
            )
        return ParticipantRecord(name, serial, identity_key, "active", now, None, None)

    def revoke_participant(self, name: str, *, reason: str | None = None) -> ParticipantRecord:
        """Mark the active participant ``name`` revoked (kept for the record)."""
        self._require_audit()
        reason = _check_text(reason, "reason")
        with self.transaction() as tx:
            row = tx.execute(
                "SELECT id, name, cert_serial, identity_key, status, added_at, revoked_at, "
                "revoke_reason FROM participants WHERE name = ? AND status = 'active'",
                (name,),
            ).fetchone()
            if row is None:
                raise StoreError(f"no active participant named {name!r}")
            now = self._now()
            tx.execute(
                "UPDATE participants SET status = 'revoked', revoked_at = ?, revoke_reason = ? "
                "WHERE id = ?",
                (now, reason, row[0]),
            )
            self.audit.append(
                "client_revoked",
                {"name": name, "cert_serial": row[2], "reason": reason},
                conn=tx,
            )
        return dataclasses.replace(
            _participant(row[1:]), status="revoked", revoked_at=now, revoke_reason=reason
        )

    def participants(self, active_only: bool = True) -> list[ParticipantRecord]:
        with self.snapshot() as conn:
            rows = conn.execute(
                _SELECT_PARTICIPANTS + " WHERE status = 'active' OR ? ORDER BY id",
                (0 if active_only else 1,),
            ).fetchall()
        return [_participant(row) for row in rows]

    # ---------------------------------------------------------------------- exclusions

    def exclude_participant(
        self, name: str, *, round: int | None, reason: str, blamed_by: str | None = None
    ) -> bool:
        """Keep ``name`` out of later rounds after a proven blame (audited ``client_excluded``).

        Every call is audited (each blame is its own evidence); the durable exclusion is
        made once and lasts until :meth:`readmit_participant`. Returns True when it is new.
        """
        self._require_audit()
        name = _check_name(name, "participant name")
        reason = _check_text(reason, "reason") or "proven blame"
        blamed_by = None if blamed_by is None else _check_name(blamed_by, "blamed_by")
        if round is not None:
            _check_int(round, "round")
        with self.transaction() as tx:
            active = tx.execute(
                "SELECT 1 FROM exclusions WHERE name = ? AND readmitted_at IS NULL", (name,)
            ).fetchone()
            if active is None:
                tx.execute(
                    "INSERT INTO exclusions (name, round, reason, blamed_by, excluded_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (name, round, reason, blamed_by, self._now()),
                )
            self.audit.append(
                "client_excluded",
                {"client": name, "round": round, "reason": reason, "blamed_by": blamed_by},
                conn=tx,
            )
        return active is None

    def readmit_participant(self, name: str, *, by: str = "operator") -> ExclusionRecord:
        """End ``name``'s exclusion (audited ``client_readmitted``); StoreError if none."""
        self._require_audit()
        name = _check_name(name, "participant name")
        by = _check_text(by, "by") or "operator"
        with self.transaction() as tx:
            row = tx.execute(
                "SELECT id, name, round, reason, blamed_by, excluded_at FROM exclusions "
                "WHERE name = ? AND readmitted_at IS NULL",
                (name,),
            ).fetchone()
            if row is None:
                raise StoreError(f"{name!r} is not excluded")
            tx.execute(
                "UPDATE exclusions SET readmitted_at = ?, readmitted_by = ? WHERE id = ?",
                (self._now(), by, row[0]),
            )
            self.audit.append(
                "client_readmitted",
                {"client": name, "by": by, "excluded_in_round": row[2], "reason": row[3]},
                conn=tx,
            )
        return ExclusionRecord(*row[1:])

    def excluded_participants(self) -> dict[str, ExclusionRecord]:
        """Clients excluded now (after a proven blame, not readmitted), by name."""
        with self.snapshot() as conn:
            if "exclusions" not in self._tables(conn):  # read-only, created by an older sealagg
                return {}
            rows = conn.execute(
                "SELECT name, round, reason, blamed_by, excluded_at FROM exclusions "
                "WHERE readmitted_at IS NULL ORDER BY id"
            ).fetchall()
        return {row[0]: ExclusionRecord(*row) for row in rows}

    # --------------------------------------------------------------------------- rounds

    def open_round(self, mode: str, round_id: bytes, *, run: int | None = None) -> int:
        """Record a new open round; returns its number (the ``round`` of other calls).
        ``run``: the row id of the run it belongs to (appliance/run_store.py), if any."""
        self._require_audit()
        mode = _check_token(mode, "mode")
        low, high = _ROUND_ID_BYTES
        if not isinstance(round_id, bytes) or not low <= len(round_id) <= high:
            raise ValueError(f"round_id must be {low}-{high} bytes")
        with self.transaction() as tx:
            if tx.execute("SELECT 1 FROM rounds WHERE round_id = ?", (round_id.hex(),)).fetchone():
                raise StoreError("this round_id was used before: round ids are never reused")
            cursor = tx.execute(
                "INSERT INTO rounds (round_id, mode, status, opened_at, run) "
                "VALUES (?, ?, 'open', ?, ?)",
                (round_id.hex(), mode, self._now(), run),
            )
            number = int(cursor.lastrowid or 0)
            details: dict[str, Any] = {"round": number, "round_id": round_id.hex(), "mode": mode}
            if run is not None:
                details["run"] = run
            self.audit.append("round_opened", details, conn=tx)
        return number

    def _get_round(self, conn: sqlite3.Connection, number: int) -> Round:
        _check_int(number, "round")
        row = conn.execute(_SELECT_ROUNDS + " WHERE id = ?", (number,)).fetchone()
        if row is None:
            raise StoreError(f"there is no round {number}")
        return _round(row)

    def round(self, number: int) -> Round:
        with self.snapshot() as conn:
            return self._get_round(conn, number)

    def rounds(self) -> list[Round]:
        with self.snapshot() as conn:
            rows = conn.execute(_SELECT_ROUNDS + " ORDER BY id").fetchall()
        return [_round(row) for row in rows]

    def record_phase(
        self,
        round: int,
        phase: str,
        clients_in: int,
        dropped: Sequence[int | str] = (),
    ) -> PhaseTransition:
        """Record that ``round`` finished ``phase`` with ``clients_in`` clients; ``dropped``
        lists the clients (ids or names) that dropped out in this phase."""
        self._require_audit()
        phase = _check_token(phase, "phase")
        _check_int(clients_in, "clients_in")
        if isinstance(dropped, str | bytes) or not isinstance(dropped, Sequence):
            raise TypeError("dropped must be a list of client ids or names")
        dropped = tuple(dropped)
        for client in dropped:
            if not (type(client) is int or isinstance(client, str)):
                raise TypeError("dropped must hold client ids (int) or names (str)")
        check_json_value(list(dropped), "dropped")
        with self.transaction() as tx:
            current = self._get_round(tx, round)
            if current.terminal:
                raise StoreError(f"round {round} is {current.status}: no more phases")
            now = self._now()
            tx.execute(
                "INSERT INTO phase_transitions (round, phase, at, clients_in, dropped) "
                "VALUES (?, ?, ?, ?, ?)",
                (round, phase, now, clients_in, canonical_json(list(dropped)).decode("utf-8")),
            )
            self.audit.append(
                "phase_recorded",
                {
                    "round": round,
                    "phase": phase,
                    "clients_in": clients_in,
                    "dropped": list(dropped),
                },
                conn=tx,
            )
        return PhaseTransition(round, phase, now, clients_in, dropped)

    def phases(self, round: int) -> list[PhaseTransition]:
        with self.snapshot() as conn:
            rows = conn.execute(
                "SELECT round, phase, at, clients_in, dropped FROM phase_transitions "
                "WHERE round = ? ORDER BY id",
                (round,),
            ).fetchall()
        return [PhaseTransition(r[0], r[1], r[2], r[3], tuple(json.loads(r[4]))) for r in rows]

    def set_round_status(
        self,
        round: int,
        status: str,
        reason: str | None = None,
    ) -> Round:
        """Move a round forward: open → aggregating → pending_approval → accepted, rejected or
        aborted (steps may be skipped; terminal states are final)."""
        self._require_audit()
        if status not in ROUND_STATUSES:
            raise ValueError(f"round status must be one of {ROUND_STATUSES}")
        reason = _check_text(reason, "reason")
        with self.transaction() as tx:
            current = self._get_round(tx, round)
            if current.terminal:
                raise StoreError(
                    f"round {round} is already {current.status}; it cannot become {status}"
                )
            if status not in TERMINAL_ROUND_STATUSES and (
                _ROUND_RANK[status] <= _ROUND_RANK[current.status]
            ):
                raise StoreError(f"round {round} cannot go from {current.status} to {status}")
            closed = self._now() if status in TERMINAL_ROUND_STATUSES else None
            tx.execute(
                "UPDATE rounds SET status = ?, closed_at = ?, reason = ? WHERE id = ?",
                (status, closed, reason, round),
            )
            self.audit.append(
                "round_aborted" if status == "aborted" else "round_status",
                {
                    "round": round,
                    "status": status,
                    "previous": current.status,
                    "reason": reason,
                },
                conn=tx,
            )
        return dataclasses.replace(current, status=status, closed_at=closed, reason=reason)

    def abort_interrupted_rounds(self, reason: str) -> list[int]:
        """On restart: abort every round not in a terminal state, and reject its undecided
        (candidate or pending) model versions. Everything in one audited transaction."""
        self._require_audit()
        reason = _check_text(reason, "reason")
        aborted: list[int] = []
        with self.transaction() as tx:
            rows = tx.execute(
                "SELECT id, status, round_id FROM rounds "
                "WHERE status NOT IN ('accepted', 'rejected', 'aborted') ORDER BY id"
            ).fetchall()
            now = self._now()
            for number, previous, round_id in rows:
                tx.execute(
                    "UPDATE rounds SET status = 'aborted', closed_at = ?, reason = ? WHERE id = ?",
                    (now, reason, number),
                )
                self.audit.append(
                    "round_aborted",
                    {
                        "round": number,
                        "round_id": round_id,
                        "previous": previous,
                        "reason": reason,
                        "interrupted": True,
                    },
                    conn=tx,
                )
                models = tx.execute(
                    "SELECT version, status FROM model_versions "
                    "WHERE round = ? AND status IN ('candidate', 'pending') ORDER BY version",
                    (number,),
                ).fetchall()
                for version, model_status in models:
                    tx.execute(
                        "UPDATE model_versions SET status = 'rejected' WHERE version = ?",
                        (version,),
                    )
                    self.audit.append(
                        "model_status",
                        {
                            "version": version,
                            "status": "rejected",
                            "previous": model_status,
                            "reason": f"round {number} aborted",
                        },
                        conn=tx,
                    )
                aborted.append(number)
        return aborted

    # --------------------------------------------------------------------------- models

    def add_model_version(
        self,
        tensors: Mapping[str, np.ndarray],
        *,
        parent: int | None,
        round: int | None = None,
        status: str,
        metrics: Mapping[str, Any] | None = None,
    ) -> ModelVersion:
        """Store a model version: the file is durably written first, then the row and its
        audit entry commit together. ``parent=None, round=None`` is a base model."""
        self._require_audit()
        if status not in MODEL_STATUSES:
            raise ValueError(f"model status must be one of {MODEL_STATUSES}")
        if parent is not None:
            _check_int(parent, "parent")
        if round is not None:
            _check_int(round, "round")
            if parent is None:
                raise ValueError("a model produced by a round needs its parent version")
        clean_metrics = _check_metrics(metrics)
        # Refuse early (before writing a file) when the references are wrong.
        with self.snapshot() as conn:
            self._check_model_refs(conn, parent, round)
        sha, relpath = save_tensors(self.folder, tensors)
        with self.transaction() as tx:
            self._check_model_refs(tx, parent, round)
            version = int(
                tx.execute("SELECT coalesce(max(version), 0) + 1 FROM model_versions").fetchone()[0]
            )
            now = self._now()
            metrics_text = (
                None if clean_metrics is None else canonical_json(clean_metrics).decode("utf-8")
            )
            tx.execute(
                "INSERT INTO model_versions (version, parent, round, sha256, path, status, "
                "created_at, metrics) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (version, parent, round, sha, relpath, status, now, metrics_text),
            )
            self.audit.append(
                "model_added",
                {
                    "version": version,
                    "parent": parent,
                    "round": round,
                    "sha256": sha,
                    "status": status,
                    "metrics": clean_metrics,
                },
                conn=tx,
            )
        return ModelVersion(version, parent, round, sha, relpath, status, now, clean_metrics)

    def _check_model_refs(
        self, conn: sqlite3.Connection, parent: int | None, round_: int | None
    ) -> None:
        if (
            parent is not None
            and not conn.execute(
                "SELECT 1 FROM model_versions WHERE version = ?", (parent,)
            ).fetchone()
        ):
            raise StoreError(f"parent model version {parent} does not exist")
        if round_ is not None:
            self._get_round(conn, round_)

    def _get_model(self, conn: sqlite3.Connection, version: int) -> ModelVersion:
        _check_int(version, "version")
        row = conn.execute(
            _SELECT_MODELS + " WHERE version = ?",
            (version,),
        ).fetchone()
        if row is None:
            raise StoreError(f"there is no model version {version}")
        return _model(row)

    def set_model_status(self, version: int, status: str) -> ModelVersion:
        """candidate → pending/accepted/rejected, pending → accepted/rejected, and
        accepted → rejected (withdrawing a published model); rejected is final."""
        self._require_audit()
        if status not in MODEL_STATUSES:
            raise ValueError(f"model status must be one of {MODEL_STATUSES}")
        with self.transaction() as tx:
            current = self._get_model(tx, version)
            if status not in _MODEL_TRANSITIONS[current.status]:
                raise StoreError(
                    f"model version {version} cannot go from {current.status} to {status}"
                )
            tx.execute("UPDATE model_versions SET status = ? WHERE version = ?", (status, version))
            self.audit.append(
                "model_published" if status == "accepted" else "model_status",
                {
                    "version": version,
                    "status": status,
                    "previous": current.status,
                    "sha256": current.sha256,
                },
                conn=tx,
            )
        return dataclasses.replace(current, status=status)

    def set_model_metrics(self, version: int, metrics: Mapping[str, Any]) -> ModelVersion:
        """Record a version's evaluation (e.g. the vendor gate's holdout metrics), audited.

        Write-once: the figures a gate compared against must not change afterwards."""
        self._require_audit()
        clean = _check_metrics(metrics)
        with self.transaction() as tx:
            current = self._get_model(tx, version)
            if current.metrics is not None:
                raise StoreError(f"model version {version} already has metrics recorded")
            text = canonical_json(clean).decode("utf-8")
            tx.execute("UPDATE model_versions SET metrics = ? WHERE version = ?", (text, version))
            self.audit.append(
                "model_metrics",
                {"version": version, "sha256": current.sha256, "metrics": clean},
                conn=tx,
            )
        return dataclasses.replace(current, metrics=clean)

    def model_version(self, version: int) -> ModelVersion:
        with self.snapshot() as conn:
            return self._get_model(conn, version)

    def model_versions(self) -> list[ModelVersion]:
        with self.snapshot() as conn:
            rows = conn.execute(_SELECT_MODELS + " ORDER BY version").fetchall()
        return [_model(row) for row in rows]

    def current_model(self) -> ModelVersion | None:
        """The accepted model version with the highest number, or None."""
        with self.snapshot() as conn:
            row = conn.execute(
                _SELECT_MODELS + " WHERE status = 'accepted' ORDER BY version DESC LIMIT 1"
            ).fetchone()
        return None if row is None else _model(row)

    def load_model(self, version: int) -> dict[str, np.ndarray]:
        """The tensors of ``version``, after checking the file's SHA-256 against the row."""
        model = self.model_version(version)
        if model.path != model_relpath(model.sha256):
            raise StoreError(
                f"model version {version}: recorded path {model.path!r} does not match its "
                "hash; the database was edited"
            )
        return load_tensors(self.folder, model.sha256)
