"""One in-process secure aggregation round at fixed n, d, k, t (no dropouts): whole-process timing.

Usage: .venv/bin/python -P benchmarks/round_once.py N D K T   (K=0: the complete graph).
"""

import os
import sys

import numpy as np

from sealagg.crypto import IdentityKey, QuantizationSpec, RoundConfig, encode_update, encoded_length
from sealagg.crypto.simulation import run_round

n, d, k, t = (int(x) for x in sys.argv[1:5])
rng = np.random.default_rng(0)
ids = {u: IdentityKey.generate() for u in range(1, n + 1)}
config = RoundConfig.create(
    round_id=os.urandom(32),
    identities={u: key.verify_key_bytes for u, key in ids.items()},
    threshold=t,
    vector_length=encoded_length(d),
    degree=None if k == 0 else k,
)
spec = QuantizationSpec(clip=1.0, max_clients=n)
inputs = {u: encode_update(rng.normal(0, 0.1, d).astype(np.float32), 1.0, spec) for u in ids}
result = run_round(config, ids, inputs, {})
assert len(result.survivors) == n
