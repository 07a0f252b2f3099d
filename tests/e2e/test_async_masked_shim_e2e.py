"""The README's PyTorch loop, unchanged, in a secagg+ asynchronous run (issue 21).

Four torch clients of different speeds run ``for rnd in federation.rounds(model)``, train,
``rnd.submit``; each update leaves its client only masked, in the secure-aggregation round
of the buffer it registered for. The run publishes its budget of versions, every loop ends
with the run's end holding the last version, and each report is "published" (with the
staleness its buffer's transcript fixed) or says why not.
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

VERSIONS = 3
ASYNC = {"buffer_size": 3, "max_staleness": 3, "staleness": "exponential", "alpha": 0.5}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.layer = nn.Linear(8, 2)


def _train(model: nn.Module, i: int) -> None:
    g = torch.Generator().manual_seed(100 + i)
    x = torch.randn(32, 8, generator=g)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    optimizer.zero_grad()
    nn.functional.mse_loss(model.layer(x), x[:, :2] * 0.5).backward()
    optimizer.step()


def test_the_torch_loop_runs_a_masked_async_run_to_its_end(tmp_path, running):
    base = {n: p.detach().numpy().copy() for n, p in Net().named_parameters()}
    dep = make_deployment(tmp_path, clients=4, model=base)
    add_client(dep.federation, ADMIN_NAME, out=dep.folder / ADMIN_KIT_DIRNAME)
    dep.configure(aggregation={"mode": "secagg+", "min_clients": 3, "rounds": 0, "clip": 1.0})
    running(dep.folder)
    run_id = start_async_run(dep, ASYNC, rounds=VERSIONS, name="masked-loop")["id"]
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
                time.sleep(0.05 * (1 + 2 * i))
                reports.append(rnd.submit(num_examples=32))
            weight = model.layer.weight.detach().numpy().copy()
            results[name] = (reports, federation.run_end, weight)
            federation.close()
        except BaseException as error:  # surfaced by the assertion
            errors[name] = error

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    assert set(results) == {f"client{i}" for i in range(4)}
    store = open_store(FederationFolder.load(dep.folder))
    try:
        final = store.current_model()
        final_weight = store.load_model(final.version)["layer.weight"]
        buffers = [e.details for e in store.audit.entries() if e.event == "async_buffer"]
    finally:
        store.close()
    assert final.version == 1 + VERSIONS
    assert len(buffers) == VERSIONS and all(b["masked"] and len(b["members"]) == 3 for b in buffers)
    published = 0
    for reports, ended, weight in results.values():
        assert ended is not None and (ended.run_id, ended.status) == (run_id, "finished")
        np.testing.assert_allclose(weight, final_weight, atol=1e-6)
        for report in reports:
            if report.outcome == "published":
                published += 1
                assert report.staleness is not None and 0 <= report.staleness <= 3
                assert report.staleness_weight == 0.5**report.staleness
            else:
                assert report.outcome in ("refused", "aborted") and report.reason, report
    assert published == 3 * VERSIONS  # every member of every published buffer was told
