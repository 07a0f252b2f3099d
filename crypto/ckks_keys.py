"""CKKS key distribution: signed key adverts and contexts sealed to each data owner.

Every party advertises a fresh X25519 key signed with its identity key; the key
holder's advert also binds the SHA-256 of its public CKKS context, so the
appliance cannot slip in a context of its own (whose secret key it would hold).
When the secret context is shared, the key holder seals it to each data owner
with ChaCha20-Poly1305 under a key from X25519 + HKDF; the associated data binds
round, purpose, sender and recipient, so a sealed context cannot be moved to
another round or recipient.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from typing import Any

from sealagg.crypto._primitives.aead import open_sealed, seal
from sealagg.crypto._primitives.agreement import PUBLIC_KEY_BYTES, AgreementKey
from sealagg.crypto._primitives.kdf import derive_key
from sealagg.crypto._primitives.signing import IdentityKey, verify_signature
from sealagg.crypto.ckks import MAX_CONTEXT_BYTES, field, pack_message, unpack_message
from sealagg.crypto.errors import CkksKeyError, MalformedMessageError

_PURPOSE_CONTEXT = b"ckks-secret-context"
MAX_SEALED_BYTES = MAX_CONTEXT_BYTES + 64
SMALL_BYTES = 64 * 1024


def _id(index: int) -> bytes:
    return struct.pack(">I", index)


def advert_payload(round_id: bytes, index: int, public_key: bytes, context: bytes | None) -> bytes:
    digest = hashlib.sha256(context).digest() if context is not None else b"\x00" * 32
    return b"sealagg/ckks/advert/v1" + round_id + _id(index) + public_key + digest


def _associated_data(round_id: bytes, sender: int, recipient: int) -> bytes:
    return b"sealagg/ckks/seal/v1" + round_id + _PURPOSE_CONTEXT + _id(sender) + _id(recipient)


def _seal_key(raw: bytes, round_id: bytes, sender: int, recipient: int) -> bytes:
    return derive_key(
        raw, salt=round_id, info=b"sealagg/ckks/seal-key/v1" + _id(sender) + _id(recipient)
    )


@dataclasses.dataclass(frozen=True)
class Advert:
    """A verified key advert: the party's X25519 public key and (key holder) public context."""

    index: int
    public_key: bytes
    signature: bytes
    context: bytes | None

    def verify(self, round_id: bytes, identity_key: bytes, *, signer: str) -> Advert:
        verify_signature(
            identity_key,
            advert_payload(round_id, self.index, self.public_key, self.context),
            self.signature,
            signer=signer,
        )
        return self


def make_advert(
    round_id: bytes,
    index: int,
    identity: IdentityKey,
    agreement: AgreementKey,
    context: bytes | None,
) -> bytes:
    """Phase "keys", party → appliance."""
    sig = identity.sign(advert_payload(round_id, index, agreement.public_bytes, context))
    return pack_message(
        "ckks_keys", round_id, i=index, pk=agreement.public_bytes, s=sig, ctx=context
    )


def read_advert(data: bytes, round_id: bytes) -> Advert:
    body = unpack_message(data, "ckks_keys", round_id, max_bytes=MAX_CONTEXT_BYTES + SMALL_BYTES)
    return _advert_from(body)


def _advert_from(body: dict[str, Any]) -> Advert:
    pk, sig = field(body, "pk", bytes), field(body, "s", bytes)
    if len(pk) != PUBLIC_KEY_BYTES or len(sig) != 64:
        raise MalformedMessageError("advert: wrong key or signature length")
    return Advert(field(body, "i", int), pk, sig, field(body, "ctx", bytes, optional=True))


def roster_message(round_id: bytes, adverts: dict[int, Advert]) -> bytes:
    """Appliance → key holder: every data owner's advert, to seal the context to."""
    return pack_message(
        "ckks_roster",
        round_id,
        a={i: [a.public_key, a.signature] for i, a in adverts.items()},
    )


def read_roster(data: bytes, round_id: bytes) -> dict[int, Advert]:
    body = unpack_message(data, "ckks_roster", round_id, max_bytes=MAX_CONTEXT_BYTES)
    out = {}
    for index, value in field(body, "a", dict).items():
        if not isinstance(index, int) or not isinstance(value, list) or len(value) != 2:
            raise MalformedMessageError("roster: malformed entry")
        out[index] = _advert_from({"i": index, "pk": value[0], "s": value[1], "ctx": None})
    return out


def sealed_message(round_id: bytes, sealed: dict[int, bytes]) -> bytes:
    """Key holder → appliance: one sealed secret context per data owner (may be empty)."""
    return pack_message("ckks_sealed", round_id, s=sealed)


def read_sealed(data: bytes, round_id: bytes, members: int) -> dict[int, bytes]:
    body = unpack_message(
        data, "ckks_sealed", round_id, max_bytes=members * MAX_SEALED_BYTES + SMALL_BYTES
    )
    sealed = field(body, "s", dict)
    if not all(isinstance(k, int) and isinstance(v, bytes) for k, v in sealed.items()):
        raise MalformedMessageError("sealed contexts: expected {index: bytes}")
    return sealed


def bundle_message(round_id: bytes, key_holder: int, advert: Advert, sealed: bytes | None) -> bytes:
    """Appliance → data owner: the key holder's signed advert (with its public context)."""
    return pack_message(
        "ckks_bundle",
        round_id,
        i=key_holder,
        pk=advert.public_key,
        s=advert.signature,
        ctx=advert.context,
        sealed=sealed,
    )


def read_bundle(data: bytes, round_id: bytes) -> tuple[Advert, bytes | None]:
    body = unpack_message(data, "ckks_bundle", round_id, max_bytes=2 * MAX_SEALED_BYTES)
    advert = _advert_from(body)
    if advert.context is None:
        raise CkksKeyError("the key holder's advert carries no public context")
    return advert, field(body, "sealed", bytes, optional=True)


def seal_to(
    agreement: AgreementKey,
    round_id: bytes,
    sender: int,
    recipient: Advert,
    plaintext: bytes,
) -> bytes:
    key = _seal_key(agreement.exchange(recipient.public_key), round_id, sender, recipient.index)
    return seal(key, plaintext, _associated_data(round_id, sender, recipient.index))


def open_from(
    agreement: AgreementKey, round_id: bytes, sender: Advert, recipient: int, sealed: bytes
) -> bytes:
    """Open a context sealed to us; one opaque error if anything was altered or misrouted."""
    key = _seal_key(agreement.exchange(sender.public_key), round_id, sender.index, recipient)
    return open_sealed(key, sealed, _associated_data(round_id, sender.index, recipient))


def result_message(round_id: bytes, weighted_sum: bytes) -> bytes:
    """Key holder → appliance: the decrypted weighted sum [Σw·x, Σw] as float64 (only the sum)."""
    return pack_message("ckks_result", round_id, s=weighted_sum)


def read_result(data: bytes, round_id: bytes, dimension: int) -> bytes:
    body = unpack_message(data, "ckks_result", round_id, max_bytes=reply_limit(dimension))
    raw = field(body, "s", bytes)
    if len(raw) != 8 * (dimension + 1):
        raise MalformedMessageError(
            f"result has {len(raw) // 8} values, the model needs {dimension + 1}"
        )
    return raw


def contribution_message(
    round_id: bytes, position: int, total: int, index: int, upload: bytes
) -> bytes:
    """Appliance → key holder: one data owner's signed upload, verbatim (``position`` of
    ``total``). The key holder adds these up itself and decrypts nothing else; one upload per
    step keeps each step no larger than the sum message it replaces."""
    return pack_message("ckks_contribution", round_id, k=position, n=total, i=index, u=upload)


def read_contribution(data: bytes, round_id: bytes, max_upload: int) -> tuple[int, int, int, bytes]:
    """(position, total, contributor index, upload) of a forwarded contribution."""
    body = unpack_message(data, "ckks_contribution", round_id, max_bytes=max_upload + SMALL_BYTES)
    out = (
        field(body, "k", int),
        field(body, "n", int),
        field(body, "i", int),
        field(body, "u", bytes),
    )
    if not 0 <= out[0] < out[1]:
        raise MalformedMessageError("contribution: position outside 0..total-1")
    return out


def ack_message(round_id: bytes, position: int) -> bytes:
    """Key holder → appliance: contribution ``position`` was received (not yet decrypted)."""
    return pack_message("ckks_ack", round_id, k=position)


def refusal_message(round_id: bytes, reason: str) -> bytes:
    """Key holder → appliance: it refuses (a ghost, an unsigned or too small sum), and why."""
    return pack_message("ckks_refused", round_id, why=reason[:1000])


def reply_limit(dimension: int) -> int:
    """Largest key-holder answer in the decrypt phase: the result, an ack or a refusal."""
    return max(8 * (dimension + 1) + 256, SMALL_BYTES)


def read_refusal(data: bytes, round_id: bytes) -> str | None:
    """The key holder's reason if ``data`` is its refusal, else None (another message)."""
    try:
        body = unpack_message(data, "ckks_refused", round_id, max_bytes=SMALL_BYTES)
    except MalformedMessageError:
        return None
    return field(body, "why", str)


def read_key_holder_reply(
    data: bytes, round_id: bytes, dimension: int
) -> tuple[str, int | bytes | str]:
    """("ack", position), ("result", weighted sum bytes) or ("refused", reason)."""
    kinds = ("ckks_ack", "ckks_refused", "ckks_result")
    body = unpack_message(data, kinds, round_id, max_bytes=reply_limit(dimension))
    if body["t"] == "ckks_ack":
        return "ack", field(body, "k", int)
    if body["t"] == "ckks_refused":
        return "refused", field(body, "why", str)
    return "result", read_result(data, round_id, dimension)


__all__ = [
    "Advert",
    "CkksParty",
    "ack_message",
    "advert_payload",
    "bundle_message",
    "contribution_message",
    "make_advert",
    "open_from",
    "read_advert",
    "read_bundle",
    "read_contribution",
    "read_key_holder_reply",
    "read_refusal",
    "read_result",
    "read_roster",
    "read_sealed",
    "refusal_message",
    "reply_limit",
    "result_message",
    "roster_message",
    "seal_to",
    "sealed_message",
]


class CkksParty:
    """One party's round key: advertises it, seals contexts to peers, opens the one sent to it."""

    __slots__ = ("_agreement", "index", "round_id")

    def __init__(self, round_id: bytes, index: int) -> None:
        self.round_id = round_id
        self.index = index
        self._agreement = AgreementKey.generate()

    def advert(self, identity: IdentityKey, context: bytes | None) -> bytes:
        return make_advert(self.round_id, self.index, identity, self._agreement, context)

    def seal_for(self, recipient: Advert, plaintext: bytes) -> bytes:
        return seal_to(self._agreement, self.round_id, self.index, recipient, plaintext)

    def open_from(self, sender: Advert, sealed: bytes) -> bytes:
        return open_from(self._agreement, self.round_id, sender, self.index, sealed)

    def __reduce__(self) -> object:
        raise TypeError("CkksParty holds a secret key and cannot be pickled")
