"""Numbered schema migrations of the state database, applied in order at open.

Schema 1 is the first release (``store._SCHEMA_SQL``). Each later version is one entry of
:data:`MIGRATIONS`: statements that take a database of the version before it to this one.
A fresh database is created at schema 1 and migrated like any other, so a new install and an
upgraded one cannot differ. Every migration runs in one write transaction together with its
``schema_migrated`` audit entry: a crash leaves the old version intact, never a half-applied
one. Tests build a database of every earlier released version and open it
(tests/appliance/test_migrations.py).

Rules for a new migration: never edit a released one; only add tables, columns with defaults
or NULL, and indexes (an older sealagg refuses a newer version anyway); bump nothing else.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

__all__ = ["COLUMNS_ADDED", "LATEST", "MIGRATIONS", "TABLES_ADDED", "apply_one"]

#: Version 2: durable exclusions after a proven blame (issue 17). Databases of version 1 made
#: by that release may already hold the table (it was created on open then): IF NOT EXISTS.
_V2 = (
    """CREATE TABLE IF NOT EXISTS exclusions (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    round INTEGER REFERENCES rounds (id),
    reason TEXT NOT NULL,
    blamed_by TEXT,
    excluded_at TEXT NOT NULL,
    readmitted_at TEXT,
    readmitted_by TEXT
)""",
    """CREATE UNIQUE INDEX IF NOT EXISTS exclusions_active ON exclusions (name)
    WHERE readmitted_at IS NULL""",
)

#: Version 3 (issue 19): runs and run control, per-admin approvals (two-person rule) and
#: federated evaluations. Rounds of earlier versions belong to no run (``run`` NULL).
_V3 = (
    """CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    mode TEXT NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('created', 'running', 'paused', 'finished', 'stopped')),
    rounds INTEGER NOT NULL CHECK (rounds >= 0),
    rounds_done INTEGER NOT NULL DEFAULT 0 CHECK (rounds_done >= 0),
    hyperparameters TEXT NOT NULL,
    base_model_version INTEGER REFERENCES model_versions (version),
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    ended_at TEXT,
    reason TEXT
)""",
    "ALTER TABLE rounds ADD COLUMN run INTEGER REFERENCES runs (id)",
    "CREATE INDEX rounds_run ON rounds (run)",
    """CREATE TABLE approvals (
    id INTEGER PRIMARY KEY,
    round INTEGER NOT NULL REFERENCES rounds (id),
    version INTEGER NOT NULL REFERENCES model_versions (version),
    admin TEXT NOT NULL,
    approve INTEGER NOT NULL CHECK (approve IN (0, 1)),
    reason TEXT,
    at TEXT NOT NULL,
    UNIQUE (round, admin)
)""",
    """CREATE TABLE evaluations (
    id INTEGER PRIMARY KEY,
    evaluation_id TEXT NOT NULL UNIQUE,
    run INTEGER REFERENCES runs (id),
    version INTEGER NOT NULL REFERENCES model_versions (version),
    requested_by TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'done', 'failed')),
    created_at TEXT NOT NULL,
    closed_at TEXT,
    clients INTEGER NOT NULL DEFAULT 0 CHECK (clients >= 0),
    num_examples INTEGER NOT NULL DEFAULT 0 CHECK (num_examples >= 0),
    metrics TEXT
)""",
)

#: version -> the statements that take version - 1 to it.
MIGRATIONS: dict[int, tuple[str, ...]] = {2: _V2, 3: _V3}
LATEST = max(MIGRATIONS)
#: Tables each version adds (the store checks that a database of its version has them all).
TABLES_ADDED: dict[int, frozenset[str]] = {
    2: frozenset({"exclusions"}),
    3: frozenset({"runs", "approvals", "evaluations"}),
}
#: Columns each version adds to tables older than it (checked the same way: a database that
#: claims the version without them was damaged or made by hand).
COLUMNS_ADDED: dict[int, dict[str, frozenset[str]]] = {3: {"rounds": frozenset({"run"})}}


def apply_one(
    conn: sqlite3.Connection,
    version: int,
    audit: Callable[[int, int, sqlite3.Connection], None] | None,
) -> None:
    """Take the database on ``conn`` from ``version - 1`` to ``version`` inside the caller's
    transaction; ``audit(from, to, conn)`` records the step in the same transaction (None
    while creating a new database, whose ``store_created`` entry names the version)."""
    for statement in MIGRATIONS[version]:
        conn.execute(statement)
    conn.execute("UPDATE schema_version SET version = ?", (version,))
    if audit is not None:
        audit(version - 1, version, conn)
