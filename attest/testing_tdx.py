"""Fake Intel for tests: TDX quotes v4 in the real layout and Intel-shaped collateral.

The signing hierarchy mirrors Intel's: a Root CA issues the PCK Platform and Processor
CAs (which issue PCK certificates carrying the SGX extension 1.2.840.113741.1.13.1 with
FMSPC, PCE-ID and the TCB components) and the TCB Signing certificate (which signs TCB
info v3 and QE identity v2). Certificate common names follow Intel's, because QVL - and
:mod:`sealagg.attest.tdx_collateral` - pick the PCK CRL and the TCB signer by them. All
keys are generated here; nothing in this module is trusted by a real policy (the root's
fingerprint is what a test policy pins).

Knobs for the attacks the tests need: quotes whose quoting enclave is debuggable, foreign
or downgraded, whose TDX module is not Intel's; collateral that is stale, not yet valid,
mis-signed, revoking the PCK chain, or listing OutOfDate / Revoked TCB levels.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import struct
import time
from collections.abc import Collection, Mapping, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sealagg.attest import tdx, tdx_collateral, tdx_pck
from sealagg.attest.collateral import CollateralBundle
from sealagg.attest.evidence import TDX, Evidence
from sealagg.attest.testing_common import (
    _DER,
    _PEM,
    _cert,
    _der_int,
    _raw,
)

INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
#: Intel's published TD quoting enclave signer and product id (QE identity v2, id TD_QE).
INTEL_TD_QE_MRSIGNER = bytes.fromhex(
    "dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5"
)
TD_QE_ISVPRODID = 2
TD_QE_ISVSVN = 4
#: The QE's SGX attributes: INIT | MODE64BIT | PROVISIONKEY, XFRM 0xE7 (masked out by Intel).
QE_ATTRIBUTES = struct.pack("<QQ", 0x15, 0xE7)
DEBUG_ATTRIBUTE = 0x02

DEFAULT_FMSPC = bytes.fromhex("00806f050000")
DEFAULT_PCEID = bytes(2)
DEFAULT_SGX_TCB = (2, 2, 2, 2, 3, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0)
DEFAULT_PCESVN = 13
DEFAULT_TEE_TCB_SVN = bytes([3, 0, 4] + [0] * 13)
OUT_OF_DATE_SGX_TCB = (1, 1, 1, 1, 2, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0)
OUT_OF_DATE_PCESVN = 11
OUT_OF_DATE_TEE_TCB_SVN = bytes([2, 0, 3] + [0] * 13)
OUT_OF_DATE_ADVISORIES = ("INTEL-SA-00837", "INTEL-SA-00960")
TCB_DATE = "2024-03-13T00:00:00Z"

_SGX = tdx_pck.SGX_EXTENSION_OID
_NAMES = {"platform": "Intel SGX PCK Platform CA", "processor": "Intel SGX PCK Processor CA"}
_ROOT_NAME = "Intel SGX Root CA"
_LEAF_NAME = "Intel SGX PCK Certificate"


def _tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return _tlv(0x06, bytes(out))


def _pair(arc: str, value: bytes) -> bytes:
    return _tlv(0x30, _oid(f"{_SGX}.{arc}") + value)


def sgx_extension(
    *, fmspc: bytes, pceid: bytes, components: Sequence[int], pcesvn: int, cpusvn: bytes
) -> bytes:
    """The DER value of Intel's SGX extension as the PCK certificate profile lays it out."""
    tcb = b"".join(_pair(f"2.{i + 1}", _der_int(c)) for i, c in enumerate(components))
    tcb += _pair("2.17", _der_int(pcesvn)) + _pair("2.18", _tlv(0x04, cpusvn))
    return _tlv(
        0x30,
        _pair("1", _tlv(0x04, b"\x7a" * 16))
        + _pair("2", _tlv(0x30, tcb))
        + _pair("3", _tlv(0x04, pceid))
        + _pair("4", _tlv(0x04, fmspc))
        + _pair("5", _tlv(0x0A, b"\x00")),
    )


def _iso(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _components(svns: Sequence[int]) -> list[dict[str, int]]:
    return [{"svn": s} for s in svns]


def tcb_level(
    sgx: Sequence[int],
    pcesvn: int,
    tdx_svn: bytes | Sequence[int],
    status: str,
    advisories: Sequence[str] = (),
) -> dict[str, object]:
    """One TCB info v3 level as Intel's JSON writes it."""
    level: dict[str, object] = {
        "tcb": {
            "sgxtcbcomponents": _components(sgx),
            "pcesvn": pcesvn,
            "tdxtcbcomponents": _components(list(tdx_svn)),
        },
        "tcbDate": TCB_DATE,
        "tcbStatus": status,
    }
    if advisories:
        level["advisoryIDs"] = list(advisories)
    return level


def enclave_level(isvsvn: int, status: str, advisories: Sequence[str] = ()) -> dict[str, object]:
    level: dict[str, object] = {"tcb": {"isvsvn": isvsvn}, "tcbDate": TCB_DATE, "tcbStatus": status}
    if advisories:
        level["advisoryIDs"] = list(advisories)
    return level


class TdxAuthority:
    """A test Intel: Root CA, PCK CAs, a PCK leaf, the TCB Signing key, and a QE's attestation key.

    ``pck_ca`` chooses which CA issues the PCK certificate; ``sgx_tcb`` / ``pcesvn`` /
    ``fmspc`` / ``pceid`` are what the PCK certificate claims. The collateral always
    describes the default platform, so a PCK with lower SVNs meets a lower TCB level.
    """

    def __init__(
        self,
        *,
        pck_ca: str = "platform",
        sgx_tcb: Sequence[int] = DEFAULT_SGX_TCB,
        pcesvn: int = DEFAULT_PCESVN,
        fmspc: bytes = DEFAULT_FMSPC,
        pceid: bytes = DEFAULT_PCEID,
    ) -> None:
        h = {"hash_alg": hashes.SHA256()}
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = _cert(
            _ROOT_NAME, self.root_key.public_key(), _ROOT_NAME, self.root_key, ca=True, **h
        )
        self.ca_keys: dict[str, ec.EllipticCurvePrivateKey] = {}
        self.cas: dict[str, x509.Certificate] = {}
        for kind, name in _NAMES.items():
            key = ec.generate_private_key(ec.SECP256R1())
            self.ca_keys[kind] = key
            self.cas[kind] = _cert(name, key.public_key(), _ROOT_NAME, self.root_key, ca=True, **h)
        self.pck_ca = pck_ca
        self.ca = self.cas[pck_ca]
        self.pck_key = ec.generate_private_key(ec.SECP256R1())
        ext = sgx_extension(
            fmspc=fmspc, pceid=pceid, components=sgx_tcb, pcesvn=pcesvn, cpusvn=bytes(sgx_tcb)
        )
        self.pck = _cert(
            _LEAF_NAME, self.pck_key.public_key(), _NAMES[pck_ca], self.ca_keys[pck_ca],
            ca=False, extensions={x509.ObjectIdentifier(_SGX): ext}, **h,
        )  # fmt: skip
        self.tcb_signing_key = ec.generate_private_key(ec.SECP256R1())
        self.tcb_signing = _cert(
            tdx_collateral.TCB_SIGNING_CN, self.tcb_signing_key.public_key(), _ROOT_NAME,
            self.root_key, ca=False, **h,
        )  # fmt: skip
        self.attestation_key = ec.generate_private_key(ec.SECP256R1())
        self.qe_auth_data = bytes(range(32))
        self.fmspc = DEFAULT_FMSPC

    @property
    def root_sha256(self) -> str:
        return hashlib.sha256(self.root.public_bytes(_DER)).hexdigest()

    def pem_chain(self) -> bytes:
        return b"".join(c.public_bytes(_PEM) for c in (self.pck, self.ca, self.root))

    def signing_chain(self) -> bytes:
        return b"".join(c.public_bytes(_PEM) for c in (self.tcb_signing, self.root))

    # ------------------------------------------------------------------------ the quote

    def quote(
        self,
        report_data: bytes,
        *,
        mrtd: bytes,
        rtmrs: tuple[bytes, bytes, bytes, bytes] = (bytes(48),) * 4,
        debug: bool = False,
        version: int = 4,
        tee_tcb_svn: bytes = DEFAULT_TEE_TCB_SVN,
        pem_chain: bytes | None = None,
        mrsignerseam: bytes = tdx.INTEL_MRSIGNERSEAM,
        seam_attributes: bytes = bytes(8),
        **qe: object,
    ) -> bytes:
        """A signed TDX quote v4 in the DCAP layout. ``qe``: see :meth:`qe_report`."""
        header = struct.pack("<HHI", version, tdx.ATT_KEY_ECDSA_P256, tdx.TEE_TYPE_TDX)
        header += bytes(4) + INTEL_QE_VENDOR_ID + bytes(20)
        body = bytearray(tdx.BODY_BYTES)
        fields = {
            "tee_tcb_svn": tee_tcb_svn,
            "mrseam": b"\x5e" * 48,
            "mrsignerseam": mrsignerseam,
            "seam_attributes": seam_attributes,
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
        return signed + self.signature_data(signed, pem_chain=pem_chain, **qe)  # type: ignore[arg-type]

    def qe_report(
        self,
        report_data: bytes,
        *,
        qe_mrsigner: bytes = INTEL_TD_QE_MRSIGNER,
        qe_isvprodid: int = TD_QE_ISVPRODID,
        qe_isvsvn: int = TD_QE_ISVSVN,
        qe_debug: bool = False,
        qe_miscselect: bytes = bytes(4),
        qe_attributes: bytes = QE_ATTRIBUTES,
    ) -> bytes:
        """The quoting enclave's SGX report body (384 bytes), by default Intel's TD QE."""
        report = bytearray(tdx.QE_REPORT_BYTES)
        report[0:16] = bytes(DEFAULT_SGX_TCB)
        report[16:20] = qe_miscselect
        attributes = bytearray(qe_attributes)
        if qe_debug:
            attributes[0] |= DEBUG_ATTRIBUTE
        report[48:64] = attributes
        report[64:96] = b"\x91" * 32  # MRENCLAVE of the test QE
        report[128:160] = qe_mrsigner
        struct.pack_into("<HH", report, 256, qe_isvprodid, qe_isvsvn)
        report[320:384] = report_data
        return bytes(report)

    def signature_data(
        self, signed: bytes, *, pem_chain: bytes | None = None, **qe: object
    ) -> bytes:
        att_xy = self.attestation_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )[1:]
        binding = hashlib.sha256(att_xy + self.qe_auth_data).digest() + bytes(32)
        qe_report = self.qe_report(binding, **qe)  # type: ignore[arg-type]
        qe_sig = _raw(self.pck_key.sign(qe_report, ec.ECDSA(hashes.SHA256())))
        chain = self.pem_chain() if pem_chain is None else pem_chain
        inner = qe_report + qe_sig
        inner += struct.pack("<H", len(self.qe_auth_data)) + self.qe_auth_data
        inner += struct.pack("<HI", tdx.CERT_PCK_CHAIN, len(chain)) + chain
        sig = _raw(self.attestation_key.sign(signed, ec.ECDSA(hashes.SHA256())))
        data = sig + att_xy + struct.pack("<HI", tdx.CERT_QE_REPORT, len(inner)) + inner
        return struct.pack("<I", len(data)) + data

    def attester(self, mrtd: bytes, **kwargs: object) -> TdxTestAttester:
        return TdxTestAttester(self, mrtd, kwargs)

    # ------------------------------------------------------------------- the collateral

    def tcb_levels(self) -> list[dict[str, object]]:
        """Intel-style levels, highest first: the default platform is UpToDate."""
        return [
            tcb_level(DEFAULT_SGX_TCB, DEFAULT_PCESVN, DEFAULT_TEE_TCB_SVN, "UpToDate"),
            tcb_level(
                OUT_OF_DATE_SGX_TCB,
                OUT_OF_DATE_PCESVN,
                OUT_OF_DATE_TEE_TCB_SVN,
                "OutOfDate",
                OUT_OF_DATE_ADVISORIES,
            ),
        ]

    def tcb_info_document(
        self, *, issued: datetime.datetime, next_update: datetime.datetime, **overrides: object
    ) -> dict[str, object]:
        """The inner ``tcbInfo`` object of TCB info v3 for TDX; ``overrides`` replace fields."""
        module = {
            "mrsigner": tdx.INTEL_MRSIGNERSEAM.hex(),
            "attributes": "0000000000000000",
            "attributesMask": "FFFFFFFFFFFFFFFF",
        }
        doc: dict[str, object] = {
            "id": "TDX",
            "version": 3,
            "issueDate": _iso(issued),
            "nextUpdate": _iso(next_update),
            "fmspc": self.fmspc.hex(),
            "pceId": DEFAULT_PCEID.hex(),
            "tcbType": 0,
            "tcbEvaluationDataNumber": 17,
            "tdxModule": dict(module),
            "tdxModuleIdentities": [
                {
                    "id": "TDX_03",
                    **module,
                    "tcbLevels": [
                        enclave_level(3, "UpToDate"),
                        enclave_level(0, "OutOfDate", ["INTEL-SA-01036"]),
                    ],
                },
                {
                    "id": "TDX_01",
                    **module,
                    "tcbLevels": [enclave_level(4, "UpToDate"), enclave_level(2, "OutOfDate")],
                },
            ],
            "tcbLevels": self.tcb_levels(),
        }
        doc.update(overrides)
        return doc

    def qe_identity_document(
        self, *, issued: datetime.datetime, next_update: datetime.datetime, **overrides: object
    ) -> dict[str, object]:
        """The inner ``enclaveIdentity`` object of QE identity v2 for the TD QE."""
        doc: dict[str, object] = {
            "id": "TD_QE",
            "version": 2,
            "issueDate": _iso(issued),
            "nextUpdate": _iso(next_update),
            "tcbEvaluationDataNumber": 17,
            "miscselect": "00000000",
            "miscselectMask": "FFFFFFFF",
            "attributes": "11000000000000000000000000000000",
            "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": INTEL_TD_QE_MRSIGNER.hex().upper(),
            "isvprodid": TD_QE_ISVPRODID,
            "tcbLevels": [
                enclave_level(TD_QE_ISVSVN, "UpToDate"),
                enclave_level(0, "OutOfDate", ["INTEL-SA-00615"]),
            ],
        }
        doc.update(overrides)
        return doc

    def sign_document(
        self, key: str, doc: Mapping[str, object], signer: ec.EllipticCurvePrivateKey | None = None
    ) -> bytes:
        """``{key: doc, "signature": hex}``, signed over the inner JSON's exact bytes."""
        inner = json.dumps(doc, separators=(",", ":"))
        signature = _raw(
            (signer or self.tcb_signing_key).sign(inner.encode(), ec.ECDSA(hashes.SHA256()))
        )
        return f'{{"{key}":{inner},"signature":"{signature.hex()}"}}'.encode()

    def crl(
        self,
        issuer: str,
        *,
        revoked: Collection[x509.Certificate] = (),
        last_update: datetime.datetime,
        next_update: datetime.datetime,
        signer: ec.EllipticCurvePrivateKey | None = None,
    ) -> bytes:
        """A DER CRL by ``issuer`` ("root", "platform" or "processor")."""
        cert = self.root if issuer == "root" else self.cas[issuer]
        key = signer or (self.root_key if issuer == "root" else self.ca_keys[issuer])
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(cert.subject)
            .last_update(last_update)
            .next_update(next_update)
        )
        for victim in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(victim.serial_number)
                .revocation_date(last_update)
                .build()
            )
        return builder.sign(key, hashes.SHA256()).public_bytes(_DER)

    def collateral(
        self,
        *,
        now: float | None = None,
        issued: datetime.datetime | None = None,
        next_update: datetime.datetime | None = None,
        tcb_info: Mapping[str, object] | None = None,
        qe_identity: Mapping[str, object] | None = None,
        signer: ec.EllipticCurvePrivateKey | None = None,
        revoke: Collection[str] = (),
        crl_next_update: datetime.datetime | None = None,
        omit: Collection[str] = (),
    ) -> CollateralBundle:
        """A consistent bundle in the layout of attest_common (tdx/...), current at ``now``.

        ``tcb_info`` / ``qe_identity``: fields replaced in the signed documents; ``signer``:
        sign them with another key (mis-signed); ``revoke``: any of "pck", "pck_ca",
        "tcb_signing" put on Intel's CRLs; ``omit``: bundle paths left out.
        """
        at = datetime.datetime.fromtimestamp(time.time() if now is None else now, datetime.UTC)
        issued = issued or at - datetime.timedelta(hours=1)
        next_update = next_update or at + datetime.timedelta(days=30)
        dates = {"issued": issued, "next_update": next_update}
        info = self.tcb_info_document(**dates, **dict(tcb_info or {}))
        identity = self.qe_identity_document(**dates, **dict(qe_identity or {}))
        crl_dates = {
            "last_update": at - datetime.timedelta(hours=1),
            "next_update": crl_next_update or at + datetime.timedelta(days=30),
        }
        victims = {"pck_ca": self.ca, "tcb_signing": self.tcb_signing}
        on_root = [cert for name, cert in victims.items() if name in revoke]
        on_ca = [self.pck] if "pck" in revoke else []
        files = {
            f"{tdx_collateral.TCB_INFO_DIR}/{self.fmspc.hex()}.json": self.sign_document(
                "tcbInfo", info, signer
            ),
            tdx_collateral.TCB_INFO_CHAIN: self.signing_chain(),
            tdx_collateral.QE_IDENTITY: self.sign_document("enclaveIdentity", identity, signer),
            tdx_collateral.QE_IDENTITY_CHAIN: self.signing_chain(),
            tdx_collateral.ROOT_CA_CRL: self.crl("root", revoked=on_root, **crl_dates),
        }
        for kind, path in tdx_collateral.PCK_CRL.items():
            revoked = on_ca if kind == self.pck_ca else []
            files[path] = self.crl(kind, revoked=revoked, **crl_dates)
        return CollateralBundle({k: v for k, v in files.items() if k not in omit})


class TdxTestAttester:
    format = TDX
    insecure = False

    def __init__(self, authority: TdxAuthority, mrtd: bytes, options: Mapping) -> None:
        self.authority, self.mrtd, self.options = authority, mrtd, dict(options)

    def evidence(self, report_data: bytes) -> Evidence:
        return Evidence(TDX, self.authority.quote(report_data, mrtd=self.mrtd, **self.options))

    def collateral(self) -> CollateralBundle:
        """The Intel collateral an appliance on this fake platform would ship."""
        return self.authority.collateral()
