"""Seeking in the mask PRG: any coordinate range of any mask the protocol expands equals
the same range of the sequential AES-256-CTR stream (an independent oracle built here from
``cryptography`` directly, counter block 0, read as little-endian uint32)."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from sealagg.crypto import _transcript as tr
from sealagg.crypto._primitives.prg import apply_masks
from sealagg.crypto.mask_slice import apply_mask_range, counter_position, mask_range

ROUND = bytes(range(32))
STREAM_WORDS = 6_000


def sequential(key: bytes, words: int, first_block: int = 0) -> np.ndarray:
    """The oracle: the keystream from ``first_block`` on, with no seeking at all."""
    counter = first_block.to_bytes(16, "big")
    enc = Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor()
    return np.frombuffer(enc.update(bytes(4 * words)) + enc.finalize(), dtype="<u4")


# Every kind of mask key the protocol expands: a self mask (HKDF of the seed) and a
# pairwise mask (HKDF of the pair's X25519 secret), plus a raw key.
KEYS = {
    "self": tr.self_mask_key(b"\x11" * 32, ROUND),
    "pairwise": tr.pairwise_mask_key(b"\x22" * 32, ROUND, 3, 7),
    "raw": b"\x33" * 32,
}
ORACLE = {kind: sequential(key, STREAM_WORDS) for kind, key in KEYS.items()}


def test_counter_position_is_block_and_skip() -> None:
    assert counter_position(0) == (0, 0)
    assert counter_position(1) == (0, 4)
    assert counter_position(3) == (0, 12)
    assert counter_position(4) == (1, 0)
    assert counter_position(4 * 1000 + 2) == (1000, 8)
    with pytest.raises(ValueError):
        counter_position(-1)


@pytest.mark.parametrize("kind", sorted(KEYS))
@settings(max_examples=60, deadline=None)
@given(start=st.integers(0, STREAM_WORDS - 1), length=st.integers(0, 700))
def test_any_slice_equals_the_sequential_stream(kind: str, start: int, length: int) -> None:
    length = min(length, STREAM_WORDS - start)
    got = mask_range(KEYS[kind], start, length)
    assert got.dtype == np.uint32
    assert np.array_equal(got, ORACLE[kind][start : start + length])


@pytest.mark.parametrize("kind", sorted(KEYS))
def test_slices_cross_the_prg_chunk_boundary(kind: str) -> None:
    """A range longer than one generation chunk (2^16 words), starting unaligned."""
    key, start, length = KEYS[kind], 5, (1 << 16) + 11
    full = sequential(key, start + length)
    assert np.array_equal(mask_range(key, start, length), full[start:])


def test_far_offsets_carry_into_the_high_counter_bytes() -> None:
    """Coordinate 4*2^32 - 3 lives in block 2^32 - 1 at byte 4: the range runs into block
    2^32, so the 128-bit big-endian counter must carry past its low 32 bits."""
    key = KEYS["pairwise"]
    start = 4 * 2**32 - 3
    block, skip = counter_position(start)
    assert (block, skip) == (2**32 - 1, 4)
    oracle = sequential(key, 12, first_block=block)[skip // 4 :]
    assert np.array_equal(mask_range(key, start, len(oracle)), oracle)


@settings(max_examples=25, deadline=None)
@given(
    cuts=st.lists(st.integers(1, 2_999), min_size=0, max_size=6, unique=True),
    signs=st.lists(st.sampled_from([1, -1]), min_size=3, max_size=3),
)
def test_stripes_remove_exactly_their_range(cuts: list[int], signs: list[int]) -> None:
    """Removing masks stripe by stripe, at arbitrary cut points, gives the one-process result."""
    d = 3_000
    rng = np.random.default_rng(len(cuts))
    total = rng.integers(0, 2**32, size=d, dtype=np.uint64).astype(np.uint32)
    masks = list(zip(KEYS.values(), signs, strict=True))
    whole = total.copy()
    apply_masks(whole, masks)
    edges = [0, *sorted(cuts), d]
    parts = [apply_mask_range(total[a:b].copy(), masks, a) for a, b in itertools.pairwise(edges)]
    assert np.array_equal(np.concatenate(parts), whole)


def test_refuses_bad_keys_and_offsets() -> None:
    with pytest.raises(ValueError):
        mask_range(b"short", 0, 4)
    with pytest.raises(ValueError):
        mask_range(os.urandom(32), -1, 4)
    with pytest.raises(ValueError):
        apply_mask_range(np.zeros(4, np.uint32), [(b"short", 1)], 0)
