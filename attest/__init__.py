"""TEE attestation in RFC 9334 roles: the appliance attests, the client shim verifies.

* :class:`Verifier` issues a nonce and appraises :class:`Evidence` against a
  :class:`Policy` (deny by default, see :func:`load_policy`), returning an
  :class:`AttestationResult` that names a :class:`Reason` for every refusal.
* Evidence is bound to the appliance's TLS key: report data =
  SHA-512(nonce || DER SubjectPublicKeyInfo) (:func:`report_data`).
* A policy lists REQUIRED evidence: one CPU TEE (SEV-SNP or TDX), optionally NVIDIA GPU
  evidence in addition; strict defaults (docs/attest-policy.md).
* Formats: AMD SEV-SNP reports, Intel TDX quotes v4, NVIDIA GPU (optional SDK),
  and an INSECURE software attester for development, accepted only when the client itself
  constructs ``Verifier(..., allow_insecure=True)``.
"""

from sealagg.attest.attesters import Attester, ConfigfsTsmAttester
from sealagg.attest.binding import NONCE_BYTES, report_data
from sealagg.attest.errors import (
    AttestationError,
    AttestationRefusedError,
    AttesterUnavailableError,
    PolicyError,
    Reason,
)
from sealagg.attest.evidence import FORMATS, NVIDIA_GPU, SEV_SNP, SOFTWARE, TDX, Evidence
from sealagg.attest.policy import Policy, load_policy, parse_policy
from sealagg.attest.result import INSECURE_WARNING, AttestationResult
from sealagg.attest.software import SoftwareAttester
from sealagg.attest.verifier import Verifier, VerifierLike

__all__ = [
    "FORMATS",
    "INSECURE_WARNING",
    "NONCE_BYTES",
    "NVIDIA_GPU",
    "SEV_SNP",
    "SOFTWARE",
    "TDX",
    "AttestationError",
    "AttestationRefusedError",
    "AttestationResult",
    "Attester",
    "AttesterUnavailableError",
    "ConfigfsTsmAttester",
    "Evidence",
    "Policy",
    "PolicyError",
    "Reason",
    "SoftwareAttester",
    "Verifier",
    "VerifierLike",
    "load_policy",
    "parse_policy",
    "report_data",
]
