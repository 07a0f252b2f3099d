"""Two parties fine-tuning a vendor's model behind its accuracy gate, for the gate tests.

``client0`` is the vendor: it evaluates every candidate on a holdout that stays in its own
process (:func:`holdout_accuracy`). The other parties send :func:`benign` updates or the
:data:`HARMFUL` one, which the gate must reject.
"""

from __future__ import annotations

import threading

import numpy as np

from sealagg.appliance.testing import Deployment, base_model
from sealagg.appliance.wire.modelcodec import Layout, flatten
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant

#: Phase deadlines long enough for an evaluation inside the round.
FAST = {
    "advertise_keys": 10,
    "share_keys": 5,
    "masked_input": 5,
    "consistency_check": 5,
    "unmasking": 5,
}
BASE = base_model()
LAYOUT = Layout.of(BASE)
DIM = LAYOUT.dimension
HOLDOUT = np.random.default_rng(7).normal(0, 1, (300, 16))
LABELS = np.argmax(HOLDOUT @ BASE["layer.weight"] + BASE["layer.bias"], axis=1)


def holdout_accuracy(tensors) -> dict[str, float]:
    """The vendor's evaluation, in the vendor's process: its holdout never leaves it."""
    predicted = np.argmax(HOLDOUT @ tensors["layer.weight"] + tensors["layer.bias"], axis=1)
    return {"accuracy": float(np.mean(predicted == LABELS)), "samples": float(len(LABELS))}


def benign(seed: int) -> np.ndarray:
    """A tiny update that leaves the vendor's accuracy where it was."""
    return np.random.default_rng(seed).normal(0, 1e-3, DIM).astype(np.float32)


#: A client update that destroys the vendor's accuracy: at weight 0.2 it flips every logit.
HARMFUL = (-10.0 * flatten(BASE, LAYOUT)).astype(np.float32)


def party(
    dep: Deployment,
    name: str,
    updates: list[np.ndarray],
    reports: dict[str, list],
    errors: dict[str, BaseException],
    evaluated: list[float] | None = None,
) -> None:
    """One party's rounds, one per update; it evaluates candidates when ``evaluated`` is a list."""

    def evaluate(tensors):
        evaluated.append(holdout_accuracy(tensors)["accuracy"])
        return holdout_accuracy(tensors)

    conn = Connection(dep.kits[name], address=dep.address)
    p = Participant(conn, poll_seconds=1.0, evaluate=evaluate if evaluated is not None else None)
    try:
        reports[name] = [
            p.run_round(lambda start, tensors, u=u: (u, 1.0, {"n": 1})) for u in updates
        ]
    except Exception as error:  # collected for the assertion message
        errors[name] = error
    finally:
        conn.close()


def run_parties(
    dep: Deployment, plan: dict[str, list[np.ndarray]], evaluated: list[float] | None
) -> tuple[list[threading.Thread], dict[str, list], dict[str, BaseException]]:
    """Start one thread per party in ``plan``; only ``client0`` (the vendor) evaluates."""
    reports: dict[str, list] = {}
    errors: dict[str, BaseException] = {}
    threads = [
        threading.Thread(
            target=party,
            args=(dep, name, updates, reports, errors, evaluated if name == "client0" else None),
        )
        for name, updates in plan.items()
    ]
    for t in threads:
        t.start()
    return threads, reports, errors
