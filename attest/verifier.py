"""The verifier (RFC 9334): issue a nonce, appraise evidence against the policy, return a result.

The pipeline, in order, stops at the first failure and names it:
nonce (ours, unused, young enough) -> format allowed -> provider present ->
signature and endorsement chain -> binding to the live TLS key -> debug ->
measurement -> TCB -> required claims.

The verifier used by the client shim is this class; an external verification
service can stand in for it by implementing :class:`VerifierLike`.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from sealagg.attest.binding import report_data
from sealagg.attest.collateral import CollateralBundle
from sealagg.attest.errors import AppraisalFailure, Reason
from sealagg.attest.evidence import Evidence
from sealagg.attest.nonces import NonceIssuer
from sealagg.attest.nvidia import NvidiaGpuAppraiser
from sealagg.attest.policy import FormatPolicy, Policy
from sealagg.attest.result import AttestationResult
from sealagg.attest.sevsnp import SevSnpAppraiser
from sealagg.attest.software import SoftwareAppraiser
from sealagg.attest.tdx import TdxAppraiser


class Appraiser(Protocol):
    """One evidence format: authenticate it and return its claims, or raise AppraisalFailure."""

    format: str
    insecure: bool

    def appraise(
        self,
        evidence: Evidence,
        section: FormatPolicy,
        now: float,
        *,
        binding: bytes,
        collateral: CollateralBundle,
    ) -> dict[str, object]:
        """``collateral``: vendor-signed items (TCB info, CRLs ...) the appraiser verifies itself.
        ``binding`` is the expected report data; hardware formats return theirs as the
        ``report_data`` claim and the verifier compares; formats whose evidence cannot carry
        it (NVIDIA's SDK takes a nonce) must hand it to their own verifier."""
        ...

    def check_tcb(self, claims: Mapping[str, object], section: FormatPolicy) -> None: ...


class VerifierLike(Protocol):
    def challenge(self) -> bytes: ...

    def appraise(
        self,
        evidence: Evidence,
        *,
        nonce: bytes,
        tls_spki_der: bytes,
        collateral: CollateralBundle | None = None,
    ) -> AttestationResult: ...


def default_appraisers() -> dict[str, Appraiser]:
    items: list[Appraiser] = [
        SevSnpAppraiser(),
        TdxAppraiser(),
        SoftwareAppraiser(),
        NvidiaGpuAppraiser(),
    ]
    return {a.format: a for a in items}


class Verifier:
    def __init__(
        self,
        policy: Policy,
        *,
        appraisers: Mapping[str, Appraiser] | None = None,
        clock: Callable[[], float] = time.time,
        collateral: CollateralBundle | None = None,
    ) -> None:
        """``collateral``: the bundle shipped in the kit; one sent with the evidence adds to it."""
        if not isinstance(policy, Policy):
            raise TypeError("a Verifier needs a loaded Policy")
        self.policy = policy
        self._appraisers = dict(appraisers if appraisers is not None else default_appraisers())
        self._clock = clock
        self._nonces = NonceIssuer()
        self._collateral = collateral or CollateralBundle.empty()

    def challenge(self) -> bytes:
        """A fresh nonce for one appraisal."""
        return self._nonces.issue(self._clock())

    def appraise(
        self,
        evidence: Evidence,
        *,
        nonce: bytes,
        tls_spki_der: bytes,
        collateral: CollateralBundle | None = None,
    ) -> AttestationResult:
        """Appraise ``evidence`` made for ``nonce`` and the TLS key ``tls_spki_der``.

        ``collateral`` (e.g. sent by the appliance) is merged under the local bundle; it needs
        no trust in its carrier because each item is vendor-signed and checked."""
        fmt = evidence.format
        appraiser = self._appraisers.get(fmt)
        insecure = bool(appraiser and appraiser.insecure)
        try:
            claims = self._run(
                evidence, nonce, tls_spki_der, appraiser, self._collateral.merged(collateral)
            )
        except AppraisalFailure as failure:
            return AttestationResult.refused(fmt, failure.reason, failure.detail, insecure=insecure)
        return AttestationResult(True, fmt, insecure=insecure, claims=_public(claims))

    def _run(
        self,
        evidence: Evidence,
        nonce: bytes,
        spki: bytes,
        appraiser: Appraiser | None,
        collateral: CollateralBundle,
    ) -> dict[str, object]:
        now = self._clock()
        self._nonces.redeem(nonce, now, self.policy.max_age_seconds)
        section = self.policy.section(evidence.format)
        if section is None:
            raise AppraisalFailure(
                Reason.FORMAT_NOT_ALLOWED, f"the policy does not allow {evidence.format!r} evidence"
            )
        if appraiser is None:
            raise AppraisalFailure(
                Reason.PROVIDER_UNAVAILABLE, f"no appraiser for {evidence.format!r} evidence"
            )
        expected = report_data(nonce, spki)
        try:
            claims = appraiser.appraise(
                evidence, section, now, binding=expected, collateral=collateral
            )
        except AppraisalFailure:
            raise
        except Exception as exc:  # a parser bug must refuse, never accept or crash
            raise AppraisalFailure(
                Reason.MALFORMED_EVIDENCE, f"unparseable evidence: {exc}"
            ) from None
        if not hmac.compare_digest(bytes(claims["report_data"]), expected):  # type: ignore[arg-type]
            raise AppraisalFailure(
                Reason.WRONG_TLS_KEY,
                "report data is not SHA-512(nonce || SPKI of this TLS key): the evidence was made "
                "for another TLS key (a relay?) or another nonce",
            )
        if claims.get("debug") is not False:
            raise AppraisalFailure(Reason.DEBUG_ENABLED, "the guest allows debugging")
        if section.measurements and not any(_matches(claims, e) for e in section.measurements):
            raise AppraisalFailure(
                Reason.MEASUREMENT_NOT_ALLOWED,
                "the measurement is not among those the policy allows",
            )
        appraiser.check_tcb(claims, section)
        for name, want in section.required_claims.items():
            have = claims.get(name)
            if have is None or not _equal(have, want):
                raise AppraisalFailure(
                    Reason.REQUIRED_CLAIM, f"claim {name!r} is {have!r}, need {want!r}"
                )
        return claims


def _matches(claims: Mapping[str, object], entry: Mapping[str, str]) -> bool:
    return all(
        isinstance(claims.get(k), str) and hmac.compare_digest(str(claims[k]), v)
        for k, v in entry.items()
    )


def _equal(have: object, want: object) -> bool:
    if isinstance(have, str) and isinstance(want, str):
        return have.lower() == want.lower()
    return have == want


def _public(claims: Mapping[str, object]) -> dict[str, object]:
    return {k: v.hex() if isinstance(v, bytes) else v for k, v in claims.items()}
