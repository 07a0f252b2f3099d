"""The AMD SEV-SNP ATTESTATION_REPORT binary layout and the TCB_VERSION layout of each CPU family.

Source: AMD, "SEV Secure Nested Paging Firmware ABI Specification", publication 56860,
table "ATTESTATION_REPORT Structure" (report versions 2, 3 and 5; rev. 1.55-1.58) and
table "TCB_VERSION Structure" (rev. 1.57 added the Turin layout). Nothing here is
authenticated: :func:`parse_report` only splits bytes; ``sevsnp.SevSnpAppraiser``
verifies the signature before any field is trusted.

Offsets (little-endian)::

    0x000 VERSION u32        0x004 GUEST_SVN u32      0x008 POLICY u64 (bit 19 = DEBUG)
    0x010 FAMILY_ID 16 B     0x020 IMAGE_ID 16 B      0x030 VMPL u32
    0x034 SIGNATURE_ALGO u32 (1 = ECDSA P-384 with SHA-384)
    0x038 CURRENT_TCB u64    0x040 PLATFORM_INFO u64
    0x048 KEY_INFO u32: bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_KEY, bits 2-4 SIGNING_KEY
          (0 = VCEK, 1 = VLEK, 7 = none)
    0x050 REPORT_DATA 64 B   0x090 MEASUREMENT 48 B   0x0C0 HOST_DATA 32 B
    0x0E0 ID_KEY_DIGEST 48 B 0x110 AUTHOR_KEY_DIGEST 48 B
    0x140 REPORT_ID 32 B     0x160 REPORT_ID_MA 32 B  0x180 REPORTED_TCB u64
    0x188 CPUID_FAM_ID u8    0x189 CPUID_MOD_ID u8    0x18A CPUID_STEP u8   (version >= 3)
    0x1A0 CHIP_ID 64 B       0x1E0 COMMITTED_TCB u64  0x1F0 LAUNCH_TCB u64
    0x2A0 SIGNATURE: R 72 B, S 72 B (little-endian, zero padded); signed: bytes 0x000-0x29F

TCB_VERSION (8 bytes), by product:

    Milan, Genoa: byte 0 BOOT_LOADER, 1 TEE, 2-5 reserved, 6 SNP, 7 MICROCODE
    Turin:        byte 0 FMC, 1 BOOT_LOADER, 2 TEE, 3 SNP, 4-6 reserved, 7 MICROCODE

The product comes from CPUID_FAM_ID / CPUID_MOD_ID (version 3 and later): family 19h
models 00h-0Fh Milan, 10h-1Fh Genoa (and A0h-AFh, Bergamo/Siena, which AMD's key
distribution service serves as Genoa), family 1Ah models 00h-1Fh Turin. A version 2
report names no product; it never comes from a Turin (whose firmware writes version 3
or later), so its TCB has the Milan/Genoa layout either way.
"""

from __future__ import annotations

import dataclasses
import struct

from sealagg.attest.errors import AppraisalFailure, Reason

REPORT_BYTES = 0x4A0
SIGNED_BYTES = 0x2A0
SIGNATURE_OFFSET = 0x2A0
SIGNATURE_COMPONENT_BYTES = 72
CHIP_ID_BYTES = 64
SUPPORTED_VERSIONS = frozenset({2, 3, 5})
SIG_ALGO_ECDSA_P384_SHA384 = 1
POLICY_DEBUG_BIT = 19

MILAN, GENOA, TURIN = "Milan", "Genoa", "Turin"
PRODUCTS = (MILAN, GENOA, TURIN)

#: KEY_INFO.SIGNING_KEY values.
VCEK, VLEK = "vcek", "vlek"
_SIGNING_KEYS = {0: VCEK, 1: VLEK, 7: "none"}

#: The TCB components of each layout, in the order AMD's KDS query lists them.
TCB_COMPONENTS = ("bootloader", "tee", "snp", "microcode")
TURIN_TCB_COMPONENTS = ("fmc", *TCB_COMPONENTS)


def product_from_cpuid(family: int, model: int) -> str | None:
    """Milan, Genoa or Turin from the report's CPUID family and model; None if unknown."""
    if family == 0x19 and model <= 0x0F:
        return MILAN
    if family == 0x19 and (0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF):
        return GENOA
    if family == 0x1A and model <= 0x1F:
        return TURIN
    return None


def tcb_components(product: str | None) -> tuple[str, ...]:
    """The components a TCB floor and a VCEK must name for ``product``."""
    return TURIN_TCB_COMPONENTS if product == TURIN else TCB_COMPONENTS


@dataclasses.dataclass(frozen=True)
class TcbVersion:
    """One TCB_VERSION. ``fmc`` is set exactly for Turin's layout (and None otherwise)."""

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    def __post_init__(self) -> None:
        for name, value in self.as_dict().items():
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
                raise ValueError(f"TCB component {name} must be an integer 0..255, got {value!r}")

    @classmethod
    def unpack(cls, raw: bytes, product: str | None = None) -> TcbVersion:
        """Decode 8 bytes in ``product``'s layout (Milan/Genoa unless ``product`` is Turin)."""
        if product == TURIN:
            return cls(raw[1], raw[2], raw[3], raw[7], fmc=raw[0])
        return cls(raw[0], raw[1], raw[6], raw[7])

    @classmethod
    def from_hex(cls, text: str, product: str | None = None) -> TcbVersion:
        """Parse the 16-hex-digit form of :attr:`hex` (the u64 as AMD's tools print it)."""
        if not isinstance(text, str) or len(text) != 16:
            raise ValueError("a TCB version is 16 hex digits (the TCB_VERSION u64)")
        value = int(text, 16)  # ValueError on non-hex
        return cls.unpack(value.to_bytes(8, "little"), product)

    @property
    def turin(self) -> bool:
        return self.fmc is not None

    def pack(self) -> bytes:
        if self.fmc is not None:
            return bytes([self.fmc, self.bootloader, self.tee, self.snp, 0, 0, 0, self.microcode])
        return bytes([self.bootloader, self.tee, 0, 0, 0, 0, self.snp, self.microcode])

    @property
    def hex(self) -> str:
        """The TCB_VERSION as a u64 in 16 hex digits: the name of its VCEK in the bundle."""
        return f"{int.from_bytes(self.pack(), 'little'):016x}"

    def as_dict(self) -> dict[str, int]:
        out = {
            "bootloader": self.bootloader,
            "tee": self.tee,
            "snp": self.snp,
            "microcode": self.microcode,
        }
        if self.fmc is not None:
            out["fmc"] = self.fmc
        return out


@dataclasses.dataclass(frozen=True)
class SnpReport:
    """The fields of one ATTESTATION_REPORT; see the module docstring for offsets."""

    raw: bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    platform_info: int
    key_info: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    cpuid_family: int | None
    cpuid_model: int | None
    cpuid_stepping: int | None
    product: str | None
    current_tcb: TcbVersion
    reported_tcb: TcbVersion
    committed_tcb: TcbVersion
    launch_tcb: TcbVersion
    chip_id: bytes
    signature_r: int
    signature_s: int

    @property
    def debug(self) -> bool:
        return bool(self.policy >> POLICY_DEBUG_BIT & 1)

    @property
    def signing_key(self) -> str:
        """``"vcek"``, ``"vlek"``, ``"none"`` (unsigned) or ``"reserved"``."""
        return _SIGNING_KEYS.get(self.key_info >> 2 & 0b111, "reserved")

    @property
    def mask_chip_key(self) -> bool:
        return bool(self.key_info >> 1 & 1)

    @property
    def signed_body(self) -> bytes:
        return self.raw[:SIGNED_BYTES]


def parse_report(raw: object) -> SnpReport:
    """Split a report into fields; only the length is checked here (nothing is authenticated)."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise AppraisalFailure(Reason.MALFORMED_EVIDENCE, "an SNP report is bytes")
    raw = bytes(raw)
    if len(raw) != REPORT_BYTES:
        raise AppraisalFailure(
            Reason.MALFORMED_EVIDENCE, f"an SNP report is {REPORT_BYTES} bytes, got {len(raw)}"
        )
    version, guest_svn, policy = struct.unpack_from("<IIQ", raw, 0x000)
    vmpl, sig_algo = struct.unpack_from("<II", raw, 0x030)
    (platform_info,) = struct.unpack_from("<Q", raw, 0x040)
    (key_info,) = struct.unpack_from("<I", raw, 0x048)
    family = model = stepping = None
    product = None
    if version >= 3:
        family, model, stepping = raw[0x188], raw[0x189], raw[0x18A]
        product = product_from_cpuid(family, model)
    r = raw[SIGNATURE_OFFSET : SIGNATURE_OFFSET + SIGNATURE_COMPONENT_BYTES]
    s = raw[SIGNATURE_OFFSET + SIGNATURE_COMPONENT_BYTES : SIGNATURE_OFFSET + 144]
    return SnpReport(
        raw=raw,
        version=version,
        guest_svn=guest_svn,
        policy=policy,
        family_id=raw[0x010:0x020],
        image_id=raw[0x020:0x030],
        vmpl=vmpl,
        signature_algo=sig_algo,
        platform_info=platform_info,
        key_info=key_info,
        report_data=raw[0x050:0x090],
        measurement=raw[0x090:0x0C0],
        host_data=raw[0x0C0:0x0E0],
        id_key_digest=raw[0x0E0:0x110],
        author_key_digest=raw[0x110:0x140],
        report_id=raw[0x140:0x160],
        cpuid_family=family,
        cpuid_model=model,
        cpuid_stepping=stepping,
        product=product,
        current_tcb=TcbVersion.unpack(raw[0x038:0x040], product),
        reported_tcb=TcbVersion.unpack(raw[0x180:0x188], product),
        committed_tcb=TcbVersion.unpack(raw[0x1E0:0x1E8], product),
        launch_tcb=TcbVersion.unpack(raw[0x1F0:0x1F8], product),
        chip_id=raw[0x1A0:0x1E0],
        signature_r=int.from_bytes(r, "little"),
        signature_s=int.from_bytes(s, "little"),
    )
