"""Rollback (issue 8): the server optimizer continues the restored version's state, and the
new version row and its audit entry commit together.

The expected models are computed here from the clients' updates with the published update
rules written out (Hsu et al. 2019 for FedAvgM; Reddi et al. 2021, Algorithm 2 for FedAdam),
not with appliance/optimizers.py, and compared bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save as save_safetensors
from typer.testing import CliRunner

from sealagg.appliance.cli import app as cli
from sealagg.appliance.errors import StoreError
from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.optimizer_state import (
    LEGACY_FILENAME,
    restore_state,
    state_origin,
    state_path,
)
from sealagg.appliance.optimizers import make_optimizer
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import base_model
from sealagg.appliance.versions import rollback
from sealagg.appliance.wire.modelcodec import Layout, flatten
from sealagg.client_shim.testing import start_participants

runner = CliRunner()
BASE = base_model()
LAYOUT = Layout.of(BASE)
DIM = LAYOUT.dimension
FAST = {"advertise_keys": 8}
OPTIMIZERS = {
    "fedavgm": {"name": "fedavgm", "server_lr": 1.0, "momentum": 0.9},
    "fedadam": {"name": "fedadam", "server_lr": 0.05, "beta1": 0.9, "beta2": 0.99, "tau": 0.01},
}


def _update(round_number: int, client: int) -> np.ndarray:
    return np.random.default_rng(1000 * round_number + client).normal(0, 0.05, DIM).astype("f4")


def _mean_update(round_number: int) -> np.ndarray:
    """What a plaintext round of client0 and client1 (weight 1 each) aggregates to."""
    total = np.zeros(DIM) + 1.0 * _update(round_number, 0).astype(np.float64)
    total += 1.0 * _update(round_number, 1).astype(np.float64)
    return (total / 2.0).astype(np.float32)


class _Reference:
    """The server update rules, written out independently of appliance/optimizers.py."""

    def __init__(self, config: dict) -> None:
        self.c = config
        self.m = np.zeros(DIM)
        self.v = np.full(DIM, config.get("tau", 0.0) ** 2)

    def step(self, weights: np.ndarray, delta32: np.ndarray) -> np.ndarray:
        c, d = self.c, delta32.astype(np.float64)
        if c["name"] == "fedavgm":  # v <- beta v + delta; x <- x + lr v
            self.m = c["momentum"] * self.m + d
            direction = self.m
        else:  # m <- b1 m + (1-b1) d; v <- b2 v + (1-b2) d^2; x <- x + lr m / (sqrt(v) + tau)
            self.m = c["beta1"] * self.m + (1.0 - c["beta1"]) * d
            self.v = c["beta2"] * self.v + (1.0 - c["beta2"]) * (d * d)
            direction = self.m / (np.sqrt(self.v) + c["tau"])
        return (weights.astype(np.float64) + c["server_lr"] * direction).astype(np.float32)

    def copy(self) -> _Reference:
        other = _Reference(self.c)
        other.m, other.v = self.m.copy(), self.v.copy()
        return other


def _rounds(dep, rounds: int) -> list:
    def compute_for(name):
        client = int(name.removeprefix("client"))
        return lambda start, tensors: (_update(start.round_number, client), 1.0, {})

    threads, reports, errors = start_participants(
        dep.kits, dep.address, sorted(dep.kits), compute_for, rounds=rounds
    )
    for t in threads:
        t.join(60)
    assert not errors, errors
    return [r if rounds > 1 else [r] for r in reports.values()]


def _flat(dep, version: int) -> np.ndarray:
    store = open_store(FederationFolder.load(dep.folder))
    try:
        return flatten(store.load_model(version), LAYOUT)
    finally:
        store.close()


@pytest.mark.parametrize("name", ["fedavgm", "fedadam"])
def test_round_after_rollback_continues_the_restored_versions_optimizer_state(
    deployment, running, name
):
    config = OPTIMIZERS[name]
    dep = deployment(clients=2)
    dep.configure(
        aggregation={"mode": "plaintext", "min_clients": 2, "rounds": 2},
        deadlines=FAST,
        optimizer=config,
    )
    app = running(dep.folder)
    reports = _rounds(dep, rounds=2)
    app.wait(60)
    assert all([r.outcome for r in rs] == ["published", "published"] for rs in reports), reports

    reference = _Reference(config)
    x1 = flatten(BASE, LAYOUT)
    x2 = reference.step(x1, _mean_update(1))
    at_v2 = reference.copy()  # the optimizer state that belongs to version 2
    x3 = reference.step(x2, _mean_update(2))
    np.testing.assert_array_equal(_flat(dep, 2), x2)
    np.testing.assert_array_equal(_flat(dep, 3), x3)

    # fedavgm: roll back while the appliance runs (the round picks the state up);
    # fedadam: roll back while it is stopped (the restart picks it up).
    dep.configure(aggregation={"rounds": 1})
    live = running(dep.folder) if name == "fedavgm" else None
    result = runner.invoke(cli, ["rollback", "2", "-f", str(dep.folder), "--reason", "drift"])
    assert result.exit_code == 0, result.output
    app = live or running(dep.folder)
    reports = _rounds(dep, rounds=1)
    app.wait(60)
    assert [rs[0].outcome for rs in reports] == ["published", "published"], reports
    assert {rs[0].model_version for rs in reports} == {5}

    expected = at_v2.copy().step(x2, _mean_update(3))
    got = _flat(dep, 5)
    np.testing.assert_array_equal(_flat(dep, 4), x2)  # the restored version
    np.testing.assert_array_equal(got, expected)
    # the test can tell the alternatives apart: the rolled-back rounds' momenta, a fresh state
    assert not np.array_equal(got, reference.copy().step(x2, _mean_update(3)))
    assert not np.array_equal(got, _Reference(config).step(x2, _mean_update(3)))

    store = open_store(FederationFolder.load(dep.folder))
    try:
        assert store.model_version(5).parent == 4 and store.current_model().version == 5
        assert state_origin(store, 4) == 2 and state_origin(store, 5) == 5
        entries = store.audit.entries()
        rolled = [e.details for e in entries if e.event == "model_rollback"]
        assert rolled[0]["optimizer_state_of"] == 2 and rolled[0]["new_version"] == 4
        switched = [e.details for e in entries if e.event == "optimizer_state"]
        if live:  # the running appliance noticed the rollback when the round finished
            assert switched == [{"model_version": 4, "state_of": 2, "note": ""}]
        store.audit.verify(dep.federation.audit_signing_key.public_key())
    finally:
        store.close()
    with safe_open(str(state_path(dep.folder, 5)), framework="numpy") as handle:
        assert int(handle.get_tensor("step")[0]) == 2  # v2's one step, then this round's
    assert (state_path(dep.folder, 5).stat().st_mode & 0o777) == 0o600


def _two_versions(dep) -> None:
    store = open_store(FederationFolder.load(dep.folder))
    try:
        tuned = {k: (v + np.float32(0.5)).astype(v.dtype) for k, v in BASE.items()}
        store.add_model_version(tuned, parent=1, status="accepted")
    finally:
        store.close()


def test_a_failed_audit_append_leaves_no_rolled_back_version(deployment, monkeypatch):
    dep = deployment(clients=1)
    _two_versions(dep)
    store = open_store(FederationFolder.load(dep.folder))
    try:
        versions, head = store.model_versions(), store.audit.head()
        append = store.audit.append

        def crash_on_rollback(event, *args, **kwargs):
            if event == "model_rollback":  # a crash after the version row was written
                raise OSError("power lost")
            return append(event, *args, **kwargs)

        monkeypatch.setattr(store.audit, "append", crash_on_rollback)
        with pytest.raises(OSError, match="power lost"):
            rollback(store, 1, by="admin", reason="test")
        assert store.model_versions() == versions  # no restored version row
        assert store.current_model().version == 2  # the current version did not change
        assert store.audit.head() == head  # no model_added nor model_rollback entry
        monkeypatch.undo()
        restored = rollback(store, 1, by="admin", reason="test")
        assert restored.version == 3 and store.current_model().version == 3
        events = [e.event for e in store.audit.entries()]
        assert events[-2:] == ["model_added", "model_rollback"]
    finally:
        store.close()
    verified = runner.invoke(cli, ["audit", "verify", "-f", str(dep.folder)])
    assert verified.exit_code == 0 and "OK" in verified.output, verified.output


def test_refused_rollbacks_write_nothing(deployment):
    dep = deployment(clients=1)
    _two_versions(dep)
    store = open_store(FederationFolder.load(dep.folder))
    try:
        head = store.audit.head()
        with pytest.raises(StoreError, match="already current"):
            rollback(store, 2, by="admin")
        with pytest.raises(StoreError, match="no model version 9"):
            rollback(store, 9, by="admin")
        assert store.audit.head() == head and len(store.model_versions()) == 2
    finally:
        store.close()


def test_a_missing_state_file_starts_afresh_and_says_why(deployment):
    dep = deployment(clients=1)
    store = open_store(FederationFolder.load(dep.folder))
    try:
        rid = b"r" * 32
        number = store.open_round("plaintext", rid)
        tuned = {k: (v + np.float32(0.5)).astype(v.dtype) for k, v in BASE.items()}
        produced = store.add_model_version(tuned, parent=1, round=number, status="accepted")
        optimizer = make_optimizer("fedavgm")
        optimizer.step(BASE, {k: np.full_like(v, 0.1) for k, v in BASE.items()})
        assert optimizer.steps == 1
        origin, note = restore_state(store, produced.version, optimizer)  # never saved
        assert origin is None and "v2.safetensors does not exist" in note
        assert optimizer.steps == 0 and set(optimizer.state_dict()) == {"step"}
        assert restore_state(store, 1, optimizer) == (None, "")  # the base model: fresh
        # an older sealagg's single file, written after the newest published round version
        optimizer.step(BASE, {k: np.full_like(v, 0.1) for k, v in BASE.items()})
        saved = optimizer.state_dict()
        legacy = save_safetensors(saved, metadata={"optimizer": "fedavgm"})
        (dep.folder / LEGACY_FILENAME).write_bytes(legacy)
        fresh = make_optimizer("fedavgm")
        assert restore_state(store, produced.version, fresh) == (produced.version, "")
        assert {k: v.tolist() for k, v in fresh.state_dict().items()} == {
            k: v.tolist() for k, v in saved.items()
        }
    finally:
        store.close()


def test_a_rollback_during_a_round_is_not_undone_by_its_candidate(deployment, running):
    dep = deployment(clients=2)
    dep.configure(
        aggregation={"mode": "plaintext", "min_clients": 2, "rounds": 2},
        deadlines=FAST,
        optimizer=OPTIMIZERS["fedavgm"],
    )
    calls = []

    def gate(candidate, aggregate):  # runs inside round 2 after its aggregation
        calls.append(1)
        if len(calls) == 2:
            rollback(app.app.orchestrator.store, 1, by="admin", reason="mid-round")
        return True, "ok"

    app = running(dep.folder, quality_gate=gate)
    reports = _rounds(dep, rounds=2)
    app.wait(60)
    for rs in reports:
        assert [r.outcome for r in rs] == ["published", "rejected"], reports
        assert "during the round" in rs[1].reason
    store = open_store(FederationFolder.load(dep.folder))
    try:
        versions = store.model_versions()
        assert [(v.version, v.parent, v.status) for v in versions] == [
            (1, None, "accepted"),
            (2, 1, "accepted"),
            (3, 1, "accepted"),  # the rollback
            (4, 2, "rejected"),  # round 2's candidate, trained from the rolled-back version
        ]
        assert store.current_model().version == 3
    finally:
        store.close()
    assert not state_path(dep.folder, 4).exists()  # a rejected candidate's state is dropped
    assert state_path(dep.folder, 2).exists()
