"""The one byte encoding of a CKKS ciphertext we accept, checked without re-serializing.

Why one encoding: a data owner signs the SHA-256 of its ciphertext bytes and the appliance
forwards those bytes verbatim to the key holder. If one ciphertext had several accepted
encodings, the spare freedom (trailing bytes, protobuf field order, varint padding, the choices
inside a compressed stream) would be a channel for extra data through a sum that promises to
carry only the ciphertext, and "the same upload" would have no single meaning.

TenSEAL serializes a ``CKKSVector`` as protobuf ``{1: sizes, 2: [SEAL ciphertext], 3: scale}``
whose SEAL part is zstd-compressed. Compression is the problem: many zstd streams decode to the
same ciphertext and the only way to tell SEAL's own stream from the others is to compress again,
which costs more than parsing and adding (the old check, ``serialize(parse(b)) == b``, took
about 1.2x TenSEAL's parse + add per ciphertext). So the round's encoding is TenSEAL's layout
with SEAL's compression mode ``none``: SEAL header, ciphertext metadata, then the 2·L·N 64-bit
coefficients. Everything but the coefficients is fixed for a round (ring degree, level,
``parms_id``, NTT flag, scale, the declared slot count) and is compared byte for byte against a
template made from a fresh encryption under the round's context (:class:`CanonicalLayout`);
SEAL refuses any coefficient not reduced below its prime when it parses. So each ciphertext
has exactly one accepted byte string, and checking it is a prefix and suffix comparison.

This module only moves bytes; TenSEAL (and its zstd, for the data owner's own fresh output)
stays in :mod:`sealagg.crypto._primitives.ckks`.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable

#: SEAL's serialization header: magic, header size, version, compression mode, reserved, size.
_SEAL_HEADER = struct.Struct("<HBBBBHQ")
_SEAL_MAGIC = 0xA15E
_COMPR_NONE = 0
_COMPR_ZSTD = 2
_SIZES_TAG, _CIPHERTEXT_TAG, _SCALE_TAG = 0x0A, 0x12, 0x19


class WireFormatError(ValueError):
    """Bytes that are not TenSEAL's single-ciphertext CKKS vector layout."""


def varint(value: int) -> bytes:
    """Protobuf's minimal varint encoding of a non-negative integer."""
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise WireFormatError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def _field(data: bytes, at: int, tag: int) -> tuple[bytes, int]:
    """One length-delimited field ``tag`` at ``at`` (TenSEAL writes it exactly once, in order)."""
    if at >= len(data) or data[at] != tag:
        raise WireFormatError(f"expected protobuf field tag {tag:#x}")
    length, at = _read_varint(data, at + 1)
    if at + length > len(data):
        raise WireFormatError("field runs past the end")
    return data[at : at + length], at + length


def split(serialized: bytes) -> tuple[bytes, bytes, bytes]:
    """(packed sizes, SEAL ciphertext, scale field) of one TenSEAL single-ciphertext vector."""
    sizes, at = _field(serialized, 0, _SIZES_TAG)
    blob, at = _field(serialized, at, _CIPHERTEXT_TAG)
    scale = serialized[at:]
    if len(scale) != 9 or scale[0] != _SCALE_TAG:
        raise WireFormatError("expected exactly one scale field after the ciphertext")
    return sizes, blob, scale


def join(sizes: bytes, blob: bytes, scale: bytes) -> bytes:
    """The protobuf framing TenSEAL writes, around the given parts."""
    return (
        bytes([_SIZES_TAG])
        + varint(len(sizes))
        + sizes
        + bytes([_CIPHERTEXT_TAG])
        + varint(len(blob))
        + blob
        + scale
    )


def uncompressed(serialized: bytes, zstd_decompress: Callable[[bytes, int], bytes]) -> bytes:
    """TenSEAL's serialization of a fresh vector with SEAL's zstd stage undone.

    Only for a party's *own* fresh output (the data owner's encryption, the probe behind the
    template): decompression is deterministic, so any correct zstd decoder gives these bytes.
    """
    sizes, blob, scale = split(serialized)
    if len(blob) < _SEAL_HEADER.size:
        raise WireFormatError("SEAL ciphertext shorter than its header")
    magic, header_size, major, minor, mode, reserved, size = _SEAL_HEADER.unpack_from(blob)
    if magic != _SEAL_MAGIC or header_size != _SEAL_HEADER.size or size != len(blob):
        raise WireFormatError("not a SEAL serialization header")
    if mode == _COMPR_NONE:
        return serialized
    if mode != _COMPR_ZSTD:
        raise WireFormatError(f"SEAL compression mode {mode} is not supported")
    frame = blob[_SEAL_HEADER.size :]
    members = zstd_decompress(frame, _zstd_content_size(frame))
    header = _SEAL_HEADER.pack(
        magic, header_size, major, minor, _COMPR_NONE, reserved, _SEAL_HEADER.size + len(members)
    )
    return join(sizes, header + members, scale)


def _zstd_content_size(frame: bytes) -> int:
    """The frame's declared content size (SEAL always writes it: single-segment frames)."""
    if len(frame) < 6 or frame[:4] != b"\x28\xb5\x2f\xfd":
        raise WireFormatError("not a zstd frame")
    descriptor = frame[4]
    fcs_flag, single_segment, dict_flag = descriptor >> 6, (descriptor >> 5) & 1, descriptor & 3
    at = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag]
    width = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    if width == 0 or at + width > len(frame):
        raise WireFormatError("zstd frame does not declare its content size")
    value = int.from_bytes(frame[at : at + width], "little")
    return value + 256 if width == 2 else value


@dataclasses.dataclass(frozen=True)
class CanonicalLayout:
    """Every byte of the round's ciphertext encoding except the coefficients.

    Made from a fresh encryption under the round's context (``probe``, uncompressed), so it
    fixes what a fresh ciphertext of this round must carry: SEAL header and version,
    ``parms_id`` (hence the level), NTT form, two polynomials, ring degree, scale, and the
    TenSEAL scale field. Only the ``coefficient_bytes`` in between are free, and SEAL's parser
    refuses a coefficient that is not reduced below its prime.
    """

    seal_prefix: bytes
    coefficient_bytes: int
    scale_field: bytes

    @classmethod
    def from_probe(cls, probe: bytes, coefficient_bytes: int) -> CanonicalLayout:
        _, blob, scale = split(probe)
        if len(blob) <= coefficient_bytes + _SEAL_HEADER.size:
            raise WireFormatError("probe ciphertext is smaller than its coefficients")
        if _SEAL_HEADER.unpack_from(blob)[4] != _COMPR_NONE:
            raise WireFormatError("the template must be made from an uncompressed probe")
        return cls(blob[: len(blob) - coefficient_bytes], coefficient_bytes, scale)

    def prefix(self, slots_used: int) -> bytes:
        """The bytes before the coefficients of a ciphertext declaring ``slots_used`` values."""
        sizes = varint(slots_used)
        blob_length = len(self.seal_prefix) + self.coefficient_bytes
        return (
            bytes([_SIZES_TAG])
            + varint(len(sizes))
            + sizes
            + bytes([_CIPHERTEXT_TAG])
            + varint(blob_length)
            + self.seal_prefix
        )

    def is_canonical(self, data: bytes, slots_used: int) -> bool:
        """Whether ``data`` has the round's encoding for ``slots_used`` values (bytes compared:
        none of this is secret)."""
        head = self.prefix(slots_used)
        return (
            len(data) == len(head) + self.coefficient_bytes + len(self.scale_field)
            and data.startswith(head)
            and data.endswith(self.scale_field)
        )

    def second_polynomial_is_zero(self, data: bytes, slots_used: int) -> bool:
        """Whether c1 is all zeros (a "transparent" ciphertext, readable without the key).

        For ``data`` that :meth:`is_canonical` accepted. An honest c1 is uniform, so its first
        coefficient is zero with probability about 2^-60 and this returns at once.
        """
        start = len(self.prefix(slots_used)) + self.coefficient_bytes // 2
        stop = start + self.coefficient_bytes // 2
        if any(data[start : start + 8]):
            return False
        return data.count(0, start, stop) == stop - start


__all__ = ["CanonicalLayout", "WireFormatError", "join", "split", "uncompressed", "varint"]
