"""Intel TDX quotes v4 in the DCAP layout, signed under a test PCK chain."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from sealagg_testkit.attest_evidence import policy, tls_spki

from sealagg.attest import Evidence, Reason, Verifier, parse_policy, report_data
from sealagg.attest.tdx import HEADER_BYTES, SIGNED_BYTES, parse_quote
from sealagg.attest.testing import TdxAuthority

PEM = Encoding.PEM
MRTD = bytes.fromhex("22" * 48)


@pytest.fixture(scope="module")
def intel() -> TdxAuthority:
    return TdxAuthority()


def _quote_for(verifier: Verifier, intel: TdxAuthority, spki: bytes, **kw) -> tuple[bytes, bytes]:
    nonce = verifier.challenge()
    kw.setdefault("mrtd", MRTD)
    return nonce, intel.quote(report_data(nonce, spki), **kw)


def _appraise(intel: TdxAuthority, verifier: Verifier | None = None, **kw):
    verifier = verifier or Verifier(policy(tdx=intel, measurement=MRTD))
    spki = tls_spki()
    nonce, quote = _quote_for(verifier, intel, spki, **kw)
    return verifier.appraise(Evidence("tdx", quote), nonce=nonce, tls_spki_der=spki)


def test_genuine_quote_is_accepted(intel: TdxAuthority) -> None:
    result = _appraise(intel).require()
    assert result.claims["mrtd"] == MRTD.hex()
    assert result.claims["debug"] is False


def test_parser_reads_the_v4_offsets(intel: TdxAuthority) -> None:
    rtmrs = tuple(bytes([i]) * 48 for i in (1, 2, 3, 4))
    raw = intel.quote(bytes(range(64)), mrtd=MRTD, rtmrs=rtmrs, debug=True)
    quote = parse_quote(raw)
    assert quote.version == 4 and quote.tee_type == 0x81
    assert quote.body["mrtd"] == MRTD and quote.body["report_data"] == bytes(range(64))
    assert [quote.body[f"rtmr{i}"] for i in range(4)] == list(rtmrs)
    assert raw[HEADER_BYTES + 136 : HEADER_BYTES + 184] == MRTD
    assert quote.debug


def test_rtmrs_are_matched_when_the_policy_names_them(intel: TdxAuthority) -> None:
    text = f"""version = 1
max_age_seconds = 60
[tdx]
trusted_root_sha256 = ["{intel.root_sha256}"]
[[tdx.measurements]]
mrtd = "{MRTD.hex()}"
rtmr0 = "{"01" * 48}"
"""
    verifier = Verifier(parse_policy(text))
    rtmrs = (b"\x01" * 48, bytes(48), bytes(48), bytes(48))
    assert _appraise(intel, verifier, rtmrs=rtmrs).accepted
    result = _appraise(intel, verifier)
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
    strict = Verifier(
        policy(tdx=intel, measurement=MRTD, extra_tdx=f'min_tee_tcb_svn = "{"0305" + "00" * 14}"')
    )
    result = _appraise(intel, strict)
    assert result.reason is Reason.TCB_TOO_LOW and "component 1" in result.detail


def test_every_tampered_byte_in_header_and_body_is_refused(intel: TdxAuthority) -> None:
    verifier = Verifier(policy(tdx=intel, measurement=MRTD))
    spki = tls_spki()
    for pos in range(SIGNED_BYTES):
        nonce, quote = _quote_for(verifier, intel, spki)
        raw = bytearray(quote)
        raw[pos] ^= 0x01
        result = verifier.appraise(Evidence("tdx", bytes(raw)), nonce=nonce, tls_spki_der=spki)
        expected = Reason.UNSUPPORTED_VERSION if pos < 2 else Reason.BAD_SIGNATURE
        assert result.reason is expected, (pos, result)


def test_tampered_qe_report_or_attestation_key_breaks_the_chain(intel: TdxAuthority) -> None:
    verifier = Verifier(policy(tdx=intel, measurement=MRTD))
    spki = tls_spki()
    qe_report_at = SIGNED_BYTES + 4 + 64 + 64 + 6
    for pos in (SIGNED_BYTES + 4 + 64 + 5, qe_report_at + 10, qe_report_at + 330):
        nonce, quote = _quote_for(verifier, intel, spki)
        raw = bytearray(quote)
        raw[pos] ^= 0x01
        result = verifier.appraise(Evidence("tdx", bytes(raw)), nonce=nonce, tls_spki_der=spki)
        assert result.reason in (Reason.BROKEN_CHAIN, Reason.MALFORMED_EVIDENCE), (pos, result)


def test_broken_or_foreign_pck_chain_is_refused(intel: TdxAuthority) -> None:
    other = TdxAuthority()
    verifier = Verifier(policy(tdx=intel, measurement=MRTD))
    spki = tls_spki()
    leaf, _, root = (c.public_bytes(PEM) for c in (intel.pck, intel.ca, intel.root))
    other_ca = other.ca.public_bytes(PEM)
    cases = {
        "intermediate from another root": (leaf + other_ca + root, Reason.BROKEN_CHAIN),
        "another root": (other.pem_chain(), Reason.UNTRUSTED_ROOT),
        "no intermediate": (leaf + root, Reason.BROKEN_CHAIN),
    }
    for name, (chain, reason) in cases.items():
        nonce, quote = _quote_for(verifier, intel, spki, pem_chain=chain)
        result = verifier.appraise(Evidence("tdx", quote), nonce=nonce, tls_spki_der=spki)
        assert result.reason is reason, (name, result)
