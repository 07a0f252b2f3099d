"""``sealagg serve`` as a service process: one instance per folder, JSON-only stderr.

Real ``sealagg serve`` subprocesses on a real federation folder, real clients over mutual TLS.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from sealagg.appliance.federation import (
    FederationFolder,
    add_client,
    init_federation,
    revoke_client,
)
from sealagg.appliance.kit import load_kit
from sealagg.appliance.store import Store, default_state_path
from sealagg.appliance.testing import base_model
from sealagg.appliance.wire.modelcodec import Layout
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant

DIM = Layout.of(base_model()).dimension
SEALAGG = str(Path(sys.executable).parent / "sealagg")


class Serve:
    """A ``sealagg serve`` subprocess whose stderr goes to a file (read at any time)."""

    def __init__(self, folder: Path, log: Path, *args: str) -> None:
        self.log = log
        self._handle = log.open("wb")
        self.proc = subprocess.Popen(
            [SEALAGG, "serve", "-f", str(folder), *args],
            stdout=subprocess.DEVNULL,
            stderr=self._handle,
        )

    def lines(self) -> list[str]:
        return self.log.read_text(encoding="utf-8").splitlines()

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.lines()]

    def wait_serving(self, timeout: float = 60) -> None:
        _wait(
            lambda: any("serving on port" in line for line in self.lines()),
            timeout,
            "the appliance to serve",
            self,
        )

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"sealagg serve ignored SIGTERM: {self.lines()}") from None
        finally:
            self._handle.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._handle.close()


def _wait(predicate, timeout: float, what: str, serve: Serve | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if serve is not None and serve.proc.poll() is not None:
            raise AssertionError(f"the appliance exited while waiting for {what}: {serve.lines()}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _state(folder: Path, public_key) -> tuple[int, list, list]:
    """(audit entries verified, rounds, model versions), read without writing anything."""
    store = Store.open(default_state_path(folder), read_only=True)
    try:
        return store.audit.verify(public_key).count, store.rounds(), store.model_versions()
    finally:
        store.close()


def test_a_second_serve_on_a_live_folder_is_refused_and_the_first_is_untouched(
    deployment, tmp_path
):
    """Before: the second instance ran crash recovery on the live database (aborted the open
    round, wrote ``config_loaded`` into the audit chain) and only then failed to bind. Now it
    exits with one JSON line naming the holder's pid, and the first one finishes its round."""
    dep = deployment(clients=3)
    dep.configure(
        aggregation={"mode": "plaintext", "min_clients": 3},
        deadlines={"advertise_keys": 120},
    )
    public = dep.federation.audit_signing_key.public_key()
    first = Serve(dep.folder, tmp_path / "first.log")
    hold = threading.Event()
    hold.set()
    training = threading.Barrier(4)
    reports, errors = [], []

    def client(name: str) -> None:
        conn = Connection(dep.kits[name], address=dep.address, timeout=10)
        try:

            def compute(start, tensors):
                training.wait(60)  # all three are inside the open round
                while hold.is_set():
                    time.sleep(0.05)
                return np.full(DIM, 0.01, np.float32), 1.0, {}

            reports.append(Participant(conn, poll_seconds=0.5).run_round(compute))
        except Exception as error:  # reported below
            errors.append(error)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in sorted(dep.kits)]
    try:
        first.wait_serving()
        for t in threads:
            t.start()
        training.wait(90)
        audited, rounds, versions = _state(dep.folder, public)
        assert [r.status for r in rounds] == ["open"]

        second = Serve(dep.folder, tmp_path / "second.log")
        assert second.proc.wait(60) == 1
        second.stop()
        lines = second.lines()
        assert len(lines) == 1, lines
        refusal = json.loads(lines[0])
        assert refusal["level"] == "ERROR"
        assert "in use by another appliance" in refusal["message"]
        assert f"pid {first.proc.pid}" in refusal["message"]

        # Nothing of the running appliance's state was touched.
        assert _state(dep.folder, public) == (audited, rounds, versions)
        assert first.proc.poll() is None
        hold.clear()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert [r.outcome for r in reports] == ["published"] * 3
        _, rounds, versions = _state(dep.folder, public)
        assert [r.status for r in rounds] == ["accepted"]
        assert [v.version for v in versions if v.status == "accepted"] == [1, 2]
    finally:
        hold.clear()
        code = first.stop()
    assert code == 0, first.lines()
    assert any("appliance stopped" in r["message"] for r in first.records())


def test_a_killed_appliance_leaves_no_lock_behind(deployment, tmp_path):
    """kill -9 leaves ``.sealagg.lock`` (and the pid file) on disk; the kernel dropped the lock
    itself, so the next ``sealagg serve`` starts, and it writes its own pid."""
    dep = deployment(clients=3)
    dep.configure(aggregation={"mode": "plaintext", "min_clients": 3})
    first = Serve(dep.folder, tmp_path / "first.log")
    first.wait_serving()
    assert (dep.folder / ".sealagg.lock.pid").read_text().strip() == str(first.proc.pid)
    os.kill(first.proc.pid, signal.SIGKILL)
    first.kill()
    assert (dep.folder / ".sealagg.lock").exists()

    again = Serve(dep.folder, tmp_path / "again.log")
    try:
        again.wait_serving()
        assert (dep.folder / ".sealagg.lock.pid").read_text().strip() == str(again.proc.pid)
        conn = Connection(dep.kits["client0"], address=dep.address, timeout=10)
        assert conn.get_task(0.1).WhichOneof("kind") in ("idle", "round_start")
        conn.close()
    finally:
        assert again.stop() == 0, again.lines()
    assert not (dep.folder / ".sealagg.lock.pid").exists()  # a clean exit removes its pid


def _certificate_less_handshake(dep) -> None:
    """What a TLS scanner or an old client's identity probe does: no client certificate."""
    context = ssl.create_default_context(cadata=dep.kits["client0"].ca_cert_pem.decode("ascii"))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", dep.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.settimeout(5)
        with contextlib.suppress(OSError, ssl.SSLError):
            tls.recv(1)  # the appliance ends the connection once it sees no certificate


def test_every_stderr_line_of_serve_is_json(deployment, tmp_path):
    """gRPC's C core wrote glog lines (``I... Handshake failed ... PEER_DID_NOT_RETURN_A_
    CERTIFICATE``) between the JSON lines. At debug level they are there, as JSON records of
    logger ``grpc.core``; a revoked client's refusal is logged with its name."""
    dep = deployment(clients=3)
    dep.configure(aggregation={"mode": "plaintext", "min_clients": 3})
    serve = Serve(dep.folder, tmp_path / "serve.log", "--log-level", "debug")
    try:
        serve.wait_serving()
        good = Connection(dep.kits["client0"], address=dep.address, timeout=10)
        assert good.get_task(0.1).WhichOneof("kind") in ("idle", "round_start")
        good.close()
        _certificate_less_handshake(dep)
        other = init_federation(tmp_path / "other", name="other", hosts=["localhost"], port=1)
        stranger = load_kit(add_client(other, "client0"))
        channel = grpc.secure_channel(
            dep.address,
            grpc.ssl_channel_credentials(*stranger.channel_credentials_material()),
            options=[("grpc.ssl_target_name_override", "localhost")],
        )
        with pytest.raises(grpc.FutureTimeoutError):
            grpc.channel_ready_future(channel).result(timeout=3)
        channel.close()
        revoke_client(FederationFolder.load(dep.folder), "client1")
        refused = Connection(dep.kits["client1"], address=dep.address, timeout=10)
        with pytest.raises(grpc.RpcError) as error:
            refused.stub.GetTask(_task_request(), timeout=10)
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
        refused.close()
        _wait(lambda: any("client1" in line for line in serve.lines()), 30, "the refusal log")
    finally:
        assert serve.stop() == 0
    lines = serve.lines()
    records = []
    for line in lines:
        record = json.loads(line)  # every line, or the test fails here
        assert isinstance(record, dict) and set(record) <= {
            "time", "level", "logger", "message", "exception",
        }, line  # fmt: skip
        records.append(record)
    core = [r for r in records if r["logger"] == "grpc.core"]
    assert any("PEER_DID_NOT_RETURN_A_CERTIFICATE" in r["message"] for r in core), lines
    assert any(
        "client 'client1' refused (revoked)" in r["message"] and r["level"] == "WARNING"
        for r in records
    ), lines


def _task_request():
    from sealagg.appliance.wire import sealagg_pb2 as pb

    return pb.TaskRequest(wait_seconds=0.1)
