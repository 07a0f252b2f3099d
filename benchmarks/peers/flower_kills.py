"""Flower's SecAgg+ through its engine with clients killed at random phases (issue 25's figure).

The Flower side of "loopback n=50, d=100k, secagg+ with 0 / 10 / 30 % of client processes
killed at random phases: round time distribution" (ours: ``benchmarks/bench_dropouts.py``).
Runs in the benchmark-only venv ``.venv-peers`` like ``flower_secagg.py``, whose server-side
strategy it reuses; Flower's ``SecAggPlusWorkflow`` and ``secaggplus_mod`` run unmodified.

A "kill" here is a ClientApp that raises from its chosen stage on for the round: Flower's
simulation engine has no client OS processes to kill (its clients are functions run by Ray
actors), and it turns the exception into an error reply, which the workflow counts as a dropped
node. So Flower learns of each death at once, with no timeout: the fastest a dead client can
possibly be noticed, which flatters Flower next to a real killed process.

Per round, a seeded plan picks ``round(kill * n)`` clients and gives each a stage drawn
uniformly from Flower's four (setup, share_keys, collect_masked_vectors, unmask). Round 1
is a warm-up without kills (Ray actors start, numpy warms) and is listed but not counted.
Measured per round on the server clock: the fit workflow's wall time, each stage's wait, error
replies per stage, and whether the strategy aggregated (a halted round never does).

    .venv-peers/bin/python benchmarks/peers/flower_kills.py --workload n50_d100k_kill0 \
        --workload n50_d100k_kill10 --workload n50_d100k_kill30 --rounds 5 --seed 25 \
        --json /tmp/flower_kills.json --markdown /tmp/flower_kills.md

Runs made separately (e.g. the complete-graph workloads) join into one JSON and table with
``--merge A.json --merge B.json --json OUT [--markdown OUT.md]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import random
import statistics
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import flower_secagg as fs
import numpy as np
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import Context, Message, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.simulation import run_simulation

STAGES = Stage.all()
# SecAggPlusWorkflow's own ERROR lines when it stops a round (flwr 1.42).
HALT_REASONS = (
    "Insufficient available nodes.",
    "Not enough shares to recover secret in unmask vectors stage",
)
NOTES = (
    "A kill is a ClientApp raising from its chosen stage on for that round: Flower's "
    "simulation engine runs clients as functions in Ray actors, so no client OS process can be "
    "killed; the engine turns the exception into an error reply at once, which "
    "SecAggPlusWorkflow counts as a dropped node (no timeout is ever waited for).",
    "Round 1 of each workload is a warm-up without kills and is not in the statistics.",
    "Flower's clients run 2 at a time (1 CPU per Ray actor, 2 cores) and every message is "
    "serialized; times are the fit workflow on the server clock. The machine was shared with "
    "other jobs: the load column is its 1-minute load average before/after each simulation.",
    "SecAggPlusWorkflow's timeout is Flower's default (None: wait for every reply) unless "
    "--timeout says otherwise; it never waits here, because killed clients reply at once.",
    "flwr 1.42 halts every round in which a client dies before its key shares were forwarded "
    "(setup or share_keys): unmask_stage lists it among the dead to every neighbour, whose "
    "secaggplus_mod then raises KeyError looking up a share of it that it never received "
    "(_unmask: state.sk1_share_dict[nid]), so the server is left without enough shares "
    "('Not enough shares to recover secret'). A client dying in collect_masked_vectors or "
    "unmask is survived. The *_late workloads draw stages from those two only.",
)

# Flower's ERROR/WARNING log lines (e.g. why a round halted), in order; sliced per round.
_LOG: list[str] = []


class _Collect(logging.Handler):
    """Keeps each record's first line only (the engine logs every client error's traceback)."""

    def emit(self, record: logging.LogRecord) -> None:
        lines = record.getMessage().strip().splitlines()
        _LOG.append(lines[0][:160] if lines else "")


def kill_plan(seed: int, name: str, n: int, kills: int, rounds: int, stages: tuple[str, ...]):
    """{round: {partition id: stage}} for the measured rounds 2..rounds+1 (round 1 warms up).

    Seeded by (seed, workload name, round): the same command draws the same victims and
    stages again (a workload's name, not only its kill fraction, picks its draw).
    """
    plan: dict[int, dict[int, str]] = {}
    for rnd in range(2, rounds + 2):
        rng = random.Random(f"{seed}:{name}:{rnd}")
        victims = sorted(rng.sample(range(n), kills))
        plan[rnd] = {pid: rng.choice(stages) for pid in victims}
    return plan


def make_kill_mod(plan: dict[int, dict[int, str]]) -> Any:
    """The planned clients raise from their stage on, for their round only."""
    order = {stage: i for i, stage in enumerate(STAGES)}

    def kill_mod(msg: Message, ctxt: Context, call_next: Any) -> Message:
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        stage = configs.get(Key.STAGE) if configs is not None else None
        pid = int(ctxt.node_config.get("partition-id", -1))
        try:
            rnd = int(msg.metadata.group_id)
        except ValueError:
            rnd = -1
        killed_at = plan.get(rnd, {}).get(pid)
        if killed_at is not None and stage in order and order[stage] >= order[killed_at]:
            raise RuntimeError(f"benchmark kill at {killed_at}")
        return call_next(msg, ctxt)

    return kill_mod


class StageGrid:
    """Wraps Flower's grid: per stage, its wait on the server clock and the error replies."""

    def __init__(self, grid: Grid, stages: list[dict[str, Any]]) -> None:
        self._grid = grid
        self._stages = stages

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        stage = "?"
        if messages:
            configs = messages[0].content.config_records.get(RECORD_KEY_CONFIGS)
            stage = str(configs.get(Key.STAGE)) if configs is not None else "?"
        t0 = time.perf_counter()
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        errors = sum(1 for r in replies if r.has_error())
        self._stages.append(
            {
                "stage": stage,
                "sent": len(messages),
                "replies": len(replies),
                "errors": errors,
                "seconds": round(time.perf_counter() - t0, 4),
            }
        )
        return replies


class KillFit:
    """Times one SecAgg+ fit workflow per round and notes its outcome."""

    def __init__(self, inner: SecAggPlusWorkflow, records: list[dict[str, Any]]) -> None:
        self.inner = inner
        self.records = records

    def __call__(self, grid: Grid, context: Context) -> None:
        stages: list[dict[str, Any]] = []
        before, logged = len(fs._AGGREGATED), len(_LOG)
        t0 = time.perf_counter()
        self.inner(StageGrid(grid, stages), context)
        seconds = time.perf_counter() - t0
        self.records.append(
            {
                "round": len(self.records) + 1,
                "seconds": round(seconds, 4),
                # Flower logs a halt but returns nothing: a round completed iff FedAvg aggregated.
                "outcome": "aggregated" if len(fs._AGGREGATED) > before else "halted",
                "stages": stages,
                "flower_log": _counted(_LOG[logged:]),
            }
        )


def _counted(lines: list[str]) -> dict[str, int]:
    """Log lines with how often each occurred, in first-seen order."""
    counts: dict[str, int] = {}
    for line in lines:
        counts[line] = counts.get(line, 0) + 1
    return counts


def _quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile (small samples: no interpolation past what was measured)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"min": None, "median": None, "p90": None, "max": None}
    return {
        "min": min(values),
        "median": statistics.median(values),
        "p90": _quantile(values, 0.9),
        "max": max(values),
    }


def run_workload(w: dict[str, Any], rounds: int, seed: int, timeout: float | None) -> dict:
    """One simulation: a warm-up round, then ``rounds`` SecAgg+ rounds with the planned kills."""
    n, d = int(w["n"]), int(w["d"])
    kill = float(w.get("kill", 0.0))
    kills = round(kill * n)
    stages = tuple(w.get("kill_stages", STAGES))
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"{w['name']}: unknown kill_stages {sorted(unknown)}")
    if int(w["k"]) < n and int(w["k"]) % 2 == 0:
        # flwr 1.42 bumps an even num_shares for its own graph after telling the clients the even
        # one: every client then fails share_keys and every round halts, kills or not.
        raise ValueError(f"{w['name']}: Flower needs an odd k below n (got {w['k']})")
    plan = kill_plan(seed, w["name"], n, kills, rounds, stages)
    initial = ndarrays_to_parameters([np.zeros(d, dtype=np.float32)])

    class BenchClient(NumPyClient):
        def __init__(self, pid: int) -> None:
            self.delta = np.random.default_rng(pid).normal(0, 0.01, d).astype(np.float32)

        def fit(self, parameters, config):
            return [self.delta], 1, {}

    def client_fn(context: Context):
        return BenchClient(int(context.node_config["partition-id"])).to_client()

    client_app = ClientApp(client_fn=client_fn, mods=[make_kill_mod(plan), secaggplus_mod])
    server_app = ServerApp()
    secure = SecAggPlusWorkflow(
        num_shares=int(w["k"]), reconstruction_threshold=int(w["t"]), timeout=timeout
    )
    settings = {
        "num_shares": secure.num_shares,
        "reconstruction_threshold": secure.reconstruction_threshold,
        "timeout": secure.timeout,
        "clipping_range": secure.clipping_range,
        "quantization_range": secure.quantization_range,
        "modulus_range": secure.modulus_range,
        "max_weight": secure.max_weight,
    }
    records: list[dict[str, Any]] = []

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = fs.CountingFedAvg(
            fraction_fit=1.0,
            min_fit_clients=n,
            min_available_clients=n,
            fraction_evaluate=0.0,
            initial_parameters=initial,
            accept_failures=True,
        )
        legacy = LegacyContext(
            context=context, config=ServerConfig(num_rounds=rounds + 1), strategy=strategy
        )
        DefaultWorkflow(fit_workflow=KillFit(secure, records))(grid, legacy)

    fs._AGGREGATED.clear()
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=n,
        backend_config={
            # address "local": a private Ray instance, never another process's cluster found
            # through /tmp/ray (a run joined a test cluster that then went away, and hung).
            "init_args": {"address": "local", "include_dashboard": False},
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        },
    )
    wall = time.perf_counter() - t0
    if not records:
        raise RuntimeError("Flower's simulation ran no SecAgg+ round (see its log)")
    for r in records:
        victims = plan.get(r["round"], {})
        r["warm_up"] = r["round"] == 1
        r["killed"] = [{"client": pid, "stage": stage} for pid, stage in victims.items()]
        r["killed_by_stage"] = {s: sum(1 for v in victims.values() if v == s) for s in STAGES}
        r["halted_at"] = r["stages"][-1]["stage"] if r["outcome"] == "halted" else None
        reasons = [m for m in r["flower_log"] if m in HALT_REASONS]
        r["halt_reason"] = "; ".join(reasons) if r["outcome"] == "halted" else None
    measured = [r for r in records if not r["warm_up"]]
    seconds = [r["seconds"] for r in measured]
    done = [r["seconds"] for r in measured if r["outcome"] == "aggregated"]
    return {
        "workload": w["name"],
        "n": n,
        "d": d,
        "kill_fraction": kill,
        "killed_per_round": kills,
        "kill_stages": list(stages),
        "seed": seed,
        "flower_settings": settings,
        "rounds_measured": len(measured),
        "aggregated": len(done),
        "halted": len(measured) - len(done),
        "round_seconds": _stats(seconds),
        "aggregated_round_seconds": _stats(done),
        "warm_up_seconds": records[0]["seconds"],
        "simulation_wall_seconds": round(wall, 2),
        # The machine is shared: its 1-minute load average before and after the simulation.
        "load_average_1min": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "rounds": records,
    }


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s"


def markdown(out: dict[str, Any]) -> str:
    lines = [
        f"Flower {out['versions']['flwr']} SecAgg+ through its simulation engine "
        f"({out['engine']}), clients killed at random phases (seed {out['seed']}).",
        "",
        "| workload | n | d | killed/round (stages) | k / t | rounds | aggregated / halted "
        "| min | median | p90 | max | median of aggregated | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["results"]:
        s, a = r["round_seconds"], r["aggregated_round_seconds"]
        f = r["flower_settings"]
        which = "all" if len(r["kill_stages"]) == len(STAGES) else "+".join(r["kill_stages"])
        lines.append(
            f"| {r['workload']} | {r['n']} | {r['d']:,} | {r['killed_per_round']} "
            f"({round(100 * r['kill_fraction'])} %, {which}) "
            f"| {f['num_shares']} / {f['reconstruction_threshold']} "
            f"| {r['rounds_measured']} | {r['aggregated']} / {r['halted']} "
            f"| {_fmt(s['min'])} | {_fmt(s['median'])} | {_fmt(s['p90'])} "
            f"| {_fmt(s['max'])} | {_fmt(a['median'])} "
            f"| {'/'.join(str(x) for x in r['load_average_1min'])} |"
        )
    for e in out["errors"]:
        lines.append(f"| {e['workload']} | error: {e['error']} |")
    lines += ["", *[f"- {note}" for note in out["notes"]]]
    lines += [
        "",
        "Per round (killed per stage: setup / share_keys / collect_masked_vectors / unmask):",
        "",
        "| workload | round | killed per stage | seconds | outcome | halted at: Flower's reason |",
        "|---|---|---|---|---|---|",
    ]
    for r in out["results"]:
        for x in r["rounds"]:
            per_stage = " / ".join(str(x["killed_by_stage"][s]) for s in STAGES)
            why = f"{x['halted_at']}: {x['halt_reason']}" if x["outcome"] == "halted" else ""
            tag = " (warm-up)" if x["warm_up"] else ""
            lines.append(
                f"| {r['workload']} | {x['round']}{tag} | {per_stage} | {x['seconds']:.2f} "
                f"| {x['outcome']} | {why} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", action="append", help="name in workloads.toml")
    parser.add_argument(
        "--merge", action="append", type=Path, help="instead of running: merge these outputs"
    )
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (after a warm-up)")
    parser.add_argument("--seed", type=int, default=25, help="seeds the kill plan")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="SecAggPlusWorkflow's timeout in seconds (default: Flower's own, None = wait for "
        "every reply; in its simulation a failed client replies at once with an error)",
    )
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    if args.merge:
        write(merged([json.loads(p.read_text()) for p in args.merge]), args.json, args.markdown)
        return
    if not args.workload:
        parser.error("--workload or --merge is required")
    table = {w["name"]: w for w in tomllib.loads(fs.WORKLOADS.read_text())["workload"]}
    for name in args.workload:
        if name not in table:
            parser.error(f"unknown workload {name!r} (known: {', '.join(table)})")
    flwr_log = logging.getLogger("flwr")
    flwr_log.setLevel(logging.WARNING)
    flwr_log.addHandler(_Collect(logging.WARNING))
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import flwr
    import ray

    out: dict[str, Any] = {
        "peer": "flower",
        "engine": "flwr.simulation.run_simulation, Ray backend, 1 CPU per client actor",
        "versions": {
            "flwr": flwr.__version__,
            "ray": ray.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "seed": args.seed,
        "notes": list(NOTES),
        "results": [],
        "errors": [],
    }
    for name in args.workload:
        try:
            out["results"].append(run_workload(table[name], args.rounds, args.seed, args.timeout))
        except Exception as error:  # a peer failure is a result to report, not a crash
            out["errors"].append({"workload": name, "error": repr(error)})
        args.json.write_text(json.dumps(out, indent=2))
    write(out, args.json, args.markdown)


def merged(outputs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs' outputs as one (the first run's header; every run's results and errors)."""
    out = {**outputs[0], "notes": list(NOTES), "results": [], "errors": []}
    for o in outputs:
        if o["versions"] != out["versions"] or o["seed"] != out["seed"]:
            raise SystemExit("refusing to merge runs of different versions or seeds")
        out["results"] += o["results"]
        out["errors"] += o["errors"]
    return out


def write(out: dict[str, Any], json_path: Path, markdown_path: Path | None) -> None:
    json_path.write_text(json.dumps(out, indent=2))
    text = markdown(out)
    if markdown_path:
        markdown_path.write_text(text)
    print(text, file=sys.stderr)


if __name__ == "__main__":
    main()
