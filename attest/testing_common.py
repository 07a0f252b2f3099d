"""Certificate and encoding helpers shared by the fake SNP and TDX hardware of the tests.

The vendor-specific parts live in :mod:`testing_snp` and :mod:`testing_tdx`; this module
holds the certificate helpers they share and re-exports both.

Shipped with the package (as Tink ships its ``testing`` module) so the attest,
appliance and shim tests build evidence the same way. The keys and certificate
chains are generated here; nothing in this module is trusted by a real policy.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from sealagg.attest import sevsnp

_DER = serialization.Encoding.DER
_PEM = serialization.Encoding.PEM
DEFAULT_TCB = sevsnp.TcbVersion(bootloader=3, tee=0, snp=8, microcode=115)
AMD_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


def spki_der(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        _DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    public_key: object,
    issuer: str,
    signing_key: object,
    *,
    ca: bool,
    hash_alg: hashes.HashAlgorithm,
    pss: padding.PSS | None = None,
    extensions: Mapping[x509.ObjectIdentifier, bytes] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    for oid, value in (extensions or {}).items():
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
    return builder.sign(signing_key, hash_alg, rsa_padding=pss)  # type: ignore[arg-type]


def _der_int(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


def _raw(der: bytes) -> bytes:
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")
