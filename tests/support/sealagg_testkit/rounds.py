"""Threaded clients with known updates, and what the appliance published, for round tests.

Each client ``clientN`` sends :func:`delta` ``N`` with :func:`weight` ``N``, so a test can
compute the exact mean the appliance must publish (:func:`expected_model`).
"""

from __future__ import annotations

import threading
import time

import numpy as np

from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import Deployment, base_model
from sealagg.appliance.wire.modelcodec import Layout, flatten
from sealagg.client_shim.session import Participant
from sealagg.client_shim.testing import start_participants

DIM = Layout.of(base_model()).dimension
#: Short phase deadlines: a missing client costs one deadline, so tests stay fast.
FAST = {
    "advertise_keys": 4,
    "share_keys": 4,
    "masked_input": 4,
    "consistency_check": 4,
    "unmasking": 4,
}


def delta(i: int) -> np.ndarray:
    """Client ``i``'s model update (deterministic, small enough to stay inside the clip)."""
    return np.random.default_rng(100 + i).normal(0, 0.05, DIM).astype(np.float32)


def weight(i: int) -> float:
    """Client ``i``'s sample weight."""
    return 0.2 + 0.15 * i


def run_clients(
    dep: Deployment,
    names: list[str],
    rounds: int = 1,
    participant_cls: type[Participant] = Participant,
    delay: float = 0.0,
) -> tuple[list[threading.Thread], dict[str, list], dict[str, BaseException]]:
    """Start one thread per client; reports are always a list per client (one per round)."""

    def compute_for(name: str):
        i = int(name.removeprefix("client"))

        def compute(start, tensors):
            time.sleep(delay)
            return delta(i), weight(i), {"n": i}

        return compute

    threads, reports, errors = start_participants(
        dep.kits, dep.address, names, compute_for, rounds=rounds, participant_cls=participant_cls
    )
    return threads, {n: r if rounds > 1 else [r] for n, r in reports.items()}, errors


def expected_model(
    members: list[int], contribution: dict[int, float] | None = None
) -> dict[str, np.ndarray]:
    """The base model plus the clipped weighted mean of ``members``' deltas, per tensor."""
    base = base_model()
    w = np.array([weight(i) * (contribution or {}).get(i, 1.0) for i in members])
    mean = np.average(np.clip(np.stack([delta(i) for i in members]), -1, 1), axis=0, weights=w)
    flat = flatten(base, Layout.of(base)) + mean
    out, offset = {}, 0
    for spec in Layout.of(base).tensors:
        out[spec.name] = flat[offset : offset + spec.size].reshape(spec.shape)
        offset += spec.size
    return out


def published(dep: Deployment):
    """(current model record, its tensors, audit verification report, round records)."""
    store = open_store(FederationFolder.load(dep.folder))
    try:
        model = store.current_model()
        report = store.audit.verify(dep.federation.audit_signing_key.public_key())
        return model, store.load_model(model.version), report, store.rounds()
    finally:
        store.close()


def poll_round_ends(dep: Deployment, names: list[str]) -> tuple[list[threading.Thread], dict]:
    """Ready clients that only poll: each records the RoundEnd it is sent (a round that is
    refused before it starts). Returns the started threads and ``name -> RoundEnd``."""
    from sealagg.client_shim.connection import Connection

    ends: dict = {}

    def poll(name: str) -> None:
        conn = Connection(dep.kits[name], address=dep.address)
        try:
            for _ in range(30):
                task = conn.get_task(1.0)
                if task.WhichOneof("kind") == "round_end":
                    ends[name] = task.round_end
                    return
        finally:
            conn.close()

    threads = [threading.Thread(target=poll, args=(n,)) for n in names]
    for t in threads:
        t.start()
    return threads, ends
