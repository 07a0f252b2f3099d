"""Every kernel as a multiple of its physical floor, both measured in the same run (issue 20).

A kernel's absolute time says little on a shared machine; its ratio to what the hardware does
with the same bytes (the cipher's keystream, a memory copy, a read-only gemv, TenSEAL's own add)
says how much of it is ours. Pairs come from two places:

* pytest benchmarks of this run (``FLOOR_PAIRS``): the kernel and its floor are keys of
  :func:`harness.metrics.collect` (pytest-benchmark's best time of each);
* ``benchmarks/bench_floors_issue20.py`` (run by the suite, reused as is): the weighted mean
  against a float32 gemv and the CKKS add against TenSEAL's, in alternating repetitions; its
  median ratio with the min-max over repetitions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from harness.metrics import collect

KERNELS = "test_bench_kernels.py::test_kernel"
#: (kernel, its metric key, floor, the floor's metric key).
FLOOR_PAIRS: tuple[tuple[str, str, str, str], ...] = (
    (
        "one mask expanded, d=1M",
        "test_bench_prg.py::test_expand_one_mask",
        "AES-256-CTR keystream, 4 MB",
        "test_bench_physical_floors.py::test_aes_ctr_keystream[4MB]",
    ),
    (
        "11 masks added into a vector, d=1M",
        "test_bench_prg.py::test_apply_eleven_masks",
        "AES-256-CTR keystream, 44 MB",
        "test_bench_physical_floors.py::test_aes_ctr_keystream[44MB]",
    ),
    (
        "11 masks added into a vector, d=1M",
        "test_bench_prg.py::test_apply_eleven_masks",
        "memcpy (np.copy), 44 MB",
        "test_bench_prg.py::test_numpy_copy_44mb",
    ),
    (
        "modular add into the sum, d=1M",
        f"{KERNELS}[mod-add d=1M-mod_add_into bits=32]",
        "memcpy (np.copyto), 4 MB",
        f"{KERNELS}[mod-add d=1M-np.copyto floor (preallocated)]",
    ),
    (
        "modular sum, n=20, d=1M",
        f"{KERNELS}[mod-sum n=20 d=1M-mod_sum]",
        "memcpy (np.copy) of all rows",
        f"{KERNELS}[mod-sum n=20 d=1M-np.copy floor (all rows)]",
    ),
    (
        "quantize, d=1M",
        f"{KERNELS}[quantize d=1M-quantize]",
        "memcpy (np.copy)",
        f"{KERNELS}[quantize d=1M-np.copy floor]",
    ),
    (
        "dequantize, d=1M",
        f"{KERNELS}[dequantize d=1M-dequantize]",
        "memcpy (np.copy)",
        f"{KERNELS}[dequantize d=1M-np.copy floor]",
    ),
    (
        "L2 clip, d=1M",
        f"{KERNELS}[clip d=1M-clip_l2 (clipping)]",
        "memcpy (np.copy)",
        f"{KERNELS}[clip d=1M-np.copy floor]",
    ),
    (
        "weighted mean, n=20, d=1M",
        f"{KERNELS}[weighted-mean n=20 d=1M-weighted_mean]",
        "memcpy (np.copy) of all rows",
        f"{KERNELS}[weighted-mean n=20 d=1M-np.copy floor (all rows)]",
    ),
)
#: Floors shown with their throughput: (label, metric key, bytes processed).
THROUGHPUT: tuple[tuple[str, str, int], ...] = (
    (
        "AES-256-CTR keystream",
        "test_bench_physical_floors.py::test_aes_ctr_keystream[4MB]",
        4_000_000,
    ),
    ("AES-256-GCM seal", "test_bench_physical_floors.py::test_aes_gcm_seal", 4_000_000),
    ("memcpy (np.copyto)", f"{KERNELS}[mod-add d=1M-np.copyto floor (preallocated)]", 4_000_000),
)


def rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per kernel and floor measured in this run: ``kernel``, ``floor``, seconds of
    each, ``multiple`` (kernel / floor) and, for repeated pairs, ``low`` / ``high``."""
    found = results.get("metrics") or collect(results)
    out: list[dict[str, Any]] = []
    for kernel, key, floor, floor_key in FLOOR_PAIRS:
        k, f = found.get(key), found.get(floor_key)
        if k is None or f is None or f <= 0:
            continue
        out.append({"kernel": kernel, "floor": floor, "seconds": k, "floor_seconds": f,
                    "multiple": k / f})  # fmt: skip
    script = results.get("floors_script") or {}
    for mean in script.get("mean") or []:
        entry = _script_row(
            mean, "after", "gemv floor", f"weighted mean, n={mean.get('n')}, d={mean.get('d')}"
        )
        if entry:
            out.append({**entry, "floor": "read-only float32 gemv (OpenBLAS)"})
    ckks = script.get("ckks")
    if isinstance(ckks, Mapping):
        entry = _script_row(ckks, "after", "floor plain", "CKKS add, per ciphertext")
        if entry:
            out.append({**entry, "floor": "TenSEAL's parse + add of the same bytes"})
    return out


def _script_row(doc: Mapping[str, Any], case: str, floor: str, label: str) -> dict[str, Any] | None:
    """A kernel/floor pair of bench_floors_issue20.py's JSON (wall clock), or None."""
    found = (doc.get("results") or {}) if isinstance(doc, Mapping) else {}
    kernel, base = found.get(case), found.get(floor)
    if not isinstance(kernel, Mapping) or not isinstance(base, Mapping):
        return None
    try:
        return {
            "kernel": label,
            "seconds": float(kernel["wall_median_s"]),
            "floor_seconds": float(base["wall_median_s"]),
            "multiple": float(kernel["wall_ratio_median"]),
            "low": float(kernel["wall_ratio_min"]),
            "high": float(kernel["wall_ratio_max"]),
        }
    except (KeyError, TypeError, ValueError):
        return None


def throughputs(results: Mapping[str, Any]) -> list[tuple[str, float]]:
    """(floor, GB/s) for each throughput floor measured in this run."""
    found = results.get("metrics") or collect(results)
    return [
        (label, size / found[key] / 1e9)
        for label, key, size in THROUGHPUT
        if isinstance(found.get(key), float) and found[key] > 0
    ]
