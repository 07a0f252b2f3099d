"""The appliance itself fails: SIGKILL at each protocol phase, a full disk, a read-only folder.

Outcome asserted each time: nothing accepted is lost (the published model versions and their
bytes survive), the interrupted round is aborted on restart with every client told, the
federation goes on, and the audit chain verifies. tests/appliance/test_recovery.py covers one
kill during training; this file kills in every phase.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sealagg_testkit.clients import FAST, delta, published_flat, weight

from sealagg.appliance.errors import ProvisioningError, StoreError
from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.orchestrator import STOPPING_REASON
from sealagg.appliance.server import Appliance, open_store
from sealagg.appliance.store import Store, default_state_path
from sealagg.appliance.testing import RunningAppliance, base_model, make_deployment
from sealagg.appliance.wire.modelcodec import Layout, flatten
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.demo.client import PHASES
from sealagg.client_shim.session import Participant

SERVE = (
    "import asyncio, sys; from sealagg.appliance.server import Appliance; "
    "asyncio.run(Appliance(sys.argv[1]).run())"
)


def _spawn(folder: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", SERVE, str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _state(folder: Path):
    store = Store.open(default_state_path(folder), read_only=True)
    try:
        return store.rounds(), store.current_model()
    finally:
        store.close()


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class _Gate:
    """Holds every client just before its upload of one phase, so the round sits in it."""

    def __init__(self, clients: int) -> None:
        self.phase: int | None = None
        self.clients = clients
        self.arrived = 0
        self.lock = threading.Lock()
        self.open = threading.Event()

    def arm(self, phase: int) -> None:
        with self.lock:
            self.phase, self.arrived = phase, 0
            self.open.clear()

    def release(self) -> None:
        with self.lock:
            self.phase = None
        self.open.set()

    def hold(self, phase: int) -> None:
        with self.lock:
            if phase != self.phase:
                return
            self.arrived += 1
        self.open.wait(60)

    def all_held(self) -> bool:
        with self.lock:
            return self.phase is not None and self.arrived == self.clients


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_sigkill_at_each_phase_then_restart(tmp_path):
    """kill -9 while the round waits in each of its phases, restart each time (four clients
    run the complete graph, which has no coin reveal: five phases).

    After each kill: the accepted model is the one from before the round. After each restart:
    that round is aborted ("restart" in its reason) and clients inside it are told; after the
    last restart the next round publishes. At the end the model is exactly
    base + (published rounds) x (the mean of
    the four fixed updates), and the audit chain verifies."""
    dep = make_deployment(tmp_path, clients=4)
    deadlines = dict(FAST, advertise_keys=15, share_keys=15, masked_input=15)
    deadlines.update(consistency_check=15, unmasking=15)
    dep.configure(aggregation={"mode": "secagg+", "min_clients": 4}, deadlines=deadlines)
    gate, stop = _Gate(4), threading.Event()
    reports: list = []

    class Gated(Participant):
        def _send(self, start, phase, payload, *rest):
            gate.hold(phase)
            return super()._send(start, phase, payload, *rest)

    def client(name: str) -> None:
        i = int(name.removeprefix("client"))
        conn = Connection(dep.kits[name], address=dep.address, timeout=10, retry_seconds=60)
        p = Gated(conn, poll_seconds=0.5)
        while not stop.is_set():
            try:
                reports.append(p.run_round(lambda s, t, i=i: (delta(i), weight(i), {})))
            except Exception:  # the appliance died under us: keep trying, as a real client does
                time.sleep(0.2)
        conn.close()

    proc = _spawn(dep.folder)
    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in sorted(dep.kits)]
    for t in threads:
        t.start()
    interrupted: list[int] = []
    try:
        for phase in (p for p in range(len(PHASES)) if PHASES[p] != "reveal_coins"):
            gate.arm(phase)
            _wait(gate.all_held, 60, f"all clients held before {PHASES[phase]}")
            before = _state(dep.folder)[1].version
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            rounds, current = _state(dep.folder)
            assert current.version == before  # nothing accepted was lost
            open_rounds = [r.id for r in rounds if r.status == "open"]
            assert len(open_rounds) == 1, rounds
            interrupted += open_rounds
            gate.release()
            proc = _spawn(dep.folder)
            _wait(
                lambda r=open_rounds[0]: _state(dep.folder)[0][r - 1].status == "aborted",
                60,
                "the restarted appliance to abort the interrupted round",
            )
        before = _state(dep.folder)[1].version
        _wait(lambda: _state(dep.folder)[1].version > before, 90, "a model after the last restart")
    finally:
        stop.set()
        gate.release()
        proc.kill()
        proc.wait(10)
        for t in threads:  # daemons; one may still be retrying against the killed appliance
            t.join(2)
    rounds, current = _state(dep.folder)
    by_id = {r.id: r for r in rounds}
    for number in interrupted:
        assert by_id[number].status == "aborted" and "restart" in by_id[number].reason
    told = {r.round_number for r in reports if r.outcome == "aborted" and "restart" in r.reason}
    assert told == set(interrupted), (told, interrupted)
    published = [r for r in rounds if r.status == "accepted"]
    assert current.version == len(published) + 1
    w = np.array([weight(i) for i in range(4)])
    mean = np.average(np.stack([delta(i) for i in range(4)]), axis=0, weights=w)
    _, flat, audited = published_flat(dep)
    base = flatten(base_model(), Layout.of(base_model()))
    np.testing.assert_allclose(flat, base + len(published) * mean, atol=1e-5 * len(published))
    assert audited > 50


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): {result.stderr!r}")


@pytest.fixture
def small_disk(tmp_path):
    """A real 32 MiB file system (tmpfs) holding the deployment; unmounted afterwards."""
    mount = tmp_path / "disk"
    _mount_tmpfs(mount, "32m")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> Path:
    """Fill the file system to the last byte with a ballast file (a real ENOSPC)."""
    ballast = folder / "ballast"
    with contextlib.suppress(OSError), open(ballast, "wb") as handle:
        while True:
            handle.write(b"\0" * 4096)
            handle.flush()
    return ballast


def _round_clients(dep, stop: threading.Event):
    def client(name: str) -> None:
        i = int(name.removeprefix("client"))
        conn = Connection(dep.kits[name], address=dep.address, timeout=5, retry_seconds=10)
        p = Participant(conn, poll_seconds=0.5)
        while not stop.is_set():
            try:
                p.run_round(lambda s, t, i=i: (delta(i), weight(i), {}))
            except Exception:
                time.sleep(0.2)
        conn.close()

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in sorted(dep.kits)]
    for t in threads:
        t.start()
    return threads


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_disk_full_stops_clearly_and_loses_nothing(small_disk):
    """The federation lives on a 32 MiB tmpfs filled to the last byte before a round ends.

    Asserted: the appliance stops with an error that says the disk is full (it fails closed
    rather than serve with state it cannot record); the published model versions and
    the audit chain verify afterwards; once space is freed, a restart aborts the interrupted
    round and the next round publishes."""
    dep = make_deployment(small_disk, clients=3)
    dep.configure(aggregation={"mode": "plaintext", "min_clients": 3}, deadlines=FAST)
    app = RunningAppliance(dep.folder)
    stop = threading.Event()
    threads = _round_clients(dep, stop)
    try:
        _wait(lambda: _state(dep.folder)[1].version >= 2, 60, "a first published model")
        ballast = _fill(small_disk)
        app.thread.join(60)
        assert not app.thread.is_alive(), "the appliance kept running on a full disk"
        # StoreError from SQLite, or ProvisioningError from the optimizer-state file: both
        # name the cause.
        assert isinstance(app.error, StoreError | ProvisioningError), app.error
        assert "disk is full" in str(app.error) or "No space" in str(app.error), app.error
        rounds, current = _state(dep.folder)
        kept = current.version
        store = open_store(FederationFolder.load(dep.folder))
        try:
            store.load_model(kept)  # re-hashed: the file is intact
            assert store.audit.verify(dep.federation.audit_signing_key.public_key()).count > 5
        finally:
            store.close()
        ballast.unlink(missing_ok=True)
        again = RunningAppliance(dep.folder)
        _wait(lambda: _state(dep.folder)[1].version > kept, 60, "a model after freeing space")
        again.stop()
    finally:
        stop.set()
        app.stop()
        for t in threads:
            t.join(15)
    rounds, _ = _state(dep.folder)
    assert all(r.status in ("accepted", "aborted") for r in rounds), rounds
    # The round running when the test stops the restarted appliance is aborted by that stop
    # (an operator's stop never waits out a round); only that one, the last.
    stopped = [r for r in rounds if r.status == "aborted" and r.reason == STOPPING_REASON]
    assert stopped in ([], [rounds[-1]]), rounds
    before = [r for r in rounds if r not in stopped]
    assert [r for r in before if r.status == "aborted" and "restart" in (r.reason or "")] or all(
        r.status == "accepted" for r in before
    ), rounds
    _, _, audited = published_flat(dep)
    assert audited > 10


@pytest.mark.timeout(60)
def test_read_only_federation_folder_is_refused_at_start(small_disk):
    """The file system holding the federation is remounted read-only (a real EROFS).
    Starting the appliance fails with a StoreError saying the state database's folder is not
    writable; nothing is
    changed, and once writable again the appliance starts and the audit chain verifies."""
    dep = make_deployment(small_disk, clients=3)
    before = sorted((p.relative_to(small_disk), p.stat().st_size) for p in small_disk.rglob("*"))
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        with pytest.raises(StoreError, match="not writable"):
            Appliance(dep.folder)
        after = sorted((p.relative_to(small_disk), p.stat().st_size) for p in small_disk.rglob("*"))
        assert after == before
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    app = Appliance(dep.folder)
    try:
        assert app.store.audit.verify(dep.federation.audit_signing_key.public_key()).count >= 2
    finally:
        app.store.close()
