"""An asynchronous run with a model over one upload chunk: streamed uploads, added off the loop.

Updates larger than the orchestrator's off-loop bound (1 MiB) are checked and added in a worker
thread; the published version must still be exactly its parent plus the weighted mean.
"""

from __future__ import annotations

import threading

import numpy as np
from sealagg_testkit.async_runs import start_async_run

from sealagg.appliance.cli._common import ADMIN_KIT_DIRNAME, ADMIN_NAME
from sealagg.appliance.federation import FederationFolder, add_client
from sealagg.appliance.orchestrator import OFF_LOOP_BYTES
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import make_deployment
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant

D = 300_000  # 1.2 MB of float32


def test_a_large_update_is_streamed_added_off_the_loop_and_published_exactly(tmp_path, running):
    assert 4 * D > OFF_LOOP_BYTES
    base = {"w": np.linspace(-1, 1, D, dtype=np.float32)}
    dep = make_deployment(tmp_path, clients=2, model=base)
    add_client(dep.federation, ADMIN_NAME, out=dep.folder / ADMIN_KIT_DIRNAME)
    dep.configure(aggregation={"mode": "plaintext", "min_clients": 2, "rounds": 0})
    running(dep.folder)
    start_async_run(dep, {"buffer_size": 2}, rounds=1, name="big")
    rng = np.random.default_rng(5)
    updates = [rng.normal(0, 0.01, D).astype(np.float32) for _ in range(2)]
    reports: dict = {}

    def work(i: int) -> None:
        conn = Connection(dep.kits[f"client{i}"], address=dep.address)
        try:
            p = Participant(conn, poll_seconds=1.0, presence=False)
            start = p.wait_for_round(max_polls=30)
            reports[i] = p.run_round(lambda _s, _t: (updates[i], 0.5 + 0.5 * i, {}), start=start)
        finally:
            conn.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert {r.outcome for r in reports.values()} == {"accepted"}
    store = open_store(FederationFolder.load(dep.folder))
    try:
        assert store.current_model().version == 2
        published = store.load_model(2)["w"].astype(np.float64)
    finally:
        store.close()
    mean = (0.5 * updates[0].astype(np.float64) + 1.0 * updates[1]) / 1.5
    np.testing.assert_allclose(published, base["w"] + mean, atol=1e-6)
