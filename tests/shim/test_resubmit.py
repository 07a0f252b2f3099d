"""A connection lost mid-upload: the client sends the same upload again in the same round."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import TcpProxy, make_deployment
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant
from sealagg.crypto import Phase

DIM = 100_000  # a 400 KB upload: several chunks, so the cut lands inside it
DEADLINES = {
    "advertise_keys": 20,
    "share_keys": 10,
    "masked_input": 20,
    "consistency_check": 10,
    "unmasking": 10,
}


def _delta(i: int) -> np.ndarray:
    return np.random.default_rng(7 + i).uniform(-0.5, 0.5, DIM).astype(np.float32)


class _CutOnce(Connection):
    """Arms the proxy to break the connection 100 KB into the upload of ``phase``."""

    def __init__(self, *args, proxy: TcpProxy, phase: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.proxy, self.phase, self.attempts = proxy, phase, 0

    def submit(self, header, payload, **kwargs):
        if header.phase == self.phase and not self.proxy.cuts:
            self.proxy.cut_after(100_000)
        return super().submit(header, payload, **kwargs)


@pytest.mark.parametrize(("mode", "phase"), [("plaintext", 0), ("secagg", Phase.MASKED_INPUT)])
def test_upload_cut_mid_stream_is_sent_again_in_the_same_round(tmp_path, running, mode, phase):
    dep = make_deployment(tmp_path, clients=3, model={"w": np.zeros(DIM, dtype=np.float32)})
    dep.configure(aggregation={"mode": mode, "min_clients": 3, "rounds": 1}, deadlines=DEADLINES)
    app = running(dep.folder)
    proxy = TcpProxy(("127.0.0.1", dep.port))
    reports, errors = {}, {}

    def work(i: int) -> None:
        kit = dep.kits[f"client{i}"]
        if i == 0:
            conn = _CutOnce(kit, address=proxy.address, proxy=proxy, phase=int(phase))
        else:
            conn = Connection(kit, address=dep.address)
        try:
            reports[i] = Participant(conn, poll_seconds=1.0).run_round(
                lambda start, tensors: (_delta(i), 0.5, {})
            )
        except Exception as error:  # surfaced by the assertion below
            errors[i] = error
        finally:
            conn.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    app.wait(90)
    for t in threads:
        t.join(30)
    proxy.close()
    assert not errors, errors
    assert proxy.cuts == 1, "the connection was not cut during the upload"
    outcome = app.app.orchestrator.history[-1]
    assert outcome.outcome == "published"
    assert outcome.contributors == ("client0", "client1", "client2")
    assert {r.outcome for r in reports.values()} == {"published"}
    store = open_store(FederationFolder.load(dep.folder))
    try:
        published = store.load_model(store.current_model().version)["w"]
    finally:
        store.close()
    expected = np.mean([_delta(i) for i in range(3)], axis=0)
    np.testing.assert_allclose(published, expected, atol=1e-5)
