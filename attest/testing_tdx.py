"""Fake Intel TDX hardware for tests: quotes v4 in the real layout, a PCK chain to a test root."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sealagg.attest import tdx
from sealagg.attest.evidence import TDX, Evidence
from sealagg.attest.testing_common import (
    _DER,
    _PEM,
    _cert,
    _raw,
)

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
