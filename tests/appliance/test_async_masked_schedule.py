"""Masked and ckks asynchronous runs' creation rules (appliance/async_schedule.py): a buffer
is one secure-aggregation (or CKKS) round, so K is at least three parties and the policy's m."""

from __future__ import annotations

import pytest

from sealagg.appliance.async_schedule import AsyncSpec
from sealagg.appliance.runs import RunError

GOOD = dict(mode="secagg+", min_clients=2, registered=8, privacy=False, rule="mean")


@pytest.mark.parametrize("mode", ["secagg", "secagg+", "ckks"])
def test_masked_modes_take_async_runs_with_k_at_least_three_and_m(mode):
    AsyncSpec.parse('{"buffer_size": 3}').check_run(**{**GOOD, "mode": mode}, minimum_sum=3)
    AsyncSpec.parse('{"buffer_size": 5}').check_run(**{**GOOD, "mode": mode}, minimum_sum=5)
    with pytest.raises(RunError, match="at least 3 parties"):
        AsyncSpec.parse('{"buffer_size": 2}').check_run(**{**GOOD, "mode": mode}, minimum_sum=0)
    with pytest.raises(RunError, match="below 5 in"):
        AsyncSpec.parse('{"buffer_size": 4}').check_run(**{**GOOD, "mode": mode}, minimum_sum=5)


def test_plaintext_k_is_not_bound_by_the_masked_floor_and_unknown_modes_are_refused():
    AsyncSpec.parse('{"buffer_size": 2}').check_run(**{**GOOD, "mode": "plaintext"}, minimum_sum=5)
    with pytest.raises(RunError, match="not 'fhe'"):
        AsyncSpec.parse('{"buffer_size": 3}').check_run(**{**GOOD, "mode": "fhe"})
