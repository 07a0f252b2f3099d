"""Async runs for tests (issue 21), created as an operator's script would: through the Python
admin API over the administrator kit's mutual TLS (``<folder>/admin-kit``)."""

from __future__ import annotations

from typing import Any

from sealagg.appliance import admin_api


def start_async_run(
    dep: Any, params: dict[str, Any], *, rounds: int = 0, name: str = "async"
) -> dict[str, Any]:
    """Create and start an async run with ``params`` (buffer_size, max_staleness, ...) on the
    deployment ``dep``'s running appliance; the run as the appliance answers it."""
    with admin_api.connect(dep.folder, address=dep.address, timeout=15) as admin:
        return admin.create_run(
            name=name, rounds=rounds, schedule="async", async_params=params, start=True
        )
