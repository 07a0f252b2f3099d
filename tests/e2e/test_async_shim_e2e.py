"""The README's training loop in an asynchronous run: real PyTorch clients of different speeds.

Four clients run the unchanged three-line loop (``for rnd in federation.rounds(model)``,
train, ``rnd.submit``) against a real appliance over mutual TLS. Each sleeps its own time per
iteration (speeds spread 8x), so fast clients contribute to more buffers and slow ones
arrive stale. The run publishes its budget of versions, every loop ends by itself with the
run's end and holds the last version, and every report says accepted (with its staleness)
or refused (with the reason).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import torch
from sealagg_testkit.async_runs import start_async_run
from torch import nn

from sealagg import client_shim
from sealagg.appliance.cli._common import ADMIN_KIT_DIRNAME, ADMIN_NAME
from sealagg.appliance.federation import FederationFolder, add_client
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import make_deployment

VERSIONS = 5
ASYNC = {"buffer_size": 2, "max_staleness": 2, "staleness": "hinge", "a": 1.0, "b": 1}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.layer = nn.Linear(8, 2)


def _train(model: nn.Module, i: int) -> None:
    g = torch.Generator().manual_seed(100 + i)
    x = torch.randn(32, 8, generator=g)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.mse_loss(model.layer(x), x[:, :2] * 0.5).backward()
        optimizer.step()


def _create_run(dep) -> str:
    return start_async_run(dep, ASYNC, rounds=VERSIONS, name="async-shim")["id"]


def test_clients_of_different_speeds_finish_an_async_run_with_the_same_loop(tmp_path, running):
    base = {n: p.detach().numpy().copy() for n, p in Net().named_parameters()}
    dep = make_deployment(tmp_path, clients=4, model=base)
    add_client(dep.federation, ADMIN_NAME, out=dep.folder / ADMIN_KIT_DIRNAME)
    dep.configure(aggregation={"mode": "plaintext", "min_clients": 2, "rounds": 0})
    running(dep.folder)
    run_id = _create_run(dep)
    results: dict = {}
    errors: dict = {}

    def work(i: int) -> None:
        name = f"client{i}"
        try:
            federation = client_shim.connect(dep.kits[name], address=dep.address, poll_seconds=1)
            model = Net()
            reports = []
            for rnd in federation.rounds(model):
                assert rnd.asynchronous and rnd.run_id == run_id
                _train(model, i)
                time.sleep(0.05 * (1 + 2.5 * i))  # client3 is 8.5x slower than client0
                reports.append((rnd.model_version, rnd.submit(num_examples=32)))
            weight = model.layer.weight.detach().numpy().copy()
            results[name] = (reports, federation.run_end, weight)
            federation.close()
        except BaseException as error:  # surfaced by the assertion
            errors[name] = error

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert set(results) == {f"client{i}" for i in range(4)}
    store = open_store(FederationFolder.load(dep.folder))
    try:
        final = store.current_model()
        final_weight = store.load_model(final.version)["layer.weight"]
        members = [e.details["members"] for e in store.audit.entries() if e.event == "async_buffer"]
    finally:
        store.close()
    assert final.version == 1 + VERSIONS
    assert len(members) == VERSIONS and all(len(m) == 2 for m in members)
    accepted = 0
    for reports, ended, weight in results.values():
        assert ended is not None and (ended.run_id, ended.status) == (run_id, "finished")
        assert ended.model_version == final.version
        np.testing.assert_allclose(weight, final_weight, atol=1e-6)
        for _version, report in reports:
            assert report.outcome in ("accepted", "refused"), report
            if report.outcome == "accepted":
                accepted += 1
                assert report.staleness is not None and 0 <= report.staleness <= 2
                assert report.buffer_number >= 1
                assert 0 < report.staleness_weight <= 1
            else:
                assert report.reason, report
    assert accepted == 2 * VERSIONS  # every accepted update is in exactly one buffer
    fast = results["client0"][0]
    assert sum(r.outcome == "accepted" for _, r in fast) >= 2  # the fast client kept going
