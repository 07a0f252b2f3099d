"""Physical floors measured in the same run as the kernels (issue 20): raw AES-256-CTR
keystream and AES-256-GCM from ``cryptography`` (the speed of the cipher itself, before any of
our code), so every mask kernel is shown as a multiple of what the hardware can do.

The memory floors (``np.copy`` / ``np.copyto`` of the same bytes) are in
``test_bench_kernels.py`` and ``test_bench_prg.py``; the read-only float32 gemv floor of the
weighted mean and TenSEAL's add for CKKS are ``bench_floors_issue20.py`` (run by the suite).
The report pairs each kernel with its floor (``harness/floors.py``).

    SEALAGG_BENCH_PROFILE=quick .venv/bin/pytest benchmarks/test_bench_physical_floors.py \
        --benchmark-only
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

D = 1_000_000
MB4 = 4 * D  # one mask of d=1M uint32


@pytest.mark.parametrize("masks", [1, 11], ids=["4MB", "44MB"])
def test_aes_ctr_keystream(benchmark, masks: int) -> None:
    """AES-256-CTR over zeros into a preallocated buffer: the keystream at the cipher's speed,
    ``masks`` x 4 MB (11 = a SecAgg+ client's self mask and ten pairwise masks at k=10)."""
    benchmark.group = "floor: AES-256-CTR keystream"
    zeros = np.zeros(MB4, dtype=np.uint8)
    out = np.empty(MB4 + 15, dtype=np.uint8)  # update_into wants block-size slack
    keys = [os.urandom(32) for _ in range(masks)]

    def keystream() -> None:
        for key in keys:
            enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
            enc.update_into(zeros, out)

    benchmark(keystream)
    benchmark.extra_info["bytes"] = masks * MB4


def test_aes_gcm_seal(benchmark) -> None:
    """AES-256-GCM of 4 MB (what TLS 1.3 does to every upload byte), one call."""
    benchmark.group = "floor: AES-256-GCM"
    aead = AESGCM(os.urandom(32))
    data = os.urandom(MB4)
    nonce = os.urandom(12)
    sealed = benchmark(aead.encrypt, nonce, data, None)
    assert len(sealed) == MB4 + 16
    benchmark.extra_info["bytes"] = MB4
