"""Clients for the hardening tests: honest threads, self-killing processes, hooks per phase."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Sequence

import numpy as np

from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import Deployment, base_model
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire.modelcodec import Layout, flatten
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant, RoundReport
from sealagg.crypto.messages import Message

DIM = Layout.of(base_model()).dimension
#: Short phase deadlines: a missing client costs one deadline, so tests stay fast.
FAST = {
    "advertise_keys": 8,  # includes the model download and local training
    "share_keys": 3,
    "masked_input": 3,
    "consistency_check": 3,
    "unmasking": 3,
}


def delta(i: int) -> np.ndarray:
    """Client ``i``'s update: distinct per client, well inside the clip range."""
    return np.random.default_rng(500 + i).uniform(-0.2, 0.2, DIM).astype(np.float32)


def weight(i: int) -> float:
    return 0.25 + 0.1 * (i % 7)


def index_of(name: str) -> int:
    return int(name.removeprefix("client"))


def expected_bias_and_weight(members: Sequence[int]) -> np.ndarray:
    """The exact published flat model after one round over ``members`` (base model 0)."""
    w = np.array([weight(i) for i in members])
    mean = np.average(np.stack([delta(i) for i in members]), axis=0, weights=w)
    base = base_model()
    return flatten(base, Layout.of(base)) + mean


def published_flat(dep: Deployment) -> tuple[int, np.ndarray, int]:
    """(current version, its flat weights, audit entries verified)."""
    store = open_store(FederationFolder.load(dep.folder))
    try:
        model = store.current_model()
        tensors = store.load_model(model.version)
        count = store.audit.verify(dep.federation.audit_signing_key.public_key()).count
        return model.version, flatten(tensors, Layout.of(tensors)), count
    finally:
        store.close()


class Hooked(Participant):
    """A participant whose uploads pass through ``hook(phase, payload) -> payload``."""

    hook: Callable[[int, bytes], bytes] | None = None

    def _send(self, start: pb.RoundStart, phase: int, message: Message, *rest) -> int:
        if self.hook is None:
            return super()._send(start, phase, message, *rest)
        return self._send_encoded(start, phase, self.hook(phase, message.encode()), *rest)


def run_clients(
    dep: Deployment,
    names: Sequence[str],
    *,
    rounds: int = 1,
    make: Callable[[Connection], Participant] | None = None,
    address: str | None = None,
    timeout: float = 10.0,
    compute: Callable | None = None,
) -> tuple[list[threading.Thread], dict[str, list[RoundReport]], dict[str, BaseException]]:
    """Start one thread per client; each runs ``rounds`` rounds and records reports or errors."""
    reports: dict[str, list[RoundReport]] = {}
    errors: dict[str, BaseException] = {}

    def work(name: str) -> None:
        i = index_of(name)
        conn = Connection(
            dep.kits[name], address=address or dep.address, timeout=timeout, retry_seconds=30
        )
        p = make(conn) if make else Participant(conn, poll_seconds=0.5)
        out = reports.setdefault(name, [])
        try:
            for _ in range(rounds):
                out.append(
                    p.run_round(compute or (lambda start, tensors: (delta(i), weight(i), {})))
                )
        except Exception as error:  # collected for the assertion message
            errors[name] = error
        finally:
            conn.close()

    threads = [
        threading.Thread(target=work, args=(n,), daemon=True, name=str(index_of(n))) for n in names
    ]
    for t in threads:
        t.start()
    return threads, reports, errors


def join(threads: Sequence[threading.Thread], timeout: float = 60.0) -> None:
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a client thread did not finish"


#: A client process that SIGKILLs itself just before its upload number ``budget``
#: (0: while training, before advertising keys; 1: after advertising, before sharing keys, ...).
KILLED_CLIENT = """
import os, signal, sys
import numpy as np
from sealagg.appliance.kit import load_kit
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant

kit, address, index, budget, dim = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])

class Doomed(Participant):
    def _send(self, start, phase, payload, *rest):
        if phase >= budget:  # its first upload of phase `budget` or later (complete: no reveal)
            os.kill(os.getpid(), signal.SIGKILL)
        return super()._send(start, phase, payload, *rest)

def compute(start, tensors):
    if budget == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    delta = np.random.default_rng(500 + index).uniform(-0.2, 0.2, dim).astype(np.float32)
    return delta, 0.25 + 0.1 * (index % 7), {}

conn = Connection(load_kit(kit), address=address, timeout=10)
print(Doomed(conn, poll_seconds=0.5).run_round(compute).outcome, flush=True)
"""


def spawn_doomed(dep: Deployment, name: str, budget: int) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            KILLED_CLIENT,
            str(dep.kits[name].source),
            dep.address,
            str(index_of(name)),
            str(budget),
            str(DIM),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
