"""The verifier (RFC 9334): issue a nonce, appraise evidence against the policy, return a result.

The pipeline, in order, stops at the first failure and names it:

1. nonce (ours, unused, young enough): consumed first, so a refused attempt cannot be retried;
2. a TLS key to bind to;
3. the set of evidence: one piece per format the policy requires, no duplicates, no format the
   policy does not name (FORMAT_NOT_ALLOWED), software evidence only if the client opted in
   (INSECURE_NOT_ALLOWED), nothing required missing (MISSING_EVIDENCE);
4. per piece, CPU TEE first: appraiser present -> signature, endorsement chain and collateral
   -> binding to the live TLS key -> debug -> measurement -> TCB -> required claims.

Every piece is bound to the same nonce and TLS key, so a relay cannot combine a genuine GPU's
evidence with anything else. The verifier never raises on hostile input: any exception other
than :class:`AppraisalFailure` anywhere in the pipeline is a MALFORMED_EVIDENCE refusal.

The result's claims are those of the CPU TEE evidence (or software evidence); the claims of each
additional piece (e.g. the GPU's) sit under its format name, e.g. ``claims["nvidia-gpu"]``.

The verifier used by the client shim is this class; an external verification
service can stand in for it by implementing :class:`VerifierLike`.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from sealagg.attest.binding import report_data
from sealagg.attest.collateral import CollateralBundle
from sealagg.attest.errors import AppraisalFailure, Reason
from sealagg.attest.evidence import NVIDIA_GPU, SOFTWARE, Evidence
from sealagg.attest.nonces import NonceIssuer
from sealagg.attest.nvidia import NvidiaGpuAppraiser
from sealagg.attest.policy import FormatPolicy, Policy
from sealagg.attest.result import AttestationResult
from sealagg.attest.sevsnp import SevSnpAppraiser
from sealagg.attest.software import SoftwareAppraiser
from sealagg.attest.tdx import TdxAppraiser

#: Detail strings from unexpected exceptions are cut to this length (they go to audit logs).
_MAX_DETAIL = 300


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
        evidence: Evidence | Sequence[Evidence],
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
        allow_insecure: bool = False,
    ) -> None:
        """``collateral``: the bundle shipped in the kit; one sent with the evidence adds to it.

        ``allow_insecure``: the CLIENT's own decision to accept the software attester (it proves
        nothing). It is not read from the policy, which the operator of the appraised appliance
        may have written; default refuse (Reason.INSECURE_NOT_ALLOWED).
        """
        if not isinstance(policy, Policy):
            raise TypeError("a Verifier needs a loaded Policy")
        if not isinstance(allow_insecure, bool):
            raise TypeError("allow_insecure is True or False")
        self.policy = policy
        self.allow_insecure = allow_insecure
        self._appraisers = dict(appraisers if appraisers is not None else default_appraisers())
        self._clock = clock
        self._nonces = NonceIssuer()
        self._collateral = collateral or CollateralBundle.empty()

    def challenge(self) -> bytes:
        """A fresh nonce for one appraisal."""
        return self._nonces.issue(self._clock())

    def appraise(
        self,
        evidence: Evidence | Sequence[Evidence],
        *,
        nonce: bytes,
        tls_spki_der: bytes,
        collateral: CollateralBundle | None = None,
    ) -> AttestationResult:
        """Appraise ``evidence`` made for ``nonce`` and the TLS key ``tls_spki_der``.

        ``evidence``: one piece, or one piece per format the policy requires (e.g. the SNP
        report and the GPU evidence). ``collateral`` (e.g. sent by the appliance) is merged
        under the local bundle; it needs no trust in its carrier because each item is
        vendor-signed and checked. Never raises: every failure is a refused result."""
        label = _label(evidence)
        insecure = self._insecure(evidence)
        try:
            return self._appraise(evidence, nonce, tls_spki_der, collateral, insecure)
        except AppraisalFailure as failure:
            return AttestationResult.refused(
                label, failure.reason, failure.detail, insecure=insecure
            )
        except Exception as exc:  # a bug on hostile input must refuse, never accept or crash
            return AttestationResult.refused(
                label, Reason.MALFORMED_EVIDENCE, _unexpected(exc), insecure=insecure
            )

    def _appraise(
        self,
        evidence: object,
        nonce: object,
        spki: object,
        collateral: object,
        insecure: bool,
    ) -> AttestationResult:
        now = self._clock()
        if not isinstance(nonce, bytes | bytearray):
            raise AppraisalFailure(Reason.UNKNOWN_NONCE, "the nonce is not bytes")
        self._nonces.redeem(bytes(nonce), now, self.policy.max_age_seconds)
        if not isinstance(spki, bytes | bytearray) or not spki:
            raise AppraisalFailure(
                Reason.WRONG_TLS_KEY, "no TLS key (SubjectPublicKeyInfo) to bind the evidence to"
            )
        if collateral is not None and not isinstance(collateral, CollateralBundle):
            raise AppraisalFailure(Reason.COLLATERAL_INVALID, "collateral is not a bundle")
        items = self._required_items(evidence)
        expected = report_data(bytes(nonce), bytes(spki))
        bundle = self._collateral.merged(collateral)
        claims: dict[str, object] = {}
        formats = tuple(items)
        for fmt, item in items.items():
            try:
                got = self._appraise_one(item, expected, now, bundle)
            except AppraisalFailure as failure:
                return AttestationResult.refused(
                    fmt, failure.reason, failure.detail, insecure=insecure
                )
            except Exception as exc:  # see appraise()
                return AttestationResult.refused(
                    fmt, Reason.MALFORMED_EVIDENCE, _unexpected(exc), insecure=insecure
                )
            if fmt == formats[0]:
                claims.update(_public(got))
            else:
                claims[fmt] = _public(got)
        return AttestationResult(
            True, formats[0], insecure=insecure, claims=claims, formats=formats
        )

    def _required_items(self, evidence: object) -> dict[str, Evidence]:
        """The presented evidence keyed by format, in the policy's order, or a refusal."""
        pieces = [evidence] if isinstance(evidence, Evidence) else evidence
        if not isinstance(pieces, list | tuple):
            raise AppraisalFailure(Reason.MALFORMED_EVIDENCE, "expected evidence or a list of it")
        if not pieces:
            raise AppraisalFailure(Reason.MISSING_EVIDENCE, "no evidence was presented")
        found: dict[str, Evidence] = {}
        for piece in pieces:
            if not isinstance(piece, Evidence) or not isinstance(piece.format, str):
                raise AppraisalFailure(Reason.MALFORMED_EVIDENCE, "not evidence")
            fmt = piece.format
            if fmt in found:
                raise AppraisalFailure(
                    Reason.MALFORMED_EVIDENCE,
                    f"{fmt[:32]!r} evidence presented twice; one piece per required format",
                )
            if self.policy.section(fmt) is None:
                raise AppraisalFailure(
                    Reason.FORMAT_NOT_ALLOWED,
                    f"the policy does not allow {fmt[:32]!r} evidence; it requires "
                    f"{list(self.policy.required)}",
                )
            found[fmt] = piece
        for fmt in found:
            if self._is_insecure(fmt) and not self.allow_insecure:
                raise AppraisalFailure(
                    Reason.INSECURE_NOT_ALLOWED,
                    f"{fmt!r} evidence proves nothing about the hardware or code, and this "
                    "client is not configured to accept an insecure attester",
                )
        missing = [f for f in self.policy.required if f not in found]
        if missing:
            raise AppraisalFailure(
                Reason.MISSING_EVIDENCE,
                f"the policy requires {list(self.policy.required)} evidence; missing {missing}",
            )
        return {f: found[f] for f in self.policy.required}

    def _appraise_one(
        self, evidence: Evidence, expected: bytes, now: float, collateral: CollateralBundle
    ) -> dict[str, object]:
        fmt = evidence.format
        section = self.policy.section(fmt)
        appraiser = self._appraisers.get(fmt)
        if section is None:  # _required_items already refused this
            raise AppraisalFailure(Reason.FORMAT_NOT_ALLOWED, f"{fmt!r} is not in the policy")
        if appraiser is None:
            raise AppraisalFailure(
                Reason.PROVIDER_UNAVAILABLE, f"no appraiser for {fmt!r} evidence"
            )
        claims = appraiser.appraise(evidence, section, now, binding=expected, collateral=collateral)
        if not isinstance(claims, dict):
            raise AppraisalFailure(Reason.MALFORMED_EVIDENCE, "the appraiser returned no claims")
        bound = claims.get("report_data")
        if not isinstance(bound, bytes | bytearray) or not hmac.compare_digest(
            bytes(bound), expected
        ):
            raise AppraisalFailure(
                Reason.WRONG_TLS_KEY,
                "report data is not SHA-512(nonce || SPKI of this TLS key): the evidence was made "
                "for another TLS key (a relay?) or another nonce",
            )
        if claims.get("debug") is not False:
            raise AppraisalFailure(Reason.DEBUG_ENABLED, "the guest allows debugging")
        # NVIDIA's SDK matches GPU measurements against NVIDIA's manifests; every other format
        # needs a listed measurement (deny by default, even for a Policy built in code).
        if fmt != NVIDIA_GPU and not any(_matches(claims, e) for e in section.measurements):
            raise AppraisalFailure(
                Reason.MEASUREMENT_NOT_ALLOWED,
                "the measurement is not among those the policy allows",
            )
        appraiser.check_tcb(claims, section)
        for name, want in section.required_claims.items():
            have = claims.get(name)
            if have is None or not _equal(have, want):
                raise AppraisalFailure(
                    Reason.REQUIRED_CLAIM, f"claim {name!r} is {have!r:.80}, need {want!r:.80}"
                )
        return claims

    def _is_insecure(self, fmt: str) -> bool:
        appraiser = self._appraisers.get(fmt)
        return fmt == SOFTWARE or getattr(appraiser, "insecure", False) is not False

    def _insecure(self, evidence: object) -> bool:
        """Whether any presented piece comes from an insecure attester (never raises)."""
        try:
            pieces = [evidence] if isinstance(evidence, Evidence) else evidence
            if not isinstance(pieces, list | tuple):  # never iterate an unknown (endless?) object
                return False
            return any(
                isinstance(p, Evidence)
                and isinstance(p.format, str)
                and self._is_insecure(p.format)
                for p in pieces
            )
        except Exception:  # hostile input; the pipeline refuses it
            return False


def _label(evidence: object) -> str:
    """The format a refusal is filed under: the first piece's (never raises)."""
    try:
        first = evidence if isinstance(evidence, Evidence) else None
        if isinstance(evidence, list | tuple) and evidence:
            first = evidence[0]
        fmt = first.format if isinstance(first, Evidence) else ""
        return fmt[:32] if isinstance(fmt, str) else ""
    except Exception:  # hostile input; the pipeline refuses it
        return ""


def _unexpected(exc: Exception) -> str:
    try:
        text = f"unparseable evidence: {type(exc).__name__}: {exc}"
    except Exception:  # an exception whose str() fails
        text = "unparseable evidence"
    return text[:_MAX_DETAIL]


def _matches(claims: Mapping[str, object], entry: Mapping[str, str]) -> bool:
    return bool(entry) and all(
        isinstance(claims.get(k), str)
        and hmac.compare_digest(str(claims[k]).lower().encode(), v.encode())
        for k, v in entry.items()
    )


def _equal(have: object, want: object) -> bool:
    if isinstance(have, str) and isinstance(want, str):
        return have.lower() == want.lower()
    if isinstance(have, bool) != isinstance(want, bool):
        return False
    return have == want


def _public(claims: Mapping[str, object]) -> dict[str, object]:
    return {k: v.hex() if isinstance(v, bytes | bytearray) else v for k, v in claims.items()}
