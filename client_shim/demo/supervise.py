"""Supervise the running federation: release the clients together, restart a client that
vanished on purpose, poll the appliance's status, and decide when the run is over.

Problems (a timeout, every client gone) go to ``result.problems``; nothing here raises for a
failed federation.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sealagg.client_shim.demo.client import VANISHED_EXIT_CODE
from sealagg.client_shim.demo.config import DemoConfig
from sealagg.client_shim.demo.display import Progress
from sealagg.client_shim.demo.processes import ApplianceProcess, ClientProcess
from sealagg.client_shim.demo.results import DemoResult
from sealagg.client_shim.demo.status import StatusPoller

#: Seconds every client may be gone while the appliance still runs, before the run fails.
ALL_GONE_GRACE = 10.0
#: Seconds clients may take to leave after the appliance finished, before they are stopped.
LEAVE_GRACE = 5.0


def supervise(
    config: DemoConfig,
    appliance: ApplianceProcess,
    clients: dict[str, ClientProcess],
    poller: StatusPoller,
    progress: Progress,
    refresh: Callable[[], None],
    result: DemoResult,
) -> None:
    """Run until the appliance finished and the clients left (or something went wrong)."""
    deadline = time.monotonic() + config.timeout
    released = False
    appliance_done_at: float | None = None
    gone_at: float | None = None
    plan = config.plan()
    for name in plan.get(1, {}):  # the first round's vanishers: warm beside the first processes
        clients[name].prepare_standby()
    while True:
        now = time.monotonic()
        if now > deadline:
            result.problems.append(f"the demo did not finish within {config.timeout:g} s")
            return
        if not released:
            progress.stage = "starting the appliance and the clients"
            if all(p.ready for p in clients.values()) and poller.status(0.5) is not None:
                for proc in clients.values():
                    proc.go()
                released = True
                for name, proc in clients.items():  # the later vanishers warm during round 1
                    if any(name in who for r, who in plan.items() if r > 1):
                        proc.prepare_standby()
                progress.stage = "running"
            elif appliance.poll() is not None or _any_left_before_joining(clients):
                return
        _reap_clients(config, clients, progress, restart=appliance_done_at is None)
        if released:
            status = poller.status(1.0)
            if status is not None:
                progress.status = status
        refresh()
        alive = [p for p in clients.values() if not (p.finished or p.failed)]
        if released and not alive and appliance.poll() is None:
            if gone_at is None:
                gone_at = now
            elif now - gone_at > ALL_GONE_GRACE:
                result.problems.append("every client left before the appliance finished")
                return
        if appliance.poll() is not None:
            if appliance_done_at is None:
                appliance_done_at = now
                progress.stage = "finished; waiting for the clients to leave"
            # Clients in the last round leave on their own; the others are stopped.
            left = all(p.finished or p.failed for p in clients.values())
            if left or now - appliance_done_at > LEAVE_GRACE:
                progress.stage = "finished"
                refresh()
                return
        time.sleep(0.2)


def _any_left_before_joining(clients: dict[str, ClientProcess]) -> bool:
    """Mark every client that exited while waiting to be released; True if any did."""
    early = [p for p in clients.values() if p.exit_code() is not None]
    for p in early:
        p.failed = f"exited with code {p.exit_code()} before joining"
    return bool(early)


def _reap_clients(
    config: DemoConfig,
    clients: dict[str, ClientProcess],
    progress: Progress,
    *,
    restart: bool,
) -> None:
    """Note the clients that exited; start one that vanished again if rounds remain."""
    for proc in clients.values():
        code = proc.exit_code()
        if code is None or proc.finished or proc.failed:
            continue
        if code == 0:
            proc.finished = True
        elif code == VANISHED_EXIT_CODE:
            last = next((r for r in reversed(proc.records()) if r.get("outcome") == "vanished"), {})
            progress.vanished += 1
            vanished_in = int(last.get("round", config.rounds))
            if vanished_in < config.rounds and restart:
                proc.restart()
                progress.restarts += 1
                if any(r > vanished_in and proc.name in who for r, who in config.plan().items()):
                    proc.prepare_standby()  # it vanishes again later: keep one warm
            else:
                proc.finished = True
        else:
            proc.failed = f"exited with code {code}"
