"""Model-version operations beyond the store's rows: rolling back to an earlier version.

A rollback never edits history: it appends a new accepted version whose file is the earlier
version's file (content-addressed, so the tensors are byte-for-byte the same), with the same
metrics, ``parent`` = the restored version and no round. The store's current model is the
newest accepted version, so the next round trains from it and the vendor gate compares
against its metrics. A ``model_rollback`` audit entry names who did it and why; the new
version row and that entry commit in one transaction (a crash between them leaves neither).

The server optimizer continues with the state that belonged to the restored version
(:mod:`appliance.optimizer_state`): the momenta the federation had when that version was
current, not those of the rounds rolled back. The audit entry names that version
(``optimizer_state_of``; null: a fresh state, the restored version being a base model).
"""

from __future__ import annotations

from sealagg.appliance.errors import StoreError
from sealagg.appliance.models import ModelVersion
from sealagg.appliance.optimizer_state import state_origin
from sealagg.appliance.store import Store

__all__ = ["rollback", "superseded_during_round"]


def rollback(store: Store, version: int, *, by: str, reason: str = "") -> ModelVersion:
    """Make the accepted ``version`` current again; returns the new (restored) version row."""
    tensors = store.load_model(version)  # checks the file against its SHA-256
    with store.transaction() as tx:  # the checks, the new row and its audit entry: one unit
        target = store.model_version(version)
        if target.status != "accepted":
            raise StoreError(
                f"model version {version} is {target.status}: only an accepted version (one "
                "that passed the gates) can be restored"
            )
        current = store.current_model()
        if current is not None and current.sha256 == target.sha256:
            raise StoreError(f"model version {version}'s weights are already current")
        restored = store.add_model_version(
            tensors, parent=version, status="accepted", metrics=target.metrics
        )
        if restored.sha256 != target.sha256:  # cannot happen: same tensors, same bytes
            raise StoreError("restored weights differ from the original file")
        store.audit.append(
            "model_rollback",
            {
                "from_version": None if current is None else current.version,
                "to_version": version,
                "new_version": restored.version,
                "sha256": restored.sha256,
                "optimizer_state_of": state_origin(store, version),
                "by": by,
                "reason": reason,
            },
            conn=tx,
        )
    return restored


def superseded_during_round(store: Store, trained_from: int) -> str | None:
    """Why a round's candidate must not be published (or approved), or None.

    The current model is the newest accepted version, so publishing a candidate trained
    from ``trained_from`` after another version became current meanwhile (a rollback, a
    model import, an approval) would silently undo that change.
    """
    current = store.current_model()
    if current is None or current.version == trained_from:
        return None
    return (
        f"the current model became version {current.version} during the round (a rollback, "
        f"import or approval); this candidate was trained from version {trained_from} and "
        "publishing it would undo that"
    )
