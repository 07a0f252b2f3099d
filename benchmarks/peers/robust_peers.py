"""Flower's and ByzFL's robust aggregators on the inputs benchmarks/test_bench_robust.py uses.

Runs in a SEPARATE venv (flwr pins grpcio/protobuf versions that conflict with ours):

    python3.11 -m venv /work/peers-venv
    /work/peers-venv/bin/pip install flwr byzfl
    OPENBLAS_NUM_THREADS=1 /work/peers-venv/bin/python benchmarks/peers/robust_peers.py \
        --clients 20 100 --repeat 2

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
import json
import time
from collections.abc import Callable

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


def byzfl_agg(name: str, x, f: int):
    import byzfl

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
    import byzfl

    chosen = byzfl.Krum(f=f)(x)
    out["byzfl_krum_numpy"] = int(np.argmin(np.abs(x - chosen).sum(axis=1)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-old-krum-above", type=int, default=20)
    args = parser.parse_args()
    import byzfl
    import flwr
    import torch

    print(json.dumps({"flwr": flwr.__version__, "byzfl": getattr(byzfl, "__version__", "?")}))
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
