"""Fake AMD SEV-SNP hardware for tests: reports in the real layout, an ARK/ASK/VCEK chain."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from sealagg.attest import sevsnp
from sealagg.attest.evidence import SEV_SNP, Evidence
from sealagg.attest.testing_common import (
    _DER,
    AMD_PSS,
    DEFAULT_TCB,
    _cert,
    _der_int,
)


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
