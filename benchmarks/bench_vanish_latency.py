"""How fast the appliance sees a dead client (issue 25: "seen within a second").

A real appliance on loopback (mutual TLS) and ``--clients`` client processes, each a
``Participant`` holding its Presence stream (the shim's default). The bench SIGKILLs them
one at a time and measures, on the appliance's own event loop, the time from ``kill()`` to
the moment its presence board counts the client as gone (the moment a phase would stop
waiting for it). No round runs: what is measured is the transport's notice of a dead peer.

    .venv/bin/python benchmarks/bench_vanish_latency.py --clients 10 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sealagg.appliance.testing import RunningAppliance, make_deployment

CLIENT = """
import sys, time
from sealagg.appliance.kit import load_kit
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant
p = Participant(Connection(load_kit(sys.argv[1]), address=sys.argv[2], timeout=60))
p.presence.connected.wait(60)
print("ready", flush=True)
time.sleep(3600)
"""


def _gone_at(app: RunningAppliance, name: str, timeout: float) -> float:
    """perf_counter() when the board first reports ``name`` gone (polled every 0.5 ms)."""
    board = app.app.orchestrator.presence
    until = time.perf_counter() + timeout
    while time.perf_counter() < until:
        if board.is_gone(name):  # a read of the loop's state: a bool, no mutation
            return time.perf_counter()
        time.sleep(0.0005)
    raise TimeoutError(f"{name} was not seen gone within {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="vanish-"))
    dep = make_deployment(root, clients=args.clients)
    app = RunningAppliance(dep.folder)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = {}
    try:
        for name, kit in sorted(dep.kits.items()):
            procs[name] = subprocess.Popen(
                [sys.executable, "-c", CLIENT, str(kit.source), dep.address],
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
        for proc in procs.values():
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        board = app.app.orchestrator.presence
        assert all(board.is_live(n) for n in procs), "not every client holds a stream"
        latencies = []
        for name, proc in procs.items():
            killed = time.perf_counter()
            proc.send_signal(signal.SIGKILL)
            latencies.append(_gone_at(app, name, 30.0) - killed)
            proc.wait()
        ms = sorted(1000 * x for x in latencies)
        result = {
            "clients": args.clients,
            "kills": len(ms),
            "median_ms": round(statistics.median(ms), 2),
            "max_ms": round(ms[-1], 2),
            "min_ms": round(ms[0], 2),
            "load": Path("/proc/loadavg").read_text().split()[:3],
        }
        print(json.dumps(result))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        app.stop()


if __name__ == "__main__":
    main()
