"""The shim's side of an asynchronous run (issue 21): what a client learns from each lease.

Real appliance, mutual TLS on loopback, real ``Participant`` objects: a submission reports
"accepted" with its buffer, staleness and staleness weight; one past the maximum staleness
reports "refused" with the appliance's reason, and the same participant goes on with a new
lease on the current version.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from sealagg_testkit.async_runs import start_async_run

from sealagg.appliance.cli._common import ADMIN_KIT_DIRNAME, ADMIN_NAME
from sealagg.appliance.federation import FederationFolder, add_client
from sealagg.appliance.server import open_store
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant


@pytest.fixture
def participants(deployment, running):
    dep = deployment(clients=3)
    add_client(dep.federation, ADMIN_NAME, out=dep.folder / ADMIN_KIT_DIRNAME)
    dep.configure(aggregation={"mode": "plaintext", "min_clients": 2, "rounds": 0})
    running(dep.folder)
    start_async_run(dep, {"buffer_size": 2, "max_staleness": 0, "staleness": "constant"}, name="a")
    connections = [Connection(dep.kits[n], address=dep.address) for n in sorted(dep.kits)]
    yield dep, [Participant(c, poll_seconds=0.5, presence=False) for c in connections]
    for c in connections:
        c.close()


def _update(start: pb.RoundStart):
    return lambda _s, _t: (np.full(start.vector_length, 0.01, np.float32), 1.0, {})


def _current(dep) -> int:
    store = open_store(FederationFolder.load(dep.folder))
    try:
        return store.current_model().version
    finally:
        store.close()


def test_a_client_learns_its_staleness_and_goes_on_after_a_refusal(participants):
    dep, (a, b, c) = participants
    la, lb, lc = (p.wait_for_round(max_polls=20) for p in (a, b, c))
    first = a.run_round(_update(la), start=la)
    assert (first.outcome, first.buffer_number, first.staleness) == ("accepted", 1, 0)
    assert first.staleness_weight == 1.0 and "1 of 2" in first.reason
    assert b.run_round(_update(lb), start=lb).outcome == "accepted"  # buffer 1 is full
    for _ in range(200):
        if _current(dep) == 2:
            break
        threading.Event().wait(0.05)
    late = c.run_round(_update(lc), start=lc)  # its lease (version 1) is one version old
    assert late.outcome == "refused"
    assert "1 versions old; this run accepts at most 0" in late.reason
    fresh = c.wait_for_round(max_polls=20)
    assert fresh.asynchronous and fresh.model_version == 2
    again = c.run_round(_update(fresh), start=fresh)
    assert (again.outcome, again.staleness, again.buffer_number) == ("accepted", 0, 2)
