"""Adaptive phase deadlines (issue 25, appliance/phase_timing.py): the window of recent
rounds, the minimum history, the floor and the configured maximum, the nearest-rank p95,
bad samples, and bounded memory. Expected values are computed here independently (numpy's
``inverted_cdf`` percentile, or sorting), never copied from the module."""

from __future__ import annotations

import json
import math
import random
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealagg.appliance.config import DeadlinesSection
from sealagg.appliance.phase_timing import PhaseTimings, nearest_rank_p95


def _section(**overrides) -> DeadlinesSection:
    values = {"adaptive_factor": 4.0, "adaptive_floor": 5.0, "adaptive_rounds": 20}
    values.update(overrides)
    return DeadlinesSection(**values)


def _p95(values: list[float]) -> float:
    """Independent reference: numpy's inverted-CDF percentile (nearest rank)."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), 95, method="inverted_cdf"))


def _sorted_rank_p95(values: list[float]) -> float:
    """Second reference: the value at rank ceil(0.95 n), with exact rational arithmetic."""
    rank = math.ceil(Fraction(95, 100) * len(values))
    return sorted(values)[rank - 1]


def _fill(timings: PhaseTimings, phase: str, rounds: dict[int, list[float]]) -> None:
    for number, answers in rounds.items():
        for seconds in answers:
            timings.record(number, phase, seconds)


# --- the percentile -------------------------------------------------------------------------


@given(st.lists(st.floats(0.0, 1e6, allow_nan=False), min_size=1, max_size=400))
def test_p95_is_the_nearest_rank_percentile(values):
    assert nearest_rank_p95(values) == _p95(values) == _sorted_rank_p95(values)


@pytest.mark.parametrize("n", range(1, 20))
def test_p95_of_fewer_than_twenty_answers_is_the_slowest(n):
    values = [float(i) + 0.5 for i in range(n)]  # max is n - 0.5
    random.Random(n).shuffle(values)
    assert nearest_rank_p95(values) == max(values) == n - 0.5


def test_p95_of_twenty_answers_skips_only_the_slowest():
    values = [float(i) for i in range(1, 21)]  # 1..20: 19 of 20 = 95 % are <= 19
    assert nearest_rank_p95(values) == 19.0 == _p95(values)


def test_p95_of_nothing_is_refused():
    with pytest.raises(ValueError):
        nearest_rank_p95([])


# --- the deadline ---------------------------------------------------------------------------


def test_adaptive_deadline_is_factor_times_the_pooled_p95():
    timings = PhaseTimings(_section(adaptive_factor=3.0, adaptive_floor=1.0))
    history = {1: [2.0, 3.0, 4.0], 2: [5.0, 2.5], 3: [6.0, 1.0, 3.5, 2.0]}
    _fill(timings, "share_keys", history)
    pooled = [s for answers in history.values() for s in answers]
    expected = min(60.0, max(1.0, 3.0 * _p95(pooled)))
    assert expected == 18.0  # 9 answers: p95 is the slowest, 6 s
    assert timings.deadline("share_keys", 60.0) == expected
    assert timings.describe("share_keys", 60.0) == {
        "phase": "share_keys",
        "configured": 60.0,
        "chosen": expected,
        "adaptive": True,
        "rounds": 3,
        "samples": len(pooled),
        "p95": 6.0,
    }


def test_many_answers_use_the_95th_percentile_not_the_maximum():
    timings = PhaseTimings(_section(adaptive_factor=2.0, adaptive_floor=0.5))
    rng = random.Random(25)
    history = {n: [rng.uniform(0.1, 3.0) for _ in range(40)] for n in range(1, 6)}
    history[3][7] = 250.0  # one member hiccuped badly once
    _fill(timings, "masked_input", history)
    pooled = [s for answers in history.values() for s in answers]
    p95 = _p95(pooled)
    assert p95 < 3.0 < max(pooled)  # the outlier does not set the deadline
    assert timings.deadline("masked_input", 300.0) == pytest.approx(2.0 * p95, rel=0, abs=0)


def test_fewer_than_min_rounds_keeps_the_configured_deadline():
    timings = PhaseTimings(_section(adaptive_min_rounds=3, adaptive_floor=1.0))
    _fill(timings, "unmasking", {10: [1.0, 1.5], 11: [2.0]})
    described = timings.describe("unmasking", 60.0)
    assert described["chosen"] == 60.0
    assert described["adaptive"] is False
    assert (described["rounds"], described["samples"], described["p95"]) == (2, 3, 2.0)
    # many answers in one round do not make up for missing rounds
    _fill(timings, "unmasking", {11: [0.5] * 500})
    assert timings.deadline("unmasking", 60.0) == 60.0
    _fill(timings, "unmasking", {12: [1.0]})  # the third round
    pooled = [1.0, 1.5, 2.0] + [0.5] * 500 + [1.0]
    assert timings.deadline("unmasking", 60.0) == max(1.0, 4.0 * _p95(pooled))


def test_no_history_at_all_keeps_the_configured_deadline():
    timings = PhaseTimings(_section())
    _fill(timings, "share_keys", {1: [1.0], 2: [1.0], 3: [1.0]})
    described = timings.describe("consistency_check", 45.0)  # another phase: nothing measured
    assert described == {
        "phase": "consistency_check",
        "configured": 45.0,
        "chosen": 45.0,
        "adaptive": False,
        "rounds": 0,
        "samples": 0,
        "p95": None,
    }


def test_a_fast_history_is_held_up_by_the_floor():
    timings = PhaseTimings(_section(adaptive_floor=7.5))
    _fill(timings, "share_keys", {n: [0.01, 0.02, 0.03] for n in range(1, 5)})
    assert 4.0 * _p95([0.01, 0.02, 0.03]) < 7.5
    assert timings.deadline("share_keys", 60.0) == 7.5
    assert timings.describe("share_keys", 60.0)["adaptive"] is True


def test_a_slow_history_never_goes_above_the_configured_maximum():
    timings = PhaseTimings(_section())
    _fill(timings, "masked_input", {n: [50.0, 80.0, 120.0] for n in range(1, 5)})
    assert 4.0 * 120.0 > 300.0
    assert timings.deadline("masked_input", 300.0) == 300.0
    assert timings.describe("masked_input", 300.0)["adaptive"] is True


def test_a_floor_above_the_maximum_yields_the_maximum():
    timings = PhaseTimings(_section(adaptive_floor=90.0))
    _fill(timings, "share_keys", {n: [0.1] for n in range(1, 5)})
    assert timings.deadline("share_keys", 60.0) == 60.0


def test_adaptive_off_returns_the_configured_deadline():
    timings = PhaseTimings(_section(adaptive=False, adaptive_floor=1.0))
    _fill(timings, "share_keys", {n: [0.5, 0.6] for n in range(1, 10)})
    described = timings.describe("share_keys", 60.0)
    assert described["chosen"] == timings.deadline("share_keys", 60.0) == 60.0
    assert described["adaptive"] is False
    assert described["p95"] == 0.6  # still measured and reported, just not used


def test_phases_are_measured_separately():
    timings = PhaseTimings(_section(adaptive_floor=1.0))
    _fill(timings, "advertise_keys", {n: [30.0] for n in range(1, 4)})  # includes training
    _fill(timings, "share_keys", {n: [0.5] for n in range(1, 4)})
    assert timings.deadline("advertise_keys", 600.0) == 120.0
    assert timings.deadline("share_keys", 60.0) == 2.0


def test_default_section_values():
    timings = PhaseTimings(DeadlinesSection())  # factor 4, floor 5, 3 rounds minimum
    _fill(timings, "share_keys", {1: [2.0], 2: [3.0]})
    assert timings.deadline("share_keys", 60.0) == 60.0
    _fill(timings, "share_keys", {3: [2.5]})
    assert timings.deadline("share_keys", 60.0) == 12.0


def test_describe_is_json_safe():
    timings = PhaseTimings(_section())
    _fill(timings, "share_keys", {n: [1.25, 2.5] for n in range(1, 5)})
    for described in (timings.describe("share_keys", 60), timings.describe("nothing", 60)):
        assert json.loads(json.dumps(described, allow_nan=False)) == described
        assert isinstance(described["configured"], float)


@pytest.mark.parametrize("configured", [0.0, -1.0, float("nan"), float("inf")])
def test_a_nonsensical_configured_deadline_is_refused(configured):
    with pytest.raises(ValueError):
        PhaseTimings(_section()).deadline("share_keys", configured)


# --- the window of rounds -------------------------------------------------------------------


def test_only_the_last_rounds_by_number_count():
    timings = PhaseTimings(_section(adaptive_rounds=3, adaptive_min_rounds=3, adaptive_floor=1.0))
    history = {1: [100.0], 2: [90.0], 3: [2.0], 4: [3.0], 5: [4.0]}
    _fill(timings, "share_keys", history)
    described = timings.describe("share_keys", 1000.0)
    assert (described["rounds"], described["samples"]) == (3, 3)
    assert described["p95"] == _p95([2.0, 3.0, 4.0]) == 4.0  # rounds 1 and 2 evicted
    assert described["chosen"] == 16.0


def test_a_late_answer_for_an_evicted_round_is_ignored_but_one_in_the_window_counts():
    timings = PhaseTimings(_section(adaptive_rounds=3, adaptive_floor=1.0))
    _fill(timings, "share_keys", {7: [1.0], 8: [1.0], 9: [1.0]})
    timings.record(6, "share_keys", 500.0)  # older than every round of the full window
    assert timings.describe("share_keys", 1000.0)["p95"] == 1.0
    timings.record(7, "share_keys", 2.0)  # still in the window
    described = timings.describe("share_keys", 1000.0)
    assert (described["rounds"], described["samples"], described["p95"]) == (3, 4, 2.0)
    timings.record(10, "share_keys", 3.0)  # evicts round 7 and both its answers
    described = timings.describe("share_keys", 1000.0)
    assert (described["rounds"], described["samples"], described["p95"]) == (3, 3, 3.0)


def test_rounds_arriving_out_of_order_keep_the_highest_numbers():
    timings = PhaseTimings(_section(adaptive_rounds=2, adaptive_min_rounds=2, adaptive_floor=1.0))
    _fill(timings, "share_keys", {5: [5.0], 3: [3.0], 4: [4.0]})
    described = timings.describe("share_keys", 1000.0)
    assert (described["rounds"], described["p95"]) == (2, 5.0)
    assert described["samples"] == 2  # rounds 4 and 5; round 3 evicted on arrival of 4


# --- bad samples ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seconds", [float("nan"), float("inf"), float("-inf"), -0.001, -5.0, "3", None, True, object()]
)
def test_bad_answer_times_are_ignored(seconds):
    timings = PhaseTimings(_section(adaptive_floor=1.0))
    _fill(timings, "share_keys", {1: [2.0], 2: [2.0]})
    timings.record(3, "share_keys", seconds)
    described = timings.describe("share_keys", 60.0)
    assert (described["rounds"], described["samples"]) == (2, 2)
    assert described["adaptive"] is False  # the bad sample did not make a third round
    timings.record(3, "share_keys", 2.0)
    assert timings.deadline("share_keys", 60.0) == 8.0


@pytest.mark.parametrize("number", [True, 3.0, "3", None])
def test_non_integer_round_numbers_are_ignored(number):
    timings = PhaseTimings(_section(adaptive_floor=1.0))
    _fill(timings, "share_keys", {1: [2.0], 2: [2.0]})
    timings.record(number, "share_keys", 9.0)
    assert timings.describe("share_keys", 60.0)["samples"] == 2


def test_integer_and_numpy_answer_times_count():
    timings = PhaseTimings(_section(adaptive_floor=1.0))
    timings.record(1, "share_keys", 3)
    timings.record(2, "share_keys", np.float32(1.5))
    timings.record(3, "share_keys", np.float64(2.5))
    described = timings.describe("share_keys", 60.0)
    assert (described["samples"], described["p95"], described["chosen"]) == (3, 3.0, 12.0)
    assert json.loads(json.dumps(described)) == described


def test_zero_seconds_is_a_valid_answer_time():
    timings = PhaseTimings(_section(adaptive_floor=2.0))
    _fill(timings, "share_keys", {n: [0.0] for n in range(1, 4)})
    described = timings.describe("share_keys", 60.0)
    assert (described["p95"], described["chosen"]) == (0.0, 2.0)


# --- bounded memory -------------------------------------------------------------------------


def test_memory_stays_bounded_over_many_rounds():
    timings = PhaseTimings(_section(adaptive_rounds=20), samples_per_round=64)
    for number in range(1, 3001):
        for member in range(100):
            timings.record(number, "masked_input", float(member))
    described = timings.describe("masked_input", 300.0)
    assert described["rounds"] == 20
    assert described["samples"] == 20 * 64


def test_a_round_larger_than_the_cap_keeps_a_uniform_sample():
    """A first-come cap would keep only the fastest answers and shorten the deadline; the
    reservoir keeps a uniform sample, so the slow tail stays represented."""
    timings = PhaseTimings(
        _section(adaptive_min_rounds=1, adaptive_floor=1.0),
        samples_per_round=200,
        rng=random.Random(2025),
    )
    answers = [float(i) for i in range(1, 5001)]  # arrive fastest first
    for seconds in answers:
        timings.record(1, "share_keys", seconds)
    described = timings.describe("share_keys", 100_000.0)
    assert described["samples"] == 200
    # the first 200 answers are all <= 200 s; a uniform sample's p95 is near the true 4750 s
    assert described["p95"] > 4000.0
    assert described["p95"] <= max(answers)


def test_a_nonpositive_sample_cap_is_refused():
    with pytest.raises(ValueError):
        PhaseTimings(_section(), samples_per_round=0)


@given(
    st.lists(
        st.tuples(
            st.integers(0, 40),
            st.floats(allow_nan=True, allow_infinity=True),
        ),
        max_size=200,
    ),
    st.floats(0.001, 1e5),
    st.floats(0.001, 1e3),
    st.floats(1.0, 20.0),
)
def test_the_deadline_stays_between_the_floor_and_the_maximum(answers, configured, floor, factor):
    section = _section(adaptive_floor=floor, adaptive_factor=factor, adaptive_rounds=5)
    timings = PhaseTimings(section, rng=random.Random(0))
    for number, seconds in answers:
        timings.record(number, "share_keys", seconds)
    described = timings.describe("share_keys", configured)
    assert min(floor, configured) <= described["chosen"] <= configured
    kept = {n: [s for m, s in answers if m == n and math.isfinite(s) and s >= 0] for n in range(41)}
    window = sorted((n for n, values in kept.items() if values), reverse=True)[:5]
    pooled = [s for n in window for s in kept[n]]
    assert described["rounds"] == len(window)
    assert described["samples"] == len(pooled)
    assert described["adaptive"] == (len(window) >= section.adaptive_min_rounds)
    if described["adaptive"]:
        assert described["chosen"] == min(configured, max(floor, factor * _p95(pooled)))
    else:
        assert described["chosen"] == configured


def test_forget_drops_a_phase_history_and_forget_all_drops_every_phase():
    timings = PhaseTimings(DeadlinesSection(adaptive_min_rounds=1, adaptive_floor=1.0))
    for phase in ("share_keys", "unmasking"):
        timings.record(1, phase, 2.0)
    assert timings.deadline("share_keys", 60.0) == 8.0
    timings.forget("share_keys")
    assert timings.deadline("share_keys", 60.0) == 60.0
    assert timings.deadline("unmasking", 60.0) == 8.0
    timings.forget()
    assert timings.deadline("unmasking", 60.0) == 60.0


def test_min_rounds_above_the_window_is_refused():
    with pytest.raises(ValueError, match="adaptive_min_rounds"):
        DeadlinesSection(adaptive_rounds=2, adaptive_min_rounds=3)
