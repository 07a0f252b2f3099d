"""The data owner's side of runs, end to end: real appliance, mutual TLS on loopback, real
PyTorch clients written as the README shows (``connect`` + ``for rnd in federation.rounds``).

- A run with hyperparameters in a masked mode: every client reads them where it trains,
  each loop ends by itself when the run's budget is spent (``RunEnd``), and holds the
  run's last model.
- Federated evaluation: every client scores the requested version on its own data; the
  appliance keeps the weighted mean.
- A client whose model does not match refuses the round at once (audited with the reason);
  the round goes on with the others instead of waiting out its deadline.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from sealagg import client_shim
from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import RunningAppliance, make_deployment

FAST = {
    "advertise_keys": 20,
    "share_keys": 10,
    "masked_input": 10,
    "consistency_check": 10,
    "unmasking": 10,
}
HYPER = {"lr": 0.05, "local_steps": 3, "evaluation_reveals_client_metrics": True}


class Net(nn.Module):
    def __init__(self, width: int = 2) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.layer = nn.Linear(8, width)


def _base() -> dict[str, np.ndarray]:
    return {n: p.detach().numpy().copy() for n, p in Net().named_parameters()}


def _data(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + i)
    x = torch.randn(32, 8, generator=g)
    return x, x[:, :2] * 0.5


def _train(model: nn.Module, i: int, lr: float, steps: int) -> None:
    x, y = _data(i)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.mse_loss(model.layer(x), y).backward()
        optimizer.step()


def _evaluate(i: int) -> Callable[[nn.Module], dict]:
    def evaluate(model: nn.Module) -> dict:
        x, y = _data(i)
        loss = nn.functional.mse_loss(model.layer(x), y)
        return {"mse": float(loss), "num_examples": 10 * (i + 1)}

    return evaluate


def _on_loop(app: RunningAppliance, coroutine_or_call, timeout: float = 60.0):
    """Run an orchestrator call on the appliance's own event loop (it is not thread-safe)."""

    async def call():
        result = coroutine_or_call()
        return await result if asyncio.iscoroutine(result) else result

    return asyncio.run_coroutine_threadsafe(call(), app.loop).result(timeout)


@pytest.fixture
def dep(tmp_path):
    dep = make_deployment(tmp_path, clients=3, model=_base())
    dep.configure(aggregation={"mode": "secagg", "min_clients": 3, "rounds": 1}, deadlines=FAST)
    return dep


def _client_threads(dep, run_id: str, results: dict, errors: dict, **loop) -> list:
    def work(i: int) -> None:
        name = f"client{i}"
        try:
            federation = client_shim.connect(dep.kits[name], address=dep.address, max_downtime=30)
            model = Net()
            seen = []
            for rnd in federation.rounds(model, run_id=run_id, evaluate=_evaluate(i), **loop):
                hyper = rnd.hyperparameters
                _train(model, i, float(hyper["lr"]), int(hyper["local_steps"]))
                seen.append((rnd.run_id, rnd.run_round, rnd.run_rounds, hyper))
                rnd.submit(num_examples=32)
            results[name] = (seen, federation.run_end, model.layer.weight.detach().numpy().copy())
            federation.close()
        except BaseException as error:  # surfaced by the assertion
            errors[name] = error

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    return threads


def test_a_run_with_hyperparameters_evaluation_and_a_clean_end(dep, running):
    app = running(dep.folder)
    orchestrator = app.app.orchestrator
    run = _on_loop(
        app,
        lambda: orchestrator.create_run(
            name="e2e",
            mode="secagg",
            rounds=2,
            hyperparameters_json=json.dumps(HYPER),
            base_model_version=0,
            start=False,
            by="test",
        ),
    )
    results: dict = {}
    errors: dict = {}
    threads = _client_threads(dep, run.run_id, results, errors)
    # Before the run starts, every client waits in its loop; evaluate the base model there.
    for _ in range(200):
        if len(_on_loop(app, orchestrator.ready_clients)) == 3:
            break
        threading.Event().wait(0.1)
    evaluation = _on_loop(
        app,
        lambda: orchestrator.evaluate(version=1, run_id=run.run_id, deadline_seconds=30, by="test"),
    )
    assert (evaluation["status"], evaluation["asked"], evaluation["clients"]) == ("done", 3, 3)
    weights = [10, 20, 30]
    base = Net()
    with torch.no_grad():
        losses = [
            float(nn.functional.mse_loss(base.layer(_data(i)[0]), _data(i)[1])) for i in range(3)
        ]
    expected = sum(w * v for w, v in zip(weights, losses, strict=True)) / sum(weights)
    assert evaluation["metrics"]["mse"] == pytest.approx(expected, rel=1e-5)
    assert evaluation["num_examples"] == sum(weights)
    # Start the run: two rounds, then every loop ends by itself.
    _on_loop(app, lambda: orchestrator.control_run(run.run_id, "start", "", "test"))
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert set(results) == {"client0", "client1", "client2"}
    store = open_store(FederationFolder.load(dep.folder))
    try:
        final = store.current_model()
        final_tensors = store.load_model(final.version)
    finally:
        store.close()
    for seen, ended, weight in results.values():
        assert seen == [(run.run_id, 1, 2, HYPER), (run.run_id, 2, 2, HYPER)]
        assert ended is not None and (ended.run_id, ended.status) == (run.run_id, "finished")
        assert ended.model_version == final.version == 3
        np.testing.assert_allclose(weight, final_tensors["layer.weight"], atol=1e-6)


def test_a_mismatched_model_refuses_at_once_and_the_round_goes_on(tmp_path, running):
    dep = make_deployment(tmp_path, clients=4, model=_base())
    slow = {**FAST, "advertise_keys": 600}  # waiting this out would fail the join below
    dep.configure(aggregation={"mode": "secagg", "min_clients": 4, "rounds": 1}, deadlines=slow)
    app = running(dep.folder)
    errors: dict = {}
    reports: dict = {}

    def work(i: int) -> None:
        name = f"client{i}"
        federation = client_shim.connect(dep.kits[name], address=dep.address, max_downtime=30)
        model = Net(width=3 if i == 3 else 2)  # client3 built another head
        try:
            for rnd in federation.rounds(model, max_rounds=1):
                _train(model, i, 0.05, 2)
                reports[name] = rnd.submit(num_examples=32)
        except BaseException as error:
            errors[name] = error
        finally:
            federation.close()

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    app.wait(120)
    for t in threads:
        t.join(60)
    assert set(errors) == {"client3"}, errors
    error = errors["client3"]
    assert isinstance(error, client_shim.ModelMismatchError)
    assert any("'layer.weight'" in t for t in error.tensors)
    assert any("'layer.bias'" in t for t in error.tensors)
    assert {r.outcome for r in reports.values()} == {"published"}
    outcome = app.app.orchestrator.history[-1]
    assert outcome.contributors == ("client0", "client1", "client2")
    store = open_store(FederationFolder.load(dep.folder))
    try:
        refusals = [e for e in store.audit.entries() if e.event == "round_refused_by_client"]
    finally:
        store.close()
    assert [(e.details["client"], e.details["code"]) for e in refusals] == [
        ("client3", "parameters")
    ]
    assert "'layer.weight'" in refusals[0].details["detail"]
