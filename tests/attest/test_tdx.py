"""Intel TDX quotes v4 in the DCAP layout, appraised with Intel-shaped collateral as QVL does.

The quote side: layout, signatures, PCK chain. The collateral side (QE identity, TDX module
signer, TCB levels) is judged here through the Verifier; the collateral's own signatures,
dates and CRLs are in test_tdx_collateral.py.
"""

from __future__ import annotations

import struct
import time

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from sealagg_testkit.attest_evidence import policy_text as strict_policy_text
from sealagg_testkit.attest_evidence import tls_spki

from sealagg.attest import Evidence, PolicyError, Reason, Verifier, parse_policy, report_data
from sealagg.attest.errors import AppraisalFailure
from sealagg.attest.policy import FormatPolicy
from sealagg.attest.tdx import HEADER_BYTES, SIGNED_BYTES, TdxAppraiser, parse_quote
from sealagg.attest.testing import TdxAuthority
from sealagg.attest.testing_tdx import (
    DEFAULT_PCESVN,
    DEFAULT_SGX_TCB,
    DEFAULT_TEE_TCB_SVN,
    OUT_OF_DATE_ADVISORIES,
    OUT_OF_DATE_PCESVN,
    OUT_OF_DATE_SGX_TCB,
    OUT_OF_DATE_TEE_TCB_SVN,
    enclave_level,
    tcb_level,
)

PEM = Encoding.PEM
MRTD = bytes.fromhex("22" * 48)
ZERO = bytes(48)
EVERY_STATUS = [
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
]


def policy_text(intel: TdxAuthority, extra: str = "", *, rtmr0: bytes = ZERO) -> str:
    """The strict schema: MRTD and RTMR0-2 pinned, a TEE_TCB_SVN floor, Intel's root pinned."""
    return strict_policy_text(
        tdx=intel, measurement=MRTD, extra_tdx=extra, rtmrs=(rtmr0, ZERO, ZERO)
    )


def verifier(intel: TdxAuthority, extra: str = "", **collateral: object) -> Verifier:
    return Verifier(
        parse_policy(policy_text(intel, extra)), collateral=intel.collateral(**collateral)
    )


def accepting(*statuses: str) -> str:
    return "accepted_tcb_status = [" + ", ".join(f'"{s}"' for s in statuses) + "]"


@pytest.fixture(scope="module")
def intel() -> TdxAuthority:
    return TdxAuthority()


def _quote_for(verifier: Verifier, intel: TdxAuthority, spki: bytes, **kw) -> tuple[bytes, bytes]:
    nonce = verifier.challenge()
    kw.setdefault("mrtd", MRTD)
    return nonce, intel.quote(report_data(nonce, spki), **kw)


def _appraise(intel: TdxAuthority, verifier_: Verifier | None = None, **kw):
    verifier_ = verifier_ or verifier(intel)
    spki = tls_spki()
    nonce, quote = _quote_for(verifier_, intel, spki, **kw)
    return verifier_.appraise(Evidence("tdx", quote), nonce=nonce, tls_spki_der=spki)


def test_genuine_quote_is_accepted_with_intels_verdict(intel: TdxAuthority) -> None:
    result = _appraise(intel).require()
    assert result.claims["mrtd"] == MRTD.hex()
    assert result.claims["debug"] is False
    assert result.claims["tcb_status"] == "UpToDate"
    assert result.claims["advisory_ids"] == []
    assert result.claims["fmspc"] == intel.fmspc.hex()
    assert result.claims["qe_isvsvn"] == 4


def test_without_collateral_a_tdx_policy_refuses_instead_of_appraising_half(
    intel: TdxAuthority,
) -> None:
    bare = Verifier(parse_policy(policy_text(intel)))
    result = _appraise(intel, bare)
    assert result.reason is Reason.COLLATERAL_MISSING
    assert "--tdx-fmspc 00806f050000" in result.detail


def test_collateral_sent_with_the_evidence_is_used(intel: TdxAuthority) -> None:
    bare = Verifier(parse_policy(policy_text(intel)))
    spki = tls_spki()
    nonce, quote = _quote_for(bare, intel, spki)
    result = bare.appraise(
        Evidence("tdx", quote), nonce=nonce, tls_spki_der=spki, collateral=intel.collateral()
    )
    assert result.accepted, result.detail


def test_parser_reads_the_v4_offsets(intel: TdxAuthority) -> None:
    rtmrs = tuple(bytes([i]) * 48 for i in (1, 2, 3, 4))
    raw = intel.quote(bytes(range(64)), mrtd=MRTD, rtmrs=rtmrs, debug=True)
    quote = parse_quote(raw)
    assert quote.version == 4 and quote.tee_type == 0x81
    assert quote.body["mrtd"] == MRTD and quote.body["report_data"] == bytes(range(64))
    assert [quote.body[f"rtmr{i}"] for i in range(4)] == list(rtmrs)
    assert raw[HEADER_BYTES + 136 : HEADER_BYTES + 184] == MRTD
    assert quote.debug


def test_rtmrs_named_by_the_policy_are_matched(intel: TdxAuthority) -> None:
    verifier_ = Verifier(
        parse_policy(policy_text(intel, rtmr0=b"\x01" * 48)), collateral=intel.collateral()
    )
    rtmrs = (b"\x01" * 48, ZERO, ZERO, ZERO)
    assert _appraise(intel, verifier_, rtmrs=rtmrs).accepted
    result = _appraise(intel, verifier_)
    assert result.reason is Reason.MEASUREMENT_NOT_ALLOWED


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"mrtd": bytes(48)}, Reason.MEASUREMENT_NOT_ALLOWED),
        ({"debug": True}, Reason.DEBUG_ENABLED),
        ({"version": 5}, Reason.UNSUPPORTED_VERSION),
        ({"version": 3}, Reason.UNSUPPORTED_VERSION),
    ],
)
def test_each_refusal_names_its_reason(intel: TdxAuthority, kwargs: dict, reason: Reason) -> None:
    result = _appraise(intel, **kwargs)
    assert result.reason is reason, result.detail


def test_low_tee_tcb_svn_is_refused(intel: TdxAuthority) -> None:
    strict = verifier(intel, f'min_tee_tcb_svn = "{"0305" + "00" * 14}"')
    result = _appraise(intel, strict)
    assert result.reason is Reason.TCB_TOO_LOW and "component 1" in result.detail


def test_every_tampered_byte_in_header_and_body_is_refused(intel: TdxAuthority) -> None:
    verifier_ = verifier(intel)
    spki = tls_spki()
    for pos in range(SIGNED_BYTES):
        nonce, quote = _quote_for(verifier_, intel, spki)
        raw = bytearray(quote)
        raw[pos] ^= 0x01
        result = verifier_.appraise(Evidence("tdx", bytes(raw)), nonce=nonce, tls_spki_der=spki)
        expected = Reason.UNSUPPORTED_VERSION if pos < 2 else Reason.BAD_SIGNATURE
        assert result.reason is expected, (pos, result)


def test_tampered_qe_report_or_attestation_key_breaks_the_chain(intel: TdxAuthority) -> None:
    verifier_ = verifier(intel)
    spki = tls_spki()
    qe_report_at = SIGNED_BYTES + 4 + 64 + 64 + 6
    for pos in (SIGNED_BYTES + 4 + 64 + 5, qe_report_at + 10, qe_report_at + 330):
        nonce, quote = _quote_for(verifier_, intel, spki)
        raw = bytearray(quote)
        raw[pos] ^= 0x01
        result = verifier_.appraise(Evidence("tdx", bytes(raw)), nonce=nonce, tls_spki_der=spki)
        assert result.reason in (Reason.BROKEN_CHAIN, Reason.MALFORMED_EVIDENCE), (pos, result)


def test_broken_or_foreign_pck_chain_is_refused(intel: TdxAuthority) -> None:
    other = TdxAuthority()
    verifier_ = verifier(intel)
    spki = tls_spki()
    leaf, _, root = (c.public_bytes(PEM) for c in (intel.pck, intel.ca, intel.root))
    other_ca = other.ca.public_bytes(PEM)
    cases = {
        "intermediate from another root": (leaf + other_ca + root, Reason.BROKEN_CHAIN),
        "another root": (other.pem_chain(), Reason.UNTRUSTED_ROOT),
        "no intermediate": (leaf + root, Reason.BROKEN_CHAIN),
    }
    for name, (chain, reason) in cases.items():
        nonce, quote = _quote_for(verifier_, intel, spki, pem_chain=chain)
        result = verifier_.appraise(Evidence("tdx", quote), nonce=nonce, tls_spki_der=spki)
        assert result.reason is reason, (name, result)


# ------------------------------------------------------------ the quoting enclave's identity


def test_reviewer_case_debug_foreign_qe_with_product_99_is_refused(intel: TdxAuthority) -> None:
    """Issue 18: such a QE report was accepted because nothing compared it to Intel's QE."""
    result = _appraise(intel, qe_debug=True, qe_mrsigner=b"\xee" * 32, qe_isvprodid=99)
    assert result.reason is Reason.QE_IDENTITY, result.detail


@pytest.mark.parametrize(
    ("qe", "words"),
    [
        ({"qe_debug": True}, "DEBUG"),
        ({"qe_mrsigner": b"\xee" * 32}, "MRSIGNER"),
        ({"qe_isvprodid": 99}, "ISVPRODID 99"),
        ({"qe_miscselect": b"\x01\x00\x00\x00"}, "MISCSELECT"),
        ({"qe_attributes": bytes(16)}, "ATTRIBUTES"),
    ],
)
def test_each_quoting_enclave_identity_mismatch_is_refused(
    intel: TdxAuthority, qe: dict, words: str
) -> None:
    result = _appraise(intel, verifier(intel, accepting(*EVERY_STATUS)), **qe)
    assert result.reason is Reason.QE_IDENTITY and words in result.detail, result.detail


def test_masked_qe_attribute_bits_do_not_matter(intel: TdxAuthority) -> None:
    """Intel's mask FBFF.. ignores MODE64BIT and XFRM: a QE differing only there is Intel's."""
    assert _appraise(intel, qe_attributes=struct.pack("<QQ", 0x11, 0x03)).accepted


def test_an_out_of_date_quoting_enclave_drags_the_status_to_out_of_date(
    intel: TdxAuthority,
) -> None:
    result = _appraise(intel, qe_isvsvn=3)
    assert result.reason is Reason.TCB_STATUS and "'OutOfDate'" in result.detail
    assert "INTEL-SA-00615" in result.detail
    lenient = verifier(intel, accepting("UpToDate", "OutOfDate"))
    claims = _appraise(intel, lenient, qe_isvsvn=3).require().claims
    assert claims["tcb_status"] == "OutOfDate" and claims["qe_isvsvn"] == 3
    assert claims["advisory_ids"] == ["INTEL-SA-00615"]


def test_a_revoked_quoting_enclave_is_refused_whatever_the_policy(intel: TdxAuthority) -> None:
    levels = [enclave_level(4, "UpToDate"), enclave_level(0, "Revoked", ["INTEL-SA-00999"])]
    lenient = verifier(intel, accepting(*EVERY_STATUS), qe_identity={"tcbLevels": levels})
    result = _appraise(intel, lenient, qe_isvsvn=1)
    assert result.reason is Reason.TCB_STATUS and "Revoked" in result.detail


# ------------------------------------------------------------------------- the TDX module


def test_a_non_intel_tdx_module_is_refused(intel: TdxAuthority) -> None:
    result = _appraise(intel, mrsignerseam=b"\x66" * 48)
    assert result.reason is Reason.QE_IDENTITY
    assert "MRSIGNERSEAM" in result.detail and "not an Intel TDX module" in result.detail


def test_seam_attributes_must_be_intels(intel: TdxAuthority) -> None:
    result = _appraise(intel, seam_attributes=b"\x01" + bytes(7))
    assert result.reason is Reason.QE_IDENTITY and "SEAMATTRIBUTES" in result.detail


def test_the_policy_narrows_the_module_signer_further(intel: TdxAuthority) -> None:
    """Intel's TCB info may name a signer the policy author has not approved, and vice versa."""
    signer = b"\x77" * 48
    module = {"mrsigner": signer.hex(), "attributes": "00" * 8, "attributesMask": "ff" * 8}
    default = verifier(intel, tcb_info={"tdxModule": module})
    result = _appraise(intel, default, mrsignerseam=signer)
    assert result.reason is Reason.QE_IDENTITY and "expected_mrsignerseam" in result.detail
    approved = verifier(
        intel, f'expected_mrsignerseam = ["{signer.hex()}"]', tcb_info={"tdxModule": module}
    )
    assert _appraise(intel, approved, mrsignerseam=signer).accepted


def test_tdx_module_identities_are_used_for_module_versions(intel: TdxAuthority) -> None:
    """TEE_TCB_SVN[1] > 0: the module identity TDX_<version> decides, as in QVL."""
    current = bytes([3, 3, 4] + [0] * 13)
    assert _appraise(intel, tee_tcb_svn=current).require().claims["tcb_status"] == "UpToDate"
    old_module = bytes([2, 3, 4] + [0] * 13)
    result = _appraise(intel, tee_tcb_svn=old_module)
    assert result.reason is Reason.TCB_STATUS and "INTEL-SA-01036" in result.detail
    unknown = bytes([3, 7, 4] + [0] * 13)
    result = _appraise(intel, tee_tcb_svn=unknown)
    assert result.reason is Reason.QE_IDENTITY and "TDX_07" in result.detail


def test_a_module_identity_with_another_signer_refuses_intels_zero_signer(
    intel: TdxAuthority,
) -> None:
    identity = {
        "id": "TDX_03",
        "mrsigner": "88" * 48,
        "attributes": "00" * 8,
        "attributesMask": "ff" * 8,
        "tcbLevels": [enclave_level(0, "UpToDate")],
    }
    verifier_ = verifier(intel, tcb_info={"tdxModuleIdentities": [identity]})
    result = _appraise(intel, verifier_, tee_tcb_svn=bytes([3, 3, 4] + [0] * 13))
    assert result.reason is Reason.QE_IDENTITY and "MRSIGNERSEAM" in result.detail


# ------------------------------------------------------------------------- the TCB status


def test_an_out_of_date_tdx_tcb_is_refused_by_default_and_reported(intel: TdxAuthority) -> None:
    result = _appraise(intel, tee_tcb_svn=OUT_OF_DATE_TEE_TCB_SVN)
    assert result.reason is Reason.TCB_STATUS and "'OutOfDate'" in result.detail
    lenient = verifier(intel, accepting("UpToDate", "OutOfDate"))
    claims = _appraise(intel, lenient, tee_tcb_svn=OUT_OF_DATE_TEE_TCB_SVN).require().claims
    assert claims["tcb_status"] == "OutOfDate"
    assert claims["advisory_ids"] == list(OUT_OF_DATE_ADVISORIES)


def test_old_sgx_tcb_components_are_judged_even_above_the_tee_tcb_floor() -> None:
    """Issue 18: min_tee_tcb_svn ignored the PCK's SGX TCB components; Intel's levels do not."""
    old_firmware = TdxAuthority(sgx_tcb=OUT_OF_DATE_SGX_TCB, pcesvn=DEFAULT_PCESVN)
    floor = f'min_tee_tcb_svn = "{DEFAULT_TEE_TCB_SVN.hex()}"'
    result = _appraise(old_firmware, verifier(old_firmware, floor))
    assert result.reason is Reason.TCB_STATUS and "'OutOfDate'" in result.detail
    one_component = list(DEFAULT_SGX_TCB)
    one_component[7] -= 1
    slightly_old = TdxAuthority(sgx_tcb=one_component)
    assert _appraise(slightly_old, verifier(slightly_old, floor)).reason is Reason.TCB_STATUS


def test_an_old_pcesvn_alone_is_out_of_date() -> None:
    old_pce = TdxAuthority(pcesvn=OUT_OF_DATE_PCESVN)
    result = _appraise(old_pce, verifier(old_pce))
    assert result.reason is Reason.TCB_STATUS and "'OutOfDate'" in result.detail


def test_a_platform_below_every_level_is_not_supported() -> None:
    ancient = TdxAuthority(sgx_tcb=[0] * 16, pcesvn=0)
    result = _appraise(ancient, verifier(ancient, accepting(*EVERY_STATUS)))
    assert result.reason is Reason.TCB_STATUS and "TCB_NOT_SUPPORTED" in result.detail


def test_a_revoked_platform_level_is_refused_whatever_the_policy(intel: TdxAuthority) -> None:
    levels = [tcb_level(OUT_OF_DATE_SGX_TCB, OUT_OF_DATE_PCESVN, bytes(16), "Revoked")]
    lenient = verifier(intel, accepting(*EVERY_STATUS), tcb_info={"tcbLevels": levels})
    result = _appraise(intel, lenient)
    assert result.reason is Reason.TCB_STATUS and "Revoked" in result.detail


def test_revoked_in_a_hand_built_policy_is_still_refused(intel: TdxAuthority) -> None:
    """The appraiser drops "Revoked" from the accepted list even if a parser let it through."""
    levels = [tcb_level(OUT_OF_DATE_SGX_TCB, OUT_OF_DATE_PCESVN, bytes(16), "Revoked")]
    policy = parse_policy(policy_text(intel))
    section = policy.section("tdx")
    assert section is not None
    hacked = FormatPolicy(
        "tdx",
        section.measurements,
        section.trust_anchors,
        section.required_claims,
        {**section.options, "accepted_tcb_status": ["Revoked", *EVERY_STATUS]},
    )
    quote = intel.quote(bytes(64), mrtd=MRTD)
    appraiser = TdxAppraiser()
    with pytest.raises(AppraisalFailure) as info:
        claims = appraiser.appraise(
            Evidence("tdx", quote),
            hacked,
            time.time(),
            binding=bytes(64),
            collateral=intel.collateral(tcb_info={"tcbLevels": levels}),
        )
        appraiser.check_tcb(claims, hacked)
    assert info.value.reason is Reason.TCB_STATUS
    with pytest.raises(PolicyError):
        parse_policy(policy_text(intel, accepting("UpToDate", "Revoked")))


def test_configuration_needed_with_an_old_module_converges_as_qvl_does(
    intel: TdxAuthority,
) -> None:
    levels = [tcb_level(DEFAULT_SGX_TCB, DEFAULT_PCESVN, bytes(16), "ConfigurationNeeded")]
    lenient = verifier(intel, accepting(*EVERY_STATUS), tcb_info={"tcbLevels": levels})
    claims = _appraise(intel, lenient).require().claims
    assert claims["tcb_status"] == "ConfigurationNeeded"
    old_module = bytes([2, 3, 4] + [0] * 13)
    claims = _appraise(intel, lenient, tee_tcb_svn=old_module).require().claims
    assert claims["tcb_status"] == "OutOfDateConfigurationNeeded"


def test_an_unknown_intel_status_is_reported_and_never_accepted(intel: TdxAuthority) -> None:
    levels = [tcb_level(DEFAULT_SGX_TCB, DEFAULT_PCESVN, bytes(16), "SomethingNew")]
    lenient = verifier(intel, accepting(*EVERY_STATUS), tcb_info={"tcbLevels": levels})
    result = _appraise(intel, lenient)
    assert result.reason is Reason.TCB_STATUS and "SomethingNew" in result.detail
