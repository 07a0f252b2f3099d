"""Clients for the presence tests (issue 25): raw Presence streams, and client processes that die.

- :class:`PresenceStream`: one ``Aggregator.Presence`` call over its own mutual-TLS channel,
  driven by the test (heartbeats on demand or on a beat, silence, half-close, cancel), with
  every notice the appliance writes recorded. It is what a reconnecting or a silent client
  looks like on the wire, without the shim's own keeper in between.
- :func:`spawn_client`: a real client process (``Participant`` over ``Connection``) that runs
  one round and, when told, dies (SIGKILL or ``os._exit``) just before its first upload of a
  chosen phase, the way the demo's Vanisher does: the kernel closes its sockets, which is
  what the appliance must notice at once.
- :class:`GatedParticipant`: an in-process participant that holds its upload of one phase
  until the test releases it (a slow but live client, or one held while its stream breaks).
"""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import grpc

from sealagg.appliance.kit import ClientKit
from sealagg.appliance.testing import Deployment, RunningAppliance
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.demo.client import PHASES
from sealagg.client_shim.session import Participant, RoundReport
from sealagg_testkit.clients import delta, index_of, weight

#: The phases a complete-graph (small n) secagg+ round runs; reveal_coins is skipped there.
COMPLETE_GRAPH_PHASES = tuple(p for p in PHASES if p != "reveal_coins")
PRESENCE_METHOD = "/sealagg.v1.Aggregator/Presence"


def wait_for(condition: Callable[[], object], what: str, timeout: float = 60.0) -> object:
    """Poll ``condition`` until it is truthy (generous: the machine may be loaded)."""
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def secure_channel(kit: ClientKit, address: str) -> grpc.Channel:
    """The kit's mutual-TLS channel (what the shim builds)."""
    ca, key, cert = kit.channel_credentials_material()
    return grpc.secure_channel(
        address,
        grpc.ssl_channel_credentials(ca, key, cert),
        options=[("grpc.ssl_target_name_override", kit.server_name)],
    )


_END = object()
T = TypeVar("T")


class PresenceStream:
    """One raw Presence call; heartbeats are sent only when the test says so.

    ``beat_every(seconds, round_id)`` starts a beater thread; ``silence()`` stops it while the
    stream stays open; ``half_close()`` ends the request side (the client said goodbye);
    ``cancel()`` resets the call. ``notices`` collects what the appliance wrote; ``error``
    holds the status the call ended with (None while open or after a clean end)."""

    def __init__(
        self,
        kit: ClientKit,
        address: str,
        *,
        channel: grpc.Channel | None = None,
        request_serializer: Callable[[object], bytes] | None = None,
    ) -> None:
        self.name = kit.name
        self._own_channel = channel is None
        self.channel = channel or secure_channel(kit, address)
        self._outbox: queue.Queue[object] = queue.Queue()
        self.notices: list[pb.PresenceNotice] = []
        self.error: grpc.RpcError | None = None
        self.ended = threading.Event()
        self._changed = threading.Condition()
        self._beater: threading.Thread | None = None
        self._beating = threading.Event()
        self.round_id = b""
        method = self.channel.stream_stream(
            PRESENCE_METHOD,
            request_serializer=request_serializer or pb.Heartbeat.SerializeToString,
            response_deserializer=pb.PresenceNotice.FromString,
        )
        self.call = method(self._requests())
        threading.Thread(target=self._read, daemon=True, name=f"presence-{self.name}").start()

    # -- the wire ----------------------------------------------------------------------

    def _requests(self):
        while (item := self._outbox.get()) is not _END:
            yield item

    def _read(self) -> None:
        try:
            for notice in self.call:
                with self._changed:
                    self.notices.append(notice)
                    self._changed.notify_all()
        except grpc.RpcError as error:
            self.error = error
        finally:
            self.ended.set()
            with self._changed:
                self._changed.notify_all()

    # -- what the test does ------------------------------------------------------------

    def beat(self, round_id: bytes | None = None) -> None:
        """One heartbeat naming ``round_id`` (default: the last one named)."""
        if round_id is not None:
            self.round_id = bytes(round_id)
        self._outbox.put(pb.Heartbeat(round_id=self.round_id))

    def send_raw(self, item: object) -> None:
        """Put anything on the request side (with a custom serializer: hostile bytes)."""
        self._outbox.put(item)

    def beat_every(self, seconds: float, round_id: bytes | None = None) -> None:
        """Beat now and then every ``seconds`` until :meth:`silence` (or the end)."""
        if round_id is not None:
            self.round_id = bytes(round_id)
        self._beating.set()
        if self._beater is None or not self._beater.is_alive():

            def beat_loop() -> None:
                while self._beating.is_set() and not self.ended.is_set():
                    self.beat()
                    self.ended.wait(seconds)

            self._beater = threading.Thread(target=beat_loop, daemon=True)
            self._beater.start()

    def silence(self) -> None:
        """Stop beating; the stream stays open (a network that went away without a reset)."""
        self._beating.clear()
        if self._beater is not None:
            self._beater.join(10)

    def half_close(self) -> None:
        """End the request side: the appliance sees the client's stream end."""
        self.silence()
        self._outbox.put(_END)

    def cancel(self) -> None:
        """Reset the call (RST_STREAM): what a client whose call broke looks like."""
        self.silence()
        self.call.cancel()

    def close(self) -> None:
        self.cancel()
        self._outbox.put(_END)
        if self._own_channel:
            self.channel.close()

    # -- what the test reads -----------------------------------------------------------

    def wait_notices(self, count: int, timeout: float = 30.0) -> list[pb.PresenceNotice]:
        """At least ``count`` notices (the first is the appliance's beat/silence notice)."""
        with self._changed:
            self._changed.wait_for(
                lambda: len(self.notices) >= count or self.ended.is_set(), timeout=timeout
            )
            if len(self.notices) < count:
                raise AssertionError(
                    f"{self.name}: {len(self.notices)} presence notices, wanted {count} "
                    f"(ended: {self.ended.is_set()}, error: {self.error!r})"
                )
            return list(self.notices)

    def wait_end(self, timeout: float = 30.0) -> grpc.RpcError | None:
        assert self.ended.wait(timeout), f"{self.name}: the presence stream did not end"
        return self.error

    def drops(self) -> list[pb.PresenceNotice]:
        """Notices saying this client was dropped from a round."""
        with self._changed:
            return [n for n in self.notices if n.dropped_round_id]


def on_loop(app: RunningAppliance, read: Callable[[], T]) -> T:
    """``read()`` run on the appliance's own event loop (its state is never read mid-update)."""

    async def call() -> T:
        return read()

    return asyncio.run_coroutine_threadsafe(call(), app.loop).result(30)


def round_status(app: RunningAppliance) -> dict | None:
    """The running round's part of the status (phase, waiting_for, vanished), or None."""
    return on_loop(app, lambda: app.app.orchestrator.status()["round"])


def live_audit(app: RunningAppliance, event: str) -> list[dict]:
    """The details of ``event`` audit entries, read from the running appliance's store."""
    store = app.app.orchestrator.store
    return on_loop(app, lambda: [e.details for e in store.audit.entries() if e.event == event])


class GatedParticipant(Participant):
    """Holds its first upload of phase ``gate_phase`` (a PHASES name) until ``go`` is set;
    ``reached`` is set (and ``round_id`` known) when it gets there. Otherwise the real shim."""

    def __init__(self, *args, gate_phase: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate_phase = None if gate_phase is None else PHASES.index(gate_phase)
        self.reached = threading.Event()
        self.go = threading.Event()
        self.round_id = b""

    def _send(self, start, phase, message, *rest):
        if self.gate_phase is not None and phase >= self.gate_phase and not self.go.is_set():
            self.round_id = bytes(start.round_id)
            self.reached.set()
            self.go.wait(120)
        return super()._send(start, phase, message, *rest)


class ClientRun:
    """One in-process client (the real shim) running ``rounds`` rounds in a thread; its
    update is ``clients.delta(index)`` with ``clients.weight(index)``."""

    def __init__(
        self,
        dep: Deployment,
        name: str,
        *,
        rounds: int = 1,
        presence: bool = True,
        gate_phase: str | None = None,
        address: str | None = None,
    ) -> None:
        self.name = name
        self.connection = Connection(dep.kits[name], address=address or dep.address, timeout=30)
        self.participant = GatedParticipant(
            self.connection, poll_seconds=0.5, presence=presence, gate_phase=gate_phase
        )
        self.reports: list[RoundReport] = []
        self.error: BaseException | None = None
        self._rounds = rounds
        self.thread = threading.Thread(target=self._work, daemon=True, name=name)
        self.thread.start()

    def _work(self) -> None:
        i = index_of(self.name)
        try:
            for _ in range(self._rounds):
                self.reports.append(
                    self.participant.run_round(lambda start, tensors: (delta(i), weight(i), {}))
                )
        except Exception as error:  # surfaced by the test's assertions
            self.error = error
        finally:
            self.connection.close()

    def join(self, timeout: float = 90.0) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self.name} did not finish"

    def outcomes(self) -> list[str]:
        return [r.outcome for r in self.reports]


def start_clients(dep: Deployment, names, **kwargs) -> dict[str, ClientRun]:
    return {name: ClientRun(dep, name, **kwargs) for name in names}


#: A client process: runs one round with the real shim; with ``die_at`` it dies (SIGKILL or
#: os._exit) just before its first upload of that phase or a later one, as the demo's
#: Vanisher does (``advertise_keys``: after training, before advertising its keys). It prints
#: one JSON line: {"outcome": ...} when it lived to the round's end.
CLIENT_SCRIPT = """
import json, os, signal, sys
import numpy as np
from sealagg.appliance.kit import load_kit
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant

kit, address, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
die_at, how, index, dim = spec["die_at"], spec["how"], spec["index"], spec["dim"]

class Mortal(Participant):
    def _send(self, start, phase, message, *rest):
        if die_at is not None and phase >= die_at:
            sys.stdout.flush()
            if how == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(spec["exit_code"])
        return super()._send(start, phase, message, *rest)

def compute(start, tensors):
    delta = np.random.default_rng(500 + index).uniform(-0.2, 0.2, dim).astype(np.float32)
    return delta, 0.25 + 0.1 * (index % 7), {}

conn = Connection(load_kit(kit), address=address, timeout=30, retry_seconds=60)
p = Mortal(conn, poll_seconds=0.5, presence=spec["presence"])
report = p.run_round(compute)
print(json.dumps({"outcome": report.outcome}), flush=True)
conn.close()
"""
#: The exit code of a client that ended itself with os._exit.
VANISHED_EXIT = 77


def spawn_client(
    dep: Deployment,
    name: str,
    *,
    dimension: int,
    die_at: str | None = None,
    how: str = "sigkill",
    presence: bool = True,
) -> subprocess.Popen:
    """Start a client process for ``name`` (its update is ``clients.delta(index)``)."""
    assert how in ("sigkill", "exit")
    spec = {
        "die_at": None if die_at is None else PHASES.index(die_at),
        "how": how,
        "index": int(name.removeprefix("client")),
        "dim": dimension,
        "presence": presence,
        "exit_code": VANISHED_EXIT,
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            CLIENT_SCRIPT,
            str(dep.kits[name].source),
            dep.address,
            json.dumps(spec),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def expect_death(process: subprocess.Popen, how: str = "sigkill", timeout: float = 60.0) -> None:
    """The process died the way it was told to (not by a crash of its own)."""
    out, err = process.communicate(timeout=timeout)
    wanted = -9 if how == "sigkill" else VANISHED_EXIT
    assert process.returncode == wanted, (process.returncode, out, err[-3000:])
