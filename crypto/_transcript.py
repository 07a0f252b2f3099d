"""Byte strings that get signed, authenticated or fed to HKDF.

Each starts with a distinct label and binds the round, the phase and the
parties, so no signature, ciphertext or key can be reused in another context.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import numpy as np

from sealagg.crypto._primitives.kdf import derive_key
from sealagg.crypto.messages import Phase


def _id(client_id: int) -> bytes:
    return struct.pack(">I", client_id)


def _pair(u: int, v: int) -> bytes:
    return _id(min(u, v)) + _id(max(u, v))


def advertise_payload(round_id: bytes, client_id: int, cipher_pk: bytes, mask_pk: bytes) -> bytes:
    return b"sealagg/advertise/v1" + round_id + _id(client_id) + cipher_pk + mask_pk


def encode_ids(ids: Iterable[int]) -> bytes:
    """Sorted client ids as big-endian uint32s (encode once, sign and verify many times)."""
    return np.asarray(sorted(ids), dtype=">u4").tobytes()


def survivors_payload(round_id: bytes, client_id: int, survivors_blob: bytes) -> bytes:
    """What ``client_id`` signs in the consistency check (blob from :func:`encode_ids`)."""
    return b"sealagg/survivors/v1" + round_id + _id(client_id) + survivors_blob


def share_associated_data(round_id: bytes, sender: int, recipient: int) -> bytes:
    return b"sealagg/share/v1" + round_id + bytes([Phase.SHARE_KEYS]) + _id(sender) + _id(recipient)


def share_key(raw_secret: bytes, round_id: bytes, u: int, v: int) -> bytes:
    """Symmetric AEAD key for shares between u and v (both directions; AD tells them apart)."""
    return derive_key(raw_secret, salt=round_id, info=b"sealagg/share-key/v1" + _pair(u, v))


def pairwise_mask_key(raw_secret: bytes, round_id: bytes, u: int, v: int) -> bytes:
    return derive_key(raw_secret, salt=round_id, info=b"sealagg/pairwise-mask/v1" + _pair(u, v))


def self_mask_key(seed: bytes, round_id: bytes) -> bytes:
    return derive_key(seed, salt=round_id, info=b"sealagg/self-mask/v1")


def pairwise_sign(owner: int, peer: int) -> int:
    """The lower id adds the pairwise mask, the higher one subtracts it, so they cancel."""
    return 1 if owner < peer else -1


SHARE_PLAINTEXT_HEADER = struct.Struct(">II")


def share_plaintext(sender: int, recipient: int, mask_key_share: bytes, self_share: bytes) -> bytes:
    return SHARE_PLAINTEXT_HEADER.pack(sender, recipient) + mask_key_share + self_share
