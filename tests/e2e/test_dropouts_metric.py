"""Dropouts are counted when too few clients answered and the round aborts.

Regression (issue 19, "dropouts counted in aborted rounds"): ``sealagg_dropouts_total`` was
incremented only after a phase closed successfully, so a round aborted because clients did not
answer (the case an operator most needs to see) left the counter at 0. Read from the real
Prometheus endpoint of an appliance serving over mutual TLS.
"""

from __future__ import annotations

import threading
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from sealagg_testkit.raw_clients import RawClient

from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import free_port


def _dropouts(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sealagg_dropouts_total":
                return sample.value
    raise AssertionError("sealagg_dropouts_total is not exported")


def _rounds(folder) -> list:
    store = open_store(FederationFolder.load(folder))
    try:
        return store.rounds()
    finally:
        store.close()


def _wait_for(condition, timeout: float = 60.0):
    pause = threading.Event()
    for _ in range(int(timeout / 0.1)):
        if value := condition():
            return value
        pause.wait(0.1)
    raise AssertionError("condition not met in time")


def test_clients_that_did_not_answer_an_aborted_round_are_counted(deployment, running):
    dep = deployment(clients=4)
    port = free_port()
    dep.configure(
        aggregation={"mode": "plaintext", "min_clients": 3, "rounds": 1},
        deadlines={"advertise_keys": 2},
        server={"metrics_listen": f"127.0.0.1:{port}"},
    )
    running(dep.folder)
    # client3 never polls: not ready, not a member of the round, not a dropout.
    clients = {n: RawClient(dep.kits[n], dep.address) for n in ("client0", "client1", "client2")}
    assert _dropouts(port) == 0
    starts = {}

    def poll_until_start(client: RawClient) -> None:
        for _ in range(200):
            task = client.poll()
            if task.WhichOneof("kind") == "round_start":
                starts[client.name] = task.round_start
                return

    threads = [threading.Thread(target=poll_until_start, args=(c,)) for c in clients.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(starts) == sorted(clients)
    # None of the three members answers before the deadline: the round aborts.
    (aborted,) = _wait_for(lambda: [r for r in _rounds(dep.folder) if r.status == "aborted"])
    assert "no client submitted an update before the deadline" in aborted.reason
    assert _dropouts(port) == 3  # the three members that did not answer, not client3
    for c in clients.values():
        c.close()
