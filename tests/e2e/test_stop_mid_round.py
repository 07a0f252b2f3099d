"""An operator's stop (SIGTERM) during a round aborts that round at once.

A phase deadline can be many minutes; a service manager sends SIGKILL long before that.
Stopping therefore must not wait the phase out: the running round is aborted with a reason
that says so, nothing is published, and the state left behind is that of an ended round.
Real appliance, real mutual TLS on loopback, real SQLite state.
"""

from __future__ import annotations

import threading

from sealagg_testkit.async_runs import read_state

from sealagg.appliance.orchestrator import STOPPING_REASON
from sealagg.client_shim.connection import Connection


def _wait_for_round_start(conns: dict[str, Connection]) -> dict[str, bytes]:
    starts: dict[str, bytes] = {}

    def wait(name: str) -> None:
        for _ in range(60):
            task = conns[name].get_task(0.5)
            if task.WhichOneof("kind") == "round_start":
                starts[name] = task.round_start.round_id
                return

    threads = [threading.Thread(target=wait, args=(name,)) for name in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return starts


def test_stop_aborts_the_running_round_without_waiting_for_its_deadline(deployment, running):
    dep = deployment(clients=3)
    # A ten-minute first phase: waiting it out would hold the stop for ten minutes.
    dep.configure(
        aggregation={"mode": "secagg", "min_clients": 3}, deadlines={"advertise_keys": 600}
    )
    app = running(dep.folder)
    conns = {n: Connection(dep.kits[n], address=dep.address, timeout=10) for n in dep.kits}
    try:
        starts = _wait_for_round_start(conns)
        assert len(starts) == 3, starts  # the round is open, every member waits in phase 1
        version_before = read_state(dep, lambda s: s.current_model().version)

        app.stop()  # sets the stop event, then joins the serving thread for at most 10 s
        # Ended within that join, not after the 600 s deadline.
        assert not app.thread.is_alive(), "the appliance still runs after its stop"
        assert app.error is None

        rounds = read_state(dep, lambda s: s.rounds())
        assert [r.status for r in rounds] == ["aborted"]
        assert rounds[0].reason == STOPPING_REASON
        assert rounds[0].round_id == next(iter(starts.values()))
        assert read_state(dep, lambda s: s.current_model().version) == version_before
    finally:
        for conn in conns.values():
            conn.close()
