"""Intel TDX DCAP quotes, version 4: parse the binary layout and appraise it.

Layout source: Intel, "Intel TDX DCAP: Quote Generation Library and Quote
Verification Library" (rev. 0.9/1.x), Appendix "Quote Format" (Quote v4):
header 48 bytes, TD quote body 584 bytes, then a u32 length and the quote
signature data (ECDSA 256-bit quote signature data structure v4).
All integers are little-endian; ECDSA signatures are r||s big-endian, 32 bytes
each; the attestation public key is x||y (64 bytes).

Header (48 B)::   0 version u16 (4) | 2 att. key type u16 (2 = ECDSA P-256)
                  4 TEE type u32 (0x81 = TDX) | 8 reserved 4 B | 12 QE vendor id 16 B
                  28 user data 20 B
TD quote body (584 B, offsets from its start)::
                  0 TEE_TCB_SVN 16 | 16 MRSEAM 48 | 64 MRSIGNERSEAM 48 | 112 SEAMATTRIBUTES 8
                  120 TDATTRIBUTES 8 (bit 0 = DEBUG) | 128 XFAM 8 | 136 MRTD 48
                  184 MRCONFIGID 48 | 232 MROWNER 48 | 280 MROWNERCONFIG 48
                  328 RTMR0 | 376 RTMR1 | 424 RTMR2 | 472 RTMR3 (48 B each) | 520 REPORTDATA 64
Signature data::  0 quote signature 64 (over header || body) | 64 attestation key 64
                  128 certification data: u16 type (6 = QE report certification data), u32 size:
                      QE report 384 B (SGX report body; REPORTDATA at 320)
                      QE report signature 64 (by the PCK leaf key)
                      QE auth data: u16 size, bytes
                      certification data: u16 type (5 = PCK chain, PEM), u32 size, bytes
The QE report's REPORTDATA[0:32] = SHA-256(attestation key || QE auth data), rest zero.
PCK chain order in type 5 data: PCK leaf, intermediate (Platform/Processor CA), Intel SGX Root CA.

Intel's collateral (TCB info, QE identity, CRLs) is applied by :mod:`tdx_collateral`;
docs/attest-tdx.md says where each piece of trust comes from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import struct
from collections.abc import Mapping

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from sealagg.attest import _x509, tdx_collateral, tdx_pck
from sealagg.attest.collateral import CollateralBundle
from sealagg.attest.errors import AppraisalFailure, Reason
from sealagg.attest.evidence import TDX, Evidence
from sealagg.attest.policy import FormatPolicy

HEADER_BYTES = 48
BODY_BYTES = 584
SIGNED_BYTES = HEADER_BYTES + BODY_BYTES
QUOTE_VERSION = 4
ATT_KEY_ECDSA_P256 = 2
TEE_TYPE_TDX = 0x81
CERT_QE_REPORT = 6
CERT_PCK_CHAIN = 5
QE_REPORT_BYTES = 384
QE_REPORT_DATA_OFFSET = 320
TD_DEBUG_BIT = 0
#: Intel's TDX module signer: MRSIGNERSEAM is all zeros for Intel-signed modules (TDX module spec).
INTEL_MRSIGNERSEAM = bytes(48)
DEFAULT_ACCEPTED_TCB_STATUS = ("UpToDate",)

_BODY_FIELDS = (  # name, offset in the body, size
    ("tee_tcb_svn", 0, 16),
    ("mrseam", 16, 48),
    ("mrsignerseam", 64, 48),
    ("seam_attributes", 112, 8),
    ("td_attributes", 120, 8),
    ("xfam", 128, 8),
    ("mrtd", 136, 48),
    ("mrconfigid", 184, 48),
    ("mrowner", 232, 48),
    ("mrownerconfig", 280, 48),
    ("rtmr0", 328, 48),
    ("rtmr1", 376, 48),
    ("rtmr2", 424, 48),
    ("rtmr3", 472, 48),
    ("report_data", 520, 64),
)


@dataclasses.dataclass(frozen=True)
class TdxQuote:
    raw: bytes
    version: int
    att_key_type: int
    tee_type: int
    body: Mapping[str, bytes]
    signature: bytes
    attestation_key: bytes
    qe_report: bytes
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_type: int
    pck_chain: bytes

    @property
    def debug(self) -> bool:
        return bool(int.from_bytes(self.body["td_attributes"], "little") >> TD_DEBUG_BIT & 1)


class _Reader:
    def __init__(self, raw: bytes, offset: int) -> None:
        self.raw, self.offset = raw, offset

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.offset + n > len(self.raw):
            raise AppraisalFailure(Reason.MALFORMED_EVIDENCE, f"quote truncated in {what}")
        out = self.raw[self.offset : self.offset + n]
        self.offset += n
        return out

    def u16(self, what: str) -> int:
        return struct.unpack("<H", self.take(2, what))[0]

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]


def parse_quote(raw: bytes) -> TdxQuote:
    """Split a v4 quote into fields. Only the version is checked before authentication."""
    raw = bytes(raw)
    if len(raw) < SIGNED_BYTES + 4:
        raise AppraisalFailure(Reason.MALFORMED_EVIDENCE, "too short for a TDX quote")
    version, att_key_type, tee_type = struct.unpack_from("<HHI", raw, 0)
    if version != QUOTE_VERSION:
        raise AppraisalFailure(
            Reason.UNSUPPORTED_VERSION, f"TDX quote version {version} is not supported (want 4)"
        )
    body = {
        name: raw[HEADER_BYTES + off : HEADER_BYTES + off + size]
        for name, off, size in _BODY_FIELDS
    }
    r = _Reader(raw, SIGNED_BYTES)
    sig_len = r.u32("signature data length")
    if sig_len != len(raw) - SIGNED_BYTES - 4:
        raise AppraisalFailure(Reason.MALFORMED_EVIDENCE, "signature data length does not match")
    signature = r.take(64, "quote signature")
    attestation_key = r.take(64, "attestation key")
    cert_type = r.u16("certification data type")
    cert_size = r.u32("certification data size")
    if cert_type != CERT_QE_REPORT:
        raise AppraisalFailure(
            Reason.BROKEN_CHAIN,
            f"certification data type {cert_type}; need 6 (QE report + PCK chain)",
        )
    inner = _Reader(r.take(cert_size, "certification data"), 0)
    qe_report = inner.take(QE_REPORT_BYTES, "QE report")
    qe_sig = inner.take(64, "QE report signature")
    qe_auth = inner.take(inner.u16("QE auth data size"), "QE auth data")
    pck_type = inner.u16("PCK certification data type")
    pck_chain = inner.take(inner.u32("PCK certification data size"), "PCK chain")
    return TdxQuote(
        raw, version, att_key_type, tee_type, body, signature, attestation_key,
        qe_report, qe_sig, qe_auth, pck_type, pck_chain,
    )  # fmt: skip


def quote_fmspc(raw: bytes) -> str:
    """The FMSPC (12 hex digits) in a quote's PCK certificate: which TCB info to fetch.

    Read without authenticating anything: it only names what an operator downloads
    (``sealagg attest collateral fetch --tdx-fmspc``); the appraisal checks it all."""
    quote = parse_quote(raw)
    if quote.pck_chain_type != CERT_PCK_CHAIN:
        raise AppraisalFailure(Reason.BROKEN_CHAIN, "the quote carries no PCK chain (type 5)")
    certs = _x509.load_pem_chain(quote.pck_chain, "the PCK chain")
    return tdx_pck.pck_tcb(certs[0]).fmspc.hex()


def _raw_signature(sig: bytes) -> bytes:
    return encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))


class TdxAppraiser:
    """Appraise a TDX quote v4 as Intel's QVL does: PCK chain to the pinned Intel root,
    QE report and quote signatures, then Intel's collateral (tdx_collateral.evaluate):
    CRLs, TCB info, QE identity, TDX module signer, and the TCB status.

    TCB floors, in two parts: ``min_tee_tcb_svn`` bounds the TDX components byte by byte;
    the SGX TCB components and PCESVN of the PCK certificate are judged through Intel's
    TCB levels, whose status the policy must accept (``accepted_tcb_status``, default
    UpToDate only; "Revoked" never). A platform whose SGX firmware is older than Intel's
    current level therefore matches an OutOfDate level and is refused by default.
    """

    format = TDX
    insecure = False

    def appraise(
        self,
        evidence: Evidence,
        section: FormatPolicy,
        now: float,
        *,
        binding: bytes,
        collateral: CollateralBundle,
    ) -> dict[str, object]:
        quote = parse_quote(evidence.data)
        # The cheap checks first: the QE vouches for this attestation key, which signed the quote.
        expected = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest() + bytes(32)
        qe_data = quote.qe_report[QE_REPORT_DATA_OFFSET : QE_REPORT_DATA_OFFSET + 64]
        if not hmac.compare_digest(qe_data, expected):
            raise AppraisalFailure(
                Reason.BROKEN_CHAIN, "the QE report does not certify this attestation key"
            )
        try:
            att_key = ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256R1(), b"\x04" + quote.attestation_key
            )
        except ValueError:
            raise AppraisalFailure(Reason.MALFORMED_EVIDENCE, "bad attestation key") from None
        _x509.verify_ecdsa(
            att_key, _raw_signature(quote.signature), quote.raw[:SIGNED_BYTES],
            hashes.SHA256(), "the quote signature",
        )  # fmt: skip
        chain = _pck_chain(quote, section, now)
        try:
            _x509.verify_ecdsa(
                chain[2].public_key(), _raw_signature(quote.qe_report_signature),
                quote.qe_report, hashes.SHA256(), "the QE report signature",
            )  # fmt: skip
        except AppraisalFailure as failure:
            raise AppraisalFailure(Reason.BROKEN_CHAIN, failure.detail) from None
        except (ValueError, UnsupportedAlgorithm):
            raise AppraisalFailure(Reason.BROKEN_CHAIN, "the PCK key is unusable") from None
        # Authenticated from here on.
        if quote.att_key_type != ATT_KEY_ECDSA_P256 or quote.tee_type != TEE_TYPE_TDX:
            raise AppraisalFailure(Reason.MALFORMED_EVIDENCE, "not an ECDSA P-256 TDX quote")
        verdict = tdx_collateral.evaluate(
            collateral,
            pck_chain=chain,
            qe_report=quote.qe_report,
            tee_tcb_svn=quote.body["tee_tcb_svn"],
            mrsignerseam=quote.body["mrsignerseam"],
            seam_attributes=quote.body["seam_attributes"],
            anchors=section.trust_anchors,
            now=now,
            min_tcb_evaluation_data_number=_evaluation_floor(section),
        )
        _check_mrsignerseam(quote.body["mrsignerseam"], section)
        if verdict.tcb_status == "Revoked":
            raise AppraisalFailure(
                Reason.TCB_STATUS,
                "Intel's collateral says this platform's TCB is Revoked "
                f"(platform {verdict.platform_status}, TDX module {verdict.module_status}, "
                f"quoting enclave {verdict.qe_status}); no policy can accept it",
            )
        claims: dict[str, object] = {
            k: v.hex() for k, v in quote.body.items() if k != "report_data"
        }
        claims["report_data"] = quote.body["report_data"]
        claims["debug"] = quote.debug
        claims["version"] = quote.version
        claims["tcb_status"] = verdict.tcb_status
        claims["advisory_ids"] = list(verdict.advisory_ids)
        claims["fmspc"] = verdict.pck.fmspc.hex()
        claims["pce_svn"] = verdict.pck.pcesvn
        claims["sgx_tcb_components"] = list(verdict.pck.sgx_components)
        claims["qe_isvsvn"] = verdict.qe_isvsvn
        claims["tcb_date"] = verdict.tcb_date
        claims["tcb_evaluation_data_number"] = verdict.tcb_evaluation_data_number
        return claims

    def check_tcb(self, claims: Mapping[str, object], section: FormatPolicy) -> None:
        minimum = section.options.get("min_tee_tcb_svn")
        if minimum is not None:
            have = bytes.fromhex(str(claims["tee_tcb_svn"]))
            for i, (h, m) in enumerate(zip(have, bytes.fromhex(minimum), strict=True)):
                if h < m:
                    raise AppraisalFailure(
                        Reason.TCB_TOO_LOW, f"TEE_TCB_SVN component {i} = {h} is below {m}"
                    )
        status = claims.get("tcb_status")
        accepted = accepted_tcb_statuses(section)
        if status not in accepted:
            advisories = ", ".join(map(str, claims.get("advisory_ids") or ())) or "none"
            raise AppraisalFailure(
                Reason.TCB_STATUS,
                f"Intel's TCB status is {status!r} (advisories: {advisories}); the policy "
                f"accepts {sorted(accepted)}",
            )


def accepted_tcb_statuses(section: FormatPolicy) -> frozenset[str]:
    """The policy's ``accepted_tcb_status`` (default UpToDate), never "Revoked"."""
    raw = section.options.get("accepted_tcb_status", DEFAULT_ACCEPTED_TCB_STATUS)
    if isinstance(raw, str) or not isinstance(raw, list | tuple):
        return frozenset()
    known = set(tdx_collateral.PLATFORM_STATUSES) - {"Revoked"}
    return frozenset(s for s in raw if isinstance(s, str) and s in known)


def _evaluation_floor(section: FormatPolicy) -> int:
    """The policy's ``min_tcb_evaluation_data_number`` (0: no floor beyond Intel's dates)."""
    raw = section.options.get("min_tcb_evaluation_data_number", 0)
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise AppraisalFailure(
            Reason.COLLATERAL_INVALID, "the policy's min_tcb_evaluation_data_number is malformed"
        )
    return raw


def _check_mrsignerseam(mrsignerseam: bytes, section: FormatPolicy) -> None:
    """The policy may narrow further than Intel's TCB info: default, Intel's signer (zeros)."""
    raw = section.options.get("expected_mrsignerseam", [INTEL_MRSIGNERSEAM.hex()])
    allowed = []
    for value in raw if isinstance(raw, list | tuple) else ():
        try:
            allowed.append(bytes.fromhex(value))
        except (TypeError, ValueError):
            continue
    if not any(hmac.compare_digest(mrsignerseam, a) for a in allowed):
        raise AppraisalFailure(
            Reason.QE_IDENTITY,
            f"TDX module identity mismatch: MRSIGNERSEAM {mrsignerseam.hex()} is not among the "
            "policy's expected_mrsignerseam",
        )


def _pck_chain(quote: TdxQuote, section: FormatPolicy, now: float) -> list[x509.Certificate]:
    """(root, PCK CA, PCK leaf) from certification data type 5, verified to a pinned root."""
    if quote.pck_chain_type != CERT_PCK_CHAIN:
        raise AppraisalFailure(
            Reason.BROKEN_CHAIN, "the quote carries no PCK certificate chain (type 5)"
        )
    certs = _x509.load_pem_chain(quote.pck_chain, "the PCK chain")
    if len(certs) != 3:
        raise AppraisalFailure(Reason.BROKEN_CHAIN, "the PCK chain must hold leaf, CA and root")
    chain = list(reversed(certs))
    try:
        _x509.verify_chain(
            chain, ("Intel root CA", "PCK CA", "PCK leaf"), section.trust_anchors, now
        )
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # malformed certificate fields
        raise AppraisalFailure(Reason.BROKEN_CHAIN, f"the PCK chain is malformed: {exc}") from None
    return chain
