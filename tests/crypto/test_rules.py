"""The three-party rule and the client's round-parameter check, each stated once in crypto."""

from __future__ import annotations

import pytest

from sealagg.crypto.config import check_round_parameters
from sealagg.crypto.errors import (
    InfeasibleParametersError,
    RoundParametersRefusedError,
    TooFewPartiesError,
)
from sealagg.crypto.rules import MIN_MASKED_PARTIES, TWO_PARTY_EXPLANATION, require_masking_parties


@pytest.mark.parametrize("parties", [0, 1, 2])
def test_fewer_than_three_parties_are_refused_with_the_one_explanation(parties):
    with pytest.raises(TooFewPartiesError) as refused:
        require_masking_parties(parties, "a secagg round")
    assert str(refused.value) == (
        f"a secagg round with {parties} parties refused: {TWO_PARTY_EXPLANATION}"
    )
    # Both a configuration error and a parameter infeasibility, for every caller.
    assert isinstance(refused.value, ValueError)
    assert isinstance(refused.value, InfeasibleParametersError)


def test_three_parties_are_enough():
    require_masking_parties(MIN_MASKED_PARTIES)


def test_clients_refuse_too_small_a_survivor_quorum():
    check_round_parameters(participants=10, threshold=4, minimum_survivors=6)
    with pytest.raises(RoundParametersRefusedError, match="only 5 survivors; this client needs 6"):
        check_round_parameters(participants=10, threshold=4, minimum_survivors=5)
    with pytest.raises(RoundParametersRefusedError, match="needs 8"):
        check_round_parameters(
            participants=10, threshold=4, minimum_survivors=6, minimum_survivors_floor=8
        )
    with pytest.raises(TooFewPartiesError, match="2 parties refused"):
        check_round_parameters(participants=2, threshold=2, minimum_survivors=2)
