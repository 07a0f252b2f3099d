"""One aggregation round on loopback through the real appliance (gRPC + mutual TLS).

Secure (secagg+) against plaintext FedAvg in the same run, same clients, same model,
and the appliance's peak memory as the number of clients grows (masked mode keeps a
running sum, so it should stay flat in n). Clients run as threads of this process;
for the memory figures the appliance runs in its own process and its peak RSS
(VmHWM) is read from /proc.

    .venv/bin/python benchmarks/bench_appliance.py round --clients 10 --dimension 1000000
    .venv/bin/python benchmarks/bench_appliance.py rss --clients 10 50 --dimension 1000000
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from sealagg.appliance.testing import Deployment, RunningAppliance, make_deployment
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant


def _model(dimension: int) -> dict[str, np.ndarray]:
    return {"w": np.zeros(dimension, dtype=np.float32)}


def _clients(dep: Deployment, rounds: int, dimension: int) -> list[threading.Thread]:
    def work(name: str, i: int) -> None:
        delta = np.random.default_rng(i).normal(0, 0.01, dimension).astype(np.float32)
        conn = Connection(dep.kits[name], address=dep.address, timeout=120)
        p = Participant(conn, poll_seconds=1.0)
        for _ in range(rounds):
            p.run_round(lambda start, tensors: (delta, 0.5, {}))
        conn.close()

    threads = [
        threading.Thread(target=work, args=(n, i), daemon=True)
        for i, n in enumerate(sorted(dep.kits))
    ]
    for t in threads:
        t.start()
    return threads


CLIENT_PROCESS = """
import sys
import numpy as np
from sealagg.appliance.kit import load_kit
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant

kit, address = sys.argv[1], sys.argv[2]
index, dim, rounds = (int(a) for a in sys.argv[3:6])
delta = np.random.default_rng(index).normal(0, 0.01, dim).astype(np.float32)
p = Participant(Connection(load_kit(kit), address=address, timeout=120), poll_seconds=1.0)
for _ in range(rounds):
    p.run_round(lambda start, tensors: (delta, 0.5, {}))
"""


def _client_processes(dep: Deployment, rounds: int, dimension: int) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CLIENT_PROCESS,
                str(dep.kits[n].source),
                dep.address,
                str(i),
                str(dimension),
                str(rounds),
            ],
            stderr=subprocess.DEVNULL,
        )
        for i, n in enumerate(sorted(dep.kits))
    ]


def _configure(dep: Deployment, mode: str, clients: int, rounds: int) -> None:
    dep.configure(
        aggregation={
            "mode": mode,
            "min_clients": clients,
            "max_clients": clients,
            "rounds": rounds,
        },
        deadlines={
            k: 120
            for k in (
                "advertise_keys",
                "share_keys",
                "masked_input",
                "consistency_check",
                "unmasking",
            )
        },
    )


def round_seconds(
    mode: str, clients: int, dimension: int, rounds: int = 3, processes: bool = False
) -> list[float]:
    """Round durations (open → published) for ``rounds`` consecutive rounds; the first warms up."""
    return _rounds(mode, clients, dimension, rounds, processes)[0]


def _rounds(
    mode: str,
    clients: int,
    dimension: int,
    rounds: int,
    processes: bool,
    marks_to: Path | None = None,
) -> tuple[list[float], list[float]]:
    """(round seconds, CPU seconds of this process per round). With client processes this
    process is the appliance alone, so the CPU figure is what the appliance itself spends.
    ``marks_to``: append ``mode start end`` (CLOCK_MONOTONIC seconds) of the warm rounds, the
    window a profiler (benchmarks/profile_loopback.py) keeps."""
    with tempfile.TemporaryDirectory() as tmp:
        dep = make_deployment(Path(tmp), clients=clients, model=_model(dimension))
        _configure(dep, mode, clients, rounds)
        app = RunningAppliance(dep.folder)
        workers = (
            _client_processes(dep, rounds, dimension)
            if processes
            else _clients(dep, rounds, dimension)
        )
        history = app.app.orchestrator.history
        marks, seen, window = [time.process_time()], 0, [0.0, 0.0]
        while app.thread.is_alive() and len(history) < rounds:
            if len(history) != seen:  # a round ended: the next one opens right away
                seen = len(history)
                marks.append(time.process_time())
                if seen == 1:
                    window[0] = time.monotonic()  # warm rounds start here
            time.sleep(0.002)
        marks.append(time.process_time())
        window[1] = time.monotonic()
        if marks_to is not None:
            with marks_to.open("a") as out:
                out.write(f"{mode} {window[0]:.6f} {window[1]:.6f} {len(history) - 1}\n")
        app.wait(600)
        for worker in workers:
            if isinstance(worker, subprocess.Popen):
                worker.wait(60)
            else:
                worker.join(60)
        assert all(o.outcome == "published" for o in history), history
        cpu = [b - a for a, b in itertools.pairwise(marks)]
        return [o.seconds for o in history], cpu


SERVE = (
    "import asyncio, sys; from sealagg.appliance.server import Appliance; "
    "asyncio.run(Appliance(sys.argv[1]).run())"
)


def _vm_hwm_kib(pid: int) -> int:
    """Peak resident set of a live process (0 once it has exited)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    return next((int(ln.split()[1]) for ln in lines if ln.startswith("VmHWM:")), 0)


def appliance_peak_rss(mode: str, clients: int, dimension: int) -> tuple[float, float]:
    """(peak RSS in MiB of the appliance process over one round, that round's seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        dep = make_deployment(Path(tmp), clients=clients, model=_model(dimension))
        _configure(dep, mode, clients, 1)
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, str(dep.folder)], stderr=subprocess.DEVNULL
        )
        peak = 0
        start = time.perf_counter()
        threads = _clients(dep, 1, dimension)
        while proc.poll() is None:
            peak = max(peak, _vm_hwm_kib(proc.pid))
            time.sleep(0.05)
        elapsed = time.perf_counter() - start
        for t in threads:
            t.join(60)
        return peak / 1024, elapsed


def _compare_rounds(args: argparse.Namespace, n: int) -> list[dict]:
    """Warm rounds of each mode, the modes alternating ``--repeat`` times; the ratio of the
    medians is the headline (best-of is kept for the bench suite's budgets)."""
    warm: dict[str, list[float]] = {mode: [] for mode in args.modes}
    cpu: dict[str, list[float]] = {mode: [] for mode in args.modes}
    for _ in range(args.repeat):
        for mode in args.modes:
            times, seconds = _rounds(
                mode, n, args.dimension, args.rounds, args.client_processes, args.marks
            )
            warm[mode] += times[1:]  # the first round of a run warms up (JIT, connections)
            cpu[mode] += seconds[1:]
            print(
                f"{mode:10s} n={n:3d} d={args.dimension:,}: rounds {[round(t, 3) for t in times]}"
            )
    results = []
    for mode, times in warm.items():
        median, best = statistics.median(times), min(times)
        used = statistics.median(cpu[mode])
        who = "the appliance" if args.client_processes else "the whole run"
        print(
            f"{mode:10s} n={n:3d}: median {median:.3f} s, best {best:.3f} s of {len(times)}; "
            f"CPU of {who} {used:.3f} s per round (median)"
        )
        results.append(
            {
                "mode": mode,
                "clients": n,
                "d": args.dimension,
                "round_seconds": times,
                "median": median,
                "best": best,
                "cpu_seconds_per_round": cpu[mode],
            }
        )
    if "plaintext" in warm and "secagg+" in warm:
        plain, secure = results[args.modes.index("plaintext")], results[args.modes.index("secagg+")]
        print(
            f"secagg+ / plaintext at n={n}: {secure['median'] / plain['median']:.2f}x (medians), "
            f"{secure['best'] / plain['best']:.2f}x (best rounds), CPU "
            f"{statistics.median(cpu['secagg+']) / statistics.median(cpu['plaintext']):.2f}x"
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["round", "rss"])
    parser.add_argument("--clients", type=int, nargs="+", default=[10])
    parser.add_argument("--dimension", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--marks", type=Path, help="append each run's warm-round window (monotonic clock) here"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds per mode (the first warms up)"
    )
    parser.add_argument(
        "--modes", nargs="+", default=["plaintext", "secagg+"], help="aggregation modes to run"
    )
    parser.add_argument(
        "--client-processes", action="store_true", help="one process per client, not threads"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per mode, alternating the modes (load drifts on a shared machine)",
    )
    args = parser.parse_args()
    results = []
    for n in args.clients:
        if args.what == "round":
            results += _compare_rounds(args, n)
            continue
        for mode in args.modes:
            peak, secs = appliance_peak_rss(mode, n, args.dimension)
            results.append({"mode": mode, "clients": n, "d": args.dimension, "peak_rss_mib": peak})
            label = f"{mode:10s} n={n:3d} d={args.dimension:,}"
            print(f"{label}: appliance peak RSS {peak:.0f} MiB ({secs:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
