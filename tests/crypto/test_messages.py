"""The wire schema: every message round-trips; anything else is refused clearly."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealagg.crypto.errors import MalformedMessageError, UnsupportedVersionError
from sealagg.crypto.messages import (
    SCHEMA_VERSION,
    AdvertiseKeys,
    Blame,
    CoinDirectory,
    ConsistencySignature,
    KeyDirectory,
    MaskedInput,
    PeerKeys,
    RevealCoin,
    ShareBundle,
    ShareKeys,
    SignedShare,
    SurvivorList,
    UnmaskRequest,
    UnmaskShares,
    decode,
    masked_input_view,
)

RID = bytes(range(32))
KEYS = PeerKeys(b"\x01" * 32, b"\x02" * 32, b"\x04" * 32, b"\x07" * 32, b"\x03" * 64)


def _signed(fill: bytes) -> SignedShare:
    return SignedShare(fill * 120, b"\x05" * 32, b"\x08" * 32, b"\x06" * 64)


EXAMPLES = [
    AdvertiseKeys(RID, KEYS),
    KeyDirectory(RID, {2: KEYS, 7: KEYS}),
    ShareKeys(RID, {2: _signed(b"x"), 3: _signed(b"y")}),
    ShareBundle(RID, {1: _signed(b"z")}),
    MaskedInput(RID, b"\x00\x01\x02\x03" * 10),
    MaskedInput(RID, b"\x00\x01\x02\x03" * 3, {4: Blame(_signed(b"g"), b"k" * 128, b"m" * 128)}),
    SurvivorList(RID, (1, 2, 5)),
    ConsistencySignature(RID, b"\x09" * 64),
    UnmaskRequest(RID, (1, 2, 5), {1: b"\x01" * 64, 2: b"\x02" * 64}, (3,)),
    UnmaskShares(RID, {1: b"a" * 44}, {3: b"b" * 44}),
    RevealCoin(RID, b"\x0a" * 32),
    CoinDirectory(RID, {1: b"\x0b" * 32, 4: b"\x0c" * 32}),
]


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: m.TYPE)
def test_round_trip(msg):
    assert decode(msg.encode()) == msg


def _raw(msg) -> dict:
    return msgpack.unpackb(msg.encode(), raw=False, strict_map_key=False)


def _pack(body: dict) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


@pytest.mark.parametrize("version", [1, SCHEMA_VERSION + 1])
def test_unknown_version_is_refused(version):
    """Version 1 (before the coin commitments and the proven blames) is refused too."""
    body = _raw(EXAMPLES[0])
    body["v"] = version
    with pytest.raises(UnsupportedVersionError):
        decode(_pack(body))


@pytest.mark.parametrize(
    ("msg", "field", "value", "match"),
    [
        (EXAMPLES[10], "c", b"\x0a" * 31, "32 bytes"),
        (EXAMPLES[11], "c", {1: b"\x0b" * 33}, "32 bytes"),
        (EXAMPLES[11], "c", {0: b"\x0b" * 32}, "client ids"),
        (EXAMPLES[5], "b", {4: [[b"x", b"y"], b"k" * 128, b"m" * 128]}, "expected"),
        (
            EXAMPLES[5],
            "b",
            {4: [list(_raw(EXAMPLES[5])["b"][4][0]), b"k" * 127, b"m" * 128]},
            "128",
        ),
    ],
)
def test_malformed_coins_and_blames_are_refused(msg, field, value, match):
    body = _raw(msg)
    body[field] = value
    with pytest.raises(MalformedMessageError, match=match):
        decode(_pack(body))


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b.update(t="launch_missiles"), "unknown message type"),
        (lambda b: b.update(r=b"short"), "'r'"),
        (lambda b: b.pop("k"), "expected fields"),
        (lambda b: b.update(extra=1), "expected fields"),
        (
            lambda b: b.update(
                k=[b"\x01" * 31, b"\x02" * 32, b"\x04" * 32, b"\x07" * 32, b"\x03" * 64]
            ),
            "32 bytes",
        ),
        (
            lambda b: b.update(k=[b"\x01" * 32, b"\x02" * 32, b"\x04" * 32, b"\x03" * 64]),
            "expected",
        ),
        (lambda b: b.update(k="not a list"), "expected"),
    ],
)
def test_malformed_advertise_is_refused(mutate, match):
    body = _raw(EXAMPLES[0])
    mutate(body)
    with pytest.raises(MalformedMessageError, match=match):
        decode(_pack(body))


@pytest.mark.parametrize("survivors", [[2, 1], [1, 1], [0, 1], [-3], [2**31], ["1"], [1.5], [True]])
def test_bad_client_id_lists_are_refused(survivors):
    body = _raw(EXAMPLES[6])
    body["u"] = survivors
    with pytest.raises(MalformedMessageError):
        decode(_pack(body))


def test_masked_input_must_be_whole_uint32s():
    body = _raw(EXAMPLES[4])
    body["y"] = b"\x00" * 7
    with pytest.raises(MalformedMessageError, match="uint32"):
        decode(_pack(body))


def test_wrong_share_size_is_refused():
    body = _raw(EXAMPLES[9])
    body["b"] = {1: b"a" * 43}
    with pytest.raises(MalformedMessageError, match="44 bytes"):
        decode(_pack(body))


def test_oversized_message_is_refused_before_parsing():
    data = MaskedInput(RID, b"\x00" * 4096).encode()
    with pytest.raises(MalformedMessageError, match="exceeds"):
        decode(data, max_bytes=1024)


@pytest.mark.parametrize(
    "data", [b"", b"\xc1", b"\x93\x01\x02\x03", _pack([1, 2]), b"\xdb\xff\xff\xff\xff"]
)
def test_garbage_is_refused(data):
    with pytest.raises(MalformedMessageError):
        decode(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_fuzz_decode_never_crashes(data):
    with contextlib.suppress(MalformedMessageError):
        decode(data)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(EXAMPLES), st.data())
def test_fuzz_mutated_messages_never_crash(msg, data):
    raw = bytearray(msg.encode())
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        i = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        raw[i] = data.draw(st.integers(min_value=0, max_value=255))
    try:
        decoded = decode(bytes(raw))
    except MalformedMessageError:
        return
    assert decoded.encode()  # whatever decodes is a valid, re-encodable message


@pytest.mark.parametrize("length", [0, 1, 255, 256, 65535, 65536, 1 << 20])
def test_masked_input_parts_are_the_encoding_without_a_copy(length):
    """The zero-copy upload path sends exactly ``encode()``'s bytes, for every bin header
    size msgpack picks (bin 8/16/32), and decodes to the same vector."""
    vector = bytes(i % 251 for i in range(length - length % 4))
    msg = MaskedInput(RID, memoryview(vector))
    parts = msg.encode_parts()
    assert b"".join(parts) == msg.encode()
    assert parts[-1].obj is vector  # the vector itself, not a copy
    assert bytes(decode(b"".join(parts)).vector) == vector


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_has_parts_that_join_to_its_encoding(msg):
    assert b"".join(msg.encode_parts()) == msg.encode()


def test_a_canonical_masked_input_is_read_in_place_and_anything_else_is_left_to_decode():
    """The appliance's fast path takes exactly the canonical encoding for the expected round
    and length, as a view into the upload; any other bytes get None, so ``decode`` parses them
    and gives the precise refusal."""
    vector = bytes(range(256)) * 64
    data = bytearray(MaskedInput(RID, vector).encode())
    got = masked_input_view(data, RID, len(vector))
    assert got == decode(bytes(data)) and got.vector.obj is data  # a view, not a copy
    assert masked_input_view(data, bytes(32), len(vector)) is None  # another round
    assert masked_input_view(data, RID, len(vector) - 4) is None  # another length
    assert masked_input_view(data + b"\x00", RID, len(vector)) is None  # trailing bytes
    reordered = msgpack.packb(
        {"y": vector, "v": SCHEMA_VERSION, "t": "masked_input", "r": RID, "b": {}}
    )
    assert masked_input_view(reordered, RID, len(vector)) is None
    assert decode(reordered) == got  # valid, only not canonical: decode still takes it
    flipped = bytearray(data)
    flipped[3] ^= 1
    assert masked_input_view(flipped, RID, len(vector)) is None
