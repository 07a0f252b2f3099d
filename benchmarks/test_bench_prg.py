"""Mask PRG throughput (AES-256-CTR keystream as uint32) against a numpy copy of the same bytes.

.venv/bin/pytest benchmarks/test_bench_prg.py --benchmark-only
"""

from __future__ import annotations

import os

import numpy as np

from sealagg.crypto._primitives.prg import apply_masks, expand_mask

D = 1_000_000


def test_numpy_copy_4mb(benchmark):
    benchmark.group = "prg d=1M (4 MB)"
    src = np.arange(D, dtype=np.uint32)
    benchmark(np.copy, src)


def test_expand_one_mask(benchmark):
    benchmark.group = "prg d=1M (4 MB)"
    key = os.urandom(32)
    out = benchmark(expand_mask, key, D)
    assert out.shape == (D,)


def test_apply_one_mask_in_place(benchmark):
    benchmark.group = "prg d=1M (4 MB)"
    target = np.zeros(D, dtype=np.uint32)
    benchmark(apply_masks, target, [(os.urandom(32), 1)])


def test_numpy_copy_44mb(benchmark):
    benchmark.group = "prg 11 masks d=1M (44 MB of keystream)"
    src = np.arange(11 * D, dtype=np.uint32)
    benchmark(np.copy, src)


def test_apply_eleven_masks(benchmark):
    """A SecAgg+ client with k=10: one self mask and ten pairwise masks."""
    benchmark.group = "prg 11 masks d=1M (44 MB of keystream)"
    target = np.zeros(D, dtype=np.uint32)
    masks = [(os.urandom(32), 1 if i % 2 else -1) for i in range(11)]
    benchmark(apply_masks, target, masks)
