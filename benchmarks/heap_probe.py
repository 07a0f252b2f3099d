"""Where an appliance's memory goes over many rounds: a tracemalloc diff, in one process.

Complements `benchmarks/load.py soak` (which reads RSS from /proc): this shows whether the
*Python* heap grows per round. The appliance and 4 clients run in this process (threads);
the snapshot diff after a warm-up of 10 rounds lists the largest growths.

    .venv/bin/python benchmarks/heap_probe.py --rounds 60
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np

from sealagg.appliance.testing import RunningAppliance, make_deployment
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--dimension", type=int, default=10000)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = {"w": np.zeros(args.dimension, np.float32)}
        dep = make_deployment(Path(tmp), clients=4, model=model)
        dep.configure(aggregation={"mode": "secagg+", "min_clients": 4, "rounds": 0})
        app = RunningAppliance(dep.folder)
        stop = threading.Event()
        update = np.full(args.dimension, 0.01, np.float32)

        def client(name: str) -> None:
            conn = Connection(dep.kits[name], address=dep.address, timeout=30)
            p = Participant(conn, poll_seconds=0.5)
            while not stop.is_set():
                p.run_round(lambda s, t: (update, 0.5, {}))
            conn.close()

        for name in sorted(dep.kits):
            threading.Thread(target=client, args=(name,), daemon=True).start()
        history = app.app.orchestrator.history
        deadline = time.monotonic() + args.timeout

        def reach(n: int) -> None:
            while len(history) < n:
                if time.monotonic() > deadline:
                    raise SystemExit(f"only {len(history)} rounds in {args.timeout} s")
                time.sleep(0.2)

        reach(10)
        tracemalloc.start(10)
        before = tracemalloc.take_snapshot()
        reach(10 + args.rounds)
        after = tracemalloc.take_snapshot()
        stop.set()
        diff = after.compare_to(before, "lineno")
        growth = sum(s.size_diff for s in diff)
        print(f"{args.rounds} rounds: Python heap grew {growth / 1024:.1f} KiB in total")
        for stat in diff[:8]:
            print(stat)
        app.stop()


if __name__ == "__main__":
    main()
