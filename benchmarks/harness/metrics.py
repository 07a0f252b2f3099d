"""One flat ``{key: number}`` view of everything a bench run measured, for budgets and reports.

Keys (values are seconds unless the field name says otherwise):
  ``<file>::<test>[<id>]``            pytest-benchmark's best (min) time of a benchmark
  ``<file>::<test>[<id>]#<field>``    a numeric ``extra_info`` field of that benchmark
  ``appliance:round:<mode>:n<N>:d<D>`` median warm round over the appliance on loopback
                                       (best round for results that predate the median)
  ``appliance:rss:<mode>:n<N>:d<D>``   the appliance process's peak RSS in MiB over one round
  ``<peer>:<mode>:<workload>:<field>`` a peer script's numeric field (``flower``, ``robust``);
                                       a halted round gives only ``...:halted = 1``

``paired_runs`` gives the same keys per alternating pass (issue 20): one ``{key: value}`` per
pass in which the values were measured together, for the budgets' confidence intervals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

PEER_FIELDS = (
    "round_seconds",
    "server_seconds",
    "client_seconds_per_client",
    "bytes_up_per_client",
    "bytes_down_per_client",
)


def benchmark_key(fullname: str) -> str:
    """``benchmarks/test_x.py::test_y[a]`` -> ``test_x.py::test_y[a]`` (independent of the cwd)."""
    path, sep, test = fullname.partition("::")
    return path.rsplit("/", 1)[-1] + sep + test if sep else fullname


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def pytest_metrics(pytest_json: Mapping[str, Any] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for bench in (pytest_json or {}).get("benchmarks", []):
        key = benchmark_key(str(bench["fullname"]))
        out[key] = float(bench["stats"]["min"])
        for field, value in (bench.get("extra_info") or {}).items():
            number = _number(value)
            if number is not None:
                out[f"{key}#{field}"] = number
    return out


def appliance_metrics(
    rounds: Iterable[Mapping[str, Any]], rss: Iterable[Mapping[str, Any]]
) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in rounds:
        key = f"appliance:round:{r['mode']}:n{r['clients']}:d{r['d']}"
        out[key] = float(r.get("median", r["best"]))  # medians: one slow round moves nothing
    for r in rss:
        out[f"appliance:rss:{r['mode']}:n{r['clients']}:d{r['d']}"] = float(r["peak_rss_mib"])
    return out


def peer_metrics(peer: str, results: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Flatten a peer script's ``results`` rows; a halted round keeps no timing (nothing summed)."""
    out: dict[str, float] = {}
    for r in results:
        if not isinstance(r, Mapping):
            continue  # a malformed peer row is reported by the runner, not a crash here
        name = r.get("workload") or r.get("name")
        if name is None:
            continue
        prefix = f"{peer}:{r.get('mode', 'run')}:{name}"
        if r.get("outcome", "completed") != "completed":
            out[f"{prefix}:halted"] = 1.0
            continue
        for field, value in r.items():
            number = _number(value)
            if number is not None and field not in ("n", "d", "k", "t", "dropped", "dropout"):
                out[f"{prefix}:{field}"] = number
    return out


def collect(results: Mapping[str, Any]) -> dict[str, float]:
    """All metrics of a merged results document (see :mod:`.runner` for its shape)."""
    metrics = pytest_metrics(results.get("pytest"))
    appliance = results.get("appliance") or {}
    metrics.update(appliance_metrics(appliance.get("round", []), appliance.get("rss", [])))
    for peer, doc in (results.get("peers") or {}).items():
        metrics.update(peer_metrics(peer, (doc or {}).get("results", [])))
    return metrics


def paired_runs(results: Mapping[str, Any]) -> list[dict[str, float]]:
    """Values measured together, one dict per pass, for the budgets' paired intervals.

    Two sources alternate by construction: the runner's paired pytest passes (``results
    ["paired"]["passes"]``, each a pytest-benchmark document of the budgeted benchmarks, their
    order reversed every other pass) and each ``bench_appliance.py round`` run, whose modes
    alternate ``--repeat`` times (warm round i of one mode is paired with warm round i of the
    other mode of the same run, same n and d).
    """
    runs: list[dict[str, float]] = []
    for doc in (results.get("paired") or {}).get("passes", []):
        values = pytest_metrics(doc if isinstance(doc, Mapping) else None)
        if values:
            runs.append(values)
    by_shape: dict[tuple[Any, Any], list[Mapping[str, Any]]] = {}
    for r in (results.get("appliance") or {}).get("round", []):
        if isinstance(r, Mapping) and isinstance(r.get("round_seconds"), list):
            by_shape.setdefault((r.get("clients"), r.get("d")), []).append(r)
    for (clients, d), rows in by_shape.items():
        if len(rows) < 2:
            continue
        for i in range(min(len(r["round_seconds"]) for r in rows)):
            run = {}
            for r in rows:
                number = _number(r["round_seconds"][i])
                if number is not None:
                    run[f"appliance:round:{r['mode']}:n{clients}:d{d}"] = number
            runs.append(run)
    return runs
