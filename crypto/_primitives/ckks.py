"""CKKS through TenSEAL: the only module of ours that imports TenSEAL.

Two context handles keep the key model visible in the types: :class:`PublicContext`
(what the appliance and the data owners hold: encrypt and add, never decrypt) and
:class:`SecretContext` (the key holder's; refuses pickling, exports its secret only
through a named call). Loading a ciphertext checks it against the context it is
meant for (ring degree, level, scale, two polynomials, canonical bytes), because a
ciphertext made under other parameters may otherwise load and decrypt to garbage. The
canonical bytes are TenSEAL's layout with SEAL's compression off (:mod:`.ckks_wire` says why
and how they are checked without re-serializing).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
from collections.abc import Callable, Sequence

import numpy as np

from sealagg.crypto._primitives.ckks_wire import CanonicalLayout, WireFormatError, uncompressed
from sealagg.crypto.errors import CkksCiphertextError, CkksKeyError, CkksParameterError

try:  # optional (extra "he"): everything else of sealagg imports and runs without it
    import tenseal as ts
except ImportError:  # pragma: no cover - exercised only where the extra is absent
    ts = None


def _require() -> None:
    if ts is None:
        raise CkksParameterError("mode ckks needs TenSEAL: pip install 'sealagg[he]'")


#: Largest coefficient-modulus bit total SEAL allows at 128-bit security, per ring degree.
MAX_SECURE_COEFF_BITS = {4096: 109, 8192: 218, 16384: 438, 32768: 881}


def _ciphertext_error(what: str) -> CkksCiphertextError:
    return CkksCiphertextError(f"ciphertext refused: {what}")


@functools.cache
def _zstd() -> Callable[[bytes, int], bytes]:
    """zstd decompression from the library SEAL itself uses inside TenSEAL's extension.

    Used only on a party's own fresh serialization (never on received bytes), to write it
    without SEAL's compression; decompression is deterministic, so the result is the same with
    any correct decoder.
    """
    try:
        lib = ctypes.CDLL(ts._ts_cpp.__file__)
        decompress, is_error = lib.ZSTD_decompress, lib.ZSTD_isError
    except (AttributeError, OSError) as exc:  # pragma: no cover - depends on the TenSEAL build
        raise CkksParameterError(f"this TenSEAL build exposes no zstd decoder: {exc}") from None
    decompress.restype = ctypes.c_size_t
    decompress.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    is_error.restype = ctypes.c_uint
    is_error.argtypes = [ctypes.c_size_t]

    def run(frame: bytes, size: int) -> bytes:
        out = ctypes.create_string_buffer(size)
        written = decompress(out, size, frame, len(frame))
        if is_error(written) or written != size:
            raise CkksParameterError("TenSEAL's own ciphertext did not decompress")
        return out.raw

    return run


def _plain_bytes(serialized: bytes) -> bytes:
    """A fresh vector's serialization in the round's canonical (uncompressed) encoding."""
    try:
        return uncompressed(serialized, _zstd())
    except WireFormatError as exc:  # pragma: no cover - only with another TenSEAL layout
        raise CkksParameterError(f"unexpected TenSEAL serialization: {exc}") from None


class PublicContext:
    """A CKKS context without a secret key: encrypts and adds, cannot decrypt."""

    __slots__ = (
        "_ctx",
        "_layout",
        "coeff_mod_count",
        "fingerprint",
        "poly_modulus_degree",
        "scale",
    )

    def __init__(self, ctx: ts.Context, serialized: bytes) -> None:
        if ctx.has_secret_key() or ctx.is_private():
            raise CkksKeyError("this context holds a secret key; only a public context is allowed")
        self._ctx = ctx
        self.fingerprint = hashlib.sha256(serialized).digest()
        vector = ts.ckks_vector(ctx, [0.0])
        probe = vector.ciphertext()[0]
        self.poly_modulus_degree = int(probe.poly_modulus_degree())
        self.coeff_mod_count = int(probe.coeff_modulus_size())
        self.scale = float(ctx.global_scale)
        # Two polynomials of N coefficients per prime, 8 bytes each: the only free bytes.
        coefficients = 2 * self.poly_modulus_degree * self.coeff_mod_count * 8
        self._layout = CanonicalLayout.from_probe(_plain_bytes(vector.serialize()), coefficients)

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int) -> PublicContext:
        """Load a serialized public context; refuses one carrying a secret key."""
        _require()
        if len(data) > max_bytes:
            raise CkksKeyError(f"context is {len(data)} bytes, at most {max_bytes} accepted")
        try:
            ctx = ts.context_from(bytes(data))
        except (ValueError, RuntimeError, TypeError) as exc:
            raise CkksKeyError(f"not a CKKS context: {exc}") from None
        return cls(ctx, bytes(data))

    def encrypt(self, values: np.ndarray) -> bytes:
        """Public-key encryption of at most one ciphertext's worth of slots."""
        vector = ts.ckks_vector(self._ctx, np.asarray(values, dtype=np.float64).tolist())
        return _plain_bytes(vector.serialize())

    def load(self, data: bytes, *, slots_used: int) -> ts.CKKSVector:
        """Parse one ciphertext and check it was made for this context's parameters."""
        data = bytes(data)
        try:
            vector = ts.ckks_vector_from(self._ctx, data)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise _ciphertext_error(
                f"does not parse under the round's parameters ({exc})"
            ) from None
        # One ciphertext, one byte string: every byte but the coefficients equals the round's
        # template, made from a fresh encryption under this context (so ring degree, level,
        # two polynomials, NTT form, scale and slot count are those of a fresh ciphertext), and
        # SEAL refused unreduced coefficients above (see ckks_wire). Only when the template
        # does not match are the fields read one by one, to say which differs.
        if not self._layout.is_canonical(data, slots_used):
            self._refuse_fields(vector, slots_used)
            raise _ciphertext_error(
                "bytes are not the canonical encoding (trailing, altered or compressed data)"
            )
        if self._layout.second_polynomial_is_zero(data, slots_used):
            raise _ciphertext_error("not a fresh two-polynomial ciphertext (transparent)")
        return vector

    def _refuse_fields(self, vector: ts.CKKSVector, slots_used: int) -> None:
        """Raise the first way ``vector`` differs from a fresh ciphertext of this round."""
        parts = vector.ciphertext()
        if len(parts) != 1:
            raise _ciphertext_error("expected exactly one ciphertext per chunk")
        ct = parts[0]
        if int(ct.poly_modulus_degree()) != self.poly_modulus_degree:
            raise _ciphertext_error(f"made for ring degree {ct.poly_modulus_degree()}")
        if int(ct.coeff_modulus_size()) != self.coeff_mod_count:
            raise _ciphertext_error("made at another modulus level than a fresh encryption")
        if int(ct.size()) != 2 or ct.is_transparent() or not ct.is_ntt_form():
            raise _ciphertext_error("not a fresh two-polynomial ciphertext")
        scale = float(ct.scale)
        if not abs(scale - self.scale) <= 1e-8 + 1e-9 * abs(self.scale):  # NaN refused too
            raise _ciphertext_error(f"scale {scale} differs from the round's {self.scale}")
        if vector.size() != slots_used:
            raise _ciphertext_error(f"holds {vector.size()} values, expected {slots_used}")

    @staticmethod
    def add(total: ts.CKKSVector | None, vector: ts.CKKSVector) -> ts.CKKSVector:
        if total is None:
            return vector
        total += vector
        return total

    @staticmethod
    def serialize(vector: ts.CKKSVector) -> bytes:
        return vector.serialize()

    def try_decrypt(self, vector: ts.CKKSVector) -> np.ndarray:
        """Always fails: a public context cannot decrypt (used to prove it in tests)."""
        try:
            return np.asarray(vector.decrypt(), dtype=np.float64)
        except ValueError as exc:
            raise CkksKeyError(f"cannot decrypt without the secret key: {exc}") from None

    def __reduce__(self) -> object:
        raise TypeError("contexts are serialized explicitly, never pickled")


class SecretContext:
    """The key holder's CKKS context (secret key inside)."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: ts.Context) -> None:
        if not ctx.has_secret_key():
            raise CkksKeyError("this context has no secret key")
        self._ctx = ctx

    @classmethod
    def generate(
        cls, poly_modulus_degree: int, coeff_mod_bit_sizes: Sequence[int], scale_bits: int
    ) -> SecretContext:
        """Fresh keys. Relinearization and Galois keys are not made: sums need neither."""
        _require()
        try:
            ctx = ts.context(
                ts.SCHEME_TYPE.CKKS,
                poly_modulus_degree,
                coeff_mod_bit_sizes=list(coeff_mod_bit_sizes),
            )
        except (ValueError, RuntimeError) as exc:
            raise CkksParameterError(f"TenSEAL refused the parameters: {exc}") from None
        ctx.global_scale = float(2**scale_bits)
        return cls(ctx)

    @classmethod
    def from_secret_bytes(cls, data: bytes) -> SecretContext:
        _require()
        try:
            ctx = ts.context_from(bytes(data))
        except (ValueError, RuntimeError, TypeError) as exc:
            raise CkksKeyError(f"not a CKKS context: {exc}") from None
        return cls(ctx)

    def public_bytes(self) -> bytes:
        """The public context (public key only: no secret, relinearization or Galois keys)."""
        public = self._ctx.copy()
        public.make_context_public()
        return public.serialize(
            save_public_key=True,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=False,
        )

    def export_secret_bytes_for_sealing(self) -> bytes:
        """The whole context with its secret key: only to seal it to a recipient."""
        return self._ctx.serialize(
            save_public_key=True,
            save_secret_key=True,
            save_galois_keys=False,
            save_relin_keys=False,
        )

    def decrypt(self, data: bytes) -> np.ndarray:
        """Decrypt one serialized ciphertext (the sum) with the secret key."""
        try:
            vector = ts.ckks_vector_from(self._ctx, bytes(data))
        except (ValueError, RuntimeError, TypeError) as exc:
            raise _ciphertext_error(
                f"does not parse under the key holder's context ({exc})"
            ) from None
        return np.asarray(vector.decrypt(), dtype=np.float64)

    def __reduce__(self) -> object:
        raise TypeError("SecretContext holds a secret key and cannot be pickled")

    def __repr__(self) -> str:
        return "SecretContext(<secret>)"
