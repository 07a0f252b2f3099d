"""The demo's data: scikit-learn's bundled 8x8 digits, a fixed split, non-IID shards."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

NUM_CLASSES = 10
NUM_FEATURES = 64


@dataclasses.dataclass(frozen=True)
class Split:
    """A fixed train/test split; features scaled to [0, 1], labels int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_split(seed: int = 0, test_fraction: float = 0.25) -> Split:
    """``load_digits`` (bundled with scikit-learn, nothing downloaded), split stratified."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed
    )
    return Split(x_train, y_train, x_test, y_test)


def dirichlet_shards(
    labels: np.ndarray,
    num_clients: int,
    *,
    alpha: float = 0.5,
    seed: int = 0,
    min_examples: int = 20,
    max_tries: int = 1000,
) -> list[np.ndarray]:
    """Indices of ``labels`` for each client: per class, proportions drawn from Dir(alpha).

    Small ``alpha`` makes the shards label-skewed (non-IID). Draws are repeated (seeded)
    until every client holds at least ``min_examples`` examples.
    """
    if num_clients < 1:
        raise ValueError("num_clients must be at least 1")
    if len(labels) < num_clients * min_examples:
        raise ValueError(
            f"{len(labels)} examples cannot give {num_clients} clients {min_examples} each"
        )
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(max_tries):
        shards: list[list[int]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            proportions = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(idx)).astype(int)
            for client, part in enumerate(np.split(idx, cuts)):
                shards[client].extend(part.tolist())
        if min(len(s) for s in shards) >= min_examples:
            return [np.sort(np.asarray(s, dtype=np.int64)) for s in shards]
    raise RuntimeError(f"no Dirichlet draw gave every client {min_examples} examples")


def save_shard(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    np.savez(path, x=x.astype(np.float32), y=y.astype(np.int64))


def load_shard(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        return data["x"].astype(np.float32), data["y"].astype(np.int64)
