"""AMD SEV-SNP reports in the ABI layout, signed by a test VCEK under a test ARK/ASK chain."""

from __future__ import annotations

import struct

import pytest
from sealagg_testkit.attest_evidence import policy, tls_spki

from sealagg.attest import Evidence, Reason, Verifier, report_data
from sealagg.attest.sevsnp import REPORT_BYTES, SIGNED_BYTES, TcbVersion, parse_report
from sealagg.attest.testing import SnpAuthority

GOOD = bytes.fromhex("11" * 48)


@pytest.fixture(scope="module", params=["rsa-pss", "ecdsa"])
def amd(request: pytest.FixtureRequest) -> SnpAuthority:
    return SnpAuthority(pss=request.param == "rsa-pss")


def _appraise(amd: SnpAuthority, *, spki: bytes | None = None, verifier=None, **report_kw):
    verifier = verifier or Verifier(policy(snp=amd, measurement=GOOD))
    spki = spki or tls_spki()
    nonce = verifier.challenge()
    report_kw.setdefault("measurement", GOOD)
    raw = amd.report(report_data(nonce, spki), **report_kw)
    return verifier.appraise(
        Evidence("sev-snp", raw, amd.certificates()), nonce=nonce, tls_spki_der=spki
    )


def test_genuine_report_is_accepted_with_its_claims(amd: SnpAuthority) -> None:
    result = _appraise(amd).require()
    assert result.accepted and not result.insecure
    assert result.claims["measurement"] == GOOD.hex()
    assert result.claims["chip_id"] == amd.chip_id.hex()
    assert result.claims["reported_tcb"] == {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}


def test_parser_reads_the_abi_offsets(amd: SnpAuthority) -> None:
    raw = amd.report(bytes(range(64)), measurement=GOOD, guest_svn=7, vmpl=2, debug=True)
    assert len(raw) == REPORT_BYTES == 0x4A0
    report = parse_report(raw)
    assert (report.version, report.guest_svn, report.vmpl) == (2, 7, 2)
    assert report.report_data == bytes(range(64)) and report.measurement == GOOD
    assert report.debug and report.policy >> 19 & 1
    assert report.signing_key == "vcek"


def test_result_cannot_be_used_as_a_bool(amd: SnpAuthority) -> None:
    with pytest.raises(TypeError):
        bool(_appraise(amd))


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"measurement": bytes(48)}, Reason.MEASUREMENT_NOT_ALLOWED),
        ({"debug": True}, Reason.DEBUG_ENABLED),
        ({"version": 7}, Reason.UNSUPPORTED_VERSION),
        ({"version": 1}, Reason.UNSUPPORTED_VERSION),
    ],
)
def test_each_refusal_names_its_reason(amd: SnpAuthority, kwargs: dict, reason: Reason) -> None:
    result = _appraise(amd, **kwargs)
    assert not result.accepted and result.reason is reason, result.detail
    with pytest.raises(Exception, match=reason.value):
        result.require()


def test_versions_3_and_5_are_accepted(amd: SnpAuthority) -> None:
    for version in (3, 5):
        assert _appraise(amd, version=version).accepted


def test_low_tcb_and_svn_are_refused(amd: SnpAuthority) -> None:
    strict = Verifier(
        policy(snp=amd, measurement=GOOD, extra_snp="min_guest_svn = 2\nmin_tcb = { snp = 9 }")
    )
    result = _appraise(amd, verifier=strict, guest_svn=1)
    assert result.reason is Reason.TCB_TOO_LOW and "guest SVN" in result.detail
    result = _appraise(amd, verifier=strict, guest_svn=2)
    assert result.reason is Reason.TCB_TOO_LOW and "snp" in result.detail


def test_report_for_another_tcb_than_the_vcek_is_refused(amd: SnpAuthority) -> None:
    result = _appraise(amd, tcb=TcbVersion(3, 0, 9, 115))
    assert result.reason is Reason.BROKEN_CHAIN and "TCB" in result.detail


def test_every_tampered_byte_is_refused() -> None:
    amd = SnpAuthority(pss=True)  # once: the loop is dominated by chain checks
    verifier = Verifier(policy(snp=amd, measurement=GOOD))
    spki = tls_spki()
    certs = amd.certificates()
    positions = [*range(SIGNED_BYTES), *range(0x2A0, 0x2A0 + 144, 7)]
    for pos in positions:
        nonce = verifier.challenge()
        raw = bytearray(amd.report(report_data(nonce, spki), measurement=GOOD))
        raw[pos] ^= 0x01
        result = verifier.appraise(
            Evidence("sev-snp", bytes(raw), certs), nonce=nonce, tls_spki_der=spki
        )
        assert result.reason is Reason.BAD_SIGNATURE, (pos, result)


def test_broken_certificate_chain_is_refused(amd: SnpAuthority) -> None:
    other = SnpAuthority(pss=True)
    verifier = Verifier(policy(snp=amd, measurement=GOOD))
    spki = tls_spki()
    ark, ask, vcek = amd.certificates()
    _, other_ask, other_vcek = other.certificates()
    cases = {
        "ASK from another ARK": ((ark, other_ask, vcek), Reason.BROKEN_CHAIN),
        "VCEK from another ASK": ((ark, ask, other_vcek), Reason.BROKEN_CHAIN),
        "unknown ARK": (other.certificates(), Reason.UNTRUSTED_ROOT),
        "missing ASK": ((ark, vcek), Reason.BROKEN_CHAIN),
        "garbage certificate": ((ark, b"not a cert", vcek), Reason.BROKEN_CHAIN),
    }
    for name, (certs, reason) in cases.items():
        nonce = verifier.challenge()
        raw = amd.report(report_data(nonce, spki), measurement=GOOD)
        result = verifier.appraise(Evidence("sev-snp", raw, certs), nonce=nonce, tls_spki_der=spki)
        assert result.reason is reason, (name, result)


def test_report_of_another_chip_is_refused(amd: SnpAuthority) -> None:
    verifier = Verifier(policy(snp=amd, measurement=GOOD))
    spki = tls_spki()
    nonce = verifier.challenge()
    raw = bytearray(amd.report(report_data(nonce, spki), measurement=GOOD))
    raw[0x1A0] ^= 0xFF  # another CHIP_ID, re-signed by this VCEK
    amd.sign(raw)
    result = verifier.appraise(
        Evidence("sev-snp", bytes(raw), amd.certificates()), nonce=nonce, tls_spki_der=spki
    )
    assert result.reason is Reason.BROKEN_CHAIN and "chip" in result.detail


def test_vlek_signed_report_is_refused(amd: SnpAuthority) -> None:
    verifier = Verifier(policy(snp=amd, measurement=GOOD))
    spki = tls_spki()
    nonce = verifier.challenge()
    raw = bytearray(amd.report(report_data(nonce, spki), measurement=GOOD))
    struct.pack_into("<I", raw, 0x48, 1 << 2)
    amd.sign(raw)
    result = verifier.appraise(
        Evidence("sev-snp", bytes(raw), amd.certificates()), nonce=nonce, tls_spki_der=spki
    )
    assert result.reason is Reason.BROKEN_CHAIN and "vlek" in result.detail


def test_truncated_report_is_malformed(amd: SnpAuthority) -> None:
    verifier = Verifier(policy(snp=amd, measurement=GOOD))
    nonce = verifier.challenge()
    result = verifier.appraise(
        Evidence("sev-snp", bytes(100), amd.certificates()), nonce=nonce, tls_spki_der=tls_spki()
    )
    assert result.reason is Reason.MALFORMED_EVIDENCE


def test_required_claims_must_match(amd: SnpAuthority) -> None:
    strict = Verifier(policy(snp=amd, measurement=GOOD, extra_snp="required_claims = { vmpl = 0 }"))
    assert _appraise(amd, verifier=strict).accepted
    result = _appraise(amd, verifier=strict, vmpl=2)
    assert result.reason is Reason.REQUIRED_CLAIM and "vmpl" in result.detail
