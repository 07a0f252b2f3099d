"""Async runs for tests (issue 21), created as an operator's script would: through the Python
admin API over the administrator kit's mutual TLS (``<folder>/admin-kit``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from sealagg.appliance import admin_api
from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.server import open_store
from sealagg.appliance.wire import sealagg_pb2 as pb

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
