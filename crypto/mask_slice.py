"""Any coordinate range of any mask, on its own: the seekable half of the mask PRG.

Every mask the protocol expands (a client's self mask keyed from its seed, each
pairwise mask keyed from a pair's agreed secret) is the AES-256-CTR keystream of a
32-byte key read as little-endian uint32 words: coordinate ``i`` is bytes
``4i .. 4i+4`` of the stream. Coordinate ``a`` therefore sits in keystream block
``⌊4a/16⌋`` at byte ``4a mod 16``, so :mod:`crypto._primitives.prg` starts the CTR
counter at that block and skips the first ``4a mod 16`` bytes. The counter is a
128-bit big-endian block number under a key used for one mask only (HKDF over a
per-round, per-pair secret), so no counter value ever repeats under a key, whatever
ranges are generated, in any order, on any machine.

Why it matters: striped aggregation (``sealagg.appliance.scale``) gives each stripe
one coordinate range; the stripe removes exactly its range of every mask the
coordinator's unmask plan lists, and no process ever expands a whole mask. The
slices of a mask are bit-identical to the same slices of the sequential stream
(tests/scale/test_mask_slice.py checks it against an independent AES-CTR oracle), so
a striped sum equals the one-process sum bit for bit.

Transport-free and key-agnostic: callers pass the mask keys the server's unmasking
derived (a striped round's :class:`crypto.striped_server.StripedResult` carries them); this
module never derives or stores a secret.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sealagg.crypto._primitives.prg import SEED_BYTES, apply_masks, expand_mask

#: Bytes per coordinate in the ring Z_(2^32): one little-endian uint32 word.
WORD_BYTES = 4
#: Bytes per AES block (one CTR counter value).
BLOCK_BYTES = 16

__all__ = [
    "BLOCK_BYTES",
    "SEED_BYTES",
    "WORD_BYTES",
    "apply_mask_range",
    "counter_position",
    "mask_range",
]


def counter_position(start: int) -> tuple[int, int]:
    """Where coordinate ``start`` begins: (CTR block number, bytes to skip in that block)."""
    if start < 0:
        raise ValueError("a coordinate offset is non-negative")
    return (WORD_BYTES * start) // BLOCK_BYTES, (WORD_BYTES * start) % BLOCK_BYTES


def mask_range(key: bytes, start: int, length: int) -> np.ndarray:
    """Coordinates ``start .. start+length`` of the mask keyed ``key``, as a new uint32 array."""
    if length < 0:
        raise ValueError("a range length is non-negative")
    counter_position(start)  # validates the offset
    return expand_mask(key, length, offset=start)


def apply_mask_range(
    target: np.ndarray, masks: Sequence[tuple[bytes, int]], start: int
) -> np.ndarray:
    """Add (+1) or subtract (-1) coordinates ``start .. start+len(target)`` of each keyed
    mask into ``target`` mod 2^32, in place; returns ``target``.

    A stripe owning ``[a, b)`` calls this with its slice of the sum and the unmask plan:
    it removes exactly its range of every mask, generating nothing outside it.
    """
    counter_position(start)
    for key, _ in masks:
        if len(key) != SEED_BYTES:
            raise ValueError(f"a mask key is {SEED_BYTES} bytes")
    apply_masks(target, masks, offset=start)
    return target
