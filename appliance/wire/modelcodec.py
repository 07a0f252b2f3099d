"""Flatten a model's tensors into one float32 vector and back, in a fixed layout.

Both sides must agree on the order: tensors sorted by name, each flattened in C
order. The layout (names, shapes, dtypes) travels with the model version, so a
client whose shared parameters differ is refused before anything is sent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclasses.dataclass(frozen=True)
class Layout:
    """The order and shapes of the tensors that make up an update vector."""

    tensors: tuple[TensorSpec, ...]

    @classmethod
    def of(cls, tensors: Mapping[str, np.ndarray]) -> Layout:
        return cls(tuple(TensorSpec(n, tuple(tensors[n].shape)) for n in sorted(tensors)))

    @property
    def dimension(self) -> int:
        return sum(t.size for t in self.tensors)

    def check(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Raise ValueError naming the first tensor that does not match the layout."""
        names = sorted(tensors)
        expected = [t.name for t in self.tensors]
        if names != expected:
            missing = sorted(set(expected) - set(names))
            extra = sorted(set(names) - set(expected))
            raise ValueError(f"tensor names differ: missing {missing[:3]}, unexpected {extra[:3]}")
        for spec in self.tensors:
            arr = tensors[spec.name]
            if tuple(arr.shape) != spec.shape:
                raise ValueError(
                    f"tensor {spec.name!r} has shape {arr.shape}, expected {spec.shape}"
                )
            if not np.issubdtype(arr.dtype, np.floating):
                raise ValueError(
                    f"tensor {spec.name!r} has dtype {arr.dtype}, expected a float type"
                )


def flatten(tensors: Mapping[str, np.ndarray], layout: Layout) -> np.ndarray:
    """One float32 vector holding every tensor of ``layout`` in order."""
    layout.check(tensors)
    out = np.empty(layout.dimension, dtype=np.float32)
    offset = 0
    for spec in layout.tensors:
        out[offset : offset + spec.size] = np.asarray(tensors[spec.name], dtype=np.float32).ravel()
        offset += spec.size
    return out


def unflatten(vector: np.ndarray, layout: Layout) -> dict[str, np.ndarray]:
    """Split a vector back into float32 tensors of the layout's shapes (copies)."""
    if vector.ndim != 1 or vector.shape[0] != layout.dimension:
        raise ValueError(f"vector has shape {vector.shape}, layout needs ({layout.dimension},)")
    out: dict[str, np.ndarray] = {}
    offset = 0
    for spec in layout.tensors:
        chunk = vector[offset : offset + spec.size]
        out[spec.name] = np.array(chunk, dtype=np.float32).reshape(spec.shape)
        offset += spec.size
    return out
