"""Intel's CRLs for TDX: the Root CA CRL (PCK CAs, TCB Signing) and the PCK CRLs (PCK leaves).

A CRL counts only if its issuer signed it and ``thisUpdate <= now < nextUpdate``: a stale
list is refused, not ignored, or whoever withholds the fresh one keeps a revoked key usable.
Of several copies (the kit's and the appliance's) the newest that verifies is used, so an
older genuine list from before a revocation cannot hide it (:func:`newest_crl`).
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from sealagg.attest.collateral import CollateralBundle
from sealagg.attest.errors import AppraisalFailure, Reason
from sealagg.attest.tdx_documents import collateral_invalid, common_name, utc


def load_crl(
    blob: bytes, issuer: x509.Certificate, now: float, what: str
) -> x509.CertificateRevocationList:
    """A CRL (DER or PEM) signed by ``issuer`` and current at ``now``; else COLLATERAL_INVALID."""
    try:
        blob = bytes(blob)
        if blob.lstrip().startswith(b"-----BEGIN"):
            crl = x509.load_pem_x509_crl(blob)
        else:
            crl = x509.load_der_x509_crl(blob)
        if crl.issuer != issuer.subject:
            raise collateral_invalid(f"{what} is not issued by {common_name(issuer) or 'its CA'}")
        if not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
            raise collateral_invalid(f"{what} is not signed by its issuer")
        last, upcoming = crl.last_update_utc, crl.next_update_utc
    except (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion) as exc:
        raise collateral_invalid(f"{what} is not a valid CRL: {exc}") from None
    at = utc(now)
    if upcoming is None or at >= upcoming:
        raise collateral_invalid(
            f"{what} is stale (its nextUpdate has passed); fetch a fresh bundle"
        )
    if at < last:
        raise collateral_invalid(f"{what} is not yet valid (issued in the future)")
    return crl


def newest_crl(
    collateral: CollateralBundle,
    name: str,
    why: str,
    what: str,
    issuer: x509.Certificate,
    now: float,
) -> x509.CertificateRevocationList:
    """The CRL copy with the latest thisUpdate among those signed by ``issuer`` and current:
    an older genuine list (from before a revocation) cannot hide a newer one."""
    collateral.require(name, why)
    best: x509.CertificateRevocationList | None = None
    first: AppraisalFailure | None = None
    for blob in collateral.candidates(name):
        try:
            crl = load_crl(blob, issuer, now, what)
        except AppraisalFailure as failure:
            first = first or failure
            continue
        if best is None or crl.last_update_utc > best.last_update_utc:
            best = crl
    if best is None:
        raise first or collateral_invalid(f"no copy of {name} verifies")
    return best


def not_revoked(cert: x509.Certificate, crl: x509.CertificateRevocationList, what: str) -> None:
    """REVOKED if ``crl`` lists ``cert``'s serial (``crl`` already verified for its issuer)."""
    try:
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    except ValueError as exc:
        raise collateral_invalid(f"a CRL entry is malformed: {exc}") from None
    if entry is not None:
        raise AppraisalFailure(Reason.REVOKED, f"{what} is revoked by Intel's CRL")
