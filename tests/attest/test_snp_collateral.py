"""SEV-SNP collateral from AMD's key distribution service: VCEK/VLEK lookup, chains, CRLs, plans.

Each case is a refusal AMD's own verifier would make and the old appraiser did not: it
accepted any report whose evidence carried a chain to the pinned ARK, with no CRL, and a
VCEK lacking its SPL extensions.
"""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from sealagg_testkit.attest_evidence import policy, tls_spki
from sealagg_testkit.snp_cases import GOOD, appraise, direct, refused, section, with_items

from sealagg.attest import Reason, Verifier, report_data
from sealagg.attest.collateral import CollateralBundle
from sealagg.attest.errors import AppraisalFailure
from sealagg.attest.sevsnp import TcbVersion
from sealagg.attest.snp_abi import GENOA, MILAN, TURIN, VCEK, VLEK
from sealagg.attest.snp_collateral import (
    OID_HWID,
    OID_PRODUCT_NAME,
    OID_UCODESPL,
    chain_path,
    crl_path,
    fetch_plan,
    fetch_plan_for_report,
    kds_extensions,
    vcek_path,
    vlek_path,
)
from sealagg.attest.testing import SnpAuthority

DER, PEM = Encoding.DER, Encoding.PEM


@pytest.fixture(scope="module")
def amd() -> SnpAuthority:
    return SnpAuthority()


@pytest.fixture(scope="module")
def other() -> SnpAuthority:
    """Another 'AMD' with its own ARK: nothing of it may pass a policy pinned to ``amd``."""
    return SnpAuthority()


# ------------------------------------------------------------------------- no collateral


def test_snp_policy_without_a_bundle_refuses_with_a_clear_reason(amd: SnpAuthority) -> None:
    """The old appraiser accepted this: a [sev-snp] policy and no collateral at all."""
    result = appraise(amd, verifier=Verifier(policy(snp=amd, measurement=GOOD)))
    assert result.reason is Reason.COLLATERAL_MISSING, result.detail
    assert "sev-snp/Milan/crl.der" in result.detail and "collateral fetch" in result.detail


def test_bundle_shipped_by_the_appliance_counts(amd: SnpAuthority) -> None:
    """Collateral sent beside the evidence is merged under the local bundle: it is signed."""
    verifier = Verifier(policy(snp=amd, measurement=GOOD))
    spki, nonce = tls_spki(), verifier.challenge()
    evidence = amd.attester(GOOD).evidence(report_data(nonce, spki))
    result = verifier.appraise(
        evidence, nonce=nonce, tls_spki_der=spki, collateral=amd.collateral()
    )
    assert result.accepted, result.detail


# ---------------------------------------------------------------- VCEK and VLEK lookup


def test_vcek_and_chain_from_the_bundle_when_the_evidence_has_none(amd: SnpAuthority) -> None:
    claims = direct(amd, certificates=())
    assert claims["chip_id"] == amd.chip_id.hex()
    path = vcek_path(MILAN, amd.chip_id, amd.tcb)
    assert path == f"sev-snp/Milan/vcek/{amd.chip_id.hex()}/7308000000000003.der"
    refused(
        Reason.COLLATERAL_MISSING, path, amd=amd, certificates=(),
        collateral=amd.collateral(vcek=False),
    )  # fmt: skip


def test_vcek_in_the_evidence_needs_no_bundle_copy(amd: SnpAuthority) -> None:
    vcek_only = (amd.vcek.public_bytes(DER),)
    assert direct(amd, certificates=vcek_only, collateral=amd.collateral(vcek=False))
    refused(
        Reason.COLLATERAL_MISSING, "sev-snp/Milan/cert_chain.pem", amd=amd,
        certificates=vcek_only, collateral=amd.collateral(vcek=False, chain=False),
    )  # fmt: skip


def test_bundled_vcek_must_be_this_chips_at_this_tcb(amd: SnpAuthority) -> None:
    path = vcek_path(MILAN, amd.chip_id, amd.tcb)
    for vcek, match in (
        (amd.vcek_certificate(tcb=TcbVersion(3, 0, 9, 115)), "another TCB"),
        (amd.vcek_certificate(chip_id=bytes(64)), "another chip"),
        (amd.vcek_certificate(omit={OID_UCODESPL}), "no microcode SPL"),
        (amd.vcek_certificate(omit={OID_HWID}), "no hwID"),
        (amd.vcek_certificate(omit={OID_PRODUCT_NAME}), "product"),
    ):
        bundle = with_items(amd.collateral(), {path: vcek.public_bytes(DER)})
        refused(Reason.BROKEN_CHAIN, match, amd=amd, certificates=(), collateral=bundle)
        if match != "no hwID":  # without hwID it is no VCEK: the bundle's genuine one is used
            refused(Reason.BROKEN_CHAIN, match, amd=amd, certificates=(vcek.public_bytes(DER),))


def test_hwid_in_an_octet_string_is_tolerated(amd: SnpAuthority) -> None:
    wrapped = amd.vcek_certificate(hwid_wrapped=True).public_bytes(DER)
    assert direct(amd, certificates=(wrapped,))["chip_id"] == amd.chip_id.hex()


def test_garbage_in_the_bundle_is_invalid_not_a_crash(amd: SnpAuthority) -> None:
    bundle = with_items(amd.collateral(), {vcek_path(MILAN, amd.chip_id, amd.tcb): b"junk"})
    refused(Reason.COLLATERAL_INVALID, "vcek", amd=amd, certificates=(), collateral=bundle)
    bundle = with_items(amd.collateral(), {chain_path(MILAN): b"-----BEGIN junk"})
    refused(Reason.COLLATERAL_INVALID, "cert_chain", amd=amd, certificates=(), collateral=bundle)
    one_cert = {chain_path(MILAN): amd.ask.public_bytes(PEM)}
    refused(
        Reason.COLLATERAL_INVALID, "two certificates", amd=amd, certificates=(),
        collateral=with_items(amd.collateral(), one_cert),
    )  # fmt: skip


def test_vlek_from_the_evidence_or_the_bundle(amd: SnpAuthority) -> None:
    assert direct(amd, signer=VLEK)["signing_key"] == "vlek"
    assert direct(amd, signer=VLEK, certificates=())["signing_key"] == "vlek"
    refused(
        Reason.COLLATERAL_MISSING, vlek_path(MILAN, amd.tcb), amd=amd, signer=VLEK,
        certificates=(), collateral=amd.collateral(vlek=False),
    )  # fmt: skip
    refused(
        Reason.COLLATERAL_MISSING, "vlek_cert_chain.pem", amd=amd, signer=VLEK,
        certificates=(amd.vlek.public_bytes(DER),), collateral=amd.collateral(chain=False),
    )  # fmt: skip


# ------------------------------------------------------------------------------- chains


def test_chain_must_end_in_the_pinned_ark(amd: SnpAuthority, other: SnpAuthority) -> None:
    ark, ask, vcek = amd.certificates()
    other_ark, other_ask, other_vcek = other.certificates()
    forged_vcek = amd.vcek_certificate(ask_of=other).public_bytes(DER)  # right key, wrong ASK
    no_chain = amd.collateral(chain=False)
    cases = {
        "ASK from another ARK": ((ark, other_ask, vcek), Reason.BROKEN_CHAIN),
        "VCEK from another ASK": ((ark, ask, forged_vcek), Reason.BROKEN_CHAIN),
        "unknown ARK": ((other_ark, other_ask, vcek), Reason.UNTRUSTED_ROOT),
        "another AMD's chain": ((other_ark, other_ask, forged_vcek), Reason.UNTRUSTED_ROOT),
        "another chip's VCEK": ((ark, ask, other_vcek), Reason.BAD_SIGNATURE),
        "garbage certificate": ((ark, b"not a cert", vcek), Reason.BROKEN_CHAIN),
        "two VCEKs": ((ark, ask, vcek, vcek), Reason.BROKEN_CHAIN),
        "too many certificates": ((ark,) * 8 + (vcek,), Reason.BROKEN_CHAIN),
    }
    for name, (certs, reason) in cases.items():
        with pytest.raises(AppraisalFailure) as caught:
            direct(amd, certificates=certs, collateral=no_chain)
        assert caught.value.reason is reason, (name, caught.value)
    # Another AMD's whole world, its own bundle included, stops at the pin.
    with pytest.raises(AppraisalFailure) as caught:
        direct(other, section(amd), collateral=other.collateral())
    assert caught.value.reason is Reason.UNTRUSTED_ROOT, caught.value


def test_bundle_chain_stands_in_for_missing_evidence_certificates(amd: SnpAuthority) -> None:
    ark, ask, vcek = amd.certificates()
    for certs in ((vcek,), (ark, vcek), (ask, vcek), (vcek, ask, ark)):  # any order
        assert direct(amd, certificates=certs)["signing_key"] == "vcek"


def test_a_forged_bundle_chain_is_refused(amd: SnpAuthority, other: SnpAuthority) -> None:
    forged = {chain_path(MILAN): other.ask.public_bytes(PEM) + amd.ark.public_bytes(PEM)}
    refused(
        Reason.BROKEN_CHAIN, "", amd=amd, certificates=(amd.vcek.public_bytes(DER),),
        collateral=with_items(amd.collateral(), forged),
    )  # fmt: skip


# --------------------------------------------------------------------------------- CRLs


@pytest.mark.parametrize(
    ("mode", "match"),
    [
        ("stale", "stale"),
        ("future", "not yet valid"),
        ("mis-signed", "not signed by the ARK"),
        ("missing", "crl.der"),
    ],
)
def test_crl_must_be_current_and_the_arks(amd: SnpAuthority, mode: str, match: str) -> None:
    reason = Reason.COLLATERAL_MISSING if mode == "missing" else Reason.COLLATERAL_INVALID
    refused(reason, match, amd=amd, collateral=amd.collateral(crl=mode))
    refused(reason, match, amd=amd, signer=VLEK, collateral=amd.collateral(vlek_crl=mode))
    assert direct(amd, collateral=amd.collateral(vlek_crl=mode))  # the VLEK side is not needed


def test_crl_of_another_ark_or_garbage_is_invalid(amd: SnpAuthority, other: SnpAuthority) -> None:
    for crl, match in ((other.crl(), "by the ARK"), (b"\x30\x03\x02\x01", "crl.der")):
        bundle = with_items(amd.collateral(), {crl_path(MILAN): crl})
        refused(Reason.COLLATERAL_INVALID, match, amd=amd, collateral=bundle)


@pytest.mark.parametrize(
    ("revoked", "signer"), [("ask", VCEK), ("vcek", VCEK), ("asvk", VLEK), ("vlek", VLEK)]
)
def test_revoked_certificates_are_refused(amd: SnpAuthority, revoked: str, signer: str) -> None:
    bundle = amd.collateral(revoked=[revoked])
    refused(Reason.REVOKED, revoked.upper(), amd=amd, signer=signer, collateral=bundle)
    other_side = VLEK if signer == VCEK else VCEK  # each CRL covers its own chain only
    assert direct(amd, signer=other_side, collateral=bundle)


def test_crl_is_judged_at_the_verifiers_clock(amd: SnpAuthority) -> None:
    """A CRL valid today is stale 31 days on: the operator must refresh it before nextUpdate."""
    bundle = amd.collateral()
    assert direct(amd, collateral=bundle, now=time.time() + 29 * 86400)
    refused(Reason.COLLATERAL_INVALID, "stale", amd=amd, collateral=bundle,
             now=time.time() + 31 * 86400)  # fmt: skip


# ------------------------------------------------------------------------------ plans


def test_fetch_plan_names_kds_urls_and_bundle_paths(amd: SnpAuthority) -> None:
    plan = fetch_plan("genoa", amd.chip_id.hex(), "7308000000000003")
    urls = {d.path: d.url for d in plan}
    base = "https://kdsintf.amd.com"
    assert urls == {
        "sev-snp/Genoa/cert_chain.pem": f"{base}/vcek/v1/Genoa/cert_chain",
        "sev-snp/Genoa/crl.der": f"{base}/vcek/v1/Genoa/crl",
        "sev-snp/Genoa/vlek_cert_chain.pem": f"{base}/vlek/v1/Genoa/cert_chain",
        "sev-snp/Genoa/vlek_crl.der": f"{base}/vlek/v1/Genoa/crl",
        f"sev-snp/Genoa/vcek/{amd.chip_id.hex()}/7308000000000003.der": (
            f"{base}/vcek/v1/Genoa/{amd.chip_id.hex()}?blSPL=3&teeSPL=0&snpSPL=8&ucodeSPL=115"
        ),
    }
    assert all(d.response_header is None for d in plan)
    assert len(fetch_plan(MILAN)) == 4  # chains and CRLs only


def test_turin_fetch_plan_uses_the_8_byte_hwid_and_fmc() -> None:
    turin = SnpAuthority(product=TURIN)
    plan = fetch_plan(TURIN, turin.chip_id.hex(), turin.tcb.hex)
    vcek = plan[-1]
    assert vcek.url == (
        f"https://kdsintf.amd.com/vcek/v1/Turin/{turin.chip_id[:8].hex()}"
        "?fmcSPL=1&blSPL=4&teeSPL=2&snpSPL=9&ucodeSPL=74"
    )
    assert vcek.path == vcek_path(TURIN, turin.chip_id, turin.tcb)
    assert turin.tcb.hex == "4a00000009020401"


def test_plan_for_a_report_fetches_what_the_appraiser_looks_up() -> None:
    """The operator's plan (from a report) and the appraiser's lookups name the same files."""
    for amd, version, product in (
        (SnpAuthority(product=TURIN), 3, None),
        (SnpAuthority(product=GENOA), 5, None),
        (SnpAuthority(), 2, MILAN),
    ):
        raw = amd.report(bytes(64), measurement=GOOD, version=version)
        paths = {d.path for d in fetch_plan_for_report(raw, product)}
        bundle = CollateralBundle({k: v for k, v in amd.collateral().files.items() if k in paths})
        assert direct(amd, raw=raw, certificates=(), collateral=bundle)["product"] == amd.product


@pytest.mark.parametrize(
    "args",
    [
        ("Naples",),
        ("Milan", "00" * 64),
        ("Milan", "zz", "7308000000000003"),
        ("Milan", "00" * 63, "7308000000000003"),
        ("Milan", "00" * 64, "73080000"),
        (None,),
    ],
)
def test_fetch_plan_refuses_bad_arguments(args: tuple) -> None:
    with pytest.raises(AppraisalFailure):
        fetch_plan(*args)


def test_version_2_report_needs_a_product_for_its_plan(amd: SnpAuthority) -> None:
    raw = amd.report(bytes(64), measurement=GOOD, version=2)
    with pytest.raises(AppraisalFailure, match="Milan or Genoa"):
        fetch_plan_for_report(raw)


def test_kds_extensions_of_the_test_vcek(amd: SnpAuthority) -> None:
    ext = kds_extensions(amd.vcek)
    assert (ext.product_name, ext.product, ext.hwid, ext.csp_id) == (
        "Milan-B0", MILAN, amd.chip_id, None,
    )  # fmt: skip
    assert dict(ext.spl) == {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
    vlek = kds_extensions(amd.vlek)
    assert (vlek.product_name, vlek.hwid, vlek.csp_id) == ("Milan", None, amd.csp_id)


def test_old_authority_api_still_works(amd: SnpAuthority) -> None:
    """tests/support and tests/shim use SnpAuthority(), .attester, .ark_sha256, .certificates."""
    assert len(amd.certificates()) == 3 and len(amd.ark_sha256) == 64
    evidence = amd.attester(GOOD).evidence(bytes(64))
    assert evidence.format == "sev-snp" and evidence.certificates == amd.certificates()
