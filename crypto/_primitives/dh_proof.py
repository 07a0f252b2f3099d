"""A proof that an X25519 shared secret is what the prover's advertised key gives.

Why: a recipient that cannot open a sealed share must show the server the key the
sender should have used, and a key the recipient merely *states* proves nothing (the
server cannot compute X25519(b, A) without a private key; the recipient could lie,
or the sender could have committed to another key, and nobody could tell which).
With this proof the server learns the true shared secret of one pair, checks it,
and judges every blame (issue 17, item 6).

How (Chaum-Pedersen, non-interactive by Fiat-Shamir, in the prime-order group of
edwards25519 that X25519 is birationally equivalent to). An X25519 public key is the
Montgomery u-coordinate of b*G; the Edwards point with y = (u - 1) / (u + 1) (sign
bit 0) is +-b*G, and u(P) = u(-P). The prover, holding the clamped scalar b with
B = b*G on Edwards (u(B) = its advertised key) and the peer's point A (from the
peer's advertised u), sends Z = b*A, c and z = r + c*b mod l, where c hashes
(context, B, A, Z, r*G, r*A). The verifier recomputes r*G = z*G - c*B and
r*A = z*A - c*Z and the hash. So log_G(B) = log_A(Z) except with probability ~2^-252,
and u(Z) is X25519(b, u_A), the very secret the prover's key agreement gave.

Only keys in the prime-order subgroup can take part (:func:`check_prime_order`):
honest keys always are (b*9); the server refuses other ones at advertisement.
Libsodium (through PyNaCl) does the group arithmetic; this module only maps
between the two curve forms with exact integer arithmetic mod 2^255 - 19.
"""

from __future__ import annotations

import hashlib
import os

import nacl.bindings as sodium
import nacl.exceptions

from sealagg.crypto._primitives.agreement import PUBLIC_KEY_BYTES, AgreementKey
from sealagg.crypto.errors import InvalidPublicKeyError, MalformedMessageError

__all__ = ["PROOF_BYTES", "check_prime_order", "prove_secret", "proven_secret"]

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_DOMAIN = b"sealagg/dh-proof/v1"
#: Z (32) + B (32) + c (32) + z (32).
PROOF_BYTES = 128


class _BadProofError(Exception):
    pass


def _edwards(u_bytes: bytes) -> bytes:
    """The Edwards encoding (sign bit 0) of the point whose Montgomery u is ``u_bytes``."""
    if len(u_bytes) != PUBLIC_KEY_BYTES:
        raise InvalidPublicKeyError("an X25519 public key is 32 bytes")
    u = int.from_bytes(u_bytes, "little")
    if u >= _P or (u + 1) % _P == 0:  # non-canonical, or the point u = -1 (no Edwards image)
        raise InvalidPublicKeyError("the X25519 public key is not a canonical curve point")
    y = (u - 1) * pow(u + 1, -1, _P) % _P
    encoded = y.to_bytes(32, "little")
    if not sodium.crypto_core_ed25519_is_valid_point(encoded):
        raise InvalidPublicKeyError(
            "the X25519 public key is not in the prime-order subgroup (a twist or torsion point)"
        )
    return encoded


def _montgomery(point: bytes) -> bytes:
    """The X25519 encoding (u = (1 + y) / (1 - y)) of an Edwards point."""
    y = int.from_bytes(point, "little") & ((1 << 255) - 1)
    u = (1 + y) * pow((1 - y) % _P, -1, _P) % _P
    return u.to_bytes(32, "little")


def check_prime_order(public: bytes, *, owner: str) -> None:
    """Refuse an X25519 key outside the prime-order subgroup (honest keys never are).

    The server runs it on every advertised key, so that any later blame about a pair
    can be proven with :func:`prove_secret` (the proof lives in that subgroup).
    """
    try:
        _edwards(public)
    except InvalidPublicKeyError as error:
        raise InvalidPublicKeyError(f"{owner}: {error}") from None


def _scalar(own: AgreementKey) -> bytes:
    """X25519's clamped scalar for ``own``, reduced mod l (same action on the subgroup)."""
    raw = bytearray(own.export_private_bytes_for_sharing())
    raw[0] &= 248
    raw[31] &= 127
    raw[31] |= 64
    return (int.from_bytes(raw, "little") % _L).to_bytes(32, "little")


def _challenge(context: bytes, b: bytes, a: bytes, z: bytes, r1: bytes, r2: bytes) -> bytes:
    digest = hashlib.sha512(_DOMAIN + context + b + a + z + r1 + r2).digest()
    return sodium.crypto_core_ed25519_scalar_reduce(digest)


def prove_secret(own: AgreementKey, peer_public: bytes, context: bytes) -> bytes:
    """A proof that X25519(own, peer_public) is what ``own``'s public key gives.

    ``context`` binds the proof to its use (round, parties, purpose). Raises
    :class:`InvalidPublicKeyError` when the peer's key is outside the prime-order subgroup.
    """
    s = _scalar(own)
    a = _edwards(peer_public)
    b = sodium.crypto_scalarmult_ed25519_base_noclamp(s)
    z = sodium.crypto_scalarmult_ed25519_noclamp(s, a)
    r = sodium.crypto_core_ed25519_scalar_reduce(os.urandom(64))
    r1 = sodium.crypto_scalarmult_ed25519_base_noclamp(r)
    r2 = sodium.crypto_scalarmult_ed25519_noclamp(r, a)
    c = _challenge(context, b, a, z, r1, r2)
    response = sodium.crypto_core_ed25519_scalar_add(r, sodium.crypto_core_ed25519_scalar_mul(c, s))
    return z + b + c + response


def proven_secret(proof: bytes, prover_public: bytes, peer_public: bytes, context: bytes) -> bytes:
    """The X25519 shared secret the proof establishes, or :class:`MalformedMessageError`.

    Checks that the proof's B is the prover's advertised key (u(B) = ``prover_public``)
    and that log_G(B) = log_A(Z); then returns u(Z), byte for byte what the prover's
    own ``exchange(peer_public)`` returned.
    """
    if not isinstance(proof, bytes) or len(proof) != PROOF_BYTES:
        raise MalformedMessageError(f"a key-agreement proof is {PROOF_BYTES} bytes")
    z, b, c, response = proof[:32], proof[32:64], proof[64:96], proof[96:]
    try:
        a = _edwards(peer_public)
        if not sodium.crypto_core_ed25519_is_valid_point(b) or _montgomery(b) != prover_public:
            raise _BadProofError
        if not sodium.crypto_core_ed25519_is_valid_point(z):
            raise _BadProofError
        if int.from_bytes(c, "little") >= _L or int.from_bytes(response, "little") >= _L:
            raise _BadProofError  # non-canonical scalars: one proof, one encoding
        r1 = sodium.crypto_core_ed25519_sub(
            sodium.crypto_scalarmult_ed25519_base_noclamp(response),
            sodium.crypto_scalarmult_ed25519_noclamp(c, b),
        )
        r2 = sodium.crypto_core_ed25519_sub(
            sodium.crypto_scalarmult_ed25519_noclamp(response, a),
            sodium.crypto_scalarmult_ed25519_noclamp(c, z),
        )
    except (_BadProofError, InvalidPublicKeyError, nacl.exceptions.CryptoError, ValueError):
        raise MalformedMessageError("the key-agreement proof does not verify") from None
    if _challenge(context, b, a, z, r1, r2) != c:
        raise MalformedMessageError("the key-agreement proof does not verify")
    return _montgomery(z)
