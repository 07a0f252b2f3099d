"""Issue 20: CKKS aggregation against TenSEAL's own add, the weighted mean against a gemv.

Each kernel is timed as a ratio to its physical floor measured in the same repetition, in
alternating paired runs (the order rotates every repetition), so a loaded machine moves the
kernel and its floor together. Printed: the median ratio with min-max over repetitions, the
median seconds, and the load average before and after.

* ``ckks``: per ciphertext (N=8192, [60, 40, 40], every slot used). Floors: TenSEAL's
  ``ckks_vector_from`` + ``+=`` on the same bytes, for TenSEAL's default (zstd) serialization
  and for the round's uncompressed encoding. "before" is the old check (parse, metadata,
  ``serialize() == bytes``) on the zstd bytes clients used to send; "after" is today's
  ``PublicContext.load`` (parse, metadata, template compare) on today's bytes. "upload" is the
  whole ``CkksAccumulator.add`` of one signed upload (msgpack, Ed25519 over SHA-256 of every
  ciphertext, load, add), per ciphertext.
* ``mean``: n x d float32 updates. Floor: ``np.dot(w32, updates)``, a read-only float32 gemv
  (OpenBLAS). "before" is the old Numba kernel (4096-coordinate blocks, one row per pass),
  frozen below; "after" is ``kernels.weighted_mean`` (validation included).

    .venv/bin/python -P benchmarks/bench_floors_issue20.py            # both, 15 repetitions
    .venv/bin/python -P benchmarks/bench_floors_issue20.py mean --n 100 --d 1000000 --reps 21
    .venv/bin/python -P benchmarks/bench_floors_issue20.py ckks --cts 40 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import numba
import numpy as np
from numba import prange

from sealagg import kernels
from sealagg.crypto import IdentityKey
from sealagg.crypto.ckks import (
    CkksAccumulator,
    CkksEncryptor,
    CkksKeyHolder,
    CkksParameters,
    Contributor,
)
from sealagg.kernels._average import _normalised_weights


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def paired(
    cases: dict[str, Callable[[], object]], floor: str, reps: int
) -> dict[str, dict[str, float]]:
    """Run every case once per repetition (rotating order); ratios to ``floor`` per repetition,
    on wall time and on this process's CPU time (which a busy machine disturbs less)."""
    for fn in cases.values():  # warm up (compile, caches)
        fn()
    names = list(cases)
    wall: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    for rep in range(reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            cases[name]()
            cpu[name].append(time.process_time() - start_cpu)
            wall[name].append(time.perf_counter() - start)
    out = {}
    for name in names:
        entry: dict[str, float] = {}
        for clock, seconds in (("wall", wall), ("cpu", cpu)):
            ratios = [a / b for a, b in zip(seconds[name], seconds[floor], strict=True)]
            entry[f"{clock}_median_s"] = statistics.median(seconds[name])
            entry[f"{clock}_ratio_median"] = statistics.median(ratios)
            entry[f"{clock}_ratio_min"] = min(ratios)
            entry[f"{clock}_ratio_max"] = max(ratios)
        out[name] = entry
    return out


# ---------------------------------------------------------------------- weighted mean

_OLD_BLOCK = 1 << 12


@numba.njit(cache=True)
def _old_axpy(acc: np.ndarray, weight: float, row: np.ndarray) -> None:
    for j in range(acc.shape[0]):
        acc[j] += weight * np.float64(row[j])


@numba.njit(cache=True, parallel=True)
def _old_kernel(updates: np.ndarray, weights: np.ndarray, out: np.ndarray) -> int:
    """The weighted mean kernel before issue 20 (kernels/_average.py at the foundation commit)."""
    n, d = updates.shape
    nblocks = (d + _OLD_BLOCK - 1) // _OLD_BLOCK
    bad = 0
    for b in prange(nblocks):
        start = b * _OLD_BLOCK
        stop = min(start + _OLD_BLOCK, d)
        acc = np.zeros(stop - start, dtype=np.float64)
        for r in range(n):
            _old_axpy(acc, weights[r], updates[r, start:stop])
        for j in range(stop - start):
            if not np.isfinite(acc[j]):
                bad += 1
            out[start + j] = np.float32(acc[j])
    return bad


def bench_mean(n: int, d: int, reps: int) -> dict[str, object]:
    rng = np.random.default_rng(0)
    updates = rng.standard_normal((n, d), dtype=np.float32)
    weights = rng.uniform(0.1, 1.0, n)
    normalised = _normalised_weights(weights, n)
    w32 = normalised.astype(np.float32)
    old_out = np.empty(d, np.float32)
    new = kernels.weighted_mean(updates, weights)
    _old_kernel(updates, normalised, old_out)
    exact = (normalised @ updates.astype(np.float64)).astype(np.float32)
    cases = {
        "gemv floor": lambda: np.dot(w32, updates),
        "before": lambda: _old_kernel(updates, normalised, old_out),
        "after": lambda: kernels.weighted_mean(updates, weights),
    }
    return {
        "n": n,
        "d": d,
        "max_abs_diff_after_vs_float64": float(np.abs(new - exact).max()),
        "max_abs_diff_after_vs_before": float(np.abs(new - old_out).max()),
        "results": paired(cases, "gemv floor", reps),
    }


# ------------------------------------------------------------------------------- ckks


def bench_ckks(cts: int, reps: int) -> dict[str, object]:
    import tenseal as ts  # the peer being measured against

    from sealagg.crypto._primitives.ckks import PublicContext

    params = CkksParameters()
    slots = params.slots
    holder = CkksKeyHolder.generate(params, bytes(32))
    context = PublicContext.from_bytes(holder.public_context, max_bytes=8 << 20)
    raw = context._ctx
    rng = np.random.default_rng(1)
    plain = [context.encrypt(rng.uniform(-1, 1, slots)) for _ in range(cts)]
    zstd = [ts.ckks_vector_from(raw, c).serialize() for c in plain]

    def old_load(data: bytes) -> object:
        """The check before issue 20 (crypto/_primitives/ckks.py, PublicContext.load)."""
        vector = ts.ckks_vector_from(raw, bytes(data))
        parts = vector.ciphertext()
        ct = parts[0]
        ok = (
            len(parts) == 1
            and int(ct.poly_modulus_degree()) == context.poly_modulus_degree
            and int(ct.coeff_modulus_size()) == context.coeff_mod_count
            and int(ct.size()) == 2
            and not ct.is_transparent()
            and ct.is_ntt_form()
            and np.isclose(float(ct.scale), context.scale, rtol=1e-9)
            and vector.size() == slots
            and vector.serialize() == bytes(data)
        )
        if not ok:
            raise AssertionError("the old check refused a fresh ciphertext")
        return vector

    def summing(load: Callable[[bytes], object], data: list[bytes]) -> Callable[[], object]:
        def run() -> object:
            total = load(data[0])
            for item in data[1:]:
                total += load(item)
            return total

        return run

    def floor(item: bytes) -> object:
        return ts.ckks_vector_from(raw, item)

    # The whole upload path: one signed upload of ``cts`` ciphertexts into an accumulator.
    dimension = cts * slots - 1
    identity = IdentityKey.generate()
    upload = CkksEncryptor(params, holder.public_context, bytes(32)).encrypt(
        rng.uniform(-1, 1, dimension), 1.0, identity=identity, index=0, name="c0", model_version=1
    )
    who = Contributor(0, "c0", identity.verify_key_bytes)

    # The context load and template are per round; adding the same signed upload again and
    # again to one accumulator times only the per-upload work.
    accumulator = CkksAccumulator(
        params, holder.public_context, bytes(32), dimension, model_version=1
    )

    def whole_upload() -> object:
        accumulator.add(upload, who)
        return accumulator

    cases = {
        "floor zstd": summing(floor, zstd),
        "floor plain": summing(floor, plain),
        "before": summing(old_load, zstd),
        "after": summing(lambda c: context.load(c, slots_used=slots), plain),
        "upload": whole_upload,
    }
    results = paired(cases, "floor plain", reps)
    zstd_floor = paired({k: cases[k] for k in ("floor zstd", "before")}, "floor zstd", reps)
    # The data owner's side: TenSEAL's encrypt + serialize, and ours (+ undoing zstd).
    values = rng.uniform(-1, 1, slots).tolist()
    encrypt = paired(
        {
            "tenseal encrypt": lambda: [ts.ckks_vector(raw, values).serialize() for _ in range(4)],
            "ours": lambda: [context.encrypt(values) for _ in range(4)],
        },
        "tenseal encrypt",
        reps,
    )
    return {
        "ciphertexts": cts,
        "bytes_zstd": len(zstd[0]),
        "bytes_plain": len(plain[0]),
        "results": results,
        "before_vs_zstd_floor": zstd_floor["before"],
        "client_encrypt_vs_tenseal": encrypt["ours"],
    }


def _ratio(r: dict[str, float], clock: str) -> str:
    return (
        f"{r[f'{clock}_ratio_median']:.2f}x "
        f"({r[f'{clock}_ratio_min']:.2f}-{r[f'{clock}_ratio_max']:.2f})"
    )


def _print_table(title: str, results: dict[str, dict[str, float]], per: float, unit: str) -> None:
    print(f"\n{title}")
    print(
        f"| case | wall median {unit} | wall ratio to floor, median (min-max) "
        f"| CPU median {unit} | CPU ratio to floor, median (min-max) |"
    )
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['wall_median_s'] * per:.3f} | {_ratio(r, 'wall')} "
            f"| {r['cpu_median_s'] * per:.3f} | {_ratio(r, 'cpu')} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", choices=["ckks", "mean", "all"], default="all")
    parser.add_argument("--n", type=int, nargs="+", default=[100, 20])
    parser.add_argument("--d", type=int, default=1_000_000)
    parser.add_argument("--cts", type=int, default=40)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    report: dict[str, object] = {
        "loadavg_before": _loadavg(),
        "cpus": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
    }
    print(f"load average before: {report['loadavg_before']}; {report['cpus']} CPUs")
    if args.what in ("mean", "all"):
        report["mean"] = []
        for n in args.n:
            result = bench_mean(n, args.d, args.reps)
            report["mean"].append(result)
            _print_table(
                f"weighted mean n={n}, d={args.d:,} (floor: read-only float32 gemv; "
                f"after vs float64: {result['max_abs_diff_after_vs_float64']:.1e})",
                result["results"],
                1e3,
                "ms",
            )
    if args.what in ("ckks", "all"):
        result = bench_ckks(args.cts, args.reps)
        report["ckks"] = result
        _print_table(
            f"CKKS, per ciphertext ({args.cts} ciphertexts per repetition; bytes zstd "
            f"{result['bytes_zstd']:,}, plain {result['bytes_plain']:,}; floor: TenSEAL "
            "parse + add of the uncompressed bytes)",
            result["results"],
            1e3 / args.cts,
            "ms per ciphertext",
        )
        before = result["before_vs_zstd_floor"]
        print(
            "before vs its own floor (TenSEAL parse + add of the same zstd bytes): "
            f"wall {_ratio(before, 'wall')}, CPU {_ratio(before, 'cpu')}"
        )
        client = result["client_encrypt_vs_tenseal"]
        print(
            "data owner's encrypt vs TenSEAL's encrypt + serialize: "
            f"wall {_ratio(client, 'wall')}, CPU {_ratio(client, 'cpu')}"
        )
    report["loadavg_after"] = _loadavg()
    print(f"\nload average after: {report['loadavg_after']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
