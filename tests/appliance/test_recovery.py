"""kill -9 of a real appliance process mid-round loses nothing accepted; the federation goes on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np

from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.server import open_store
from sealagg.appliance.store import Store, default_state_path
from sealagg.appliance.testing import base_model
from sealagg.appliance.wire.modelcodec import Layout
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant

DIM = Layout.of(base_model()).dimension
SERVE = (
    "import asyncio, sys; from sealagg.appliance.server import Appliance; "
    "asyncio.run(Appliance(sys.argv[1]).run())"
)


def _spawn(folder) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SERVE, str(folder)], stderr=subprocess.DEVNULL)


def _rounds(folder):
    store = Store.open(default_state_path(folder), read_only=True)
    try:
        return store.rounds(), store.current_model()
    finally:
        store.close()


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_9_mid_round_then_restart(deployment):
    dep = deployment(clients=4)
    dep.configure(
        aggregation={"mode": "secagg+", "min_clients": 4},
        deadlines={
            "advertise_keys": 10,
            "share_keys": 10,
            "masked_input": 10,
            "consistency_check": 10,
            "unmasking": 10,
        },
    )
    stop = threading.Event()
    reports = []
    training = threading.Event()  # a client is inside round 2, training
    slow = threading.Event()  # while set, clients train slowly: round 2 sits in its first phase

    def client(name: str) -> None:
        conn = Connection(dep.kits[name], address=dep.address, timeout=10, retry_seconds=60)
        p = Participant(conn, poll_seconds=0.5)
        while not stop.is_set():
            try:

                def compute(start, tensors):
                    if slow.is_set():
                        training.set()
                    while slow.is_set() and not stop.is_set():
                        time.sleep(0.05)
                    return np.full(DIM, 0.01, np.float32), 0.5, {}

                reports.append(p.run_round(compute))
            except Exception:  # the appliance died under us: keep trying, as a real client does
                time.sleep(0.2)
        conn.close()

    proc = _spawn(dep.folder)
    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in sorted(dep.kits)]
    for t in threads:
        t.start()
    try:
        _wait(lambda: _rounds(dep.folder)[1].version >= 2, 60, "the first published model")
        slow.set()
        _wait(lambda: any(r.status == "open" for r in _rounds(dep.folder)[0]), 30, "an open round")
        _wait(training.is_set, 30, "a client training in the open round")
        accepted_before = _rounds(dep.folder)[1]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

        rounds, current = _rounds(dep.folder)
        interrupted = [r.id for r in rounds if r.status == "open"]
        assert interrupted, "the kill should have interrupted an open round"
        assert current.version == accepted_before.version  # nothing accepted was lost

        slow.clear()
        proc = _spawn(dep.folder)
        _wait(
            lambda: _rounds(dep.folder)[1].version > accepted_before.version,
            90,
            "a model after restart",
        )
        rounds, current = _rounds(dep.folder)
        by_number = {r.id: r for r in rounds}
        for number in interrupted:
            assert by_number[number].status == "aborted"
            assert "restart" in (by_number[number].reason or "")
        # Clients inside the interrupted round learn that a restart aborted it.
        assert any(r.outcome == "aborted" and "restart" in r.reason for r in reports), reports
        np.testing.assert_allclose(
            _load(dep, current.version)["layer.bias"],
            _load(dep, accepted_before.version)["layer.bias"]
            + 0.01 * (current.version - accepted_before.version),
            atol=1e-5,
        )
    finally:
        stop.set()
        proc.kill()
        proc.wait(10)
        for t in threads:  # daemons; a client still retrying against the dead appliance is left
            t.join(2)
    store = open_store(FederationFolder.load(dep.folder))
    try:
        assert store.audit.verify(dep.federation.audit_signing_key.public_key()).count > 20
    finally:
        store.close()


def _load(dep, version):
    store = Store.open(default_state_path(dep.folder), read_only=True)
    try:
        return store.load_model(version)
    finally:
        store.close()
