"""Helpers for tests and benchmarks: build rounds with real keys and random inputs.

Shipped with the package (as Tink ships its ``testing`` module) so that the
appliance's and the client shim's tests can build rounds the same way.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable

import numpy as np

from sealagg.crypto import IdentityKey, RoundConfig


@dataclasses.dataclass
class RoundKit:
    """A round's public config plus every participant's identity key and input."""

    config: RoundConfig
    identities: dict[int, IdentityKey]
    inputs: dict[int, np.ndarray]

    def expected_sum(self, members: Iterable[int]) -> np.ndarray:
        """The exact sum of ``members``' inputs in Z_(2^32)."""
        total = np.zeros(self.config.vector_length, dtype=np.uint32)
        for u in members:
            total += self.inputs[u]
        return total


def make_round(
    n: int,
    *,
    threshold: int,
    dimension: int = 33,
    degree: int | None = None,
    minimum_survivors: int | None = None,
    seed: int = 0,
    round_id: bytes | None = None,
) -> RoundKit:
    """A round of ``n`` clients with fresh identity keys and uniform random inputs."""
    rng = np.random.default_rng(seed)
    identities = {u: IdentityKey.generate() for u in range(1, n + 1)}
    config = RoundConfig.create(
        round_id=round_id or os.urandom(32),
        identities={u: k.verify_key_bytes for u, k in identities.items()},
        threshold=threshold,
        vector_length=dimension,
        degree=degree,
        minimum_survivors=minimum_survivors,
    )
    inputs = {
        u: rng.integers(0, 2**32, size=dimension, dtype=np.uint64).astype(np.uint32)
        for u in identities
    }
    return RoundKit(config, identities, inputs)
