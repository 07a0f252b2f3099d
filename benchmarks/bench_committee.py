"""One in-process SecAgg+ round with and without the signing committee (issue 20).

Usage (whole-process timing; run the two in alternating pairs)::

    .venv/bin/python -P benchmarks/bench_committee.py 200 100000            # committee
    .venv/bin/python -P benchmarks/bench_committee.py 200 100000 --full-quorum  # before

The graph comes from the parameter finder (:func:`crypto.params.choose_graph`, dropout
0.1, corrupt fraction 0, the default colluders), no dropouts. ``--full-quorum`` turns the
committee off in this process only (every client verifies ``minimum_survivors``
signatures, as before issue 20), so both sides run the same code otherwise. ``--verbose``
prints the committee and the per-phase client seconds.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from sealagg.crypto import IdentityKey, QuantizationSpec, RoundConfig, encode_update, encoded_length
from sealagg.crypto.params import choose_graph
from sealagg.crypto.simulation import RoundStats, run_round


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int)
    ap.add_argument("d", type=int)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--full-quorum", action="store_true")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    if args.full_quorum:  # the pre-issue-20 check: no committee for any round
        RoundConfig.committee_sizing = property(lambda self: None)  # type: ignore[method-assign,assignment]
    degree, threshold, _ = choose_graph(args.n, "secagg+", args.dropout, 0.0)
    rng = np.random.default_rng(0)
    ids = {u: IdentityKey.generate() for u in range(1, args.n + 1)}
    config = RoundConfig.create(
        round_id=os.urandom(32),
        identities={u: key.verify_key_bytes for u, key in ids.items()},
        threshold=threshold,
        vector_length=encoded_length(args.d),
        degree=degree,
    )
    spec = QuantizationSpec(clip=1.0, max_clients=args.n)
    inputs = {
        u: encode_update(rng.normal(0, 0.1, args.d).astype(np.float32), 1.0, spec) for u in ids
    }
    stats = RoundStats()
    t0 = time.perf_counter()
    result = run_round(config, ids, inputs, {}, stats)
    wall = time.perf_counter() - t0
    assert len(result.survivors) == args.n
    if args.verbose:
        sizing = config.committee_sizing
        print(
            f"n={args.n} d={args.d} k={degree} t={threshold} Q={config.minimum_survivors} "
            f"committee={None if sizing is None else (sizing.size, sizing.quorum)} "
            f"round {wall:.3f} s, client {stats.client_total:.3f} s, server "
            f"{stats.server_total:.3f} s, wire {stats.wire_seconds:.3f} s, "
            f"down {stats.bytes_down} B"
        )
        for phase, sec in stats.client_seconds.items():
            print(f"  client {phase.name}: {sec:.3f} s")


if __name__ == "__main__":
    main()
