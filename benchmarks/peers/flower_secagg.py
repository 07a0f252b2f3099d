"""Flower's own SecAgg+ (SecAggPlusWorkflow + secaggplus_mod) through Flower's simulation engine.

Peer baseline for ``./run bench`` (issue 9). Runs in the separate benchmark-only venv
(``.venv-peers``, locked in ``benchmarks/peers/lock.txt``, made by ``peers_env.sh``) because
flwr pins grpcio/protobuf versions that conflict with ours; it imports nothing of sealagg.
Flower's code runs unmodified: we only add a timing mod in front of ``secaggplus_mod`` on the
clients and a timing wrapper around the grid on the server, plus (for dropout workloads) a mod
that makes the chosen clients fail from the masked-input stage on, which Flower treats as a
dropped node.

Measured per workload, best round after a warm-up round:
  round_seconds      the fit workflow (all four SecAgg+ stages, incl. unmasking and
                     dequantizing the sum), server clock; in SecAgg+ mode without the
                     strategy's re-average of the finished sum (``strategy_seconds``)
  server_seconds     that time minus the time spent waiting in ``grid.send_and_receive``
  client_seconds     per client, summed over its stages (timing mod around secaggplus_mod + fit)
  bytes_up/down      per client, serialized protobuf size of the message contents
and Flower's plain FedAvg (default fit workflow) on the same inputs as its own baseline.

    .venv-peers/bin/python benchmarks/peers/flower_secagg.py --workload n10_d1M --json out.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import ConfigRecord, Context, Message, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.serde import recorddict_to_proto
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.default_workflows import default_fit_workflow
from flwr.simulation import run_simulation

BENCH_KEY = "sealagg_bench"
WORKLOADS = Path(__file__).with_name("workloads.toml")

# Filled by the ServerApp, which runs in this process (a thread of run_simulation).
_ROUNDS: list[dict[str, Any]] = []
_AGGREGATED: list[int] = []


_STRATEGY_SECONDS: list[float] = []


class CountingFedAvg(FedAvg):
    """Flower's FedAvg, noting each round it aggregates (a halted SecAgg+ round never does)
    and how long its ``aggregate_fit`` took.

    In SecAgg+ mode Flower's workflow has already unmasked and dequantized the sum; for
    backward compatibility it then sets every client's result to that sum and calls the
    strategy, so FedAvg re-averages n identical copies (n x d work). Our rounds end at the sum,
    so that time is measured here and taken out of the SecAgg+ round (issue 20: like for like);
    the row reports it as ``strategy_seconds``.
    """

    def aggregate_fit(self, server_round, results, failures):
        _AGGREGATED.append(server_round)
        t0 = time.perf_counter()
        try:
            return super().aggregate_fit(server_round, results, failures)
        finally:
            _STRATEGY_SECONDS.append(time.perf_counter() - t0)


def _content_bytes(msg: Message) -> int:
    return recorddict_to_proto(msg.content).ByteSize() if msg.has_content() else 0


class TimedGrid:
    """Wraps Flower's grid: time spent waiting for clients, and bytes each way per node."""

    def __init__(self, grid: Grid, record: dict[str, Any]) -> None:
        self._grid = grid
        self._record = record

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        down = self._record["bytes_down"]
        for m in messages:
            nid = m.metadata.dst_node_id
            down[nid] = down.get(nid, 0) + _content_bytes(m)
        t0 = time.perf_counter()
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self._record["wait_seconds"] += time.perf_counter() - t0
        up = self._record["bytes_up"]
        for r in replies:
            if r.has_error():
                continue
            nid = r.metadata.src_node_id
            # The timing record is ours; count Flower's bytes only.
            bench = r.content.config_records.pop(BENCH_KEY, None)
            up[nid] = up.get(nid, 0) + _content_bytes(r)
            if bench is not None:
                secs = self._record["client_seconds"]
                secs[nid] = secs.get(nid, 0.0) + float(bench["seconds"])
        return replies


class TimedFit:
    """Times one fit workflow (SecAgg+ or Flower's default) per round."""

    def __init__(self, inner: Any, mode: str) -> None:
        self.inner = inner
        self.mode = mode

    def __call__(self, grid: Grid, context: Context) -> None:
        record: dict[str, Any] = {
            "mode": self.mode,
            "wait_seconds": 0.0,
            "bytes_up": {},
            "bytes_down": {},
            "client_seconds": {},
        }
        before = len(_AGGREGATED)
        strategy_before = len(_STRATEGY_SECONDS)
        t0 = time.perf_counter()
        self.inner(TimedGrid(grid, record), context)
        elapsed = time.perf_counter() - t0
        # SecAgg+: the strategy's re-average of the finished sum is not part of the protocol.
        strategy = sum(_STRATEGY_SECONDS[strategy_before:]) if self.mode == "secagg+" else 0.0
        record["strategy_seconds"] = strategy
        record["round_seconds"] = elapsed - strategy
        record["server_seconds"] = record["round_seconds"] - record["wait_seconds"]
        # Flower logs a halt but returns nothing: a round completed iff the strategy aggregated.
        record["completed"] = len(_AGGREGATED) > before
        _ROUNDS.append(record)


def timing_mod(msg: Message, ctxt: Context, call_next: Any) -> Message:
    """Client-side time of everything after it (secaggplus_mod, and fit at masked input)."""
    t0 = time.perf_counter()
    reply = call_next(msg, ctxt)
    seconds = time.perf_counter() - t0
    if reply.has_content():
        reply.content.config_records[BENCH_KEY] = ConfigRecord({"seconds": seconds})
    return reply


def make_dropout_mod(dropping: set[int]) -> Any:
    """Chosen clients fail from the masked-input stage on: dropped after sharing keys."""

    def dropout_mod(msg: Message, ctxt: Context, call_next: Any) -> Message:
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        stage = configs.get(Key.STAGE) if configs is not None else None
        pid = int(ctxt.node_config.get("partition-id", -1))
        if pid in dropping and stage in (Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK):
            raise RuntimeError("benchmark dropout")
        return call_next(msg, ctxt)

    return dropout_mod


def secagg_or_plain_mod(msg: Message, ctxt: Context, call_next: Any) -> Message:
    """Flower's secaggplus_mod for SecAgg+ messages; plain FedAvg messages go straight to fit.

    Lets one simulation (one Ray start-up) run Flower's FedAvg rounds and then its SecAgg+
    rounds on the same client actors; secaggplus_mod itself is called unmodified.
    """
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def _summary(w: dict[str, Any], mode: str, records: list[dict[str, Any]], drop: int) -> dict:
    """The best round after the warm-up round (all rounds are listed too)."""
    timed = records[1:] if len(records) > 1 else records
    best = min(timed, key=lambda r: r["round_seconds"])
    uploaders = len(best["bytes_up"]) or 1
    return {
        "workload": w["name"],
        "mode": mode,
        "n": int(w["n"]),
        "d": int(w["d"]),
        "k": int(w["k"]),
        "t": int(w["t"]),
        "dropout": float(w["dropout"]) if mode == "secagg+" else 0.0,
        "dropped": drop if mode == "secagg+" else 0,
        "rounds": [round(r["round_seconds"], 4) for r in records],
        "round_seconds": best["round_seconds"],
        "server_seconds": best["server_seconds"],
        "strategy_seconds": best["strategy_seconds"],
        "client_seconds_per_client": (
            sum(best["client_seconds"].values()) / max(1, len(best["client_seconds"]))
        ),
        "bytes_up_per_client": sum(best["bytes_up"].values()) / uploaders,
        "bytes_down_per_client": sum(best["bytes_down"].values()) / max(1, len(best["bytes_down"])),
        "outcome": "completed" if all(r["completed"] for r in records) else "halted",
    }


def run_workload(w: dict[str, Any], rounds: int, fedavg: bool) -> list[dict[str, Any]]:
    """One simulation: ``rounds`` of Flower's FedAvg (optional), then ``rounds`` of SecAgg+."""
    n, d = int(w["n"]), int(w["d"])
    drop = round(float(w["dropout"]) * n)
    dropping = set(random.Random(n).sample(range(n), drop))
    initial = ndarrays_to_parameters([np.zeros(d, dtype=np.float32)])

    class BenchClient(NumPyClient):
        def __init__(self, pid: int) -> None:
            rng = np.random.default_rng(pid)
            self.delta = rng.normal(0, 0.01, d).astype(np.float32)

        def fit(self, parameters, config):
            return [self.delta], 1, {}

    def client_fn(context: Context):
        return BenchClient(int(context.node_config["partition-id"])).to_client()

    mods = [make_dropout_mod(dropping), timing_mod, secagg_or_plain_mod]
    client_app = ClientApp(client_fn=client_fn, mods=mods)
    server_app = ServerApp()

    def legacy(context: Context) -> LegacyContext:
        strategy = CountingFedAvg(
            fraction_fit=1.0,
            min_fit_clients=n,
            min_available_clients=n,
            fraction_evaluate=0.0,
            initial_parameters=initial,
            accept_failures=True,
        )
        return LegacyContext(
            context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy
        )

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        if fedavg:
            plain = TimedFit(default_fit_workflow, "fedavg")
            DefaultWorkflow(fit_workflow=plain)(grid, legacy(context))
        secure = SecAggPlusWorkflow(
            num_shares=int(w["k"]),
            reconstruction_threshold=int(w["t"]),
            timeout=float(w.get("timeout", 300)),
        )
        DefaultWorkflow(fit_workflow=TimedFit(secure, "secagg+"))(grid, legacy(context))

    _ROUNDS.clear()
    _AGGREGATED.clear()
    _STRATEGY_SECONDS.clear()
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
    out = []
    for mode in ("fedavg", "secagg+") if fedavg else ("secagg+",):
        records = [r for r in _ROUNDS if r["mode"] == mode]
        if not records:
            raise RuntimeError(f"Flower's simulation ran no {mode} round (see its log)")
        out.append({**_summary(w, mode, records, drop), "simulation_wall_seconds": wall})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", action="append", required=True, help="name in workloads.toml")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per simulation (1st warms)")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--no-fedavg", action="store_true", help="skip Flower's plain FedAvg")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    table = {w["name"]: w for w in tomllib.loads(WORKLOADS.read_text())["workload"]}
    import flwr
    import ray

    out: dict[str, Any] = {
        "peer": "flower",
        "engine": "flwr.simulation.run_simulation (Ray backend, 1 CPU per client actor)",
        "versions": {
            "flwr": flwr.__version__,
            "ray": ray.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "results": [],
        "errors": [],
    }
    for name in args.workload:
        if name not in table:
            parser.error(f"unknown workload {name!r} (known: {', '.join(table)})")
        try:
            out["results"] += run_workload(table[name], args.rounds, not args.no_fedavg)
        except Exception as error:  # a peer failure is a result to report, not a crash
            out["errors"].append({"workload": name, "mode": "secagg+", "error": repr(error)})
        args.json.write_text(json.dumps(out, indent=2))
    print(json.dumps(out["results"], indent=1), file=sys.stderr)


if __name__ == "__main__":
    main()
