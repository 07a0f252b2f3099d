"""Renders a merged bench results document as Markdown (pure: no measurement, no matplotlib)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from harness.metrics import benchmark_key

NOISE_NOTE = (
    "Measured on a shared machine while other work was running: expect noise of ±20% or more "
    "on single figures. Budgets compare ratios of figures taken in the same run, never absolute "
    "times; the lead may rerun at a quiet moment with the commands below."
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
    lines = [
        "## Machine",
        "",
        f"- CPU: {m.get('cpu', '?')} ({', '.join(m.get('cpu_flags') or []) or 'no flags read'}); "
        f"{m.get('cores', '?')} cores ({m.get('usable_cores', '?')} usable by this run)",
        f"- Memory: {m.get('memory_gib', '?')} GiB; OS {m.get('os', '?')}; "
        f"Python {m.get('python', '?')}",
        f"- Load average (1/5/15 min) at start {m.get('load_average_start')}, "
        f"at end {m.get('load_average_end')}",
        f"- Libraries: {libs}",
        f"- Code: commit {m.get('git_commit') or 'unknown'} (plus any uncommitted changes)",
    ]
    return lines


def budgets_section(verdicts: Sequence[Mapping[str, Any]]) -> list[str]:
    if not verdicts:
        return ["## Budgets", "", "No budgets were checked."]
    mark = {
        "ok": "✅ ok",
        "exceeded": "❌ exceeded",
        "missing": "❌ missing",
        "skipped": "- skipped",
    }
    rows = [
        [
            mark.get(v["status"], v["status"]),
            f"`{v['id']}`",
            v["what"],
            "-" if v["ratio"] is None else f"{v['ratio']:.3g}x",
            v["limit"],
            "" if v["ratio"] is not None else v["detail"],
        ]
        for v in verdicts
    ]
    failed = sum(v["status"] in ("exceeded", "missing") for v in verdicts)
    return [
        "## Budgets (`benchmarks/budgets.toml`)",
        "",
        f"{len(verdicts) - failed} of {len(verdicts)} met or skipped; {failed} failed. "
        "Each is metric / baseline, both measured in this run.",
        "",
        *_table(["status", "budget", "what", "ratio", "limit", "note"], rows),
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


def peers_section(results: Mapping[str, Any], plots: Sequence[str]) -> list[str]:
    flower = ((results.get("peers") or {}).get("flower")) or {}
    ours = _ours_one_process(results.get("pytest"))
    rounds = {
        (r["clients"], r["d"]): r["best"]
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
        app = rounds.get((n, d)) if not (f.get("dropout") or o.get("dropout")) else None
        f_round = f.get("round_seconds") if f.get("outcome") == "completed" else None
        rows.append(
            [
                name,
                f"{f.get('outcome', 'not run')} / {o.get('outcome', 'not run')}",
                seconds(f_round),
                seconds((fedavg.get(name) or {}).get("round_seconds")),
                seconds(o.get("round_seconds")),
                seconds(app),
                ratio(f_round, o.get("round_seconds")),
                ratio(f_round, app),
                f"{seconds(f.get('client_seconds_per_client'))} / "
                f"{seconds(o.get('client_seconds_per_client'))}",
                f"{seconds(f.get('server_seconds'))} / {seconds(o.get('server_seconds'))}",
                f"{size(f.get('bytes_up_per_client'))} / {size(o.get('bytes_up_per_client'))}",
            ]
        )
    engine = flower.get("engine") or "not run"
    versions = ", ".join(f"{k} {v}" for k, v in (flower.get("versions") or {}).items())
    lines = [
        "## Peer comparison: Flower's SecAgg+ against ours, identical workloads",
        "",
        f"Flower: `SecAggPlusWorkflow` + `secaggplus_mod`, unmodified, through {engine} "
        f"({versions}), in the benchmark-only venv `.venv-peers`. Its round = the fit workflow "
        "on the server clock (best round after a warm-up round); its server time = that minus "
        "waiting for clients; its client time = a timing mod around `secaggplus_mod`; bytes = "
        "serialized message contents. Ours: `crypto.simulation.run_round` in one process (every "
        "client and the server sequentially; includes msgpack wire encoding) and the appliance "
        "over loopback gRPC + mTLS (`benchmarks/bench_appliance.py`: at n=10, d=1M one process "
        "per client and the median of 9 warm rounds, the modes alternating; otherwise clients "
        "as threads and the median of 2; the appliance's own k and t, no dropouts). "
        "Workloads: `benchmarks/peers/workloads.toml`. "
        "Goals (issue 9): >= 9x on the protocol round in one process, >= 5x end to end. "
        "Caveat: 'Flower / ours 1p' sets Flower's engine round (Ray actors, 2 at a time, "
        "messages serialized) against our protocol with no network; Flower's building blocks "
        "driven in one process were not re-run here (reference figures: shared/DESIGN.md).",
        "",
        *_table(
            [
                "workload",
                "outcome Flower / ours",
                "Flower round",
                "Flower FedAvg",
                "ours 1 process",
                "ours appliance",
                "Flower ÷ ours 1p",
                "Flower ÷ appliance",
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
        "The first run with peers creates `.venv-peers/` from `benchmarks/peers/requirements.txt` "
        "(needs the package index). Single pieces: `SEALAGG_BENCH_PROFILE=quick .venv/bin/pytest "
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
        *budgets_section(results.get("budgets") or []),
        "",
        *errors_section(results.get("errors") or []),
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
