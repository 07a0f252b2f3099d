"""Shamir sharing at SecAgg sizes, with a pure-Python-int split as the scale baseline.

Everything is in one benchmark group ("shamir") so the report shows the ratio of
the vectorised split to the pure-Python one directly.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence

import pytest

from sealagg.crypto._primitives.shamir import (
    PRIME,
    combine_many,
    combine_shares,
    split_secret,
    split_secrets,
)

pytestmark = pytest.mark.benchmark(group="shamir")


def python_split(secret: bytes, threshold: int, xs: Sequence[int]) -> list[bytes]:
    """The same sharing with Python ints: 3-byte chunks, Horner per chunk and x."""
    padded = secret + bytes(-len(secret) % 3)
    polys = [
        [int.from_bytes(padded[i : i + 3], "big")]
        + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
        for i in range(0, len(padded), 3)
    ]
    shares = []
    for x in xs:
        words = []
        for poly in polys:
            acc = 0
            for coefficient in reversed(poly):
                acc = (acc * x + coefficient) % PRIME
            words.append(acc.to_bytes(4, "big"))
        shares.append(b"".join(words))
    return shares


def test_split_1000_peers_t500(benchmark) -> None:
    secret = os.urandom(32)
    xs = list(range(1, 1001))
    shares = benchmark(split_secret, secret, 500, xs)
    assert combine_shares(dict(zip(xs[:500], shares[:500], strict=True)), 500, 32) == secret


def test_split_baseline_pure_python_1000_peers_t500(benchmark) -> None:
    secret = os.urandom(32)
    xs = list(range(1, 1001))
    shares = benchmark.pedantic(python_split, args=(secret, 500, xs), rounds=3, iterations=1)
    assert combine_shares(dict(zip(xs[500:], shares[500:], strict=True)), 500, 32) == secret


def test_split_secrets_2_secrets_50_peers_t26(benchmark) -> None:
    pair = [os.urandom(32), os.urandom(32)]
    xs = list(range(1, 51))
    table = benchmark(split_secrets, pair, 26, xs)
    assert combine_shares({x: table[i][1] for i, x in enumerate(xs)}, 26, 32) == pair[1]


def test_combine_500_of_1000(benchmark) -> None:
    secret = os.urandom(32)
    xs = list(range(1, 1001))
    shares = dict(zip(xs, split_secret(secret, 500, xs), strict=True))
    survivors = {x: shares[x] for x in xs[1::2]}  # any 500 of the 1000
    assert benchmark(combine_shares, survivors, 500, 32) == secret


def test_combine_all_1000_t500_checking_500_extras(benchmark) -> None:
    secret = os.urandom(32)
    xs = list(range(1, 1001))
    shares = dict(zip(xs, split_secret(secret, 500, xs), strict=True))
    assert benchmark(combine_shares, shares, 500, 32) == secret


def test_combine_many_50_secrets_t26(benchmark) -> None:
    originals = [os.urandom(32) for _ in range(50)]
    xs = list(range(1, 51))
    table = split_secrets(originals, 26, xs)
    holders = xs[-26:]
    grid = [[table[x - 1][j] for x in holders] for j in range(50)]
    assert benchmark(combine_many, holders, grid, 32) == originals
