"""t-of-n Shamir secret sharing over GF(p), p = 2**32 - 5, vectorised with numpy uint64.

Why this field: p = 4294967291 is the largest prime below 2**32, so every element
fits in 32 bits and a product of two elements fits in a uint64 without overflow.
All field arithmetic therefore runs as whole-array numpy uint64 operations
(products of matrices use 16-bit limbs so that sums cannot overflow either).
Python-level loops run over log2(threshold) (doubling, tree products), over the
threshold (prefix products when checking extra shares), or over blocks of 2**16
matmul terms; never over bytes, chunks or shares, except to slice the output into,
and check the sizes of, the per-holder ``bytes`` objects the API exchanges.

Encoding: a secret of L bytes is cut into ceil(L / 3) chunks of 3 bytes (24 bits,
the last one zero padded) and every chunk is shared with its own independent
random polynomial of degree t - 1. A share is the polynomials' values at the
holder's x, serialised as 4-byte big-endian field elements (44 bytes for a
32-byte secret). The x is not part of the share: the protocol knows who holds
which x. Because chunks are only 24 bits wide, a reconstruction from wrong
shares usually fails to decode (each element must be < 2**24 and the padding
zero; a corrupted element slips through with probability about 2**-8). That is
the only check possible with exactly t shares. With more than t shares, every
extra share is checked against the polynomial, which catches any wrong share.

Randomness: coefficients are 32-bit words from :func:`secrets.token_bytes`,
rejection sampled into [0, p) so there is no modulo bias (numpy.random is not
used anywhere).

Timing: the field arithmetic is not constant-time, and need not be. Shares are
never compared with secrets, and the sequence of numpy operations (hence the
timing of polynomial evaluation and interpolation) depends only on public sizes
(secret length, threshold, number of holders), not on secret values. No code
path branches on a secret or coefficient value, except the rejection sampler
discarding a draw (which is then thrown away) and the final validity check of a
reconstruction, whose outcome is reported anyway.

Errors: bad arguments from the local caller (the splitting side) raise
ValueError; bad input that arrives in protocol messages (shares, x-coordinates)
raises the errors of :mod:`crypto.errors`.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from secrets import token_bytes
from typing import SupportsIndex

import numpy as np
import numpy.typing as npt

from sealagg.crypto.errors import (
    InconsistentSharesError,
    MalformedMessageError,
    NotEnoughSharesError,
)

__all__ = [
    "CHUNK_BYTES",
    "ELEMENT_BYTES",
    "PRIME",
    "combine_many",
    "combine_shares",
    "lagrange_coefficients_at_zero",
    "share_length",
    "split_secret",
    "split_secrets",
]

FieldArray = npt.NDArray[np.uint64]

#: The field modulus: the largest prime below 2**32.
PRIME = 4294967291
#: Secret bytes carried by one field element (24 bits < p, so the map is injective).
CHUNK_BYTES = 3
#: Serialised size of one field element (big-endian uint32).
ELEMENT_BYTES = 4

_P = np.uint64(PRIME)
_LIMB_BITS = np.uint64(16)
_LIMB_MASK = np.uint64(0xFFFF)
#: Inner-product terms summed before a reduction: 2**16 products of a field element
#: (< 2**32) and a 16-bit limb (< 2**16) stay below 2**64.
_MAX_TERMS = 1 << 16
_BIG_ENDIAN_U32 = np.dtype(">u4")


# ---------------------------------------------------------------------------
# Field arithmetic on uint64 arrays (every input element < p).
# ---------------------------------------------------------------------------


def _mulmod(a: FieldArray, b: FieldArray | np.uint64) -> FieldArray:
    """Elementwise a * b mod p; the product of two elements < 2**32 fits in uint64."""
    product = np.multiply(a, b)
    product %= _P
    return product


def _mulmod_into(a: FieldArray, b: FieldArray, out: FieldArray) -> None:
    """out = a * b mod p without temporaries (for loops over short rows)."""
    np.multiply(a, b, out=out)
    np.remainder(out, _P, out=out)


def _matmul_mod(a: FieldArray, b: FieldArray) -> FieldArray:
    """(a @ b) mod p for field matrices, exact in uint64.

    A plain uint64 matmul would overflow (a sum of products near 2**64), so ``b``
    is split into 16-bit limbs: each product is < 2**48 and up to 2**16 of them
    can be summed without overflow. Longer inner dimensions are processed in
    blocks and the partial results reduced and added.
    """
    rows, inner = a.shape
    cols = b.shape[1]
    limbs = np.concatenate([b & _LIMB_MASK, b >> _LIMB_BITS], axis=1)
    result = np.zeros((rows, cols), dtype=np.uint64)
    for start in range(0, inner, _MAX_TERMS):
        stop = start + _MAX_TERMS
        partial = a[:, start:stop] @ limbs[start:stop]
        high = (partial[:, cols:] % _P) << _LIMB_BITS
        result += (high + partial[:, :cols] % _P) % _P
        result %= _P
    return result


def _prod_last_axis(a: FieldArray) -> FieldArray:
    """Product mod p along the last axis, by pairwise halving (log2 numpy calls)."""
    while a.shape[-1] > 1:
        half = a.shape[-1] // 2
        paired = _mulmod(a[..., :half], a[..., half : 2 * half])
        a = np.concatenate([paired, a[..., 2 * half :]], axis=-1)
    return a[..., 0]


def _inverse(a: FieldArray) -> FieldArray:
    """Elementwise inverse a**(p-2) mod p (Fermat), batched; a must be non-zero.

    The square-and-multiply sequence follows the public exponent only.
    """
    result = np.ones_like(a)
    base = a.copy()
    exponent = PRIME - 2
    while exponent:
        if exponent & 1:
            result = _mulmod(result, base)
        base = _mulmod(base, base)
        exponent >>= 1
    return result


def _powers(xs: FieldArray, count: int) -> FieldArray:
    """Matrix V[i, j] = xs[i]**j mod p for j < count, filled by doubling blocks."""
    v = np.empty((xs.shape[0], count), dtype=np.uint64)
    v[:, 0] = 1
    filled = 1
    step = xs.copy()  # xs ** filled
    while filled < count:
        block = min(filled, count - filled)
        v[:, filled : filled + block] = _mulmod(v[:, :block], step[:, None])
        step = _mulmod(step, step)
        filled += block
    return v


def _sub(a: FieldArray, b: FieldArray) -> FieldArray:
    """Elementwise (a - b) mod p (broadcasting) without unsigned wrap-around."""
    difference = a + (_P - b)  # in [1, 2p)
    np.subtract(difference, _P, out=difference, where=difference >= _P)
    return difference


def _denominators(xs: FieldArray) -> FieldArray:
    """d[i] = prod_{j != i} (xs[i] - xs[j]) mod p: O(t^2) work, log2(t) numpy calls.

    Non-zero exactly when the xs are distinct, which callers check first.
    """
    gaps = _sub(xs[:, None], xs[None, :])
    np.fill_diagonal(gaps, 1)
    return _prod_last_axis(gaps)


def _lagrange_at_zero(xs: FieldArray) -> FieldArray:
    """lambda[i] = prod_{j != i} (0 - xs[j]) / (xs[i] - xs[j]) mod p.

    The numerator is prod_all(-x) / (-xs[i]), so one batched inversion of
    (-xs[i]) * d[i] gives every coefficient.
    """
    negated = _P - xs
    numerator = _prod_last_axis(negated[None, :])[0]
    return _mulmod(_inverse(_mulmod(negated, _denominators(xs))), numerator)


def _lagrange_basis(xs: FieldArray, points: FieldArray) -> FieldArray:
    """L[e, i] = prod_{j != i} (points[e] - xs[j]) / (xs[i] - xs[j]) mod p.

    Row e turns the values at ``xs`` of any polynomial of degree < len(xs) into
    its value at ``points[e]``. Numerators come from prefix and suffix products,
    one Python step per x over vectors of all points (O(len(points) * t) work);
    the t denominators from :func:`_denominators` and one batched inversion.
    """
    t = xs.shape[0]
    diffs = _sub(points[None, :], xs[:, None])  # (t, points)
    prefix = np.ones_like(diffs)  # prefix[i] = prod_{j < i} diffs[j]
    suffix = np.ones_like(diffs)  # suffix[i] = prod_{j > i} diffs[j]
    for i in range(1, t):
        _mulmod_into(prefix[i - 1], diffs[i - 1], prefix[i])
        _mulmod_into(suffix[t - i], diffs[t - i], suffix[t - 1 - i])
    weights = _inverse(_denominators(xs))
    return np.ascontiguousarray(_mulmod(_mulmod(prefix, suffix), weights[:, None]).T)


# ---------------------------------------------------------------------------
# Randomness, encoding and serialisation.
# ---------------------------------------------------------------------------


def _random_elements(count: int) -> FieldArray:
    """``count`` independent uniform field elements from the OS CSPRNG.

    Each candidate is a uniform 32-bit word; words >= p (probability 5 / 2**32)
    are rejected and redrawn, so the result is exactly uniform on [0, p).
    """
    out = np.empty(count, dtype=np.uint64)
    filled = 0
    while filled < count:
        words = np.frombuffer(token_bytes(ELEMENT_BYTES * (count - filled)), _BIG_ENDIAN_U32)
        accepted = words[words < PRIME]
        out[filled : filled + accepted.shape[0]] = accepted
        filled += accepted.shape[0]
    return out


def _element_count(secret_length: int) -> int:
    """Field elements needed for a secret of ``secret_length`` bytes."""
    return -(-secret_length // CHUNK_BYTES)


def share_length(secret_length: int) -> int:
    """Bytes in one share of a ``secret_length``-byte secret (44 for 32 bytes)."""
    return ELEMENT_BYTES * _element_count(secret_length)


def _encode(secrets: Sequence[bytes], length: int) -> FieldArray:
    """Secrets (all ``length`` bytes) as a (len(secrets), k) matrix of 24-bit elements."""
    k = _element_count(length)
    padded = np.zeros((len(secrets), k * CHUNK_BYTES), dtype=np.uint8)
    padded[:, :length] = np.frombuffer(b"".join(secrets), dtype=np.uint8).reshape(-1, length)
    chunks = padded.reshape(len(secrets), k, CHUNK_BYTES).astype(np.uint64)
    return (chunks[..., 0] << np.uint64(16)) | (chunks[..., 1] << np.uint64(8)) | chunks[..., 2]


def _decode(elements: FieldArray, length: int) -> list[bytes]:
    """Inverse of :func:`_encode`; a non-canonical encoding means a wrong reconstruction."""
    raw = elements.astype(_BIG_ENDIAN_U32).view(np.uint8).reshape(elements.shape[0], -1, 4)
    body = raw[..., 1:].reshape(elements.shape[0], -1)
    if raw[..., 0].any() or body[:, length:].any():
        raise InconsistentSharesError(
            "the shares do not reconstruct a valid secret encoding (wrong or tampered shares)"
        )
    return [row[:length].tobytes() for row in body]


def _serialise(values: FieldArray, per_holder: int) -> list[list[bytes]]:
    """(n, per_holder * k) share values as n lists of per_holder share byte strings."""
    blob = values.astype(_BIG_ENDIAN_U32).tobytes()
    size = len(blob) // (values.shape[0] * per_holder)
    pieces = [blob[start : start + size] for start in range(0, len(blob), size)]
    return [pieces[i : i + per_holder] for i in range(0, len(pieces), per_holder)]


def _parse_shares(shares: Sequence[bytes], secret_length: int) -> FieldArray:
    """Shares as a (len(shares), k) element matrix, rejecting malformed input."""
    expected = share_length(secret_length)
    try:
        blob = b"".join(shares)
    except TypeError:
        raise MalformedMessageError("a share is not a byte string") from None
    if len(blob) != expected * len(shares) or set(map(len, shares)) - {expected}:
        raise MalformedMessageError(
            f"a share of a {secret_length}-byte secret must be {expected} bytes"
        )
    words = np.frombuffer(blob, dtype=_BIG_ENDIAN_U32)
    if (words >= PRIME).any():
        raise MalformedMessageError("a share contains a value outside the field")
    return words.astype(np.uint64).reshape(len(shares), _element_count(secret_length))


# ---------------------------------------------------------------------------
# Argument validation.
# ---------------------------------------------------------------------------


def _as_x(x: SupportsIndex) -> int:
    """An evaluation point as an int in 1..p-1, else ValueError/TypeError."""
    if isinstance(x, bool):
        raise TypeError("an x-coordinate must be an int, not a bool")
    value = operator.index(x)
    if not 1 <= value < PRIME:
        raise ValueError(f"x-coordinate {value} is outside 1..{PRIME - 1}")
    return value


def _field_points(xs: Sequence[SupportsIndex]) -> FieldArray:
    """Distinct evaluation points as a uint64 array, else ValueError/TypeError."""
    values = [_as_x(x) for x in xs]
    if len(set(values)) != len(values):
        raise ValueError("x-coordinates must be distinct")
    return np.array(values, dtype=np.uint64)


def _received_points(xs: Sequence[SupportsIndex]) -> FieldArray:
    """Like :func:`_field_points` for x-coordinates that came with shares."""
    try:
        return _field_points(xs)
    except (TypeError, ValueError) as exc:
        raise MalformedMessageError(f"bad share x-coordinate: {exc}") from None


def _check_secret_length(secret_length: int) -> None:
    """Reject non-positive lengths: there is no share of an empty secret."""
    if secret_length < 1:
        raise ValueError("secret_length must be at least 1")


# ---------------------------------------------------------------------------
# Public API.
# ---------------------------------------------------------------------------


def split_secrets(secrets: Sequence[bytes], threshold: int, xs: Sequence[int]) -> list[list[bytes]]:
    """Share several equal-length secrets among the holders of ``xs`` in one pass.

    Returns ``result[i][j]``: the share of ``secrets[j]`` for ``xs[i]``. Any
    ``threshold`` holders can reconstruct a secret; fewer learn nothing about it.
    Every 3-byte chunk of every secret gets its own random polynomial.
    """
    if not secrets:
        raise ValueError("at least one secret is required")
    length = len(secrets[0])
    if length < 1 or any(len(s) != length for s in secrets):
        raise ValueError("secrets must be non-empty and of equal length")
    points = _field_points(xs)
    threshold = operator.index(threshold)
    if not 1 <= threshold <= len(points):
        raise ValueError(f"threshold must lie in 1..{len(points)} (the number of holders)")

    constants = _encode([bytes(s) for s in secrets], length).reshape(1, -1)
    width = constants.shape[1]
    random_part = _random_elements((threshold - 1) * width).reshape(threshold - 1, width)
    coefficients = np.concatenate([constants, random_part])
    values = _matmul_mod(_powers(points, threshold), coefficients)

    return _serialise(values, len(secrets))


def split_secret(secret: bytes, threshold: int, xs: Sequence[int]) -> list[bytes]:
    """Share one secret: element i of the result is the share for ``xs[i]``."""
    return [row[0] for row in split_secrets([secret], threshold, xs)]


def lagrange_coefficients_at_zero(xs: Sequence[int]) -> FieldArray:
    """The weights that turn shares held by ``xs`` into the secret (value at 0).

    Depends only on the holders, so a server reconstructing many secrets from
    the same holders computes them once. O(t^2) vectorised work.
    """
    points = _received_points(xs)
    if points.shape[0] == 0:
        raise NotEnoughSharesError("no shares to interpolate")
    return _lagrange_at_zero(points)


def combine_many(
    xs: Sequence[int],
    shares: Sequence[Sequence[bytes]],
    secret_length: int,
    *,
    coefficients: FieldArray | None = None,
) -> list[bytes]:
    """Reconstruct several secrets that were all shared among the holders ``xs``.

    ``shares[j][i]`` is the share of secret j held by ``xs[i]``; exactly
    threshold (= len(xs)) shares per secret, one interpolation for all.
    ``coefficients`` may pass a cached ``lagrange_coefficients_at_zero(xs)``.
    There are no extra shares to cross-check, so a wrong share is only caught
    by the encoding check (see the module docstring).
    """
    _check_secret_length(secret_length)
    if coefficients is None:
        coefficients = lagrange_coefficients_at_zero(xs)
    else:
        _received_points(xs)
        _check_coefficients(coefficients, len(xs))
    if not shares:
        return []
    if any(len(row) != len(xs) for row in shares):
        raise MalformedMessageError("every secret needs exactly one share per x-coordinate")

    values = _parse_shares([s for row in shares for s in row], secret_length)
    by_holder = values.reshape(len(shares), len(xs), -1).transpose(1, 0, 2).reshape(len(xs), -1)
    elements = _matmul_mod(coefficients[None, :], by_holder)
    return _decode(elements.reshape(len(shares), -1), secret_length)


def _check_coefficients(coefficients: FieldArray, count: int) -> None:
    """Catch a cached coefficient vector that cannot belong to ``count`` holders."""
    if (
        not isinstance(coefficients, np.ndarray)
        or coefficients.dtype != np.uint64
        or coefficients.shape != (count,)
        or (coefficients >= PRIME).any()
    ):
        raise ValueError("coefficients must be lagrange_coefficients_at_zero(xs)")


def combine_shares(shares: Mapping[int, bytes], threshold: int, secret_length: int) -> bytes:
    """Reconstruct a secret from ``{x: share}``.

    Uses the ``threshold`` shares with the smallest x; every further share must
    lie on the same polynomials, otherwise InconsistentSharesError (so a single
    bad share is always detected when more than threshold shares are present).
    """
    _check_secret_length(secret_length)
    if threshold < 1:
        raise ValueError("threshold must be at least 1")
    holders = sorted(shares, key=_received_x_key)
    points = _received_points(holders)
    values = _parse_shares([shares[x] for x in holders], secret_length)
    if len(holders) < threshold:
        raise NotEnoughSharesError(f"{len(holders)} shares supplied; threshold is {threshold}")

    chosen = points[:threshold]
    if len(holders) == threshold:
        secret = _matmul_mod(_lagrange_at_zero(chosen)[None, :], values)
    else:
        # Row 0 interpolates at x = 0 (the secret), the others at the extra xs.
        targets = np.concatenate([np.zeros(1, dtype=np.uint64), points[threshold:]])
        predicted = _matmul_mod(_lagrange_basis(chosen, targets), values[:threshold])
        if not np.array_equal(predicted[1:], values[threshold:]):
            raise InconsistentSharesError("the shares do not all lie on one polynomial")
        secret = predicted[:1]
    return _decode(secret, secret_length)[0]


def _received_x_key(x: object) -> int:
    """Sort key for received x-coordinates; a non-integer is a malformed message."""
    try:
        return operator.index(x)  # type: ignore[call-overload]
    except TypeError:
        raise MalformedMessageError(f"share x-coordinate {x!r} is not an integer") from None
