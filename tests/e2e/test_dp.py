"""DP rounds end to end over real gRPC on loopback: noise scale, ε in status and audit."""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest

from sealagg.appliance.accounting import RoundPrivacy, epsilon
from sealagg.appliance.cli._admin import AdminClient
from sealagg.appliance.cli._common import ADMIN_KIT_DIRNAME, ADMIN_NAME
from sealagg.appliance.federation import FederationFolder, add_client
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import base_model
from sealagg.appliance.wire.modelcodec import Layout, flatten
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant

BASE = flatten(base_model(), Layout.of(base_model()))
DIM = BASE.shape[0]
FAST = {k: 6 for k in ("advertise_keys", "share_keys", "masked_input", "consistency_check")}
FAST["unmasking"] = 6


def _delta(i: int, rnd: int = 0) -> np.ndarray:
    return np.random.default_rng(100 + i + 10 * rnd).normal(0, 0.05, DIM).astype(np.float32)


class _VanishAfterKeys(Participant):
    """A client that crashes after its first two uploads: advertising its keys, then its
    shares (a complete graph has no coin reveal), so its pairwise masks must be removed.
    (In a sparse round the second is its coin, and crashing before it aborts the round.)"""

    budget = 2

    def _send(self, *args, **kwargs):
        if self.budget <= 0:
            raise ConnectionAbortedError("client vanished")
        self.budget -= 1
        return super()._send(*args, **kwargs)


def _run(dep, rounds: int = 1, scale: float = 1.0, vanish: frozenset = frozenset()) -> dict:
    errors: dict = {}

    def work(name: str) -> None:
        i = int(name.removeprefix("client"))
        conn = Connection(dep.kits[name], address=dep.address)
        p = (_VanishAfterKeys if name in vanish else Participant)(conn, poll_seconds=1.0)
        try:
            for r in range(rounds):
                p.run_round(
                    lambda start, tensors, i=i, r=r: (
                        _delta(i, r) * scale,
                        0.7,  # ignored under DP: every client counts once
                        {"epsilon": 0.5 + i},
                    )
                )
        except Exception as error:  # collected for the assertion message
            errors[name] = error
        finally:
            conn.close()

    threads = [threading.Thread(target=work, args=(n,)) for n in sorted(dep.kits)]
    for t in threads:
        t.start()
    return {"threads": threads, "errors": errors}


def _finish(app, run, timeout=90):
    app.wait(timeout)
    for t in run["threads"]:
        t.join(30)
    assert not run["errors"], run["errors"]


def _state(dep):
    store = open_store(FederationFolder.load(dep.folder))
    try:
        model = store.current_model()
        flat = flatten(store.load_model(model.version), Layout.of(base_model()))
        entries = store.audit.entries()
        return model, flat, entries
    finally:
        store.close()


@pytest.mark.parametrize("mechanism", ["discrete_gaussian", "skellam"])
def test_distributed_dp_round_with_secagg_has_the_expected_noise_and_epsilon(
    deployment, running, mechanism
):
    dep = deployment(clients=5)
    z, clip = 0.5, 1.0
    dep.configure(
        aggregation={"mode": "secagg+", "min_clients": 5, "rounds": 0, "ready_window": 0.2},
        deadlines=FAST,
        privacy={
            "mode": "distributed",
            "mechanism": mechanism,
            "noise_multiplier": z,
            "clip": clip,
            "population": 50,
            "delta": 1e-5,
        },
    )
    add_client(dep.federation, ADMIN_NAME, out=dep.folder / ADMIN_KIT_DIRNAME)
    app = running(dep.folder)
    run = _run(dep)
    for t in run["threads"]:
        t.join(90)
    assert not run["errors"], run["errors"]
    history = app.app.orchestrator.history
    outcome = history[0]
    assert outcome.outcome == "published" and len(outcome.contributors) == 5
    with AdminClient(dep.folder, address=dep.address) as admin:  # the Admin Status over mTLS
        status = admin.status()["privacy"]
    app.stop()
    model, flat, entries = _state(dep)
    assert model.version == 2
    record = next(e.details for e in entries if e.event == "privacy")
    m = record["min_survivors"]
    assert record["survivors"] == 5 and record["mechanism"] == mechanism
    # The deltas (norm ~0.6) are under the clip: mean = (sum of deltas + noise) / 5.
    residual = flat - BASE - np.mean([_delta(i) for i in range(5)], axis=0)
    expected_std = math.sqrt(5) * z * clip / math.sqrt(m) / 5
    assert abs(residual.mean()) < 4 * expected_std / math.sqrt(DIM)
    assert 0.75 * expected_std < residual.std() < 1.25 * expected_std
    z_eff = record["effective_noise_multiplier"]
    assert z_eff == pytest.approx(z * math.sqrt(5 / m), rel=0.01)
    eps = epsilon([RoundPrivacy(1, 0.1, z_eff)], 1e-5)
    assert record["epsilon_cumulative"] == pytest.approx(eps)
    assert status["epsilon_cumulative"] == pytest.approx(eps)
    assert status["mode"] == "distributed" and status["rounds_accounted"] == 1
    assert status["local_dp_epsilon"] == {f"client{i}": 0.5 + i for i in range(5)}


def test_plaintext_client_dp_with_adaptive_clipping_moves_and_keeps_the_clip(deployment, running):
    dep = deployment(clients=4)
    dep.configure(
        aggregation={"mode": "plaintext", "min_clients": 4, "rounds": 2},
        deadlines=FAST,
        privacy={
            "mode": "client",
            "noise_multiplier": 1.0,
            "clip": 5.0,
            "target_quantile": 0.5,
            "quantile_noise": 0.6,
            "clip_learning_rate": 0.5,
        },
    )
    app = running(dep.folder)
    _finish(app, _run(dep, rounds=2, scale=0.1))  # norms ~0.06, far under the clip
    assert [o.outcome for o in app.app.orchestrator.history] == ["published", "published"]
    _, _, entries = _state(dep)
    records = [e.details for e in entries if e.event == "privacy"]
    assert len(records) == 2
    assert records[1]["clip"] == pytest.approx(records[0]["next_clip"])
    assert records[1]["next_clip"] < records[0]["next_clip"] < 5.0
    status = app.app.orchestrator.privacy.status()
    assert status["clip"] == pytest.approx(records[1]["next_clip"])
    assert status["epsilon_cumulative"] > records[0]["epsilon_cumulative"]
    state = json.loads((dep.folder / "privacy_state.json").read_text())
    assert state["clip"] == pytest.approx(status["clip"]) and len(state["rounds"]) == 2


def test_a_dropout_leaves_less_noise_and_the_accountant_uses_the_survivors(deployment, running):
    dep = deployment(clients=6)
    z, clip = 0.5, 1.0
    dep.configure(
        aggregation={"mode": "secagg", "min_clients": 6, "rounds": 1},
        deadlines=FAST,
        privacy={"mode": "distributed", "noise_multiplier": z, "clip": clip},
    )
    app = running(dep.folder)
    run = _run(dep, vanish=frozenset({"client5"}))
    app.wait(90)
    for t in run["threads"]:
        t.join(30)
    assert set(run["errors"]) == {"client5"}
    assert app.app.orchestrator.history[-1].outcome == "published"
    _, flat, entries = _state(dep)
    record = next(e.details for e in entries if e.event == "privacy")
    m = record["min_survivors"]
    assert record["survivors"] == 5 and m <= 5
    assert record["effective_noise_multiplier"] == pytest.approx(z * math.sqrt(5 / m), rel=0.01)
    assert record["effective_noise_std"] == pytest.approx(math.sqrt(5) * z * clip / math.sqrt(m))
    residual = flat - BASE - np.mean([_delta(i) for i in range(5)], axis=0)
    expected_std = math.sqrt(5) * z * clip / math.sqrt(m) / 5
    assert 0.75 * expected_std < residual.std() < 1.25 * expected_std


def test_client_dp_in_attested_mode_noises_each_update_before_it_leaves(
    tmp_path, running, monkeypatch
):
    """Attested mode (software attester): the TEE sees each update, already clipped + noised."""
    monkeypatch.setenv("SEALAGG_ALLOW_INSECURE_ATTESTER", "1")  # the clients' own choice
    from sealagg.appliance.attestation import setup_software_attestation
    from sealagg.appliance.federation import add_client, init_federation
    from sealagg.appliance.kit import load_kit
    from sealagg.appliance.server import open_store
    from sealagg.appliance.testing import Deployment, free_port

    port = free_port()
    folder = tmp_path / "federation"
    fed = init_federation(folder, name="testfed", hosts=["localhost", "127.0.0.1"], port=port)
    setup_software_attestation(folder)
    kits = {f"client{i}": load_kit(add_client(fed, f"client{i}")) for i in range(3)}
    store = open_store(fed)
    store.add_model_version(base_model(), parent=None, status="accepted")
    store.close()
    dep = Deployment(folder, port, fed, kits)
    dep.configure(
        attestation={"provider": "software"},
        aggregation={"mode": "attested", "min_clients": 3, "rounds": 1},
        deadlines=FAST,
        privacy={"mode": "client", "noise_multiplier": 1.0, "clip": 0.5},
    )
    app = running(dep.folder)
    _finish(app, _run(dep, rounds=1))
    assert [o.outcome for o in app.app.orchestrator.history] == ["published"]
    _, flat, entries = _state(dep)
    records = [e.details for e in entries if e.event == "privacy"]
    assert len(records) == 1 and records[0]["epsilon_cumulative"] > 0
    # Each client adds std z*C/sqrt(m) (m = 3): the sum carries z*C, the mean z*C/3.
    clipped = []
    for i in range(3):
        d = _delta(i)
        clipped.append(d * min(1.0, 0.5 / np.linalg.norm(d)))
    noise = (flat - BASE) - np.mean(clipped, axis=0)
    expected_std = 1.0 * 0.5 / 3
    assert 0.75 * expected_std < noise.std() < 1.25 * expected_std
