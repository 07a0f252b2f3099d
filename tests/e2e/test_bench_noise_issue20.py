"""Issue 20, "the benchmark suite, made fair": budgets judged on a confidence interval of
alternating paired runs (never flipped by noise), the machine detected from /proc/cpuinfo, and a
quick run without "step failed" lines for peers that are simply not installed.

Expectations are computed independently of the harness: the signed-rank null distribution by
enumerating all 2^n sign patterns, critical values against the published Wilcoxon table, Walsh
averages with itertools. ``benchmarks/`` is on pytest's pythonpath (``harness``, ``suite``)."""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
import textwrap
from pathlib import Path

import pytest
from harness import budgets, intervals, machine, metrics, report
from harness.runner import Run, SuiteConfig
from suite import app
from typer.testing import CliRunner

runner = CliRunner()


def brute_cdf(n: int) -> list[float]:
    """P(T+ <= w): every one of the 2^n sign patterns of ranks 1..n, counted."""
    total = n * (n + 1) // 2
    counts = [0] * (total + 1)
    for signs in itertools.product((0, 1), repeat=n):
        counts[sum(rank for rank, s in zip(range(1, n + 1), signs, strict=True) if s)] += 1
    return list(itertools.accumulate(c / 2**n for c in counts))


def brute_interval(logs: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(estimate, low, high) on the log scale, from first principles."""
    walsh = sorted((a + b) / 2 for a, b in itertools.combinations_with_replacement(logs, 2))
    cdf = brute_cdf(len(logs))
    c = max(k for k in range(len(cdf) + 1) if k == 0 or cdf[k - 1] <= (1 - confidence) / 2)
    m = len(walsh)
    centre = walsh[m // 2] if m % 2 else (walsh[m // 2 - 1] + walsh[m // 2]) / 2
    return centre, walsh[c - 1], walsh[m - c]


# --- the interval --------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 4, 6, 9, 12])
def test_signed_rank_distribution_is_exact(n: int) -> None:
    assert intervals.signed_rank_cdf(n) == pytest.approx(brute_cdf(n), abs=1e-15)


@pytest.mark.parametrize(
    # Two-sided alpha = 0.05 critical values of Wilcoxon's T (reject when T <= T_crit), from the
    # published table: the interval cuts at c = T_crit + 1; n = 5 has none at this level.
    ("n", "t_crit"),
    [(6, 0), (7, 2), (8, 3), (9, 5), (10, 8), (12, 13), (15, 25)],
)
def test_critical_rank_matches_the_wilcoxon_table(n: int, t_crit: int) -> None:
    assert intervals.critical_rank(n) == t_crit + 1


def test_five_pairs_cannot_give_a_95_percent_interval() -> None:
    assert intervals.critical_rank(5) == 0  # the smallest two-sided alpha is 2/32 > 0.05
    assert intervals.ratio_interval([(1.2, 1.0)] * 5) is None


def test_six_pairs_interval_is_the_range_with_exact_coverage() -> None:
    logs = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    pairs = [(2.0 * math.exp(x), 2.0) for x in logs]
    iv = intervals.ratio_interval(pairs)
    assert iv is not None and iv.pairs == 6
    # c = 1: the extreme Walsh averages, i.e. the smallest and largest log ratio; the centre of
    # a symmetric sample is its mean; coverage 1 - 2/64.
    assert iv.low == pytest.approx(math.exp(0.1))
    assert iv.high == pytest.approx(math.exp(0.6))
    assert iv.estimate == pytest.approx(math.exp(0.35))
    assert iv.coverage == pytest.approx(1 - 2 / 64)


def test_interval_on_skewed_pairs_matches_first_principles() -> None:
    metric = [1.21, 1.30, 1.18, 2.90, 1.25, 1.22, 1.27, 1.19, 1.24, 1.33, 1.20, 1.26]
    base = [1.00, 1.02, 0.99, 1.01, 1.03, 0.98, 1.00, 1.01, 0.97, 1.05, 1.00, 1.02]
    iv = intervals.ratio_interval(list(zip(metric, base, strict=True)))
    centre, low, high = brute_interval([math.log(m / b) for m, b in zip(metric, base, strict=True)])
    assert iv is not None
    assert (math.log(iv.estimate), math.log(iv.low), math.log(iv.high)) == pytest.approx(
        (centre, low, high)
    )
    # One 2.9 s outlier pass moves neither end far: the interval stays below 1.3.
    assert iv.high < 1.3


def test_unusable_pairs_are_dropped_not_crashed_on() -> None:
    good = [(1.1 + i / 100, 1.0) for i in range(6)]
    bad = [(0.0, 1.0), (1.0, 0.0), (math.nan, 1.0), (math.inf, 1.0)]
    iv = intervals.ratio_interval(good + bad)
    assert iv is not None and iv.pairs == 6


# --- verdicts ------------------------------------------------------------------------------------


def _budget(max_ratio: float | None = 1.5, min_ratio: float | None = None) -> budgets.Budget:
    return budgets.Budget("b", "w", "m", "x", max_ratio, min_ratio, ("quick",))


def _runs(ratios: list[float]) -> list[dict[str, float]]:
    return [{"m": 0.2 * r, "x": 0.2} for r in ratios]


POINT = {"m": 0.3, "x": 0.2}  # 1.5x exactly: the single-figure ratio, ignored once pairs exist


@pytest.mark.parametrize(
    ("ratios", "status"),
    [
        ([1.20, 1.22, 1.25, 1.21, 1.24, 1.23], budgets.Status.ok),  # whole interval <= 1.5
        ([1.80, 1.85, 1.90, 1.82, 1.88, 1.86], budgets.Status.exceeded),  # whole interval > 1.5
        ([1.30, 1.70, 1.40, 1.60, 1.45, 1.55], budgets.Status.inconclusive),  # straddles 1.5
        ([1.20, 1.21, 1.22, 1.23, 1.24], budgets.Status.inconclusive),  # 5 pairs: no interval
    ],
)
def test_a_max_budget_is_judged_on_its_interval(
    ratios: list[float], status: budgets.Status
) -> None:
    verdict = budgets.check_one(_budget(), POINT, "quick", _runs(ratios))
    assert verdict.status is status
    assert verdict.failed is (status is budgets.Status.exceeded)
    if verdict.interval is not None:
        centre, low, high = brute_interval([math.log(r) for r in ratios])
        assert verdict.ratio == pytest.approx(math.exp(centre))
        assert f"[{math.exp(low):.3g}, {math.exp(high):.3g}] from {len(ratios)} pairs" in (
            verdict.detail
        )
    else:
        assert "5 pairs: too few for a 95% interval" in verdict.detail


def test_a_min_budget_needs_its_whole_interval_above_the_limit() -> None:
    budget = _budget(max_ratio=None, min_ratio=9.0)
    fast = budgets.check_one(budget, POINT, "quick", _runs([10, 11, 12, 10.5, 11.5, 12.5]))
    slow = budgets.check_one(budget, POINT, "quick", _runs([5, 6, 7, 5.5, 6.5, 7.5]))
    torn = budgets.check_one(budget, POINT, "quick", _runs([8, 10, 8.5, 9.5, 7.5, 10.5]))
    assert [fast.status, slow.status, torn.status] == [
        budgets.Status.ok,
        budgets.Status.exceeded,
        budgets.Status.inconclusive,
    ]


def test_runs_missing_one_side_do_not_pair() -> None:
    runs = [{"m": 0.3}, {"x": 0.2}, {"m": 0.3, "other": 1.0}]
    verdict = budgets.check_one(_budget(), POINT, "quick", runs)
    assert verdict.interval is None and verdict.status is budgets.Status.ok
    assert "single figures, no interval" in verdict.detail


def test_appliance_rounds_pair_by_index_within_one_shape() -> None:
    plain = [0.50, 0.52, 0.49, 0.51, 0.50, 0.53]
    secure = [0.70, 0.74, 0.69, 0.73, 0.71, 0.75]
    results = {
        "appliance": {
            "round": [
                {"mode": "plaintext", "clients": 10, "d": 1000, "round_seconds": plain},
                {"mode": "secagg+", "clients": 10, "d": 1000, "round_seconds": secure},
                {"mode": "secagg+", "clients": 50, "d": 1000, "round_seconds": [9.0]},
            ]
        },
        "paired": {
            "passes": [
                {"benchmarks": [{"fullname": "b/t.py::a", "stats": {"min": 0.1}}]},
                {"benchmarks": []},
            ]
        },
    }
    runs = metrics.paired_runs(results)
    assert runs[0] == {"t.py::a": 0.1}
    assert runs[1:] == [
        {
            "appliance:round:plaintext:n10:d1000": p,
            "appliance:round:secagg+:n10:d1000": s,
        }
        for p, s in zip(plain, secure, strict=True)
    ]
    budget = budgets.Budget(
        "loop",
        "w",
        "appliance:round:secagg+:n10:d1000",
        "appliance:round:plaintext:n10:d1000",
        1.5,
        None,
        ("quick",),
    )
    verdict = budgets.check_one(budget, {budget.metric: 0.7, budget.baseline: 0.5}, "quick", runs)
    assert verdict.status is budgets.Status.ok and verdict.interval is not None
    assert verdict.interval.pairs == 6


# --- the command: inconclusive is reported, not failed ---------------------------------------

LOOPBACK = """
version = 1

[[budget]]
id = "loopback"
what = "secagg+ vs plaintext over the appliance"
metric = "appliance:round:secagg+:n10:d1000000"
baseline = "appliance:round:plaintext:n10:d1000000"
max_ratio = 1.5
profiles = ["quick", "full"]
"""


def _results_with_rounds(secure: list[float]) -> dict:
    plain = [0.50] * len(secure)
    rows = [
        {"mode": mode, "clients": 10, "d": 1_000_000, "round_seconds": times,
         "median": sorted(times)[len(times) // 2], "best": min(times)}
        for mode, times in (("plaintext", plain), ("secagg+", secure))
    ]  # fmt: skip
    return {
        "schema": 1,
        "profile": "quick",
        "machine": {"load_average_start": [3.5, 2.0, 1.0]},
        "pytest": {"benchmarks": []},
        "paired": {"passes": [], "load": [[3.25, 2.0, 1.0], [4.5, 2.0, 1.0]]},
        "appliance": {"round": rows, "rss": []},
        "peers": {},
        "errors": [],
    }


def _check(tmp_path: Path, secure: list[float]) -> tuple[int, str, dict, str]:
    bench_dir = tmp_path / "benchmarks"
    bench_dir.mkdir()
    (bench_dir / "budgets.toml").write_text(LOOPBACK)
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_results_with_rounds(secure)))
    args = ["--results", str(results), "--benchmarks", str(bench_dir), "--check", "--no-plots"]
    out = runner.invoke(app, args)
    doc = json.loads(results.read_text())
    return out.exit_code, out.output, doc, (tmp_path / "report.md").read_text()


def test_check_says_inconclusive_noise_and_does_not_fail(tmp_path: Path) -> None:
    # Ratios 1.3 .. 1.7 around the 1.5 limit: the interval straddles it.
    code, output, doc, text = _check(tmp_path, [0.65, 0.85, 0.70, 0.80, 0.725, 0.775])
    assert code == 0, output
    assert "inconclusive (noise) loopback:" in output
    assert "budget inconclusive (noise): loopback:" in output
    assert "budget exceeded" not in output
    verdict = doc["budgets"][0]
    assert verdict["status"] == "inconclusive" and verdict["interval"]["pairs"] == 6
    assert verdict["interval"]["low"] == pytest.approx(1.3)
    assert verdict["interval"]["high"] == pytest.approx(1.7)
    assert "| ❔ inconclusive (noise) | `loopback` |" in text
    assert "0 of 1 met or skipped; 0 failed; 1 inconclusive (noise)" in text
    assert "[1.3, 1.7] (6 pairs)" in text
    assert "before each paired pass: 3.25, 4.50" in text  # the load average is recorded


def test_check_fails_when_the_whole_interval_is_over(tmp_path: Path) -> None:
    code, output, doc, _ = _check(tmp_path, [0.90, 0.92, 0.91, 0.95, 0.93, 0.94])
    assert code == 1
    assert "budget exceeded: loopback: 1.85x, 96.9% interval [1.8, 1.9] from 6 pairs" in output
    assert doc["budgets"][0]["status"] == "exceeded"


def test_check_passes_when_the_whole_interval_is_within(tmp_path: Path) -> None:
    code, output, doc, _ = _check(tmp_path, [0.60, 0.62, 0.61, 0.64, 0.63, 0.65])
    assert code == 0, output
    assert doc["budgets"][0]["status"] == "ok"
    assert "inconclusive" not in output


# --- the runner's paired passes, for real --------------------------------------------------------

PAIR_BENCH = """
import os
from pathlib import Path

def _note(name):
    with Path(os.environ["PAIR_ORDER_LOG"]).open("a") as log:
        log.write(name + "\\n")

def test_heavy(benchmark):
    _note("heavy")
    benchmark(sum, range(20000))

def test_light(benchmark):
    _note("light")
    benchmark(sum, range(10000))
"""
PAIR_BUDGET = """
version = 1

[[budget]]
id = "heavy-vs-light"
what = "twice the work"
metric = "test_bench_pair.py::test_heavy"
baseline = "test_bench_pair.py::test_light"
max_ratio = 50
profiles = ["quick"]
"""


def test_paired_passes_alternate_and_feed_the_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench_dir = tmp_path / "benchmarks"
    bench_dir.mkdir()
    (bench_dir / "test_bench_pair.py").write_text(PAIR_BENCH)
    (bench_dir / "budgets.toml").write_text(PAIR_BUDGET)
    order_log = tmp_path / "order.log"
    monkeypatch.setenv("PAIR_ORDER_LOG", str(order_log))
    config = SuiteConfig("quick", bench_dir, tmp_path / "out", peers=False, appliance=False)
    config.log = lambda line: None
    results = Run(config).run()
    assert results["errors"] == []
    paired = results["paired"]
    assert len(paired["passes"]) == 6 and len(paired["load"]) == 6 and paired["pairs"] == 1
    # Each test body runs once per pass (pytest-benchmark repeats only the benchmarked call).
    calls = order_log.read_text().split()
    main, passes = calls[:2], calls[2:]
    assert main == ["heavy", "light"]  # the main pass: file order
    assert passes == ["heavy", "light", "light", "heavy"] * 3  # then alternating per pass
    verdict = budgets.check(
        budgets.parse(PAIR_BUDGET).budgets,
        metrics.collect(results),
        "quick",
        metrics.paired_runs(results),
    )[0]
    assert verdict.interval is not None and verdict.interval.pairs == 6
    assert verdict.interval.low <= verdict.ratio <= verdict.interval.high


def test_uninstalled_robust_peers_are_not_run_not_a_failed_step(tmp_path: Path) -> None:
    bench_dir = tmp_path / "benchmarks"
    (bench_dir / "peers").mkdir(parents=True)
    (bench_dir / "peers" / "robust_peers.py").write_text("raise SystemExit(3)\n")
    lines: list[str] = []
    config = SuiteConfig("quick", bench_dir, tmp_path / "out", False, False, log=lines.append)
    run = Run(config)
    # The project's interpreter has neither byzfl nor flwr: a real probe, refused quietly.
    assert run.robust_peers(Path(sys.executable)) is None
    assert run.errors == []
    assert run.not_run[0]["step"] == "robust-peers"
    assert "cannot import byzfl, flwr and torch" in run.not_run[0]["why"]
    assert not (tmp_path / "out" / "robust-peers-probe.log").exists()
    text = report.render({"profile": "quick", "not_run": run.not_run})
    assert "## Not run in this run" in text and "`robust-peers`" in text
    assert "Steps that failed" not in text


# --- the machine, detected -----------------------------------------------------------------------

XEON = textwrap.dedent(
    """\
    processor\t: 0
    vendor_id\t: GenuineIntel
    cpu family\t: 6
    model\t\t: 143
    model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
    flags\t\t: fpu aes pclmulqdq avx2 avx512f avx512bw avx512vl sha_ni vaes vpclmulqdq hypervisor
    bogomips\t: 5399.99

    processor\t: 1
    vendor_id\t: GenuineIntel
    cpu family\t: 6
    model\t\t: 143
    model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
    flags\t\t: fpu sse2 aes
    """
)
OLD_AMD = textwrap.dedent(
    """\
    processor\t: 0
    vendor_id\t: AuthenticAMD
    cpu family\t: 23
    model\t\t: 49
    model name\t: AMD EPYC 7B12
    flags\t\t: fpu sse2 aes pclmulqdq avx2 sha_ni
    """
)


def test_cpuinfo_of_a_xeon_with_vaes_and_avx512() -> None:
    cpu = machine.parse_cpuinfo(XEON)
    assert cpu == {
        "cpu": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
        "cpu_vendor": "Intel",
        "cpu_family_model": "family 6 model 143",
        # In CPU_FLAGS order, from the first processor's line only.
        "cpu_flags": [
            "aes",
            "vaes",
            "pclmulqdq",
            "vpclmulqdq",
            "avx2",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "sha_ni",
            "hypervisor",
        ],
        "processors": 2,
    }


def test_cpuinfo_of_an_epyc_without_vaes_or_avx512() -> None:
    cpu = machine.parse_cpuinfo(OLD_AMD)
    assert cpu["cpu"] == "AMD EPYC 7B12" and cpu["cpu_vendor"] == "AMD"
    assert cpu["cpu_flags"] == ["aes", "pclmulqdq", "avx2", "sha_ni"]
    assert cpu["processors"] == 1


def test_cpuinfo_that_says_nothing_gives_unknown_not_an_error() -> None:
    for text in ("", "garbage without colons\n", "flags:\n"):
        cpu = machine.parse_cpuinfo(text)
        assert cpu["cpu"] == "unknown" and cpu["cpu_flags"] == []


def test_this_machine_is_described_from_what_it_reports() -> None:
    here = machine.describe(Path(__file__).resolve().parents[2])
    assert here["cores"] == os.cpu_count()
    assert here["kernel"] == os.uname().release
    if Path("/proc/cpuinfo").exists():
        expected = machine.parse_cpuinfo(Path("/proc/cpuinfo").read_text())
        assert here["cpu"] == expected["cpu"] and here["cpu_flags"] == expected["cpu_flags"]
    blas = here["blas"]
    assert blas is None or (isinstance(blas, str) and blas)


def test_report_machine_section_shows_vendor_flags_and_blas() -> None:
    section = "\n".join(
        report.machine_section(
            {**machine.parse_cpuinfo(XEON), "cores": 2, "usable_cores": 2, "blas": "openblas 0.3"}
        )
    )
    assert "never written by hand" in section
    assert (
        "- CPU: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz (Intel, family 6 model 143); "
        "flags aes, vaes, pclmulqdq, vpclmulqdq, avx2, avx512f" in section
    )
    assert "BLAS openblas 0.3" in section


# --- the smoke report's peer section -------------------------------------------------------------


def test_peer_section_without_flower_says_not_run_plainly() -> None:
    ours = {
        "fullname": "benchmarks/test_bench_peer_workloads.py::test_ours_one_process[smoke_n4_d1k]",
        "stats": {"min": 0.01, "median": 0.01, "rounds": 1},
        "extra_info": {"workload": "smoke_n4_d1k", "n": 4, "d": 1000, "outcome": "completed"},
    }
    text = "\n".join(report.peers_section({"pytest": {"benchmarks": [ours]}, "peers": {}}, []))
    assert "not run ()" not in text and "through not run" not in text
    assert "unmodified, not run in this run" in text
    with_flower = {
        "pytest": {"benchmarks": [ours]},
        "peers": {"flower": {"engine": "Ray", "versions": {"flwr": "1.42.0"}, "results": []}},
    }
    assert "through Ray (flwr 1.42.0);" in "\n".join(report.peers_section(with_flower, []))


# --- like for like with Flower -------------------------------------------------------------------

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_flowers_ring_neighbours_follow_its_num_shares_rule() -> None:
    # flwr 1.42: num_shares >> 1 on each side; an even k below n is raised to k + 1.
    assert [report.flower_neighbours(50, k) for k in (11, 26, 27, 50, 80)] == [10, 26, 26, 49, 49]
    assert report.flower_neighbours(10, 10) == 9


def test_only_the_appliances_own_graph_and_threshold_is_compared_end_to_end() -> None:
    from sealagg.crypto.params import choose_graph

    degree, threshold, _ = choose_graph(10, "secagg+", 0.1, 0.05)  # the config's defaults
    neighbours = 9 if degree is None else degree
    like = {"n": 10, "k": 10, "t": threshold, "dropout": 0.0}
    assert report.flower_neighbours(10, 10) == neighbours
    assert report.like_the_appliance(like)
    assert not report.like_the_appliance({**like, "t": threshold + 4})  # the old t=6
    assert not report.like_the_appliance({**like, "dropout": 0.3})
    assert not report.like_the_appliance({"n": 50, "k": 11, "t": 7, "dropout": 0.0})
    assert not report.like_the_appliance({"n": 10})


def test_every_flower_budget_is_engine_against_engine_on_a_matching_workload() -> None:
    import tomllib

    table = {w["name"]: w for w in tomllib.loads((BENCH / "peers" / "workloads.toml").read_text())[
        "workload"
    ]}  # fmt: skip
    flower_budgets = [
        b for b in budgets.load(BENCH / "budgets.toml").budgets if b.metric.startswith("flower:")
    ]
    assert flower_budgets
    for b in flower_budgets:
        # Flower's engine round over our appliance round, never over a one-process round.
        assert b.baseline.startswith("appliance:round:secagg+:"), b.id
        workload = table[b.metric.split(":")[2]]
        _, _, _, n, d = b.baseline.split(":")
        assert (f"n{workload['n']}", f"d{workload['d']}") == (n, d), b.id
        assert report.like_the_appliance(workload), b.id


def test_peer_table_gives_no_end_to_end_ratio_for_a_different_threshold() -> None:
    row = {"n": 10, "d": 1000, "k": 10, "dropout": 0.0, "outcome": "completed"}
    results = {
        "peers": {
            "flower": {
                "engine": "Ray",
                "results": [
                    {**row, "workload": "same", "mode": "secagg+", "t": 2, "round_seconds": 2.0},
                    {**row, "workload": "other", "mode": "secagg+", "t": 6, "round_seconds": 3.0},
                ],
            }
        },
        "appliance": {
            "round": [{"mode": "secagg+", "clients": 10, "d": 1000, "median": 0.5, "best": 0.4}]
        },
    }
    lines = report.peers_section(results, [])
    same = next(line for line in lines if line.startswith("| same |"))
    other = next(line for line in lines if line.startswith("| other |"))
    assert "| 2.00 s | - | - | 500.0 ms | 4.00x |" in same  # the appliance's median
    assert "| 3.00 s | - | - | - | - |" in other


# --- kernels against their physical floors -------------------------------------------------------


def _script_case(median: float, ratio: float, low: float, high: float) -> dict[str, float]:
    return {
        "wall_median_s": median,
        "wall_ratio_median": ratio,
        "wall_ratio_min": low,
        "wall_ratio_max": high,
    }


def test_each_kernel_is_shown_as_a_multiple_of_its_floor() -> None:
    from harness import floors

    kernel_key, floor_key = floors.FLOOR_PAIRS[0][1], floors.FLOOR_PAIRS[0][3]
    gcm = "test_bench_physical_floors.py::test_aes_gcm_seal"
    results = {
        "metrics": {kernel_key: 0.00068, floor_key: 0.00049, gcm: 0.0004},
        "floors_script": {
            "mean": [
                {
                    "n": 20,
                    "d": 1_000_000,
                    "results": {
                        "gemv floor": _script_case(0.0023, 1.0, 1.0, 1.0),
                        "after": _script_case(0.0042, 1.8, 1.39, 1.85),
                    },
                }
            ],
            "ckks": {"results": {"after": _script_case(0.0001, 1.12, 1.09, 1.13)}},  # no floor
        },
    }
    found = floors.rows(results)
    assert [r["kernel"] for r in found] == [
        floors.FLOOR_PAIRS[0][0],
        "weighted mean, n=20, d=1000000",
    ]
    assert found[0]["multiple"] == pytest.approx(0.00068 / 0.00049)
    assert (found[1]["multiple"], found[1]["low"], found[1]["high"]) == (1.8, 1.39, 1.85)
    assert floors.throughputs(results) == [
        ("AES-256-CTR keystream", pytest.approx(4e6 / 0.00049 / 1e9)),
        ("AES-256-GCM seal", pytest.approx(10.0)),
    ]
    text = "\n".join(report.floors_section(results))
    assert (
        f"| {floors.FLOOR_PAIRS[0][0]} | 680 µs | AES-256-CTR keystream, 4 MB | 490 µs | 1.39x |"
        in text
    )
    assert "| 4.2 ms | read-only float32 gemv (OpenBLAS) | 2.3 ms | 1.80x (1.39-1.85) |" in text
    assert "AES-256-GCM seal 10.0 GB/s" in text
    assert report.floors_section({"metrics": {}}) == []


def test_every_floor_pair_names_benchmarks_that_exist() -> None:
    """A renamed benchmark would silently drop its row: every key is a collected node id."""
    import subprocess

    from harness import floors

    keys = {k for _, kernel, _, floor in floors.FLOOR_PAIRS for k in (kernel, floor)}
    keys |= {key for _, key, _ in floors.THROUGHPUT}
    files = sorted({str(BENCH / key.partition("::")[0]) for key in keys})
    collected = subprocess.run(
        [sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only",
         *files],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "SEALAGG_BENCH_PROFILE": "quick"},
    )  # fmt: skip
    ids = {metrics.benchmark_key(line) for line in collected.stdout.splitlines() if "::" in line}
    assert keys <= ids, sorted(keys - ids)


STUB_FLOORS = """
import json, sys
args = sys.argv[1:]
out = args[args.index("--json") + 1]
json.dump({"argv": args, "mean": []}, open(out, "w"))
"""


def test_the_runner_runs_the_floors_script_with_the_profiles_arguments(tmp_path: Path) -> None:
    bench_dir = tmp_path / "benchmarks"
    bench_dir.mkdir()
    config = SuiteConfig("quick", bench_dir, tmp_path / "out", False, False, log=lambda _: None)
    assert Run(config).floors_script() is None  # no script: nothing run, nothing failed
    (bench_dir / "bench_floors_issue20.py").write_text(STUB_FLOORS)
    run = Run(config)
    doc = run.floors_script()
    assert run.errors == []
    assert doc is not None
    assert doc["argv"][0] == "all" and doc["argv"][-6:] == [
        "--n",
        "20",
        "--cts",
        "10",
        "--reps",
        "9",
    ]
