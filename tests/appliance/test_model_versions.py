"""Model versions (issue 8): metrics in `model list`/`show`, rollback restores exact tensors."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from sealagg.appliance.cli import app
from sealagg.appliance.errors import StoreError
from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import base_model
from sealagg.appliance.versions import rollback

runner = CliRunner()


def _versions(dep):
    """v1 base (evaluated), v2 accepted (evaluated), v3 rejected: current = v2."""
    store = open_store(FederationFolder.load(dep.folder))
    try:
        store.set_model_metrics(1, {"eer": 0.07, "accuracy": 0.93})
        tuned = {k: (v + np.float32(0.25)).astype(v.dtype) for k, v in base_model().items()}
        store.add_model_version(tuned, parent=1, status="accepted", metrics={"eer": 0.035})
        bad = {k: -v for k, v in base_model().items()}
        store.add_model_version(bad, parent=2, status="rejected", metrics={"eer": 0.5})
        with pytest.raises(StoreError, match="already has metrics"):  # write-once
            store.set_model_metrics(2, {"eer": 0.0})
    finally:
        store.close()


def test_rollback_restores_the_exact_tensors_and_is_audited(deployment):
    dep = deployment(clients=1)
    _versions(dep)
    listing = runner.invoke(app, ["model", "list", "-f", str(dep.folder)], env={"COLUMNS": "200"})
    assert listing.exit_code == 0, listing.output
    assert "eer=0.07 accuracy=0.93" in listing.output and "eer=0.035" in listing.output
    result = runner.invoke(
        app, ["rollback", "1", "-f", str(dep.folder), "--reason", "client complaint"]
    )
    assert result.exit_code == 0, result.output
    assert "current again as version 4" in result.output
    store = open_store(FederationFolder.load(dep.folder))
    try:
        current = store.current_model()
        original = store.model_version(1)
        assert current.version == 4 and current.parent == 1 and current.round is None
        assert current.sha256 == original.sha256 and current.metrics == original.metrics
        restored, before = store.load_model(4), store.load_model(1)
        assert set(restored) == set(before)
        for name in before:
            assert restored[name].dtype == before[name].dtype
            np.testing.assert_array_equal(restored[name], before[name])
        np.testing.assert_array_equal(restored["layer.weight"], base_model()["layer.weight"])
        audit = [e.details for e in store.audit.entries() if e.event == "model_rollback"]
        assert audit == [
            {
                "from_version": 2,
                "to_version": 1,
                "new_version": 4,
                "sha256": original.sha256,
                "optimizer_state_of": None,  # a base model: the optimizer starts afresh
                "by": audit[0]["by"],
                "reason": "client complaint",
            }
        ]
        # a rejected candidate never passed the gate: it cannot be restored
        with pytest.raises(StoreError, match="only an accepted version"):
            rollback(store, 3, by="admin")
        with pytest.raises(StoreError, match="already current"):
            rollback(store, 1, by="admin")
    finally:
        store.close()
    show = runner.invoke(app, ["model", "show", "4", "-f", str(dep.folder)], env={"COLUMNS": "200"})
    assert show.exit_code == 0, show.output
    assert "restored from 1" in show.output and "eer = 0.07" in show.output
    assert "(current)" in show.output
    refused = runner.invoke(app, ["model", "rollback", "3", "-f", str(dep.folder)])
    assert refused.exit_code == 1 and "only an accepted version" in refused.output
