"""Byte strings that get signed, authenticated or fed to HKDF.

Each starts with a distinct label and binds the round, the phase and the
parties, so no signature, ciphertext or key can be reused in another context.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from sealagg.crypto._primitives.agreement import check_public_key
from sealagg.crypto._primitives.dh_proof import check_prime_order
from sealagg.crypto._primitives.kdf import derive_key
from sealagg.crypto._primitives.signing import verify_signature
from sealagg.crypto.messages import PeerKeys, Phase

if TYPE_CHECKING:
    from sealagg.crypto.config import RoundConfig


def _id(client_id: int) -> bytes:
    return struct.pack(">I", client_id)


def _pair(u: int, v: int) -> bytes:
    return _id(min(u, v)) + _id(max(u, v))


def advertise_payload(
    round_id: bytes,
    client_id: int,
    cipher_pk: bytes,
    mask_pk: bytes,
    seed_commitment: bytes,
    coin_commitment: bytes,
    binding: bytes = b"",
) -> bytes:
    """What a client signs for its keys; ``binding`` is an asynchronous buffer's claim of
    its base version and the parent (:meth:`BufferContext.advertised`), empty otherwise."""
    return (
        b"sealagg/advertise/v3"
        + round_id
        + _id(client_id)
        + cipher_pk
        + mask_pk
        + seed_commitment
        + coin_commitment
        + binding
    )


def advertise_binding(config: RoundConfig, client_id: int) -> bytes:
    """The buffer claim a member signs into its advertisement (b"" outside async buffers)."""
    return b"" if config.buffer is None else config.buffer.advertised(client_id)


def seed_commitment(round_id: bytes, client_id: int, seed: bytes) -> bytes:
    """Hash commitment to a self-mask seed: hiding (the seed is 32 uniform bytes), binding
    (SHA-256 collision resistance). A seed reconstructed from shares must match it."""
    return hashlib.sha256(b"sealagg/self-seed/v1" + round_id + _id(client_id) + seed).digest()


def seed_matches(commitment: bytes, round_id: bytes, client_id: int, seed: bytes) -> bool:
    return hmac.compare_digest(commitment, seed_commitment(round_id, client_id, seed))


def transcript_hash(config: RoundConfig, advertised: Mapping[int, PeerKeys]) -> bytes:
    """SHA-256 of the whole round transcript up to the key directory.

    Covers the round id, the roster version, every public parameter (participants and
    their identity keys, degree, threshold, minimum survivors, vector length) and every
    advertised key with its seed and coin commitments. Consistency signatures bind it, so a
    signature made in another round (even one reusing the round id) never verifies here;
    the SecAgg+ graph seed is drawn from it and the revealed coins
    (:func:`crypto.coins.graph_seed`). Signatures over the keys are left out: they add
    nothing a verifier needs and a signer could vary them.
    """
    h = hashlib.sha256(b"sealagg/transcript/v2")
    h.update(config.round_id)
    h.update(
        struct.pack(
            ">QIIIIQ",
            config.roster_version,
            len(config.identities),
            config.degree,
            config.threshold,
            config.minimum_survivors,
            config.vector_length,
        )
    )
    for u in sorted(config.identities):
        h.update(_id(u) + config.identities[u])
    if config.buffer is not None:  # absent from synchronous rounds: their hash is unchanged
        h.update(config.buffer.digest())
    h.update(_id(len(advertised)))
    for u in sorted(advertised):
        k = advertised[u]
        h.update(_id(u) + k.cipher_public + k.mask_public + k.seed_commitment + k.coin_commitment)
    return h.digest()


def encode_ids(ids: Iterable[int]) -> bytes:
    """Sorted client ids as big-endian uint32s (encode once, sign and verify many times)."""
    return np.asarray(sorted(ids), dtype=">u4").tobytes()


def survivors_payload(
    round_id: bytes, transcript: bytes, client_id: int, survivors_blob: bytes
) -> bytes:
    """What ``client_id`` signs in the consistency check (blob from :func:`encode_ids`),
    bound to the round's :func:`transcript_hash` so it cannot be replayed elsewhere."""
    return b"sealagg/survivors/v2" + round_id + transcript + _id(client_id) + survivors_blob


KEY_SHARE = b"k"
SELF_SHARE = b"b"


def share_commitment(round_id: bytes, owner: int, holder: int, which: bytes, share: bytes) -> bytes:
    """Commitment to one Shamir share (``which``: :data:`KEY_SHARE` or :data:`SELF_SHARE`)
    its owner gives ``holder``. Hiding: a share of a 32-byte secret carries far more than
    128 bits the server does not know. Binding: SHA-256. Signed with the sealed share, so
    a holder that reveals anything else at unmasking is caught by name."""
    return hashlib.sha256(
        b"sealagg/share-commit/v1" + round_id + _id(owner) + _id(holder) + which + share
    ).digest()


def share_signature_payload(
    round_id: bytes,
    transcript: bytes,
    sender: int,
    recipient: int,
    ciphertext: bytes,
    key_share_commitment: bytes,
    self_share_commitment: bytes,
) -> bytes:
    """What a sender signs for each sealed share (its proof of origin if it is bad)."""
    return (
        b"sealagg/sealed-share/v2"
        + round_id
        + transcript
        + _id(sender)
        + _id(recipient)
        + key_share_commitment
        + self_share_commitment
        + ciphertext
    )


CIPHER_PAIR = b"cipher"
MASK_PAIR = b"mask"


def proof_context(
    round_id: bytes, transcript: bytes, prover: int, peer: int, which: bytes
) -> bytes:
    """What a key-agreement proof in a blame is bound to: this round's transcript, the
    prover, the peer and which of the pair's two secrets (cipher or mask)."""
    return b"sealagg/blame-proof/v1" + round_id + transcript + _id(prover) + _id(peer) + which


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


def check_advertisement(
    config: RoundConfig, client_id: int, keys: PeerKeys, *, check_keys: bool = True
) -> None:
    """The checks every party makes of one advertisement: the identity key's signature over
    both public keys and both commitments, then both keys usable (not low-order:
    :class:`~sealagg.crypto.errors.InvalidPublicKeyError`). The server (``check_keys``) also
    requires the prime-order subgroup, where every blame about a pair can be proven."""
    payload = advertise_payload(
        config.round_id,
        client_id,
        keys.cipher_public,
        keys.mask_public,
        keys.seed_commitment,
        keys.coin_commitment,
        advertise_binding(config, client_id),
    )
    verify_signature(
        config.identities[client_id], payload, keys.signature, signer=f"client {client_id}"
    )
    if check_keys:  # a client skips it: its own key agreements right after are the check
        for public in (keys.cipher_public, keys.mask_public):
            check_public_key(public, owner=f"client {client_id}")
            check_prime_order(public, owner=f"client {client_id}")
