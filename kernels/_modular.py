"""Arithmetic in Z_(2^bits) on uint32 vectors: the server's running sum and masking.

crypto.server adds each masked input into its running sum with :func:`mod_add_bytes_into`.

uint32 addition wraps mod 2^32 for free, and 2^bits divides 2^32, so every
operation is "wrap, then mask with 2^bits - 1". In-place updates keep the
server at O(d) memory however many clients report. The parallel Numba loops
beat ``np.add(acc, x, out=acc)`` on 2 cores (see benchmarks/), so all widths,
32 included, go through them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numba
import numpy as np
from numba import prange

from ._validate import (
    require_array,
    require_bits,
    require_same_length,
    require_writeable,
)

#: Columns per block in mod_sum: one block of the running sum stays in L1/L2
#: while every row is added into it.
_BLOCK = 1 << 13


def _mask(bits: int) -> np.uint32:
    return np.uint32((1 << bits) - 1)


@numba.njit(cache=True, parallel=True)
def _add_into(acc: np.ndarray, x: np.ndarray, mask: np.uint32) -> None:
    for i in prange(acc.shape[0]):
        acc[i] = (acc[i] + x[i]) & mask


@numba.njit(cache=True, parallel=True)
def _sub_into(acc: np.ndarray, x: np.ndarray, mask: np.uint32) -> None:
    for i in prange(acc.shape[0]):
        acc[i] = (acc[i] - x[i]) & mask


@numba.njit(cache=True)
def _add_block(acc: np.ndarray, x: np.ndarray) -> None:
    # Slices (not start+i indexing) let LLVM vectorise this loop.
    for i in range(acc.shape[0]):
        acc[i] = acc[i] + x[i]


@numba.njit(cache=True, parallel=True)
def _sum_rows(rows: np.ndarray, mask: np.uint32, out: np.ndarray) -> None:
    """Column-blocked: each block of ``out`` is finished before moving on."""
    n, d = rows.shape
    nblocks = (d + _BLOCK - 1) // _BLOCK
    for b in prange(nblocks):
        start = b * _BLOCK
        stop = min(start + _BLOCK, d)
        block = out[start:stop]
        block[:] = 0
        for r in range(n):
            _add_block(block, rows[r, start:stop])
        for i in range(block.shape[0]):
            block[i] &= mask


def _checked_pair(acc: object, x: object) -> tuple[np.ndarray, np.ndarray]:
    acc = require_array(acc, "acc", (np.uint32,), ndim=1)
    x = require_array(x, "x", (np.uint32,), ndim=1)
    require_writeable(acc, "acc")
    require_same_length(acc, "acc", x, "x")
    if np.may_share_memory(acc, x) and not _same_view(acc, x):
        x = x.copy()  # partially overlapping views would race in the parallel loop
    return acc, np.ascontiguousarray(x)


def _same_view(a: np.ndarray, b: np.ndarray) -> bool:
    """Element i of both arrays is the same memory, so in-place updates are safe."""
    return (
        a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
        and a.strides == b.strides
    )


def mod_add_into(acc: np.ndarray, x: np.ndarray, bits: int = 32) -> None:
    """``acc = (acc + x) mod 2^bits`` in place (uint32, 1-D, same length)."""
    acc, x = _checked_pair(acc, x)
    _apply_in_place(_add_into, acc, x, _mask(require_bits(bits)))


def mod_sub_into(acc: np.ndarray, x: np.ndarray, bits: int = 32) -> None:
    """``acc = (acc - x) mod 2^bits`` in place (uint32, 1-D, same length)."""
    acc, x = _checked_pair(acc, x)
    _apply_in_place(_sub_into, acc, x, _mask(require_bits(bits)))


def mod_sum(rows: np.ndarray, bits: int = 32) -> np.ndarray:
    """Column sums of a 2-D uint32 array mod 2^bits (zeros for no rows)."""
    rows = np.ascontiguousarray(require_array(rows, "rows", (np.uint32,), ndim=2))
    mask = _mask(require_bits(bits))
    out = np.empty(rows.shape[1], dtype=np.uint32)
    _sum_rows(rows, mask, out)
    return out


def _keystream_words(keystream: object, length: int) -> np.ndarray:
    """Little-endian uint32 view of a keystream buffer (copied only if misaligned)."""
    if isinstance(keystream, np.ndarray):
        require_array(keystream, "keystream", (np.uint8,), ndim=1)
        if not keystream.flags.c_contiguous:
            raise ValueError("keystream array must be C-contiguous")
    elif not isinstance(keystream, bytes | bytearray | memoryview):
        raise TypeError(
            "keystream must be bytes, bytearray, memoryview or a uint8 ndarray, "
            f"got {type(keystream).__name__}"
        )
    elif isinstance(keystream, memoryview) and not keystream.c_contiguous:
        raise ValueError("keystream memoryview must be C-contiguous")
    nbytes = keystream.nbytes if isinstance(keystream, np.ndarray | memoryview) else len(keystream)
    if nbytes != 4 * length:
        raise ValueError(
            f"keystream must hold exactly 4 bytes per coordinate: expected {4 * length} "
            f"bytes for {length} coordinates, got {nbytes}"
        )
    words = np.frombuffer(keystream, dtype="<u4")
    if sys.byteorder != "little":  # pragma: no cover - no big-endian CI
        words = words.astype(np.uint32)
    if not words.flags.aligned:  # e.g. a memoryview slice at an odd offset
        words = words.copy()
    return words


def _apply_in_place(
    kernel: Callable[..., None], acc: np.ndarray, x: np.ndarray, mask: np.uint32
) -> None:
    """Run an in-place kernel; a strided ``acc`` goes through a contiguous temporary
    so the kernels are compiled for contiguous arrays only."""
    if acc.flags.c_contiguous:
        kernel(acc, x, mask)
    else:
        tmp = np.ascontiguousarray(acc)
        kernel(tmp, x, mask)
        acc[...] = tmp


def mod_add_bytes_into(
    acc: np.ndarray,
    keystream: bytes | bytearray | memoryview | np.ndarray,
    sign: int,
    bits: int = 32,
) -> None:
    """Add (``sign=+1``) or subtract (``sign=-1``) a keystream, read as little-endian
    uint32 words, into ``acc`` mod 2^bits in place. The buffer is viewed, not copied
    (unless it is misaligned for uint32).
    """
    acc = require_array(acc, "acc", (np.uint32,), ndim=1)
    require_writeable(acc, "acc")
    if isinstance(sign, bool) or not isinstance(sign, int | np.integer):
        raise TypeError(f"sign must be the int +1 or -1, got {type(sign).__name__}")
    if sign not in (1, -1):
        raise ValueError(f"sign must be +1 or -1, got {sign}")
    mask = _mask(require_bits(bits))
    words = _keystream_words(keystream, acc.shape[0])
    _apply_in_place(_add_into if sign == 1 else _sub_into, acc, words, mask)
