"""``./run bench`` (``benchmarks/suite.py``, issue 9): budget checker, metrics, report and plots
on synthetic JSON, the command's exit codes, and one real smoke run of the suite on tiny sizes
(no appliance, no peers). ``benchmarks/`` is on pytest's pythonpath: ``suite`` and ``harness``
import by name, as they do when the script runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import budgets, metrics, report
from suite import RESULTS_BEGIN, RESULTS_END, app, update_results_md
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "benchmarks" / "suite.py"
runner = CliRunner()

BUDGETS = """
version = 1

[[budget]]
id = "loopback"
what = "secagg+ vs plaintext over the appliance"
metric = "appliance:round:secagg+:n10:d1000000"
baseline = "appliance:round:plaintext:n10:d1000000"
max_ratio = 1.5
profiles = ["quick", "full"]

[[budget]]
id = "vs-flower"
what = "Flower / ours"
metric = "flower:secagg+:n10_d1M:round_seconds"
baseline = "test_bench_peer_workloads.py::test_ours_one_process[n10_d1M]"
min_ratio = 9
profiles = ["quick"]

[[budget]]
id = "kernel"
what = "quantize vs copy"
metric = "test_bench_kernels.py::test_kernel[quantize d=1M-quantize]"
baseline = "test_bench_kernels.py::test_kernel[quantize d=1M-np.copy floor]"
max_ratio = 4
profiles = ["full"]
"""


def _bench(fullname: str, best: float, group: str = "g", **extra: object) -> dict:
    return {
        "group": group,
        "name": fullname.split("::")[-1],
        "fullname": fullname,
        "extra_info": extra,
        "stats": {"min": best, "median": best * 1.1, "rounds": 3},
    }


def synthetic_results(flower_round: float = 1.2, secure_round: float = 0.9) -> dict:
    """A merged results document shaped like the runner's, with known numbers."""
    sweep = [
        _bench(
            f"benchmarks/test_bench_modes.py::test_round_cost[{mode}-n{n}-d{d}]",
            best,
            "modes quick",
            sweep={"mode": mode, "n": n, "d": d},
            phases={"client mask": best / 2, "server unmask": best / 4}
            if mode != "plaintext"
            else {},
            bytes_up_per_client=4 * d + (1000 if mode != "plaintext" else 0),
        )
        for mode, n, d, best in [
            ("plaintext", 10, 100_000, 0.002),
            ("plaintext", 50, 100_000, 0.010),
            ("plaintext", 10, 1_000_000, 0.020),
            ("secagg+", 10, 100_000, 0.030),
            ("secagg+", 50, 100_000, 0.400),
            ("secagg+", 10, 1_000_000, 0.120),
        ]
    ]
    ours = _bench(
        "benchmarks/test_bench_peer_workloads.py::test_ours_one_process[n10_d1M]",
        0.12,
        workload="n10_d1M",
        n=10,
        d=1_000_000,
        dropout=0.0,
        outcome="completed",
        client_seconds_per_client=0.011,
        server_seconds=0.018,
        bytes_up_per_client=4_100_000.0,
    )
    kernels = [
        _bench("benchmarks/test_bench_kernels.py::test_kernel[quantize d=1M-quantize]", 0.0004),
        _bench(
            "benchmarks/test_bench_kernels.py::test_kernel[quantize d=1M-np.copy floor]", 0.0002
        ),
    ]
    flower_row = {
        "n": 10,
        "d": 1_000_000,
        "k": 10,
        "t": 2,  # the appliance's own threshold at n=10: the end-to-end ratio is like for like
        "dropout": 0.0,
        "dropped": 0,
        "round_seconds": flower_round,
        "server_seconds": 0.3,
        "client_seconds_per_client": 0.1,
        "bytes_up_per_client": 8_500_000.0,
        "outcome": "completed",
    }
    return {
        "schema": 1,
        "profile": "quick",
        "started": "2026-11-26T06:00:00Z",
        "finished": "2026-11-26T06:05:00Z",
        "command": "./run bench --quick",
        "machine": {
            "cpu": "Test CPU",
            "cpu_flags": ["aes"],
            "cores": 2,
            "usable_cores": 2,
            "memory_gib": 24.0,
            "libraries": {"numpy": "2.4.6"},
            "load_average_start": [1.0, 1.0, 1.0],
            "load_average_end": [2.0, 1.0, 1.0],
        },
        "pytest": {"benchmarks": [*sweep, ours, *kernels]},
        "appliance": {
            "round": [
                {"mode": "plaintext", "clients": 10, "d": 1_000_000, "best": 0.5},
                {"mode": "secagg+", "clients": 10, "d": 1_000_000, "best": secure_round},
            ],
            "rss": [
                {"mode": "secagg+", "clients": 10, "d": 1_000_000, "peak_rss_mib": 260.0},
                {"mode": "secagg+", "clients": 100, "d": 1_000_000, "peak_rss_mib": 520.0},
            ],
        },
        "peers": {
            "flower": {
                "engine": "test engine",
                "versions": {"flwr": "1.42.0"},
                "results": [
                    {"workload": "n10_d1M", "mode": "secagg+", **flower_row},
                    {"workload": "n10_d1M", "mode": "fedavg", **flower_row, "round_seconds": 0.5},
                    {
                        "workload": "n50_d1M_k11_drop30",
                        "mode": "secagg+",
                        **flower_row,
                        "outcome": "halted",
                    },
                ],
            }
        },
        "errors": [{"step": "robust-peers", "error": "exit code 2"}],
    }


# --- budgets ------------------------------------------------------------------------------------


def test_budget_file_parses_bounds_and_profiles() -> None:
    spec = budgets.parse(BUDGETS)
    assert spec.version == 1
    assert [b.id for b in spec.budgets] == ["loopback", "vs-flower", "kernel"]
    assert spec.budgets[0].max_ratio == 1.5 and spec.budgets[0].min_ratio is None
    assert spec.budgets[1].min_ratio == 9.0 and spec.budgets[1].limit_text() == ">= 9x"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version = 2\n[[budget]]\nid='a'", "version 2"),
        ("version = 1\n", "no [[budget]]"),
        ("version = 1\n[[budget]]\nid='a'\nwhat='w'\nmetric='m'\nmax_ratio=1", "'baseline'"),
        (
            "version = 1\n[[budget]]\nid='a'\nwhat='w'\nmetric='m'\nbaseline='b'\n"
            "max_ratio=1\nmin_ratio=2",
            "exactly one",
        ),
        (
            "version = 1\n[[budget]]\nid='a'\nwhat='w'\nmetric='m'\nbaseline='b'\nmax_ratio=0",
            "positive",
        ),
        (
            "version = 1\n"
            + "[[budget]]\nid='a'\nwhat='w'\nmetric='m'\nbaseline='b'\nmax_ratio=1\n" * 2,
            "duplicate id",
        ),
        ("version = 1\n[[budget]\n", "not valid TOML"),
    ],
)
def test_a_malformed_budget_file_is_refused_naming_the_problem(text: str, message: str) -> None:
    with pytest.raises(budgets.BudgetFileError, match=message.replace("[", r"\[")):
        budgets.parse(text)


def test_the_repository_budget_file_is_valid_and_uses_ratios_only() -> None:
    spec = budgets.load(ROOT / "benchmarks" / "budgets.toml")
    assert len(spec.budgets) >= 10
    ids = {b.id for b in spec.budgets}
    assert "loopback-secaggplus-vs-plaintext-n10-d1M" in ids
    assert "appliance-memory-flat-in-n" in ids
    for b in spec.budgets:
        assert b.metric != b.baseline
        assert set(b.profiles) <= {"smoke", "quick", "full"}


def test_check_passes_fails_and_skips_by_ratio() -> None:
    spec = budgets.parse(BUDGETS)
    found = metrics.collect(synthetic_results(flower_round=1.2, secure_round=0.9))
    verdicts = {v.budget.id: v for v in budgets.check(spec.budgets, found, "quick")}
    assert verdicts["loopback"].status is budgets.Status.exceeded  # 0.9 / 0.5 = 1.8 > 1.5
    assert verdicts["loopback"].ratio == pytest.approx(1.8)
    assert verdicts["vs-flower"].status is budgets.Status.ok  # 1.2 / 0.12 = 10 >= 9
    assert verdicts["kernel"].status is budgets.Status.ok  # 2.0 <= 4 (measured, so checked)
    lines = budgets.failure_lines(list(verdicts.values()))
    # No paired passes in this document: single figures, and the verdict says so.
    assert lines == ["budget exceeded: loopback: 1.8x (limit <= 1.5x); single figures, no interval"]

    slower_peer = metrics.collect(synthetic_results(flower_round=0.6, secure_round=0.7))
    verdicts = {v.budget.id: v for v in budgets.check(spec.budgets, slower_peer, "quick")}
    assert verdicts["loopback"].status is budgets.Status.ok
    assert verdicts["vs-flower"].status is budgets.Status.exceeded  # 5x < 9x


def test_an_unmeasured_budget_fails_in_its_profiles_and_is_skipped_elsewhere() -> None:
    spec = budgets.parse(BUDGETS)
    found = metrics.collect(synthetic_results())
    del found["flower:secagg+:n10_d1M:round_seconds"]
    by_profile = {
        p: {v.budget.id: v for v in budgets.check(spec.budgets, found, p)}
        for p in ("quick", "full")
    }
    assert by_profile["quick"]["vs-flower"].status is budgets.Status.missing
    assert by_profile["quick"]["vs-flower"].failed
    assert "flower:secagg+:n10_d1M:round_seconds" in by_profile["quick"]["vs-flower"].detail
    assert by_profile["full"]["vs-flower"].status is budgets.Status.skipped
    assert not by_profile["full"]["vs-flower"].failed


def test_a_halted_peer_round_gives_no_time_and_says_why() -> None:
    found = metrics.collect(synthetic_results())
    assert found["flower:secagg+:n50_d1M_k11_drop30:halted"] == 1.0
    assert "flower:secagg+:n50_d1M_k11_drop30:round_seconds" not in found
    budget = budgets.Budget(
        "b", "w", "flower:secagg+:n50_d1M_k11_drop30:round_seconds", "x", None, 5.0, ("quick",)
    )
    verdict = budgets.check_one(budget, {**found, "x": 1.0}, "quick")
    assert verdict.status is budgets.Status.missing
    assert "round halted" in verdict.detail


# --- metrics ------------------------------------------------------------------------------------


def test_metrics_flatten_every_source() -> None:
    found = metrics.collect(synthetic_results())
    assert found["test_bench_modes.py::test_round_cost[secagg+-n10-d1000000]"] == 0.12
    assert found["test_bench_peer_workloads.py::test_ours_one_process[n10_d1M]#server_seconds"] == (
        0.018
    )
    assert found["appliance:round:secagg+:n10:d1000000"] == 0.9
    assert found["appliance:rss:secagg+:n100:d1000000"] == 520.0
    assert found["flower:fedavg:n10_d1M:round_seconds"] == 0.5
    assert found["flower:secagg+:n10_d1M:bytes_up_per_client"] == 8_500_000.0
    # A test id may hold a slash: only the file's directory is dropped.
    name = "benchmarks/test_bench_robust.py::test_robust_kernel[n=20-krum f=n/5]"
    assert (
        metrics.benchmark_key(name) == "test_bench_robust.py::test_robust_kernel[n=20-krum f=n/5]"
    )
    # Workload shape fields and non-numbers are not metrics.
    assert "flower:secagg+:n10_d1M:n" not in found
    assert not any(k.endswith("#outcome") for k in found)


# --- report and plots ---------------------------------------------------------------------------


def test_report_renders_machine_budgets_sweeps_peers_and_appliance() -> None:
    results = synthetic_results()
    spec = budgets.parse(BUDGETS)
    results["budgets"] = budgets.as_json(
        budgets.check(spec.budgets, metrics.collect(results), "quick")
    )
    text = report.render(results, ["cost_vs_n.png", "phases.png", "peers.png"])
    assert "# sealagg benchmark report (quick)" in text
    assert "Test CPU; flags aes; 2 cores" in text and "24.0 GiB" in text
    assert "numpy 2.4.6" in text
    assert "shared machine" in text  # the noise warning
    assert "| ❌ exceeded | `loopback` |" in text and "1.8x" in text
    assert "2 of 3 met or skipped; 1 failed" in text
    # Sweep: secagg+ n=50 is 0.4 s against plaintext's 10 ms = 40x.
    assert "| secagg+ | 50 | 100,000 |  | 400.0 ms | 40.00x |" in text
    assert "![cost_vs_n.png](plots/cost_vs_n.png)" in text
    assert "### Per-phase breakdown" in text and "client mask" in text
    # Peers: Flower 1.2 s / appliance 0.9 s = 1.33x (engine vs engine); Flower's engine round is
    # never divided by our one-process round (0.12 s).
    row = next(line for line in text.splitlines() if line.startswith("| n10_d1M |"))
    assert "| 1.20 s | 500.0 ms | 120.0 ms | 900.0 ms | 1.33x |" in row
    assert "10.00x" not in text
    halted = next(line for line in text.splitlines() if line.startswith("| n50_d1M_k11_drop30 |"))
    assert "halted / not run" in halted
    assert "| secagg+ | 100 | 1,000,000 | 520 MiB | 2.00x |" in text
    assert "`robust-peers`: exit code 2" in text
    assert "./run bench --quick --check" in text


def test_plots_are_written_as_png(tmp_path: Path) -> None:
    from harness import plots

    made = plots.draw(synthetic_results(), tmp_path)
    assert set(made) == {
        "cost_vs_n.png",
        "cost_vs_d.png",
        "phases.png",
        "bytes_vs_d.png",
        "peers.png",
    }
    for name in made:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the command --------------------------------------------------------------------------------


def _suite(tmp_path: Path, budget_text: str = BUDGETS) -> tuple[Path, Path]:
    bench_dir = tmp_path / "benchmarks"
    bench_dir.mkdir()
    (bench_dir / "budgets.toml").write_text(budget_text)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    results = run_dir / "results.json"
    results.write_text(json.dumps(synthetic_results()))
    return bench_dir, results


def test_check_exits_nonzero_naming_each_exceeded_budget(tmp_path: Path) -> None:
    bench_dir, results = _suite(tmp_path)
    args = ["--results", str(results), "--benchmarks", str(bench_dir), "--check"]
    result = runner.invoke(app, [*args, "--no-plots"])
    assert result.exit_code == 1, result.output
    assert "budget exceeded: loopback: 1.8x (limit <= 1.5x)" in result.output
    assert "vs-flower" not in result.output.split("report:")[-1].split("budget exceeded")[-1]
    written = json.loads(results.read_text())
    assert {v["id"]: v["status"] for v in written["budgets"]}["loopback"] == "exceeded"
    assert "| ❌ exceeded | `loopback` |" in (results.parent / "report.md").read_text()


def test_check_exits_zero_when_every_budget_holds(tmp_path: Path) -> None:
    relaxed = BUDGETS.replace("max_ratio = 1.5", "max_ratio = 2.0")
    bench_dir, results = _suite(tmp_path, relaxed)
    args = ["--results", str(results), "--benchmarks", str(bench_dir), "--check"]
    result = runner.invoke(app, [*args, "--no-plots"])
    assert result.exit_code == 0, result.output
    assert "ok        loopback: 1.8x (limit <= 2x)" in result.output


def test_without_the_suite_the_command_fails_clearly(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--benchmarks", str(tmp_path / "nowhere")])
    assert result.exit_code == 1
    assert "no benchmark suite found" in result.output
    assert "source checkout" in result.output


def test_an_unreadable_results_file_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--results", str(tmp_path / "missing.json"), "--no-plots"])
    assert result.exit_code == 1
    assert "missing.json: No such file or directory" in result.output
    assert "Traceback" not in result.output


def test_profiles_are_exclusive() -> None:
    result = runner.invoke(app, ["--quick", "--full"])
    assert result.exit_code == 1
    assert "choose one of --smoke, --quick and --full" in result.output


def test_the_script_runs_as_a_script_and_refuses_safe_path_clearly() -> None:
    """``.venv/bin/python benchmarks/suite.py`` imports ``harness`` from its own folder; with
    ``-P`` (no script folder on sys.path) it says how to run it instead of a traceback."""
    env = {**os.environ, "PYTHONSAFEPATH": ""}
    plain = subprocess.run(
        [sys.executable, str(SUITE), "--help"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert all(flag in plain.stdout for flag in ("--quick", "--full", "--smoke", "--check"))
    safe = subprocess.run(
        [sys.executable, "-P", str(SUITE), "--help"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert safe.returncode != 0
    assert "./run bench" in safe.stderr and "Traceback" not in safe.stderr


def test_update_results_md_replaces_only_its_own_section(tmp_path: Path) -> None:
    bench_dir = tmp_path / "benchmarks"
    out_dir = tmp_path / "run"
    (out_dir / "plots").mkdir(parents=True)
    bench_dir.mkdir()
    (out_dir / "report.md").write_text("# report one\n\n![p](plots/p.png)\n")
    (out_dir / "plots" / "p.png").write_bytes(b"png")
    (out_dir / "pytest.log").write_text("log")
    others = "# Benchmark results\n\n## Someone else's section\n\nkept\n"
    (bench_dir / "RESULTS.md").write_text(others)
    update_results_md(bench_dir, out_dir)
    (out_dir / "report.md").write_text("# report two\n")
    update_results_md(bench_dir, out_dir)
    text = (bench_dir / "RESULTS.md").read_text()
    assert text.startswith(others.rstrip("\n"))
    assert text.count(RESULTS_BEGIN) == 1 and text.count(RESULTS_END) == 1
    assert "## report two" in text and "report one" not in text
    assert (bench_dir / "report" / "plots" / "p.png").is_file()
    assert not (bench_dir / "report" / "pytest.log").exists()


# --- the real suite, tiny ----------------------------------------------------------------------


def test_smoke_run_executes_the_suite_end_to_end(tmp_path: Path) -> None:
    """``./run bench --smoke``: every benchmark file collects, the sweeps run on tiny sizes,
    and the report, plots and budget verdicts are written (no appliance, no peers).

    Run as ``./run bench`` runs it: the script, whose own folder (benchmarks/, never the
    repository root) Python puts first on sys.path, so PYTHONSAFEPATH must be unset here.
    """
    out = tmp_path / "smoke"
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "PYTHONSAFEPATH": ""}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(SUITE), "--smoke", "--check", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["profile"] == "smoke" and results["errors"] == []
    sweeps = report.sweep_points(results["pytest"])
    assert {p["mode"] for p in sweeps} == {"plaintext", "secagg", "secagg+"}
    assert {b["status"] for b in results["budgets"]} == {"skipped"}
    text = (out / "report.md").read_text()
    assert "## Cost against n and d, per mode" in text and "## Machine" in text
    assert {"cost_vs_n.png", "cost_vs_d.png", "phases.png"} <= {
        p.name for p in (out / "plots").iterdir()
    }
    assert elapsed < 120, f"smoke run took {elapsed:.0f} s"


# --- the runner picks up any benchmark file and survives a broken one ---------------------------

PICKED_UP = """
def test_new_mode(benchmark):
    benchmark.extra_info["sweep"] = {"mode": "newmode", "n": 3, "d": 10}
    benchmark(sum, range(100))
"""
BROKEN = """
def test_broken(benchmark):
    benchmark(lambda: 1 / 0)
"""


def test_the_runner_picks_up_every_bench_file_and_records_a_broken_one(tmp_path: Path) -> None:
    from harness.runner import Run, SuiteConfig

    bench_dir = tmp_path / "benchmarks"
    bench_dir.mkdir()
    (bench_dir / "test_bench_newmode.py").write_text(PICKED_UP)
    (bench_dir / "test_bench_broken.py").write_text(BROKEN)
    (bench_dir / "not_a_bench.py").write_text("raise SystemExit('must not be collected')\n")
    lines: list[str] = []
    config = SuiteConfig(
        profile="quick",
        bench_dir=bench_dir,
        out_dir=tmp_path / "out",
        peers=False,
        appliance=False,
        log=lines.append,
    )
    results = Run(config).run()
    keys = metrics.collect(results)
    assert "test_bench_newmode.py::test_new_mode" in keys
    assert [p["mode"] for p in report.sweep_points(results["pytest"])] == ["newmode"]
    assert [e["step"] for e in results["errors"]] == ["pytest"]
    assert "exit code 1" in results["errors"][0]["error"]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["profile"] == "quick"
