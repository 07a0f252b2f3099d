"""Bind evidence to the TLS key: report data = SHA-512(nonce || DER SubjectPublicKeyInfo).

Hardware report-data fields are 64 bytes, exactly one SHA-512 digest, so the
binding fills the field and an appliance cannot reuse evidence made for
another nonce or another TLS key (a relay).
"""

from __future__ import annotations

import hashlib

NONCE_BYTES = 32
REPORT_DATA_BYTES = 64


def report_data(nonce: bytes, spki_der: bytes) -> bytes:
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"a nonce is {NONCE_BYTES} bytes")
    if not spki_der:
        raise ValueError("the TLS key's SubjectPublicKeyInfo is empty")
    return hashlib.sha512(nonce + spki_der).digest()
