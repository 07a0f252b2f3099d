"""Certificate-chain checks for vendor endorsement chains (AMD ARK/ASK/VCEK, Intel PCK).

Only this module and the format parsers touch ``cryptography``. Every signature
algorithm the vendors use is handled explicitly: AMD signs ARK and ASK with
RSASSA-PSS (SHA-384, 48-byte salt) and the VCEK with PSS too; Intel's PCK chain
is ECDSA P-256. PSS parameters are taken from the certificate itself, never guessed.

Every public function here refuses with :class:`AppraisalFailure` and never raises anything
else, whatever it is given: ``cryptography`` parses certificate fields lazily, so a hostile
certificate can make ``issuer``, ``extensions``, ``public_key()`` or the signature algorithm
raise long after loading. :func:`_refusing` is the backstop on each function.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import hmac
from collections.abc import Callable, Sequence
from typing import ParamSpec, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from sealagg.attest.errors import AppraisalFailure, Reason

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _refusing(reason: Reason) -> Callable[[Callable[_P, _T]], Callable[_P, _T]]:
    """Turn any exception but AppraisalFailure into a refusal with ``reason``."""

    def wrap(fn: Callable[_P, _T]) -> Callable[_P, _T]:
        @functools.wraps(fn)
        def inner(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            try:
                return fn(*args, **kwargs)
            except AppraisalFailure:
                raise
            except Exception as exc:  # hostile certificates: refuse, never crash
                raise AppraisalFailure(
                    reason, f"{fn.__name__}: {type(exc).__name__}: {str(exc)[:200]}"
                ) from None

        return inner

    return wrap


@_refusing(Reason.BROKEN_CHAIN)
def load_certificate(blob: bytes, what: str) -> x509.Certificate:
    try:
        if blob.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(blob)
        return x509.load_der_x509_certificate(blob)
    except (ValueError, TypeError):
        raise AppraisalFailure(Reason.BROKEN_CHAIN, f"{what} is not a certificate") from None


@_refusing(Reason.BROKEN_CHAIN)
def load_pem_chain(blob: bytes, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(blob)
    except (ValueError, TypeError):
        raise AppraisalFailure(Reason.BROKEN_CHAIN, f"{what} is not a PEM chain") from None
    if not certs:
        raise AppraisalFailure(Reason.BROKEN_CHAIN, f"{what} holds no certificate")
    return certs


@_refusing(Reason.BROKEN_CHAIN)
def fingerprint(cert: x509.Certificate) -> bytes:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()


@_refusing(Reason.BROKEN_CHAIN)
def verify_issued_by(cert: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    """Raise BROKEN_CHAIN unless ``issuer`` (a CA) signed ``cert``."""
    try:  # every field read may parse hostile DER for the first time
        if cert.issuer != issuer.subject:
            raise AppraisalFailure(Reason.BROKEN_CHAIN, f"{what}: issuer name does not match")
        try:
            bc = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
            is_ca = bc.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise AppraisalFailure(Reason.BROKEN_CHAIN, f"{what}: the issuer is not a CA")
        key = issuer.public_key()
        algorithm = cert.signature_hash_algorithm
        if algorithm is None:
            raise AppraisalFailure(Reason.BROKEN_CHAIN, f"{what}: unsupported signature algorithm")
        if isinstance(key, rsa.RSAPublicKey):
            params = cert.signature_algorithm_parameters
            if not isinstance(params, padding.PSS | padding.PKCS1v15):
                raise AppraisalFailure(Reason.BROKEN_CHAIN, f"{what}: unexpected RSA padding")
            key.verify(cert.signature, cert.tbs_certificate_bytes, params, algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
        else:
            raise AppraisalFailure(Reason.BROKEN_CHAIN, f"{what}: unsupported issuer key type")
    except InvalidSignature:
        raise AppraisalFailure(Reason.BROKEN_CHAIN, f"{what}: signature does not verify") from None
    except (UnsupportedAlgorithm, ValueError, TypeError) as exc:
        raise AppraisalFailure(Reason.BROKEN_CHAIN, f"{what}: {exc}") from None


@_refusing(Reason.BROKEN_CHAIN)
def check_validity(cert: x509.Certificate, now: float, what: str) -> None:
    try:
        at = datetime.datetime.fromtimestamp(now, tz=datetime.UTC)
    except (OverflowError, OSError, ValueError, TypeError):
        raise AppraisalFailure(Reason.BROKEN_CHAIN, f"{what}: no valid time to check") from None
    if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
        raise AppraisalFailure(Reason.BROKEN_CHAIN, f"{what} is not valid at this time")


@_refusing(Reason.BROKEN_CHAIN)
def verify_chain(
    chain: Sequence[x509.Certificate],
    names: Sequence[str],
    anchors: Sequence[bytes],
    now: float,
) -> None:
    """``chain`` is root first; the root must be self-signed and pinned by fingerprint."""
    if not chain or len(chain) != len(names):
        raise AppraisalFailure(Reason.BROKEN_CHAIN, "the certificate chain is empty or incomplete")
    root = chain[0]
    if not any(hmac.compare_digest(fingerprint(root), a) for a in anchors):
        raise AppraisalFailure(
            Reason.UNTRUSTED_ROOT, f"{names[0]} is not a trust anchor named by the policy"
        )
    verify_issued_by(root, root, f"{names[0]} (self-signed)")
    for i, cert in enumerate(chain):
        check_validity(cert, now, names[i])
        if i:
            verify_issued_by(cert, chain[i - 1], f"{names[i]} by {names[i - 1]}")


@_refusing(Reason.BAD_SIGNATURE)
def verify_ecdsa(
    key: object, signature_der: bytes, message: bytes, algorithm: object, what: str
) -> None:
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise AppraisalFailure(Reason.BROKEN_CHAIN, f"{what}: key is not an EC key")
    try:
        key.verify(signature_der, message, ec.ECDSA(algorithm))  # type: ignore[arg-type]
    except (InvalidSignature, ValueError):
        raise AppraisalFailure(Reason.BAD_SIGNATURE, f"{what} does not verify") from None
