"""Async runs for tests (issue 21), created as an operator's script would: through the Python
admin API over the administrator kit's mutual TLS (``<folder>/admin-kit``)."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from sealagg.appliance import admin_api
from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.server import open_store
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire.modelcodec import Layout, flatten

T = TypeVar("T")


def start_async_run(
    dep: Any, params: dict[str, Any], *, rounds: int = 0, name: str = "async"
) -> dict[str, Any]:
    """Create and start an async run with ``params`` (buffer_size, max_staleness, ...) on the
    deployment ``dep``'s running appliance; the run as the appliance answers it."""
    with admin_api.connect(dep.folder, address=dep.address, timeout=15) as admin:
        return admin.create_run(
            name=name, rounds=rounds, schedule="async", async_params=params, start=True
        )


def read_state(dep: Any, call: Callable[[Any], T]) -> T:
    """``call(store)`` on the deployment's state database, opened beside the running appliance."""
    store = open_store(FederationFolder.load(dep.folder))
    try:
        return call(store)
    finally:
        store.close()


def current_version(dep: Any) -> int:
    return read_state(dep, lambda s: s.current_model().version)


def wait_until(condition: Callable[[], object], timeout: float = 30.0) -> None:
    event = threading.Event()
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        event.wait(0.05)
    raise AssertionError("the condition never held")


def lease(client: Any) -> pb.RoundStart:
    """Poll until the appliance hands this raw client a lease (an asynchronous RoundStart)."""
    for _ in range(40):
        task = client.poll(1.0)
        if task.WhichOneof("kind") == "round_start":
            assert task.round_start.asynchronous
            return task.round_start
    raise AssertionError(f"{client.name} got no lease")


def flat_version(dep: Any, version: int) -> np.ndarray:
    """Model version ``version``'s weights, flattened, as float64."""

    def read(store):
        tensors = store.load_model(version)
        return flatten(tensors, Layout.of(tensors)).astype(np.float64)

    return read_state(dep, read)


def audit_entries(dep: Any) -> list:
    return read_state(dep, lambda s: list(s.audit.entries()))


class SeededUpdates:
    """Each client's update per lease (seeded, well inside any clip), kept with its weight
    under (client, base version) for the expected mean."""

    def __init__(self, seed: int, std: float = 0.05) -> None:
        self.rng = np.random.default_rng(seed)
        self.std = std
        self.given: dict[tuple[str, int], tuple[np.ndarray, float]] = {}

    def compute(self, name: str, weight: float = 1.0):
        def compute(start: pb.RoundStart, _tensors):
            update = self.rng.normal(0.0, self.std, start.vector_length).astype(np.float32)
            self.given[(name, start.model_version)] = (update.astype(np.float64), weight)
            return update, weight, {"num_examples": 10}

        return compute


def run_rounds_in_threads(jobs: dict[str, tuple[Any, pb.RoundStart, Any]], timeout: float = 180.0):
    """``participant.run_round(compute, start=lease)`` for each (participant, lease, compute)
    in its own thread; (reports, errors) by client name."""
    reports: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}

    def work(name: str) -> None:
        participant, lease, compute = jobs[name]
        try:
            reports[name] = participant.run_round(compute, start=lease)
        except BaseException as error:  # collected for the assertion
            errors[name] = error

    threads = {n: threading.Thread(target=work, args=(n,), daemon=True) for n in jobs}
    for t in threads.values():
        t.start()
    for t in threads.values():
        t.join(timeout)
    assert not any(t.is_alive() for t in threads.values()), "a client never finished"
    return reports, errors


def two_buffers_then_lease(
    dep: Any,
    participants: dict[str, Any],
    leases: dict[str, pb.RoundStart],
    job: Callable[[str], tuple[Any, pb.RoundStart, Any]],
    check_version: Callable[[int, dict[str, tuple[int, int]]], None],
) -> None:
    """The opening every buffered-mode scenario shares (masked and ckks; K = 4, a polynomial
    staleness with a = 0.5): buffer 1 from client0..3, all fresh; buffer 2 from client4 (one
    version stale) and client0..2; then client0 and client1 lease version 3.
    ``check_version(version, {client: (base, parent)})`` checks a published version."""
    names = [f"client{i}" for i in range(4)]
    reports, errors = run_rounds_in_threads({n: job(n) for n in names})
    assert not errors, errors
    assert {r.outcome for r in reports.values()} == {"published"}
    assert {(r.staleness, r.staleness_weight, r.buffer_number) for r in reports.values()} == {
        (0, 1.0, 1)
    }
    assert current_version(dep) == 2
    check_version(2, {n: (1, 1) for n in names})
    for n in names:
        leases[n] = participants[n].wait_for_round(max_polls=40)
        assert leases[n].model_version == 2
    reports, errors = run_rounds_in_threads({n: job(n) for n in ("client4", *names[:3])})
    assert not errors, errors
    assert reports["client4"].staleness == 1
    assert math.isclose(reports["client4"].staleness_weight, 2**-0.5)
    assert {r.outcome for r in reports.values()} == {"published"}
    check_version(3, {"client4": (1, 2), **{n: (2, 2) for n in names[:3]}})
    for n in names[:2]:
        leases[n] = participants[n].wait_for_round(max_polls=40)
        assert leases[n].model_version == 3


def client3_refuses_its_base(
    participants: dict[str, Any], updates: SeededUpdates, weights: dict[str, float]
) -> dict[str, Any]:
    """Every participant takes its lease and runs the buffer's round; client3 (shown another
    base version for itself by a tampered RoundStart) must refuse, and the others publish.
    Returns the others' reports."""
    jobs = {
        n: (x, x.wait_for_round(max_polls=40), updates.compute(n, weights[n]))
        for n, x in participants.items()
    }
    reports, errors = run_rounds_in_threads(jobs)
    assert set(errors) == {"client3"}, errors
    assert "lists base version 0 for this client, which trained on version 1" in str(
        errors["client3"]
    )
    assert {r.outcome for r in reports.values()} == {"published"}
    return reports
