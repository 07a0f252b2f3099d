"""Float updates in and out of the ring: weighted means survive secure aggregation."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealagg.crypto import (
    IdentityKey,
    Phase,
    QuantizationSpec,
    RoundConfig,
    decode_sum,
    encode_update,
    encoded_length,
)
from sealagg.crypto.simulation import run_round


def _mean_error_bound(spec: QuantizationSpec, weights: np.ndarray, reference: np.ndarray) -> float:
    """|Σŵx/Σŵ - Σwx/Σw| from rounding each coordinate (≤ 1/scale) and each weight."""
    n, total = len(weights), float(weights.sum())
    sum_err = n / spec.scale
    weight_err = n / spec.weight_scale
    return (sum_err + float(np.max(np.abs(reference))) * weight_err) / (total - weight_err)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=1, max_value=300),
    st.floats(min_value=0.01, max_value=10.0),
    st.integers(min_value=0, max_value=2**32 - 1),
)
def test_weighted_mean_matches_float64_within_quantization_bound(n, d, clip, seed):
    rng = np.random.default_rng(seed)
    spec = QuantizationSpec(clip=clip, max_clients=n)
    updates = rng.uniform(-clip, clip, (n, d)).astype(np.float32)
    weights = rng.uniform(1e-4, 1.0, n)
    total = np.zeros(encoded_length(d), dtype=np.uint32)
    for x, w in zip(updates, weights, strict=True):
        total += encode_update(x, float(w), spec)
    mean, total_weight = decode_sum(total, spec)
    reference = np.average(updates.astype(np.float64), axis=0, weights=weights)
    assert abs(total_weight - weights.sum()) <= n / spec.weight_scale
    assert np.max(np.abs(mean - reference)) <= _mean_error_bound(spec, weights, reference)


def test_tiny_weights_keep_their_precision():
    # Flower scales by num_examples/max_weight and loses ~3% for small clients; the 32-bit
    # ring with a separate weight coordinate keeps small weights exact to ~1e-8.
    spec = QuantizationSpec(clip=1.0, max_clients=100)
    x = np.linspace(-1, 1, 1000, dtype=np.float32)
    mean, w = decode_sum(encode_update(x, 1e-3, spec), spec)
    assert abs(w - 1e-3) < 1e-7
    assert np.max(np.abs(mean - x)) < 1e-4  # ~(1/scale)/w + |x|·(1/weight_scale)/w


def test_values_outside_the_clip_range_are_clamped_and_never_wrap():
    spec = QuantizationSpec(clip=1.0, max_clients=3)
    x = np.array([1e6, -1e6, 0.5], dtype=np.float32)
    total = sum((encode_update(x, 1.0, spec) for _ in range(3)), np.zeros(4, dtype=np.uint32))
    mean, w = decode_sum(total, spec)
    np.testing.assert_allclose(mean, [1.0, -1.0, 0.5], atol=1e-8)
    assert abs(w - 3.0) < 1e-8


@pytest.mark.parametrize(
    ("update", "weight", "error"),
    [
        (np.array([np.nan, 0.0], dtype=np.float32), 1.0, ValueError),
        (np.array([np.inf, 0.0], dtype=np.float32), 1.0, ValueError),
        (np.zeros(3, dtype=np.float32), 0.0, ValueError),
        (np.zeros(3, dtype=np.float32), 1.5, ValueError),
        (np.zeros(3, dtype=np.float32), float("nan"), ValueError),
        (np.zeros((2, 2), dtype=np.float32), 1.0, TypeError),
        (np.zeros(3, dtype=np.int32), 1.0, TypeError),
    ],
)
def test_bad_updates_are_refused(update, weight, error):
    with pytest.raises(error):
        encode_update(update, weight, QuantizationSpec(clip=1.0, max_clients=4))


def test_spec_validation():
    with pytest.raises(ValueError):
        QuantizationSpec(clip=0.0, max_clients=3)
    with pytest.raises(ValueError):
        QuantizationSpec(clip=1.0, max_clients=0)
    with pytest.raises(ValueError):
        QuantizationSpec(clip=1.0, max_clients=3, bits=16)
    with pytest.raises(TypeError):
        decode_sum(np.zeros(3, dtype=np.int64), QuantizationSpec(clip=1.0, max_clients=3))


def test_secure_round_yields_the_weighted_mean_of_survivors():
    n, d = 12, 2000
    rng = np.random.default_rng(5)
    spec = QuantizationSpec(clip=2.0, max_clients=n)
    ids = {u: IdentityKey.generate() for u in range(1, n + 1)}
    config = RoundConfig.create(
        round_id=os.urandom(32),
        identities={u: k.verify_key_bytes for u, k in ids.items()},
        threshold=3,
        vector_length=encoded_length(d),
        degree=None,  # complete: a sparse random graph may leave a client fewer than t shares
    )
    updates = {u: rng.normal(0, 0.5, d).astype(np.float32) for u in ids}
    weights = {u: float(rng.uniform(0.05, 1.0)) for u in ids}
    inputs = {u: encode_update(updates[u], weights[u], spec) for u in ids}
    dropouts = {3: Phase.SHARE_KEYS, 8: Phase.MASKED_INPUT, 11: Phase.UNMASKING}
    result = run_round(config, ids, inputs, dropouts)
    assert 3 not in result.survivors and 8 not in result.survivors and 11 in result.survivors
    mean, total_weight = decode_sum(result.total, spec)
    members = list(result.survivors)
    w = np.array([weights[u] for u in members])
    clipped = np.clip(np.stack([updates[u] for u in members]).astype(np.float64), -2.0, 2.0)
    ref = np.average(clipped, axis=0, weights=w)
    assert abs(total_weight - w.sum()) < 1e-6
    assert np.max(np.abs(mean - ref)) <= _mean_error_bound(spec, w, ref)
