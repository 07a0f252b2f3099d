"""Every exception and rejection reason of the attest package, in one flat module.

A refusal always names its :class:`Reason` so callers (the client shim, the
appliance's audit log) can act on it and report it without parsing strings.
"""

from __future__ import annotations

import enum


class Reason(enum.Enum):
    """Why evidence was refused. One value per distinct failure a caller may need to tell apart."""

    UNKNOWN_NONCE = "unknown_nonce"  # the verifier never issued this nonce
    REPLAYED_NONCE = "replayed_nonce"  # the nonce was already consumed
    TOO_OLD = "too_old"  # the nonce was issued longer ago than the policy allows
    FORMAT_NOT_ALLOWED = "format_not_allowed"  # the policy has no section for this evidence type
    PROVIDER_UNAVAILABLE = "provider_unavailable"  # e.g. NVIDIA's SDK is not installed
    MALFORMED_EVIDENCE = "malformed_evidence"
    UNSUPPORTED_VERSION = "unsupported_version"  # unknown report / quote version
    BAD_SIGNATURE = "bad_signature"  # the signed body does not verify
    BROKEN_CHAIN = "broken_chain"  # certificate chain missing, mis-signed, expired or mismatched
    UNTRUSTED_ROOT = "untrusted_root"  # the chain ends in a root the policy does not name
    WRONG_TLS_KEY = "bound_to_another_tls_key"  # report data != SHA-512(nonce || live SPKI)
    MEASUREMENT_NOT_ALLOWED = "measurement_not_allowed"
    DEBUG_ENABLED = "debug_enabled"
    TCB_TOO_LOW = "tcb_too_low"
    REQUIRED_CLAIM = "required_claim_mismatch"
    COLLATERAL_MISSING = "collateral_missing"  # the bundle lacks an item this appraisal needs
    COLLATERAL_INVALID = "collateral_invalid"  # mis-signed, malformed, stale or not yet valid
    TCB_STATUS = "tcb_status_not_allowed"  # the vendor's TCB status (e.g. OutOfDate) is refused
    REVOKED = "revoked"  # a certificate in the chain is on the vendor's CRL
    QE_IDENTITY = "quoting_enclave_identity"  # TDX: the QE is not Intel's, or is debuggable
    INSECURE_NOT_ALLOWED = "insecure_attester_not_allowed"  # the client did not opt in
    MISSING_EVIDENCE = "missing_required_evidence"  # the policy requires a format not presented


class AttestationError(Exception):
    """Base class: attestation could not establish trust."""


class PolicyError(AttestationError):
    """The appraisal policy is missing or malformed; nothing may be sent."""


class AppraisalFailure(AttestationError):  # noqa: N818 - an outcome, raised inside appraisal
    """Raised inside the appraisal pipeline; the verifier turns it into a refused result."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class AttestationRefusedError(AttestationError):
    """The appliance's evidence was refused; carries the :class:`AttestationResult`."""

    def __init__(self, result: object) -> None:
        reason = getattr(result, "reason", None)
        detail = getattr(result, "detail", "")
        name = reason.value if isinstance(reason, Reason) else "refused"
        super().__init__(f"attestation refused ({name}): {detail}")
        self.result = result
        self.reason = reason


class AttesterUnavailableError(AttestationError):
    """The configured evidence source does not exist on this machine."""
