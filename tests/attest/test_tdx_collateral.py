"""Intel's TDX collateral: signatures to the pinned root, dates, CRLs, the bundle layout.

Every case is appraised end to end (Verifier + a genuine quote) so each asserts the reason a
client would see; the collateral is made by the test suite's own Intel (testing_tdx).
"""

from __future__ import annotations

import datetime
import json
import time

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from sealagg_testkit.attest_evidence import policy, tls_spki

from sealagg.attest import Evidence, Reason, Verifier, report_data
from sealagg.attest.collateral import CollateralBundle
from sealagg.attest.errors import AppraisalFailure
from sealagg.attest.tdx import quote_fmspc
from sealagg.attest.tdx_collateral import (
    PCK_CRL,
    QE_IDENTITY,
    QE_IDENTITY_CHAIN,
    ROOT_CA_CRL,
    TCB_INFO_CHAIN,
    fetch_plan,
    load_tcb_info,
)
from sealagg.attest.tdx_pck import parse_sgx_extensions
from sealagg.attest.testing_common import _raw
from sealagg.attest.testing_tdx import TdxAuthority, sgx_extension

MRTD = bytes.fromhex("33" * 48)
DAY = datetime.timedelta(days=1)
TCB_INFO = "tdx/tcb_info/00806f050000.json"


@pytest.fixture(scope="module")
def intel() -> TdxAuthority:
    return TdxAuthority()


def appraise(intel: TdxAuthority, bundle: CollateralBundle, *, now: float | None = None):
    clock = (lambda: now) if now is not None else time.time
    verifier = Verifier(policy(tdx=intel, measurement=MRTD), collateral=bundle, clock=clock)
    spki = tls_spki()
    nonce = verifier.challenge()
    quote = intel.quote(report_data(nonce, spki), mrtd=MRTD)
    return verifier.appraise(Evidence("tdx", quote), nonce=nonce, tls_spki_der=spki)


def replaced(bundle: CollateralBundle, **files: bytes) -> CollateralBundle:
    names = {"tcb_info": TCB_INFO, "qe_identity": QE_IDENTITY, "root_crl": ROOT_CA_CRL}
    names |= {"tcb_chain": TCB_INFO_CHAIN, "qe_chain": QE_IDENTITY_CHAIN}
    names |= {"pck_crl": PCK_CRL["platform"]}
    return CollateralBundle({**bundle.files, **{names[k]: v for k, v in files.items()}})


def test_the_default_bundle_is_consistent(intel: TdxAuthority) -> None:
    bundle = intel.collateral()
    assert appraise(intel, bundle).accepted
    wire = CollateralBundle.from_bytes(bundle.to_bytes())
    assert appraise(intel, wire).accepted


# ------------------------------------------------------------------------------- missing


@pytest.mark.parametrize(
    "path",
    [TCB_INFO, TCB_INFO_CHAIN, QE_IDENTITY, QE_IDENTITY_CHAIN, PCK_CRL["platform"], ROOT_CA_CRL],
)
def test_each_missing_item_is_named(intel: TdxAuthority, path: str) -> None:
    result = appraise(intel, intel.collateral(omit={path}))
    assert result.reason is Reason.COLLATERAL_MISSING and path in result.detail


def test_a_processor_ca_platform_needs_the_processor_crl() -> None:
    processor = TdxAuthority(pck_ca="processor")
    assert appraise(processor, processor.collateral(omit={PCK_CRL["platform"]})).accepted
    result = appraise(processor, processor.collateral(omit={PCK_CRL["processor"]}))
    assert result.reason is Reason.COLLATERAL_MISSING and PCK_CRL["processor"] in result.detail


def test_tcb_info_for_another_fmspc_is_missing_for_this_platform(intel: TdxAuthority) -> None:
    elsewhere = TdxAuthority(fmspc=bytes.fromhex("00906ed50000"))
    result = appraise(elsewhere, elsewhere.collateral())
    assert result.reason is Reason.COLLATERAL_MISSING and "00906ed50000" in result.detail


# ------------------------------------------------------------------------ dates, staleness


@pytest.mark.parametrize("item", ["tcb_info", "qe_identity"])
def test_a_stale_document_is_refused(intel: TdxAuthority, item: str) -> None:
    now = datetime.datetime.now(datetime.UTC)
    stale = intel.collateral(issued=now - 40 * DAY, next_update=now - DAY)
    fresh = intel.collateral()
    result = appraise(intel, replaced(fresh, **{item: stale.files[_path(item)]}))
    assert result.reason is Reason.COLLATERAL_INVALID and "stale" in result.detail


@pytest.mark.parametrize("item", ["tcb_info", "qe_identity"])
def test_a_document_issued_in_the_future_is_refused(intel: TdxAuthority, item: str) -> None:
    now = datetime.datetime.now(datetime.UTC)
    future = intel.collateral(issued=now + DAY, next_update=now + 30 * DAY)
    result = appraise(intel, replaced(intel.collateral(), **{item: future.files[_path(item)]}))
    assert result.reason is Reason.COLLATERAL_INVALID and "not yet valid" in result.detail


def test_a_bundle_is_refused_once_its_next_update_passes(intel: TdxAuthority) -> None:
    """The same bundle that passes today fails 31 days later: operators must refresh it."""
    bundle = intel.collateral()
    assert appraise(intel, bundle).accepted
    later = time.time() + 31 * 86400
    result = appraise(intel, bundle, now=later)
    assert result.reason is Reason.COLLATERAL_INVALID and "stale" in result.detail


def test_a_stale_crl_is_refused(intel: TdxAuthority) -> None:
    old = intel.collateral(now=time.time() - 40 * 86400)
    for item in ("root_crl", "pck_crl"):
        result = appraise(intel, replaced(intel.collateral(), **{item: old.files[_path(item)]}))
        assert result.reason is Reason.COLLATERAL_INVALID and "stale" in result.detail, item


# ------------------------------------------------------------------------------ signatures


def test_mis_signed_documents_are_refused(intel: TdxAuthority) -> None:
    rogue = ec.generate_private_key(ec.SECP256R1())
    bad = intel.collateral(signer=rogue)
    for item in ("tcb_info", "qe_identity"):
        result = appraise(intel, replaced(intel.collateral(), **{item: bad.files[_path(item)]}))
        assert result.reason is Reason.COLLATERAL_INVALID and "does not verify" in result.detail


def test_an_edited_document_is_refused(intel: TdxAuthority) -> None:
    """A relay that raises the TCB status of a level it likes breaks Intel's signature."""
    bundle = intel.collateral()
    body = bundle.files[TCB_INFO].replace(b'"OutOfDate"', b'"UpToDate"', 1)
    assert body != bundle.files[TCB_INFO]
    result = appraise(intel, replaced(bundle, tcb_info=body))
    assert result.reason is Reason.COLLATERAL_INVALID and "does not verify" in result.detail


def test_the_signature_covers_the_inner_bytes_not_a_reserialization(intel: TdxAuthority) -> None:
    bundle = intel.collateral()
    body = bundle.files[TCB_INFO]
    spaced = b'\n{ "tcbInfo" :' + body[len(b'{"tcbInfo":') :].replace(
        b',"signature"', b' ,\n "signature"'
    )
    assert appraise(intel, replaced(bundle, tcb_info=spaced + b"\n")).accepted
    outer = json.loads(body)
    pretty = json.dumps(outer, indent=1).encode()
    result = appraise(intel, replaced(bundle, tcb_info=pretty))
    assert result.reason is Reason.COLLATERAL_INVALID and "does not verify" in result.detail


def test_documents_signed_under_another_root_are_refused(intel: TdxAuthority) -> None:
    other = TdxAuthority()
    foreign = other.collateral()
    result = appraise(
        intel,
        replaced(
            intel.collateral(), tcb_info=foreign.files[TCB_INFO], tcb_chain=other.signing_chain()
        ),
    )
    assert result.reason is Reason.COLLATERAL_INVALID and "trust anchor" in result.detail


def test_documents_signed_by_a_pck_ca_instead_of_tcb_signing_are_refused(
    intel: TdxAuthority,
) -> None:
    """The Root CA also certifies the PCK CAs: only the TCB Signing certificate may sign."""
    from cryptography.hazmat.primitives.serialization import Encoding

    ca_key = intel.ca_keys["platform"]
    chain = intel.ca.public_bytes(Encoding.PEM) + intel.root.public_bytes(Encoding.PEM)
    bundle = intel.collateral(signer=ca_key)
    result = appraise(intel, replaced(bundle, tcb_chain=chain, qe_chain=chain))
    assert result.reason is Reason.COLLATERAL_INVALID and "TCB Signing" in result.detail


@pytest.mark.parametrize(
    ("item", "field", "value"),
    [
        ("tcb_info", "id", "SGX"),
        ("tcb_info", "version", 2),
        ("tcb_info", "tcbType", 1),
        ("tcb_info", "fmspc", "00906ed50000"),
        ("tcb_info", "pceId", "0100"),
        ("tcb_info", "tcbLevels", []),
        ("qe_identity", "id", "QE"),
        ("qe_identity", "version", 1),
        ("qe_identity", "mrsigner", "zz" * 32),
    ],
)
def test_intel_signed_documents_of_the_wrong_kind_are_refused(
    intel: TdxAuthority, item: str, field: str, value: object
) -> None:
    bundle = intel.collateral(**{item: {field: value}})
    result = appraise(intel, bundle)
    assert result.reason is Reason.COLLATERAL_INVALID, result.detail


def test_duplicate_members_are_refused(intel: TdxAuthority) -> None:
    """Two parsers could read two different values: Intel never sends this, even signed."""
    good = json.loads(intel.collateral().files[TCB_INFO])["tcbInfo"]
    inner = json.dumps(good, separators=(",", ":"))
    doubled = (inner[:-1] + ',"id":"SGX"}').encode()
    signature = _raw(intel.tcb_signing_key.sign(doubled, ec.ECDSA(hashes.SHA256())))
    forged = b'{"tcbInfo":' + doubled + b',"signature":"' + signature.hex().encode() + b'"}'
    anchors = [bytes.fromhex(intel.root_sha256)]
    with pytest.raises(AppraisalFailure) as info:
        load_tcb_info(forged, intel.signing_chain(), anchors, time.time())
    assert info.value.reason is Reason.COLLATERAL_INVALID and "duplicate" in info.value.detail
    unique = (inner[:-1] + "}").encode()
    signature = _raw(intel.tcb_signing_key.sign(unique, ec.ECDSA(hashes.SHA256())))
    body = b'{"tcbInfo":' + unique + b',"signature":"' + signature.hex().encode() + b'"}'
    assert load_tcb_info(body, intel.signing_chain(), anchors, time.time()).fmspc == intel.fmspc


# ---------------------------------------------------------------------------- revocation


@pytest.mark.parametrize("victim", ["pck", "pck_ca", "tcb_signing"])
def test_revoked_certificates_are_refused(intel: TdxAuthority, victim: str) -> None:
    result = appraise(intel, intel.collateral(revoke={victim}))
    assert result.reason is Reason.REVOKED, result.detail


def test_crls_must_be_signed_by_their_issuer(intel: TdxAuthority) -> None:
    now = datetime.datetime.now(datetime.UTC)
    dates = {"last_update": now - DAY, "next_update": now + DAY}
    rogue = ec.generate_private_key(ec.SECP256R1())
    forged_empty = intel.crl("platform", signer=rogue, **dates)
    bundle = intel.collateral(revoke={"pck"})
    result = appraise(intel, replaced(bundle, pck_crl=forged_empty))
    assert result.reason is Reason.COLLATERAL_INVALID and "not signed" in result.detail
    wrong_issuer = intel.crl("processor", **dates)
    result = appraise(intel, replaced(intel.collateral(), pck_crl=wrong_issuer))
    assert result.reason is Reason.COLLATERAL_INVALID and "not issued by" in result.detail
    result = appraise(intel, replaced(intel.collateral(), root_crl=b"not a crl"))
    assert result.reason is Reason.COLLATERAL_INVALID


# ------------------------------------------------------------------------ fetch plan, PCK


def test_the_fetch_plan_fills_exactly_what_the_appraiser_reads(intel: TdxAuthority) -> None:
    plan = fetch_plan(intel.fmspc.hex().upper())
    paths = {item.path for item in plan}
    bundle = intel.collateral()
    assert set(bundle.files) == paths
    for item in plan:
        assert item.url.startswith("https://")
        result = appraise(intel, intel.collateral(omit={item.path}))
        if item.path == PCK_CRL["processor"]:
            assert result.accepted  # this platform's PCK CA is the Platform CA
        else:
            assert result.reason is Reason.COLLATERAL_MISSING and item.path in result.detail
    by_path = {item.path: item for item in plan}
    assert "fmspc=00806f050000" in by_path[TCB_INFO].url
    assert by_path[TCB_INFO_CHAIN].response_header == "TCB-Info-Issuer-Chain"
    assert by_path[QE_IDENTITY_CHAIN].response_header == "SGX-Enclave-Identity-Issuer-Chain"
    assert by_path[QE_IDENTITY].url.endswith("/tdx/certification/v4/qe/identity")
    assert "ca=processor&encoding=der" in by_path[PCK_CRL["processor"]].url


@pytest.mark.parametrize(
    "bad", ["", "00806f05000", "00806f05000g", "00806f0500000", " 0806f050000"]
)
def test_the_fetch_plan_refuses_a_malformed_fmspc(bad: str) -> None:
    with pytest.raises(AppraisalFailure):
        fetch_plan(bad)


def test_the_fmspc_to_fetch_is_read_from_a_quote(intel: TdxAuthority) -> None:
    elsewhere = TdxAuthority(fmspc=bytes.fromhex("00906ed50000"))
    assert quote_fmspc(elsewhere.quote(bytes(64), mrtd=MRTD)) == "00906ed50000"
    assert quote_fmspc(intel.quote(bytes(64), mrtd=MRTD)) == intel.fmspc.hex()
    with pytest.raises(AppraisalFailure):
        quote_fmspc(b"\x04\x00" + bytes(700))


def test_the_sgx_extension_round_trips() -> None:
    der = sgx_extension(
        fmspc=bytes.fromhex("00906ed50000"),
        pceid=b"\x00\x01",
        components=list(range(16)),
        pcesvn=300,
        cpusvn=bytes(range(16)),
    )
    tcb = parse_sgx_extensions(der)
    assert tcb.fmspc.hex() == "00906ed50000" and tcb.pceid == b"\x00\x01"
    assert tcb.sgx_components == tuple(range(16)) and tcb.pcesvn == 300
    with pytest.raises(AppraisalFailure):
        parse_sgx_extensions(der[:-1])


def _path(item: str) -> str:
    return {
        "tcb_info": TCB_INFO,
        "qe_identity": QE_IDENTITY,
        "root_crl": ROOT_CA_CRL,
        "pck_crl": PCK_CRL["platform"],
    }[item]
