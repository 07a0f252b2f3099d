"""Test helpers for the client side: several clients as threads against a live appliance."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from sealagg.appliance.kit import ClientKit
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant


def start_participants(
    kits: Mapping[str, ClientKit],
    address: str,
    names: list[str],
    compute_for: Callable[[str], Callable],
    *,
    rounds: int = 1,
    participant_cls: type[Participant] = Participant,
) -> tuple[list[threading.Thread], dict[str, Any], dict[str, BaseException]]:
    """Run ``names`` as client threads (the numpy :class:`Participant`) for ``rounds`` rounds.

    ``compute_for(name)`` gives that client's ``compute(start, tensors)``. Returns the started
    threads, each client's reports (a list when ``rounds > 1``) and the errors they raised.
    """
    reports: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}

    def work(name: str) -> None:
        conn = Connection(kits[name], address=address)
        try:
            participant = participant_cls(conn, poll_seconds=1.0)
            out = [participant.run_round(compute_for(name)) for _ in range(rounds)]
            reports[name] = out if rounds > 1 else out[0]
        except Exception as error:  # collected for the caller's assertion message
            errors[name] = error
        finally:
            conn.close()

    threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in names]
    for t in threads:
        t.start()
    return threads, reports, errors
