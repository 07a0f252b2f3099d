"""Builders shared by the SEV-SNP tests: a policy section, a verifier run, a direct appraisal
(and its expected refusal)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence

import pytest

from sealagg.attest import AttestationResult, Evidence, Reason, Verifier, report_data
from sealagg.attest.collateral import CollateralBundle
from sealagg.attest.errors import AppraisalFailure
from sealagg.attest.policy import FormatPolicy
from sealagg.attest.sevsnp import SevSnpAppraiser
from sealagg.attest.testing import SnpAuthority
from sealagg_testkit.attest_evidence import policy, tls_spki

GOOD = bytes.fromhex("11" * 48)
BINDING = bytes(range(64))


def section(amd: SnpAuthority, **options: object) -> FormatPolicy:
    """The strict [sev-snp] section for ``amd`` (floor = its TCB); ``options`` replace keys.

    ``options`` are applied after parsing, so they can also make a section the parser would
    refuse (e.g. no ``min_tcb``): the appraiser must refuse those on its own."""
    parsed = policy(snp=amd, measurement=GOOD).section("sev-snp")
    assert parsed is not None
    merged = {**parsed.options, **options}
    merged = {k: v for k, v in merged.items() if v is not None}
    required = dict(parsed.required_claims)
    if "required_claims" in options:
        required = dict(options["required_claims"] or {})  # type: ignore[call-overload]
        merged.pop("required_claims", None)
    return dataclasses.replace(parsed, options=merged, required_claims=required)


def appraise(
    amd: SnpAuthority,
    *,
    verifier: Verifier | None = None,
    collateral: CollateralBundle | None = None,
    certificates: Sequence[bytes] | None = None,
    **report_kw: object,
) -> AttestationResult:
    """One nonce, one report by ``amd``, appraised by ``verifier`` (default: strict + bundle)."""
    verifier = verifier or Verifier(
        policy(snp=amd, measurement=GOOD),
        collateral=amd.collateral() if collateral is None else collateral,
    )
    spki = tls_spki()
    nonce = verifier.challenge()
    report_kw.setdefault("measurement", GOOD)
    raw = amd.report(report_data(nonce, spki), **report_kw)  # type: ignore[arg-type]
    signer = str(report_kw.get("signer", "vcek"))
    certs = amd.certificates(signer) if certificates is None else tuple(certificates)
    return verifier.appraise(Evidence("sev-snp", raw, certs), nonce=nonce, tls_spki_der=spki)


def direct(
    amd: SnpAuthority,
    policy_section: FormatPolicy | None = None,
    *,
    collateral: CollateralBundle | None = None,
    certificates: Sequence[bytes] | None = None,
    raw: bytes | None = None,
    now: float | None = None,
    **report_kw: object,
) -> Mapping[str, object]:
    """Call the appraiser itself, as the review did: its refusals must hold without a Verifier."""
    report_kw.setdefault("measurement", GOOD)
    if raw is None:
        raw = amd.report(BINDING, **report_kw)  # type: ignore[arg-type]
    signer = str(report_kw.get("signer", "vcek"))
    certs = amd.certificates(signer) if certificates is None else tuple(certificates)
    return SevSnpAppraiser().appraise(
        Evidence("sev-snp", raw, certs),
        policy_section or section(amd),
        time.time() if now is None else now,
        binding=BINDING,
        collateral=amd.collateral() if collateral is None else collateral,
    )


def refused(reason: Reason, match: str = "", **kwargs: object) -> AppraisalFailure:
    """:func:`direct` ``(**kwargs)`` must refuse with ``reason``, its detail naming ``match``."""
    with pytest.raises(AppraisalFailure) as caught:
        direct(**kwargs)  # type: ignore[arg-type]
    assert caught.value.reason is reason, caught.value
    assert match in caught.value.detail, caught.value.detail
    return caught.value


def without(bundle: CollateralBundle, *names: str) -> CollateralBundle:
    """``bundle`` minus every item whose path ends with one of ``names``."""
    return CollateralBundle({k: v for k, v in bundle.files.items() if not k.endswith(names)})


def with_items(bundle: CollateralBundle, items: Mapping[str, bytes]) -> CollateralBundle:
    return CollateralBundle({**bundle.files, **items})
