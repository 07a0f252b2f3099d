"""X25519 key pairs and key agreement.

The private half is wrapped in :class:`AgreementKey`, which refuses pickling and
does not print its secret; exporting the raw bytes (needed only to Shamir-share
the mask key) is an explicit, named call.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from sealagg.crypto.errors import InvalidPublicKeyError, MalformedMessageError

PUBLIC_KEY_BYTES = 32
PRIVATE_KEY_BYTES = 32

#: A fixed, public scalar used only to test public keys (see :func:`check_public_key`).
_PROBE = X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def check_public_key(public: bytes, *, owner: str) -> None:
    """Refuse an X25519 public key that is all-zero or of small order.

    X25519 clamps every private scalar to a multiple of the cofactor 8, so a point of
    order 1, 2, 4 or 8 (on the curve or its twist, in any encoding) gives the
    all-zero shared secret with *every* private key: masks and share keys built on it
    would be public constants. One exchange with a fixed scalar therefore decides it
    exactly (``cryptography`` refuses the all-zero result). Checked at advertisement,
    by the server and by every client, so such a key is refused by name before anyone
    builds on it, instead of aborting each neighbour later.
    """
    if len(public) != PUBLIC_KEY_BYTES:
        raise InvalidPublicKeyError(f"{owner}: an X25519 public key is 32 bytes")
    try:
        _PROBE.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise InvalidPublicKeyError(
            f"{owner} advertised a low-order (or all-zero) X25519 public key"
        ) from None


class AgreementKey:
    """An X25519 private key used for one round and one purpose."""

    __slots__ = ("_private", "public_bytes")

    def __init__(self, private: X25519PrivateKey) -> None:
        self._private = private
        self.public_bytes: bytes = private.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> AgreementKey:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> AgreementKey:
        """Rebuild a key from reconstructed secret bytes (server side, dropped peers)."""
        if len(raw) != PRIVATE_KEY_BYTES:
            raise MalformedMessageError("an X25519 private key is 32 bytes")
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def export_private_bytes_for_sharing(self) -> bytes:
        """The raw secret, only to split it into Shamir shares."""
        return self._private.private_bytes_raw()

    def exchange(self, peer_public: bytes) -> bytes:
        """Raw X25519 shared secret with ``peer_public``; always pass it through HKDF."""
        if len(peer_public) != PUBLIC_KEY_BYTES:
            raise MalformedMessageError("an X25519 public key is 32 bytes")
        try:
            return self._private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError:  # a low-order point: the all-zero shared secret
            raise InvalidPublicKeyError(
                "a low-order (or all-zero) X25519 public key gives no shared secret"
            ) from None

    def __reduce__(self) -> object:
        raise TypeError("AgreementKey holds a secret and cannot be pickled")

    def __repr__(self) -> str:
        return f"AgreementKey(public={self.public_bytes.hex()[:16]}…)"
