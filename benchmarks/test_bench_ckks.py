"""CKKS sums (mode ckks) beside plaintext FedAvg and SecAgg+ on the same inputs, and packing.

Everything runs in this process, clients one after the other: "client encrypt" is one client's
time, "appliance add" the appliance's parse + check + add of all n uploads, "decrypt" the key
holder's decryption of the sum. SecAgg+ runs ``crypto.simulation.run_round`` on the same float
updates (quantized by ``encode_update``); plaintext is the float64-accumulated weighted mean.
The packing comparison counts ciphertexts for ResNet-18's 62 parameter tensors (and a LoRA
adapter set) packed whole-model versus one-or-more ciphertexts per tensor, with bytes and
encryption time extrapolated from a sample of real ciphertexts.

    SEALAGG_BENCH_PROFILE=quick .venv/bin/pytest --benchmark-only \
        benchmarks/test_bench_ckks.py
    .venv/bin/python benchmarks/test_bench_ckks.py            # the RESULTS.md tables (d=100k, 1M)
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

from sealagg import kernels
from sealagg.crypto import IdentityKey, QuantizationSpec, decode_sum, encode_update, encoded_length
from sealagg.crypto.ckks import (
    CkksAccumulator,
    CkksEncryptor,
    CkksKeyHolder,
    CkksParameters,
    Contributor,
    estimate,
    mean_from_sum,
    per_layer_ciphertexts,
)
from sealagg.crypto.errors import InfeasibleParametersError
from sealagg.crypto.params import find_parameters
from sealagg.crypto.roster import Role
from sealagg.crypto.simulation import RoundStats, run_round
from sealagg.crypto.testing import make_round

PROFILE = os.environ.get("SEALAGG_BENCH_PROFILE", "quick")
_SIZES = {"smoke": (4, [2_000]), "quick": (10, [100_000]), "full": (10, [100_000, 1_000_000])}
N, D_VALUES = _SIZES[PROFILE]
PARAMS = CkksParameters()
RID = bytes(32)
CLIP = 1.0

#: ResNet-18 (torchvision, 1000 classes): its 62 parameter tensors, in order.
RESNET18 = [9408, 64, 64] + [36864, 64, 64] * 4
RESNET18 += [73728, 128, 128, 147456, 128, 128, 8192, 128, 128, 147456, 128, 128, 147456, 128, 128]
RESNET18 += [294912, 256, 256, 589824, 256, 256, 32768, 256, 256, 589824, 256, 256, 589824, 256]
RESNET18 += [256, 1179648, 512, 512, 2359296, 512, 512, 131072, 512, 512, 2359296, 512, 512]
RESNET18 += [2359296, 512, 512, 512000, 1000]
#: LoRA r=8 on the query and value projections of a 12-layer, 768-wide encoder: 48 tensors.
LORA = [8 * 768] * 48


def _inputs(n: int, d: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    updates = np.clip(rng.standard_normal((n, d), dtype=np.float32) * 0.01, -CLIP, CLIP)
    return updates, rng.uniform(0.1, 1.0, n)


def _reference(updates: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return (weights[:, None] * updates.astype(np.float64)).sum(0) / weights.sum()


class _Owner:
    """A roster data owner as the key holder sees it."""

    role = Role.DATA_OWNER

    def __init__(self, name: str, identity_key: bytes) -> None:
        self.name, self.identity_key = name, identity_key


def ckks_round(updates: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    """One CKKS round's costs: per-client encrypt and sign, appliance checks (all n), key holder
    verify + recompute + decrypt."""
    n, d = updates.shape
    holder = CkksKeyHolder.generate(PARAMS, RID)
    ids = [IdentityKey.generate() for _ in range(n)]
    owners = {i: _Owner(f"c{i}", k.verify_key_bytes) for i, k in enumerate(ids)}
    acc = CkksAccumulator(PARAMS, holder.public_context, RID, d, model_version=1)
    encrypt, add, sizes, uploads = [], 0.0, [], []
    for i, (x, w) in enumerate(zip(updates, weights, strict=True)):
        t0 = time.perf_counter()
        payload = CkksEncryptor(PARAMS, holder.public_context, RID).encrypt(
            x, float(w), identity=ids[i], index=i, name=f"c{i}", model_version=1
        )
        t1 = time.perf_counter()
        acc.add(payload, Contributor(i, f"c{i}", ids[i].verify_key_bytes))
        add += time.perf_counter() - t1
        encrypt.append(t1 - t0)
        sizes.append(len(payload))
        uploads.append((i, payload))
    t0 = time.perf_counter()
    weighted = holder.decrypt_contributions(
        uploads,
        owners,
        dimension=d,
        model_version=1,
        key_holder=-1,
        key_holder_contributes=False,
        minimum=3,
    )
    mean, _ = mean_from_sum(weighted)
    decrypt = time.perf_counter() - t0
    return {
        "client_encrypt_s": float(np.median(encrypt)),
        "appliance_add_s": add,
        "decrypt_s": decrypt,
        "bytes_up_per_client": float(np.mean(sizes)),
        "bytes_down_key_holder": float(sum(sizes)),
        "max_error": float(np.abs(mean - _reference(updates, weights)).max()),
        "error_bound": PARAMS.error_bound(n) / float(weights.sum()),
    }


def secagg_plus_round(updates: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    """SecAgg+ (parameter finder's k, t) on the same float inputs, quantized into Z_2^32."""
    n, d = updates.shape
    try:
        p = find_parameters(n, 0.1, 0.1)
        degree, threshold = (None if p.complete else p.degree), p.threshold
    except InfeasibleParametersError:
        degree, threshold = None, n // 2 + 1
    kit = make_round(n, threshold=threshold, dimension=encoded_length(d), degree=degree, seed=1)
    spec = QuantizationSpec(clip=CLIP, max_clients=n)
    t0 = time.perf_counter()
    kit.inputs = {u: encode_update(updates[u - 1], float(weights[u - 1]), spec) for u in kit.inputs}
    quantize = (time.perf_counter() - t0) / n
    stats = RoundStats()
    result = run_round(kit.config, kit.identities, kit.inputs, None, stats)
    mean, _ = decode_sum(result.total, spec)
    return {
        "client_s": stats.client_total / n + quantize,
        "server_s": stats.server_total,
        "bytes_up_per_client": stats.bytes_up / n,
        "max_error": float(np.abs(mean - _reference(updates, weights)).max()),
    }


def plaintext_round(updates: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    kernels.weighted_mean(updates, weights)  # compile outside the measurement
    t0 = time.perf_counter()
    kernels.weighted_mean(updates, weights)
    return {"server_s": time.perf_counter() - t0, "bytes_up_per_client": 4.0 * updates.shape[1]}


def packing(layers: list[int], sample: int = 20) -> dict[str, float]:
    """Whole-model versus per-tensor packing: counts exact; bytes and time from a sample."""
    d = sum(layers)
    per_ct = estimate(PARAMS, 1)
    holder = CkksKeyHolder.generate(PARAMS, RID)
    enc = CkksEncryptor(PARAMS, holder.public_context, RID).context
    values = np.random.default_rng(0).uniform(-1, 1, PARAMS.slots)
    t0 = time.perf_counter()
    for _ in range(sample):
        enc.encrypt(values)
    seconds = (time.perf_counter() - t0) / sample
    ours, per_layer = PARAMS.ciphertexts_for(d), per_layer_ciphertexts(layers, PARAMS.slots)
    return {
        "d": d,
        "tensors": len(layers),
        "ideal": -(-(d + 1) // PARAMS.slots),
        "ours": ours,
        "per_layer": per_layer,
        "ours_bytes": ours * per_ct.bytes_per_ciphertext,
        "per_layer_bytes": per_layer * per_ct.bytes_per_ciphertext,
        "ours_encrypt_s": ours * seconds,
        "per_layer_encrypt_s": per_layer * seconds,
    }


# ------------------------------------------------------------------------- pytest


@pytest.mark.parametrize("d", D_VALUES, ids=[f"d{d}" for d in D_VALUES])
def test_ckks_round(benchmark, d: int) -> None:
    benchmark.group = f"ckks {PROFILE}"
    updates, weights = _inputs(N, d)
    runs: list[dict[str, float]] = []
    benchmark.pedantic(lambda: runs.append(ckks_round(updates, weights)), rounds=1, iterations=1)
    info = runs[-1]
    assert info["max_error"] <= info["error_bound"]
    benchmark.extra_info.update(info)
    benchmark.extra_info["sweep"] = {"mode": "ckks", "n": N, "d": d}
    benchmark.extra_info["phases"] = {
        "client encrypt": info["client_encrypt_s"] * N,
        "server accumulate": info["appliance_add_s"],
        "key holder decrypt": info["decrypt_s"],
    }


def test_packing_resnet18(benchmark) -> None:
    benchmark.group = "ckks packing"
    info = benchmark.pedantic(lambda: packing(RESNET18, sample=5), rounds=1, iterations=1)
    assert info["ours"] == info["ideal"] <= 1.05 * info["ideal"]
    assert info["ours"] < info["per_layer"]
    benchmark.extra_info.update(info)


# --------------------------------------------------------------------------- script


def main() -> None:
    n = 10
    warm_updates, warm_weights = _inputs(n, 2_000)
    secagg_plus_round(warm_updates, warm_weights)  # Numba compiles outside the measurement
    plaintext_round(warm_updates, warm_weights)
    print(f"# n={n}, N={PARAMS.poly_modulus_degree}, moduli {list(PARAMS.coeff_mod_bit_sizes)},")
    print(f"# scale 2^{PARAMS.scale_bits}; clients run one after the other in this process;")
    print(f"# load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    print(
        "| d | mode | client (per client) | appliance | decrypt | bytes up per client "
        "| max error vs float64 |"
    )
    print("|---|---|---|---|---|---|---|")
    for d in (100_000, 1_000_000):
        updates, weights = _inputs(n, d)
        c = ckks_round(updates, weights)
        s = secagg_plus_round(updates, weights)
        p = plaintext_round(updates, weights)
        print(
            f"| {d:,} | ckks | {c['client_encrypt_s']:.2f} s encrypt | {c['appliance_add_s']:.2f} s"
            f" add (n={n}) | {c['decrypt_s']:.3f} s | {c['bytes_up_per_client']:,.0f} "
            f"({c['bytes_up_per_client'] / (4 * d):.1f}x fp32) | {c['max_error']:.1e} "
            f"(bound {c['error_bound']:.1e}) |"
        )
        print(
            f"| {d:,} | secagg+ | {s['client_s']:.2f} s | {s['server_s']:.2f} s | - "
            f"| {s['bytes_up_per_client']:,.0f} ({s['bytes_up_per_client'] / (4 * d):.2f}x fp32) "
            f"| {s['max_error']:.1e} |"
        )
        print(
            f"| {d:,} | plaintext | - | {p['server_s'] * 1000:.1f} ms | - "
            f"| {p['bytes_up_per_client']:,.0f} | 0 |"
        )
        sys.stdout.flush()
    print(
        "\n| model | d | tensors | ideal ⌈(d+1)/4096⌉ | whole-model | per-tensor | bytes (ours / "
        "per-tensor) | encrypt s (ours / per-tensor) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for label, layers in (("ResNet-18", RESNET18), ("LoRA r=8, q+v, 12x768", LORA)):
        k = packing(layers)
        print(
            f"| {label} | {k['d']:,} | {k['tensors']} | {k['ideal']:,} | {k['ours']:,} "
            f"| {k['per_layer']:,} | {k['ours_bytes'] / 1e6:,.1f} MB / "
            f"{k['per_layer_bytes'] / 1e6:,.1f} MB | {k['ours_encrypt_s']:.1f} / "
            f"{k['per_layer_encrypt_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
