"""Intel's signed collateral documents: TCB info v3 and QE identity v2, verified and parsed.

Intel signs each as ``{"tcbInfo": {...}, "signature": "<hex r||s>"}`` (``"enclaveIdentity"``
for the QE identity): ECDSA P-256 / SHA-256 over the exact bytes of the inner JSON value as
they appear in the body, by the "Intel SGX TCB Signing" certificate that the Intel SGX Root
CA issues. So the inner object's span is cut out of the body (never re-serialized), the
signer's chain must end in a root the policy pins, and ``issueDate <= now < nextUpdate``
(an old document may hide a newer revocation or TCB recovery). Every defect is
``Reason.COLLATERAL_INVALID``; nothing else escapes. :mod:`tdx_tcb` applies the documents
to a quote, :mod:`tdx_collateral` runs the whole appraisal.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
from collections.abc import Mapping, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

from sealagg.attest import _x509
from sealagg.attest.errors import AppraisalFailure, Reason

TCB_SIGNING_CN = "Intel SGX TCB Signing"
#: Statuses of QE identity and TDX module identity levels.
ENCLAVE_STATUSES = ("UpToDate", "OutOfDate", "Revoked")

MAX_DOCUMENT_BYTES = 1024 * 1024
_MAX_LIST = 1024
_HEX = re.compile(r"[0-9A-Fa-f]*")
_WHITESPACE = " \t\n\r"


@dataclasses.dataclass(frozen=True)
class TcbLevel:
    """One platform TCB level of TCB info v3: the floor and what Intel says of it."""

    sgx_components: tuple[int, ...]
    pcesvn: int
    tdx_components: tuple[int, ...]
    tcb_date: str
    status: str
    advisory_ids: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class EnclaveLevel:
    """One ISVSVN level of a QE identity or a TDX module identity."""

    isvsvn: int
    tcb_date: str
    status: str
    advisory_ids: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ModuleIdentity:
    """Who signs the TDX module (MRSIGNERSEAM) and its SEAM attributes under a mask."""

    id: str
    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes
    tcb_levels: tuple[EnclaveLevel, ...]


@dataclasses.dataclass(frozen=True)
class TcbInfo:
    """A verified TCB info v3 document for TDX (signature, chain and dates checked)."""

    issue_date: float
    next_update: float
    fmspc: bytes
    pce_id: bytes
    tcb_evaluation_data_number: int
    tdx_module: ModuleIdentity
    module_identities: tuple[ModuleIdentity, ...]
    tcb_levels: tuple[TcbLevel, ...]
    signer: x509.Certificate = dataclasses.field(compare=False, repr=False)
    root: x509.Certificate = dataclasses.field(compare=False, repr=False)


@dataclasses.dataclass(frozen=True)
class QeIdentity:
    """A verified QE identity v2 document for the TD quoting enclave."""

    issue_date: float
    next_update: float
    tcb_evaluation_data_number: int
    miscselect: bytes
    miscselect_mask: bytes
    attributes: bytes
    attributes_mask: bytes
    mrsigner: bytes
    isvprodid: int
    tcb_levels: tuple[EnclaveLevel, ...]
    signer: x509.Certificate = dataclasses.field(compare=False, repr=False)
    root: x509.Certificate = dataclasses.field(compare=False, repr=False)


# ------------------------------------------------------------------------ signed documents


def load_tcb_info(
    body: bytes, issuer_chain_pem: bytes, anchors: Sequence[bytes], now: float
) -> TcbInfo:
    """A TCB info v3 ``{"tcbInfo": ..., "signature": ...}`` body, verified and in date."""
    what = "the TCB info"
    signer, root = _signing_chain(issuer_chain_pem, anchors, now, what)
    doc = _signed_document(body, "tcbInfo", signer, what)
    if doc.get("id") != "TDX" or doc.get("version") != 3:
        raise collateral_invalid(f"{what} is not TCB info version 3 for TDX")
    if _int(doc, "tcbType", what, 0xFF) != 0:
        raise collateral_invalid(f"{what} has an unknown tcbType")
    issue, next_update = _dates(doc, what, now)
    module = _module(_dict(doc, "tdxModule", what), "tdxModule", what, levels=False)
    identities = tuple(
        _module(_as_dict(item, what), _str(_as_dict(item, what), "id", what), what, levels=True)
        for item in _list(doc, "tdxModuleIdentities", what, required=False)
    )
    levels = tuple(_tcb_level(_as_dict(item, what), what) for item in _list(doc, "tcbLevels", what))
    if not levels:
        raise collateral_invalid(f"{what} lists no TCB level")
    return TcbInfo(
        issue_date=issue,
        next_update=next_update,
        fmspc=_hex_bytes(doc, "fmspc", 6, what),
        pce_id=_hex_bytes(doc, "pceId", 2, what),
        tcb_evaluation_data_number=_int(doc, "tcbEvaluationDataNumber", what, 2**32 - 1),
        tdx_module=module,
        module_identities=identities,
        tcb_levels=levels,
        signer=signer,
        root=root,
    )


def load_qe_identity(
    body: bytes, issuer_chain_pem: bytes, anchors: Sequence[bytes], now: float
) -> QeIdentity:
    """A QE identity v2 ``{"enclaveIdentity": ..., "signature": ...}`` body for the TD QE."""
    what = "the QE identity"
    signer, root = _signing_chain(issuer_chain_pem, anchors, now, what)
    doc = _signed_document(body, "enclaveIdentity", signer, what)
    if doc.get("id") != "TD_QE" or doc.get("version") != 2:
        raise collateral_invalid(f"{what} is not enclave identity version 2 of the TD_QE")
    issue, next_update = _dates(doc, what, now)
    levels = tuple(
        _enclave_level(_as_dict(item, what), what) for item in _list(doc, "tcbLevels", what)
    )
    if not levels:
        raise collateral_invalid(f"{what} lists no TCB level")
    return QeIdentity(
        issue_date=issue,
        next_update=next_update,
        tcb_evaluation_data_number=_int(doc, "tcbEvaluationDataNumber", what, 2**32 - 1),
        miscselect=_hex_bytes(doc, "miscselect", 4, what),
        miscselect_mask=_hex_bytes(doc, "miscselectMask", 4, what),
        attributes=_hex_bytes(doc, "attributes", 16, what),
        attributes_mask=_hex_bytes(doc, "attributesMask", 16, what),
        mrsigner=_hex_bytes(doc, "mrsigner", 32, what),
        isvprodid=_int(doc, "isvprodid", what, 0xFFFF),
        tcb_levels=levels,
        signer=signer,
        root=root,
    )


def _signing_chain(
    pem: bytes, anchors: Sequence[bytes], now: float, what: str
) -> tuple[x509.Certificate, x509.Certificate]:
    """(signer, root): Intel's TCB Signing certificate, issued by a root the policy pins."""
    try:
        certs = _x509.load_pem_chain(bytes(pem), f"the signing chain of {what}")
        if len(certs) != 2:
            raise collateral_invalid(f"the signing chain of {what} must be (TCB Signing, Root CA)")
        signer, root = certs
        names = (f"the root of {what}", f"the signer of {what}")
        _x509.verify_chain([root, signer], names, anchors, now)
        key = signer.public_key()
    except AppraisalFailure as failure:
        raise collateral_invalid(f"{failure.detail} (untrusted collateral)") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise collateral_invalid(f"the signing chain of {what} is malformed: {exc}") from None
    if common_name(signer) != TCB_SIGNING_CN:
        raise collateral_invalid(f"{what} is not signed by Intel's TCB Signing certificate")
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise collateral_invalid(f"the signer of {what} has no P-256 key")
    return signer, root


def _signed_document(
    body: bytes, key: str, signer: x509.Certificate, what: str
) -> dict[str, object]:
    """The inner object of ``{key: {...}, "signature": hex}`` after its signature verified."""
    inner, doc, signature = _split_signed_json(body, key, what)
    public = signer.public_key()
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    try:
        public.verify(der, inner, ec.ECDSA(hashes.SHA256()))  # type: ignore[union-attr,call-arg]
    except InvalidSignature:
        raise collateral_invalid(f"the signature of {what} does not verify") from None
    return doc


def _split_signed_json(body: bytes, key: str, what: str) -> tuple[bytes, dict, bytes]:
    """Scan the top-level object and cut out the exact text of ``key``'s value."""
    if not isinstance(body, bytes | bytearray) or len(body) > MAX_DOCUMENT_BYTES:
        raise collateral_invalid(f"{what} is not a document of acceptable size")
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError:
        raise collateral_invalid(f"{what} is not UTF-8") from None
    decoder = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    members: dict[str, tuple[object, str]] = {}
    try:
        pos = _skip(text, 0)
        if text[pos : pos + 1] != "{":
            raise ValueError("not an object")
        pos = _skip(text, pos + 1)
        while True:
            if text[pos : pos + 1] != '"':
                raise ValueError("expected a member name")
            name, pos = json.decoder.scanstring(text, pos + 1)  # type: ignore[attr-defined]
            pos = _skip(text, pos)
            if text[pos : pos + 1] != ":":
                raise ValueError("expected ':'")
            start = _skip(text, pos + 1)
            value, end = decoder.raw_decode(text, start)
            if name in members:
                raise ValueError(f"duplicate member {name!r}")
            members[name] = (value, text[start:end])
            pos = _skip(text, end)
            if text[pos : pos + 1] == ",":
                pos = _skip(text, pos + 1)
                continue
            if text[pos : pos + 1] != "}":
                raise ValueError("expected ',' or '}'")
            break
        if _skip(text, pos + 1) != len(text):
            raise ValueError("trailing data")
    except (ValueError, RecursionError) as exc:
        raise collateral_invalid(f"{what} is not valid JSON: {exc}") from None
    if set(members) != {key, "signature"}:
        raise collateral_invalid(f"{what} must hold exactly {key!r} and 'signature'")
    doc, raw = members[key]
    signature = members["signature"][0]
    if not isinstance(doc, dict):
        raise collateral_invalid(f"{what}: {key!r} is not an object")
    if not isinstance(signature, str) or len(signature) != 128 or not _HEX.fullmatch(signature):
        raise collateral_invalid(f"{what}: the signature is not 64 bytes of hex")
    return raw.encode("utf-8"), doc, bytes.fromhex(signature)


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WHITESPACE:
        pos += 1
    return pos


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate member names")
    return out


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


# ------------------------------------------------------------------------- field readers


def collateral_invalid(detail: str) -> AppraisalFailure:
    """The refusal for any defect of Intel's collateral (shared by tdx_crl, tdx_collateral)."""
    return AppraisalFailure(Reason.COLLATERAL_INVALID, detail)


def utc(now: float) -> datetime.datetime:
    """``now`` (seconds since the epoch) as an aware UTC datetime, as CRL dates are."""
    return datetime.datetime.fromtimestamp(now, tz=datetime.UTC)


def common_name(cert: x509.Certificate) -> str:
    """The subject's one CN, or "" (QVL picks the PCK CRL and the TCB signer by it)."""
    try:
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        return ""
    return str(names[0].value) if len(names) == 1 else ""


def _dates(doc: Mapping[str, object], what: str, now: float) -> tuple[float, float]:
    """issueDate <= now < nextUpdate: an old document may hide a newer revocation."""
    issue, upcoming = _date(doc, "issueDate", what), _date(doc, "nextUpdate", what)
    if now >= upcoming:
        raise collateral_invalid(f"{what} is stale (nextUpdate has passed); fetch a fresh bundle")
    if now < issue:
        raise collateral_invalid(f"{what} is not yet valid (issueDate is in the future)")
    return issue, upcoming


def _date(doc: Mapping[str, object], name: str, what: str) -> float:
    text = _str(doc, name, what)
    try:
        when = datetime.datetime.fromisoformat(text)
        if when.tzinfo is None:
            raise ValueError("no time zone")
        return when.timestamp()
    except (ValueError, OverflowError):
        raise collateral_invalid(f"{what}: {name} is not an ISO 8601 UTC time") from None


def _get(doc: Mapping[str, object], name: str, what: str) -> object:
    if name not in doc:
        raise collateral_invalid(f"{what} has no {name!r}")
    return doc[name]


def _int(doc: Mapping[str, object], name: str, what: str, maximum: int) -> int:
    value = _get(doc, name, what)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise collateral_invalid(f"{what}: {name} is not an integer 0..{maximum}")
    return value


def _str(doc: Mapping[str, object], name: str, what: str) -> str:
    value = _get(doc, name, what)
    if not isinstance(value, str) or len(value) > 256:
        raise collateral_invalid(f"{what}: {name} is not a short string")
    return value


def _hex_bytes(doc: Mapping[str, object], name: str, size: int, what: str) -> bytes:
    value = _str(doc, name, what)
    if len(value) != 2 * size or not _HEX.fullmatch(value):
        raise collateral_invalid(f"{what}: {name} is not {size} bytes of hex")
    return bytes.fromhex(value)


def _dict(doc: Mapping[str, object], name: str, what: str) -> dict[str, object]:
    return _as_dict(_get(doc, name, what), what)


def _as_dict(value: object, what: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise collateral_invalid(f"{what} has an item that is not an object")
    return value


def _list(doc: Mapping[str, object], name: str, what: str, *, required: bool = True) -> list:
    if not required and name not in doc:
        return []
    value = _get(doc, name, what)
    if not isinstance(value, list) or len(value) > _MAX_LIST:
        raise collateral_invalid(f"{what}: {name} is not a list")
    return value


def _advisories(level: Mapping[str, object], what: str) -> tuple[str, ...]:
    items = _list(level, "advisoryIDs", what, required=False)
    if not all(isinstance(a, str) and len(a) <= 64 for a in items):
        raise collateral_invalid(f"{what}: advisoryIDs are not short strings")
    return tuple(items)


def _svns(tcb: Mapping[str, object], name: str, what: str) -> tuple[int, ...]:
    items = _list(tcb, name, what)
    if len(items) != 16:
        raise collateral_invalid(f"{what}: {name} must list 16 components")
    return tuple(_int(_as_dict(c, what), "svn", what, 0xFF) for c in items)


def _tcb_level(level: Mapping[str, object], what: str) -> TcbLevel:
    tcb = _dict(level, "tcb", what)
    status = _str(level, "tcbStatus", what)
    return TcbLevel(
        sgx_components=_svns(tcb, "sgxtcbcomponents", what),
        pcesvn=_int(tcb, "pcesvn", what, 0xFFFF),
        tdx_components=_svns(tcb, "tdxtcbcomponents", what),
        tcb_date=_str(level, "tcbDate", what),
        status=status,  # an unknown status is kept, and so can never be accepted
        advisory_ids=_advisories(level, what),
    )


def _enclave_level(level: Mapping[str, object], what: str) -> EnclaveLevel:
    status = _str(level, "tcbStatus", what)
    if status not in ENCLAVE_STATUSES:
        raise collateral_invalid(f"{what}: unknown enclave TCB status {status!r}")
    return EnclaveLevel(
        isvsvn=_int(_dict(level, "tcb", what), "isvsvn", what, 0xFFFF),
        tcb_date=_str(level, "tcbDate", what),
        status=status,
        advisory_ids=_advisories(level, what),
    )


def _module(doc: Mapping[str, object], ident: str, what: str, *, levels: bool) -> ModuleIdentity:
    return ModuleIdentity(
        id=ident,
        mrsigner=_hex_bytes(doc, "mrsigner", 48, what),
        attributes=_hex_bytes(doc, "attributes", 8, what),
        attributes_mask=_hex_bytes(doc, "attributesMask", 8, what),
        tcb_levels=tuple(
            _enclave_level(_as_dict(item, what), what) for item in _list(doc, "tcbLevels", what)
        )
        if levels
        else (),
    )
