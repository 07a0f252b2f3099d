"""The outcome of one appraisal: accepted or refused with a reason, never a bare bool."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

from sealagg.attest.errors import AttestationRefusedError, Reason

INSECURE_WARNING = (
    "WARNING: the appliance was attested by the SOFTWARE attester. This proves nothing about "
    "the hardware or the code it runs; for development and tests only. Do not send real data."
)


@dataclasses.dataclass(frozen=True)
class AttestationResult:
    """RFC 9334 attestation result.

    ``accepted`` is True only when every check passed; otherwise ``reason`` names
    the first failed check. Using the result as a truth value raises, so a caller
    cannot write ``if verifier.appraise(...)`` and miss a refusal by accident:
    call :meth:`require` or read :attr:`accepted` explicitly.
    """

    accepted: bool
    format: str
    reason: Reason | None = None
    detail: str = ""
    #: True when the evidence came from a source that proves nothing (the software attester).
    insecure: bool = False
    #: The claims of the CPU TEE (or software) evidence; each additional piece's claims
    #: (e.g. the GPU's) under its format name: ``claims["nvidia-gpu"]``.
    claims: Mapping[str, object] = dataclasses.field(default_factory=dict)
    #: Every format appraised, the CPU TEE first; defaults to ``(format,)``.
    formats: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.accepted == (self.reason is not None):
            raise ValueError("an accepted result has no reason; a refused one must have one")
        object.__setattr__(self, "claims", MappingProxyType(dict(self.claims)))
        object.__setattr__(self, "formats", tuple(self.formats) or (self.format,))

    def __bool__(self) -> bool:
        raise TypeError("use result.accepted or result.require(), not the result as a bool")

    def require(self) -> AttestationResult:
        """Return ``self`` if accepted, else raise :class:`AttestationRefusedError`."""
        if not self.accepted:
            raise AttestationRefusedError(self)
        return self

    def summary(self) -> dict[str, object]:
        """A log-safe record (no report data, no raw evidence) for the audit log."""
        out: dict[str, object] = {
            "accepted": self.accepted,
            "format": self.format,
            "insecure": self.insecure,
        }
        if len(self.formats) > 1:
            out["formats"] = list(self.formats)
        if self.reason is not None:
            out["reason"] = self.reason.value
            out["detail"] = self.detail
        for key in ("measurement", "mrtd"):
            if key in self.claims:
                out[key] = self.claims[key]
        return out

    @classmethod
    def refused(cls, fmt: str, reason: Reason, detail: str, *, insecure: bool = False):
        return cls(False, fmt, reason, detail, insecure)
