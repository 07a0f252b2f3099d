"""AMD key distribution service (KDS) collateral for SEV-SNP: where it lives, fetching, checks.

Where the trust comes from: the policy pins the AMD Root Key (ARK) by the SHA-256 of its
certificate (``trusted_ark_sha256``). Everything else is only believed once it verifies
to that ARK: the ASK (or, for VLEKs, the ASVK) is signed by the ARK, the VCEK by the ASK
and the VLEK by the ASVK (AMD, "Versioned Chip Endorsement Key (VCEK) Certificate and
KDS Interface Specification", publication 57230), and the CRL of each product is signed
by the ARK. Who carried the bytes (the operator's bundle, the appliance's evidence)
therefore adds nothing and takes nothing away.

Bundle layout (relative paths in a :class:`CollateralBundle`), and the KDS request each
item is the body of (``KDS`` = https://kdsintf.amd.com; product in Milan, Genoa, Turin)::

    sev-snp/<product>/cert_chain.pem         GET KDS/vcek/v1/<product>/cert_chain  (ASK, ARK)
    sev-snp/<product>/crl.der                GET KDS/vcek/v1/<product>/crl         (ARK-signed)
    sev-snp/<product>/vcek/<hwid>/<tcb>.der  GET KDS/vcek/v1/<product>/<hwid>?blSPL=..&teeSPL=..
                                                 &snpSPL=..&ucodeSPL=..   (Turin: fmcSPL first)
    sev-snp/<product>/vlek_cert_chain.pem    GET KDS/vlek/v1/<product>/cert_chain  (ASVK, ARK)
    sev-snp/<product>/vlek_crl.der           GET KDS/vlek/v1/<product>/crl         (ARK-signed)
    sev-snp/<product>/vlek/<tcb>.der         the cloud provider's VLEK (KDS serves it to CSPs only)

``<hwid>`` is the report's CHIP_ID in lowercase hex (64 bytes) for Milan and Genoa, and
its first 8 bytes for Turin: that is how KDS names a Turin chip, and what a Turin VCEK's
hwID extension holds. ``<tcb>`` is the report's REPORTED_TCB as the u64 in 16 lowercase
hex digits (:attr:`TcbVersion.hex`). A VCEK or VLEK in the evidence's own certificate
table stands in for the bundle's; ASK and ARK from the evidence stand in for
``cert_chain.pem``; the CRL must come from the bundle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hmac
import math
from collections.abc import Iterator, Mapping, Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec

from sealagg.attest import _x509
from sealagg.attest.collateral import CollateralBundle, CollateralDownload
from sealagg.attest.errors import AppraisalFailure, Reason
from sealagg.attest.snp_abi import (
    CHIP_ID_BYTES,
    PRODUCTS,
    TURIN,
    VCEK,
    VLEK,
    TcbVersion,
    parse_report,
    tcb_components,
)

KDS_BASE = "https://kdsintf.amd.com"
TURIN_HWID_BYTES = 8
MAX_EVIDENCE_CERTIFICATES = 8
MAX_CERTIFICATE_BYTES = 64 * 1024

#: AMD's OIDs in VCEK/VLEK certificates (KDS interface specification, "VCEK extensions").
OID_STRUCT_VERSION = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.1")
OID_PRODUCT_NAME = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.2")
OID_BLSPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.1")
OID_TEESPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.2")
OID_SNPSPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.3")
OID_UCODESPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.8")
OID_FMCSPL = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.3.9")
OID_HWID = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.4")
OID_CSPID = x509.ObjectIdentifier("1.3.6.1.4.1.3704.1.5")
SPL_OIDS = {
    "fmc": OID_FMCSPL,
    "bootloader": OID_BLSPL,
    "tee": OID_TEESPL,
    "snp": OID_SNPSPL,
    "microcode": OID_UCODESPL,
}
#: KDS query parameter of each TCB component.
_KDS_PARAMS = {
    "fmc": "fmcSPL",
    "bootloader": "blSPL",
    "tee": "teeSPL",
    "snp": "snpSPL",
    "microcode": "ucodeSPL",
}
_ROLE = {VCEK: ("ASK", "VCEK"), VLEK: ("ASVK", "VLEK")}

#: What a hostile certificate, CRL or clock value can make ``cryptography`` raise.
_PARSE_ERRORS = (
    ValueError,
    TypeError,
    OverflowError,
    OSError,
    UnsupportedAlgorithm,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    x509.InvalidVersion,
)


def _check_signer(signer: object) -> str:
    if not isinstance(signer, str) or signer not in _ROLE:
        raise AppraisalFailure(Reason.BROKEN_CHAIN, f"no endorsement key of kind {signer!r}")
    return signer


def _check_bundle(collateral: object) -> None:
    if not isinstance(collateral, CollateralBundle):
        raise AppraisalFailure(Reason.COLLATERAL_MISSING, "no collateral bundle was given")


def _check_types(**certs: object) -> None:
    """Public functions take typed arguments; a wrong type is a refusal, not an AttributeError."""
    for name, cert in certs.items():
        if not isinstance(cert, x509.Certificate):
            raise AppraisalFailure(Reason.BROKEN_CHAIN, f"the {name} is not a certificate")


@contextlib.contextmanager
def _refusing(reason: Reason, what: str) -> Iterator[None]:
    """Turn a parser's exception into a refusal: hostile bytes never escape as a crash."""
    try:
        yield
    except AppraisalFailure:
        raise
    except _PARSE_ERRORS as exc:
        raise AppraisalFailure(reason, f"{what}: {exc}") from None


# ---------------------------------------------------------------- bundle paths and fetch plan


def canonical_product(product: object) -> str:
    """``"genoa"`` -> ``"Genoa"``; anything but Milan, Genoa or Turin is refused."""
    if isinstance(product, str):
        for name in PRODUCTS:
            if product.lower() == name.lower():
                return name
    raise AppraisalFailure(
        Reason.COLLATERAL_INVALID, f"SEV-SNP product {product!r} is not one of {list(PRODUCTS)}"
    )


def kds_hwid(product: str, chip_id: bytes) -> bytes:
    """The chip identifier KDS uses: CHIP_ID (Milan, Genoa) or its first 8 bytes (Turin)."""
    product = canonical_product(product)
    if not isinstance(chip_id, bytes) or len(chip_id) not in (CHIP_ID_BYTES, TURIN_HWID_BYTES):
        raise AppraisalFailure(Reason.COLLATERAL_INVALID, "a chip id is 64 bytes")
    if product == TURIN:
        return chip_id[:TURIN_HWID_BYTES]
    if len(chip_id) != CHIP_ID_BYTES:
        raise AppraisalFailure(Reason.COLLATERAL_INVALID, f"a {product} chip id is 64 bytes")
    return chip_id


def _check_tcb(product: str, tcb: object) -> TcbVersion:
    if not isinstance(tcb, TcbVersion) or tcb.turin != (product == TURIN):
        raise AppraisalFailure(
            Reason.COLLATERAL_INVALID, f"the TCB version is not in {product}'s TCB layout"
        )
    return tcb


def vcek_path(product: str, chip_id: bytes, tcb: TcbVersion) -> str:
    """Where the VCEK of ``chip_id`` at ``tcb`` lives in the bundle."""
    product = canonical_product(product)
    tcb = _check_tcb(product, tcb)
    return f"sev-snp/{product}/vcek/{kds_hwid(product, chip_id).hex()}/{tcb.hex}.der"


def vlek_path(product: str, tcb: TcbVersion) -> str:
    """Where the cloud provider's VLEK at ``tcb`` lives in the bundle."""
    product = canonical_product(product)
    return f"sev-snp/{product}/vlek/{_check_tcb(product, tcb).hex}.der"


def chain_path(product: str, signer: str = VCEK) -> str:
    """ASK+ARK (``cert_chain.pem``) or ASVK+ARK (``vlek_cert_chain.pem``)."""
    return f"sev-snp/{canonical_product(product)}/{'vlek_' if signer == VLEK else ''}cert_chain.pem"


def crl_path(product: str, signer: str = VCEK) -> str:
    return f"sev-snp/{canonical_product(product)}/{'vlek_' if signer == VLEK else ''}crl.der"


def fetch_plan(
    product: str, chip_id_hex: str | None = None, reported_tcb_hex: str | None = None
) -> list[CollateralDownload]:
    """What a connected machine downloads from AMD's KDS for ``product`` (never run in tests).

    Always the VCEK and VLEK chains and CRLs; the VCEK too when both the chip id (hex of
    the report's CHIP_ID; for Turin its first 8 bytes suffice) and the reported TCB
    (:attr:`TcbVersion.hex`) are given. VLEKs are not in the plan: KDS gives them only to
    the cloud provider, whose guests carry theirs in the extended report."""
    product = canonical_product(product)
    base = f"{KDS_BASE}/vcek/v1/{product}"
    vlek_base = f"{KDS_BASE}/vlek/v1/{product}"
    plan = [
        CollateralDownload(f"{base}/cert_chain", chain_path(product, VCEK)),
        CollateralDownload(f"{base}/crl", crl_path(product, VCEK)),
        CollateralDownload(f"{vlek_base}/cert_chain", chain_path(product, VLEK)),
        CollateralDownload(f"{vlek_base}/crl", crl_path(product, VLEK)),
    ]
    if (chip_id_hex is None) != (reported_tcb_hex is None):
        raise AppraisalFailure(
            Reason.COLLATERAL_INVALID, "a VCEK needs both the chip id and the reported TCB"
        )
    if chip_id_hex is not None and reported_tcb_hex is not None:
        with _refusing(Reason.COLLATERAL_INVALID, "chip id / reported TCB"):
            if not isinstance(chip_id_hex, str):
                raise TypeError("the chip id is a hex string")
            chip_id = bytes.fromhex(chip_id_hex)
            tcb = TcbVersion.from_hex(reported_tcb_hex, product)
        hwid = kds_hwid(product, chip_id)
        query = "&".join(
            f"{_KDS_PARAMS[name]}={tcb.as_dict()[name]}" for name in tcb_components(product)
        )
        plan.append(
            CollateralDownload(f"{base}/{hwid.hex()}?{query}", vcek_path(product, chip_id, tcb))
        )
    return plan


def fetch_plan_for_report(report: bytes, product: str | None = None) -> list[CollateralDownload]:
    """The fetch plan for the chip and TCB of one report (as read on the appliance's host).

    Reports of version 3 and later name their product; for version 2 pass ``product``."""
    parsed = parse_report(report)
    if parsed.version >= 3:
        if parsed.product is None:
            raise AppraisalFailure(
                Reason.UNSUPPORTED_VERSION,
                f"CPU family {parsed.cpuid_family:#x} model {parsed.cpuid_model:#x} is not "
                "Milan, Genoa or Turin",
            )
        if product is not None and canonical_product(product) != parsed.product:
            raise AppraisalFailure(
                Reason.COLLATERAL_INVALID, f"the report comes from a {parsed.product}"
            )
        product = parsed.product
    elif product is None:
        raise AppraisalFailure(
            Reason.COLLATERAL_INVALID,
            "a version 2 report does not name its product: pass Milan or Genoa",
        )
    product = canonical_product(product)
    if parsed.version < 3 and product == TURIN:
        raise AppraisalFailure(Reason.UNSUPPORTED_VERSION, "a Turin writes version 3 or later")
    return fetch_plan(product, parsed.chip_id.hex(), parsed.reported_tcb.hex)


# ------------------------------------------------------------------ AMD certificate extensions


@dataclasses.dataclass(frozen=True)
class KdsExtensions:
    """AMD's extensions of a VCEK or VLEK (KDS interface specification)."""

    product_name: str | None  # e.g. "Milan-B0" (VCEK) or "Milan" (VLEK)
    hwid: bytes | None  # VCEK only
    csp_id: str | None  # VLEK only
    spl: Mapping[str, int]  # the SPL extensions present: bootloader, tee, snp, microcode, fmc

    @property
    def product(self) -> str | None:
        return self.product_name.split("-", 1)[0] if self.product_name else None


def _der_small_int(raw: bytes, what: str) -> int:
    """AMD encodes SPLs as DER INTEGERs 0..255."""
    if not (3 <= len(raw) <= 4 and raw[0] == 0x02 and raw[1] == len(raw) - 2):
        raise AppraisalFailure(Reason.BROKEN_CHAIN, f"{what} is not a small DER INTEGER")
    value = int.from_bytes(raw[2:], "big", signed=True)
    if not 0 <= value <= 255:
        raise AppraisalFailure(Reason.BROKEN_CHAIN, f"{what} = {value} is not 0..255")
    return value


def _ia5(raw: bytes, what: str) -> str:
    if not (len(raw) >= 2 and raw[0] == 0x16 and raw[1] == len(raw) - 2 and raw[1] < 0x80):
        raise AppraisalFailure(Reason.BROKEN_CHAIN, f"{what} is not a DER IA5String")
    if not raw[2:].isascii():
        raise AppraisalFailure(Reason.BROKEN_CHAIN, f"{what} is not ASCII")
    return raw[2:].decode("ascii")


def _hwid(raw: bytes) -> bytes:
    """KDS writes hwID as the raw bytes (no ASN.1 tag); an OCTET STRING wrapper is tolerated."""
    sizes = (CHIP_ID_BYTES, TURIN_HWID_BYTES)
    if len(raw) in sizes:
        return raw
    if len(raw) - 2 in sizes and raw[0] == 0x04 and raw[1] == len(raw) - 2:
        return raw[2:]
    raise AppraisalFailure(Reason.BROKEN_CHAIN, "the hwID extension is not a chip id")


def kds_extensions(cert: x509.Certificate) -> KdsExtensions:
    """Parse AMD's extensions of an endorsement certificate; malformed ones are refused."""
    with _refusing(Reason.BROKEN_CHAIN, "the endorsement certificate's extensions"):
        if not isinstance(cert, x509.Certificate):
            raise TypeError("not a certificate")
        values = {
            ext.oid: ext.value.value
            for ext in cert.extensions
            if isinstance(ext.value, x509.UnrecognizedExtension)
        }
    name = values.get(OID_PRODUCT_NAME)
    hwid = values.get(OID_HWID)
    csp = values.get(OID_CSPID)
    spl = {
        field: _der_small_int(values[oid], f"the {field} SPL extension")
        for field, oid in SPL_OIDS.items()
        if oid in values
    }
    return KdsExtensions(
        product_name=None if name is None else _ia5(name, "productName"),
        hwid=None if hwid is None else _hwid(hwid),
        csp_id=None if csp is None else _ia5(csp, "cspID"),
        spl=spl,
    )


# ------------------------------------------------------------------- evidence's certificates


@dataclasses.dataclass(frozen=True)
class EvidenceCertificates:
    """The SNP extended report's certificate table, sorted by what each certificate is."""

    vceks: tuple[x509.Certificate, ...]
    vleks: tuple[x509.Certificate, ...]
    cas: tuple[x509.Certificate, ...]  # ASK, ASVK, ARK: whatever is not an endorsement key

    def leaf(self, signer: str) -> x509.Certificate | None:
        """The VCEK or VLEK the evidence carries, if any (two of a kind are refused)."""
        found = self.vceks if signer == VCEK else self.vleks
        if len(found) > 1:
            raise AppraisalFailure(
                Reason.BROKEN_CHAIN, f"the evidence carries {len(found)} {signer.upper()}s"
            )
        return found[0] if found else None


def load_evidence_certificates(blobs: Sequence[bytes]) -> EvidenceCertificates:
    """Load DER or PEM certificates in any order; an endorsement key is told by its AMD OIDs."""
    if not isinstance(blobs, Sequence) or len(blobs) > MAX_EVIDENCE_CERTIFICATES:
        raise AppraisalFailure(
            Reason.BROKEN_CHAIN,
            f"SNP evidence carries at most {MAX_EVIDENCE_CERTIFICATES} certificates",
        )
    vceks, vleks, cas = [], [], []
    for i, blob in enumerate(blobs):
        what = f"evidence certificate {i}"
        if not isinstance(blob, bytes | bytearray) or len(blob) > MAX_CERTIFICATE_BYTES:
            raise AppraisalFailure(Reason.BROKEN_CHAIN, f"{what} is not a certificate")
        with _refusing(Reason.BROKEN_CHAIN, what):
            cert = _x509.load_certificate(bytes(blob), what)
            oids = {ext.oid for ext in cert.extensions}
        if OID_HWID in oids and OID_CSPID in oids:
            raise AppraisalFailure(Reason.BROKEN_CHAIN, f"{what} has both hwID and cspID")
        (vceks if OID_HWID in oids else vleks if OID_CSPID in oids else cas).append(cert)
    return EvidenceCertificates(tuple(vceks), tuple(vleks), tuple(cas))


def bundled_endorsement(
    collateral: CollateralBundle, product: str, signer: str, chip_id: bytes, tcb: TcbVersion
) -> x509.Certificate:
    """The VCEK (or VLEK) for this chip and TCB from the bundle; COLLATERAL_MISSING if absent."""
    signer = _check_signer(signer)
    _check_bundle(collateral)
    if signer == VLEK:
        path, why = vlek_path(product, tcb), "the VLEK that signed the report"
    else:
        path = vcek_path(product, chip_id, tcb)
        why = "the VCEK of this chip at its reported TCB"
    blob = collateral.require(path, why)
    with _refusing(Reason.COLLATERAL_INVALID, f"{path} is not a certificate"):
        if blob.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(blob)
        return x509.load_der_x509_certificate(blob)


def endorsement_key(cert: x509.Certificate, signer: str) -> ec.EllipticCurvePublicKey:
    """The VCEK/VLEK public key, which AMD defines as ECDSA P-384."""
    signer = _check_signer(signer)
    _check_types(endorsement=cert)
    with _refusing(Reason.BROKEN_CHAIN, f"the {signer.upper()} public key"):
        key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise AppraisalFailure(
            Reason.BROKEN_CHAIN, f"the {signer.upper()} is not an ECDSA P-384 key"
        )
    return key


# ------------------------------------------------------------------------- chain and CRL


@dataclasses.dataclass(frozen=True)
class Endorsement:
    """A VCEK/VLEK verified to a pinned ARK and checked against the product's CRL."""

    signer: str
    product: str
    ark: x509.Certificate
    intermediate: x509.Certificate  # ASK or ASVK
    leaf: x509.Certificate
    extensions: KdsExtensions


def _self_signed(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer


def _bundle_chain(
    collateral: CollateralBundle, product: str, signer: str
) -> tuple[x509.Certificate, x509.Certificate]:
    path = chain_path(product, signer)
    blob = collateral.require(path, f"AMD's {_ROLE[signer][0]} and ARK for {product}")
    with _refusing(Reason.COLLATERAL_INVALID, path):
        certs = x509.load_pem_x509_certificates(blob)
    if len(certs) != 2:
        raise AppraisalFailure(
            Reason.COLLATERAL_INVALID, f"{path} must hold two certificates (ASK or ASVK, ARK)"
        )
    return certs[0], certs[1]


def verify_endorsement(
    leaf: x509.Certificate,
    *,
    signer: str,
    product: str,
    evidence: EvidenceCertificates,
    collateral: CollateralBundle,
    anchors: Sequence[bytes],
    now: float,
) -> Endorsement:
    """Chain ``leaf`` -> ASK/ASVK -> ARK (pinned by ``anchors``), then check the ARK's CRL.

    The ASK and ARK come from the evidence when it carries them, else from the bundle's
    ``cert_chain.pem``: both must verify, so where they came from does not matter."""
    signer = _check_signer(signer)
    product = canonical_product(product)
    _check_bundle(collateral)
    _check_types(endorsement=leaf)
    if not isinstance(evidence, EvidenceCertificates):
        raise AppraisalFailure(Reason.BROKEN_CHAIN, "the evidence certificates are not loaded")
    middle_name, leaf_name = _ROLE[signer]
    with _refusing(Reason.BROKEN_CHAIN, f"the {leaf_name} chain"):
        middle = next(
            (c for c in evidence.cas if not _self_signed(c) and c.subject == leaf.issuer), None
        )
        bundle = None
        if middle is None:
            bundle = _bundle_chain(collateral, product, signer)
            middle = bundle[0]
        ark = next(
            (c for c in evidence.cas if _self_signed(c) and c.subject == middle.issuer), None
        )
        if ark is None:
            ark = (bundle or _bundle_chain(collateral, product, signer))[1]
        _x509.verify_chain([ark, middle, leaf], ("ARK", middle_name, leaf_name), anchors, now)
    path = crl_path(product, signer)
    collateral.require(path, f"AMD's revocation list for {product}, signed by the ARK")
    crl = newest_crl(collateral.candidates(path), ark, now, path)
    _not_revoked(crl, {middle_name: middle, leaf_name: leaf})
    return Endorsement(signer, product, ark, middle, leaf, kds_extensions(leaf))


def _instant(now: float, what: str) -> datetime.datetime:
    if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
        raise AppraisalFailure(Reason.COLLATERAL_INVALID, f"{what}: the clock reads {now!r}")
    with _refusing(Reason.COLLATERAL_INVALID, f"{what}: the clock reads {now!r}"):
        return datetime.datetime.fromtimestamp(now, tz=datetime.UTC)


def check_crl(
    crl_bytes: bytes,
    ark: x509.Certificate,
    revocable: Mapping[str, x509.Certificate],
    now: float,
    what: str = "the CRL",
) -> None:
    """The CRL must be the ARK's (signed by it), current at ``now``, and list none of ``revocable``.

    A stale CRL (nextUpdate passed) is refused, not ignored: otherwise an attacker who can
    withhold the fresh list keeps a revoked ASK usable forever."""
    _check_revocable(revocable)
    _not_revoked(load_crl(crl_bytes, ark, now, what), revocable)


def load_crl(
    crl_bytes: bytes, ark: x509.Certificate, now: float, what: str = "the CRL"
) -> x509.CertificateRevocationList:
    """The ARK's CRL, authenticated and current at ``now`` (not yet checked for entries)."""
    at = _instant(now, what)
    _check_types(ARK=ark)
    if not isinstance(crl_bytes, bytes | bytearray):
        raise AppraisalFailure(Reason.COLLATERAL_INVALID, f"{what} is not bytes")
    with _refusing(Reason.COLLATERAL_INVALID, what):
        blob = bytes(crl_bytes)
        if blob.lstrip().startswith(b"-----BEGIN"):
            crl = x509.load_pem_x509_crl(blob)
        else:
            crl = x509.load_der_x509_crl(blob)
        if crl.issuer != ark.subject:
            raise AppraisalFailure(Reason.COLLATERAL_INVALID, f"{what} is not issued by the ARK")
        if not crl.is_signature_valid(ark.public_key()):  # type: ignore[arg-type]
            raise AppraisalFailure(Reason.COLLATERAL_INVALID, f"{what} is not signed by the ARK")
        issued, next_update = crl.last_update_utc, crl.next_update_utc
        if next_update is None:
            raise AppraisalFailure(Reason.COLLATERAL_INVALID, f"{what} has no nextUpdate")
        if issued > at:
            raise AppraisalFailure(
                Reason.COLLATERAL_INVALID, f"{what} is not yet valid (issued {issued:%Y-%m-%d})"
            )
        if next_update < at:
            raise AppraisalFailure(
                Reason.COLLATERAL_INVALID,
                f"{what} is stale (nextUpdate {next_update:%Y-%m-%d} has passed): fetch a fresh "
                "one with 'sealagg attest collateral fetch'",
            )
    return crl


def newest_crl(
    copies: Sequence[bytes], ark: x509.Certificate, now: float, what: str = "the CRL"
) -> x509.CertificateRevocationList:
    """Of several copies of one CRL (the kit's and the appliance's), the current ARK-signed one
    with the latest thisUpdate: an older genuine list, from before a revocation, cannot hide
    a newer one, and a stale copy in the kit does not hide the fresh one the operator ships."""
    best: x509.CertificateRevocationList | None = None
    first: AppraisalFailure | None = None
    for blob in copies:
        try:
            crl = load_crl(blob, ark, now, what)
        except AppraisalFailure as failure:
            first = first or failure
            continue
        with _refusing(Reason.COLLATERAL_INVALID, what):
            if best is None or crl.last_update_utc > best.last_update_utc:
                best = crl
    if best is None:
        raise first or AppraisalFailure(Reason.COLLATERAL_MISSING, f"{what}: no copy")
    return best


def _check_revocable(revocable: object) -> None:
    if not isinstance(revocable, Mapping):
        raise AppraisalFailure(Reason.COLLATERAL_INVALID, "nothing to check against the CRL")
    _check_types(**{str(name): cert for name, cert in revocable.items()})


def _not_revoked(
    crl: x509.CertificateRevocationList, revocable: Mapping[str, x509.Certificate]
) -> None:
    with _refusing(Reason.COLLATERAL_INVALID, "the CRL's entries"):
        for name, cert in revocable.items():
            if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                raise AppraisalFailure(
                    Reason.REVOKED, f"AMD revoked the {name} (serial {cert.serial_number:x})"
                )


def check_endorsement(
    extensions: KdsExtensions, *, signer: str, product: str, chip_id: bytes, tcb: TcbVersion
) -> None:
    """The VCEK/VLEK must be for this product, (VCEK) this chip and exactly this reported TCB.

    A VCEK is derived from the TCB it names; one for a higher TCB than the report's would
    let old, vulnerable firmware borrow a newer certificate, so every SPL must be present
    and equal (as AMD's own verifiers require)."""
    product = canonical_product(product)
    name = _check_signer(signer).upper()
    if not isinstance(extensions, KdsExtensions):
        raise AppraisalFailure(Reason.BROKEN_CHAIN, f"the {name}'s extensions are not parsed")
    if extensions.product is None:
        raise AppraisalFailure(Reason.BROKEN_CHAIN, f"the {name} names no product")
    if extensions.product != product:
        raise AppraisalFailure(
            Reason.BROKEN_CHAIN,
            f"the {name} is for a {extensions.product_name}, the report comes from a {product}",
        )
    if signer == VCEK:
        if extensions.hwid is None or extensions.csp_id is not None:
            raise AppraisalFailure(Reason.BROKEN_CHAIN, "the VCEK has no hwID extension")
        if not hmac.compare_digest(extensions.hwid, kds_hwid(product, chip_id)):
            raise AppraisalFailure(Reason.BROKEN_CHAIN, "the VCEK belongs to another chip")
    elif extensions.csp_id is None or extensions.hwid is not None:
        raise AppraisalFailure(Reason.BROKEN_CHAIN, "the VLEK has no cspID extension")
    want = _check_tcb(product, tcb).as_dict()
    for field in tcb_components(product):
        have = extensions.spl.get(field)
        if have is None:
            raise AppraisalFailure(Reason.BROKEN_CHAIN, f"the {name} has no {field} SPL extension")
        if have != want[field]:
            raise AppraisalFailure(
                Reason.BROKEN_CHAIN,
                f"the {name} was issued for another TCB ({field} {have}, report {want[field]})",
            )
