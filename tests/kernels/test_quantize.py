"""Ring quantization: scale choice, kernel vs reference, no wrap-around, unbiasedness."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sealagg.kernels import dequantize, mod_add_into, mod_sum, quantization_scale, quantize
from sealagg.kernels import reference as ref


def limit(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def uniform_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.integers(0, 1 << 16, size=size, dtype=np.uint16)


# --- quantization_scale -----------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 16, 20, 32])
@pytest.mark.parametrize("num_clients", [1, 2, 7, 100])
@pytest.mark.parametrize("clip", [0.01, 1.0, 3.7])
def test_scale_is_the_largest_that_fits(bits, num_clients, clip):
    assert num_clients < limit(bits)  # every combination here is feasible
    s = quantization_scale(clip, num_clients, bits)
    assert num_clients * (clip * s + 1) <= limit(bits)
    assert s == pytest.approx((limit(bits) / num_clients - 1) / clip, rel=1e-12)


@pytest.mark.parametrize(
    ("num_clients", "bits"), [(127, 8), (1000, 8), (2**15 - 1, 16), (1, 2), (2**31, 32)]
)
def test_scale_rejects_too_many_clients(num_clients, bits):
    with pytest.raises(ValueError, match="no positive quantization scale"):
        quantization_scale(1.0, num_clients, bits)


def test_scale_rejects_overflowing_scale():
    with pytest.raises(ValueError, match="no positive quantization scale"):
        quantization_scale(1e-320, 2)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"clip": 0.0}, ValueError, "clip"),
        ({"clip": -1.0}, ValueError, "clip"),
        ({"clip": float("nan")}, ValueError, "clip"),
        ({"clip": float("inf")}, ValueError, "clip"),
        ({"clip": "1"}, TypeError, "clip"),
        ({"num_clients": 0}, ValueError, "num_clients"),
        ({"num_clients": -3}, ValueError, "num_clients"),
        ({"num_clients": 2.0}, TypeError, "num_clients"),
        ({"num_clients": True}, TypeError, "num_clients"),
        ({"bits": 1}, ValueError, "bits"),
        ({"bits": 33}, ValueError, "bits"),
        ({"bits": 16.0}, TypeError, "bits"),
    ],
)
def test_scale_rejects_bad_parameters(kwargs, error, message):
    args = {"clip": 1.0, "num_clients": 10, "bits": 32} | kwargs
    with pytest.raises(error, match=message):
        quantization_scale(**args)


# --- quantize / dequantize vs reference --------------------------------------------


@st.composite
def quantize_cases(draw):
    bits = draw(st.integers(2, 32))
    clip = draw(st.floats(0.01, 100.0))
    scale = draw(st.floats(1e-3, 0.999)) * limit(bits) / clip
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    n = draw(st.integers(0, 200))
    values = st.one_of(st.floats(-1.0, 1.0, width=32), st.floats(-300.0, 300.0, width=32))
    x = draw(hnp.arrays(dtype, n, elements=values))
    noise = draw(hnp.arrays(np.uint16, n))
    return x, scale, clip, noise, bits


@settings(deadline=None, max_examples=150)
@given(quantize_cases())
def test_quantize_matches_reference_exactly(case):
    x, scale, clip, noise, bits = case
    q = quantize(x, scale, clip, noise, bits)
    assert q.dtype == np.uint32
    np.testing.assert_array_equal(q, ref.quantize(x, scale, clip, noise, bits))
    assert int(q.max(initial=0)) < 2**bits


@settings(deadline=None, max_examples=100)
@given(st.integers(2, 32).flatmap(lambda b: st.tuples(st.just(b), hnp.arrays(np.uint32, 50))))
def test_dequantize_matches_reference_exactly(case):
    bits, q = case
    scale = 12.5
    np.testing.assert_array_equal(dequantize(q, scale, bits), ref.dequantize(q, scale, bits))


def test_large_vectors_match_reference():
    rng = np.random.default_rng(4)
    x = rng.standard_normal(100_003).astype(np.float32)
    noise = uniform_noise(rng, x.size)
    s = quantization_scale(2.0, 50)
    q = quantize(x, s, 2.0, noise)
    np.testing.assert_array_equal(q, ref.quantize(x, s, 2.0, noise))
    np.testing.assert_array_equal(dequantize(q, s), ref.dequantize(q, s))


def test_two_complement_encoding():
    x = np.array([-1.0, 0.0, 1.0, -0.5], dtype=np.float64)
    noise = np.zeros(4, np.uint16)
    np.testing.assert_array_equal(
        quantize(x, 2.0, 1.0, noise, bits=32), [2**32 - 2, 0, 2, 2**32 - 1]
    )
    np.testing.assert_array_equal(quantize(x, 2.0, 1.0, noise, bits=8), [254, 0, 2, 255])
    np.testing.assert_array_equal(
        dequantize(np.array([254, 0, 2, 255, 127, 128], np.uint32), 2.0, bits=8),
        [-1.0, 0.0, 1.0, -0.5, 63.5, -64.0],
    )


def test_dequantize_ignores_bits_above_the_ring():
    q = np.array([0xFFFF_FF01, 0x1234_0001], np.uint32)
    np.testing.assert_array_equal(dequantize(q, 1.0, bits=8), [1.0, 1.0])


def test_clamp_and_noise_extremes():
    x = np.array([-5.0, 5.0, 1.0, -1.0], dtype=np.float32)
    scale = 10.0
    q_low = quantize(x, scale, 1.0, np.zeros(4, np.uint16))
    q_high = quantize(x, scale, 1.0, np.full(4, 65535, np.uint16))
    np.testing.assert_array_equal(dequantize(q_low, 1.0), [-10, 10, 10, -10])
    np.testing.assert_array_equal(dequantize(q_high, 1.0), [-10, 10, 10, -10])
    half = quantize(np.array([0.05], np.float32), 10.0, 1.0, np.array([32768], np.uint16))
    assert dequantize(half, 1.0)[0] in (0.0, 1.0)


def test_non_contiguous_input():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(200)[::2]
    noise = uniform_noise(rng, 200)[1::2]
    expected = ref.quantize(x, 100.0, 3.0, noise)
    np.testing.assert_array_equal(quantize(x, 100.0, 3.0, noise), expected)


# --- aggregate behaviour -----------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 16, 24, 32])
@pytest.mark.parametrize("num_clients", [1, 3, 40])
def test_sum_of_clients_decodes_within_quantization_bound(bits, num_clients):
    assert num_clients + 1 < limit(bits)  # every combination here is feasible
    rng = np.random.default_rng(bits * 1000 + num_clients)
    clip, d = 0.8, 2_000
    s = quantization_scale(clip, num_clients, bits)
    xs = rng.uniform(-1.2 * clip, 1.2 * clip, size=(num_clients, d)).astype(np.float32)
    rows = np.stack([quantize(x, s, clip, uniform_noise(rng, d), bits) for x in xs])
    decoded = dequantize(mod_sum(rows, bits), s, bits)
    exact = np.clip(xs.astype(np.float64), -clip, clip).sum(axis=0)
    assert np.max(np.abs(decoded - exact)) <= num_clients / s


@pytest.mark.parametrize("bits", [3, 8, 16, 32])
@pytest.mark.parametrize("num_clients", [1, 2, 5, 33])
@pytest.mark.parametrize("clip", [1.0, 0.37])
def test_sum_never_wraps_at_the_bound(bits, num_clients, clip):
    if num_clients >= limit(bits):
        with pytest.raises(ValueError, match="no positive quantization scale"):
            quantization_scale(clip, num_clients, bits)
        return
    s = quantization_scale(clip, num_clients, bits)
    # Extreme inputs (at and beyond the clip) with the noise that rounds furthest out.
    for value, noise_value in ((clip, 65535), (-clip, 0), (10 * clip, 65535), (-10 * clip, 0)):
        q = quantize(np.full(4, value), s, clip, np.full(4, noise_value, np.uint16), bits)
        code = int(dequantize(q[:1], 1.0, bits)[0])
        assert num_clients * abs(code) <= limit(bits)
        acc = np.zeros(4, np.uint32)
        for _ in range(num_clients):
            mod_add_into(acc, q, bits)
        total = dequantize(acc, s, bits)
        assert np.all(np.sign(total) == np.sign(value))
        expected = num_clients * math.copysign(clip, value)
        np.testing.assert_allclose(total, expected, atol=num_clients / s, rtol=0)


def test_stochastic_rounding_is_unbiased_statistically():
    rng = np.random.default_rng(20240601)
    draws = 200_000
    for value in (0.3, -0.3, 2.71):
        q = quantize(np.full(draws, value), 1.0, 4.0, uniform_noise(rng, draws), bits=16)
        decoded = dequantize(q, 1.0, bits=16)
        frac = value - math.floor(value)
        standard_error = math.sqrt(frac * (1 - frac) / draws)
        assert abs(decoded.mean() - value) < 4 * standard_error
        assert set(np.unique(decoded)) <= {math.floor(value), math.floor(value) + 1}


@settings(deadline=None, max_examples=50)
@given(st.floats(-100.0, 100.0))
def test_rounding_bias_is_below_2_to_minus_16_over_all_noise_values(value):
    noise = np.arange(1 << 16, dtype=np.uint16)
    q = quantize(np.full(noise.size, value), 1.0, 100.0, noise, bits=16)
    mean = dequantize(q, 1.0, bits=16).mean()
    assert abs(mean - value) <= 2.0**-16 + 1e-12


# --- input errors ------------------------------------------------------------------


def q_args(**overrides):
    args = {
        "x": np.zeros(5, np.float32),
        "scale": 100.0,
        "clip": 1.0,
        "noise": np.zeros(5, np.uint16),
        "bits": 32,
    }
    return args | overrides


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_quantize_rejects_non_finite_with_index(bad, dtype):
    x = np.zeros(1000, dtype)
    x[123] = bad
    x[999] = bad
    message = r"x contains NaN or Inf \(2 value\(s\); first at index 123"
    with pytest.raises(ValueError, match=message):
        quantize(**q_args(x=x, noise=np.zeros(1000, np.uint16)))


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"x": [0.0] * 5}, TypeError, "x must be a numpy.ndarray"),
        ({"x": np.zeros(5, np.int32)}, TypeError, "x must have dtype"),
        ({"x": np.zeros(5, np.float16)}, TypeError, "x must have dtype"),
        ({"x": np.zeros((5, 1), np.float32)}, ValueError, "x must be 1-D"),
        ({"noise": np.zeros(5, np.uint32)}, TypeError, "noise must have dtype uint16"),
        ({"noise": np.zeros(5, np.int16)}, TypeError, "noise must have dtype uint16"),
        ({"noise": b"\x00" * 10}, TypeError, "noise must be a numpy.ndarray"),
        ({"noise": np.zeros(4, np.uint16)}, ValueError, "same length"),
        ({"noise": np.zeros(6, np.uint16)}, ValueError, "same length"),
        ({"noise": np.zeros((5, 1), np.uint16)}, ValueError, "noise must be 1-D"),
        ({"scale": 0.0}, ValueError, "scale"),
        ({"scale": -1.0}, ValueError, "scale"),
        ({"scale": float("nan")}, ValueError, "scale"),
        ({"scale": float("inf")}, ValueError, "scale"),
        ({"scale": "2"}, TypeError, "scale"),
        ({"clip": 0.0}, ValueError, "clip"),
        ({"clip": float("nan")}, ValueError, "clip"),
        ({"clip": None}, TypeError, "clip"),
        ({"bits": 1}, ValueError, "bits"),
        ({"bits": 0}, ValueError, "bits"),
        ({"bits": 33}, ValueError, "bits"),
        ({"bits": 64}, ValueError, "bits"),
        ({"bits": 32.0}, TypeError, "bits"),
        ({"bits": False}, TypeError, "bits"),
        ({"scale": 2.0**31, "clip": 1.0}, ValueError, "would wrap"),
        ({"scale": 200.0, "bits": 8}, ValueError, "would wrap"),
    ],
)
def test_quantize_rejects_bad_input(overrides, error, message):
    with pytest.raises(error, match=message):
        quantize(**q_args(**overrides))


def test_quantize_accepts_the_largest_single_client_scale():
    q = quantize(**q_args(x=np.ones(5, np.float32), scale=float(limit(8)), bits=8))
    np.testing.assert_array_equal(dequantize(q, 1.0, bits=8), [limit(8)] * 5)


@pytest.mark.parametrize(
    ("q", "scale", "bits", "error", "message"),
    [
        (np.zeros(3, np.int32), 1.0, 32, TypeError, "q must have dtype uint32"),
        (np.zeros(3, np.uint64), 1.0, 32, TypeError, "q must have dtype uint32"),
        ([0, 1], 1.0, 32, TypeError, "q must be a numpy.ndarray"),
        (np.zeros((3, 2), np.uint32), 1.0, 32, ValueError, "q must be 1-D"),
        (np.zeros(3, np.uint32), 0.0, 32, ValueError, "scale"),
        (np.zeros(3, np.uint32), float("nan"), 32, ValueError, "scale"),
        (np.zeros(3, np.uint32), 1.0, 1, ValueError, "bits"),
        (np.zeros(3, np.uint32), 1.0, 33, ValueError, "bits"),
    ],
)
def test_dequantize_rejects_bad_input(q, scale, bits, error, message):
    with pytest.raises(error, match=message):
        dequantize(q, scale, bits)


def test_quantize_into_a_slice_of_a_larger_buffer():
    """``out=`` fills a slice in place with exactly the allocating call's codes."""
    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, 1000).astype(np.float32)
    noise = rng.integers(0, 1 << 16, 1000, dtype=np.uint16)
    buffer = np.full(1002, 7, dtype=np.uint32)
    returned = quantize(x, 1000.0, 3.0, noise, 20, out=buffer[1:-1])
    np.testing.assert_array_equal(buffer[1:-1], quantize(x, 1000.0, 3.0, noise, 20))
    assert returned.base is buffer and buffer[0] == 7 and buffer[-1] == 7


@pytest.mark.parametrize(
    "out, error",
    [
        (np.zeros(10, dtype=np.int32), TypeError),
        (np.zeros(9, dtype=np.uint32), ValueError),
        (np.zeros(20, dtype=np.uint32)[::2], ValueError),
    ],
)
def test_quantize_refuses_an_unusable_out(out, error):
    x = np.zeros(10, dtype=np.float32)
    with pytest.raises(error):
        quantize(x, 10.0, 1.0, np.zeros(10, dtype=np.uint16), out=out)
