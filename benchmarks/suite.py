"""``./run bench``: the benchmark suite that proves the overhead budgets (issue 9).

Runs pytest-benchmark over every ``benchmarks/test_bench_*.py`` (sizes from the profile), the
appliance on loopback (``benchmarks/bench_appliance.py``) and Flower's own SecAgg+ in a separate
benchmark-only venv (``benchmarks/peers/``); merges everything into ``results.json``, renders
``report.md`` and PNG plots, and with ``--check`` exits 1 naming each budget of
``benchmarks/budgets.toml`` that was exceeded (ratios measured in the same run, never absolute
times; judged on a 95 % interval where the two figures were measured in alternating pairs, and
reported as "inconclusive (noise)", not failed, when that interval straddles the limit).
Run as a script (``.venv/bin/python benchmarks/suite.py``): Python puts this folder on
``sys.path``, which is how ``harness`` (the machinery, ``benchmarks/harness/``) imports. The
suite is part of the source checkout, never of the installed appliance. Everything heavy
(matplotlib, the runs) is imported only when this runs.
"""

from __future__ import annotations

import datetime
import json
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand

BUDGETS_FILE = "budgets.toml"
RESULTS_MD = "RESULTS.md"
RESULTS_BEGIN = "<!-- sealagg-bench:begin (written by `./run bench --full --update-results`) -->"
RESULTS_END = "<!-- sealagg-bench:end -->"
LATEST_DIR = "report"
#: How a verdict reads on the terminal: noise is named, never shown as a pass or a failure.
STATUS_TEXT = {"inconclusive": "inconclusive (noise)"}


# file=None: both consoles write to whatever sys.stdout / sys.stderr are at print time.
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def fail(message: str) -> NoReturn:
    """One red line on stderr, exit code 1."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(1)


def find_bench_dir(explicit: Path | None) -> Path:
    """The suite folder: ``--benchmarks``, else the folder this script sits in."""
    candidate = explicit or Path(__file__).resolve().parent
    if (candidate / BUDGETS_FILE).is_file():
        return candidate.resolve()
    fail(
        f"no benchmark suite found (looked for {BUDGETS_FILE} in {candidate}): the suite ships "
        "with the source checkout, not the installed package; run `./run bench` from a clone "
        "of the repository (or pass --benchmarks PATH)"
    )


def finish(
    results: dict[str, Any], bench_dir: Path | None, out_dir: Path, draw: bool = True
) -> list[str]:
    """Metrics, budget verdicts, plots and report.md for ``results``; returns failure lines."""
    from harness import budgets, metrics, plots, report

    results["metrics"] = metrics.collect(results)
    failures: list[str] = []
    if bench_dir is not None:
        try:
            spec = budgets.load(bench_dir / BUDGETS_FILE)
        except budgets.BudgetFileError as error:
            fail(str(error))
        runs = metrics.paired_runs(results)
        verdicts = budgets.check(spec.budgets, results["metrics"], results.get("profile", ""), runs)
        results["budgets_version"] = spec.version
        results["budgets"] = budgets.as_json(verdicts)
        failures = budgets.failure_lines(verdicts)
        results["budgets_inconclusive"] = budgets.inconclusive_lines(verdicts)
    drawn = plots.draw(results, out_dir / "plots") if draw else []
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, sort_keys=False))
    (out_dir / "report.md").write_text(report.render(results, drawn))
    return failures


def update_results_md(bench_dir: Path, out_dir: Path) -> Path:
    """Copy the report into benchmarks/report/ and between RESULTS.md's markers (only there)."""
    latest = bench_dir / LATEST_DIR
    if latest.exists():
        shutil.rmtree(latest)
    latest.mkdir(parents=True)
    if (out_dir / "plots").is_dir():
        shutil.copytree(out_dir / "plots", latest / "plots")
    for name in ("report.md", "results.json"):
        if (out_dir / name).is_file():
            shutil.copy2(out_dir / name, latest / name)
    text = (out_dir / "report.md").read_text()
    # The long table of every benchmark stays in report/report.md only.
    head, sep, rest = text.partition("\n## Every benchmark")
    if sep:
        _, sep2, tail = rest.partition("\n## Reproduce")
        link = f"\n\nEvery benchmark's figure: `benchmarks/{LATEST_DIR}/report.md`.\n"
        text = head + link + (sep2 + tail if sep2 else "")
    body = "\n".join(
        ("#" + line if line.startswith("#") else line) for line in text.splitlines()
    ).replace("](plots/", f"]({LATEST_DIR}/plots/")
    section = f"{RESULTS_BEGIN}\n{body}\n{RESULTS_END}"
    path = bench_dir / RESULTS_MD
    current = path.read_text() if path.exists() else "# Benchmark results\n"
    if RESULTS_BEGIN in current and RESULTS_END in current:
        head, _, rest = current.partition(RESULTS_BEGIN)
        _, _, tail = rest.partition(RESULTS_END)
        current = head + section + tail
    else:
        current = current.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(current)
    return path


def bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="A few minutes: main shapes, 3 Flower workloads.")
    ] = False,
    full: Annotated[
        bool, typer.Option("--full", help="Every shape and all 8 Flower workloads (~30 min).")
    ] = False,
    smoke: Annotated[
        bool,
        typer.Option("--smoke", help="Tiny sizes, no appliance, no peers: proves the suite runs."),
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Exit 1 naming every budget exceeded or not measured; budgets whose interval "
            "straddles the limit are reported as inconclusive (noise), not failed.",
        ),
    ] = False,
    peers: Annotated[
        bool | None,
        typer.Option("--peers/--no-peers", help="Run Flower (default: yes unless --smoke)."),
    ] = None,
    appliance: Annotated[
        bool | None,
        typer.Option(
            "--appliance/--no-appliance",
            help="Run the loopback appliance (default: unless --smoke).",
        ),
    ] = None,
    select: Annotated[
        str | None, typer.Option("-k", help="Only pytest benchmarks matching this expression.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Output folder (default bench-results/<time>-<profile>)."),
    ] = None,
    results_file: Annotated[
        Path | None,
        typer.Option("--results", help="Re-render / re-check an earlier results.json; no runs."),
    ] = None,
    benchmarks: Annotated[
        Path | None, typer.Option("--benchmarks", help="The suite folder (default: its own).")
    ] = None,
    with_plots: Annotated[
        bool, typer.Option("--plots/--no-plots", help="Draw the PNG plots (matplotlib).")
    ] = True,
    update_results: Annotated[
        bool,
        typer.Option(
            "--update-results",
            help="Write the report into benchmarks/RESULTS.md (between its markers) and "
            "benchmarks/report/ (meant for --full runs).",
        ),
    ] = False,
) -> None:
    """Run the benchmark suite: report, plots, peer comparison, overhead budgets."""
    if sum((quick, full, smoke)) > 1:
        fail("choose one of --smoke, --quick and --full")
    profile = "full" if full else "smoke" if smoke else "quick"
    if results_file is not None:
        try:
            results = json.loads(results_file.read_text())
        except ValueError as error:
            fail(f"{results_file}: not a bench results file: {error}")
        bench_dir = find_bench_dir(benchmarks)
        out_dir = out or results_file.parent
    else:
        bench_dir = find_bench_dir(benchmarks)
        from harness.runner import Run, SuiteConfig

        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        out_dir = out or Path("bench-results") / f"{stamp}-{profile}"
        config = SuiteConfig(
            profile=profile,
            bench_dir=bench_dir,
            out_dir=out_dir,
            peers=(profile != "smoke") if peers is None else peers,
            appliance=(profile != "smoke") if appliance is None else appliance,
            select=select,
            log=lambda line: err_console.print(line, markup=False, soft_wrap=True),
        )
        results = Run(config).run()
    out_dir.mkdir(parents=True, exist_ok=True)
    failures = finish(results, bench_dir, out_dir, draw=with_plots)
    console.print(f"report: {out_dir / 'report.md'}")
    verdicts = results.get("budgets", [])
    for verdict in verdicts:
        if verdict["status"] != "skipped":
            status = STATUS_TEXT.get(verdict["status"], verdict["status"])
            line = f"  {status:9s} {verdict['id']}: {verdict['detail']}"
            console.print(line, markup=False, soft_wrap=True)
    skipped = sum(v["status"] == "skipped" for v in verdicts)
    if skipped:
        console.print(
            f"  ({skipped} budgets skipped: not part of the {results.get('profile')} profile)"
        )
    for skipped_step in results.get("not_run", []):
        console.print(
            f"  not run: {skipped_step['step']}: {skipped_step['why']}",
            markup=False,
            soft_wrap=True,
        )
    for error in results.get("errors", []):
        err_console.print(
            f"step failed: {error['step']}: {error['error']}", markup=False, soft_wrap=True
        )
    if update_results:
        console.print(f"updated {update_results_md(bench_dir, out_dir)}")
    if check:
        # Inconclusive is reported on every --check but is not a failure: the interval
        # straddles the limit, so this run cannot tell (rerun on a quieter machine).
        for line in results.get("budgets_inconclusive", []):
            err_console.print(line, markup=False, soft_wrap=True)
    if check and failures:
        for line in failures:
            err_console.print(line, markup=False, soft_wrap=True)
        raise typer.Exit(1)


class OneLineErrors(TyperCommand):
    """A file that cannot be read or written prints one line and exits 1, as in the CLI."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except OSError as error:
            where = f"{error.filename}: " if error.filename else ""
            fail(f"{where}{error.strerror or error}")


app = typer.Typer(
    add_completion=False,
    # A traceback of an unexpected error must never print local variables.
    pretty_exceptions_show_locals=False,
)
app.command(cls=OneLineErrors)(bench)


if __name__ == "__main__":
    if sys.flags.safe_path:
        # -P / PYTHONSAFEPATH keeps this folder off sys.path, and with it `harness`.
        sys.exit(
            "benchmarks/suite.py must run without -P / PYTHONSAFEPATH (it imports harness/ "
            "beside it): use ./run bench, or .venv/bin/python benchmarks/suite.py"
        )
    app(prog_name="./run bench")
