"""PNG plots of a bench run (matplotlib, imported only here, with the non-interactive backend)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.report import PHASE_ORDER, _ours_one_process, like_the_appliance, sweep_points


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(points: list[dict[str, Any]], fixed: str, vary: str) -> dict[str, list[tuple]]:
    """Per mode, (x, seconds) along ``vary`` at the most common value of ``fixed``."""
    if not points:
        return {}
    counts: dict[int, int] = defaultdict(int)
    for p in points:
        counts[p[fixed]] += 1
    ref = max(counts, key=lambda v: (counts[v], -v))
    out: dict[str, list[tuple]] = defaultdict(list)
    for p in points:
        if p[fixed] == ref:
            out[p["mode"]].append((p[vary], p["seconds"]))
    return {m: sorted(v) for m, v in out.items() if len(v) >= 2} | {"_ref": [(ref,)]}


def _cost_plot(plt: Any, points: list[dict[str, Any]], vary: str, path: Path) -> bool:
    fixed = "d" if vary == "n" else "n"
    series = _series(points, fixed, vary)
    ref = series.pop("_ref", [(None,)])[0][0]
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for mode, xy in sorted(series.items()):
        ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", label=mode)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = sorted({x for xy in series.values() for x, _ in xy})
    ax.set_xticks(ticks, [f"{x:,}" for x in ticks])
    ax.minorticks_off()
    ax.set_xlabel("clients n" if vary == "n" else "model size d (coordinates)")
    ax.set_ylabel("round, one process (s, best)")
    ax.set_title(f"Round cost vs {vary} ({fixed} = {ref:,})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _phase_plot(plt: Any, points: list[dict[str, Any]], path: Path) -> bool:
    phased = [p for p in points if p["phases"] and p["mode"] != "plaintext"]
    if not phased:
        return False
    names = [ph for ph in PHASE_ORDER if any(ph in p["phases"] for p in phased)]
    names += sorted({ph for p in phased for ph in p["phases"]} - set(names))
    labels = [f"{p['mode']}\nn={p['n']}\nd={p['d']:,}" for p in phased]
    fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(phased)), 4.6))
    bottom = [0.0] * len(phased)
    for ph in names:
        values = [p["phases"].get(ph, 0.0) for p in phased]
        ax.bar(range(len(phased)), values, bottom=bottom, label=ph)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xticks(range(len(phased)), labels, fontsize=7)
    ax.set_ylabel("seconds (clients summed)")
    ax.set_title("Where a round's time goes")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _bytes_plot(plt: Any, points: list[dict[str, Any]], path: Path) -> bool:
    by_mode: dict[str, dict[int, float]] = defaultdict(dict)
    for p in points:
        if p["bytes_up_per_client"]:
            by_mode[p["mode"]][p["d"]] = float(p["bytes_up_per_client"])
    by_mode = {m: v for m, v in by_mode.items() if len(v) >= 2}
    if not by_mode:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for mode, xy in sorted(by_mode.items()):
        xs = sorted(xy)
        ax.plot(xs, [xy[x] for x in xs], marker="o", label=mode)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("model size d (coordinates)")
    ax.set_ylabel("bytes sent per client per round")
    ax.set_title("Network bytes per client")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _peers_plot(plt: Any, results: Mapping[str, Any], path: Path) -> bool:
    flower = ((results.get("peers") or {}).get("flower")) or {}
    theirs = {
        r["workload"]: r["round_seconds"]
        for r in flower.get("results", [])
        if r["mode"] == "secagg+" and r.get("outcome") == "completed"
    }
    ours = {w: r["round_seconds"] for w, r in _ours_one_process(results.get("pytest")).items()}
    names = sorted(set(theirs) | set(ours), key=lambda w: (len(w), w))
    if not names or not theirs:
        return False
    # The appliance's bar only where the workload is its own graph and threshold (like for like).
    shapes = {
        r["workload"]: (r["n"], r["d"])
        for r in flower.get("results", [])
        if r.get("mode") == "secagg+" and like_the_appliance(r)
    }
    rounds = {
        (r["clients"], r["d"]): r.get("median", r["best"])
        for r in (results.get("appliance") or {}).get("round", [])
        if r["mode"] == "secagg+"
    }
    appliance = {w: rounds.get(shape, 0) for w, shape in shapes.items()}
    fig, ax = plt.subplots(figsize=(max(6.4, 1.2 * len(names)), 4.2))
    xs = range(len(names))
    bars = [
        ("Flower SecAgg+ (its engine)", theirs),
        ("ours, one process", ours),
        ("ours, appliance on loopback", appliance),
    ]
    for i, (label, values) in enumerate(bars):
        offset = (i - 1) * 0.27
        ax.bar([x + offset for x in xs], [values.get(w, 0) for w in names], 0.27, label=label)
    ax.set_xticks(list(xs), names, fontsize=7, rotation=20)
    ax.set_yscale("log")
    ax.set_ylabel("round (s, best; 0 = halted / not run)")
    ax.set_title("SecAgg+ round: Flower vs ours, identical workloads")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def draw(results: Mapping[str, Any], directory: Path) -> list[str]:
    """Write every plot the data supports into ``directory``; returns the file names written."""
    plt = _pyplot()
    directory.mkdir(parents=True, exist_ok=True)
    points = sweep_points(results.get("pytest"))
    made = []
    jobs = [
        ("cost_vs_n.png", lambda p: _cost_plot(plt, points, "n", p)),
        ("cost_vs_d.png", lambda p: _cost_plot(plt, points, "d", p)),
        ("phases.png", lambda p: _phase_plot(plt, points, p)),
        ("bytes_vs_d.png", lambda p: _bytes_plot(plt, points, p)),
        ("peers.png", lambda p: _peers_plot(plt, results, p)),
    ]
    for name, job in jobs:
        if job(directory / name):
            made.append(name)
    return made
