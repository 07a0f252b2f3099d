"""Every exception the crypto package raises, in one flat module.

Callers catch :class:`SecAggError` for "this round (or this message) is unusable"
and the specific subclasses when they need to react differently. Each abort
carries an :class:`AbortReason` so the appliance can log and report it without
parsing strings.
"""

from __future__ import annotations

import enum


class AbortReason(enum.Enum):
    """Why a round, or one participant's part in it, was abandoned."""

    BELOW_THRESHOLD = "below_threshold"
    INCONSISTENT_SURVIVORS = "inconsistent_survivors"
    BAD_SIGNATURE = "bad_signature"
    BAD_CIPHERTEXT = "bad_ciphertext"
    REPLAYED_MESSAGE = "replayed_message"
    OUT_OF_PHASE = "out_of_phase"
    UNKNOWN_SENDER = "unknown_sender"
    DUPLICATE_MESSAGE = "duplicate_message"
    MALFORMED_MESSAGE = "malformed_message"
    BOTH_SHARES_REQUESTED = "both_shares_requested"
    RECONSTRUCTION_FAILED = "reconstruction_failed"
    INFEASIBLE_PARAMETERS = "infeasible_parameters"


class SecAggError(Exception):
    """Base class: a protocol message or a round could not be processed."""

    reason: AbortReason = AbortReason.MALFORMED_MESSAGE

    def __init__(self, message: str) -> None:
        super().__init__(message)


class MalformedMessageError(SecAggError):
    """A message does not match the schema (wrong type, size, version, field)."""

    reason = AbortReason.MALFORMED_MESSAGE


class UnsupportedVersionError(MalformedMessageError):
    """A message declares a schema version this build does not speak."""


class OutOfPhaseError(SecAggError):
    """A message arrived in a phase that does not accept it."""

    reason = AbortReason.OUT_OF_PHASE


class ReplayedMessageError(SecAggError):
    """A message belongs to another round or another phase (a replay)."""

    reason = AbortReason.REPLAYED_MESSAGE


class DuplicateMessageError(SecAggError):
    """A participant sent the same phase's message twice."""

    reason = AbortReason.DUPLICATE_MESSAGE


class UnknownSenderError(SecAggError):
    """A message names or comes from someone who is not part of the round."""

    reason = AbortReason.UNKNOWN_SENDER


class BadSignatureError(SecAggError):
    """A signature did not verify against the signer's identity key."""

    reason = AbortReason.BAD_SIGNATURE


class DecryptionError(SecAggError):
    """An encrypted share failed authentication (tampered, misrouted or replayed)."""

    reason = AbortReason.BAD_CIPHERTEXT


class BelowThresholdError(SecAggError):
    """Too few participants remain for the round to finish securely."""

    reason = AbortReason.BELOW_THRESHOLD


class InconsistentSurvivorsError(SecAggError):
    """Participants were shown different survivor lists (a lying server)."""

    reason = AbortReason.INCONSISTENT_SURVIVORS


class BothSharesRequestedError(SecAggError):
    """The server asked for both secrets of one peer; honest clients refuse."""

    reason = AbortReason.BOTH_SHARES_REQUESTED


class ReconstructionError(SecAggError):
    """Secret shares do not reconstruct a consistent secret."""

    reason = AbortReason.RECONSTRUCTION_FAILED


class NotEnoughSharesError(ReconstructionError):
    """Fewer shares than the threshold were supplied."""


class InconsistentSharesError(ReconstructionError):
    """Extra shares disagree with the polynomial the others define."""


class InfeasibleParametersError(SecAggError):
    """No (k, t) meets the requested security and reliability; the text says why."""

    reason = AbortReason.INFEASIBLE_PARAMETERS


class TooFewPartiesError(InfeasibleParametersError, ValueError):
    """A sum over fewer than three parties was asked for: it would reveal their inputs.

    Also a ``ValueError``, so configuration validators and graph constructors report it
    like any other invalid value.
    """


class RoundParametersRefusedError(InfeasibleParametersError):
    """A client refuses a round whose public parameters would not protect its input."""


class CkksError(SecAggError):
    """A CKKS round or message is unusable (see the subclasses)."""

    reason = AbortReason.MALFORMED_MESSAGE


class CkksParameterError(CkksError):
    """CKKS parameters refused: no room for one plain multiplication, error or size too large."""

    reason = AbortReason.INFEASIBLE_PARAMETERS


class CkksCiphertextError(CkksError):
    """A ciphertext was made under other parameters or context, truncated or padded."""

    reason = AbortReason.BAD_CIPHERTEXT


class CkksKeyError(CkksError):
    """A context is of the wrong kind (a secret key where only a public one belongs, or none)."""

    reason = AbortReason.BAD_CIPHERTEXT
