"""Where a loopback round's CPU goes, per mode: a sampling profile of the appliance and
its client processes, grouped into the categories issue 20 asks about.

Runs ``benchmarks/bench_appliance.py round --client-processes`` under ``perf record``
(Linux ``perf``, the operating system's package; CPU-clock samples at ``--frequency`` Hz on
every thread, the monotonic clock), keeps only the samples taken during the warm rounds (the
window ``bench_appliance.py --marks`` writes), and sorts each sample by the shared object and
symbol it hit. Each sample is ``1 / frequency`` CPU seconds, so the tables are CPU
milliseconds per round, appliance and clients apart, and the difference between two modes
says what the secure one adds. Native frames only: Python functions show as the
interpreter, which is the point (the interpreter's share is one of the categories).

Usage::

    .venv/bin/python -P benchmarks/profile_loopback.py --clients 10 --dimension 1000000 \\
        --modes plaintext secagg+ --rounds 12 --markdown out.md
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: (category, test on (dso, symbol)); the first that matches wins.
CATEGORIES: tuple[tuple[str, object], ...] = (
    (
        "garbage collector",
        lambda dso, sym: (
            "libpython" in dso
            and (
                sym.startswith(("gc_", "visit_", "subtract_refs", "update_refs", "move_"))
                or sym.endswith("_traverse")
                or sym.endswith("traverse")
            )
        ),
    ),
    ("Python interpreter", lambda dso, sym: "libpython" in dso),
    (
        "AES-CTR masks (OpenSSL)",
        lambda dso, sym: "aes" in sym.lower() and "gcm" not in sym.lower() and "cygrpc" not in dso,
    ),
    ("X25519 / Ed25519", lambda dso, sym: "_sodium" in dso or "25519" in sym or "x25519" in sym),
    ("gRPC core + TLS (BoringSSL)", lambda dso, sym: "cygrpc" in dso or "event_engine" in dso),
    ("memcpy / memset", lambda dso, sym: "libc" in dso and sym.startswith(("__mem", "mem"))),
    (
        "page faults, zeroing",
        lambda dso, sym: (
            "kernel" in dso
            and sym.startswith(
                (
                    "clear_page",
                    "do_anonymous_page",
                    "handle_mm_fault",
                    "__handle_mm",
                    "rmqueue",
                    "get_page_from_freelist",
                    "free_pcppages",
                    "release_pages",
                    "page_counter",
                    "__mod_memcg",
                    "zap_",
                    "unmap_",
                    "lru_",
                    "folio",
                )
            )
        ),
    ),
    ("kernel: sockets, wakeups, syscalls", lambda dso, sym: "kernel" in dso),
    (
        "numba kernels, numpy, BLAS",
        lambda dso, sym: (
            "[JIT]" in dso
            or "libgomp" in dso
            or "numpy" in dso
            or "_multiarray" in dso
            or "openblas" in dso
            or "llvmlite" in dso
            or "_generator" in dso
            or "_pcg64" in dso
            or dso.startswith("/tmp/perf-")
        ),
    ),
    ("malloc, other libc", lambda dso, sym: "libc" in dso or "ld-linux" in dso),
    (
        "cryptography (other)",
        lambda dso, sym: "_rust" in dso or "libcrypto" in dso or "libssl" in dso or "_cffi" in dso,
    ),
    ("protobuf", lambda dso, sym: "_message" in dso or "protobuf" in dso),
)


def category(dso: str, sym: str) -> str:
    for name, test in CATEGORIES:
        if test(dso, sym):  # type: ignore[operator]
            return name
    return "other"


def record(args: argparse.Namespace, mode: str, folder: Path) -> tuple[Path, Path, Path]:
    """One perf-recorded bench run of ``mode``: (perf data, marks, bench output)."""
    data, marks, log = folder / f"{mode}.data", folder / f"{mode}.marks", folder / f"{mode}.log"
    bench = [
        sys.executable,
        "-P",
        str(HERE / "bench_appliance.py"),
        "round",
        "--clients",
        str(args.clients),
        "--dimension",
        str(args.dimension),
        "--modes",
        mode,
        "--client-processes",
        "--rounds",
        str(args.rounds),
        "--marks",
        str(marks),
    ]
    perf = ["perf", "record", "-q", "-k", "mono", "-F", str(args.frequency), "-o", str(data)]
    with log.open("w") as out:
        subprocess.run([*perf, "--", *bench], check=True, stdout=out, stderr=subprocess.STDOUT)
    return data, marks, log


def samples(data: Path, start: float, end: float) -> collections.Counter:
    """(pid, category) -> samples taken in [start, end] (monotonic seconds)."""
    script = subprocess.run(
        [
            "perf",
            "script",
            "-i",
            str(data),
            "-F",
            "pid,tid,time,ip,sym,dso",
            "--time",
            f"{start:.6f},{end:.6f}",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    counts: collections.Counter = collections.Counter()
    for line in script.splitlines():
        parts = line.split(None, 3)
        if len(parts) < 3 or not parts[0].split("/")[0].isdigit():
            continue
        pid = int(parts[0].split("/")[0])
        rest = parts[3] if len(parts) > 3 else ""
        sym, _, dso = rest.rpartition("(")
        dso = dso.rstrip(")").strip()
        sym = sym.split()[-1] if sym.split() else ""
        counts[(pid, category(dso, sym))] += 1
    return counts


def profile(args: argparse.Namespace) -> dict[str, dict[str, dict[str, float]]]:
    """mode -> role -> category -> CPU ms per warm round."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            data, marks, log = record(args, mode, Path(tmp))
            _mode, start, end, warm = marks.read_text().split()
            counts = samples(data, float(start), float(end))
            bench_pid = _bench_pid(data)
            table: dict[str, dict[str, float]] = {"appliance": {}, "clients": {}}
            for (pid, cat), n in counts.items():
                role = "appliance" if pid == bench_pid else "clients"
                ms = 1000.0 * n / args.frequency / int(warm)
                table[role][cat] = table[role].get(cat, 0.0) + ms
            out[mode] = table
            print(log.read_text().strip().splitlines()[-1], file=sys.stderr)
    return out


def _bench_pid(data: Path) -> int:
    """The bench process's pid: the first ``python`` process perf saw (perf's own child)."""
    script = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "pid"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for line in script.splitlines():
        token = line.strip().split("/")[0]
        if token.isdigit():
            return int(token)
    raise RuntimeError("no samples")


def markdown(result: dict[str, dict[str, dict[str, float]]], modes: list[str]) -> str:
    cats = [c for c, _ in CATEGORIES] + ["other"]
    head = "| category | " + " | ".join(f"{m} appliance | {m} clients" for m in modes)
    if len(modes) == 2:
        head += f" | {modes[1]} minus {modes[0]} (all)"
    lines = [head + " |", "|" + "---|" * (1 + 2 * len(modes) + (len(modes) == 2))]
    totals = collections.defaultdict(float)
    for cat in cats:
        row, vals = [cat], []
        for m in modes:
            for role in ("appliance", "clients"):
                v = result[m][role].get(cat, 0.0)
                totals[(m, role)] += v
                row.append(f"{v:.0f}")
            vals.append(sum(result[m][r].get(cat, 0.0) for r in ("appliance", "clients")))
        if len(modes) == 2:
            row.append(f"{vals[1] - vals[0]:+.0f}")
        if any(float(x) >= 0.5 for x in row[1 : 1 + 2 * len(modes)]):
            lines.append("| " + " | ".join(row) + " |")
    total = ["**total CPU ms / round**"]
    for m in modes:
        total += [f"**{totals[(m, 'appliance')]:.0f}**", f"**{totals[(m, 'clients')]:.0f}**"]
    if len(modes) == 2:
        a = sum(totals[(modes[0], r)] for r in ("appliance", "clients"))
        b = sum(totals[(modes[1], r)] for r in ("appliance", "clients"))
        total.append(f"**{b - a:+.0f}**")
    lines.append("| " + " | ".join(total) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--dimension", type=int, default=1_000_000)
    ap.add_argument("--modes", nargs="+", default=["plaintext", "secagg+"])
    ap.add_argument("--rounds", type=int, default=12, help="rounds per mode (the first warms up)")
    ap.add_argument("--frequency", type=int, default=999, help="samples per CPU second")
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("PYTHONSAFEPATH", "1")
    result = profile(args)
    text = markdown(result, args.modes)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
