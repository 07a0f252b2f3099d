"""Why a client refused a round: the codes a client reports and the appliance audits.

A client that refuses a round (a member not on the roster, weak parameters, a transcript
that does not add up, evidence it cannot verify) tells the appliance which rule it applied,
so the audit log records the refusal beside the round and the round goes on without it.
The code is one of a closed set: a client can make the appliance log at most these words,
never free text of its choosing as an event kind. The detail that travels with it is the
refusal's own message, which names parties and rules, never a key, a share or an update.
"""

from __future__ import annotations

import enum

from sealagg.crypto.errors import (
    CkksError,
    InfeasibleParametersError,
    MalformedRosterError,
    RosterError,
    RosterMembershipError,
    RosterRollbackError,
    RosterSignatureError,
    SecAggError,
)

__all__ = ["MAX_DETAIL_CHARS", "RefusalCode", "code_for", "parse_code"]

#: The longest refusal detail a client sends and the appliance keeps.
MAX_DETAIL_CHARS = 512


class RefusalCode(enum.Enum):
    """The rule a client applied when it refused a round."""

    ROSTER_SIGNATURE = "roster_signature"  # not signed by the pinned authority (or none)
    ROSTER_ROLLBACK = "roster_rollback"  # older than a roster this client accepted
    ROSTER_MEMBERSHIP = "roster_membership"  # a ghost, a substituted key, a wrong role
    ROSTER_MALFORMED = "roster_malformed"
    PARAMETERS = "parameters"  # mode, n, k, t, quorum or vector length against the policy
    PRIVACY = "privacy"  # the round's DP would protect less than it claims
    TRANSCRIPT = "transcript"  # a protocol check failed (signatures, replays, survivors)
    ATTESTATION = "attestation"  # the appliance's TEE evidence was not verified
    CKKS = "ckks"  # a ckks round's key holder, context or contributions
    OTHER = "other"


def code_for(error: BaseException) -> RefusalCode:
    """The code for a crypto-layer refusal (the shim maps its own error types first)."""
    for kind, code in (
        (RosterSignatureError, RefusalCode.ROSTER_SIGNATURE),
        (RosterRollbackError, RefusalCode.ROSTER_ROLLBACK),
        (RosterMembershipError, RefusalCode.ROSTER_MEMBERSHIP),
        (MalformedRosterError, RefusalCode.ROSTER_MALFORMED),
        (RosterError, RefusalCode.ROSTER_MEMBERSHIP),
        (InfeasibleParametersError, RefusalCode.PARAMETERS),
        (CkksError, RefusalCode.CKKS),
        (SecAggError, RefusalCode.TRANSCRIPT),
    ):
        if isinstance(error, kind):
            return code
    return RefusalCode.OTHER


def parse_code(text: str) -> RefusalCode:
    """A reported code, or :attr:`RefusalCode.OTHER` for anything outside the closed set."""
    try:
        return RefusalCode(text)
    except ValueError:
        return RefusalCode.OTHER
