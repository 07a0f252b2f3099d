"""kernels.weighted_mean's blocked, four-rows-at-a-time loop against the float64 reference.

The kernel reads each update once in column blocks (16384 coordinates, fewer for small models)
and adds eight rows per pass, then four, then one; these cases put every mix of the three
against block edges, so a row or a column skipped or counted twice shows.
"""

from __future__ import annotations

import numpy as np
import pytest

from sealagg.kernels import _average, weighted_mean
from sealagg.kernels import reference as ref

BLOCK = _average._BLOCK


@pytest.mark.parametrize("n", [1, 3, 4, 5, 7, 8, 9, 12, 13, 15, 17])
@pytest.mark.parametrize("d", [1, 1023, 1025, BLOCK - 1, 2 * BLOCK + 5, 5 * BLOCK + 3])
def test_every_row_remainder_across_block_edges(n, d):
    rng = np.random.default_rng(1000 * n + d)
    updates = rng.standard_normal((n, d)).astype(np.float32)
    weights = rng.uniform(0.1, 3.0, n)
    out = weighted_mean(updates, weights)
    expected = ref.weighted_mean(updates, weights)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("row", range(13))
def test_each_row_counts_exactly_once(row):
    """One weight on one row returns that row bit for bit, in a group of 8, of 4, or alone."""
    d = 3 * BLOCK + 17
    updates = np.random.default_rng(row).standard_normal((13, d)).astype(np.float32)
    weights = np.zeros(13)
    weights[row] = 0.25
    np.testing.assert_array_equal(weighted_mean(updates, weights), updates[row])


@pytest.mark.parametrize("n", [4, 8, 12])
def test_float64_accumulation_inside_a_group(n):
    # In float32, 1e8 + 1 - 1e8 loses the 1; summed in float64 it stays.
    d = BLOCK + 1
    updates = np.zeros((n, d), np.float32)
    updates[:3, -1] = [1e8, 1.0, -1e8]
    updates[:3, 0] = [1e8, 1.0, -1e8]
    out = weighted_mean(updates, np.ones(n))
    np.testing.assert_allclose(out[[0, -1]], [1 / n, 1 / n], rtol=1e-6)


def test_non_finite_in_a_remainder_row_is_found_with_its_index():
    updates = np.zeros((13, 2 * BLOCK + 3), np.float32)
    updates[12, 2 * BLOCK + 1] = np.nan  # the row after the groups of eight and four
    with pytest.raises(ValueError, match=rf"index \(12, {2 * BLOCK + 1}\)"):
        weighted_mean(updates, np.ones(13))


def test_small_models_still_use_several_blocks():
    assert _average._block_for(1_000_000) == BLOCK
    assert _average._MIN_BLOCK <= _average._block_for(20_000) < BLOCK
    assert _average._block_for(0) == _average._MIN_BLOCK
