"""Evidence sources on the appliance side (RFC 9334 attesters), behind one interface.

``Attester.evidence(report_data)`` returns :class:`Evidence` whose report-data
field is exactly ``report_data`` (SHA-512(nonce || SPKI), see binding.py).

:class:`ConfigfsTsmAttester` uses the Linux configfs-tsm report interface
(``/sys/kernel/config/tsm/report``, Linux >= 6.7; documented in the kernel's
Documentation/ABI/testing/configfs-tsm), which works in both SEV-SNP and TDX
guests. It is untested here beyond "absent on this machine" (no TEE hardware).
"""

from __future__ import annotations

import os
import secrets
import struct
import uuid
from pathlib import Path
from typing import Protocol

from sealagg.attest.binding import REPORT_DATA_BYTES
from sealagg.attest.errors import AttesterUnavailableError
from sealagg.attest.evidence import SEV_SNP, TDX, Evidence

TSM_ROOT = Path("/sys/kernel/config/tsm/report")
_TSM_PROVIDERS = {"sev_guest": SEV_SNP, "tdx_guest": TDX}

#: GUIDs of the SNP extended-report certificate table (GHCB spec, "SNP Extended Guest Request").
_SNP_CERT_GUIDS = {
    uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae"): 0,  # ARK
    uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"): 1,  # ASK
    uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd"): 2,  # VCEK
    uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1"): 3,  # VLEK (cloud-provisioned)
}


class Attester(Protocol):
    format: str
    insecure: bool

    def evidence(self, report_data: bytes) -> Evidence: ...


class ConfigfsTsmAttester:
    """Hardware evidence through configfs-tsm; ``expect`` pins the provider ("sev-snp"/"tdx")."""

    insecure = False

    def __init__(self, expect: str | None = None, *, root: Path = TSM_ROOT) -> None:
        if not root.is_dir():
            raise AttesterUnavailableError(
                f"{root} does not exist: not a TEE guest, or configfs-tsm is not mounted"
            )
        self.root = root
        self.expect = expect
        self.format = expect or ""

    def evidence(self, report_data: bytes) -> Evidence:
        if len(report_data) != REPORT_DATA_BYTES:
            raise ValueError("report data is 64 bytes")
        entry = self.root / f"sealagg-{secrets.token_hex(8)}"
        entry.mkdir()
        try:
            (entry / "inblob").write_bytes(report_data)
            provider = (entry / "provider").read_text().strip()
            fmt = _TSM_PROVIDERS.get(provider)
            if fmt is None or (self.expect and fmt != self.expect):
                raise AttesterUnavailableError(
                    f"configfs-tsm provider {provider!r} is not {self.expect}"
                )
            data = (entry / "outblob").read_bytes()
            certs: tuple[bytes, ...] = ()
            aux = entry / "auxblob"
            if fmt == SEV_SNP and aux.exists():
                certs = snp_certificates_from_table(aux.read_bytes())
            return Evidence(fmt, data, certs)
        finally:
            os.rmdir(entry)


def snp_certificates_from_table(table: bytes) -> tuple[bytes, ...]:
    """ARK, ASK, VCEK, VLEK DER (those present, in that order) from the GHCB certificate table
    (GUID, u32 offset, u32 length)*. The appraiser takes any subset and fills the rest from the
    collateral bundle: a certificate's origin adds no trust, its chain to the pinned ARK does."""
    found: dict[int, bytes] = {}
    for pos in range(0, len(table) - 24 + 1, 24):
        guid = uuid.UUID(bytes_le=table[pos : pos + 16])
        offset, length = struct.unpack_from("<II", table, pos + 16)
        if guid.int == 0:
            break
        if guid in _SNP_CERT_GUIDS:
            found[_SNP_CERT_GUIDS[guid]] = table[offset : offset + length]
    return tuple(found[i] for i in sorted(found) if found[i])
