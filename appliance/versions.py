"""Model-version operations beyond the store's rows: rolling back to an earlier version.

A rollback never edits history: it appends a new accepted version whose file is the earlier
version's file (content-addressed, so the tensors are byte-for-byte the same), with the same
metrics, ``parent`` = the restored version and no round. The store's current model is the
newest accepted version, so the next round trains from it and the vendor gate compares
against its metrics. A ``model_rollback`` audit entry names who did it and why.
"""

from __future__ import annotations

from appliance.errors import StoreError
from appliance.models import ModelVersion
from appliance.store import Store

__all__ = ["rollback"]


def rollback(store: Store, version: int, *, by: str, reason: str = "") -> ModelVersion:
    """Make the accepted ``version`` current again; returns the new (restored) version row."""
    target = store.model_version(version)
    if target.status != "accepted":
        raise StoreError(
            f"model version {version} is {target.status}: only an accepted version (one that "
            "passed the gates) can be restored"
        )
    current = store.current_model()
    if current is not None and current.sha256 == target.sha256:
        raise StoreError(f"model version {version}'s weights are already current")
    tensors = store.load_model(version)  # checks the file against its SHA-256
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
            "by": by,
            "reason": reason,
        },
    )
    return restored
