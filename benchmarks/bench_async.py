"""Time to accuracy, synchronous rounds vs asynchronous buffers (issue 21), real appliance.

Loopback gRPC with mutual TLS, the appliance in this process (``RunningAppliance``), the
clients in their own OS processes (benchmarks/async_clients.py: a few clients per process, one
thread and one mutual-TLS connection each) running the shim's unchanged three-line loop.
Data: scikit-learn's bundled digits, the demo's split and non-IID Dirichlet(alpha) shards
(client_shim/demo/data.py); model: the demo's 64-64-10 MLP, the same initial weights for every
setting. Client i sleeps ``delay_i`` after each local SGD step, delays spread geometrically from
``--fastest`` to ``--slowest`` (10x by default), so speed is simulated and the 2 shared cores
stay mostly idle.

Per setting (a fresh deployment each): the run is created (``Admin.CreateRun``:
``schedule="sync"`` with every client in every round, or ``schedule="async"`` with buffer size
K; a refusal ends the setting), the fresh federation's implicit run is stopped, the clients
connect and say ready, then the run is started (t = 0) and stopped ``--seconds`` later. Afterwards
every model version the run published is read from the store, its test accuracy measured here
(outside the appliance), and placed at its ``created_at`` time since the run was started.
Reported: time to ``--target`` test accuracy (first version at or above it), the accuracy of the
last version published within the budget, versions published, and the clients' update counts.
A setting the appliance refuses (e.g. async in a masked mode before that slice lands) is reported
as not available, with the appliance's reason.

    .venv/bin/python benchmarks/bench_async.py --repeat 2 \
        --json /tmp/async.json --plot benchmarks/plots/async_time_to_accuracy.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import async_clients

HERE = Path(__file__).resolve().parent

#: The comparison of issue 21: ``sync-MODE`` (every client in every round) or
#: ``async-K<K>-MODE`` (a version per K accepted updates).
SETTINGS = (
    "sync-plaintext",
    "async-K5-plaintext",
    "async-K10-plaintext",
    "sync-secagg+",
    "async-K5-secagg+",
    "async-K10-secagg+",
)


def parse_setting(label: str) -> tuple[str, str, int, float]:
    """``"async-K5-secagg+"`` -> ("secagg+", "async", 5, 1.0); ``"sync-plaintext"`` -> (..,
    0, 1.0); a suffix ``-slr0.5`` sets the server learning rate (FedAvg, ``[optimizer]
    server_lr``), the step FedBuff tunes for stale updates."""
    server_lr = 1.0
    head, sep, tail = label.rpartition("-slr")
    if sep:
        try:
            server_lr = float(tail)
        except ValueError:
            server_lr = -1.0
        if not 0 < server_lr <= 10:
            raise ValueError(f"-slr takes a server learning rate in (0, 10], not {tail!r}")
        label = head
    schedule, _, rest = label.partition("-")
    if schedule == "sync" and rest:
        return rest, "sync", 0, server_lr
    k, _, mode = rest.partition("-")
    if schedule == "async" and k[:1] == "K" and k[1:].isdigit() and mode:
        return mode, "async", int(k[1:]), server_lr
    raise ValueError(f"a setting is sync-MODE or async-K<K>-MODE (+ -slr<LR>), not {label!r}")


@dataclasses.dataclass(frozen=True)
class Bench:
    """What one invocation measures (the CLI's options)."""

    clients: int = 20
    fastest: float = 0.1
    slowest: float = 1.0
    steps: int = 10
    alpha: float = 0.5
    seconds: float = 150.0
    target: float = 0.9
    per_process: int = 5
    max_staleness: int = 40
    staleness: str = "polynomial"
    a: float = 0.5
    poll_seconds: float = 1.0
    data_seed: int = 0
    model_seed: int = 0
    startup_timeout: float = 120.0


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _parse_time(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def _configure(dep: Any, bench: Bench, mode: str, schedule: str, k: int, server_lr: float) -> None:
    """Synchronous: every client in every round (min = max = n). Async: the buffer must cover
    at least ``min_clients`` (appliance/async_schedule.py), so min_clients = K (capped at n: a
    K above n is left for the appliance to refuse)."""
    minimum = bench.clients if schedule == "sync" else min(k, bench.clients)
    dep.configure(
        aggregation={
            "mode": mode,
            "min_clients": minimum,
            "max_clients": bench.clients,
            "rounds": 0,  # the implicit run is stopped: the benchmark creates its own
        },
        optimizer={"name": "fedavg", "server_lr": server_lr},
    )


def _start_clients(dep: Any, bench: Bench, tmp: Path) -> list[subprocess.Popen]:
    names = [f"client{i}" for i in range(bench.clients)]
    spec = {
        "address": dep.address,
        "names": names,
        "kits": {n: str(dep.kits[n].source) for n in names},
        "delays": async_clients.delays(bench.clients, bench.fastest, bench.slowest),
        "steps": bench.steps,
        "alpha": bench.alpha,
        "data_seed": bench.data_seed,
        "model_seed": bench.model_seed,
        "poll_seconds": bench.poll_seconds,
        "ready_dir": str(tmp / "ready"),
        "results_dir": str(tmp / "results"),
    }
    (tmp / "ready").mkdir()
    (tmp / "results").mkdir()
    spec_path = tmp / "spec.json"
    spec_path.write_text(json.dumps(spec))
    procs = []
    for first in range(0, len(names), bench.per_process):
        group = names[first : first + bench.per_process]
        with (tmp / f"clients-{first}.log").open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-P", str(HERE / "async_clients.py"), str(spec_path), *group],
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            )
    return procs


def _wait_ready(procs: list[subprocess.Popen], tmp: Path, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(list((tmp / "ready").iterdir())) < count:
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            logs = "\n".join(p.read_text()[-2000:] for p in tmp.glob("clients-*.log"))
            raise RuntimeError(f"the clients did not all become ready:\n{logs}")
        time.sleep(0.1)
    time.sleep(2 * 1.0)  # every client's loop is polling for its first round


def _stop(procs: list[subprocess.Popen], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _versions(
    folder: Path, started: float, bench: Bench
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every version the run published (the base first, at t = 0) with its test accuracy."""
    from sealagg.appliance.federation import FederationFolder
    from sealagg.appliance.server import open_store
    from sealagg.client_shim.demo.model import accuracy_of

    split, _ = async_clients.shards(bench.clients, bench.alpha, bench.data_seed)
    store = open_store(FederationFolder.load(folder))
    try:
        rows = []
        for v in store.model_versions():
            at = 0.0 if v.round is None else _parse_time(v.created_at) - started
            acc = accuracy_of(store.load_model(v.version), split.x_test, split.y_test)
            rows.append({"version": v.version, "seconds": round(at, 3), "accuracy": acc})
        buffers = [e.details for e in store.audit.entries() if e.event == "async_buffer"]
    finally:
        store.close()
    stale = [s for b in buffers for s in _member_staleness(b)]
    return rows, {"buffers": len(buffers), "member_staleness": stale}


def _member_staleness(details: dict[str, Any]) -> list[int]:
    """The staleness of each member of one published buffer (audit ``async_buffer``)."""
    members = details.get("members") or {}
    return [int(m["staleness"]) for m in members.values()]


def summarize(versions: list[dict[str, Any]], bench: Bench) -> dict[str, Any]:
    """Time to target, the accuracy at the budget's end, versions published within it."""
    within = [v for v in versions if v["seconds"] <= bench.seconds]
    reached = next((v for v in within if v["accuracy"] >= bench.target), None)
    return {
        "versions_published": len(within) - 1,  # the base model is not published by the run
        "time_to_target": None if reached is None else reached["seconds"],
        "final_accuracy": within[-1]["accuracy"],
        "best_accuracy": max(v["accuracy"] for v in within),
    }


def run_setting(bench: Bench, label: str, repeat: int) -> dict[str, Any]:
    """One fresh deployment: clients up, run created and started, stopped after the budget."""
    from sealagg.appliance import admin_api
    from sealagg.appliance.cli._common import ADMIN_KIT_DIRNAME, ADMIN_NAME
    from sealagg.appliance.federation import add_client
    from sealagg.appliance.testing import RunningAppliance, make_deployment
    from sealagg.client_shim.demo.model import make_model, to_numpy

    mode, schedule, k, server_lr = parse_setting(label)
    row: dict[str, Any] = {"setting": label, "repeat": repeat, "mode": mode, "schedule": schedule}
    row |= {"K": k or None, "server_lr": server_lr}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        dep = make_deployment(
            tmp, clients=bench.clients, model=to_numpy(make_model(bench.model_seed))
        )
        add_client(dep.federation, ADMIN_NAME, out=dep.folder / ADMIN_KIT_DIRNAME)
        _configure(dep, bench, mode, schedule, k, server_lr)
        app = RunningAppliance(dep.folder)
        procs: list[subprocess.Popen] = []
        try:
            with admin_api.connect(dep.folder, address=dep.address, timeout=30) as admin:
                params = None
                if schedule == "async":
                    params = {
                        "buffer_size": k,
                        "max_staleness": bench.max_staleness,
                        "staleness": bench.staleness,
                        "a": bench.a,
                    }
                ok, detail, run = admin.create_run_reply(
                    name=label,
                    mode=mode,
                    schedule=schedule,
                    async_json=json.dumps(params) if params else "",
                )
                if not ok or run is None:
                    return {**row, "available": False, "detail": detail}
                row["available"] = True
                for other in admin.list_runs():  # the implicit run of a fresh federation
                    if other["id"] != run["id"] and other["status"] in ("running", "paused"):
                        admin.stop_run(other["id"], reason="the benchmark drives its own run")
                procs = _start_clients(dep, bench, tmp)
                _wait_ready(procs, tmp, bench.clients, bench.startup_timeout)
                row["loadavg_before"] = _loadavg()
                started = time.time()
                admin.start_run(run["id"], reason="benchmark")
                while time.time() - started < bench.seconds:
                    if not app.thread.is_alive():
                        raise RuntimeError(f"the appliance stopped: {app.error!r}")
                    time.sleep(0.2)
                admin.stop_run(run["id"], reason="benchmark budget spent")
                row["loadavg_after"] = _loadavg()
            _stop(procs)
            procs = []
        finally:
            _stop(procs, timeout=0)
            app.stop()
        clients: dict[str, Any] = {}
        failures: dict[str, str] = {}
        for path in (tmp / "results").glob("*.json"):
            part = json.loads(path.read_text())
            clients |= part["clients"]
            failures |= part["failures"]
        versions, buffers = _versions(dep.folder, started, bench)
    outcomes: dict[str, int] = {}
    for stats in clients.values():
        for outcome, count in stats["outcomes"].items():
            outcomes[outcome] = outcomes.get(outcome, 0) + count
    by_speed = [clients[n]["submitted"] for n in sorted(clients, key=lambda n: int(n[6:]))]
    return {
        **row,
        **summarize(versions, bench),
        **buffers,
        "outcomes": outcomes,
        "submitted_by_client": by_speed,
        "client_failures": failures,
        "versions": versions,
    }


# ------------------------------------------------------------------------------ report


def _fmt_time(seconds: float | None) -> str:
    return "not reached" if seconds is None else f"{seconds:.1f}"


def markdown(rows: list[dict[str, Any]], bench: Bench) -> str:
    lines = [
        f"| setting | rep | time to {bench.target:.0%} (s) | final accuracy | best "
        "| versions | updates accepted / refused | median staleness | load (before → after) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if not r.get("available"):
            lines.append(
                f"| {r['setting']} | {r['repeat']} | not available yet | | | | | | "
                f"(refused: {r['detail'].split(' (')[0][:120]}) |"
            )
            continue
        o = r["outcomes"]
        accepted = o.get("accepted", 0) + o.get("published", 0)
        refused = sum(v for key, v in o.items() if key not in ("accepted", "published"))
        stale = sorted(r["member_staleness"])
        median = f"{stale[len(stale) // 2]}" if stale else "-"
        lines.append(
            f"| {r['setting']} | {r['repeat']} | {_fmt_time(r['time_to_target'])} "
            f"| {r['final_accuracy']:.3f} | {r['best_accuracy']:.3f} | {r['versions_published']} "
            f"| {f'{accepted} / {refused}' if r['submitted_by_client'] else 'n/a'} | {median} "
            f"| {r['loadavg_before']} → {r['loadavg_after']} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], bench: Bench, path: Path) -> None:
    """Test accuracy of each published version against wall time since the run started; one
    panel per distinct ``row["panel"]`` (rows without one share a single panel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(r.get("panel", "") for r in rows if r.get("available")))
    fig, axes = plt.subplots(
        1, max(1, len(panels)), figsize=(7.5 * max(1, len(panels)) * 0.8, 4.6), squeeze=False
    )
    settings = list(dict.fromkeys(r["setting"] for r in rows if r.get("available")))
    palette = plt.get_cmap("tab10" if len(settings) <= 10 else "tab20")
    colours = {name: palette(i) for i, name in enumerate(settings)}  # one colour everywhere
    for ax, panel in zip(axes[0], panels or [""], strict=False):
        for r in rows:
            if not r.get("available") or r.get("panel", "") != panel:
                continue
            xs = [v["seconds"] for v in r["versions"] if v["seconds"] <= bench.seconds]
            ys = [v["accuracy"] for v in r["versions"] if v["seconds"] <= bench.seconds]
            xs, ys = [*xs, bench.seconds], [*ys, ys[-1]]  # the last version holds to the end
            style = "-" if r["repeat"] == 1 else ":"
            seen = any(line.get_label() == r["setting"] for line in ax.get_lines())
            ax.step(
                xs,
                ys,
                where="post",
                linestyle=style,
                color=colours[r["setting"]],
                label=None if seen else r["setting"],
            )
        ax.axhline(bench.target, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xlim(0, bench.seconds)
        ax.set_ylim(0, 1)
        ax.set_xlabel("wall time since the run started (s)")
        ax.set_ylabel("test accuracy of the published version")
        ax.set_title(panel, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(
        f"digits, {bench.clients} clients, per-step delay {bench.fastest:g} to {bench.slowest:g} s "
        f"(solid: run 1, dotted: run 2)",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for field in dataclasses.fields(Bench):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default
        )
    parser.add_argument(
        "--settings", nargs="+", default=list(SETTINGS), help="e.g. async-K5-plaintext"
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds of all settings, alternating")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    parser.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        help="measure nothing: render the table (and --plot) from earlier --json files",
    )
    args = parser.parse_args()
    if args.from_json:
        rendered(args.from_json, args.plot)
        return
    for label in args.settings:
        try:
            parse_setting(label)
        except ValueError as error:
            parser.error(str(error))
    bench = Bench(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Bench)})
    rows = []
    for repeat in range(1, args.repeat + 1):
        for label in args.settings:
            row = run_setting(bench, label, repeat)
            rows.append(row)
            brief = {k: v for k, v in row.items() if k not in ("versions",)}
            print(json.dumps(brief), flush=True)
            if args.json:  # written as it goes: a long run keeps what it measured
                args.json.write_text(
                    json.dumps({"bench": dataclasses.asdict(bench), "rows": rows}, indent=1)
                )
            if args.plot:
                plot(rows, bench, args.plot)
    print(markdown(rows, bench))


def rendered(paths: list[Path], plot_path: Path | None) -> None:
    """One table (and plot) from several runs of this script; their settings must agree."""
    loaded = [json.loads(p.read_text()) for p in paths]
    if any(d["bench"] != loaded[0]["bench"] for d in loaded):
        raise SystemExit("the --json files were measured with different options")
    bench = Bench(**loaded[0]["bench"])
    rows = [row for d in loaded for row in d["rows"]]
    if plot_path:
        plot(rows, bench, plot_path)
    print(markdown(rows, bench))


if __name__ == "__main__":
    main()
