"""AMD SEV-SNP attestation reports: parse the binary layout and appraise it.

Layout source: AMD, "SEV Secure Nested Paging Firmware ABI Specification",
publication 56860, Table "ATTESTATION_REPORT Structure" (rev. 1.55, Sept. 2023;
versions 3 and 5 of later revisions only fill bytes that were reserved). The
report is 0x4A0 bytes; the signature covers bytes 0x000-0x29F and sits at
0x2A0 as ECDSA P-384 R and S, each 72 bytes little-endian (zero padded).
Certificates: VCEK signed by ASK signed by ARK (self-signed), RSASSA-PSS
(AMD "Versioned Chip Endorsement Key (VCEK) Certificate and KDS Interface
Specification", publication 57230). The VCEK's hwID extension must equal the
report's CHIP_ID and its TCB extensions the REPORTED_TCB.

Offsets used (all little-endian)::

    0x000 VERSION u32        0x004 GUEST_SVN u32      0x008 POLICY u64 (bit 19 = DEBUG)
    0x030 VMPL u32           0x034 SIGNATURE_ALGO u32 (1 = ECDSA P-384 with SHA-384)
    0x038 CURRENT_TCB u64    0x048 KEY_INFO u32 (bits 2-4: 0 = VCEK, 1 = VLEK)
    0x050 REPORT_DATA 64 B   0x090 MEASUREMENT 48 B   0x0C0 HOST_DATA 32 B
    0x0E0 ID_KEY_DIGEST 48 B 0x180 REPORTED_TCB u64   0x1A0 CHIP_ID 64 B
    0x2A0 SIGNATURE: R 72 B, S 72 B (little-endian)
"""

from __future__ import annotations

import dataclasses
import hmac
import struct
from collections.abc import Mapping

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from sealagg.attest import _x509
from sealagg.attest.collateral import CollateralBundle
from sealagg.attest.errors import AppraisalFailure, Reason
from sealagg.attest.evidence import SEV_SNP, Evidence
from sealagg.attest.policy import FormatPolicy

REPORT_BYTES = 0x4A0
SIGNED_BYTES = 0x2A0
SIGNATURE_OFFSET = 0x2A0
SIGNATURE_COMPONENT_BYTES = 72
SUPPORTED_VERSIONS = frozenset({2, 3, 5})
SIG_ALGO_ECDSA_P384_SHA384 = 1
POLICY_DEBUG_BIT = 19

#: AMD OIDs in the VCEK certificate (KDS interface specification, table "VCEK extensions").
OID_BLSPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.1")
OID_TEESPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.2")
OID_SNPSPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.3")
OID_UCODESPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.8")
OID_HWID = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.4")
_TCB_OIDS = {
    "bootloader": OID_BLSPL,
    "tee": OID_TEESPL,
    "snp": OID_SNPSPL,
    "microcode": OID_UCODESPL,
}


@dataclasses.dataclass(frozen=True)
class TcbVersion:
    """Milan/Genoa TCB_VERSION: byte 0 boot loader, 1 TEE, 6 SNP firmware, 7 microcode."""

    bootloader: int
    tee: int
    snp: int
    microcode: int

    @classmethod
    def unpack(cls, raw: bytes) -> TcbVersion:
        return cls(raw[0], raw[1], raw[6], raw[7])

    def pack(self) -> bytes:
        return bytes([self.bootloader, self.tee, 0, 0, 0, 0, self.snp, self.microcode])

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SnpReport:
    raw: bytes
    version: int
    guest_svn: int
    policy: int
    vmpl: int
    signature_algo: int
    current_tcb: TcbVersion
    key_info: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    reported_tcb: TcbVersion
    chip_id: bytes
    signature_r: int
    signature_s: int

    @property
    def debug(self) -> bool:
        return bool(self.policy >> POLICY_DEBUG_BIT & 1)

    @property
    def signing_key(self) -> str:
        return {0: "vcek", 1: "vlek"}.get(self.key_info >> 2 & 0b111, "other")

    @property
    def signed_body(self) -> bytes:
        return self.raw[:SIGNED_BYTES]


def parse_report(raw: bytes) -> SnpReport:
    """Split a report into fields; only the length is checked here (not yet authenticated)."""
    raw = bytes(raw)
    if len(raw) != REPORT_BYTES:
        raise AppraisalFailure(
            Reason.MALFORMED_EVIDENCE, f"an SNP report is {REPORT_BYTES} bytes, got {len(raw)}"
        )
    version, guest_svn, policy = struct.unpack_from("<IIQ", raw, 0x000)
    vmpl, sig_algo = struct.unpack_from("<II", raw, 0x030)
    (key_info,) = struct.unpack_from("<I", raw, 0x048)
    r = raw[SIGNATURE_OFFSET : SIGNATURE_OFFSET + SIGNATURE_COMPONENT_BYTES]
    s = raw[SIGNATURE_OFFSET + SIGNATURE_COMPONENT_BYTES : SIGNATURE_OFFSET + 144]
    return SnpReport(
        raw=raw,
        version=version,
        guest_svn=guest_svn,
        policy=policy,
        vmpl=vmpl,
        signature_algo=sig_algo,
        current_tcb=TcbVersion.unpack(raw[0x038:0x040]),
        key_info=key_info,
        report_data=raw[0x050:0x090],
        measurement=raw[0x090:0x0C0],
        host_data=raw[0x0C0:0x0E0],
        id_key_digest=raw[0x0E0:0x110],
        reported_tcb=TcbVersion.unpack(raw[0x180:0x188]),
        chip_id=raw[0x1A0:0x1E0],
        signature_r=int.from_bytes(r, "little"),
        signature_s=int.from_bytes(s, "little"),
    )


def _extension_bytes(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None
    return getattr(ext, "value", None)


def _der_small_int(raw: bytes) -> int | None:
    """AMD encodes the SPL extensions as DER INTEGERs."""
    if len(raw) >= 3 and raw[0] == 0x02 and raw[1] == len(raw) - 2:
        return int.from_bytes(raw[2:], "big", signed=True)
    return None


def _check_vcek_matches(report: SnpReport, vcek: x509.Certificate) -> None:
    hwid = _extension_bytes(vcek, OID_HWID)
    if hwid is None:
        raise AppraisalFailure(Reason.BROKEN_CHAIN, "the VCEK has no hwID extension")
    if hwid[:2] == b"\x04\x40":  # tolerate an OCTET STRING wrapper
        hwid = hwid[2:]
    if not hmac.compare_digest(hwid, report.chip_id):
        raise AppraisalFailure(Reason.BROKEN_CHAIN, "the VCEK belongs to another chip")
    for name, oid in _TCB_OIDS.items():
        raw = _extension_bytes(vcek, oid)
        if raw is None:
            continue
        if _der_small_int(raw) != getattr(report.reported_tcb, name):
            raise AppraisalFailure(
                Reason.BROKEN_CHAIN, f"the VCEK was issued for another TCB ({name})"
            )


class SevSnpAppraiser:
    """Appraise SNP evidence: ``certificates`` = (ARK, ASK, VCEK), DER or PEM."""

    format = SEV_SNP
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
        report = parse_report(evidence.data)
        if len(evidence.certificates) != 3:
            raise AppraisalFailure(
                Reason.BROKEN_CHAIN, "SNP evidence needs the ARK, ASK and VCEK certificates"
            )
        names = ("ARK", "ASK", "VCEK")
        chain = [
            _x509.load_certificate(c, n) for c, n in zip(evidence.certificates, names, strict=True)
        ]
        _x509.verify_chain(chain, names, section.trust_anchors, now)
        vcek_key = chain[2].public_key()
        if (
            not isinstance(vcek_key, ec.EllipticCurvePublicKey)
            or vcek_key.curve.name != "secp384r1"
        ):
            raise AppraisalFailure(Reason.BROKEN_CHAIN, "the VCEK is not an ECDSA P-384 key")
        signature = encode_dss_signature(report.signature_r, report.signature_s)
        _x509.verify_ecdsa(
            vcek_key, signature, report.signed_body, hashes.SHA384(), "the report signature"
        )
        # Authenticated from here on.
        if report.version not in SUPPORTED_VERSIONS:
            raise AppraisalFailure(
                Reason.UNSUPPORTED_VERSION, f"SNP report version {report.version} is not supported"
            )
        if report.signature_algo != SIG_ALGO_ECDSA_P384_SHA384:
            raise AppraisalFailure(
                Reason.MALFORMED_EVIDENCE,
                f"signature algorithm {report.signature_algo} is not ECDSA P-384",
            )
        if report.signing_key != "vcek":
            raise AppraisalFailure(
                Reason.BROKEN_CHAIN, f"report signed by a {report.signing_key}, not a VCEK"
            )
        _check_vcek_matches(report, chain[2])
        return {
            "version": report.version,
            "guest_svn": report.guest_svn,
            "policy": report.policy,
            "debug": report.debug,
            "vmpl": report.vmpl,
            "measurement": report.measurement.hex(),
            "host_data": report.host_data.hex(),
            "id_key_digest": report.id_key_digest.hex(),
            "reported_tcb": report.reported_tcb.as_dict(),
            "chip_id": report.chip_id.hex(),
            "report_data": report.report_data,
        }

    def check_tcb(self, claims: Mapping[str, object], section: FormatPolicy) -> None:
        min_svn = section.options.get("min_guest_svn", 0)
        if int(claims["guest_svn"]) < min_svn:  # type: ignore[call-overload]
            raise AppraisalFailure(
                Reason.TCB_TOO_LOW, f"guest SVN {claims['guest_svn']} is below {min_svn}"
            )
        reported: dict = claims["reported_tcb"]  # type: ignore[assignment]
        for name, minimum in section.options.get("min_tcb", {}).items():
            if reported[name] < minimum:
                raise AppraisalFailure(
                    Reason.TCB_TOO_LOW, f"reported TCB {name} = {reported[name]} is below {minimum}"
                )
