"""A small in-process secure aggregation round that says what happened.

Until the networked demo federation exists, this is the README's main job:
clients with float updates and different weights, a SecAgg+ graph chosen by
the parameter finder, a few clients vanishing at random phases, and the
unmasked weighted mean checked against plain float64 numpy.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from sealagg.crypto import (
    IdentityKey,
    Phase,
    QuantizationSpec,
    RoundConfig,
    decode_sum,
    encode_update,
    encoded_length,
    find_parameters,
)
from sealagg.crypto.errors import SecAggError
from sealagg.crypto.simulation import RoundStats, run_round


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--dimension", type=int, default=100_000)
    p.add_argument("--dropout", type=float, default=0.15, help="fraction of clients that vanish")
    p.add_argument("--corrupt", type=float, default=0.05, help="assumed corrupt fraction")
    p.add_argument("--seed", type=int, default=7)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    rng = np.random.default_rng(args.seed)
    n, d = args.clients, args.dimension
    params = find_parameters(n, args.dropout, args.corrupt)
    print(f"sealagg: one secure aggregation round, {n} clients, {d:,} parameters")
    print(f"  parameter finder: {params.describe()}")

    identities = {u: IdentityKey.generate() for u in range(1, n + 1)}
    config = RoundConfig.create(
        round_id=os.urandom(32),
        identities={u: k.verify_key_bytes for u, k in identities.items()},
        threshold=params.threshold,
        vector_length=encoded_length(d),
        degree=None if params.complete else params.degree,
    )
    spec = QuantizationSpec(clip=1.0, max_clients=n)
    updates = {u: rng.normal(0, 0.1, d).astype(np.float32) for u in identities}
    weights = {u: float(rng.integers(10, 500)) / 500 for u in identities}
    inputs = {u: encode_update(updates[u], weights[u], spec) for u in identities}

    phases = list(Phase)
    vanish = rng.choice(list(identities), size=round(args.dropout * n), replace=False)
    dropouts = {int(u): phases[int(rng.integers(0, len(phases)))] for u in vanish}
    for u, phase in sorted(dropouts.items()):
        print(f"  client {u:3d} will vanish at {phase.name.lower()}")

    stats = RoundStats()
    try:
        result = run_round(config, identities, inputs, dropouts, stats)
    except SecAggError as error:
        print(f"round aborted ({error.reason.value}): {error}")
        return 1
    mean, total_weight = decode_sum(result.total[:], spec)
    members = list(result.survivors)
    w = np.array([weights[u] for u in members])
    reference = np.average(
        np.stack([updates[u] for u in members]).astype(np.float64), axis=0, weights=w
    )
    err = float(np.max(np.abs(mean - reference)))

    for phase in Phase:
        print(
            f"  {phase.name.lower():18s} clients {stats.client_seconds.get(phase, 0):7.3f} s"
            f"   server {stats.server_seconds.get(phase, 0):7.3f} s"
        )
    late = list(result.dropped_after_masking)
    print(f"  sum over {len(members)} survivors; dropped after masking: {late}")
    print(f"  bytes up {stats.bytes_up / 1e6:.1f} MB, down {stats.bytes_down / 1e6:.2f} MB")
    print(f"  total weight {total_weight:.4f} (expected {w.sum():.4f})")
    bound = spec.error_bound(len(members)) / w.sum() * 2  # sum error, plus weight rounding
    print(f"  max |secure mean - plaintext mean| = {err:.2e} (quantization bound {bound:.2e})")
    ok = err <= bound
    print("result: OK" if ok else "result: MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
