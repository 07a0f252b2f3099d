"""Model version files: content-addressed safetensors files in ``<federation>/models/``.

A model is a ``dict[str, np.ndarray]``. It is saved as ``models/<sha256>.safetensors`` where
``sha256`` is the hash of the file's bytes: written to a temporary file, fsynced, renamed,
and the directory fsynced, so the file is complete on disk *before* the store records its row.
Loading re-hashes the bytes and refuses a file that does not match. No pickle anywhere: the
safetensors format holds only a JSON header and raw little-endian tensor bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from sealagg.appliance.errors import StoreError

__all__ = [
    "ALLOWED_DTYPES",
    "MODELS_DIRNAME",
    "MODEL_STATUSES",
    "ModelVersion",
    "load_tensors",
    "model_relpath",
    "save_tensors",
    "validate_tensors",
]

MODELS_DIRNAME = "models"
MODEL_STATUSES = ("accepted", "candidate", "rejected", "pending")
ALLOWED_DTYPES = frozenset(
    np.dtype(name)
    for name in (
        "float16",
        "float32",
        "float64",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
    )
)
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/\-]{0,254}")
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_SUFFIX = ".safetensors"


@dataclasses.dataclass(frozen=True)
class ModelVersion:
    """One row of ``model_versions``. ``round`` is None for the base model."""

    version: int
    parent: int | None
    round: int | None
    sha256: str
    path: str
    status: str
    created_at: str
    metrics: dict[str, Any] | None


def model_relpath(sha256: str) -> str:
    """The file's path relative to the federation folder."""
    if not isinstance(sha256, str) or not _SHA_RE.fullmatch(sha256):
        raise StoreError("a model hash is 64 lowercase hex digits")
    return f"{MODELS_DIRNAME}/{sha256}{_SUFFIX}"


def validate_tensors(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Check names and dtypes; return C-contiguous little-endian arrays, values unchanged.

    Names: 1-255 characters of letters, digits, ``_ . : / -``, not starting with punctuation
    (PyTorch state-dict names fit). Dtypes: float16/32/64 and (u)int8/16/32/64; object, bool,
    complex, string and structured arrays are refused.
    """
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a dict of name -> numpy array, got {type(tensors)}")
    if not tensors:
        raise ValueError("a model needs at least one tensor")
    out: dict[str, np.ndarray] = {}
    for name, array in tensors.items():
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise ValueError(
                f"invalid tensor name {name!r}: use 1-255 of [A-Za-z0-9_.:/-], "
                "starting with a letter, digit or underscore"
            )
        if not isinstance(array, np.ndarray) or isinstance(array, np.ma.MaskedArray):
            raise TypeError(f"tensor {name!r} is a {type(array).__name__}, not a numpy array")
        if array.dtype.hasobject:
            raise TypeError(f"tensor {name!r} is an object array: refused (only numeric tensors)")
        if array.dtype.newbyteorder("=") not in ALLOWED_DTYPES:
            raise TypeError(
                f"tensor {name!r} has dtype {array.dtype}: only float16/32/64 and "
                "(u)int8/16/32/64 are stored"
            )
        little = array.dtype.newbyteorder("<")
        out[name] = np.asarray(array, dtype=little, order="C")  # keeps 0-d arrays 0-d
    return out


def _os_error(exc: OSError, what: str) -> StoreError:
    causes = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exhausted",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied (folder not writable)",
        errno.EPERM: "operation not permitted",
        errno.ENOENT: "no such file or folder",
        errno.EIO: "I/O error (failing or removed storage)",
    }
    cause = causes.get(exc.errno or 0, exc.strerror or str(exc))
    return StoreError(f"{what}: {cause}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_tensors(folder: Path, tensors: Mapping[str, np.ndarray]) -> tuple[str, str]:
    """Write ``tensors`` durably under ``folder/models``; return ``(sha256, relative path)``.

    Identical content maps to the same file; an existing intact file is reused.
    """
    arrays = validate_tensors(tensors)
    data = safetensors.numpy.save(arrays)
    sha = hashlib.sha256(data).hexdigest()
    relpath = model_relpath(sha)
    folder = Path(folder)
    models = folder / MODELS_DIRNAME
    final = folder / relpath
    tmp = models / f".{sha}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        if not models.is_dir():
            models.mkdir(mode=0o750, exist_ok=True)
            _fsync_dir(folder)
        with contextlib.suppress(OSError):
            if final.is_file() and _sha256_file(final) == sha:
                return sha, relpath
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        _fsync_dir(models)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _os_error(exc, f"cannot write model file {final}") from exc
    return sha, relpath


def load_tensors(folder: Path, sha256: str) -> dict[str, np.ndarray]:
    """Read ``models/<sha256>.safetensors``, check its hash, return writable arrays."""
    path = Path(folder) / model_relpath(sha256)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _os_error(exc, f"cannot read model file {path}") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise StoreError(
            f"model file {path} was modified or is corrupt: its SHA-256 is {actual[:16]}…, "
            f"the recorded one {sha256[:16]}…; refusing to load it"
        )
    try:
        loaded = safetensors.numpy.load(data)
    except Exception as exc:  # the parser's own error types vary by version
        raise StoreError(f"model file {path} is not a valid safetensors file") from exc
    return {
        name: array if array.flags.writeable else array.copy() for name, array in loaded.items()
    }
