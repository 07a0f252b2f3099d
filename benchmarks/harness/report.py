"""Renders a merged bench results document as Markdown (pure: no measurement, no matplotlib)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from harness import floors
from harness.intervals import CONFIDENCE
from harness.metrics import benchmark_key

NOISE_NOTE = (
    "Measured on a shared machine: expect noise of ±20% or more on single figures (the load "
    "average is recorded below). Budgets compare ratios of figures taken in the same run, never "
    "absolute times, judged on a confidence interval where the two figures were measured in "
    "alternating pairs: a budget the noise could flip is reported as inconclusive, not as met "
    "or failed."
)
PHASE_ORDER = (
    "client quantize",
    "client keys",
    "client mask",
    "client check+unmask",
    "server keys",
    "server accumulate",
    "server unmask",
    "wire encode+decode",
)


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.1f} ms"
    return f"{value * 1e6:.0f} µs"


def size(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} B"


def ratio(num: float | None, den: float | None) -> str:
    if num is None or den is None or den <= 0:
        return "-"
    return f"{num / den:.2f}x"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return out


def machine_section(m: Mapping[str, Any]) -> list[str]:
    libs = ", ".join(f"{k} {v}" for k, v in (m.get("libraries") or {}).items())
    ident = ", ".join(str(m[k]) for k in ("cpu_vendor", "cpu_family_model") if m.get(k))
    lines = [
        "## Machine",
        "",
        "Detected at the start of this run (`/proc/cpuinfo`, `/proc/meminfo`, numpy's build "
        "configuration), never written by hand.",
        "",
        f"- CPU: {m.get('cpu', '?')}{f' ({ident})' if ident else ''}; flags "
        f"{', '.join(m.get('cpu_flags') or []) or 'none read'}; "
        f"{m.get('cores', '?')} cores ({m.get('usable_cores', '?')} usable by this run)",
        f"- Memory: {m.get('memory_gib', '?')} GiB; OS {m.get('os', '?')}; "
        f"Python {m.get('python', '?')}; BLAS {m.get('blas') or 'unknown'}",
        f"- Load average (1/5/15 min) at start {m.get('load_average_start')}, "
        f"at end {m.get('load_average_end')}",
        f"- Libraries: {libs}",
        f"- Code: commit {m.get('git_commit') or 'unknown'} (plus any uncommitted changes)",
    ]
    return lines


def _interval_cell(v: Mapping[str, Any]) -> str:
    iv = v.get("interval")
    if not iv:
        return "single figures" if v["ratio"] is not None else "-"
    return f"[{iv['low']:.3g}, {iv['high']:.3g}] ({iv['pairs']} pairs)"


def budgets_section(
    verdicts: Sequence[Mapping[str, Any]], paired: Mapping[str, Any] | None = None
) -> list[str]:
    if not verdicts:
        return ["## Budgets", "", "No budgets were checked."]
    mark = {
        "ok": "✅ ok",
        "exceeded": "❌ exceeded",
        "missing": "❌ missing",
        "skipped": "- skipped",
        "inconclusive": "❔ inconclusive (noise)",
    }
    rows = [
        [
            mark.get(v["status"], v["status"]),
            f"`{v['id']}`",
            v["what"],
            "-" if v["ratio"] is None else f"{v['ratio']:.3g}x",
            _interval_cell(v),
            v["limit"],
            "" if v["ratio"] is not None and v["status"] != "inconclusive" else v["detail"],
        ]
        for v in verdicts
    ]
    failed = sum(v["status"] in ("exceeded", "missing") for v in verdicts)
    unsure = sum(v["status"] == "inconclusive" for v in verdicts)
    met = len(verdicts) - failed - unsure
    loads = [load for load in (paired or {}).get("load", []) if load]
    load_text = (
        f" Load average (1 min) before each paired pass: "
        f"{', '.join(f'{load[0]:.2f}' for load in loads)}."
        if loads
        else ""
    )
    return [
        "## Budgets (`benchmarks/budgets.toml`)",
        "",
        f"{met} of {len(verdicts)} met or skipped; {failed} failed; {unsure} inconclusive "
        "(noise). Each is metric / baseline, both measured in this run. Where the two were "
        "measured in alternating paired passes the ratio is the Hodges-Lehmann estimate of the "
        f"pairs' ratios and the budget is judged on its {CONFIDENCE:.0%} Wilcoxon signed-rank "
        "interval (of the log ratios): met only if the whole interval is within the limit, "
        "failed only if the whole interval is beyond it, inconclusive if it straddles the "
        "limit (or fewer than 6 pairs were measured). Budgets with a peer or a peak RSS compare "
        f"single figures.{load_text}",
        "",
        *_table(["status", "budget", "what", "ratio", "interval", "limit", "note"], rows),
    ]


def sweep_points(pytest_json: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Benchmarks that declared ``extra_info["sweep"]``: one row each, with phases and bytes."""
    points = []
    for bench in (pytest_json or {}).get("benchmarks", []):
        extra = bench.get("extra_info") or {}
        sweep = extra.get("sweep")
        if not isinstance(sweep, Mapping):
            continue
        points.append(
            {
                "mode": str(sweep.get("mode")),
                "n": int(sweep.get("n", 0)),
                "d": int(sweep.get("d", 0)),
                "seconds": float(bench["stats"]["min"]),
                "phases": dict(extra.get("phases") or {}),
                "bytes_up_per_client": extra.get("bytes_up_per_client"),
                "bytes_down_per_client": extra.get("bytes_down_per_client"),
                "degree": extra.get("degree"),
                "threshold": extra.get("threshold"),
            }
        )
    return sorted(points, key=lambda p: (p["mode"], p["n"], p["d"]))


def sweep_section(points: Sequence[Mapping[str, Any]], plots: Sequence[str]) -> list[str]:
    if not points:
        return []
    plain = {(p["n"], p["d"]): p["seconds"] for p in points if p["mode"] == "plaintext"}
    rows = []
    for p in points:
        graph = ""
        if p["degree"] is not None:
            graph = f"k={p['degree']}, t={p['threshold']}"
        rows.append(
            [
                p["mode"],
                str(p["n"]),
                f"{p['d']:,}",
                graph,
                seconds(p["seconds"]),
                ratio(p["seconds"], plain.get((p["n"], p["d"]))),
                size(p["bytes_up_per_client"]),
            ]
        )
    lines = [
        "## Cost against n and d, per mode (one process)",
        "",
        "All clients and the server in one process, one after the other: a round is the sum of "
        "every party's work (deployed clients work in parallel). `plaintext` is the weighted mean "
        "of the same float updates. k counts neighbours (k = n - 1: complete graph).",
        "",
        *_table(
            ["mode", "n", "d", "graph", "round (best)", "x plaintext", "bytes up / client"], rows
        ),
        "",
    ]
    lines += [f"![{name}](plots/{name})" for name in plots if name.startswith("cost_vs")]
    phased = [p for p in points if p["phases"] and p["mode"] != "plaintext"]
    if phased:
        names = [ph for ph in PHASE_ORDER if any(ph in p["phases"] for p in phased)]
        names += sorted({ph for p in phased for ph in p["phases"]} - set(names))
        prow = [
            [p["mode"], str(p["n"]), f"{p['d']:,}", *(seconds(p["phases"].get(ph)) for ph in names)]
            for p in phased
        ]
        lines += [
            "",
            "### Per-phase breakdown",
            "",
            "Client phases are summed over all n clients; `client quantize` is measured on its own "
            "(the round's inputs are already quantized). Server `accumulate` adds masked inputs "
            "into the running sum; `unmask` includes the consistency check and mask removal.",
            "",
            *_table(["mode", "n", "d", *names], prow),
            "",
        ]
        lines += [
            f"![{name}](plots/{name})" for name in plots if name.startswith(("phases", "bytes"))
        ]
    return lines


def _ours_one_process(pytest_json: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    out = {}
    for bench in (pytest_json or {}).get("benchmarks", []):
        extra = bench.get("extra_info") or {}
        if "test_ours_one_process" in bench["fullname"] and "workload" in extra:
            out[extra["workload"]] = {"round_seconds": float(bench["stats"]["min"]), **extra}
    return out


@functools.lru_cache(maxsize=64)
def appliance_graph(n: int) -> tuple[int, int] | None:
    """(neighbours, threshold) the appliance chooses for ``n`` clients with its configuration's
    defaults (``bench_appliance.py`` keeps them): the graph an end-to-end comparison must match.
    """
    try:
        from sealagg.appliance.config import AggregationSection
        from sealagg.crypto.params import choose_graph

        defaults = AggregationSection()
        degree, threshold, _ = choose_graph(
            n, "secagg+", defaults.dropout_rate, defaults.corrupt_fraction
        )
    except Exception:  # no project, or n infeasible: no end-to-end ratio, never a crash
        return None
    return (n - 1 if degree is None else degree), threshold


def flower_neighbours(n: int, k: int) -> int:
    """Neighbours per client in Flower's SecAgg+ ring for ``num_shares`` k (counting itself):
    ``k // 2`` on each side, so an even k below n is raised to k + 1 (flwr 1.42)."""
    if k >= n:
        return n - 1
    return min(n - 1, 2 * (k // 2))


def like_the_appliance(row: Mapping[str, Any]) -> bool:
    """Whether a Flower row ran the appliance's own graph and threshold, with no dropouts: only
    then is Flower's engine round ÷ the appliance's round engine against engine, like for like."""
    try:
        n, k, t = int(row["n"]), int(row["k"]), int(row["t"])
    except (KeyError, TypeError, ValueError):
        return False
    if row.get("dropout"):
        return False
    return appliance_graph(n) == (flower_neighbours(n, k), t)


def _appliance_round(r: Mapping[str, Any]) -> float:
    return float(r.get("median", r["best"]))


def peers_section(results: Mapping[str, Any], plots: Sequence[str]) -> list[str]:
    flower = ((results.get("peers") or {}).get("flower")) or {}
    ours = _ours_one_process(results.get("pytest"))
    rounds = {
        (r["clients"], r["d"]): _appliance_round(r)
        for r in (results.get("appliance") or {}).get("round", [])
        if r["mode"] == "secagg+"
    }
    if not flower.get("results") and not ours:
        return []
    theirs = {r["workload"]: r for r in flower.get("results", []) if r["mode"] == "secagg+"}
    fedavg = {r["workload"]: r for r in flower.get("results", []) if r["mode"] == "fedavg"}
    rows = []
    for name in sorted(set(theirs) | set(ours), key=lambda w: (len(w), w)):
        f, o = theirs.get(name, {}), ours.get(name, {})
        n, d = f.get("n", o.get("n")), f.get("d", o.get("d"))
        app = rounds.get((n, d)) if f and like_the_appliance(f) else None
        f_round = f.get("round_seconds") if f.get("outcome") == "completed" else None
        rows.append(
            [
                name,
                f"{f.get('outcome', 'not run')} / {o.get('outcome', 'not run')}",
                seconds(f_round),
                seconds((fedavg.get(name) or {}).get("round_seconds")),
                seconds(o.get("round_seconds")),
                seconds(app),
                ratio(f_round, app),
                f"{seconds(f.get('client_seconds_per_client'))} / "
                f"{seconds(o.get('client_seconds_per_client'))}",
                f"{seconds(f.get('server_seconds'))} / {seconds(o.get('server_seconds'))}",
                f"{size(f.get('bytes_up_per_client'))} / {size(o.get('bytes_up_per_client'))}",
            ]
        )
    versions = ", ".join(f"{k} {v}" for k, v in (flower.get("versions") or {}).items())
    if flower.get("engine"):
        through = f"through {flower['engine']}{f' ({versions})' if versions else ''}"
    else:
        through = "not run in this run (peers off or their venv unavailable)"
    lines = [
        "## Peer comparison: Flower's SecAgg+ against ours, identical workloads",
        "",
        f"Flower: `SecAggPlusWorkflow` + `secaggplus_mod`, unmodified, {through}; "
        "it runs in the benchmark-only venv `.venv-peers`. Its round = the fit workflow "
        "on the server clock (best round after a warm-up round); its server time = that minus "
        "waiting for clients; its client time = a timing mod around `secaggplus_mod`; bytes = "
        "serialized message contents. Ours: `crypto.simulation.run_round` in one process (every "
        "client and the server sequentially; includes msgpack wire encoding) and the appliance "
        "over loopback gRPC + mTLS (`benchmarks/bench_appliance.py`: at n=10, d=1M one process "
        "per client and the median of 9 warm rounds, the modes alternating; otherwise clients "
        "as threads and the median of 2; the appliance's own k and t, no dropouts). "
        "Workloads: `benchmarks/peers/workloads.toml` (the same n, d, k, t and dropout rate on "
        "Flower's side and ours in one process). Engine against engine only: 'Flower ÷ "
        "appliance' is given where the workload has the appliance's own graph and threshold "
        "and no dropouts (both sides then quantize float updates on the clients; Flower's "
        "strategy re-averaging the finished sum is left out of its round). Flower's engine "
        "round is not divided by our one-process round (an engine against building blocks); "
        "Flower's building blocks in one process are not measured by this suite, and our "
        "one-process round starts from quantized inputs. Goal (issue 9): >= 5x end to end.",
        "",
        *_table(
            [
                "workload",
                "outcome Flower / ours",
                "Flower round",
                "Flower FedAvg",
                "ours 1 process",
                "ours appliance",
                "Flower ÷ appliance (engine vs engine)",
                "client s/client F / ours",
                "server s F / ours",
                "bytes up/client F / ours",
            ],
            rows,
        ),
        "",
    ]
    lines += [f"![{name}](plots/{name})" for name in plots if name.startswith("peers")]
    robust = (results.get("peers") or {}).get("robust")
    if robust:
        lines += [
            "",
            "### Robust aggregators: Flower's and ByzFL's (`benchmarks/peers/robust_peers.py`)",
            "",
            "Best time in seconds at d=1M (that script's inputs match "
            "`benchmarks/test_bench_robust.py`, whose figures for our kernels are in the "
            "table of every benchmark below when it ran).",
            "",
        ]
        lines += _pivot(robust.get("results", []))
    return lines


def _pivot(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """``{name, mode, seconds}`` rows as one line per name, one column per mode."""
    if not rows or not all({"name", "mode", "seconds"} <= set(r) for r in rows):
        return _generic_rows(rows)
    modes = list(dict.fromkeys(str(r["mode"]) for r in rows))
    table: dict[str, dict[str, Any]] = {}
    for r in rows:
        table.setdefault(str(r["name"]), {})[str(r["mode"])] = r["seconds"]
    body = [[name, *(seconds(by.get(m)) for m in modes)] for name, by in table.items()]
    return _table(["aggregator", *modes], body)


def _generic_rows(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not rows:
        return ["(no rows)"]
    header = list(dict.fromkeys(k for r in rows for k in r))
    return _table(header, [[_cell(r.get(h)) for h in header] for r in rows])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def appliance_section(appliance: Mapping[str, Any]) -> list[str]:
    rounds, rss = appliance.get("round", []), appliance.get("rss", [])
    if not rounds and not rss:
        return []
    lines = ["## The appliance on loopback (real gRPC + mutual TLS)", ""]
    if rounds:
        plain = {(r["clients"], r["d"]): r["best"] for r in rounds if r["mode"] == "plaintext"}
        rows = [
            [
                r["mode"],
                str(r["clients"]),
                f"{r['d']:,}",
                seconds(r["best"]),
                ratio(r["best"], plain.get((r["clients"], r["d"]))),
                ", ".join(f"{t:.2f}" for t in r.get("round_seconds", [])),
            ]
            for r in rounds
        ]
        lines += _table(["mode", "n", "d", "round (best)", "x plaintext", "all rounds (s)"], rows)
        lines.append("")
    if rss:
        first = {}
        for r in sorted(rss, key=lambda r: r["clients"]):
            first.setdefault((r["mode"], r["d"]), r["peak_rss_mib"])
        rows = [
            [
                r["mode"],
                str(r["clients"]),
                f"{r['d']:,}",
                f"{r['peak_rss_mib']:.0f} MiB",
                ratio(r["peak_rss_mib"], first[(r["mode"], r["d"])]),
            ]
            for r in rss
        ]
        lines += [
            "Peak RSS (VmHWM) of the appliance process over one round; the ratio is against the "
            "smallest n measured (flat in n = 1.0x).",
            "",
            *_table(["mode", "n", "d", "peak RSS", "x smallest n"], rows),
            "",
        ]
    return lines


def all_benchmarks_section(pytest_json: Mapping[str, Any] | None) -> list[str]:
    benches = (pytest_json or {}).get("benchmarks", [])
    if not benches:
        return []
    rows = [
        [
            str(b.get("group") or ""),
            f"`{benchmark_key(b['fullname'])}`",
            seconds(b["stats"]["min"]),
            seconds(b["stats"]["median"]),
            str(b["stats"]["rounds"]),
        ]
        for b in sorted(benches, key=lambda b: (str(b.get("group")), b["fullname"]))
    ]
    return [
        "## Every benchmark (pytest-benchmark, all `benchmarks/test_bench_*.py`)",
        "",
        *_table(["group", "benchmark (metric key)", "min", "median", "rounds"], rows),
        "",
    ]


def reproduce_section(profile: str) -> list[str]:
    return [
        "## Reproduce",
        "",
        "```",
        f"./run bench --{profile} --check        # measure, report, check the budgets",
        "./run bench --results DIR/results.json --check   # re-render / re-check, no measuring",
        "```",
        "",
        "Results, logs and plots go to `bench-results/<time>-<profile>/` (`--out` to change). "
        "The first run with peers builds `.venv-peers/` from the hashed lock "
        "`benchmarks/peers/lock.txt` (`benchmarks/peers/peers_env.sh`; needs the package index). "
        "Single pieces: `SEALAGG_BENCH_PROFILE=quick .venv/bin/pytest "
        "benchmarks/test_bench_modes.py --benchmark-only`; `.venv/bin/python -P "
        "benchmarks/bench_appliance.py "
        "round --clients 10 --dimension 1000000`; `.venv-peers/bin/python "
        "benchmarks/peers/flower_secagg.py --workload n10_d1M --json flower.json`.",
    ]


def errors_section(errors: Sequence[Mapping[str, str]]) -> list[str]:
    if not errors:
        return []
    return [
        "## Steps that failed in this run",
        "",
        *[f"- `{e['step']}`: {e['error']}" for e in errors],
        "",
    ]


def floors_section(results: Mapping[str, Any]) -> list[str]:
    """Each kernel as a multiple of its physical floor, both measured in this run."""
    found = floors.rows(results)
    speeds = floors.throughputs(results)
    if not found and not speeds:
        return []
    body = [
        [
            r["kernel"],
            seconds(r["seconds"]),
            r["floor"],
            seconds(r["floor_seconds"]),
            f"{r['multiple']:.2f}x" + (f" ({r['low']:.2f}-{r['high']:.2f})" if "low" in r else ""),
        ]
        for r in found
    ]
    lines = [
        "## Kernels against their physical floors (same run)",
        "",
        "Each kernel's time over its floor's, both measured in this run: the cipher itself "
        "(`cryptography`'s AES-256-CTR / AES-256-GCM), a memory copy of the same bytes, a "
        "read-only float32 gemv, TenSEAL's own add. pytest-benchmark pairs: best times; "
        "`bench_floors_issue20.py` pairs: median of alternating repetitions (min-max).",
        "",
    ]
    if speeds:
        lines += [
            "Floors: " + "; ".join(f"{label} {rate:.1f} GB/s" for label, rate in speeds) + ".",
            "",
        ]
    if body:
        lines += _table(["kernel", "time", "floor", "floor time", "x floor"], body)
    return [*lines, ""]


def not_run_section(steps: Sequence[Mapping[str, str]]) -> list[str]:
    if not steps:
        return []
    return [
        "## Not run in this run",
        "",
        *[f"- `{step['step']}`: {step['why']}" for step in steps],
        "",
    ]


def render(results: Mapping[str, Any], plots: Sequence[str] = ()) -> str:
    """The whole report; ``plots`` are file names under ``plots/`` next to the report."""
    profile = results.get("profile", "?")
    lines = [
        f"# sealagg benchmark report ({profile})",
        "",
        f"Run {results.get('started', '?')} → {results.get('finished', '?')}: "
        f"`{results.get('command', './run bench')}`.",
        "",
        f"> {NOISE_NOTE}",
        "",
        *[f"Note: {note}" for note in results.get("notes") or []],
        "",
        *machine_section(results.get("machine") or {}),
        "",
        *budgets_section(results.get("budgets") or [], results.get("paired")),
        "",
        *errors_section(results.get("errors") or []),
        *not_run_section(results.get("not_run") or []),
        *floors_section(results),
        *sweep_section(sweep_points(results.get("pytest")), plots),
        "",
        *peers_section(results, plots),
        "",
        *appliance_section(results.get("appliance") or {}),
        *all_benchmarks_section(results.get("pytest")),
        *reproduce_section(profile),
    ]
    text = "\n".join(lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.rstrip() + "\n"
