"""Read a federation's audit log the way the tests assert on it: one event's details, in order."""

from __future__ import annotations

from pathlib import Path

from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import Deployment


def audit_details(where: Path | Deployment, event: str) -> list[dict]:
    """The details of every ``event`` entry in the folder's (or deployment's) audit log.

    Opens the real store (and closes it again), so a test sees exactly what an operator's
    ``sealagg audit`` would show, not a value held in memory."""
    folder = where.folder if isinstance(where, Deployment) else where
    store = open_store(FederationFolder.load(folder))
    try:
        return [e.details for e in store.audit.entries() if e.event == event]
    finally:
        store.close()
