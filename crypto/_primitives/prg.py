"""Seekable cryptographic PRG: AES-256-CTR keystream read as little-endian uint32.

Masks must be unpredictable (Flower seeds MT19937 with 32 bits; we do not).
CTR mode is seekable: coordinate ``i`` lives in keystream block ``i // 4``, so
any coordinate range of any mask can be produced on its own, which chunked
streaming and parallel or split unmasking rely on. Each key is used for one
mask only (keys come from HKDF over a per-round, per-pair secret), so the
all-zero starting counter never repeats under a key.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

SEED_BYTES = 32
_BLOCK = 16
_WORDS_PER_BLOCK = _BLOCK // 4
#: Coordinates generated per keystream call: 256 KiB stays in L2 while masks are added.
CHUNK_WORDS = 1 << 16


def _keystream(key: bytes, first_word: int) -> CipherContext:
    """An AES-CTR encryptor positioned at coordinate ``first_word`` of the mask."""
    if len(key) != SEED_BYTES:
        raise ValueError("a mask key is 32 bytes")
    if first_word < 0:
        raise ValueError("offset must be non-negative")
    counter = (first_word // _WORDS_PER_BLOCK).to_bytes(_BLOCK, "big")
    encryptor = Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor()
    skip = (first_word % _WORDS_PER_BLOCK) * 4
    if skip:
        encryptor.update(bytes(skip))
    return encryptor


def expand_mask(key: bytes, length: int, offset: int = 0) -> np.ndarray:
    """Mask coordinates ``offset .. offset+length`` as a fresh uint32 array."""
    out = np.zeros(length, dtype=np.uint32)
    apply_masks(out, [(key, 1)], offset=offset)
    return out


def apply_masks(target: np.ndarray, masks: Sequence[tuple[bytes, int]], offset: int = 0) -> None:
    """Add (+1) or subtract (-1) each keyed mask into ``target`` mod 2^32, in place.

    ``target`` holds coordinates ``offset .. offset+len(target)``. Work goes chunk
    by chunk, all masks per chunk, so the target chunk stays in cache.
    """
    if target.dtype != np.uint32 or target.ndim != 1:
        raise TypeError("masks apply to a 1-D uint32 array")
    if not masks:
        return
    for _, sign in masks:
        if sign not in (1, -1):
            raise ValueError("mask sign must be +1 or -1")
    streams = [(_keystream(key, offset), sign) for key, sign in masks]
    length = target.shape[0]
    chunk = min(CHUNK_WORDS, max(length, 1))
    zeros = np.zeros(chunk * 4, dtype=np.uint8)
    scratch = np.empty(chunk * 4 + _BLOCK, dtype=np.uint8)
    words = scratch[: chunk * 4].view(np.uint32)
    for start in range(0, length, chunk):
        stop = min(start + chunk, length)
        n = stop - start
        part = target[start:stop]
        for encryptor, sign in streams:
            encryptor.update_into(zeros[: n * 4], scratch)
            if sign > 0:
                np.add(part, words[:n], out=part)
            else:
                np.subtract(part, words[:n], out=part)


def uniform_uint16(key: bytes, length: int) -> np.ndarray:
    """``length`` uniform uint16 values from the keystream (stochastic rounding noise)."""
    out = np.zeros((length + 1) // 2, dtype=np.uint32)
    apply_masks(out, [(key, 1)])
    return out.view(np.uint16)[:length]
