"""What Intel writes into a TDX quote's certification data: the PCK certificate's SGX
extension and the quoting enclave's SGX report body.

PCK certificate (Intel, "SGX PCK Certificate and Certificate Revocation List Profile
Specification", section "Intel SGX PCK Certificate"): a non-critical extension with
OID 1.2.840.113741.1.13.1 whose value is a DER SEQUENCE of (OID, value) pairs::

    .1  PPID         OCTET STRING (16)
    .2  TCB          SEQUENCE of (OID, value): .2.1 ... .2.16 SGX TCB component SVNs
                     (INTEGER 0..255), .2.17 PCESVN (INTEGER 0..65535), .2.18 CPUSVN (OCTET
                     STRING 16)
    .3  PCE-ID       OCTET STRING (2)
    .4  FMSPC        OCTET STRING (6)
    .5  SGX Type     ENUMERATED
    .6  PlatformInstanceID, .7 Configuration   (Platform CA certificates only; not read)

The FMSPC names the TCB info document that applies; the TCB components are what Intel's
TCB levels are matched against (this, not the CPUSVN bytes, is what QVL compares).

SGX report body (384 bytes, little-endian)::

    0 CPUSVN 16 | 16 MISCSELECT 4 | 48 ATTRIBUTES 16 (flags u64: bit 1 = DEBUG, then XFRM)
    64 MRENCLAVE 32 | 128 MRSIGNER 32 | 256 ISVPRODID u16 | 258 ISVSVN u16 | 320 REPORTDATA 64

The DER reader here is deliberately tiny: definite lengths only, single-byte tags, every
byte accounted for. The PCK certificate is authenticated before it is read, but a parser
that trusts its input is a parser an Intel mistake (or our own test fakes) can crash.
"""

from __future__ import annotations

import dataclasses
import struct

from cryptography import x509

from sealagg.attest.errors import AppraisalFailure, Reason

SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
QE_REPORT_BYTES = 384
SGX_TCB_COMPONENTS = 16
_MAX_EXTENSION_BYTES = 4096

_SEQUENCE, _INTEGER, _OCTETS, _OID, _ENUMERATED = 0x30, 0x02, 0x04, 0x06, 0x0A


@dataclasses.dataclass(frozen=True)
class PckTcb:
    """The platform identity and TCB an Intel PCK certificate vouches for."""

    fmspc: bytes
    pceid: bytes
    sgx_components: tuple[int, ...]
    pcesvn: int
    cpusvn: bytes
    sgx_type: int


@dataclasses.dataclass(frozen=True)
class QeReport:
    """The fields of the quoting enclave's SGX report that its identity is judged on."""

    cpusvn: bytes
    miscselect: bytes
    attributes: bytes
    mrenclave: bytes
    mrsigner: bytes
    isvprodid: int
    isvsvn: int
    report_data: bytes

    @property
    def debug(self) -> bool:
        return bool(self.attributes[0] & 0x02)


def parse_qe_report(raw: bytes) -> QeReport:
    """Split a 384-byte SGX report body; refuse any other length."""
    raw = bytes(raw)
    if len(raw) != QE_REPORT_BYTES:
        raise AppraisalFailure(Reason.MALFORMED_EVIDENCE, "the QE report is not 384 bytes")
    isvprodid, isvsvn = struct.unpack_from("<HH", raw, 256)
    return QeReport(
        cpusvn=raw[0:16],
        miscselect=raw[16:20],
        attributes=raw[48:64],
        mrenclave=raw[64:96],
        mrsigner=raw[128:160],
        isvprodid=isvprodid,
        isvsvn=isvsvn,
        report_data=raw[320:384],
    )


def pck_tcb(cert: x509.Certificate) -> PckTcb:
    """The SGX extension of a PCK certificate; BROKEN_CHAIN if it has none or it is malformed."""
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSION_OID))
    except x509.ExtensionNotFound:
        raise AppraisalFailure(
            Reason.BROKEN_CHAIN, "the PCK certificate has no Intel SGX extension"
        ) from None
    except ValueError as exc:  # a duplicated or unparseable extension
        raise AppraisalFailure(
            Reason.BROKEN_CHAIN, f"the PCK certificate's extensions are malformed: {exc}"
        ) from None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise AppraisalFailure(Reason.BROKEN_CHAIN, "the PCK SGX extension is not raw DER")
    return parse_sgx_extensions(value.value)


def parse_sgx_extensions(der: bytes) -> PckTcb:
    """Decode the DER value of extension 1.2.840.113741.1.13.1 (see the module docstring)."""
    der = bytes(der)
    if len(der) > _MAX_EXTENSION_BYTES:
        raise _bad("is too large")
    pairs = _pairs(_only(der, _SEQUENCE, "the SGX extension"), SGX_EXTENSION_OID)
    for arc in ("1", "2", "3", "4", "5"):
        if arc not in pairs:
            raise _bad(f"lacks {SGX_EXTENSION_OID}.{arc}")
    _octets(pairs["1"], 16, "PPID")
    tcb = _pairs(_expect(pairs["2"], _SEQUENCE, "TCB"), f"{SGX_EXTENSION_OID}.2")
    components = []
    for i in range(1, SGX_TCB_COMPONENTS + 1):
        if str(i) not in tcb:
            raise _bad(f"lacks SGX TCB component {i}")
        components.append(_integer(tcb[str(i)], 255, f"SGX TCB component {i}"))
    for arc in ("17", "18"):
        if arc not in tcb:
            raise _bad(f"lacks TCB item .2.{arc}")
    tag, body = pairs["5"]
    if tag != _ENUMERATED or not 1 <= len(body) <= 2:
        raise _bad("SGX type is not a small ENUMERATED")
    return PckTcb(
        fmspc=_octets(pairs["4"], 6, "FMSPC"),
        pceid=_octets(pairs["3"], 2, "PCE-ID"),
        sgx_components=tuple(components),
        pcesvn=_integer(tcb["17"], 0xFFFF, "PCESVN"),
        cpusvn=_octets(tcb["18"], 16, "CPUSVN"),
        sgx_type=int.from_bytes(body, "big"),
    )


def _bad(what: str) -> AppraisalFailure:
    return AppraisalFailure(Reason.BROKEN_CHAIN, f"the PCK certificate's SGX extension {what}")


def _tlvs(data: bytes) -> list[tuple[int, bytes]]:
    """Every TLV in ``data``, which must be consumed exactly."""
    out, pos = [], 0
    while pos < len(data):
        if len(data) - pos < 2:
            raise _bad("is truncated")
        tag, first = data[pos], data[pos + 1]
        if tag & 0x1F == 0x1F:
            raise _bad("uses a multi-byte tag")
        pos += 2
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            if not 1 <= count <= 3 or pos + count > len(data):
                raise _bad("has an unsupported length")
            length = int.from_bytes(data[pos : pos + count], "big")
            pos += count
        if pos + length > len(data):
            raise _bad("is truncated")
        out.append((tag, data[pos : pos + length]))
        pos += length
    return out


def _only(data: bytes, tag: int, what: str) -> bytes:
    items = _tlvs(data)
    if len(items) != 1:
        raise _bad(f"is not one {what}")
    return _expect(items[0], tag, what)


def _expect(item: tuple[int, bytes], tag: int, what: str) -> bytes:
    if item[0] != tag:
        raise _bad(f"has a wrong type for {what}")
    return item[1]


def _pairs(sequence_body: bytes, prefix: str) -> dict[str, tuple[int, bytes]]:
    """A SEQUENCE of SEQUENCE {OID prefix.N, value} as {"N": (tag, body)}; duplicates refused."""
    out: dict[str, tuple[int, bytes]] = {}
    for item in _tlvs(sequence_body):
        inner = _tlvs(_expect(item, _SEQUENCE, "an (OID, value) pair"))
        if len(inner) != 2:
            raise _bad("has an (OID, value) pair of the wrong size")
        oid = _oid(_expect(inner[0], _OID, "an OID"))
        if not oid.startswith(prefix + ".") or "." in oid[len(prefix) + 1 :]:
            raise _bad(f"has an unexpected OID {oid}")
        arc = oid[len(prefix) + 1 :]
        if arc in out:
            raise _bad(f"repeats {oid}")
        out[arc] = inner[1]
    return out


def _oid(body: bytes) -> str:
    if not body or body[-1] & 0x80 or len(body) > 32:
        raise _bad("has a malformed OID")
    arcs, value = [], 0
    for byte in body:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def _integer(item: tuple[int, bytes], maximum: int, what: str) -> int:
    body = _expect(item, _INTEGER, what)
    if not 1 <= len(body) <= 3 or body[0] & 0x80:
        raise _bad(f"has a malformed or negative {what}")
    value = int.from_bytes(body, "big")
    if value > maximum:
        raise _bad(f"has {what} = {value} out of range")
    return value


def _octets(item: tuple[int, bytes], size: int, what: str) -> bytes:
    body = _expect(item, _OCTETS, what)
    if len(body) != size:
        raise _bad(f"has a {what} of {len(body)} bytes, not {size}")
    return body
