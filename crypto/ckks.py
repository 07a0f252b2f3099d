"""CKKS homomorphic sums: parameters, whole-model packing, the running sum, decryption.

The flattened update x (d values) and the client's weight w are packed as
[w·x_1, …, w·x_d, w] across ⌈(d+1)/slots⌉ ciphertexts (not one ciphertext per
layer: a 10-value layer would otherwise cost a whole ciphertext). The appliance
adds ciphertexts as they arrive under a *public* context; the key holder
decrypts the sum and the appliance divides by the Σw found in the last slot.

Parameters are validated before use: a setting that leaves no level for one
plain multiplication, is below 128-bit security, or whose worst-case error for
the round exceeds a limit is refused with the reason (:class:`CkksParameterError`).
The error bound is the standard CKKS estimate (Cheon, Kim, Kim, Song 2017,
Lemma 1 and the rescaling lemma), not a measurement; tests check it holds.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import math
import struct
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import msgpack
import numpy as np

from sealagg.crypto._primitives.ckks import MAX_SECURE_COEFF_BITS, PublicContext, SecretContext
from sealagg.crypto._primitives.signing import IdentityKey, verify_signature
from sealagg.crypto.buffer_context import BufferContext
from sealagg.crypto.errors import (
    BaseVersionRefusedError,
    CkksCiphertextError,
    CkksContributionsRefusedError,
    CkksError,
    CkksKeyError,
    CkksParameterError,
    CkksRoleError,
    MalformedMessageError,
)
from sealagg.crypto.roster import CONTRIBUTING_ROLES, Role
from sealagg.crypto.rules import MIN_MASKED_PARTIES

SCHEMA_VERSION = 1
#: Gaussian error width of SEAL's encryption.
_SIGMA = 3.2
#: Default limit on the worst-case absolute error of one slot of the weighted sum.
DEFAULT_MAX_ERROR = 1e-3
#: Largest serialized public context accepted (N=16384 with five primes is about 1.1 MB).
MAX_CONTEXT_BYTES = 8 * 1024 * 1024
_ENVELOPE_OVERHEAD = 4096


@dataclasses.dataclass(frozen=True)
class CkksParameters:
    """Ring degree N, coefficient-modulus prime sizes in bits, and the scale 2^scale_bits."""

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 40)
    scale_bits: int = 40

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def scale(self) -> float:
        return float(2**self.scale_bits)

    def ciphertexts_for(self, dimension: int) -> int:
        """Ciphertexts one client sends: ⌈(d+1)/slots⌉ (the +1 is the weight slot)."""
        return math.ceil((dimension + 1) / self.slots)

    def max_ciphertext_bytes(self) -> int:
        """Upper bound on one serialized fresh ciphertext (uncompressed, plus headers)."""
        levels = len(self.coeff_mod_bit_sizes) - 1
        return 2 * self.poly_modulus_degree * levels * 8 + 1024

    def error_bound(self, num_clients: int) -> float:
        """Worst-case absolute error of one slot of the sum of ``num_clients`` fresh encryptions.

        Per client: fresh public-key encryption B_clean = 8√2·sN + 6s√N + 16s√(hN) (s = 3.2,
        the error width; h ≈ 2N/3, the weight of a ternary secret), plus encoding rounding
        (N/2) and the rounding of one rescale after a plain multiplication, √(N/3)·(3 + 8√h);
        all divided by the scale.
        """
        n = self.poly_modulus_degree
        h = 2 * n / 3
        clean = 8 * math.sqrt(2) * _SIGMA * n + 6 * _SIGMA * math.sqrt(n)
        clean += 16 * _SIGMA * math.sqrt(h * n)
        rescale = math.sqrt(n / 3) * (3 + 8 * math.sqrt(h))
        return num_clients * (clean + n / 2 + rescale) / self.scale

    def validate(
        self, *, num_clients: int, value_bound: float, max_error: float = DEFAULT_MAX_ERROR
    ) -> None:
        """Refuse parameters that cannot serve this round, saying why."""
        n, bits, scale_bits = self.poly_modulus_degree, self.coeff_mod_bit_sizes, self.scale_bits
        if n not in MAX_SECURE_COEFF_BITS:
            raise CkksParameterError(
                f"poly_modulus_degree {n} unsupported; use one of {sorted(MAX_SECURE_COEFF_BITS)}"
            )
        if len(bits) < 3:
            raise CkksParameterError(
                f"coefficient moduli {list(bits)} leave no level for one plain multiplication: "
                "need at least [first, middle, special] (e.g. [60, 40, 40])"
            )
        if any(not 20 <= b <= 60 for b in bits):
            raise CkksParameterError(f"each modulus prime must have 20..60 bits, got {list(bits)}")
        if sum(bits) > MAX_SECURE_COEFF_BITS[n]:
            raise CkksParameterError(
                f"coefficient moduli total {sum(bits)} bits; at N={n} at most "
                f"{MAX_SECURE_COEFF_BITS[n]} keep 128-bit security"
            )
        middle = bits[1:-1]
        if any(abs(b - scale_bits) > 1 for b in middle):
            raise CkksParameterError(
                f"middle primes {list(middle)} must match the scale (2^{scale_bits}) so one "
                "rescale after a plain multiplication keeps the scale"
            )
        headroom_bits = bits[0] - scale_bits - 1
        if num_clients * value_bound >= 2.0**headroom_bits:
            raise CkksParameterError(
                f"a sum of {num_clients} values up to {value_bound} overflows: the first prime "
                f"({bits[0]} bits) leaves {headroom_bits} integer bits above the scale"
            )
        if 2 * scale_bits + math.log2(max(value_bound, 1.0)) >= sum(bits[:-1]):
            raise CkksParameterError(
                "a plain multiplication at this scale does not fit the ciphertext modulus"
            )
        bound = self.error_bound(num_clients)
        if bound > max_error:
            raise CkksParameterError(
                f"worst-case error {bound:.3g} per value for {num_clients} clients exceeds the "
                f"limit {max_error:g}; raise the scale or lower the ring degree's noise"
            )

    def generate_keys(self) -> SecretContext:
        return SecretContext.generate(
            self.poly_modulus_degree, self.coeff_mod_bit_sizes, self.scale_bits
        )

    def check_context(self, context: PublicContext) -> None:
        """Refuse a public context that does not carry these parameters."""
        if (
            context.poly_modulus_degree != self.poly_modulus_degree
            or context.coeff_mod_count != len(self.coeff_mod_bit_sizes) - 1
            or not math.isclose(context.scale, self.scale)
        ):
            raise CkksParameterError(
                f"context has N={context.poly_modulus_degree}, {context.coeff_mod_count + 1} "
                f"primes, scale {context.scale:g}; the round uses N={self.poly_modulus_degree}, "
                f"{len(self.coeff_mod_bit_sizes)} primes, scale 2^{self.scale_bits}"
            )


# ------------------------------------------------------------------------------ packing


def check_ckks_round(
    params: CkksParameters,
    *,
    data_owners: int,
    key_holder_listed: bool,
    value_bound: float,
    max_error: float,
    minimum_contributors: int = MIN_MASKED_PARTIES,
) -> None:
    """Refuse a ckks round that cannot protect its data owners, saying why (``CkksError``).

    One check for both sides: the appliance before it opens the round, each client before
    it sends anything. A sum over fewer than m data owners (never fewer than three: with two,
    each reads the other's update from the sum) is refused, because the key holder will not
    decrypt it (:func:`verify_contributions`); a key holder outside the round's participants
    is unaccountable; and the parameters must leave room for the sum
    (:meth:`CkksParameters.validate`).
    """
    needed = max(minimum_contributors, MIN_MASKED_PARTIES)
    if data_owners < needed:
        raise CkksParameterError(
            f"only {data_owners} data owners: ckks needs at least {needed} data "
            "owners besides a separate key holder, or the sum would reveal individual updates"
        )
    if not key_holder_listed:
        raise CkksError("the key holder is not a participant of the round")
    params.validate(num_clients=data_owners, value_bound=value_bound, max_error=max_error)


def chunk_sizes(dimension: int, slots: int) -> list[int]:
    """Values in each ciphertext when d+1 values are packed into ``slots``-slot ciphertexts."""
    total = dimension + 1
    count = math.ceil(total / slots)
    return [slots] * (count - 1) + [total - slots * (count - 1)]


def pack(update: np.ndarray, weight: float, slots: int) -> list[np.ndarray]:
    """[w·x, w] split into ciphertext-sized chunks (float64)."""
    flat = np.empty(update.size + 1, dtype=np.float64)
    np.multiply(update.reshape(-1), weight, out=flat[:-1], dtype=np.float64)
    flat[-1] = weight
    return [flat[i : i + slots] for i in range(0, flat.size, slots)]


def per_layer_ciphertexts(layer_sizes: list[int], slots: int) -> int:
    """What per-layer packing (one or more ciphertexts per tensor) costs, for comparison."""
    return sum(math.ceil(size / slots) for size in layer_sizes)


# ----------------------------------------------------------------------------- messages


def pack_message(kind: str, round_id: bytes, **fields: Any) -> bytes:
    return msgpack.packb(
        {"v": SCHEMA_VERSION, "t": kind, "r": round_id, **fields}, use_bin_type=True
    )


def unpack_message(
    data: bytes, kind: str | tuple[str, ...], round_id: bytes, *, max_bytes: int
) -> dict[str, Any]:
    """Decode a CKKS message and check its version, type (one of ``kind``) and round (never
    pickle)."""
    kinds = (kind,) if isinstance(kind, str) else kind
    what = "/".join(kinds)
    if len(data) > max_bytes:
        raise MalformedMessageError(f"{what}: {len(data)} bytes exceeds the limit {max_bytes}")
    try:
        body = msgpack.unpackb(bytes(data), raw=False, strict_map_key=False, max_bin_len=max_bytes)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise MalformedMessageError(f"{what}: not a valid message ({exc})") from None
    if not isinstance(body, dict) or body.get("v") != SCHEMA_VERSION or body.get("t") not in kinds:
        raise MalformedMessageError(f"expected a version-{SCHEMA_VERSION} {what!r} message")
    if body.get("r") != round_id:
        raise MalformedMessageError(f"{what}: the message names another round")
    return body


def field(body: dict[str, Any], name: str, kind: type, *, optional: bool = False) -> Any:
    value = body.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise MalformedMessageError(f"field {name!r}: expected {kind.__name__}")
    return value


# -------------------------------------------------------------------------- the parties


@dataclasses.dataclass(frozen=True)
class ContributionBinding:
    """What a data owner's signature over its ciphertexts binds, besides the signer itself.

    The round id and the key holder's context fingerprint keep a signed upload from being
    replayed into another round or presented under another key; the model version, the
    parameters and the dimension keep it from answering another question. The signer's
    round index and name are bound too (:meth:`digest`), so an upload cannot be re-attributed
    to another member to make one party count twice.

    In an asynchronous buffer's round (``buffer``, :mod:`crypto.ckks_buffer`) the signature
    also binds the buffer's whole context (parent = ``model_version``, every member's base
    version, the staleness function) and the signer's own base version, under another domain
    tag: a contribution cannot be moved between a buffer and a synchronous round, and the key
    holder recomputes each signer's ``tau`` and ``s(tau)`` from what it signed.
    """

    round_id: bytes
    model_version: int
    params: CkksParameters
    dimension: int
    context_fingerprint: bytes
    buffer: BufferContext | None = None

    def digest(self, index: int, name: str, ciphertexts: Sequence[bytes]) -> bytes:
        """SHA-256 over every bound field, length-prefixed, and each ciphertext's SHA-256."""
        tag = b"sealagg/ckks/contribution/v1\x00"
        if self.buffer is not None:
            tag = b"sealagg/ckks/buffer-contribution/v1\x00"
        h = hashlib.sha256(tag)
        if self.buffer is not None:
            h.update(self.buffer.digest() + struct.pack(">Q", self.base_of(index)))
        name_bytes = name.encode("utf-8")
        p = self.params
        for part in (self.round_id, name_bytes, self.context_fingerprint):
            h.update(struct.pack(">I", len(part)) + part)
        h.update(struct.pack(">IQQ", index, self.model_version, self.dimension))
        h.update(
            struct.pack(">III", p.poly_modulus_degree, p.scale_bits, len(p.coeff_mod_bit_sizes))
        )
        h.update(b"".join(struct.pack(">I", b) for b in p.coeff_mod_bit_sizes))
        h.update(struct.pack(">I", len(ciphertexts)))
        for ct in ciphertexts:
            h.update(hashlib.sha256(ct).digest())
        return h.digest()

    def base_of(self, index: int) -> int:
        """The base version the buffer lists for member ``index`` (refused if none)."""
        assert self.buffer is not None
        base = self.buffer.base_versions.get(index)
        if base is None:
            raise BaseVersionRefusedError(
                f"member {index} is not a data owner of this buffer (it lists no base version)"
            )
        return base


@dataclasses.dataclass(frozen=True)
class Contributor:
    """A round member as a signer of contributions: its index, name and identity key."""

    index: int
    name: str
    identity_key: bytes


class CkksEncryptor:
    """A data owner's side: encrypt [w·x, w] under the key holder's public context, and sign."""

    def __init__(
        self,
        params: CkksParameters,
        public_context: bytes,
        round_id: bytes,
        *,
        buffer: BufferContext | None = None,
    ) -> None:
        self.params = params
        self.context = PublicContext.from_bytes(public_context, max_bytes=MAX_CONTEXT_BYTES)
        params.check_context(self.context)
        self.round_id = round_id
        self.buffer = buffer  # an asynchronous buffer's context: signed into the upload

    def encrypt(
        self,
        update: np.ndarray,
        weight: float,
        *,
        identity: IdentityKey,
        index: int,
        name: str,
        model_version: int,
    ) -> bytes:
        """The upload: every chunk encrypted, and signed with the data owner's identity key.

        The signature lets the key holder check, before it decrypts anything, that a sum
        covers distinct roster data owners (:func:`verify_contributions`); nothing in the
        upload is readable without the secret key.
        """
        update = np.asarray(update)
        cts = [self.context.encrypt(c) for c in pack(update, weight, self.params.slots)]
        binding = ContributionBinding(
            self.round_id,
            model_version,
            self.params,
            update.size,
            self.context.fingerprint,
            self.buffer,
        )
        signature = identity.sign(binding.digest(index, name, cts))
        extra: dict[str, Any] = {}
        if self.buffer is not None:  # the claims the signature covers, readable for the checks
            extra = {"b": binding.base_of(index), "x": self.buffer.digest()}
        return pack_message(
            "ckks_input",
            self.round_id,
            f=self.context.fingerprint,
            c=cts,
            i=index,
            s=signature,
            **extra,
        )


def input_limit(params: CkksParameters, dimension: int) -> int:
    """Largest acceptable encrypted upload for a model of ``dimension`` values."""
    return params.ciphertexts_for(dimension) * params.max_ciphertext_bytes() + _ENVELOPE_OVERHEAD


class CkksAccumulator:
    """A running sum of signed uploads under a public context (the appliance's, or the key
    holder's own recomputation). Each upload is checked entirely before it is added: its
    signature by the member it claims, its context, its shape and every ciphertext."""

    def __init__(
        self,
        params: CkksParameters,
        public_context: bytes,
        round_id: bytes,
        dimension: int,
        *,
        model_version: int,
        buffer: BufferContext | None = None,
    ) -> None:
        self.params = params
        self.context = PublicContext.from_bytes(public_context, max_bytes=MAX_CONTEXT_BYTES)
        params.check_context(self.context)
        self.round_id = round_id
        self.dimension = dimension
        if buffer is not None and buffer.parent_version != model_version:
            raise BaseVersionRefusedError("the buffer's parent is not the round's model version")
        self.binding = ContributionBinding(
            round_id, model_version, params, dimension, self.context.fingerprint, buffer
        )
        self.sizes = chunk_sizes(dimension, params.slots)
        self._sum: list[Any] | None = None
        self.contributors: list[int] = []

    @property
    def count(self) -> int:
        return len(self.contributors)

    def add(self, payload: bytes, signer: Contributor) -> None:
        """Check one client's upload entirely, then add it (a bad upload changes nothing)."""
        body = unpack_message(
            payload, "ckks_input", self.round_id, max_bytes=input_limit(self.params, self.dimension)
        )
        if field(body, "i", int) != signer.index:
            raise CkksCiphertextError(
                f"ciphertext refused: the upload names member {body['i']}, not {signer.index}"
            )
        fingerprint = field(body, "f", bytes)
        if not hmac.compare_digest(fingerprint, self.context.fingerprint):
            raise CkksCiphertextError(
                "ciphertext refused: encrypted under another context than the round's"
            )
        cts = field(body, "c", list)
        if len(cts) != len(self.sizes):
            raise CkksCiphertextError(
                f"ciphertext refused: {len(cts)} ciphertexts, the model needs {len(self.sizes)}"
            )
        limit = self.params.max_ciphertext_bytes()
        if not all(isinstance(ct, bytes) and len(ct) <= limit for ct in cts):
            raise CkksCiphertextError("ciphertext refused: a chunk is oversized or not bytes")
        if self.binding.buffer is not None:
            self._check_buffer_claims(body, signer)
        verify_signature(
            signer.identity_key,
            self.binding.digest(signer.index, signer.name, cts),
            field(body, "s", bytes),
            signer=signer.name,
        )
        vectors = [
            self.context.load(ct, slots_used=used) for ct, used in zip(cts, self.sizes, strict=True)
        ]
        if self._sum is None:
            self._sum = vectors
        else:
            for i, vector in enumerate(vectors):
                self._sum[i] = self.context.add(self._sum[i], vector)
        self.contributors.append(signer.index)

    def _check_buffer_claims(self, body: dict[str, Any], signer: Contributor) -> None:
        """A buffer's upload states the signer's base version and the context it signed;
        both must be this buffer's (the signature, checked next, covers them): a contribution
        claiming another base version, or signed over another view of the buffer (other
        members' bases, parent or staleness function), is refused, saying which."""
        buffer = self.binding.buffer
        assert buffer is not None
        claimed, listed = field(body, "b", int), self.binding.base_of(signer.index)
        if claimed != listed:
            raise BaseVersionRefusedError(
                f"contribution of {signer.name!r} claims base version {claimed}; the buffer "
                f"lists {listed} for it: its staleness weight would not be the buffer's"
            )
        if not hmac.compare_digest(field(body, "x", bytes), buffer.digest()):
            raise BaseVersionRefusedError(
                f"contribution of {signer.name!r} was signed over another buffer context (base "
                "versions, parent or staleness function) than this one"
            )

    @property
    def sum_vectors(self) -> list[Any]:
        if self._sum is None:
            raise CkksCiphertextError("no ciphertext was added")
        return self._sum

    def sum_ciphertexts(self) -> list[bytes]:
        return [self.context.serialize(v) for v in self.sum_vectors]


class RosterMember(Protocol):
    """A round member's roster entry (:class:`sealagg.crypto.roster.RosterEntry` fits)."""

    @property
    def name(self) -> str: ...

    @property
    def identity_key(self) -> bytes: ...

    @property
    def role(self) -> Role: ...


def check_key_holder(
    members: Mapping[int, RosterMember], key_holder: int, *, contributes: bool
) -> RosterMember:
    """The key holder's roster entry; ``CkksRoleError`` unless the roster gives it that role.

    ``members`` maps each round index to its entry in the authority's roster (not the
    appliance's list: a "key holder" the appliance invented would hold a key the appliance
    shares, and every data owner encrypting to it would be read). A key holder that also
    contributes is a data owner holding the secret key: only by the federation's explicit
    configuration, and then it must have a contributing role.
    """
    entry = members.get(key_holder)
    if entry is None:
        raise CkksRoleError("the round's key holder is not a roster member of the round")
    wanted = CONTRIBUTING_ROLES if contributes else frozenset({Role.KEY_HOLDER})
    if entry.role not in wanted:
        raise CkksRoleError(
            f"{entry.name!r} has role {entry.role.value!r} on the roster; the round's key "
            f"holder needs role {' or '.join(sorted(r.value for r in wanted))}"
        )
    return entry


def verify_contributions(
    uploads: Sequence[tuple[int, bytes]],
    accumulator: CkksAccumulator,
    members: Mapping[int, RosterMember],
    *,
    key_holder: int,
    key_holder_contributes: bool,
    minimum: int,
) -> CkksAccumulator:
    """The key holder's check before it decrypts anything; returns ``accumulator`` holding the
    homomorphic sum it recomputed itself from exactly these uploads.

    Why: TenSEAL has no threshold CKKS, so whatever the key holder decrypts, the appliance
    reads. An appliance that forwards one client's ciphertext as "the sum of 3" would read that
    client's update. So the key holder decrypts only a sum it added up itself from uploads
    that are (1) signed over this round, model version, parameters and its own public context
    (:class:`ContributionBinding`), (2) by distinct signers, each on the authority's roster with
    a contributing role (``members``: the round's roster entries by index; never the key
    holder unless it contributes by configuration), and (3) at least ``minimum`` of them
    (m from the policy, never below :data:`MIN_MASKED_PARTIES`). Raises
    :class:`CkksContributionsRefusedError`, :class:`CkksRoleError` or ``BadSignatureError``.
    """
    needed = max(minimum, MIN_MASKED_PARTIES)
    if len(uploads) < needed:
        raise CkksContributionsRefusedError(
            f"refusing to decrypt a sum of {len(uploads)} contributions: at least {needed} "
            "distinct signed data owners are needed"
        )
    indices = [index for index, _ in uploads]
    if len(set(indices)) != len(indices):
        raise CkksContributionsRefusedError(
            "refusing to decrypt: one member's contribution is counted twice"
        )
    keys: set[bytes] = set()
    for index, payload in uploads:
        entry = members.get(index)
        if entry is None:
            raise CkksRoleError(
                f"contribution from {index}, who is not a roster member of the round"
            )
        if index == key_holder and not key_holder_contributes:
            raise CkksRoleError("the key holder contributes nothing in this round")
        if entry.role not in CONTRIBUTING_ROLES:
            raise CkksRoleError(
                f"contribution from {entry.name!r}, whose roster role "
                f"{entry.role.value!r} does not contribute"
            )
        key = bytes(entry.identity_key)
        if key in keys:  # one party under two indices
            raise CkksContributionsRefusedError(
                "refusing to decrypt: two contributions are signed by the same identity key"
            )
        keys.add(key)
        accumulator.add(payload, Contributor(index, entry.name, key))
    return accumulator


class CkksKeyHolder:
    """Generates the keys, hands out the public context, decrypts one verified sum per round."""

    def __init__(self, params: CkksParameters, round_id: bytes, secret: SecretContext) -> None:
        self.params = params
        self.round_id = round_id
        self._secret = secret
        self.public_context = secret.public_bytes()
        self._decrypted = False

    @classmethod
    def generate(cls, params: CkksParameters, round_id: bytes) -> CkksKeyHolder:
        return cls(params, round_id, params.generate_keys())

    def decrypt_contributions(
        self,
        uploads: Sequence[tuple[int, bytes]],
        members: Mapping[int, RosterMember],
        *,
        dimension: int,
        model_version: int,
        key_holder: int,
        key_holder_contributes: bool,
        minimum: int,
        buffer: BufferContext | None = None,
    ) -> np.ndarray:
        """The weighted sum [Σw·x, Σw] (float64, d+1 values) of verified contributions.

        Recomputes the sum itself (:func:`verify_contributions`) and decrypts only that, at
        most once per round: a second request (a second sum over another subset, whose
        difference with the first would be one client's update) is refused. ``buffer``: an
        asynchronous buffer's context as this key holder checked it; every contribution must
        be signed over it and its own base version (refused otherwise, nothing decrypted).
        """
        if self._decrypted:
            raise CkksContributionsRefusedError("this round's sum was already decrypted once")
        accumulator = CkksAccumulator(
            self.params,
            self.public_context,
            self.round_id,
            dimension,
            model_version=model_version,
            buffer=buffer,
        )
        verify_contributions(
            uploads,
            accumulator,
            members,
            key_holder=key_holder,
            key_holder_contributes=key_holder_contributes,
            minimum=minimum,
        )
        self._decrypted = True
        sizes = accumulator.sizes
        out = np.concatenate(
            [
                self._secret.decrypt(ct)[:used]
                for ct, used in zip(accumulator.sum_ciphertexts(), sizes, strict=True)
            ]
        )
        if out.size != dimension + 1:
            raise CkksCiphertextError("decrypted sum has the wrong length")
        if buffer is not None:  # nothing leaves unless the weights fit the signed bases
            check_buffer_total(buffer, accumulator.contributors, float(out[-1]), self.params)
        return out

    def export_secret_for_sealing(self) -> bytes:
        return self._secret.export_secret_bytes_for_sealing()

    def __reduce__(self) -> object:
        raise TypeError("CkksKeyHolder holds a secret key and cannot be pickled")


def check_buffer_total(
    buffer: BufferContext, contributors: Sequence[int], total: float, params: CkksParameters
) -> None:
    """Refuse a buffer's decrypted sum whose total weight exceeds what its signed base
    versions allow: each member's weight is ``w * s(tau)`` with ``w <= 1``, so the total is
    at most the sum of the contributors' ``s(tau)`` (plus CKKS error). A member that skipped
    ``s(tau)`` cannot be singled out inside an encrypted sum, but a sum claiming more weight
    than its members' staleness allows is refused, and nothing of it is released."""
    ceiling = sum(buffer.weight_of(i) for i in contributors)
    slack = params.error_bound(len(contributors))
    if not total <= ceiling + slack:
        raise CkksContributionsRefusedError(
            f"the buffer's total weight {total:.6g} exceeds {ceiling:.6g}, the sum of its "
            "contributors' staleness weights s(tau): a member did not fold in its own"
        )


def check_secret_context(secret_context: bytes, public_context: bytes) -> None:
    """A data owner's check that the sealed secret context belongs to the advertised public one."""
    secret = SecretContext.from_secret_bytes(secret_context)
    if not hmac.compare_digest(secret.public_bytes(), bytes(public_context)):
        raise CkksKeyError("the sealed secret context does not match the key holder's public one")


def mean_from_sum(weighted_sum: np.ndarray) -> tuple[np.ndarray, float]:
    """Divide [Σw·x, Σw] by Σw: the weighted mean and the total weight."""
    total = float(weighted_sum[-1])
    if not (np.isfinite(total) and total > 0.0):
        raise CkksCiphertextError(f"decrypted total weight {total} is not positive")
    return weighted_sum[:-1] / total, total


# ---------------------------------------------------------------------------- estimator


@dataclasses.dataclass(frozen=True)
class CkksEstimate:
    ciphertexts: int
    bytes_per_ciphertext: int
    bytes_per_client: int
    encrypt_seconds: float

    def describe(self) -> str:
        return (
            f"{self.ciphertexts} ciphertexts of {self.bytes_per_ciphertext:,} B = "
            f"{self.bytes_per_client:,} B per client, ≈{self.encrypt_seconds:.2f} s to encrypt"
        )


@functools.lru_cache(maxsize=8)
def _calibrate(params: CkksParameters) -> tuple[int, float]:
    """Bytes and seconds of one full fresh ciphertext, measured once with throwaway keys."""
    keys = params.generate_keys()
    context = PublicContext.from_bytes(keys.public_bytes(), max_bytes=MAX_CONTEXT_BYTES)
    values = np.random.default_rng(0).uniform(-1, 1, params.slots)
    context.encrypt(values)  # warm up
    started = time.perf_counter()
    reps = 3
    sizes = [len(context.encrypt(values)) for _ in range(reps)]
    return max(sizes), (time.perf_counter() - started) / reps


def estimate(params: CkksParameters, dimension: int) -> CkksEstimate:
    """Bytes per ciphertext and client, and encryption time, for a model of ``dimension`` values."""
    per_ct, seconds = _calibrate(params)
    count = params.ciphertexts_for(dimension)
    return CkksEstimate(count, per_ct, count * per_ct + 64, count * seconds)


__all__ = [
    "DEFAULT_MAX_ERROR",
    "CkksAccumulator",
    "CkksEncryptor",
    "CkksEstimate",
    "CkksKeyHolder",
    "CkksParameters",
    "ContributionBinding",
    "Contributor",
    "RosterMember",
    "check_buffer_total",
    "check_ckks_round",
    "check_key_holder",
    "check_secret_context",
    "chunk_sizes",
    "estimate",
    "input_limit",
    "mean_from_sum",
    "pack",
    "per_layer_ciphertexts",
    "verify_contributions",
]
