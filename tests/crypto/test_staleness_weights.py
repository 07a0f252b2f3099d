"""Staleness weights (issue 21): the published functions, their bounds, and refusals."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealagg.crypto.staleness import StalenessPolicy, StaleUpdateError, staleness

policies = st.builds(
    StalenessPolicy,
    kind=st.sampled_from(["constant", "polynomial", "exponential", "hinge"]),
    max_staleness=st.integers(0, 50),
    a=st.floats(0, 5),
    alpha=st.floats(0.01, 1),
    b=st.integers(0, 10),
)


@given(policies)
def test_weights_start_at_one_never_grow_and_stay_positive(policy):
    weights = [policy.weight(tau) for tau in range(policy.max_staleness + 1)]
    assert weights[0] == 1.0
    assert all(0 < w <= 1 for w in weights)
    assert all(later <= earlier for earlier, later in itertools.pairwise(weights))


def test_each_kind_matches_its_formula():
    assert StalenessPolicy("constant").weight(7) == 1.0
    assert StalenessPolicy("polynomial", a=0.5).weight(3) == pytest.approx(0.5)
    assert StalenessPolicy("exponential", alpha=0.5).weight(3) == pytest.approx(0.125)
    hinge = StalenessPolicy("hinge", a=2.0, b=2)
    assert [hinge.weight(t) for t in (0, 2, 3, 4)] == pytest.approx([1, 1, 1 / 3, 1 / 5])


@given(policies, st.integers(1, 20))
def test_an_update_past_the_maximum_is_refused(policy, extra):
    with pytest.raises(StaleUpdateError, match="at most"):
        policy.weight(policy.max_staleness + extra)


def test_a_base_version_from_the_future_or_negative_is_refused():
    with pytest.raises(StaleUpdateError, match="newer"):
        staleness(current_version=3, base_version=4)
    with pytest.raises(StaleUpdateError):
        staleness(current_version=3, base_version=-1)
    assert staleness(5, 2) == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "linear"},
        {"max_staleness": -1},
        {"alpha": 0.0},
        {"alpha": 1.5},
        {"a": math.nan},
        {"a": -1.0},
        {"b": -2},
    ],
)
def test_bad_policies_are_refused_with_the_parameter_named(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs)).replace("kind", "staleness kind")):
        StalenessPolicy(**kwargs)
