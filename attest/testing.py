"""Fake TEE hardware for tests: SNP reports and TDX quotes in the real binary layouts.

Shipped with the package (as Tink ships its ``testing`` module) so the attest,
appliance and shim tests build evidence the same way. The keys and certificate
chains are generated here; nothing in this module is trusted by a real policy.
"""

from __future__ import annotations

import datetime
import hashlib
import struct
from collections.abc import Mapping

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from sealagg.attest import sevsnp, tdx
from sealagg.attest.evidence import SEV_SNP, TDX, Evidence

_DER = serialization.Encoding.DER
_PEM = serialization.Encoding.PEM
DEFAULT_TCB = sevsnp.TcbVersion(bootloader=3, tee=0, snp=8, microcode=115)
AMD_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


def spki_der(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        _DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    public_key: object,
    issuer: str,
    signing_key: object,
    *,
    ca: bool,
    hash_alg: hashes.HashAlgorithm,
    pss: padding.PSS | None = None,
    extensions: Mapping[x509.ObjectIdentifier, bytes] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    for oid, value in (extensions or {}).items():
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
    return builder.sign(signing_key, hash_alg, rsa_padding=pss)  # type: ignore[arg-type]


def _der_int(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


class SnpAuthority:
    """A test ARK -> ASK -> VCEK chain for one chip and TCB; ``pss`` mimics AMD (RSA-PSS)."""

    def __init__(
        self,
        *,
        pss: bool = True,
        chip_id: bytes = bytes(range(64)),
        tcb: sevsnp.TcbVersion = DEFAULT_TCB,
    ) -> None:
        self.chip_id = chip_id
        self.tcb = tcb
        if pss:
            ark_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            ask_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            sign = {"hash_alg": hashes.SHA384(), "pss": AMD_PSS}
        else:
            ark_key = ec.generate_private_key(ec.SECP384R1())  # type: ignore[assignment]
            ask_key = ec.generate_private_key(ec.SECP384R1())  # type: ignore[assignment]
            sign = {"hash_alg": hashes.SHA384(), "pss": None}
        self.vcek_key = ec.generate_private_key(ec.SECP384R1())
        self.ark = _cert("ARK-Test", ark_key.public_key(), "ARK-Test", ark_key, ca=True, **sign)
        self.ask = _cert("SEV-Test", ask_key.public_key(), "ARK-Test", ark_key, ca=True, **sign)
        ext = {sevsnp.OID_HWID: chip_id}
        for field, oid in sevsnp._TCB_OIDS.items():
            ext[oid] = _der_int(getattr(tcb, field))
        self.vcek = _cert(
            "SEV-VCEK", self.vcek_key.public_key(), "SEV-Test", ask_key, ca=False,
            extensions=ext, **sign,
        )  # fmt: skip
        self._ask_key = ask_key

    @property
    def ark_sha256(self) -> str:
        return hashlib.sha256(self.ark.public_bytes(_DER)).hexdigest()

    def certificates(self) -> tuple[bytes, bytes, bytes]:
        return tuple(c.public_bytes(_DER) for c in (self.ark, self.ask, self.vcek))  # type: ignore[return-value]

    def report(
        self,
        report_data: bytes,
        *,
        measurement: bytes,
        version: int = 2,
        debug: bool = False,
        guest_svn: int = 1,
        vmpl: int = 0,
        tcb: sevsnp.TcbVersion | None = None,
    ) -> bytes:
        """A signed ATTESTATION_REPORT (0x4A0 bytes) in the ABI layout."""
        tcb = tcb or self.tcb
        raw = bytearray(sevsnp.REPORT_BYTES)
        policy = 0x30000 | (1 << sevsnp.POLICY_DEBUG_BIT if debug else 0)  # SMT + reserved bit 17
        struct.pack_into("<IIQ", raw, 0x000, version, guest_svn, policy)
        struct.pack_into("<II", raw, 0x030, vmpl, sevsnp.SIG_ALGO_ECDSA_P384_SHA384)
        raw[0x038:0x040] = tcb.pack()
        struct.pack_into("<I", raw, 0x048, 0)  # KEY_INFO: signed by the VCEK
        raw[0x050:0x090] = report_data
        raw[0x090:0x0C0] = measurement
        raw[0x180:0x188] = tcb.pack()
        raw[0x1A0:0x1E0] = self.chip_id
        raw[0x1E0:0x1E8] = tcb.pack()  # COMMITTED_TCB
        raw[0x1F0:0x1F8] = tcb.pack()  # LAUNCH_TCB
        self.sign(raw)
        return bytes(raw)

    def sign(self, raw: bytearray) -> None:
        der = self.vcek_key.sign(bytes(raw[: sevsnp.SIGNED_BYTES]), ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der)
        off = sevsnp.SIGNATURE_OFFSET
        raw[off : off + 72] = r.to_bytes(72, "little")
        raw[off + 72 : off + 144] = s.to_bytes(72, "little")

    def attester(self, measurement: bytes, **kwargs: object) -> SnpTestAttester:
        return SnpTestAttester(self, measurement, kwargs)


class SnpTestAttester:
    """Stands in for the SNP firmware behind the :class:`attest.Attester` interface."""

    format = SEV_SNP
    insecure = False

    def __init__(self, authority: SnpAuthority, measurement: bytes, options: Mapping) -> None:
        self.authority, self.measurement, self.options = authority, measurement, dict(options)

    def evidence(self, report_data: bytes) -> Evidence:
        raw = self.authority.report(report_data, measurement=self.measurement, **self.options)
        return Evidence(SEV_SNP, raw, self.authority.certificates())


INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")


class TdxAuthority:
    """A test Intel root -> PCK CA -> PCK leaf chain plus a quoting enclave's attestation key."""

    def __init__(self) -> None:
        root_key = ec.generate_private_key(ec.SECP256R1())
        ca_key = ec.generate_private_key(ec.SECP256R1())
        self.pck_key = ec.generate_private_key(ec.SECP256R1())
        self.attestation_key = ec.generate_private_key(ec.SECP256R1())
        h = {"hash_alg": hashes.SHA256()}
        root_name, ca_name = "Test SGX Root CA", "Test PCK Platform CA"
        self.root = _cert(root_name, root_key.public_key(), root_name, root_key, ca=True, **h)
        self.ca = _cert(ca_name, ca_key.public_key(), root_name, root_key, ca=True, **h)
        pck_public = self.pck_key.public_key()
        self.pck = _cert("Test PCK Certificate", pck_public, ca_name, ca_key, ca=False, **h)
        self.qe_auth_data = bytes(range(32))

    @property
    def root_sha256(self) -> str:
        return hashlib.sha256(self.root.public_bytes(_DER)).hexdigest()

    def pem_chain(self) -> bytes:
        return b"".join(c.public_bytes(_PEM) for c in (self.pck, self.ca, self.root))

    def quote(
        self,
        report_data: bytes,
        *,
        mrtd: bytes,
        rtmrs: tuple[bytes, bytes, bytes, bytes] = (bytes(48),) * 4,
        debug: bool = False,
        version: int = 4,
        tee_tcb_svn: bytes = bytes([3, 0, 4] + [0] * 13),
        pem_chain: bytes | None = None,
    ) -> bytes:
        """A signed TDX quote v4 in the DCAP layout."""
        header = struct.pack("<HHI", version, tdx.ATT_KEY_ECDSA_P256, tdx.TEE_TYPE_TDX)
        header += bytes(4) + INTEL_QE_VENDOR_ID + bytes(20)
        body = bytearray(tdx.BODY_BYTES)
        fields = {
            "tee_tcb_svn": tee_tcb_svn,
            "mrseam": b"\x5e" * 48,
            "td_attributes": struct.pack("<Q", 1 if debug else 0),
            "xfam": struct.pack("<Q", 0xE7),
            "mrtd": mrtd,
            "rtmr0": rtmrs[0],
            "rtmr1": rtmrs[1],
            "rtmr2": rtmrs[2],
            "rtmr3": rtmrs[3],
            "report_data": report_data,
        }
        offsets = {name: (off, size) for name, off, size in tdx._BODY_FIELDS}
        for name, value in fields.items():
            off, size = offsets[name]
            assert len(value) == size, name
            body[off : off + size] = value
        signed = header + bytes(body)
        return signed + self.signature_data(signed, pem_chain=pem_chain)

    def signature_data(self, signed: bytes, *, pem_chain: bytes | None = None) -> bytes:
        att_xy = self.attestation_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )[1:]
        qe_report = bytearray(tdx.QE_REPORT_BYTES)
        qe_report[64:96] = b"\x91" * 32  # MRENCLAVE of the test QE
        qe_report[320:352] = hashlib.sha256(att_xy + self.qe_auth_data).digest()
        qe_sig = _raw(self.pck_key.sign(bytes(qe_report), ec.ECDSA(hashes.SHA256())))
        chain = self.pem_chain() if pem_chain is None else pem_chain
        inner = bytes(qe_report) + qe_sig
        inner += struct.pack("<H", len(self.qe_auth_data)) + self.qe_auth_data
        inner += struct.pack("<HI", tdx.CERT_PCK_CHAIN, len(chain)) + chain
        sig = _raw(self.attestation_key.sign(signed, ec.ECDSA(hashes.SHA256())))
        data = sig + att_xy + struct.pack("<HI", tdx.CERT_QE_REPORT, len(inner)) + inner
        return struct.pack("<I", len(data)) + data

    def attester(self, mrtd: bytes, **kwargs: object) -> TdxTestAttester:
        return TdxTestAttester(self, mrtd, kwargs)


class TdxTestAttester:
    format = TDX
    insecure = False

    def __init__(self, authority: TdxAuthority, mrtd: bytes, options: Mapping) -> None:
        self.authority, self.mrtd, self.options = authority, mrtd, dict(options)

    def evidence(self, report_data: bytes) -> Evidence:
        return Evidence(TDX, self.authority.quote(report_data, mrtd=self.mrtd, **self.options))


def _raw(der: bytes) -> bytes:
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")
