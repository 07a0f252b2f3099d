"""AMD SEV-SNP reports in the ABI layout: parsing, signature, TCB layouts and the strict defaults.

Collateral (chains, CRLs, VCEK lookup) has its own file, test_snp_collateral.py.
"""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from sealagg_testkit.attest_evidence import policy, tls_spki
from sealagg_testkit.snp_cases import GOOD, appraise, direct, refused, section, with_items

from sealagg.attest import Evidence, Reason, Verifier, report_data
from sealagg.attest.sevsnp import REPORT_BYTES, SIGNED_BYTES, TcbVersion, parse_report
from sealagg.attest.snp_abi import GENOA, MILAN, TURIN, product_from_cpuid
from sealagg.attest.snp_collateral import OID_FMCSPL, OID_HWID, crl_path
from sealagg.attest.testing import SnpAuthority

DER = Encoding.DER


@pytest.fixture(scope="module", params=["rsa-pss", "ecdsa"])
def amd(request: pytest.FixtureRequest) -> SnpAuthority:
    return SnpAuthority(pss=request.param == "rsa-pss")


@pytest.fixture(scope="module")
def turin() -> SnpAuthority:
    return SnpAuthority(product=TURIN)


def test_genuine_report_is_accepted_with_its_claims(amd: SnpAuthority) -> None:
    result = appraise(amd).require()
    assert result.accepted and not result.insecure
    assert result.claims["measurement"] == GOOD.hex()
    assert result.claims["chip_id"] == amd.chip_id.hex()
    assert result.claims["reported_tcb"] == {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
    assert result.claims["product"] == MILAN and result.claims["signing_key"] == "vcek"


def test_parser_reads_the_abi_offsets(amd: SnpAuthority) -> None:
    committed = TcbVersion(2, 0, 7, 100)
    raw = amd.report(
        bytes(range(64)), measurement=GOOD, guest_svn=7, vmpl=2, debug=True, version=3,
        committed_tcb=committed,
    )  # fmt: skip
    assert len(raw) == REPORT_BYTES == 0x4A0
    report = parse_report(raw)
    assert (report.version, report.guest_svn, report.vmpl) == (3, 7, 2)
    assert report.report_data == bytes(range(64)) and report.measurement == GOOD
    assert report.debug and report.policy >> 19 & 1
    assert report.signing_key == "vcek"
    assert (report.cpuid_family, report.cpuid_model, report.product) == (0x19, 0x01, MILAN)
    assert report.committed_tcb == committed and report.reported_tcb == amd.tcb
    assert raw[0x1E0:0x1E8] == bytes([2, 0, 0, 0, 0, 0, 7, 100])


def test_result_cannot_be_used_as_a_bool(amd: SnpAuthority) -> None:
    with pytest.raises(TypeError):
        bool(appraise(amd))


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"measurement": bytes(48)}, Reason.MEASUREMENT_NOT_ALLOWED),
        ({"debug": True}, Reason.DEBUG_ENABLED),
        ({"version": 7}, Reason.UNSUPPORTED_VERSION),
        ({"version": 1}, Reason.UNSUPPORTED_VERSION),
        ({"version": 4}, Reason.UNSUPPORTED_VERSION),
    ],
)
def test_each_refusal_names_its_reason(amd: SnpAuthority, kwargs: dict, reason: Reason) -> None:
    result = appraise(amd, **kwargs)
    assert not result.accepted and result.reason is reason, result.detail
    with pytest.raises(Exception, match=reason.value):
        result.require()


def test_versions_3_and_5_are_accepted(amd: SnpAuthority) -> None:
    for version in (3, 5):
        assert appraise(amd, version=version).accepted


def test_low_tcb_and_svn_are_refused(amd: SnpAuthority) -> None:
    floor = "min_guest_svn = 2\nmin_tcb = { bootloader = 3, tee = 0, snp = 9, microcode = 115 }"
    strict = Verifier(
        policy(snp=amd, measurement=GOOD, extra_snp=floor), collateral=amd.collateral()
    )
    result = appraise(amd, verifier=strict, guest_svn=1)
    assert result.reason is Reason.TCB_TOO_LOW and "guest SVN" in result.detail
    result = appraise(amd, verifier=strict, guest_svn=2)
    assert result.reason is Reason.TCB_TOO_LOW and "snp" in result.detail


def test_report_for_another_tcb_than_the_vcek_is_refused(amd: SnpAuthority) -> None:
    result = appraise(amd, tcb=TcbVersion(3, 0, 9, 115))
    assert result.reason is Reason.BROKEN_CHAIN and "TCB" in result.detail


def test_every_tampered_byte_is_refused() -> None:
    """Every signed byte, and the signature: BAD_SIGNATURE, except KEY_INFO's SIGNING_KEY
    bits, which choose the key (a VLEK the evidence does not carry: COLLATERAL_MISSING)."""
    amd = SnpAuthority(pss=True)  # once: the loop is dominated by chain checks
    verifier = Verifier(policy(snp=amd, measurement=GOOD), collateral=amd.collateral(vlek=False))
    spki = tls_spki()
    certs = amd.certificates()
    positions = [*range(SIGNED_BYTES), *range(0x2A0, 0x2A0 + 144, 7)]
    for pos in positions:
        for bit in (0x01, 0x04) if pos == 0x48 else (0x01,):
            nonce = verifier.challenge()
            raw = bytearray(amd.report(report_data(nonce, spki), measurement=GOOD))
            raw[pos] ^= bit
            result = verifier.appraise(
                Evidence("sev-snp", bytes(raw), certs), nonce=nonce, tls_spki_der=spki
            )
            want = Reason.COLLATERAL_MISSING if (pos, bit) == (0x48, 0x04) else Reason.BAD_SIGNATURE
            assert result.reason is want, (pos, bit, result)


def test_report_of_another_chip_is_refused(amd: SnpAuthority) -> None:
    raw = bytearray(amd.report(bytes(64), measurement=GOOD))
    raw[0x1A0] ^= 0xFF  # another CHIP_ID, re-signed by this VCEK
    amd.sign(raw)
    refused(Reason.BROKEN_CHAIN, "another chip", amd=amd, raw=bytes(raw))


def test_unsigned_or_reserved_signing_key_is_refused(amd: SnpAuthority) -> None:
    for signing_key in (7, 3):
        raw = bytearray(amd.report(bytes(64), measurement=GOOD))
        struct.pack_into("<I", raw, 0x48, signing_key << 2)
        amd.sign(raw)
        refused(Reason.BROKEN_CHAIN, "not a VCEK or VLEK", amd=amd, raw=bytes(raw))


def test_vlek_signed_report_is_appraised_with_the_vlek(amd: SnpAuthority) -> None:
    result = appraise(amd, signer="vlek").require()
    assert result.claims["signing_key"] == "vlek"
    # KEY_INFO says VLEK but the signature is the VCEK's: the VLEK does not verify it.
    raw = bytearray(amd.report(bytes(64), measurement=GOOD))
    struct.pack_into("<I", raw, 0x48, 1 << 2)
    amd.sign(raw)  # by the VCEK
    refused(Reason.BAD_SIGNATURE, amd=amd, raw=bytes(raw), certificates=amd.certificates("vlek"))
    # ... and with the VCEK's certificates only: the VLEK is nowhere.
    refused(
        Reason.COLLATERAL_MISSING, "/vlek/", amd=amd, raw=bytes(raw),
        collateral=amd.collateral(vlek=False),
    )  # fmt: skip


def test_truncated_report_is_malformed(amd: SnpAuthority) -> None:
    for raw in (bytes(100), bytes(REPORT_BYTES + 1), b""):
        refused(Reason.MALFORMED_EVIDENCE, amd=amd, raw=raw)


def test_required_claims_must_match(amd: SnpAuthority) -> None:
    strict = Verifier(
        policy(snp=amd, measurement=GOOD, extra_snp="required_claims = { vmpl = 0 }"),
        collateral=amd.collateral(),
    )
    assert appraise(amd, verifier=strict).accepted
    result = appraise(amd, verifier=strict, vmpl=2)
    assert result.reason is Reason.REQUIRED_CLAIM and "vmpl" in result.detail


# ---------------------------------------------------------------- strict defaults (issue 18)


def test_vmpl_3_is_refused_unless_the_policy_names_it(amd: SnpAuthority) -> None:
    """Reviewer's case: VMPL 3 was accepted. A section without required_claims pins VMPL 0."""
    refused(
        Reason.REQUIRED_CLAIM,
        "vmpl",
        amd=amd,
        vmpl=3,
        policy_section=section(amd, required_claims={}),
    )
    claims = direct(amd, section(amd, required_claims={"vmpl": 3}), vmpl=3)
    assert claims["vmpl"] == 3
    refused(
        Reason.REQUIRED_CLAIM, "vmpl", amd=amd, vmpl=0,
        policy_section=section(amd, required_claims={"vmpl": 3}),
    )  # fmt: skip


def test_tcb_zero_is_refused_without_a_floor() -> None:
    """Reviewer's case: TCB 0/0/0/0 was accepted. No (or an incomplete) floor refuses."""
    zero = SnpAuthority(tcb=TcbVersion(0, 0, 0, 0))
    for floor in (None, {}, {"bootloader": 0, "tee": 0, "snp": 0}, {"snp": "0"}):
        refused(
            Reason.TCB_TOO_LOW, "min_tcb", amd=zero, policy_section=section(zero, min_tcb=floor)
        )
    floor = {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
    refused(Reason.TCB_TOO_LOW, "bootloader", amd=zero, policy_section=section(zero, min_tcb=floor))


def test_floor_is_judged_on_the_committed_tcb_too(amd: SnpAuthority) -> None:
    """A committed TCB below the floor lets the host roll the firmware back under the guest."""
    low = TcbVersion(3, 0, 7, 115)
    refused(Reason.TCB_TOO_LOW, "committed tcb snp = 7", amd=amd, committed_tcb=low)
    assert direct(amd, committed_tcb=TcbVersion(3, 0, 9, 120))["committed_tcb"]


def test_appraiser_alone_refuses_debug_and_low_guest_svn(amd: SnpAuthority) -> None:
    refused(Reason.DEBUG_ENABLED, amd=amd, debug=True)
    refused(Reason.TCB_TOO_LOW, "guest SVN", amd=amd, guest_svn=1,
             policy_section=section(amd, min_guest_svn=2))  # fmt: skip


# ------------------------------------------------------------------- products and TCB layout


def test_product_from_cpuid_family_and_model() -> None:
    assert [product_from_cpuid(0x19, m) for m in (0x00, 0x0F, 0x10, 0x1F, 0xA0)] == [
        MILAN, MILAN, GENOA, GENOA, GENOA,
    ]  # fmt: skip
    assert [product_from_cpuid(0x1A, m) for m in (0x00, 0x1F)] == [TURIN, TURIN]
    assert {product_from_cpuid(f, m) for f, m in ((0x17, 0x31), (0x1A, 0x20), (0x19, 0x20))} == {
        None
    }


def test_turin_tcb_layout_is_decoded_from_its_own_bytes() -> None:
    tcb = TcbVersion(bootloader=4, tee=2, snp=9, microcode=0x4A, fmc=1)
    assert tcb.pack() == bytes([1, 4, 2, 9, 0, 0, 0, 0x4A])
    assert TcbVersion.unpack(tcb.pack(), TURIN) == tcb
    assert TcbVersion.unpack(tcb.pack(), GENOA) == TcbVersion(1, 4, 0, 0x4A)  # the wrong layout
    milan = TcbVersion(3, 0, 8, 115)
    assert milan.pack() == bytes([3, 0, 0, 0, 0, 0, 8, 115]) and milan.hex == "7308000000000003"
    assert TcbVersion.from_hex(tcb.hex, TURIN) == tcb


def test_turin_report_floor_is_judged_on_the_right_bytes(turin: SnpAuthority) -> None:
    """Turin's TCB is fmc 1, bl 4, tee 2, snp 9, ucode 0x4A at bytes 0, 1, 2, 3, 7. Read in
    the Milan layout the same bytes say bl 1, tee 4, snp 0: the exact floor would then fail."""
    exact = {"fmc": 1, "bootloader": 4, "tee": 2, "snp": 9, "microcode": 0x4A}
    claims = direct(turin, section(turin, min_tcb=exact))
    assert claims["product"] == TURIN and claims["reported_tcb"] == exact
    for name in exact:
        higher = {**exact, name: exact[name] + 1}
        refused(Reason.TCB_TOO_LOW, f"reported tcb {name}", amd=turin,
                 policy_section=section(turin, min_tcb=higher))  # fmt: skip
    without_fmc = {k: v for k, v in exact.items() if k != "fmc"}
    refused(
        Reason.TCB_TOO_LOW, "fmc", amd=turin, policy_section=section(turin, min_tcb=without_fmc)
    )


def test_turin_vcek_must_certify_the_fmc_and_match_8_byte_hwid(turin: SnpAuthority) -> None:
    no_fmc = turin.vcek_certificate(omit={OID_FMCSPL}).public_bytes(DER)
    refused(Reason.BROKEN_CHAIN, "fmc SPL", amd=turin, certificates=(no_fmc,))
    other_fmc = turin.vcek_certificate(tcb=TcbVersion(4, 2, 9, 0x4A, fmc=0)).public_bytes(DER)
    refused(Reason.BROKEN_CHAIN, "fmc", amd=turin, certificates=(other_fmc,))
    assert len(turin.vcek.extensions.get_extension_for_oid(OID_HWID).value.value) == 8


def test_turin_report_must_be_version_3_or_later(turin: SnpAuthority) -> None:
    refused(Reason.UNSUPPORTED_VERSION, "version 3", amd=turin, version=2)


def test_unknown_cpu_family_is_refused(amd: SnpAuthority) -> None:
    refused(Reason.UNSUPPORTED_VERSION, "family 0x17", amd=amd, version=3, cpuid=(0x17, 0x31, 0))


def test_vcek_of_another_product_is_refused(amd: SnpAuthority) -> None:
    """A Genoa report (CPUID) with a Milan VCEK: the VCEK's productName gives it away."""
    bundle = amd.collateral()
    genoa_crl = {crl_path(GENOA): bundle.files[crl_path(MILAN)]}
    refused(Reason.BROKEN_CHAIN, "Milan-B0", amd=amd, version=3, cpuid=(0x19, 0x11, 1),
             collateral=with_items(bundle, genoa_crl))  # fmt: skip


def test_policy_product_narrows_the_products(amd: SnpAuthority) -> None:
    """An optional policy ``product`` (needs the policy parser to accept the key)."""
    assert direct(amd, section(amd, product=["Genoa", "milan"]), version=3)["product"] == MILAN
    refused(Reason.REQUIRED_CLAIM, "Milan", amd=amd, version=3,
             policy_section=section(amd, product="Genoa"))  # fmt: skip
    refused(Reason.REQUIRED_CLAIM, "Milan", amd=amd, version=2,
             policy_section=section(amd, product="Genoa"))  # fmt: skip


def test_version_2_product_comes_from_the_vcek_or_the_bundle() -> None:
    genoa = SnpAuthority(product=GENOA)
    assert direct(genoa, version=2)["product"] == GENOA  # productName "Genoa-B0"
    assert direct(genoa, version=2, certificates=())["product"] == GENOA  # bundle folder
    refused(Reason.COLLATERAL_MISSING, "sev-snp/Milan/vcek/", amd=genoa, version=2,
             certificates=(), collateral=genoa.collateral(vcek=False))  # fmt: skip
