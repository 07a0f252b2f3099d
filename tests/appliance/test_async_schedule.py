"""The asynchronous schedule's rules (appliance/async_schedule.py): what a run may ask for."""

from __future__ import annotations

import pytest

from sealagg.appliance.async_schedule import AsyncSpec, check_schedule
from sealagg.appliance.runs import RunError, check_hyperparameters

GOOD = dict(mode="plaintext", min_clients=2, registered=5, privacy=False, rule="mean")


def test_a_sync_run_has_no_parameters_and_an_async_run_needs_them():
    assert check_schedule("", "") == ("sync", None)
    assert check_schedule("sync", "") == ("sync", None)
    with pytest.raises(RunError, match="the schedule is not"):
        check_schedule("sync", '{"buffer_size": 3}')
    schedule, spec = check_schedule("async", '{"buffer_size": 3, "staleness": "hinge", "b": 1}')
    assert schedule == "async" and spec is not None
    assert spec.as_dict() == {
        "buffer_size": 3,
        "max_staleness": 10,
        "staleness": "hinge",
        "a": 0.5,
        "alpha": 0.6,
        "b": 1,
        "max_open_buffers": 2,
    }
    assert spec.policy.weight(2) == pytest.approx(1 / 1.5)
    assert AsyncSpec.parse('{"buffer_size": 3, "staleness": "hinge", "b": 1}') == spec


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"mode": "fhe"}, "not 'fhe'"),
        ({"privacy": True, "mode": "ckks"}, "not 'ckks'"),
        ({"rule": "median"}, "weighted mean, not the 'median' rule"),
        ({"min_clients": 4}, "below the run's minimum of 4 clients"),
        ({"registered": 2}, "exceeds the 2 registered clients"),
    ],
)
def test_runs_an_async_schedule_cannot_serve_are_refused_with_the_reason(change, needle):
    spec = AsyncSpec.parse('{"buffer_size": 3}')
    spec.check_run(**GOOD)  # the baseline is fine
    with pytest.raises(RunError, match=needle):
        spec.check_run(**{**GOOD, **change})


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[1]", "must be a JSON object"),
        ("{", "not valid JSON"),
        ('{"buffer_size": true}', "buffer_size is a whole number"),
        ('{"buffer_size": 2.0}', "buffer_size is a whole number"),
        ('{"buffer_size": 2, "max_staleness": -1}', "max_staleness is a whole number from 0"),
        ('{"buffer_size": 2, "max_open_buffers": 0}', "max_open_buffers is a whole number from 1"),
        ('{"buffer_size": 2, "a": NaN}', "a is a finite number"),
        ('{"buffer_size": 2, "a": -1}', "a must be finite and >= 0"),
        ('{"buffer_size": 2, "alpha": 0}', r"alpha must lie in \(0, 1\]"),
        ('{"buffer_size": 2, "a": 1' + "0" * 400 + "}", r"a is a finite number, got 1000+\.\.\.$"),
        ('{"buffer_size": 2, "staleness": [1]}', "staleness must be one of"),
        ("[" * 5000 + "]" * 5000, "not valid JSON"),
    ],
)
def test_malformed_parameters_are_refused(text, needle):
    with pytest.raises(RunError, match=needle):
        AsyncSpec.parse(text)


def test_the_key_async_parameters_are_stored_under_is_not_a_hyperparameter():
    with pytest.raises(RunError, match="reserved"):
        check_hyperparameters('{"sealagg.async": {"buffer_size": 2}}')
