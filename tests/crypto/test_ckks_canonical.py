"""One CKKS ciphertext, one accepted byte string: the check that replaced re-serialization.

The appliance and the key holder used to refuse any ciphertext whose bytes differ from
``serialize(parse(bytes))``; that cost a zstd compression per ciphertext. Now the round's
encoding is uncompressed and checked against a template (``ckks_wire.CanonicalLayout``). These
tests attack the new check with every kind of alternative encoding the old one refused
(trailing or altered bytes, protobuf re-encodings, other SEAL headers, compressed streams,
unreduced coefficients) and check that an accepted encoding is the only one for its value.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from sealagg.crypto import IdentityKey
from sealagg.crypto._primitives import ckks_wire
from sealagg.crypto._primitives.ckks import PublicContext, _plain_bytes
from sealagg.crypto.ckks import (
    MAX_CONTEXT_BYTES,
    CkksAccumulator,
    CkksKeyHolder,
    CkksParameters,
    ContributionBinding,
    Contributor,
    pack_message,
)
from sealagg.crypto.errors import CkksCiphertextError

ts = pytest.importorskip("tenseal")
sealapi = pytest.importorskip("tenseal.sealapi")

PARAMS = CkksParameters()
RID = bytes(range(32))
SLOTS = 101
SIGNER = IdentityKey.generate()


@pytest.fixture(scope="module")
def holder():
    return CkksKeyHolder.generate(PARAMS, RID)


@pytest.fixture(scope="module")
def context(holder):
    return PublicContext.from_bytes(holder.public_context, max_bytes=MAX_CONTEXT_BYTES)


@pytest.fixture(scope="module")
def fresh(context):
    return context.encrypt(np.linspace(-1.0, 1.0, SLOTS))


def _refused(context, data, match="ciphertext refused"):
    with pytest.raises(CkksCiphertextError, match=match):
        context.load(data, slots_used=SLOTS)


def _moduli(context) -> list[int]:
    data = context._ctx.seal_context().data.first_context_data()
    return [m.value() for m in data.parms().coeff_modulus()]


def _coefficients_at(context) -> int:
    return len(context._layout.prefix(SLOTS))


def test_a_fresh_ciphertext_loads_and_is_the_only_encoding_of_its_value(context, fresh):
    vector = context.load(fresh, slots_used=SLOTS)
    # Re-encoding the loaded value gives the same bytes back: the value fixes its encoding.
    assert _plain_bytes(vector.serialize()) == fresh
    # And TenSEAL reads the same value from our encoding as from its own.
    assert ts.ckks_vector_from(context._ctx, vector.serialize()).serialize() == vector.serialize()


def test_tenseal_default_compressed_encoding_of_the_same_ciphertext_is_refused(context, fresh):
    compressed = context.load(fresh, slots_used=SLOTS).serialize()  # SEAL's zstd stream
    assert compressed != fresh and len(compressed) < len(fresh)
    _refused(context, compressed, "canonical")


def test_every_altered_byte_outside_the_coefficients_is_refused(context, fresh):
    start = _coefficients_at(context)
    end = start + context._layout.coefficient_bytes
    positions = [*range(start), *range(end, len(fresh))]
    assert len(positions) > 100  # framing, SEAL header, metadata, DynArray header, scale field
    for at in positions:
        for flip in (0x01, 0x80):
            altered = bytearray(fresh)
            altered[at] ^= flip
            _refused(context, bytes(altered))


@pytest.mark.parametrize("polynomial", [0, 1])
def test_unreduced_coefficients_are_refused(context, fresh, polynomial):
    """A coefficient equal to its prime (or above) is a second encoding of a reduced one."""
    moduli = _moduli(context)
    n = PARAMS.poly_modulus_degree
    start = _coefficients_at(context)
    for level, q in enumerate(moduli):
        for index in (0, n - 1):
            at = start + ((polynomial * len(moduli) + level) * n + index) * 8
            for value in (q, q + 1, 2**64 - 1):
                altered = bytearray(fresh)
                altered[at : at + 8] = struct.pack("<Q", value)
                _refused(context, bytes(altered), "does not parse")
            reduced = bytearray(fresh)  # the largest reduced value is one more ciphertext
            reduced[at : at + 8] = struct.pack("<Q", q - 1)
            context.load(bytes(reduced), slots_used=SLOTS)


def _reframed(fresh: bytes, *, length_pad: int = 0, extra: bytes = b"", reorder=False) -> bytes:
    sizes, blob, scale = ckks_wire.split(fresh)
    length = ckks_wire.varint(len(blob))
    if length_pad:  # the same length as a longer, non-minimal varint
        length = bytes(b | 0x80 for b in length[:-1]) + bytes([length[-1] | 0x80]) + b"\x00"
    head = b"\x0a" + ckks_wire.varint(len(sizes)) + sizes
    body = b"\x12" + length + blob
    return (scale + head + body if reorder else head + body + scale) + extra


@pytest.mark.parametrize(
    "mangle",
    [
        lambda f: f + b"xx",  # protobuf skips an unknown varint field
        lambda f: f + b"\x19" + f[-8:],  # the scale field twice (the last one wins)
        lambda f: f[:-9] + b"\x1a\x00" + f[-9:],  # an unknown empty field
        lambda f: _reframed(f, length_pad=1),  # a non-minimal length varint
        lambda f: _reframed(f, reorder=True),  # the same fields in another order
        lambda f: f[:-9],  # no scale field: protobuf's default 0
        lambda f: b"\x0a\x00" + f,  # an empty sizes field first
    ],
    ids=[
        "trailing",
        "scale-twice",
        "unknown-field",
        "long-varint",
        "reordered",
        "no-scale",
        "sizes-twice",
    ],
)
def test_protobuf_reencodings_are_refused(context, fresh, mangle):
    _refused(context, mangle(fresh))


def _with_seal_header(fresh: bytes, **changes: int) -> bytes:
    sizes, blob, scale = ckks_wire.split(fresh)
    fields = dict(
        zip(
            ("magic", "header_size", "major", "minor", "mode", "reserved", "size"),
            struct.unpack_from("<HBBBBHQ", blob),
            strict=True,
        )
    )
    fields.update(changes)
    header = struct.pack("<HBBBBHQ", *fields.values())
    return ckks_wire.join(sizes, header + blob[16:], scale)


@pytest.mark.parametrize(
    "changes",
    [{"reserved": 1}, {"minor": 0}, {"size": 1 << 20}, {"mode": 1}, {"mode": 2}],
    ids=["reserved", "other-version", "size", "zlib-claimed", "zstd-claimed"],
)
def test_other_seal_headers_are_refused(context, fresh, changes):
    _refused(context, _with_seal_header(fresh, **changes))


def test_a_signed_upload_in_the_old_compressed_encoding_changes_nothing(holder, context, fresh):
    """The real path (the appliance's and the key holder's accumulator): a correctly signed
    upload whose ciphertext is TenSEAL's compressed encoding is refused before any add."""
    d = SLOTS - 1
    acc = CkksAccumulator(PARAMS, holder.public_context, RID, d, model_version=1)
    compressed = [context.load(fresh, slots_used=SLOTS).serialize()]
    fp = context.fingerprint
    digest = ContributionBinding(RID, 1, PARAMS, d, fp).digest(1, "c1", compressed)
    upload = pack_message("ckks_input", RID, f=fp, c=compressed, i=1, s=SIGNER.sign(digest))
    with pytest.raises(CkksCiphertextError, match="canonical"):
        acc.add(upload, Contributor(1, "c1", SIGNER.verify_key_bytes))
    assert acc.count == 0
    digest = ContributionBinding(RID, 1, PARAMS, d, fp).digest(1, "c1", [fresh])
    good = pack_message("ckks_input", RID, f=fp, c=[fresh], i=1, s=SIGNER.sign(digest))
    acc.add(good, Contributor(1, "c1", SIGNER.verify_key_bytes))
    assert acc.count == 1


def test_the_template_is_made_only_from_uncompressed_probes(fresh):
    compressed_header = _with_seal_header(fresh, mode=2)
    with pytest.raises(ckks_wire.WireFormatError, match="uncompressed"):
        ckks_wire.CanonicalLayout.from_probe(compressed_header, 2 * 8192 * 2 * 8)
    with pytest.raises(ckks_wire.WireFormatError):
        ckks_wire.split(fresh + b"x")


@pytest.mark.parametrize("keep_last", [False, True])
def test_a_transparent_ciphertext_in_the_round_encoding_is_refused(context, fresh, keep_last):
    """c1 = 0 decrypts without the key (the old check asked SEAL's is_transparent)."""
    start = _coefficients_at(context) + context._layout.coefficient_bytes // 2
    stop = start + context._layout.coefficient_bytes // 2
    altered = bytearray(fresh)
    altered[start:stop] = bytes(stop - start)
    if keep_last:  # only the last coefficient non-zero: not transparent, accepted
        altered[stop - 8] = 1
    vector = ts.ckks_vector_from(context._ctx, bytes(altered))
    assert vector.ciphertext()[0].is_transparent() is not keep_last
    if keep_last:
        context.load(bytes(altered), slots_used=SLOTS)
    else:
        _refused(context, bytes(altered), "transparent")
