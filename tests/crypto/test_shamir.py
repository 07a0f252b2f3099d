"""Shamir sharing over GF(2**32 - 5): behaviour, error handling, and agreement
with an independent pure-Python-int reference implementation."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealagg.crypto._primitives import shamir
from sealagg.crypto._primitives.shamir import (
    combine_many,
    combine_shares,
    lagrange_coefficients_at_zero,
    split_secret,
    split_secrets,
)
from sealagg.crypto.errors import (
    InconsistentSharesError,
    MalformedMessageError,
    NotEnoughSharesError,
    ReconstructionError,
)

P = 4294967291  # written out here on purpose: the tests do not trust the module's constant

# ---------------------------------------------------------------------------
# Reference implementation: plain Python ints, textbook formulas, no numpy.
# ---------------------------------------------------------------------------


def ref_chunks(secret: bytes) -> list[int]:
    padded = secret + bytes(-len(secret) % 3)
    return [int.from_bytes(padded[i : i + 3], "big") for i in range(0, len(padded), 3)]


def ref_unchunk(values: Sequence[int], length: int) -> bytes:
    return b"".join(v.to_bytes(3, "big") for v in values)[:length]


def ref_pack(values: Sequence[int]) -> bytes:
    return b"".join(v.to_bytes(4, "big") for v in values)


def ref_unpack(share: bytes) -> list[int]:
    return [int.from_bytes(share[i : i + 4], "big") for i in range(0, len(share), 4)]


def ref_eval(coefficients: Sequence[int], x: int) -> int:
    return sum(c * pow(x, k, P) for k, c in enumerate(coefficients)) % P


def ref_split(secret: bytes, t: int, xs: Sequence[int], rng: random.Random) -> list[bytes]:
    polys = [[chunk] + [rng.randrange(P) for _ in range(t - 1)] for chunk in ref_chunks(secret)]
    return [ref_pack([ref_eval(poly, x) for poly in polys]) for x in xs]


def ref_lagrange(xs: Sequence[int], z: int) -> list[int]:
    coeffs = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * (z - xj) % P
                den = den * (xi - xj) % P
        coeffs.append(num * pow(den, -1, P) % P)
    return coeffs


def ref_interpolate(points: dict[int, int], z: int) -> int:
    xs = list(points)
    return sum(c * points[x] for c, x in zip(ref_lagrange(xs, z), xs, strict=True)) % P


def ref_combine(shares: dict[int, bytes], length: int) -> bytes:
    columns = {x: ref_unpack(s) for x, s in shares.items()}
    count = len(next(iter(columns.values())))
    values = [ref_interpolate({x: col[k] for x, col in columns.items()}, 0) for k in range(count)]
    return ref_unchunk(values, length)


def ref_poly_coefficients(points: dict[int, int]) -> list[int]:
    """Monomial coefficients of the interpolating polynomial (schoolbook expansion)."""
    xs = list(points)
    result = [0] * len(xs)
    for i, xi in enumerate(xs):
        basis, den = [1], 1
        for j, xj in enumerate(xs):
            if j != i:
                basis = [(a - xj * b) % P for a, b in zip([0, *basis], [*basis, 0], strict=True)]
                den = den * (xi - xj) % P
        scale = points[xi] * pow(den, -1, P) % P
        result = [(r + scale * b) % P for r, b in zip(result, basis, strict=True)]
    return result


def tamper(share: bytes, rng: random.Random, every_element: bool = False) -> bytes:
    """A different share that is still well formed (all values < p)."""
    values = ref_unpack(share)
    positions = range(len(values)) if every_element else [rng.randrange(len(values))]
    for k in positions:
        values[k] = (values[k] + rng.randrange(1, P)) % P
    return ref_pack(values)


# ---------------------------------------------------------------------------
# Strategies.
# ---------------------------------------------------------------------------

field_x = st.integers(min_value=1, max_value=P - 1)


@st.composite
def sharing_case(draw: st.DrawFn, max_n: int = 10) -> tuple[bytes, int, list[int]]:
    xs = draw(st.lists(field_x, min_size=1, max_size=max_n, unique=True))
    t = draw(st.integers(min_value=1, max_value=len(xs)))
    secret = draw(st.binary(min_size=1, max_size=40))
    return secret, t, xs


# ---------------------------------------------------------------------------
# The field.
# ---------------------------------------------------------------------------


def _is_prime(n: int) -> bool:
    if n < 2 or n % 2 == 0:
        return n == 2
    return all(n % d for d in range(3, int(n**0.5) + 1, 2))


def test_modulus_is_the_largest_prime_below_2_to_the_32() -> None:
    assert shamir.PRIME == P
    assert _is_prime(P)
    assert not any(_is_prime(n) for n in range(P + 1, 2**32))
    assert (P - 1) ** 2 < 2**64  # products fit in uint64


# ---------------------------------------------------------------------------
# Round trips.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "n"),
    [(1, 1), (1, 5), (2, 2), (2, 3), (3, 5), (5, 5), (7, 10), (10, 10), (26, 50), (500, 1000)],
)
def test_round_trip_32_byte_secret(t: int, n: int) -> None:
    secret = os.urandom(32)
    xs = list(range(1, n + 1))
    shares = split_secret(secret, t, xs)
    assert len(shares) == n
    assert all(len(s) == 44 for s in shares)
    everyone = dict(zip(xs, shares, strict=True))
    assert combine_shares(everyone, t, 32) == secret
    chosen = random.Random(n).sample(xs, t)
    assert combine_shares({x: everyone[x] for x in chosen}, t, 32) == secret


@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 16, 31, 32, 33, 64, 100])
def test_round_trip_any_length(length: int) -> None:
    secret = os.urandom(length)
    xs = [3, 17, 2**31, P - 1, 99]
    shares = split_secret(secret, 3, xs)
    assert all(len(s) == 4 * -(-length // 3) for s in shares)
    assert shamir.share_length(length) == len(shares[0])
    assert combine_shares(dict(zip(xs[1:4], shares[1:4], strict=True)), 3, length) == secret


def test_share_values_are_field_elements() -> None:
    shares = split_secret(os.urandom(32), 4, list(range(1, 200)))
    assert all(v < P for s in shares for v in ref_unpack(s))


def test_zero_and_all_ones_secrets_round_trip() -> None:
    for secret in (bytes(32), b"\xff" * 32, b"\xff" * 31 + b"\x00"):
        shares = split_secret(secret, 2, [1, 2, 3])
        assert combine_shares({1: shares[0], 3: shares[2]}, 2, 32) == secret


def test_threshold_one_shares_are_the_encoded_secret() -> None:
    secret = os.urandom(32)
    expected = ref_pack(ref_chunks(secret))
    assert split_secret(secret, 1, [5, 6]) == [expected, expected]


@settings(max_examples=60, deadline=None)
@given(case=sharing_case(), data=st.data())
def test_any_threshold_subset_reconstructs(
    case: tuple[bytes, int, list[int]], data: st.DataObject
) -> None:
    secret, t, xs = case
    shares = dict(zip(xs, split_secret(secret, t, xs), strict=True))
    size = data.draw(st.integers(min_value=t, max_value=len(xs)), label="subset size")
    subset = data.draw(st.permutations(xs), label="order")[:size]
    assert combine_shares({x: shares[x] for x in subset}, t, len(secret)) == secret


# ---------------------------------------------------------------------------
# Agreement with the reference implementation.
# ---------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(case=sharing_case())
def test_shares_lie_on_a_polynomial_of_degree_below_t_through_the_secret(
    case: tuple[bytes, int, list[int]],
) -> None:
    secret, t, xs = case
    shares = dict(zip(xs, split_secret(secret, t, xs), strict=True))
    first = dict(list(shares.items())[:t])
    assert ref_combine(first, len(secret)) == secret
    first_values = {x: ref_unpack(s) for x, s in first.items()}
    for x, share in list(shares.items())[t:]:
        predicted = [
            ref_interpolate({u: v[k] for u, v in first_values.items()}, x)
            for k in range(len(ref_unpack(share)))
        ]
        assert ref_pack(predicted) == share


@settings(max_examples=60, deadline=None)
@given(case=sharing_case(), seed=st.integers(0, 2**32))
def test_combine_reconstructs_reference_shares(
    case: tuple[bytes, int, list[int]], seed: int
) -> None:
    secret, t, xs = case
    shares = ref_split(secret, t, xs, random.Random(seed))
    assert combine_shares(dict(zip(xs, shares, strict=True)), t, len(secret)) == secret
    assert combine_many(xs[:t], [shares[:t]], len(secret)) == [secret]


@settings(max_examples=100, deadline=None)
@given(xs=st.lists(field_x, min_size=1, max_size=30, unique=True))
def test_lagrange_coefficients_match_reference(xs: list[int]) -> None:
    coefficients = lagrange_coefficients_at_zero(xs)
    assert coefficients.dtype == np.uint64
    assert coefficients.tolist() == ref_lagrange(xs, 0)
    assert int(coefficients.sum(dtype=object)) % P == 1  # they interpolate the constant 1


@settings(max_examples=50, deadline=None)
@given(
    xs=st.lists(field_x, min_size=1, max_size=12, unique=True),
    points=st.lists(st.integers(0, P - 1), min_size=1, max_size=5),
)
def test_lagrange_basis_matches_reference(xs: list[int], points: list[int]) -> None:
    basis = shamir._lagrange_basis(np.array(xs, np.uint64), np.array(points, np.uint64))
    assert basis.tolist() == [ref_lagrange(xs, z) for z in points]


@pytest.mark.parametrize("t", [2, 3, 6])
def test_every_chunk_polynomial_has_full_degree(t: int) -> None:
    """All t - 1 random coefficients are used: t - 1 shares must not pin the secret."""
    xs = list(range(10, 10 + t))
    secret = bytes(range(32))
    columns = [ref_unpack(s) for s in split_secret(secret, t, xs)]
    for k, chunk in enumerate(ref_chunks(secret)):
        poly = ref_poly_coefficients({x: col[k] for x, col in zip(xs, columns, strict=True)})
        assert poly[0] == chunk
        assert poly[-1] != 0


def test_matmul_mod_survives_worst_case_magnitudes() -> None:
    inner = (1 << 16) + 3  # more terms than fit in one uint64 accumulation
    a = np.full((2, inner), P - 1, dtype=np.uint64)
    b = np.full((inner, 3), P - 1, dtype=np.uint64)
    b[-1, 1] = 12345
    got = shamir._matmul_mod(a, b)
    full = (P - 1) ** 2 * inner % P
    partial = ((P - 1) ** 2 * (inner - 1) + (P - 1) * 12345) % P
    assert got.tolist() == [[full, partial, full]] * 2


def test_batched_inverse_matches_python() -> None:
    values = [1, 2, 3, P - 1, P - 2, 2**31, *random.Random(7).sample(range(1, P), 200)]
    got = shamir._inverse(np.array(values, dtype=np.uint64))
    assert got.tolist() == [pow(v, -1, P) for v in values]


# ---------------------------------------------------------------------------
# Several secrets at once.
# ---------------------------------------------------------------------------


def test_split_secrets_layout_and_reconstruction() -> None:
    secrets_ = [os.urandom(32), os.urandom(32)]
    xs = list(range(1, 51))
    table = split_secrets(secrets_, 26, xs)
    assert len(table) == 50
    assert all(len(row) == 2 and all(len(s) == 44 for s in row) for row in table)
    for j, secret in enumerate(secrets_):
        column = {x: table[i][j] for i, x in enumerate(xs)}
        assert combine_shares(column, 26, 32) == secret
        assert ref_combine({x: column[x] for x in xs[-26:]}, 32) == secret


def test_split_secrets_uses_independent_polynomials() -> None:
    secret = b"\x07\x07\x07" * 11
    table = split_secrets([secret, secret], 2, [1, 2, 3])
    for row in table:
        assert row[0] != row[1]
        assert len(set(ref_unpack(row[0]))) == 11  # identical chunks, different polynomials


def test_split_is_randomised() -> None:
    secret = os.urandom(32)
    assert split_secret(secret, 2, [1, 2]) != split_secret(secret, 2, [1, 2])


def test_combine_many_agrees_with_combine_shares() -> None:
    secrets_ = [os.urandom(32) for _ in range(7)]
    xs = [4, 8, 15, 16, 23, 42]
    t = 4
    per_secret = [split_secret(s, t, xs) for s in secrets_]
    holders = [8, 16, 23, 42]
    grid = [[shares[xs.index(x)] for x in holders] for shares in per_secret]
    singles = [combine_shares(dict(zip(holders, row, strict=True)), t, 32) for row in grid]
    assert singles == secrets_
    assert combine_many(holders, grid, 32) == secrets_
    cached = lagrange_coefficients_at_zero(holders)
    assert combine_many(holders, grid, 32, coefficients=cached) == secrets_


def test_combine_many_on_split_secrets_output() -> None:
    secrets_ = [os.urandom(5) for _ in range(50)]
    xs = list(range(100, 150))
    table = split_secrets(secrets_, 26, xs)
    holders = xs[10:36]
    grid = [[table[xs.index(x)][j] for x in holders] for j in range(50)]
    assert combine_many(holders, grid, 5) == secrets_


def test_combine_many_of_nothing() -> None:
    assert combine_many([1, 2], [], 32) == []


def test_combine_many_rejects_bad_cached_coefficients() -> None:
    shares = split_secret(b"abc", 2, [1, 2])
    with pytest.raises(ValueError):
        combine_many([1, 2], [shares], 3, coefficients=lagrange_coefficients_at_zero([1, 2, 3]))
    with pytest.raises(ValueError):
        combine_many([1, 2], [shares], 3, coefficients=np.array([1, P], dtype=np.uint64))


# ---------------------------------------------------------------------------
# Too few, inconsistent and tampered shares.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("t", [1, 2, 3, 10])
def test_below_threshold_raises(t: int) -> None:
    xs = list(range(1, t + 3))
    shares = dict(zip(xs, split_secret(os.urandom(32), t, xs), strict=True))
    with pytest.raises(NotEnoughSharesError):
        combine_shares(dict(list(shares.items())[: t - 1]), t, 32)


def test_combine_many_without_holders_raises() -> None:
    with pytest.raises(NotEnoughSharesError):
        combine_many([], [[]], 32)


@pytest.mark.parametrize("victim", range(6))
def test_one_tampered_share_among_t_plus_one_is_detected(victim: int) -> None:
    t = 5
    xs = [2, 3, 5, 7, 11, 13]
    secret = os.urandom(32)
    shares = dict(zip(xs, split_secret(secret, t, xs), strict=True))
    shares[xs[victim]] = tamper(shares[xs[victim]], random.Random(victim))
    with pytest.raises(InconsistentSharesError):
        combine_shares(shares, t, 32)


def test_tampered_extra_share_is_detected_among_many() -> None:
    xs = list(range(1, 101))
    shares = dict(zip(xs, split_secret(os.urandom(32), 40, xs), strict=True))
    shares[77] = tamper(shares[77], random.Random(1))
    with pytest.raises(InconsistentSharesError):
        combine_shares(shares, 40, 32)
    del shares[77]
    combine_shares(shares, 40, 32)  # the other 99 are consistent


def test_shares_from_two_different_sharings_are_inconsistent() -> None:
    xs = [1, 2, 3]
    a = split_secret(os.urandom(32), 2, xs)
    b = split_secret(os.urandom(32), 2, xs)
    with pytest.raises(InconsistentSharesError):
        combine_shares({1: a[0], 2: a[1], 3: b[2]}, 2, 32)


@pytest.mark.parametrize("seed", range(5))
def test_wrong_shares_without_extras_fail_to_decode(seed: int) -> None:
    """With exactly t shares there is nothing to cross-check; the 24-bit
    encoding still rejects the garbage a wrong share interpolates to."""
    xs = [10, 20, 30]
    shares = split_secret(os.urandom(32), 3, xs)
    shares[seed % 3] = tamper(shares[seed % 3], random.Random(seed), every_element=True)
    with pytest.raises(InconsistentSharesError):
        combine_shares(dict(zip(xs, shares, strict=True)), 3, 32)
    with pytest.raises(InconsistentSharesError):
        combine_many(xs, [shares], 32)


def test_chunk_wider_than_24_bits_is_inconsistent() -> None:
    xs = [1, 2]
    polys = [[1 << 24, 99], *[[0, 5]] * 10]  # first chunk is not a 3-byte value
    shares = {x: ref_pack([ref_eval(poly, x) for poly in polys]) for x in xs}
    with pytest.raises(InconsistentSharesError):
        combine_shares(shares, 2, 32)


def test_non_zero_padding_is_inconsistent() -> None:
    secret = os.urandom(31) + b"\x01"
    xs = [1, 2]
    shares = dict(zip(xs, split_secret(secret, 2, xs), strict=True))
    assert combine_shares(shares, 2, 32) == secret
    with pytest.raises(InconsistentSharesError):
        combine_shares(shares, 2, 31)  # same share size, but byte 32 must be padding


def test_reconstruction_errors_share_a_base_class() -> None:
    assert issubclass(NotEnoughSharesError, ReconstructionError)
    assert issubclass(InconsistentSharesError, ReconstructionError)


# ---------------------------------------------------------------------------
# Malformed input to the combining side.
# ---------------------------------------------------------------------------


@pytest.fixture
def good() -> dict[int, bytes]:
    xs = [1, 2, 3]
    return dict(zip(xs, split_secret(os.urandom(32), 2, xs), strict=True))


@pytest.mark.parametrize("size", [0, 4, 40, 43, 45, 48])
def test_share_of_wrong_length_is_malformed(good: dict[int, bytes], size: int) -> None:
    good[2] = bytes(size)
    with pytest.raises(MalformedMessageError):
        combine_shares(good, 2, 32)


def test_share_length_must_match_secret_length(good: dict[int, bytes]) -> None:
    for length in (30, 34):  # 10 and 12 elements; a 32-byte secret has 11
        with pytest.raises(MalformedMessageError):
            combine_shares(good, 2, length)


@pytest.mark.parametrize("x", [0, -1, P, P + 1, 2**64])
def test_x_outside_the_field_is_malformed(good: dict[int, bytes], x: int) -> None:
    good[x] = good.pop(3)
    with pytest.raises(MalformedMessageError):
        combine_shares(good, 2, 32)


@pytest.mark.parametrize("x", ["1", 1.0, None, True])
def test_non_integer_x_is_malformed(good: dict[int, bytes], x: object) -> None:
    shares: dict[object, bytes] = dict(good)
    del shares[1]
    shares[x] = good[1]
    with pytest.raises(MalformedMessageError):
        combine_shares(shares, 2, 32)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [P, P + 4, 2**32 - 1])
def test_value_outside_the_field_is_malformed(good: dict[int, bytes], value: int) -> None:
    words = ref_unpack(good[2])
    words[5] = value
    good[2] = ref_pack(words)
    with pytest.raises(MalformedMessageError):
        combine_shares(good, 2, 32)


def test_share_that_is_not_bytes_is_malformed(good: dict[int, bytes]) -> None:
    shares: dict[int, object] = dict(good)
    shares[2] = good[2].hex()[:44]
    with pytest.raises(MalformedMessageError):
        combine_shares(shares, 2, 32)  # type: ignore[arg-type]


def test_bytearray_shares_are_accepted(good: dict[int, bytes]) -> None:
    secret = combine_shares(good, 2, 32)
    assert combine_shares({x: bytearray(s) for x, s in good.items()}, 2, 32) == secret


@pytest.mark.parametrize("xs", [[1, 1], [0, 2], [2, P], [1, -3]])
def test_bad_holder_lists_are_malformed(xs: list[int]) -> None:
    with pytest.raises(MalformedMessageError):
        lagrange_coefficients_at_zero(xs)
    with pytest.raises(MalformedMessageError):
        combine_many(xs, [[bytes(44), bytes(44)]], 32)


def test_combine_many_needs_one_share_per_holder() -> None:
    shares = split_secret(os.urandom(32), 2, [1, 2])
    with pytest.raises(MalformedMessageError):
        combine_many([1, 2], [shares, shares[:1]], 32)
    with pytest.raises(MalformedMessageError):
        combine_many([1, 2], [[shares[0], shares[1][:-1]]], 32)


@pytest.mark.parametrize(("threshold", "length"), [(0, 32), (-1, 32), (2, 0)])
def test_combine_rejects_impossible_parameters(
    good: dict[int, bytes], threshold: int, length: int
) -> None:
    with pytest.raises(ValueError):
        combine_shares(good, threshold, length)


# ---------------------------------------------------------------------------
# Bad arguments to the splitting side.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "threshold", "xs"),
    [
        (b"", 1, [1]),
        (b"s", 0, [1, 2]),
        (b"s", 3, [1, 2]),
        (b"s", 1, []),
        (b"s", 2, [1, 1]),
        (b"s", 1, [0, 1]),
        (b"s", 1, [1, P]),
        (b"s", 1, [-5]),
    ],
)
def test_split_rejects_bad_arguments(secret: bytes, threshold: int, xs: list[int]) -> None:
    with pytest.raises(ValueError):
        split_secret(secret, threshold, xs)


def test_split_rejects_non_integer_x() -> None:
    with pytest.raises(TypeError):
        split_secret(b"s", 1, [1.5])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        split_secret(b"s", 1, [True])  # type: ignore[list-item]


def test_split_secrets_rejects_mixed_lengths_and_empty_input() -> None:
    with pytest.raises(ValueError):
        split_secrets([b"abc", b"abcd"], 1, [1])
    with pytest.raises(ValueError):
        split_secrets([], 1, [1])


def test_split_accepts_numpy_integer_xs() -> None:
    secret = os.urandom(32)
    xs = np.array([5, 6, 7], dtype=np.int64)
    shares = split_secret(secret, 2, list(xs))
    assert combine_shares({int(x): s for x, s in zip(xs, shares, strict=True)}, 2, 32) == secret


# ---------------------------------------------------------------------------
# Randomness.
# ---------------------------------------------------------------------------


def test_random_elements_reject_words_outside_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = [
        ref_pack([P, 5, 2**32 - 1, 7]),  # two of four rejected
        ref_pack([P + 1, P - 1]),  # one of two rejected
        ref_pack([0]),
    ]
    requested: list[int] = []

    def fake_token_bytes(n: int) -> bytes:
        requested.append(n)
        return draws.pop(0)

    monkeypatch.setattr(shamir, "token_bytes", fake_token_bytes)
    assert shamir._random_elements(4).tolist() == [5, 7, P - 1, 0]
    assert requested == [16, 8, 4]


def test_split_draws_its_coefficients_from_the_os_csprng(monkeypatch: pytest.MonkeyPatch) -> None:
    requested: list[int] = []

    def counting_token_bytes(n: int) -> bytes:
        requested.append(n)
        return os.urandom(n)

    monkeypatch.setattr(shamir, "token_bytes", counting_token_bytes)
    split_secrets([bytes(32), bytes(32)], 5, list(range(1, 9)))
    assert sum(requested) == 4 * 4 * 22  # (t - 1) coefficients x 2 secrets x 11 chunks


def test_fewer_than_t_shares_look_uniform_whatever_the_secret() -> None:
    """One share of a 2-of-n sharing: the top 3 bits of each value are uniform for
    an all-zero and an all-ones secret alike (bounds are 6 standard deviations)."""
    samples = 2000
    for secret in (bytes(32), b"\xff" * 32):
        table = split_secrets([secret] * samples, 2, [1, 2])
        words = np.frombuffer(b"".join(table[0]), dtype=">u4")
        counts = np.bincount(words >> 29, minlength=8)
        expected = words.size / 8
        sigma = (words.size * (1 / 8) * (7 / 8)) ** 0.5
        assert np.all(np.abs(counts - expected) < 6 * sigma), counts
