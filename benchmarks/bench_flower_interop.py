"""Issue 23's side-by-side figure: one Flower app, sealagg's mod/workflow against Flower's SecAgg+.

Run with the pinned Flower environment (``scripts/flower_env.sh``), never the main venv::

    .venv-flower/bin/python -P benchmarks/bench_flower_interop.py \
        --setting 10,100000 --setting 10,1000000 --setting 50,100000 --setting 50,1000000 \
        --rounds 3 --json /tmp/flower_interop.json --markdown /tmp/flower_interop.md

One Flower app: ``n`` ClientApps whose ``fit`` returns a fixed synthetic update of dimension
``d`` (seeded per client, cached in the client actor after its first round: training is not
what is measured) with ``num_examples = 500``. Each setting is one run of Flower's simulation
engine (a fresh child process, a private Ray instance, one client actor with 1 CPU, the same
engine for both sides) in
which the fit rounds alternate between

* ``sealagg``: ``sealagg_mod`` + ``SealaggWorkflow(num_shares=k, reconstruction_threshold=t)``;
* ``flower``: Flower's ``secaggplus_mod`` + ``SecAggPlusWorkflow(num_shares=k,
  reconstruction_threshold=t)``,

with the same FedAvg strategy, ClientApp and knobs (``num_shares`` counts the client itself on
both sides, so k - 1 neighbours each; clipping_range 8, quantization_range 2^22, modulus 2^32,
max_weight 1000, a stage deadline no round comes near, no dropouts). The ClientApp carries both
mods behind a dispatcher that hands each TRAIN message to the mod whose record it carries.
Rounds 1-2 warm up each side once; then ``--rounds`` measured pairs, the order within a pair
alternating (sealagg, flower), (flower, sealagg), ... because the machine is noisy and shared.

Measured per round, in the ServerApp thread around the fit workflow call:

* ``wall``: the fit stage's wall time on the server clock (configure_fit, every protocol stage
  including the clients' work, aggregate_fit);
* ``wait``: the part spent inside ``grid.send_and_receive`` (clients and engine), so ``wall -
  wait`` is the server's own protocol work;
* ``bytes sent per client``: payload bytes of the replies each client sent in the round, summed
  over the stages: every ``Array``'s serialized bytes, every bytes/str value by length, every
  number as 8 bytes, of every record in the reply's ``RecordDict`` (what the mods put there:
  sealagg's msgpack payloads, Flower's lists of key/cipher bytes and its masked ``.npy``
  vector). Flower's own protobuf framing is not counted (a few bytes per value). Received
  bytes (the server's messages, the fit instructions with the global model included) likewise;
* ``server CPU (workflow)``: the CPU time of the ServerApp thread plus the threads it starts
  and joins within the round (Flower's Shamir reconstruction runs in thread pools; sealagg's
  workflow starts none): ``time.process_time()`` of the driver process minus what every
  thread alive before and after the round other than the ServerApp thread used (Flower's
  simulation engine, Ray's driver threads; per-thread nanoseconds from
  /proc/self/task/*/schedstat). The JSON also has ``time.thread_time()`` of the ServerApp
  thread alone and the whole driver process's CPU; ``workers CPU``: the CPU time of this
  process's descendants from /proc (Ray's raylet, GCS and the client actor: mostly the
  ClientApps' protocol work);
* the aggregate's largest error against the exact mean of the clients' updates, the round's
  outcome, and the 1-minute load average before and after.

Known floors and differences, the same for both sides unless said: Flower's in-memory grid
polls for replies every 0.1 s (``InMemoryGrid.pull_interval``), so every stage costs at least
0.1-0.3 s, and sealagg's workflow has more stages (identify and offer, then sealagg's phases: 6
round trips on the complete graph, 7 with the coin reveal of a sparse graph; Flower's has 4).
One client actor serves every ClientApp in turn. Flower's masked vector travels as int64
(8 bytes a coordinate), sealagg's as Z_(2^32) words (4 bytes). Flower quantizes each value to
2^22 levels; sealagg to 2^32/n (at least as fine). Flower's mean comes back float64, which the
benchmark casts back to float32 after each round (outside the timing) so that every round
downloads the same model.

``--json OUT`` keeps everything (per-stage waits too); the markdown table has medians over the
measured rounds with their min-max and the per-pair ratio flower/sealagg. A setting that does
not finish within ``--setting-timeout`` is stopped; the rounds it finished are kept and marked.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path
from typing import Any

SIDES = ("sealagg", "flower")
NUM_EXAMPLES = 500
MAX_WEIGHT = 1000.0
CLIPPING_RANGE = 8.0
QUANTIZATION_RANGE = 1 << 22
MODULUS_RANGE = 1 << 32
UPDATE_SCALE = 0.01
REPO = Path(__file__).resolve().parents[1]


def default_kt(n: int) -> tuple[int, int]:
    """Flower's (num_shares, reconstruction_threshold) for n, both counting as Flower does.

    n <= 10: the complete graph with t = 2, sealagg's finder's own choice at n=10 and the
    issue-9 workloads' (benchmarks/peers/workloads.toml). Larger n: sealagg's finder picks
    degree 25, t = 5 at n=50; Flower needs an odd num_shares below n (flwr 1.42 bumps an even
    one for its graph but tells the clients the even one), so 27 = 26 neighbours + the client,
    as in benchmarks/peers/flower_kills.py. Both sides get the same numbers.
    """
    if n <= 10:
        return n, 2
    return 27, 5


def client_update(seed: int, pid: int, d: int):
    import numpy as np

    rng = np.random.default_rng([seed, pid])
    return ((rng.random(d, dtype=np.float32) - 0.5) * (2 * UPDATE_SCALE)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Inside one simulation (child process).


def payload_bytes(content: Any) -> int:
    """What the records of a ``RecordDict`` carry, in bytes (no protobuf framing)."""
    total = 0
    for record in content.array_records.values():
        total += sum(len(array.data) for array in record.values())
    for record in content.config_records.values():
        total += sum(_value_bytes(v) for v in record.values())
    for record in content.metric_records.values():
        total += sum(_value_bytes(v) for v in record.values())
    return total


def _value_bytes(value: Any) -> int:
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, list):
        return sum(_value_bytes(v) for v in value)
    if isinstance(value, bool):
        return 1
    return 8  # int / float


def descendants_cpu() -> float:
    """CPU seconds (user + system) of this process's live descendants, from /proc."""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        parent[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - mine
        mine |= frontier
    return sum(cpu[pid] for pid in mine)


def tasks_cpu() -> dict[int, float]:
    """CPU seconds of every OS thread of this process now (Python's and Ray's C++ threads).

    From /proc/self/task/*/schedstat (nanoseconds on the CPU), else the 10 ms ticks of stat.
    """
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for entry in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{entry}/schedstat", "rb") as f:
                out[int(entry)] = int(f.read().split()[0]) / 1e9
            continue
        except (OSError, ValueError, IndexError):
            pass
        try:
            with open(f"/proc/self/task/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        out[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def threads_cpu() -> dict[str, float]:
    """CPU seconds of each live Python thread of this process, by thread name (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for thread in threading.enumerate():
        try:
            with open(f"/proc/self/task/{thread.native_id}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except (OSError, TypeError):
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        name = thread.name.split(" (")[-1].rstrip(")") if " (" in thread.name else thread.name
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


class StackSampler:
    """Opt-in (``--sample-stacks``): where the ServerApp thread is, every 10 ms of a round.

    Counts the innermost two frames of the thread's stack; for finding where a round's time
    goes, not for the figures (sampling costs the driver process some CPU).
    """

    def __init__(self, thread_id: int) -> None:
        self.thread_id = thread_id
        self.counts: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stack-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            frame = sys._current_frames().get(self.thread_id)
            where = []
            while frame is not None and len(where) < 2:
                code = frame.f_code
                file = "/".join(code.co_filename.split("/")[-2:])
                where.append(f"{file}:{frame.f_lineno} {code.co_name}")
                frame = frame.f_back
            key = " < ".join(where)
            self.counts[key] = self.counts.get(key, 0) + 1

    def __enter__(self) -> StackSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def top(self, k: int = 8) -> dict[str, int]:
        return dict(sorted(self.counts.items(), key=lambda x: -x[1])[:k])


def run_setting(n: int, d: int, k: int, t: int, rounds: int, seed: int, stage_timeout: float,
                out_path: Path, sample_stacks: bool = False) -> None:  # fmt: skip
    """One simulation: 2 warm-up rounds, then ``rounds`` pairs; writes ``out_path`` each round."""
    import logging

    import flwr
    import flwr.compat.common.recorddict_compat as compat
    import numpy as np
    import ray
    from flwr.app.message_type import MessageType
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import Context, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
    from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.constant import Key as WorkflowKey
    from flwr.simulation import run_simulation

    from sealagg.flower import SealaggWorkflow, sealagg_mod
    from sealagg.flower.records import RECORD as SEALAGG_RECORD
    from sealagg.flower.records import STAGE as SEALAGG_STAGE

    # Round 1-2: one warm-up each; then pairs in alternating order.
    schedule: list[tuple[str, int | None]] = [("sealagg", None), ("flower", None)]
    for pair in range(rounds):
        order = SIDES if pair % 2 == 0 else SIDES[::-1]
        schedule += [(side, pair) for side in order]

    expected = np.mean([client_update(seed, pid, d).astype(np.float64) for pid in range(n)], 0)
    initial = ndarrays_to_parameters([np.zeros(d, dtype=np.float32)])
    workflows = {
        "sealagg": SealaggWorkflow(
            num_shares=k,
            reconstruction_threshold=t,
            max_weight=MAX_WEIGHT,
            clipping_range=CLIPPING_RANGE,
            quantization_range=QUANTIZATION_RANGE,
            modulus_range=MODULUS_RANGE,
            timeout=stage_timeout,
        ),
        "flower": SecAggPlusWorkflow(
            num_shares=k,
            reconstruction_threshold=t,
            max_weight=MAX_WEIGHT,
            clipping_range=CLIPPING_RANGE,
            quantization_range=QUANTIZATION_RANGE,
            modulus_range=MODULUS_RANGE,
            timeout=stage_timeout,
        ),
    }
    out: dict[str, Any] = {
        "n": n,
        "d": d,
        "num_shares": k,
        "reconstruction_threshold": t,
        "status": "running",
        "versions": {"flwr": flwr.__version__, "ray": ray.__version__, "numpy": np.__version__},
        "rounds": [],
    }

    def save() -> None:
        out_path.write_text(json.dumps(out, indent=1))

    class SyntheticClient(NumPyClient):
        def __init__(self, pid: int) -> None:
            self.pid = pid

        def fit(self, parameters, config):
            # Cached per actor process: the engine unpickles the app (and a copy of this
            # script's globals) per message, so the cache hangs off sys.modules instead.
            cache = sys.modules.setdefault(_CACHE_MODULE, types.ModuleType(_CACHE_MODULE))
            updates = cache.__dict__.setdefault("updates", {})
            hit = (self.pid, d) in updates
            if not hit:
                updates[(self.pid, d)] = client_update(seed, self.pid, d)
            return [updates[(self.pid, d)]], NUM_EXAMPLES, {"generated": int(not hit)}

    def client_fn(context: Context):
        return SyntheticClient(int(context.node_config["partition-id"])).to_client()

    def dispatch_mod(msg, ctxt, call_next):
        """Each TRAIN message to the mod whose record it carries (one ClientApp, both sides)."""
        if msg.metadata.message_type == MessageType.TRAIN:
            records = msg.content.config_records
            if SEALAGG_RECORD in records:
                return sealagg_mod(msg, ctxt, call_next)
            if RECORD_KEY_CONFIGS in records:
                return secaggplus_mod(msg, ctxt, call_next)
        return call_next(msg, ctxt)

    class CaptureFedAvg(FedAvg):
        """FedAvg that keeps the last aggregate (a reference; compared after the timing)."""

        captured: Any = None
        generated = 0

        def aggregate_fit(self, server_round, results, failures):
            aggregated = super().aggregate_fit(server_round, results, failures)
            self.generated += sum(int(r.metrics.get("generated", 0)) for _, r in results)
            self.captured = aggregated[0]
            return aggregated

    class CountingGrid:
        """Flower's grid, counting each stage's wait and the payload bytes per node."""

        def __init__(self, grid: Grid) -> None:
            self._grid = grid
            self.stages: list[dict[str, Any]] = []
            self.sent: dict[int, int] = {}  # by the clients (replies)
            self.received: dict[int, int] = {}  # by the clients (the server's messages)
            self.wait = 0.0

        def __getattr__(self, name: str) -> Any:
            return getattr(self._grid, name)

        def send_and_receive(self, messages, timeout=None):
            messages = list(messages)
            stage = "?"
            if messages:
                records = messages[0].content.config_records
                if SEALAGG_RECORD in records:
                    stage = str(records[SEALAGG_RECORD].get(SEALAGG_STAGE))
                elif RECORD_KEY_CONFIGS in records:
                    stage = str(records[RECORD_KEY_CONFIGS].get(Key.STAGE))
            for m in messages:
                nid = m.metadata.dst_node_id
                self.received[nid] = self.received.get(nid, 0) + payload_bytes(m.content)
            t0 = time.perf_counter()
            replies = list(self._grid.send_and_receive(messages, timeout=timeout))
            seconds = time.perf_counter() - t0
            self.wait += seconds
            errors = 0
            for r in replies:
                if r.has_error():
                    errors += 1
                    continue
                nid = r.metadata.src_node_id
                self.sent[nid] = self.sent.get(nid, 0) + payload_bytes(r.content)
            self.stages.append(
                {
                    "stage": stage,
                    "messages": len(messages),
                    "replies": len(replies),
                    "errors": errors,
                    "seconds": round(seconds, 4),
                }
            )
            return replies

    strategy = CaptureFedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=n,
        min_available_clients=n,
        initial_parameters=initial,
        accept_failures=True,
    )

    class Alternating:
        """The fit workflow: each round runs one side's workflow, timed as documented above."""

        def __call__(self, grid: Grid, context: Any) -> None:
            rnd = int(context.state.config_records[MAIN_CONFIGS_RECORD][WorkflowKey.CURRENT_ROUND])
            side, pair = schedule[rnd - 1]
            counting = CountingGrid(grid)
            strategy.captured = None
            generated_before = strategy.generated
            gc.collect()
            load_before = os.getloadavg()[0]
            workers0, threads0, tasks0 = descendants_cpu(), threads_cpu(), tasks_cpu()
            me = threading.get_native_id()
            proc0, thread0, wall0 = time.process_time(), time.thread_time(), time.perf_counter()
            if sample_stacks:
                with StackSampler(threading.get_ident()) as sampler:
                    workflows[side](counting, context)
            else:
                workflows[side](counting, context)
            wall = time.perf_counter() - wall0
            thread_cpu, proc_cpu = time.thread_time() - thread0, time.process_time() - proc0
            workers, threads1, tasks1 = descendants_cpu() - workers0, threads_cpu(), tasks_cpu()
            # The engine's (and Ray's) threads: alive before and after the round, not this one.
            engine = sum(tasks1[tid] - tasks0[tid] for tid in tasks0.keys() & tasks1.keys()
                         if tid != me)  # fmt: skip
            by_thread = {
                name: round(cpu - threads0.get(name, 0.0), 2)
                for name, cpu in sorted(threads1.items(), key=lambda x: -x[1])
                if cpu - threads0.get(name, 0.0) >= 0.01
            }
            error = None
            if strategy.captured is not None:
                got = parameters_to_ndarrays(strategy.captured)[0].astype(np.float64)
                error = float(np.abs(got - expected).max())
            # Flower's SecAgg+ hands FedAvg a float64 mean (sealagg's keeps the model's dtype):
            # keep the global model float32 so every round downloads the same bytes.
            arrays = parameters_to_ndarrays(
                compat.arrayrecord_to_parameters(
                    context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True
                )
            )
            if any(a.dtype != np.float32 for a in arrays):
                context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
                    ndarrays_to_parameters([a.astype(np.float32) for a in arrays]), True
                )
            sent = [counting.sent.get(nid, 0) for nid in counting.received]
            received = list(counting.received.values())
            out["rounds"].append(
                {
                    "round": rnd,
                    "side": side,
                    "warm_up": pair is None,
                    "pair": pair,
                    "outcome": "aggregated" if strategy.captured is not None else "halted",
                    "wall_seconds": round(wall, 4),
                    "wait_seconds": round(counting.wait, 4),
                    "server_own_seconds": round(wall - counting.wait, 4),
                    "serverapp_thread_cpu_seconds": round(thread_cpu, 4),
                    "driver_process_cpu_seconds": round(proc_cpu, 4),
                    # The ServerApp thread plus the threads it started and joined within the
                    # round (Flower's Shamir thread pools): the process minus the engine's.
                    "workflow_cpu_seconds": round(max(proc_cpu - engine, thread_cpu), 4),
                    "workers_cpu_seconds": round(workers, 4),
                    # Python threads of the driver process (ServerApp, Flower's engine, ...).
                    "driver_threads_cpu_seconds": by_thread,
                    "bytes_sent_per_client_mean": statistics.mean(sent) if sent else 0,
                    "bytes_sent_per_client_max": max(sent, default=0),
                    "bytes_received_per_client_mean": statistics.mean(received) if received else 0,
                    "clients_replied": sum(1 for s in sent if s > 0),
                    "updates_generated": strategy.generated - generated_before,
                    "max_abs_error": error,
                    "load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                    "stages": counting.stages,
                    **({"stack_samples_10ms": sampler.top()} if sample_stacks else {}),
                }
            )
            save()

    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        legacy = LegacyContext(
            context=context, config=ServerConfig(num_rounds=len(schedule)), strategy=strategy
        )
        DefaultWorkflow(fit_workflow=Alternating())(grid, legacy)

    logging.getLogger("flwr").setLevel(logging.WARNING)
    logging.getLogger("sealagg").setLevel(logging.WARNING)
    save()
    t0 = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=ClientApp(client_fn=client_fn, mods=[dispatch_mod]),
        num_supernodes=n,
        backend_config={
            # address "local": a private Ray instance, never another process's cluster.
            "init_args": {"address": "local", "num_cpus": 1, "include_dashboard": False},
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        },
    )
    out["simulation_seconds"] = round(time.perf_counter() - t0, 2)
    out["status"] = "done" if len(out["rounds"]) == len(schedule) else "incomplete"
    save()


_CACHE_MODULE = "_sealagg_bench_flower_interop_cache"


# ---------------------------------------------------------------------------------------------
# Driver (parent process): one child per setting, then the summary.


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


METRICS = (
    "wall_seconds",
    "wait_seconds",
    "server_own_seconds",
    "serverapp_thread_cpu_seconds",
    "workflow_cpu_seconds",
    "driver_process_cpu_seconds",
    "workers_cpu_seconds",
    "bytes_sent_per_client_mean",
    "bytes_received_per_client_mean",
)


def summarize(setting: dict[str, Any]) -> dict[str, Any]:
    """Per side: medians over measured rounds; per pair: the ratio flower / sealagg."""
    measured = [r for r in setting["rounds"] if not r["warm_up"]]
    summary: dict[str, Any] = {}
    for side in SIDES:
        rows = [r for r in measured if r["side"] == side]
        summary[side] = {
            "rounds": len(rows),
            "aggregated": sum(1 for r in rows if r["outcome"] == "aggregated"),
            **{m: _stats([r[m] for r in rows]) for m in METRICS},
            "max_abs_error": max((r["max_abs_error"] or 0.0 for r in rows), default=None),
        }
    pairs: dict[int, dict[str, dict[str, Any]]] = {}
    for r in measured:
        pairs.setdefault(r["pair"], {})[r["side"]] = r
    ratios: dict[str, list[float]] = {m: [] for m in METRICS}
    for pair in pairs.values():
        if set(pair) != set(SIDES):
            continue
        for m in METRICS:
            if pair["sealagg"][m] > 0:
                ratios[m].append(pair["flower"][m] / pair["sealagg"][m])
    summary["pairs"] = sum(1 for p in pairs.values() if set(p) == set(SIDES))
    summary["ratio_flower_over_sealagg"] = {m: _stats(v) for m, v in ratios.items()}
    loads = [x for r in setting["rounds"] for x in r["load_1min"]]
    summary["load_1min"] = _stats(loads)
    return summary


def _s(st: dict[str, float] | None, unit: str = "s", digits: int = 2) -> str:
    if st is None:
        return "-"
    fmt = f"{{:.{digits}f}}"
    if fmt.format(st["min"]) == fmt.format(st["max"]):
        return f"{fmt.format(st['median'])} {unit}".strip()
    return (
        f"{fmt.format(st['median'])} ({fmt.format(st['min'])}-{fmt.format(st['max'])}) {unit}"
    ).strip()


def _mb(st: dict[str, float] | None) -> str:
    if st is None:
        return "-"
    return f"{st['median'] / 1e6:.2f} MB"


def _x(st: dict[str, float] | None) -> str:
    if st is None:
        return "-"
    if round(st["min"], 1) == round(st["max"], 1):
        return f"{st['median']:.1f}x"
    return f"{st['median']:.1f}x ({st['min']:.1f}-{st['max']:.1f})"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Flower {report['versions'].get('flwr', '?')} simulation engine, one client actor, "
        f"{report['rounds']} measured pairs after one warm-up round per side; medians "
        "(min-max) over the measured rounds; ratio = flower / sealagg per pair, median (min-max).",
        "",
        "| n | d | k / t | side | fit wall | server's own (wall - waits) | server CPU (workflow) "
        "| driver process CPU | Ray workers CPU | sent / client | received / client "
        "| max error | load 1 min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in report["settings"]:
        summary = s.get("summary")
        head = f"| {s['n']} | {s['d']:,} | {s['num_shares']} / {s['reconstruction_threshold']}"
        if not summary:
            lines.append(f"{head} | {s['status']}: {s.get('error', 'no round finished')} |")
            continue
        load = summary["load_1min"]
        load_text = f"{load['min']:.1f}-{load['max']:.1f}" if load else "-"
        for side in SIDES:
            x = summary[side]
            if not x["rounds"]:
                lines.append(f"{head} | {side} | no measured round ({s['status']}) |")
                continue
            err = x["max_abs_error"]
            lines.append(
                f"{head} | {side} ({x['aggregated']}/{x['rounds']} aggregated) "
                f"| {_s(x['wall_seconds'])} | {_s(x['server_own_seconds'])} "
                f"| {_s(x['workflow_cpu_seconds'])} "
                f"| {_s(x['driver_process_cpu_seconds'])} | {_s(x['workers_cpu_seconds'])} "
                f"| {_mb(x['bytes_sent_per_client_mean'])} "
                f"| {_mb(x['bytes_received_per_client_mean'])} "
                f"| {'-' if err is None else f'{err:.1e}'} | {load_text} |"
            )
        r = summary["ratio_flower_over_sealagg"]
        lines.append(
            f"{head} | **ratio** ({summary['pairs']} pairs) | {_x(r['wall_seconds'])} "
            f"| {_x(r['server_own_seconds'])} | {_x(r['workflow_cpu_seconds'])} "
            f"| {_x(r['driver_process_cpu_seconds'])} | {_x(r['workers_cpu_seconds'])} "
            f"| {_x(r['bytes_sent_per_client_mean'])} "
            f"| {_x(r['bytes_received_per_client_mean'])} | | |"
        )
        if s["status"] != "done":
            lines.append(f"{head} | ({s['status']}: {s.get('error', '')}) |")
    return "\n".join(lines) + "\n"


def git_state() -> dict[str, Any]:
    def run(*cmd: str) -> str:
        try:
            return subprocess.run(
                cmd, cwd=REPO, capture_output=True, text=True, timeout=20, check=False
            ).stdout.strip()
        except OSError:
            return ""

    return {
        "commit": run("git", "rev-parse", "HEAD"),
        "dirty": bool(run("git", "status", "--porcelain", "--untracked-files=no")),
    }


def drive(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    settings = [tuple(int(x) for x in s.split(",")) for s in args.setting]
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, "-P", *sys.argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git": git_state(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "versions": {"numpy": np.__version__},
        "rounds": args.rounds,
        "seed": args.seed,
        "engine": "flwr.simulation.run_simulation, private Ray (address=local, num_cpus=1), "
        "one client actor with 1 CPU, both sides in the same simulation, rounds alternating",
        "knobs": {
            "max_weight": MAX_WEIGHT,
            "clipping_range": CLIPPING_RANGE,
            "quantization_range": QUANTIZATION_RANGE,
            "modulus_range": MODULUS_RANGE,
            "num_examples": NUM_EXAMPLES,
            "stage_timeout": args.stage_timeout,
        },
        "settings": [],
    }
    for n, d in settings:
        k, t = default_kt(n)
        with tempfile.TemporaryDirectory(prefix="sealagg-flower-bench-") as tmp:
            part = Path(tmp) / "setting.json"
            cmd = [sys.executable, "-P", str(Path(__file__).resolve()), "--one", f"{n},{d}",
                   "--kt", f"{k},{t}", "--rounds", str(args.rounds), "--seed", str(args.seed),
                   "--stage-timeout", str(args.stage_timeout), "--json", str(part),
                   *(["--sample-stacks"] if args.sample_stacks else [])]  # fmt: skip
            env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
            log_path = Path(tmp) / "child.log"
            print(f"[{time.strftime('%H:%M:%S')}] n={n} d={d} k={k} t={t} ...", file=sys.stderr)
            with log_path.open("w") as log:
                child = subprocess.Popen(
                    cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
                try:
                    rc = child.wait(timeout=args.setting_timeout)
                    error = None if rc == 0 else f"child exited with {rc}"
                except subprocess.TimeoutExpired:
                    os.killpg(child.pid, 9)  # the child's own session: it and its Ray
                    child.wait()
                    error = f"stopped after {args.setting_timeout:.0f} s (--setting-timeout)"
            setting: dict[str, Any]
            if part.exists():
                setting = json.loads(part.read_text())
            else:
                setting = {"n": n, "d": d, "num_shares": k, "reconstruction_threshold": t,
                           "rounds": []}  # fmt: skip
            if error is not None:
                setting["status"] = "stopped" if "stopped" in error else "error"
                setting["error"] = error
                setting["log_tail"] = log_path.read_text()[-3000:]
            report["versions"].update(setting.get("versions", {}))
            setting["summary"] = summarize(setting) if setting["rounds"] else None
            report["settings"].append(setting)
            print(
                f"[{time.strftime('%H:%M:%S')}] n={n} d={d}: {setting.get('status')} "
                f"({len(setting['rounds'])} rounds)",
                file=sys.stderr,
            )
        args.json.write_text(json.dumps(report, indent=1))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--setting", action="append", help="n,d (repeatable; default: 10,100000 and 10,1000000 "
        "and 50,100000 and 50,1000000)",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3, help="measured pairs per setting")
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--stage-timeout", type=float, default=900.0)
    parser.add_argument("--setting-timeout", type=float, default=1800.0)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument(
        "--sample-stacks",
        action="store_true",
        help="record where the ServerApp thread spends each round (10 ms samples; not for the "
        "figures)",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one setting (child)
    parser.add_argument("--kt", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        n, d = (int(x) for x in args.one.split(","))
        k, t = (int(x) for x in args.kt.split(","))
        run_setting(
            n, d, k, t, args.rounds, args.seed, args.stage_timeout, args.json, args.sample_stacks
        )
        return
    args.setting = args.setting or ["10,100000", "10,1000000", "50,100000", "50,1000000"]
    report = drive(args)
    text = markdown(report)
    if args.markdown:
        args.markdown.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
