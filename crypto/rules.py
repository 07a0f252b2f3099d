"""Protocol rules that every party checks the same way, stated once.

The appliance's configuration check, the round it builds, the graph
constructors, the parameter finder and the client that refuses a weak round
all ask this module, so the rule and its explanation cannot drift apart.
"""

from __future__ import annotations

from sealagg.crypto.errors import TooFewPartiesError

__all__ = ["MIN_MASKED_PARTIES", "TWO_PARTY_EXPLANATION", "require_masking_parties"]

#: The fewest parties whose sum may be revealed. With two, the sum minus one's own
#: input *is* the other party's input, so masking (or a CKKS sum, or a bucket) hides nothing.
MIN_MASKED_PARTIES = 3

TWO_PARTY_EXPLANATION = (
    "secure aggregation needs at least 3 participants: with two parties pairwise "
    "masking hides nothing, because each party can subtract its own input from the sum "
    "and read the other's; use an attested aggregator and/or differential privacy instead"
)


def require_masking_parties(parties: int, what: str = "secure aggregation") -> None:
    """Refuse a revealed sum over fewer than :data:`MIN_MASKED_PARTIES` parties.

    Raises :class:`~sealagg.crypto.errors.TooFewPartiesError` (a ``ValueError`` and an
    ``InfeasibleParametersError``) whose text names ``what`` and the one explanation.
    """
    if parties < MIN_MASKED_PARTIES:
        raise TooFewPartiesError(f"{what} with {parties} parties refused: {TWO_PARTY_EXPLANATION}")
