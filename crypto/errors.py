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
    COIN_WITHHELD = "coin_withheld"
    TOO_MANY_UNFINISHED_ROUNDS = "too_many_unfinished_rounds"


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


class RosterError(SecAggError):
    """The federation roster refuses a round or is itself unusable (crypto/roster.py)."""

    reason = AbortReason.UNKNOWN_SENDER


class MalformedRosterError(RosterError):
    """A roster or signed roster does not match its format."""

    reason = AbortReason.MALFORMED_MESSAGE


class RosterSignatureError(RosterError):
    """The roster is not signed by the pinned federation authority (or is for another
    federation): the appliance's own list of participants is never enough."""

    reason = AbortReason.BAD_SIGNATURE


class RosterRollbackError(RosterError):
    """The roster is older than one this client already accepted, or a second roster claims
    an accepted version."""

    reason = AbortReason.REPLAYED_MESSAGE


class RosterMembershipError(RosterError):
    """A round member is not on the roster, has another identity key, or a role that does
    not fit (a ghost participant)."""

    reason = AbortReason.UNKNOWN_SENDER


class RosterValidityError(RosterMembershipError):
    """A round member's roster entry is not valid at this time."""


class PolicyRefusedError(RoundParametersRefusedError):
    """A round's mode or parameters break the federation's policy (``c`` colluders, ``m``)."""


class ModeNotAllowedError(PolicyRefusedError):
    """The round's mode is not one the federation's policy allows (plaintext is opt-in)."""


class CkksRoleError(CkksError):
    """A CKKS party is not on the roster in the role the round gives it: a key holder without
    the key-holder role, a contributor without a contributing role, or a ghost (the appliance
    named a party the authority never admitted). Nothing is encrypted to, sealed for or
    decrypted at its request."""

    reason = AbortReason.UNKNOWN_SENDER


class CkksContributionsRefusedError(CkksError):
    """The key holder refuses to decrypt: what it was given is not a sum over at least m
    distinct, signed contributions of roster data owners of this round."""

    reason = AbortReason.BELOW_THRESHOLD


class TranscriptReusedError(ReplayedMessageError):
    """A client was asked to take part again in a round transcript (or round id) it already
    took part in: a replay of an earlier round, refused by the client's transcript ledger."""


class InvalidPublicKeyError(MalformedMessageError):
    """An advertised X25519 public key is all-zero or of small order: every key agreement
    with it yields the all-zero secret, so it would silently void the masks built on it."""


class BlameRefusedError(SecAggError):
    """A blame of a share sender does not hold up: its evidence is not signed by the accused,
    or the revealed key does not match the sender's commitment, or the share opens fine."""

    reason = AbortReason.BAD_CIPHERTEXT


class ExcludedSenderError(UnknownSenderError):
    """A client a neighbour proved to have sent a sealed share that does not open is out
    of the round: its later messages are refused (it counts as dropped)."""


class CoinRevealError(SecAggError):
    """A client that committed to a graph coin did not reveal it, or revealed one that does
    not open its commitment: the round aborts as a whole (a server that could continue
    without some coins could choose among graphs)."""

    reason = AbortReason.COIN_WITHHELD


class RevealBudgetError(SecAggError):
    """The client's ledger holds too many recent rounds in which it revealed its coin and
    that then never finished: it takes part in no new round for now (each such round gave
    the appliance one more draw of the graph)."""

    reason = AbortReason.TOO_MANY_UNFINISHED_ROUNDS


class BaseVersionRefusedError(RoundParametersRefusedError):
    """An asynchronous buffer's round lists, for this client, a base version other than the
    one it trained on (or a staleness it cannot have): its weight would be computed from a
    lie, so it sends nothing (crypto/buffer_context.py)."""
