"""HKDF-SHA256: every key in the protocol is derived with a purpose label.

Flower's SecAgg+ derives keys with no HKDF ``info``; we always bind a label,
so a key made for share encryption can never double as a mask key.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32


def derive_key(secret: bytes, *, salt: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    """Derive ``length`` bytes from ``secret``; ``salt`` and ``info`` must be given."""
    if not info:
        raise ValueError("HKDF info (the key's purpose label) must not be empty")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)
