"""Rounds whose client processes die mid-protocol, through the real appliance (issue 25).

Loopback gRPC with mutual TLS, the appliance in this process (``RunningAppliance``), one OS
process per client. In every measured round a fraction of the client processes die at a
random protocol phase: like the demo client's ``Vanisher`` (client_shim/demo/client.py) the
process wraps ``connection.submit`` and calls ``os._exit`` instead of sending the chosen
phase's message, so the kernel closes its sockets exactly as for a SIGKILL. The dead are
started again once the round has ended (as the demo's supervisor does), and the next round
opens only when all n are back (``min_clients = n``), so every round begins with n clients.
The first ``--warmup`` rounds have no kills: the adaptive deadlines need a history.
At n >= 50 the SecAgg+ graph is sparse and its seed comes from coins every client committed
to: a client that dies before revealing its coin aborts the round by design (crypto/coins.py).
The appliance then replaces that round at once with a fresh one, uncounted
(``Orchestrator._vanished_before_reveal``); ``--reveal-restarts off`` measures the old
behaviour in the same run (``MAX_REVEAL_RESTARTS = 0``), and ``--phases`` without
``reveal_coins`` shows the rounds that need no replacement. The run lasts ``--warmup +
--rounds`` counted rounds; replaced rounds come on top. The kill plan is by round number
(rounds 1..warmup+rounds as opened, replacements included), so every round opened up to
there loses its share of processes and the rounds after it have no kills. Each client's
ledger pauses it after 8 revealed rounds in a row that never finished (crypto/ledger.py):
at 30 % kills uniform over phases most rounds lose a revealer, and clients reach that pause.

The appliance keeps its DEFAULT deadlines (the configured maxima; adaptive on): with
``--presence off`` the clients only poll (the old client), so the figures show what such a
client costs; ``--presence on`` clients hold the live Presence stream, so a dead process is
noticed at once. ``--deadline S`` sets every phase's maximum to S seconds instead (only for
debugging the harness on code without presence or adaptive deadlines).

Per round: the appliance's own round time (open -> end, ``RoundOutcome.seconds``), outcome,
how many members it dropped, how many processes died; per setting min/median/p90/max.

    .venv/bin/python benchmarks/bench_dropouts.py --clients 50 --dimension 100000 \
        --kill 0 0.1 0.3 --presence both --rounds 8 --json /tmp/dropouts.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sealagg.appliance.testing import Deployment, RunningAppliance, make_deployment
from sealagg.client_shim.demo.client import PHASES, VANISHED_EXIT_CODE
from sealagg.client_shim.session import Participant

PHASE_NAMES = (
    "advertise_keys",
    "share_keys",
    "masked_input",
    "consistency_check",
    "unmasking",
)


def presence_supported() -> bool:
    """Whether this build's shim has the Presence keeper (``Participant(presence=...)``)."""
    return "presence" in inspect.signature(Participant.__init__).parameters


def kill_plan(
    names: list[str], rounds: range, fraction: float, seed: int, phases: list[int]
) -> dict[int, dict[str, int]]:
    """{round number: {client: phase index in PHASES}}: round(fraction * n) victims a round,
    each at a uniformly drawn phase (a phase the round does not have, e.g. reveal coins on
    a complete graph, means the next one it has)."""
    count = round(fraction * len(names))
    rng = np.random.default_rng([seed, 0x25])
    plan: dict[int, dict[str, int]] = {}
    for number in rounds:
        victims = rng.choice(names, size=count, replace=False) if count else []
        plan[number] = {str(v): int(rng.choice(phases)) for v in victims}
    return plan


# --------------------------------------------------------------------------- client process


def client_main(argv: list[str]) -> int:
    """One client process: rounds until the run ends or round ``last`` is done; dies
    (exit :data:`VANISHED_EXIT_CODE`) where the plan says."""
    import grpc

    from sealagg.appliance.kit import load_kit
    from sealagg.client_shim.connection import Connection
    from sealagg.client_shim.demo.client import Vanisher
    from sealagg.client_shim.errors import RoundRefusedError, RunEnded

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    kit_path, address, index, dimension, plan_file, presence, last = argv
    kit = load_kit(Path(kit_path))
    plan = json.loads(Path(plan_file).read_text())
    delta = np.random.default_rng(int(index)).normal(0, 0.01, int(dimension)).astype(np.float32)
    connection = Connection(kit, address=address, timeout=120)
    options = {} if presence == "default" else {"presence": presence == "on"}
    participant = Participant(connection, poll_seconds=1.0, **options)
    vanisher = Vanisher(lambda record: None)
    connection.submit = vanisher.wrap(connection.submit)

    def compute(start, tensors):  # the round's plan is set before anything is sent
        vanisher.round_number = start.round_number
        vanisher.phase = plan.get(str(start.round_number), {}).get(kit.name)
        return delta, 0.5, {}

    while True:
        try:
            report = participant.run_round(compute)
        except RunEnded:
            return 0
        except (grpc.RpcError, RoundRefusedError):  # the round went on without us
            continue
        if report.round_number >= int(last):
            return 0


# --------------------------------------------------------------------------- the harness


class Clients:
    """The client processes of one deployment; a dead one is started again on request."""

    def __init__(self, dep: Deployment, dimension: int, plan_file: Path, presence: str, last: int):
        self.dep, self.dimension, self.plan_file = dep, dimension, plan_file
        self.presence, self.last = presence, last
        self.names = sorted(dep.kits)
        self.logs = dep.folder.parent / "client-logs"
        self.logs.mkdir(exist_ok=True)
        self.procs = {name: self._start(name) for name in self.names}
        self.restarts = 0

    def _start(self, name: str) -> subprocess.Popen:
        argv = [
            str(self.dep.kits[name].source),
            self.dep.address,
            str(self.names.index(name)),
            str(self.dimension),
            str(self.plan_file),
            self.presence,
            str(self.last),
        ]
        with (self.logs / f"{name}.log").open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-P", __file__, "_client", *argv],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def vanished(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() == VANISHED_EXIT_CODE]

    def failed(self) -> dict[str, int]:
        """Processes that ended other than by a planned death or a clean exit."""
        codes = {n: p.poll() for n, p in self.procs.items()}
        return {n: c for n, c in codes.items() if c not in (None, 0, VANISHED_EXIT_CODE)}

    def restart_vanished(self) -> int:
        dead = self.vanished()
        for name in dead:
            self.procs[name] = self._start(name)
        self.restarts += len(dead)
        return len(dead)

    def log_tail(self, name: str, lines: int = 15) -> str:
        return "\n".join((self.logs / f"{name}.log").read_text().splitlines()[-lines:])

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _configure(dep: Deployment, args: argparse.Namespace, kill: float, total: int) -> None:
    """secagg+, every client in every round; the deadlines stay the appliance's defaults
    unless ``--deadline`` (debugging) sets them."""
    sections: dict[str, dict] = {
        "aggregation": {
            "mode": "secagg+",
            "min_clients": args.clients,
            "max_clients": args.clients,
            "rounds": total,
            # as the demo does (client_shim/demo/provision.py): the parameter finder
            # chooses the threshold for the dropouts the federation expects
            "dropout_rate": max(0.1, round(kill, 3)),
        }
    }
    if args.deadline is not None:
        sections["deadlines"] = dict.fromkeys(PHASE_NAMES, args.deadline)
    dep.configure(**sections)


def run_setting(args: argparse.Namespace, kill: float, presence: str, restarts: str) -> dict:
    """One fresh deployment: warm-up rounds, then ``--rounds`` rounds with kills."""
    from bench_appliance import _model  # a sibling file (the client processes do not need it)

    import sealagg.appliance.orchestrator as orchestrator_module

    total = args.warmup + args.rounds
    saved_restarts = orchestrator_module.MAX_REVEAL_RESTARTS
    if restarts == "off":
        orchestrator_module.MAX_REVEAL_RESTARTS = 0
    with tempfile.TemporaryDirectory() as tmp:
        dep = make_deployment(Path(tmp), clients=args.clients, model=_model(args.dimension))
        _configure(dep, args, kill, total)
        plan = kill_plan(
            sorted(dep.kits),
            range(args.warmup + 1, total + 1),  # by round number: replacements included
            kill,
            args.seed,
            [PHASES.index(p) for p in args.phases],
        )
        plan_file = Path(tmp) / "plan.json"
        plan_file.write_text(json.dumps(plan))
        load_before = _loadavg()
        app = RunningAppliance(dep.folder)
        clients = Clients(dep, args.dimension, plan_file, presence, 3 * total)
        history = app.app.orchestrator.history
        started = time.monotonic()
        ends: list[float] = []
        vanished: list[int] = []
        try:
            while app.thread.is_alive():  # the implicit run ends the appliance
                if len(history) > len(ends):  # a round ended: bring the dead back
                    ends.append(time.monotonic())
                    vanished.append(clients.restart_vanished())
                if failed := clients.failed():
                    name = next(iter(failed))
                    raise RuntimeError(f"client {name} failed: {failed}\n{clients.log_tail(name)}")
                if time.monotonic() - started > args.timeout:
                    raise TimeoutError(f"setting not done after {args.timeout} s: {history}")
                time.sleep(0.01)
            ends.append(time.monotonic())
            vanished.append(len(clients.vanished()))
            app.wait(120)
        finally:
            orchestrator_module.MAX_REVEAL_RESTARTS = saved_restarts
            app.stop()
            clients.stop()
            if args.logs:  # the clients' logs outlive the temporary deployment
                keep = args.logs / f"kill{kill:g}-presence-{presence}"
                shutil.copytree(clients.logs, keep, dirs_exist_ok=True)
        load_after = _loadavg()
    rows = []
    previous = started
    for outcome, end, died in zip(history, ends, vanished, strict=False):
        rows.append(
            {
                "round": outcome.number,
                "warmup": outcome.number <= args.warmup,
                "outcome": outcome.outcome,
                "reason": outcome.reason,
                "seconds": round(outcome.seconds, 3),
                "cycle_seconds": round(end - previous, 3),  # end to end, restarts included
                "planned_kills": len(plan.get(outcome.number, {})),
                "kill_phases": sorted(PHASES[p] for p in plan.get(outcome.number, {}).values()),
                "processes_died": died,
                "dropped": len(outcome.dropped),
                "contributors": len(outcome.contributors),
                # aborted for a vanished coin revealer and replaced at once, uncounted
                "replaced": bool(outcome.vanished_before_reveal) and restarts == "on",
            }
        )
        previous = end
    return {
        "kill": kill,
        "presence": presence,
        "reveal_restarts": restarts,
        "clients": args.clients,
        "d": args.dimension,
        "deadline": args.deadline,
        "phases": args.phases,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "rounds": rows,
        "summary": summarize([r for r in rows if not r["warmup"]]),
    }


def summarize(rows: list[dict]) -> dict:
    times = [r["seconds"] for r in rows]
    counted = len(rows) - sum(r["replaced"] for r in rows)
    published = [r["seconds"] for r in rows if r["outcome"] == "published"]
    if not times:
        return {}
    return {
        "rounds": len(times),
        "min": min(times),
        "median": statistics.median(times),
        "p90": float(np.percentile(times, 90)),
        "max": max(times),
        "aborted": sum(r["outcome"] == "aborted" for r in rows),
        # an aborted round ends early: the median over all rounds mixes two kinds
        "published_median": statistics.median(published) if published else None,
        "died": sum(r["processes_died"] for r in rows),
        "dropped_median": statistics.median(r["dropped"] for r in rows),
        "cycle_median": statistics.median(r["cycle_seconds"] for r in rows),
        "replaced": sum(r["replaced"] for r in rows),
        "published": len(published),
        # what a counted round costs, its replaced attempts included (appliance time)
        "seconds_per_counted_round": sum(times) / max(1, counted),
    }


def markdown(results: list[dict]) -> str:
    lines = [
        "| killed | presence | reveal restarts | rounds | replaced | published | min s | median s "
        "| p90 s | max s | aborted | median s of published rounds | s per counted round "
        "| processes died | dropped (median) | round-to-round s (median) "
        "| load avg (before → after) |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        s = r["summary"]
        if not s:
            continue
        pub = "-" if s["published_median"] is None else f"{s['published_median']:.2f}"
        lines.append(
            f"| {r['kill']:.0%} | {r['presence']} | {r['reveal_restarts']} | {s['rounds']} "
            f"| {s['replaced']} | {s['published']} | {s['min']:.2f} "
            f"| {s['median']:.2f} | {s['p90']:.2f} | {s['max']:.2f} | {s['aborted']} "
            f"| {pub} | {s['seconds_per_counted_round']:.2f} "
            f"| {s['died']} | {s['dropped_median']:g} | {s['cycle_median']:.2f} "
            f"| {r['loadavg_before']} → {r['loadavg_after']} |"
        )
    return "\n".join(lines)


def _plain(values: dict) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--dimension", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=8, help="measured rounds per setting")
    parser.add_argument("--warmup", type=int, default=3, help="rounds without kills, first")
    parser.add_argument("--kill", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    parser.add_argument("--presence", choices=["on", "off", "both"], default="both")
    parser.add_argument(
        "--reveal-restarts",
        choices=["on", "off", "both"],
        default="on",
        help="replace a round whose coin revealer vanished (on: this appliance; off: before)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--phases",
        nargs="+",
        choices=PHASES,
        default=list(PHASES),
        help="phases a killed process may die before (drawn uniformly)",
    )
    parser.add_argument(
        "--deadline", type=float, default=None, help="every phase's maximum (default: config's)"
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per setting")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--logs", type=Path, help="keep the client processes' logs here")
    args = parser.parse_args()
    paths = ["on", "off"] if args.presence == "both" else [args.presence]
    if not presence_supported():
        if "on" in paths:
            parser.error("this build's Participant has no presence= option (no Presence keeper)")
        paths = ["default"]  # the old shim: poll only
    restart_modes = ["on", "off"] if args.reveal_restarts == "both" else [args.reveal_restarts]
    settings = [(k, p, r) for k in args.kill for p in paths for r in restart_modes]
    results = []
    for kill, presence, restarts in settings:
        result = run_setting(args, kill, presence, restarts)
        results.append(result)
        s = result["summary"]
        print(
            f"kill {kill:.0%} presence {presence} reveal restarts {restarts}: "
            f"{[(r['seconds'], r['outcome'][0], r['dropped']) for r in result['rounds']]} "
            f"median {s.get('median', 0):.2f} s, p90 {s.get('p90', 0):.2f} s, "
            f"aborted {s.get('aborted', 0)} (load {result['loadavg_after']})",
            flush=True,
        )
        if args.json:  # written as it goes: a long run keeps what it measured
            args.json.write_text(
                json.dumps(
                    {"args": _plain(vars(args)), "results": results},
                    indent=2,
                )
            )
    print(markdown(results))


if __name__ == "__main__":
    if sys.argv[1:2] == ["_client"]:
        sys.exit(client_main(sys.argv[2:]))
    main()
