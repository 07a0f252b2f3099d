"""Modular arithmetic in Z_(2^bits): exact agreement with the reference, wrap-around, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sealagg.kernels import mod_add_bytes_into, mod_add_into, mod_sub_into, mod_sum
from sealagg.kernels import reference as ref

MAX32 = 2**32 - 1
# Crosses the 8192-column block boundary of mod_sum, with a remainder.
WIDE = 3 * (1 << 13) + 5

bits_st = st.integers(2, 32)


@st.composite
def pairs(draw):
    n = draw(st.integers(0, 100))
    acc = draw(hnp.arrays(np.uint32, n))
    x = draw(hnp.arrays(np.uint32, n))
    return acc, x, draw(bits_st)


@settings(deadline=None, max_examples=100)
@given(pairs())
def test_add_and_sub_match_reference(case):
    acc, x, bits = case
    added = acc.copy()
    mod_add_into(added, x, bits)
    np.testing.assert_array_equal(added, ref.mod_add(acc, x, bits))
    subbed = acc.copy()
    mod_sub_into(subbed, x, bits)
    np.testing.assert_array_equal(subbed, ref.mod_sub(acc, x, bits))


@pytest.mark.parametrize("bits", [2, 8, 20, 31, 32])
def test_wrap_around(bits):
    top = 2**bits - 1
    acc = np.array([top, top, 0, 1], np.uint32)
    mod_add_into(acc, np.array([1, top, 0, 0], np.uint32), bits)
    np.testing.assert_array_equal(acc, [0, top - 1, 0, 1])
    mod_sub_into(acc, np.array([1, top - 1, 1, 2], np.uint32), bits)
    np.testing.assert_array_equal(acc, [top, 0, top, top])


@pytest.mark.parametrize("bits", [7, 32])
def test_add_then_sub_is_identity_on_large_vectors(bits):
    rng = np.random.default_rng(6)
    acc = rng.integers(0, 2**bits, WIDE, dtype=np.uint32)
    x = rng.integers(0, 2**32, WIDE, dtype=np.uint32)
    original = acc.copy()
    mod_add_into(acc, x, bits)
    np.testing.assert_array_equal(acc, ref.mod_add(original, x, bits))
    mod_sub_into(acc, x, bits)
    np.testing.assert_array_equal(acc, original)


def test_strided_operands():
    rng = np.random.default_rng(7)
    base = rng.integers(0, 2**32, 200, dtype=np.uint32)
    x = rng.integers(0, 2**32, 200, dtype=np.uint32)[1::2]
    expected = ref.mod_add(base[::2], x, 32)
    mod_add_into(base[::2], x)
    np.testing.assert_array_equal(base[::2], expected)


def test_overlapping_operands_behave_like_numpy():
    rng = np.random.default_rng(13)
    base = rng.integers(0, 2**32, 1000, dtype=np.uint32)
    expected = ref.mod_add(base[1:], base[:-1], 32)
    mod_add_into(base[1:], base[:-1])
    np.testing.assert_array_equal(base[1:], expected)
    doubled = ref.mod_add(base, base, 11)
    mod_add_into(base, base, 11)
    np.testing.assert_array_equal(base, doubled)
    mirrored = ref.mod_sub(base, base[::-1], 32)
    mod_sub_into(base, base[::-1])
    np.testing.assert_array_equal(base, mirrored)


@settings(deadline=None, max_examples=60)
@given(
    st.tuples(st.integers(0, 12), st.integers(0, 40)).flatmap(
        lambda shape: hnp.arrays(np.uint32, shape)
    ),
    bits_st,
)
def test_mod_sum_matches_reference(rows, bits):
    out = mod_sum(rows, bits)
    assert out.dtype == np.uint32 and out.shape == (rows.shape[1],)
    np.testing.assert_array_equal(out, ref.mod_sum(rows, bits))


@pytest.mark.parametrize("bits", [5, 32])
def test_mod_sum_wraps_many_times(bits):
    rows = np.full((300, WIDE), MAX32, np.uint32)
    rows[::3] = np.arange(WIDE, dtype=np.uint32)
    expected = ref.mod_sum(rows[:, :50], bits)
    np.testing.assert_array_equal(mod_sum(rows, bits)[:50], expected)
    total = (int(MAX32) * 200 + 100 * np.arange(WIDE, dtype=np.int64)) % 2**bits
    np.testing.assert_array_equal(mod_sum(rows, bits), total.astype(np.uint32))


def test_mod_sum_equals_running_sum():
    rng = np.random.default_rng(8)
    rows = rng.integers(0, 2**32, (20, WIDE), dtype=np.uint32)
    acc = np.zeros(WIDE, np.uint32)
    for row in rows:
        mod_add_into(acc, row)
    np.testing.assert_array_equal(mod_sum(rows), acc)
    np.testing.assert_array_equal(mod_sum(rows[:, ::3]), rows[:, ::3].sum(0, dtype=np.uint32))


def keystream_forms(raw: bytes):
    return {
        "bytes": raw,
        "bytearray": bytearray(raw),
        "memoryview": memoryview(raw),
        "ndarray": np.frombuffer(raw, dtype=np.uint8),
        "unaligned memoryview": memoryview(b"\x00" + raw)[1:],
        "writable ndarray": np.array(bytearray(raw), dtype=np.uint8),
    }


@pytest.mark.parametrize("form", list(keystream_forms(b"")))
@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("bits", [32, 13])
def test_add_bytes_matches_reference(form, sign, bits):
    rng = np.random.default_rng(9)
    acc = rng.integers(0, 2**32, 1001, dtype=np.uint32)
    raw = rng.bytes(4 * acc.size)
    expected = ref.mod_add_bytes(acc, raw, sign, bits)
    mod_add_bytes_into(acc, keystream_forms(raw)[form], sign, bits)
    np.testing.assert_array_equal(acc, expected)


def test_add_bytes_accepts_numpy_integer_sign():
    acc = np.zeros(1, np.uint32)
    mod_add_bytes_into(acc, b"\x05\x00\x00\x00", np.int8(-1))
    np.testing.assert_array_equal(acc, [MAX32 - 4])


def test_add_bytes_is_little_endian_and_round_trips():
    acc = np.zeros(2, np.uint32)
    mod_add_bytes_into(acc, b"\x01\x00\x00\x00\x00\x00\x00\x80", 1)
    np.testing.assert_array_equal(acc, [1, 2**31])
    mod_add_bytes_into(acc, b"\x01\x00\x00\x00\x00\x00\x00\x80", -1)
    np.testing.assert_array_equal(acc, [0, 0])
    mod_add_bytes_into(acc, b"\x02\x00\x00\x00\x00\x00\x00\x00", -1)
    np.testing.assert_array_equal(acc, [MAX32 - 1, 0])


def test_add_bytes_with_empty_vector():
    acc = np.zeros(0, np.uint32)
    mod_add_bytes_into(acc, b"", 1)
    assert acc.size == 0


# --- input errors ------------------------------------------------------------------

VALID = np.zeros(4, np.uint32)


@pytest.mark.parametrize("func", [mod_add_into, mod_sub_into])
@pytest.mark.parametrize(
    ("acc", "x", "bits", "error", "message"),
    [
        (np.zeros(4, np.int64), VALID, 32, TypeError, "acc must have dtype uint32"),
        (np.zeros(4, np.uint64), VALID, 32, TypeError, "acc must have dtype uint32"),
        ([0, 0, 0, 0], VALID, 32, TypeError, "acc must be a numpy.ndarray"),
        (np.zeros((2, 2), np.uint32), VALID, 32, ValueError, "acc must be 1-D"),
        (np.zeros(4, np.uint32), np.zeros(4, np.int32), 32, TypeError, "x must have dtype"),
        (np.zeros(4, np.uint32), np.zeros(4, ">u4"), 32, TypeError, "x must have dtype"),
        (np.zeros(4, np.uint32), np.zeros(5, np.uint32), 32, ValueError, "same length"),
        (np.zeros(4, np.uint32), np.zeros((4, 1), np.uint32), 32, ValueError, "x must be 1-D"),
        (np.zeros(4, np.uint32), VALID, 1, ValueError, "bits"),
        (np.zeros(4, np.uint32), VALID, 33, ValueError, "bits"),
        (np.zeros(4, np.uint32), VALID, "32", TypeError, "bits"),
    ],
)
def test_add_sub_reject_bad_input(func, acc, x, bits, error, message):
    with pytest.raises(error, match=message):
        func(acc, x, bits)


@pytest.mark.parametrize("func", [mod_add_into, mod_sub_into])
def test_add_sub_reject_read_only_accumulator(func):
    acc = np.zeros(4, np.uint32)
    acc.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        func(acc, VALID)


@pytest.mark.parametrize(
    ("rows", "bits", "error", "message"),
    [
        (np.zeros(4, np.uint32), 32, ValueError, "rows must be 2-D"),
        (np.zeros((2, 2, 2), np.uint32), 32, ValueError, "rows must be 2-D"),
        (np.zeros((2, 2), np.int32), 32, TypeError, "rows must have dtype"),
        ([[0, 0]], 32, TypeError, "rows must be a numpy.ndarray"),
        (np.zeros((2, 2), np.uint32), 0, ValueError, "bits"),
        (np.zeros((2, 2), np.uint32), None, TypeError, "bits"),
    ],
)
def test_mod_sum_rejects_bad_input(rows, bits, error, message):
    with pytest.raises(error, match=message):
        mod_sum(rows, bits)


@pytest.mark.parametrize(
    ("keystream", "sign", "error", "message"),
    [
        (bytes(15), 1, ValueError, "expected 16 bytes"),
        (bytes(17), 1, ValueError, "expected 16 bytes"),
        (bytes(0), 1, ValueError, "expected 16 bytes"),
        ("0" * 16, 1, TypeError, "keystream must be bytes"),
        (list(range(16)), 1, TypeError, "keystream must be bytes"),
        (np.zeros(16, np.int8), 1, TypeError, "keystream must have dtype uint8"),
        (np.zeros(4, np.uint32), 1, TypeError, "keystream must have dtype uint8"),
        (np.zeros((4, 4), np.uint8), 1, ValueError, "keystream must be 1-D"),
        (np.zeros(32, np.uint8)[::2], 1, ValueError, "C-contiguous"),
        (memoryview(bytes(32))[::2], 1, ValueError, "C-contiguous"),
        (bytes(16), 0, ValueError, "sign must be"),
        (bytes(16), 2, ValueError, "sign must be"),
        (bytes(16), True, TypeError, "sign must be"),
        (bytes(16), 1.0, TypeError, "sign must be"),
        (bytes(16), "+", TypeError, "sign must be"),
    ],
)
def test_add_bytes_rejects_bad_input(keystream, sign, error, message):
    with pytest.raises(error, match=message):
        mod_add_bytes_into(np.zeros(4, np.uint32), keystream, sign)


def test_add_bytes_rejects_bad_accumulator_and_bits():
    with pytest.raises(TypeError, match="acc must have dtype uint32"):
        mod_add_bytes_into(np.zeros(4, np.int32), bytes(16), 1)
    with pytest.raises(ValueError, match="acc must be 1-D"):
        mod_add_bytes_into(np.zeros((2, 2), np.uint32), bytes(16), 1)
    read_only = np.zeros(4, np.uint32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        mod_add_bytes_into(read_only, bytes(16), 1)
    with pytest.raises(ValueError, match="bits"):
        mod_add_bytes_into(np.zeros(4, np.uint32), bytes(16), 1, bits=40)
