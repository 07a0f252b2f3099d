"""Load and soak: many clients in one secure round, many rounds in a row, over real gRPC.

The appliance runs in its own process (its RSS is read from /proc); clients are threads
spread over a few client processes, each a real client-shim Participant with its own kit,
mutual-TLS channel and SecAgg+ state. Everything stays on loopback; every loop is bounded.

    # 200 clients in one secure round (4 client processes of 50 threads):
    .venv/bin/python benchmarks/load.py load --clients 200 --processes 4
    # soak: 30 consecutive rounds of 10 clients, appliance RSS after each round:
    .venv/bin/python benchmarks/load.py soak --clients 10 --rounds 30

Prints one JSON object per line (per round for soak) and a summary line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from sealagg.appliance.store import Store, default_state_path
from sealagg.appliance.testing import make_deployment

SERVE = (
    "import asyncio, sys; from sealagg.appliance.server import Appliance; "
    "asyncio.run(Appliance(sys.argv[1]).run())"
)

CLIENTS = """
import json, sys, threading
import numpy as np
from sealagg.appliance.kit import load_kit
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant

address, dim, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
kits = sys.argv[4:]
results = {}

def work(path, i):
    delta = np.random.default_rng(i).uniform(-0.1, 0.1, dim).astype(np.float32)
    conn = Connection(load_kit(path), address=address, timeout=300, retry_seconds=120)
    p = Participant(conn, poll_seconds=2.0)
    out = []
    try:
        for _ in range(rounds):
            out.append(p.run_round(lambda start, tensors: (delta, 0.5, {})).outcome)
    except Exception as error:
        out.append(f"error: {type(error).__name__}: {error}")
    finally:
        conn.close()
    results[path] = out

threads = [threading.Thread(target=work, args=(k, int(k.rsplit("client", 1)[1])))
           for k in kits]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(results))
"""


def _rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def _seconds(opened: str, closed: str | None) -> float | None:
    """Open-to-close time of a round, from the store's ISO timestamps."""
    if closed is None:
        return None
    return round(
        (datetime.fromisoformat(closed) - datetime.fromisoformat(opened)).total_seconds(), 2
    )


def _rounds(folder: Path):
    store = Store.open(default_state_path(folder), read_only=True)
    try:
        return store.rounds()
    finally:
        store.close()


def _deploy(root: Path, clients: int, dimension: int, rounds: int, deadline: float):
    model = {"w": np.zeros(dimension, dtype=np.float32)}
    t0 = time.perf_counter()
    dep = make_deployment(root, clients=clients, model=model)
    provision = time.perf_counter() - t0
    dep.configure(
        aggregation={
            "mode": "secagg+",
            "min_clients": clients,
            "max_clients": max(clients, 1000),
            "rounds": rounds,
            "ready_window": 60.0,
        },
        deadlines={
            "advertise_keys": deadline,
            "share_keys": deadline,
            "masked_input": deadline,
            "consistency_check": deadline,
            "unmasking": deadline,
        },
    )
    return dep, provision


def run(
    clients: int, processes: int, rounds: int, dimension: int, deadline: float, timeout: float
) -> list[dict]:
    """Run ``rounds`` rounds of ``clients`` clients; one record per finished round."""
    with tempfile.TemporaryDirectory() as tmp:
        dep, provision = _deploy(Path(tmp), clients, dimension, rounds, deadline)
        log = (Path(tmp) / "appliance.log").open("w")  # never a pipe: a full one blocks it
        server = subprocess.Popen(
            [sys.executable, "-c", SERVE, str(dep.folder)], stdout=log, stderr=log
        )
        names = sorted(dep.kits, key=lambda n: int(n.removeprefix("client")))
        groups = [names[i::processes] for i in range(processes)]
        started = time.perf_counter()
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    CLIENTS,
                    dep.address,
                    str(dimension),
                    str(rounds),
                    *(str(dep.kits[n].source) for n in group),
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
            for group in groups
            if group
        ]
        records: list[dict] = []
        seen = 0
        try:
            while time.perf_counter() - started < timeout:
                done = [r for r in _rounds(dep.folder) if r.status != "open"]
                for r in done[seen:]:
                    rss, hwm = _rss_kib(server.pid) if server.poll() is None else (0, 0)
                    records.append(
                        {
                            "round": r.id,
                            "status": r.status,
                            "reason": r.reason,
                            "round_s": _seconds(r.opened_at, r.closed_at),
                            "elapsed_s": round(time.perf_counter() - started, 2),
                            "appliance_rss_mib": round(rss / 1024, 1),
                            "appliance_peak_rss_mib": round(hwm / 1024, 1),
                        }
                    )
                    print(json.dumps(records[-1]), flush=True)
                seen = len(done)
                if seen >= rounds or server.poll() is not None:
                    break
                time.sleep(0.5)
            outcomes: dict[str, list[str]] = {}
            for w in workers:
                out, _ = w.communicate(timeout=120)
                outcomes.update(json.loads(out or "{}"))
        finally:
            for w in workers:
                w.kill()
            server.kill()
            server.wait(10)
            log.close()
        published = sum(1 for r in records if r["status"] == "accepted")
        per_client = [o for outs in outcomes.values() for o in outs]
        print(
            json.dumps(
                {
                    "clients": clients,
                    "processes": processes,
                    "dimension": dimension,
                    "rounds_requested": rounds,
                    "rounds_published": published,
                    "client_reports_published": per_client.count("published"),
                    "client_errors": [o for o in per_client if o.startswith("error")][:5],
                    "provision_s": round(provision, 1),
                    "total_s": round(time.perf_counter() - started, 1),
                }
            ),
            flush=True,
        )
        return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    load = sub.add_parser("load", help="one round with many clients")
    load.add_argument("--clients", type=int, default=200)
    load.add_argument("--processes", type=int, default=4)
    load.add_argument("--dimension", type=int, default=1000)
    load.add_argument("--deadline", type=float, default=300.0)
    load.add_argument("--timeout", type=float, default=900.0)
    soak = sub.add_parser("soak", help="many consecutive rounds, RSS per round")
    soak.add_argument("--clients", type=int, default=10)
    soak.add_argument("--processes", type=int, default=2)
    soak.add_argument("--rounds", type=int, default=30)
    soak.add_argument("--dimension", type=int, default=10000)
    soak.add_argument("--deadline", type=float, default=60.0)
    soak.add_argument("--timeout", type=float, default=1200.0)
    args = parser.parse_args()
    rounds = 1 if args.command == "load" else args.rounds
    run(args.clients, args.processes, rounds, args.dimension, args.deadline, args.timeout)


if __name__ == "__main__":
    main()
