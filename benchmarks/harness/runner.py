"""Runs one bench profile: pytest-benchmark over benchmarks/, the appliance, the peers; merges JSON.

Every measurement runs in a child process (its own interpreter, so one crashing benchmark or a
peer's Ray cluster cannot take the command down); each step's failure is recorded in the
results' ``errors`` and the run goes on. The merged document (``results.json``)::

    {"schema": 1, "profile", "started", "finished", "command", "machine",
     "pytest": <pytest-benchmark JSON>, "paired": {"passes": [<pytest JSON>...], "load": [...]},
     "appliance": {"round": [...], "rss": [...]},
     "peers": {"flower": {...}, "robust": {...}}, "errors": [...],
     "metrics": {...}, "budgets": [...]}
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import budgets, machine

PROFILES = ("smoke", "quick", "full")
PEER_VENV = ".venv-peers"
#: Makes ``PEER_VENV`` from benchmarks/peers/lock.txt (idempotent; see benchmarks/peers/README.md).
PEER_ENV_SCRIPT = "peers_env.sh"

#: pytest-benchmark options per profile (smoke runs one round: it proves execution, not speed).
PYTEST_OPTIONS = {
    "smoke": ["--benchmark-disable-gc", "--benchmark-min-rounds=1", "--benchmark-max-time=0"],
    "quick": ["--benchmark-min-rounds=3", "--benchmark-max-time=0.2", "--benchmark-disable-gc"],
    "full": ["--benchmark-min-rounds=5", "--benchmark-max-time=1.0", "--benchmark-disable-gc"],
}
#: Smoke measures only these (tiny sizes); every other benchmark file is collected (imported).
SMOKE_FILES = ("test_bench_modes.py", "test_bench_peer_workloads.py")
#: bench_appliance.py runs per profile: (what, clients, dimension, modes, extra arguments).
BOTH = ("plaintext", "secagg+")
#: The loopback budget's round: one process per client (as on their own machines; threads
#: would share the appliance's GIL), the modes alternating three times, medians of 9 rounds.
CLIENT_PROCESSES = ("--client-processes", "--rounds", "4", "--repeat", "3")
APPLIANCE_RUNS: dict[str, list[tuple[str, list[int], int, tuple[str, ...], tuple[str, ...]]]] = {
    "smoke": [],
    # Quick: the budgets' shapes only (100 client threads take minutes: secagg+ alone there).
    "quick": [
        ("round", [10], 1_000_000, BOTH, CLIENT_PROCESSES),
        ("rss", [10, 100], 1_000_000, ("secagg+",), ()),
    ],
    "full": [
        ("round", [10, 50], 100_000, BOTH, ()),
        ("round", [10], 1_000_000, BOTH, CLIENT_PROCESSES),
        ("round", [50], 1_000_000, BOTH, ()),
        ("rss", [10, 50, 100], 1_000_000, BOTH, ()),
    ],
}
#: Extra pytest passes over the budgeted benchmark pairs only (issue 20), the order of each pair
#: reversed every other pass: 6 pairs (quick) is the fewest that give a 95 % signed-rank
#: interval; full takes 9. The main pass is not one of them (there a pair's two benchmarks may
#: run minutes apart).
PAIRED_PASSES = {"smoke": 0, "quick": 6, "full": 9}
#: bench_floors_issue20.py per profile (not in smoke: CKKS set-up is seconds, not a smoke test).
FLOORS_SCRIPT_ARGS = {
    "smoke": [],
    "quick": ["--n", "20", "--cts", "10", "--reps", "9"],
    "full": ["--n", "100", "20", "--reps", "15"],
}
PEER_ROUNDS = {"smoke": 2, "quick": 2, "full": 3}
TIMEOUTS = {"smoke": 300, "quick": 1200, "full": 5400}


@dataclasses.dataclass
class SuiteConfig:
    profile: str
    bench_dir: Path
    out_dir: Path
    peers: bool
    appliance: bool
    select: str | None = None
    python: str = sys.executable
    log: Callable[[str], None] = print


class Run:
    """One profile's measurements, written into ``out_dir`` as they complete."""

    def __init__(self, config: SuiteConfig) -> None:
        if config.profile not in PROFILES:
            raise ValueError(f"unknown profile {config.profile!r}")
        # Children run in the checkout's root: every path handed to them must be absolute.
        config.out_dir = config.out_dir.resolve()
        self.c = config
        self.root = config.bench_dir.parent
        self.errors: list[dict[str, str]] = []
        self.not_run: list[dict[str, str]] = []
        self.c.out_dir.mkdir(parents=True, exist_ok=True)

    # -- helpers -----------------------------------------------------------------------------

    def _run(self, step: str, argv: list[str], timeout: float, **env: str) -> bool:
        """Run a child with its output in ``<step>.log``; record a failure, never raise.

        Every child gets ``PYTHONSAFEPATH=1``: no script's folder or working directory goes first
        on its ``sys.path``, so the checkout's folders never shadow installed packages.
        """
        log_path = self.c.out_dir / f"{step}.log"
        self.c.log(f"[{step}] {' '.join(argv[1:])}")
        t0 = time.perf_counter()
        try:
            with log_path.open("w") as log:
                proc = subprocess.run(
                    argv,
                    cwd=self.root,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    env={**os.environ, "PYTHONSAFEPATH": "1", **env},
                    check=False,
                )
        except subprocess.TimeoutExpired:
            self._error(step, f"timed out after {timeout:.0f} s (log: {log_path.name})")
            return False
        except OSError as error:
            self._error(step, f"could not start: {error}")
            return False
        self.c.log(f"[{step}] exit {proc.returncode} after {time.perf_counter() - t0:.0f} s")
        if proc.returncode != 0:
            self._error(
                step, f"exit code {proc.returncode} (log: {log_path.name}): {_tail(log_path)}"
            )
            return False
        return True

    def _not_run(self, step: str, why: str) -> None:
        self.not_run.append({"step": step, "why": why})
        self.c.log(f"[{step}] not run: {why}")

    def _error(self, step: str, message: str) -> None:
        self.errors.append({"step": step, "error": message})
        self.c.log(f"[{step}] {message}")

    def _read_json(self, path: Path) -> Any:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    # -- steps -------------------------------------------------------------------------------

    def pytest_benchmarks(self) -> dict[str, Any] | None:
        files = sorted(self.c.bench_dir.glob("test_bench_*.py"))
        if not files:
            self._error("pytest", f"no test_bench_*.py in {self.c.bench_dir}")
            return None
        env = {"SEALAGG_BENCH_PROFILE": self.c.profile}
        # -P: the interpreter's own pytest, with nothing of the working directory on sys.path.
        base = [self.c.python, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        if self.c.profile == "smoke":
            # Prove every benchmark file still imports and collects; measure only the tiny ones.
            self._run("collect", [*base, "--collect-only", *map(str, files)], 300, **env)
            files = [f for f in files if f.name in SMOKE_FILES]
        out = self.c.out_dir / "pytest.json"
        argv = [
            *base,
            *map(str, files),
            "--benchmark-only",
            f"--benchmark-json={out}",
            *PYTEST_OPTIONS[self.c.profile],
        ]
        if self.c.select:
            argv += ["-k", self.c.select]
        self._run("pytest", argv, TIMEOUTS[self.c.profile], **env)
        doc = self._read_json(out)
        if doc is not None:
            for bench in doc.get("benchmarks", []):
                bench["stats"].pop("data", None)  # raw samples: large, not reported
        return doc

    def budget_pairs(self, measured: dict[str, float]) -> list[tuple[str, str]]:
        """Node ids of the budgets (this profile) whose metric and baseline are both benchmarks
        that the main pass measured: the pairs the paired passes alternate."""
        try:
            spec = budgets.load(self.c.bench_dir / "budgets.toml")
        except (OSError, budgets.BudgetFileError):
            return []
        pairs: list[tuple[str, str]] = []
        for b in spec.budgets:
            keys = [k.partition("#")[0] for k in (b.metric, b.baseline)]
            if self.c.profile not in b.profiles or not all("::" in k for k in keys):
                continue
            if not all(k in measured for k in keys) or keys[0] == keys[1]:
                continue
            ids = (str(self.c.bench_dir / keys[0]), str(self.c.bench_dir / keys[1]))
            if ids not in pairs:
                pairs.append(ids)
        return pairs

    def paired_passes(self, main: dict[str, Any] | None) -> dict[str, Any]:
        """Re-measure each budgeted benchmark pair in alternating passes (issue 20).

        Each pass runs only the pairs' benchmarks, every pair adjacent, metric first on even
        passes and baseline first on odd ones: drift in the machine's load then hits both
        figures of a pair alike, and the budget's interval comes from these pairs. The load
        average is recorded before every pass.
        """
        from harness.metrics import pytest_metrics

        passes: list[Any] = []
        load: list[list[float] | None] = []
        pairs = self.budget_pairs(pytest_metrics(main))
        count = PAIRED_PASSES[self.c.profile] if pairs else 0
        env = {"SEALAGG_BENCH_PROFILE": self.c.profile}
        base = [self.c.python, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        for i in range(count):
            order = [node for pair in pairs for node in (pair[::-1] if i % 2 else pair)]
            out = self.c.out_dir / f"paired-{i + 1}.json"
            load.append(machine.load_average())
            argv = [*base, *order, "--benchmark-only", f"--benchmark-json={out}"]
            argv += PYTEST_OPTIONS[self.c.profile]
            self._run(f"paired-{i + 1}", argv, TIMEOUTS[self.c.profile], **env)
            doc = self._read_json(out)
            if doc is not None:
                for bench in doc.get("benchmarks", []):
                    bench["stats"].pop("data", None)
                passes.append(doc)
        return {"passes": passes, "load": load, "pairs": len(pairs)}

    def floors_script(self) -> dict[str, Any] | None:
        """``bench_floors_issue20.py`` (another engineer's, reused as is): the weighted mean
        against a read-only gemv and the CKKS add against TenSEAL's, paired repetitions."""
        script = self.c.bench_dir / "bench_floors_issue20.py"
        if not script.exists():
            return None
        out = self.c.out_dir / "floors-issue20.json"
        argv = [self.c.python, "-P", str(script), "all", "--json", str(out)]
        argv += FLOORS_SCRIPT_ARGS[self.c.profile]
        self._run("floors-issue20", argv, TIMEOUTS[self.c.profile], NUMBA_NUM_THREADS="1")
        doc = self._read_json(out)
        return doc if isinstance(doc, dict) else None

    def appliance_runs(self) -> dict[str, list[dict[str, Any]]]:
        script = self.c.bench_dir / "bench_appliance.py"
        merged: dict[str, list[dict[str, Any]]] = {"round": [], "rss": []}
        for what, clients, d, modes, extra in APPLIANCE_RUNS[self.c.profile]:
            step = f"appliance-{what}-d{d}-n{'-'.join(map(str, clients))}"
            out = self.c.out_dir / f"{step}.json"
            argv = [self.c.python, str(script), what, "--clients", *map(str, clients)]
            argv += ["--dimension", str(d), "--modes", *modes, "--json", str(out), *extra]
            # One numba thread per process: eleven processes share this machine's cores.
            if self._run(step, argv, TIMEOUTS[self.c.profile], NUMBA_NUM_THREADS="1"):
                merged[what].extend(self._read_json(out) or [])
        return merged

    def peer_python(self) -> Path | None:
        """The benchmark-only venv's interpreter (``.venv-peers``), made or refreshed first.

        ``benchmarks/peers/peers_env.sh`` installs exactly ``benchmarks/peers/lock.txt`` (flwr,
        torch 2.13.0 CPU, byzfl; hashes required) and returns at once when its stamp says the
        venv matches the lock. Downloads happen there, at set-up, never while measuring.
        """
        python = self.root / PEER_VENV / "bin" / "python"
        script = self.c.bench_dir / "peers" / PEER_ENV_SCRIPT
        if not script.exists():
            self._error("peers-env", f"{script} not found")
            return None
        base = shutil.which("python3.11") or sys.executable
        if not self._run("peers-env", ["bash", str(script)], 3600, PYTHON=base):
            return None
        return python

    def peers(self) -> dict[str, Any]:
        python = self.peer_python()
        if python is None:
            return {}
        table = tomllib.loads((self.c.bench_dir / "peers" / "workloads.toml").read_text())
        names = [w["name"] for w in table["workload"] if self.c.profile in w["profiles"]]
        flower: dict[str, Any] = {"results": [], "errors": []}
        for name in names:
            out = self.c.out_dir / f"flower-{name}.json"
            argv = [str(python), str(self.c.bench_dir / "peers" / "flower_secagg.py")]
            argv += ["--workload", name, "--rounds", str(PEER_ROUNDS[self.c.profile])]
            argv += ["--json", str(out)]
            self._run(f"flower-{name}", argv, 900)
            doc = self._read_json(out)
            if isinstance(doc, dict) and isinstance(doc.get("results"), list):
                flower["results"] += [r for r in doc["results"] if isinstance(r, dict)]
                flower["errors"] += doc.get("errors", [])
                flower.setdefault("engine", doc.get("engine"))
                flower.setdefault("versions", doc.get("versions"))
        for e in flower["errors"]:
            self._error(f"flower-{e.get('workload')}", f"{e.get('mode')}: {e.get('error')}")
        found: dict[str, Any] = {"flower": flower}
        robust = self.robust_peers(python)
        if robust is not None:
            found["robust"] = robust
        return found

    def robust_peers(self, python: Path) -> dict[str, Any] | None:
        """Flower's / ByzFL's Krum, median, trimmed mean: ``benchmarks/peers/robust_peers.py``.

        It prints one JSON object per line and needs flwr, torch and byzfl, all in the locked
        peer venv (``python``, from :meth:`peer_python`); ``$SEALAGG_ROBUST_PEERS_PYTHON``, when
        set, overrides that interpreter. The script's own ``--probe`` (its imports, nothing
        measured) decides first: an interpreter that cannot run it is reported as not run,
        naming why, rather than as a failed step.
        """
        script = self.c.bench_dir / "peers" / "robust_peers.py"
        if not script.exists():
            return None
        interpreter = os.environ.get("SEALAGG_ROBUST_PEERS_PYTHON") or str(python)
        if not _probe(interpreter, str(script), "--probe"):
            # The budgets that need these rows fail as unmeasured in the profiles that list
            # them (full), so nothing passes silently.
            self._not_run(
                "robust-peers",
                f"{interpreter} cannot import byzfl, flwr and torch (run "
                f"benchmarks/peers/{PEER_ENV_SCRIPT}, or set SEALAGG_ROBUST_PEERS_PYTHON to a "
                "venv that has them; see benchmarks/peers/README.md)",
            )
            return None
        # Quick measures n=100 too (once, about a minute and a half): the budgets' four ratios
        # need both sizes, and the baseline kernels (test_bench_robust.py) run both anyway.
        clients = {"smoke": ["20"], "quick": ["20", "100"], "full": ["20", "100"]}[self.c.profile]
        repeat = "1" if self.c.profile != "full" else "2"
        argv = [interpreter, str(script), "--clients", *clients, "--repeat", repeat]
        if not self._run("robust-peers", argv, 1800, OPENBLAS_NUM_THREADS="1"):
            return None
        rows: list[dict[str, Any]] = []
        versions: dict[str, Any] = {}
        for line in (self.c.out_dir / "robust-peers.log").read_text().splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if not isinstance(doc, dict):
                continue
            if "n" in doc and "d" in doc:
                for key, value in doc.items():
                    if key not in ("n", "d", "f", "input"):
                        rows.append({"name": key, "mode": f"n{doc['n']}", "seconds": value})
            elif "precision" not in doc:
                versions.update(doc)
        return {"results": rows, "versions": versions}

    def run(self) -> dict[str, Any]:
        started = _now()
        results: dict[str, Any] = {
            "schema": 1,
            "profile": self.c.profile,
            "started": started,
            "command": " ".join(["./run", "bench", *sys.argv[1:]]),
            "machine": machine.describe(self.root),
        }
        results["pytest"] = self.pytest_benchmarks()
        results["paired"] = self.paired_passes(results["pytest"])
        if self.c.profile != "smoke" and not self.c.select:
            results["floors_script"] = self.floors_script()
        results["appliance"] = self.appliance_runs() if self.c.appliance else {}
        results["peers"] = self.peers() if self.c.peers else {}
        results["machine"]["load_average_end"] = machine.load_average()
        results["finished"] = _now()
        results["errors"] = self.errors
        results["not_run"] = self.not_run
        # The raw document first: a failure while reporting must not lose the measurements.
        (self.c.out_dir / "results.json").write_text(json.dumps(results, indent=1))
        return results


def _probe(interpreter: str, *argv: str) -> bool:
    """Whether ``interpreter argv...`` exits 0 (a probe, quiet: its output is not a log)."""
    try:
        proc = subprocess.run(
            [interpreter, *argv],
            capture_output=True,
            timeout=300,
            env={**os.environ, "PYTHONSAFEPATH": "1"},
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])[-400:]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
