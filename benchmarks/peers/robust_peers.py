"""Flower's and ByzFL's robust aggregators on the inputs benchmarks/test_bench_robust.py uses.

Runs in the benchmark-only peer venv ``.venv-peers`` (flwr pins grpcio/protobuf versions that
conflict with ours), which ``./run bench`` creates from ``benchmarks/peers/lock.txt`` (flwr,
torch 2.13.0 CPU, byzfl) through ``benchmarks/peers/peers_env.sh``; by hand:

    benchmarks/peers/peers_env.sh
    OPENBLAS_NUM_THREADS=1 .venv-peers/bin/python -P benchmarks/peers/robust_peers.py \
        --clients 20 100 --repeat 2

``--probe`` only imports what the measurements need and exits 0 (the suite's check that an
interpreter, e.g. ``$SEALAGG_ROBUST_PEERS_PYTHON``, can run this script).

(``OPENBLAS_NUM_THREADS=1`` because multithreaded OpenBLAS collapses on a shared, loaded
machine: Flower's Gram-form Krum took 27.6 s at n=20 with default threads.)

Inputs are generated exactly like our benchmark (``default_rng(0).standard_normal((n, d),
dtype=float32)``, d = 1M, f = n // 5, trimmed-mean beta = 0.1); the checksum printed per
input lets the two runs be compared. Prints one JSON line per measurement (best of
``--repeat`` runs, seconds) and a precision check: near-identical full-weight vectors,
where the float32 Gram form of Flower's new Krum picks the wrong client.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from types import ModuleType

import numpy as np

D = 1_000_000


def inputs(n: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, D), dtype=np.float32)


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def flower_new_krum(x: np.ndarray, f: int) -> int:
    """Flower >= 1.22 (serverapp MultiKrum, num_nodes_to_select=1): Gram-form distances."""
    from flwr.app import ArrayRecord, RecordDict
    from flwr.serverapp.strategy.multikrum import select_multikrum

    contents = [RecordDict({"arrays": ArrayRecord([row])}) for row in x]
    chosen = select_multikrum(contents, num_malicious_nodes=f, num_nodes_to_select=1)[0]
    return next(i for i, c in enumerate(contents) if c is chosen)


def flower_old_krum(x: np.ndarray, f: int) -> np.ndarray:
    from flwr.server.strategy.aggregate import aggregate_krum

    return aggregate_krum([([row], 1) for row in x], num_malicious=f, to_keep=0)[0]


def flower_median(x: np.ndarray) -> np.ndarray:
    from flwr.server.strategy.aggregate import aggregate_median

    return aggregate_median([([row], 1) for row in x])[0]


def flower_trimmed(x: np.ndarray, beta: float) -> np.ndarray:
    from flwr.server.strategy.aggregate import aggregate_trimmed_avg

    return aggregate_trimmed_avg([([row], 1) for row in x], beta)[0]


def byzfl_aggregators() -> ModuleType:
    """ByzFL's ``byzfl.aggregators`` (Krum, Median, TrMean), without running byzfl/__init__.py.

    byzfl's package ``__init__`` imports its training benchmark, which imports torchvision; the
    only torchvision wheels for torch 2.13 on the package index link CUDA and cannot be imported
    beside the CPU torch, so the peer venv leaves torchvision out (benchmarks/peers/peers_env.sh).
    The aggregators need numpy, torch and scipy only: the package object is made from its spec
    (its ``__path__``, nothing executed) and the subpackage imported as usual, ByzFL's own code
    unmodified. Where ``byzfl`` imports whole (it already is in ``sys.modules``) that is used.
    """
    if "byzfl" not in sys.modules:
        spec = importlib.util.find_spec("byzfl")
        if spec is None:
            raise ModuleNotFoundError("No module named 'byzfl'", name="byzfl")
        sys.modules["byzfl"] = importlib.util.module_from_spec(spec)
    return importlib.import_module("byzfl.aggregators")


def byzfl_agg(name: str, x, f: int):
    byzfl = byzfl_aggregators()
    agg = {"krum": byzfl.Krum, "median": byzfl.Median, "trimmed_mean": byzfl.TrMean}[name]
    return agg(f=f)(x) if name != "median" else agg()(x)


def precision_check() -> dict:
    """Same construction as tests/kernels/test_robust.py::test_near_identical_full_weights..."""
    rng = np.random.default_rng(7)
    n, f, d = 9, 2, 50_000
    weights = rng.normal(0, 3.0, d).astype(np.float32)
    offsets = rng.normal(0, 1e-3, (n, d))
    offsets[4] = 0.0
    x = (weights.astype(np.float64) + offsets).astype(np.float32)
    out = {"truth": 4, "flower_new_krum": flower_new_krum(x, f)}
    old = flower_old_krum(x, f)
    out["flower_old_krum"] = int(np.argmin(np.abs(x - old).sum(axis=1)))
    chosen = byzfl_agg("krum", x, f)
    out["byzfl_krum_numpy"] = int(np.argmin(np.abs(x - chosen).sum(axis=1)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-old-krum-above", type=int, default=20)
    parser.add_argument("--probe", action="store_true", help="import everything, measure nothing")
    args = parser.parse_args()
    import flwr
    import torch
    from flwr.server.strategy.aggregate import aggregate_krum  # noqa: F401
    from flwr.serverapp.strategy.multikrum import select_multikrum  # noqa: F401

    byzfl_aggregators()
    if args.probe:
        return
    versions = {
        "flwr": flwr.__version__,
        "byzfl": importlib.metadata.version("byzfl"),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    print(json.dumps(versions))
    print(json.dumps({"precision": precision_check()}), flush=True)
    for n in args.clients:
        x = inputs(n)
        f = n // 5
        trim = max(1, n // 10)  # ByzFL's TrMean(f) trims f per side: beta = 0.1
        digest = hashlib.sha256(x[:, :1000].tobytes()).hexdigest()[:16]
        xt = torch.from_numpy(x)
        cases: dict[str, Callable[[], object]] = {
            "floor_copy": lambda x=x: x.copy(),
            "flower_median": lambda x=x: flower_median(x),
            "flower_trimmed_mean": lambda x=x: flower_trimmed(x, 0.1),
            "flower_krum_gram": lambda x=x, f=f: flower_new_krum(x, f),
            "byzfl_median_numpy": lambda x=x: byzfl_agg("median", x, 0),
            "byzfl_trimmed_mean_numpy": lambda x=x, t=trim: byzfl_agg("trimmed_mean", x, t),
            "byzfl_krum_numpy": lambda x=x, f=f: byzfl_agg("krum", x, f),
            "byzfl_median_torch": lambda xt=xt: byzfl_agg("median", xt, 0),
            "byzfl_trimmed_mean_torch": lambda xt=xt, t=trim: byzfl_agg("trimmed_mean", xt, t),
            "byzfl_krum_torch": lambda xt=xt, f=f: byzfl_agg("krum", xt, f),
        }
        if n <= args.skip_old_krum_above:
            cases["flower_krum_old"] = lambda x=x, f=f: flower_old_krum(x, f)
        for name, fn in cases.items():
            repeat = 1 if "krum_old" in name or (n >= 100 and "krum" in name) else args.repeat
            seconds = best(fn, repeat)
            print(
                json.dumps({"n": n, "d": D, "f": f, "input": digest, name: round(seconds, 4)}),
                flush=True,
            )


if __name__ == "__main__":
    main()
