"""The protocol's wire schema: typed, versioned messages in msgpack, never pickle.

Every message is a map ``{"v": version, "t": type, "r": round_id, ...fields}``.
Decoding checks the version, the type, every field's type and size, and rejects
unknown or missing fields, so a handler only ever sees well-formed values.
Sender identity is *not* a field: it comes from the transport (the client's TLS
certificate), and the server passes it in alongside the decoded message.

Messages are grouped by phase; client→server messages first, then server→client.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import itertools
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import msgpack

from sealagg.crypto.errors import MalformedMessageError, UnsupportedVersionError

#: 2: coin commitments and reveals (the graph seed), per-share commitments, proven blames.
SCHEMA_VERSION = 2
ROUND_ID_BYTES = 32
MAX_CLIENT_ID = 2**31 - 1
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
SHARE_BYTES = 44  # a 32-byte secret as 11 field elements of 4 bytes
MAX_SEALED_SHARE_BYTES = 256
#: Bytes of one key-agreement proof (:mod:`crypto._primitives.dh_proof`).
PROOF_BYTES = 128
#: Upper bound on one encoded blame in a masked input (a signed share plus two proofs).
MAX_BLAME_BYTES = MAX_SEALED_SHARE_BYTES + 512
#: Upper bound on any decoded message, checked before msgpack allocates.
MAX_MESSAGE_BYTES = 1 << 31


class Phase(enum.IntEnum):
    """Protocol phases in order; bound into signatures and associated data."""

    ADVERTISE_KEYS = 0
    REVEAL_COINS = 1
    SHARE_KEYS = 2
    MASKED_INPUT = 3
    CONSISTENCY_CHECK = 4
    UNMASKING = 5


# --- field validators -------------------------------------------------------


def _fail(field: str, why: str) -> MalformedMessageError:
    return MalformedMessageError(f"field {field!r}: {why}")


def _check_bytes(
    field: str, value: Any, size: int | None = None, max_size: int | None = None
) -> bytes:
    if not isinstance(value, bytes):
        raise _fail(field, f"expected bytes, got {type(value).__name__}")
    if size is not None and len(value) != size:
        raise _fail(field, f"expected {size} bytes, got {len(value)}")
    if max_size is not None and len(value) > max_size:
        raise _fail(field, f"at most {max_size} bytes, got {len(value)}")
    return value


def _check_client_id(field: str, value: Any) -> int:
    if type(value) is not int or not 1 <= value <= MAX_CLIENT_ID:
        raise _fail(field, f"client ids are integers in 1..{MAX_CLIENT_ID}")
    return value


def _check_id_list(field: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list | tuple):
        raise _fail(field, "expected a list of client ids")
    ids = tuple(_check_client_id(field, v) for v in value)
    if any(a >= b for a, b in itertools.pairwise(ids)):
        raise _fail(field, "client ids must be strictly increasing")
    return ids


def _check_id_map(field: str, value: Any, check_value: Callable[[str, Any], Any]) -> dict[int, Any]:
    if not isinstance(value, dict):
        raise _fail(field, "expected a map keyed by client id")
    return {_check_client_id(field, k): check_value(f"{field}[{k}]", v) for k, v in value.items()}


COMMITMENT_BYTES = 32
COIN_BYTES = 32


@dataclasses.dataclass(frozen=True)
class PeerKeys:
    """One client's advertised keys as relayed by the server.

    ``seed_commitment`` is a hash commitment to the client's self-mask seed, so every
    reconstruction of the seed can be checked against it (a bad share cannot slip a
    wrong seed in). ``coin_commitment`` commits to the client's fresh coin for the
    graph seed, revealed only once every commitment is fixed (:mod:`crypto.coins`).
    The signature covers both public keys and both commitments.
    """

    cipher_public: bytes
    mask_public: bytes
    seed_commitment: bytes
    coin_commitment: bytes
    signature: bytes


def _check_peer_keys(field: str, value: Any) -> PeerKeys:
    if isinstance(value, PeerKeys):
        value = _peer_keys_list(value)
    if not isinstance(value, list | tuple) or len(value) != 5:
        raise _fail(
            field,
            "expected [cipher_public, mask_public, seed_commitment, coin_commitment, signature]",
        )
    return PeerKeys(
        _check_bytes(field, value[0], PUBLIC_KEY_BYTES),
        _check_bytes(field, value[1], PUBLIC_KEY_BYTES),
        _check_bytes(field, value[2], COMMITMENT_BYTES),
        _check_bytes(field, value[3], COMMITMENT_BYTES),
        _check_bytes(field, value[4], SIGNATURE_BYTES),
    )


def _peer_keys_list(k: PeerKeys) -> list[bytes]:
    return [k.cipher_public, k.mask_public, k.seed_commitment, k.coin_commitment, k.signature]


@dataclasses.dataclass(frozen=True)
class SignedShare:
    """A sealed share pair, signed by its sender with a commitment to each share inside.

    The signature (over round, transcript, sender, recipient, ciphertext and both
    commitments) lets the recipient prove who sent a share it cannot open or whose
    contents do not match the commitments; the commitments let the server check each
    share a holder reveals at unmasking, so a holder that lies is caught by name.
    """

    ciphertext: bytes
    key_share_commitment: bytes
    self_share_commitment: bytes
    signature: bytes


def _check_signed_share(field: str, value: Any) -> SignedShare:
    if isinstance(value, SignedShare):
        value = _signed_share_list(value)
    if not isinstance(value, list | tuple) or len(value) != 4:
        raise _fail(
            field,
            "expected [ciphertext, key_share_commitment, self_share_commitment, signature]",
        )
    return SignedShare(
        _check_bytes(field, value[0], max_size=MAX_SEALED_SHARE_BYTES),
        _check_bytes(field, value[1], COMMITMENT_BYTES),
        _check_bytes(field, value[2], COMMITMENT_BYTES),
        _check_bytes(field, value[3], SIGNATURE_BYTES),
    )


def _signed_share_list(s: SignedShare) -> list[bytes]:
    return [s.ciphertext, s.key_share_commitment, s.self_share_commitment, s.signature]


@dataclasses.dataclass(frozen=True)
class Blame:
    """A recipient's evidence that a sender's signed share is bad.

    ``share`` is the signed share as relayed. ``cipher_proof`` and ``mask_proof`` prove
    the pair's two X25519 secrets (:mod:`crypto._primitives.dh_proof`): the server
    derives the share key from the first and opens the share itself (the key opens only
    what these two exchanged, which the accused holds anyway), and the pairwise-mask
    key from the second, to remove the accused's half of the mask the blamer left out.
    Nothing in a blame is taken on the blamer's word, so every blame is judged.
    """

    share: SignedShare
    cipher_proof: bytes
    mask_proof: bytes


def _check_blame(field: str, value: Any) -> Blame:
    if isinstance(value, Blame):
        value = [_signed_share_list(value.share), value.cipher_proof, value.mask_proof]
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise _fail(field, "expected [signed_share, cipher_proof, mask_proof]")
    return Blame(
        _check_signed_share(field, value[0]),
        _check_bytes(field, value[1], PROOF_BYTES),
        _check_bytes(field, value[2], PROOF_BYTES),
    )


def _blame_list(b: Blame) -> list[Any]:
    return [_signed_share_list(b.share), b.cipher_proof, b.mask_proof]


def _coin(field: str, v: Any) -> bytes:
    return _check_bytes(field, v, COIN_BYTES)


def _share(field: str, v: Any) -> bytes:
    return _check_bytes(field, v, SHARE_BYTES)


def _signature(field: str, v: Any) -> bytes:
    return _check_bytes(field, v, SIGNATURE_BYTES)


# --- messages -------------------------------------------------------------------


def _bin_header(length: int) -> bytes:
    """msgpack's bin 8/16/32 header for ``length`` bytes, as ``packb`` writes it."""
    if length < 1 << 8:
        return b"\xc4" + length.to_bytes(1, "big")
    if length < 1 << 16:
        return b"\xc5" + length.to_bytes(2, "big")
    return b"\xc6" + length.to_bytes(4, "big")


@dataclasses.dataclass(frozen=True)
class Message(abc.ABC):
    """Base of every protocol message; ``round_id`` ties it to one round."""

    TYPE: ClassVar[str] = ""
    PHASE: ClassVar[Phase]
    round_id: bytes

    @abc.abstractmethod
    def _fields(self) -> dict[str, Any]:
        """The message's own fields, as msgpack-ready values."""

    @classmethod
    @abc.abstractmethod
    def _from_fields(cls, round_id: bytes, fields: dict[str, Any]) -> Message:
        """Build the message from decoded fields, validating each."""

    def encode(self) -> bytes:
        body = {"v": SCHEMA_VERSION, "t": self.TYPE, "r": self.round_id, **self._fields()}
        return msgpack.packb(body, use_bin_type=True)

    def encode_parts(self) -> list[bytes | memoryview]:
        """``encode()`` as buffers to send back to back (a large field is not copied)."""
        return [self.encode()]


@dataclasses.dataclass(frozen=True)
class AdvertiseKeys(Message):
    """Phase 0, client→server: two fresh X25519 public keys, a commitment to the
    self-mask seed and one to the graph coin, signed by the identity key."""

    TYPE: ClassVar[str] = "advertise_keys"
    PHASE: ClassVar[Phase] = Phase.ADVERTISE_KEYS
    keys: PeerKeys

    def _fields(self) -> dict[str, Any]:
        return {"k": _peer_keys_list(self.keys)}

    @classmethod
    def _from_fields(cls, round_id: bytes, f: dict[str, Any]) -> AdvertiseKeys:
        return cls(round_id, _check_peer_keys("k", f["k"]))


@dataclasses.dataclass(frozen=True)
class KeyDirectory(Message):
    """Phase 0, server→client: every advertised key of the round (the transcript).

    All of them, not only the neighbours': the graph is drawn from their hash, and the
    consistency signatures bind it, so every client must see the whole transcript.
    """

    TYPE: ClassVar[str] = "key_directory"
    PHASE: ClassVar[Phase] = Phase.ADVERTISE_KEYS
    keys: Mapping[int, PeerKeys]

    def _fields(self) -> dict[str, Any]:
        return {"k": {u: _peer_keys_list(k) for u, k in self.keys.items()}}

    @classmethod
    def _from_fields(cls, round_id: bytes, f: dict[str, Any]) -> KeyDirectory:
        return cls(round_id, _check_id_map("k", f["k"], _check_peer_keys))


@dataclasses.dataclass(frozen=True)
class RevealCoin(Message):
    """Phase 1, client→server: the coin committed in the advertisement, once every
    commitment of the round is fixed (the key directory)."""

    TYPE: ClassVar[str] = "reveal_coin"
    PHASE: ClassVar[Phase] = Phase.REVEAL_COINS
    coin: bytes

    def _fields(self) -> dict[str, Any]:
        return {"c": self.coin}

    @classmethod
    def _from_fields(cls, round_id: bytes, f: dict[str, Any]) -> RevealCoin:
        return cls(round_id, _coin("c", f["c"]))


@dataclasses.dataclass(frozen=True)
class CoinDirectory(Message):
    """Phase 1, server→client: every committed client's revealed coin.

    All of them or the round is over: a client checks that the map covers exactly the
    key directory's clients and that each coin opens its commitment.
    """

    TYPE: ClassVar[str] = "coin_directory"
    PHASE: ClassVar[Phase] = Phase.REVEAL_COINS
    coins: Mapping[int, bytes]

    def _fields(self) -> dict[str, Any]:
        return {"c": dict(self.coins)}

    @classmethod
    def _from_fields(cls, round_id: bytes, f: dict[str, Any]) -> CoinDirectory:
        return cls(round_id, _check_id_map("c", f["c"], _coin))


@dataclasses.dataclass(frozen=True)
class ShareKeys(Message):
    """Phase 2, client→server: one signed sealed share pair per neighbour, keyed by recipient."""

    TYPE: ClassVar[str] = "share_keys"
    PHASE: ClassVar[Phase] = Phase.SHARE_KEYS
    sealed_shares: Mapping[int, SignedShare]

    def _fields(self) -> dict[str, Any]:
        return {"s": {v: _signed_share_list(x) for v, x in self.sealed_shares.items()}}

    @classmethod
    def _from_fields(cls, round_id: bytes, f: dict[str, Any]) -> ShareKeys:
        return cls(round_id, _check_id_map("s", f["s"], _check_signed_share))


@dataclasses.dataclass(frozen=True)
class ShareBundle(Message):
    """Phase 2, server→client: the signed sealed shares addressed to the recipient, by sender."""

    TYPE: ClassVar[str] = "share_bundle"
    PHASE: ClassVar[Phase] = Phase.SHARE_KEYS
    sealed_shares: Mapping[int, SignedShare]

    def _fields(self) -> dict[str, Any]:
        return {"s": {u: _signed_share_list(x) for u, x in self.sealed_shares.items()}}

    @classmethod
    def _from_fields(cls, round_id: bytes, f: dict[str, Any]) -> ShareBundle:
        return cls(round_id, _check_id_map("s", f["s"], _check_signed_share))


@dataclasses.dataclass(frozen=True)
class MaskedInput(Message):
    """Phase 3, client→server: y = x + PRG(b) + Σ ±PRG(s_uv) mod 2^32, little-endian uint32.

    ``blames`` (keyed by the accused sender) name neighbours whose signed share did not
    open or did not match its commitments; the client left their pairwise masks out of
    ``y``.
    """

    TYPE: ClassVar[str] = "masked_input"
    PHASE: ClassVar[Phase] = Phase.MASKED_INPUT
    vector: bytes | memoryview  # a memoryview lets the client skip one copy of a large vector
    blames: Mapping[int, Blame] = dataclasses.field(default_factory=dict)

    def _fields(self) -> dict[str, Any]:
        # "y" last: encode_parts and masked_input_view rely on the vector ending the map.
        blames = {u: _blame_list(b) for u, b in self.blames.items()}
        return {"b": blames, "y": self.vector}

    def encode_parts(self) -> list[bytes | memoryview]:
        """The msgpack bytes of ``encode()`` up to the vector, then the vector itself: the
        same bytes without copying megabytes into a new buffer."""
        vector = memoryview(self.vector).cast("B")
        if self.blames:  # rare: the plain encoding
            return [self.encode()]
        return [masked_input_prefix(self.round_id, len(vector)), vector]

    @classmethod
    def _from_fields(cls, round_id: bytes, f: dict[str, Any]) -> MaskedInput:
        vector = _check_bytes("y", f["y"])
        if len(vector) % 4:
            raise _fail("y", "length is not a whole number of uint32 coordinates")
        return cls(round_id, vector, _check_id_map("b", f["b"], _check_blame))


@dataclasses.dataclass(frozen=True)
class SurvivorList(Message):
    """Phase 4, server→client: who sent a masked input (U3)."""

    TYPE: ClassVar[str] = "survivor_list"
    PHASE: ClassVar[Phase] = Phase.CONSISTENCY_CHECK
    survivors: tuple[int, ...]

    def _fields(self) -> dict[str, Any]:
        return {"u": list(self.survivors)}

    @classmethod
    def _from_fields(cls, round_id: bytes, f: dict[str, Any]) -> SurvivorList:
        return cls(round_id, _check_id_list("u", f["u"]))


@dataclasses.dataclass(frozen=True)
class ConsistencySignature(Message):
    """Phase 4, client→server: the client's signature over the survivor list it was shown."""

    TYPE: ClassVar[str] = "consistency_signature"
    PHASE: ClassVar[Phase] = Phase.CONSISTENCY_CHECK
    signature: bytes

    def _fields(self) -> dict[str, Any]:
        return {"g": self.signature}

    @classmethod
    def _from_fields(cls, round_id: bytes, f: dict[str, Any]) -> ConsistencySignature:
        return cls(round_id, _signature("g", f["g"]))


@dataclasses.dataclass(frozen=True)
class UnmaskRequest(Message):
    """Phase 5, server→client: survivors with their signatures, and who dropped.

    The client reveals self-mask shares for ``survivors`` and mask-key shares for
    ``dropped``; a peer in both lists is refused.
    """

    TYPE: ClassVar[str] = "unmask_request"
    PHASE: ClassVar[Phase] = Phase.UNMASKING
    survivors: tuple[int, ...]
    signatures: Mapping[int, bytes]
    dropped: tuple[int, ...]

    def _fields(self) -> dict[str, Any]:
        return {"u": list(self.survivors), "g": dict(self.signatures), "d": list(self.dropped)}

    @classmethod
    def _from_fields(cls, round_id: bytes, f: dict[str, Any]) -> UnmaskRequest:
        return cls(
            round_id,
            _check_id_list("u", f["u"]),
            _check_id_map("g", f["g"], _signature),
            _check_id_list("d", f["d"]),
        )


@dataclasses.dataclass(frozen=True)
class UnmaskShares(Message):
    """Phase 5, client→server: self-mask shares of survivors, mask-key shares of dropped peers."""

    TYPE: ClassVar[str] = "unmask_shares"
    PHASE: ClassVar[Phase] = Phase.UNMASKING
    self_mask_shares: Mapping[int, bytes]
    mask_key_shares: Mapping[int, bytes]

    def _fields(self) -> dict[str, Any]:
        return {"b": dict(self.self_mask_shares), "s": dict(self.mask_key_shares)}

    @classmethod
    def _from_fields(cls, round_id: bytes, f: dict[str, Any]) -> UnmaskShares:
        return cls(round_id, _check_id_map("b", f["b"], _share), _check_id_map("s", f["s"], _share))


_FIELDS: dict[str, frozenset[str]] = {
    AdvertiseKeys.TYPE: frozenset("k"),
    KeyDirectory.TYPE: frozenset("k"),
    RevealCoin.TYPE: frozenset("c"),
    CoinDirectory.TYPE: frozenset("c"),
    ShareKeys.TYPE: frozenset("s"),
    ShareBundle.TYPE: frozenset("s"),
    MaskedInput.TYPE: frozenset({"b", "y"}),
    SurvivorList.TYPE: frozenset("u"),
    ConsistencySignature.TYPE: frozenset("g"),
    UnmaskRequest.TYPE: frozenset({"u", "g", "d"}),
    UnmaskShares.TYPE: frozenset({"b", "s"}),
}
_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        AdvertiseKeys,
        KeyDirectory,
        RevealCoin,
        CoinDirectory,
        ShareKeys,
        ShareBundle,
        MaskedInput,
        SurvivorList,
        ConsistencySignature,
        UnmaskRequest,
        UnmaskShares,
    )
}


def masked_input_prefix(round_id: bytes, vector_bytes: int) -> bytes:
    """The encoding of a MaskedInput up to its vector: an empty ``y`` packed, with its bin
    header swapped for the one of ``vector_bytes`` (``y`` is the map's last entry)."""
    return MaskedInput(round_id, b"").encode()[:-2] + _bin_header(vector_bytes)


def masked_input_view(
    data: bytes | bytearray | memoryview, round_id: bytes, vector_bytes: int
) -> MaskedInput | None:
    """``data`` as a MaskedInput of ``vector_bytes`` for ``round_id`` whose vector is a view
    into ``data``, if ``data`` is exactly that message's encoding; else None (``decode``
    then parses it and names what is wrong). Saves copying megabytes out of an upload."""
    prefix = masked_input_prefix(round_id, vector_bytes)
    view = memoryview(data).cast("B")
    if len(view) != len(prefix) + vector_bytes or view[: len(prefix)] != prefix:
        return None
    return MaskedInput(round_id, view[len(prefix) :])


def decode(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """Parse and validate one message; raise :class:`MalformedMessageError` otherwise."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMessageError("a message is bytes")
    if len(data) > max_bytes:
        raise MalformedMessageError(f"message of {len(data)} bytes exceeds {max_bytes}")
    try:
        body = msgpack.unpackb(
            data, raw=False, strict_map_key=False, use_list=True, max_bin_len=max_bytes
        )
    except (
        ValueError,
        TypeError,
        msgpack.ExtraData,
        msgpack.FormatError,
        msgpack.StackError,
    ) as exc:
        raise MalformedMessageError(f"not a msgpack message: {exc}") from None
    if not isinstance(body, dict):
        raise MalformedMessageError("a message is a map")
    version = body.pop("v", None)
    if version != SCHEMA_VERSION:
        raise UnsupportedVersionError(f"unsupported schema version {version!r}")
    kind = body.pop("t", None)
    cls = _TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise MalformedMessageError(f"unknown message type {kind!r}")
    round_id = _check_bytes("r", body.pop("r", None), ROUND_ID_BYTES)
    if set(body) != _FIELDS[kind]:
        raise MalformedMessageError(
            f"{kind}: expected fields {sorted(_FIELDS[kind])}, got {sorted(map(str, body))}"
        )
    return cls._from_fields(round_id, body)
