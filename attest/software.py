"""The software attester: Ed25519-signed evidence for development and tests. INSECURE.

It proves only that someone holding the Ed25519 key made the evidence; nothing
about hardware, memory encryption or the code running. Every result from it is
marked insecure and the appliance and the shim print a loud warning.

Layout (232 bytes, integers little-endian)::

    0 magic "SAGSWEV1" | 8 version u32 (1) | 12 flags u32 (bit 0 = debug) | 16 svn u32
    20 reserved u32 | 24 measurement 48 B | 72 report data 64 B | 136 signer key 32 B
    168 Ed25519 signature over bytes 0..167
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Mapping

from sealagg.attest.collateral import CollateralBundle
from sealagg.attest.errors import AppraisalFailure, Reason
from sealagg.attest.evidence import SOFTWARE, Evidence
from sealagg.attest.policy import FormatPolicy
from sealagg.crypto import IdentityKey, verify_signature
from sealagg.crypto.errors import BadSignatureError, MalformedMessageError

MAGIC = b"SAGSWEV1"
VERSION = 1
SIGNED_BYTES = 168
EVIDENCE_BYTES = SIGNED_BYTES + 64
MEASUREMENT_BYTES = 48


class SoftwareAttester:
    """Makes software evidence with an Ed25519 key (kept in the federation folder)."""

    format = SOFTWARE
    insecure = True

    def __init__(self, key: IdentityKey, measurement: bytes, *, svn: int = 0, debug: bool = False):
        if len(measurement) != MEASUREMENT_BYTES:
            raise ValueError(f"a measurement is {MEASUREMENT_BYTES} bytes")
        self._key = key
        self.measurement = measurement
        self.svn = svn
        self.debug = debug

    @property
    def verify_key(self) -> bytes:
        return self._key.verify_key_bytes

    def evidence(self, report_data: bytes) -> Evidence:
        if len(report_data) != 64:
            raise ValueError("report data is 64 bytes")
        body = MAGIC + struct.pack("<IIII", VERSION, int(self.debug), self.svn, 0)
        body += self.measurement + report_data + self._key.verify_key_bytes
        return Evidence(SOFTWARE, body + self._key.sign(body))


class SoftwareAppraiser:
    format = SOFTWARE
    insecure = True

    def appraise(
        self,
        evidence: Evidence,
        section: FormatPolicy,
        now: float,
        *,
        binding: bytes,
        collateral: CollateralBundle,
    ) -> dict[str, object]:
        raw = bytes(evidence.data)
        if len(raw) != EVIDENCE_BYTES or raw[:8] != MAGIC:
            raise AppraisalFailure(Reason.MALFORMED_EVIDENCE, "not software evidence")
        signer = raw[136:168]
        if not any(hmac.compare_digest(signer, k) for k in section.trust_anchors):
            raise AppraisalFailure(Reason.UNTRUSTED_ROOT, "evidence signed by an unknown key")
        try:
            verify_signature(
                signer, raw[:SIGNED_BYTES], raw[SIGNED_BYTES:], signer="software evidence"
            )
        except (BadSignatureError, MalformedMessageError):
            raise AppraisalFailure(
                Reason.BAD_SIGNATURE, "the evidence signature does not verify"
            ) from None
        version, flags, svn, _ = struct.unpack_from("<IIII", raw, 8)
        if version != VERSION:
            raise AppraisalFailure(
                Reason.UNSUPPORTED_VERSION, f"software evidence version {version}"
            )
        return {
            "version": version,
            "debug": bool(flags & 1),
            "svn": svn,
            "measurement": raw[24:72].hex(),
            "report_data": raw[72:136],
        }

    def check_tcb(self, claims: Mapping[str, object], section: FormatPolicy) -> None:
        minimum = section.options.get("min_svn", 0)
        if int(claims["svn"]) < minimum:  # type: ignore[call-overload]
            raise AppraisalFailure(Reason.TCB_TOO_LOW, f"svn {claims['svn']} is below {minimum}")
