"""The server optimizer's state (momenta) kept per model version, so a rollback is exact.

FedAvgM, FedAdam, FedYogi and FedAdagrad carry buffers from round to round. A single "latest"
state would be wrong after ``sealagg rollback``: the next round would apply momenta built up
by the very rounds that were rolled back, to weights that never saw them. So the state after
the step that produced version N is written to ``<folder>/optimizer/v<N>.safetensors``
(mode 0600) as soon as N exists as a candidate, before it can be accepted; a round that
trains from version V continues the state that belongs to V:

- V was produced by a round: V's own file;
- V was restored by a rollback (no round, parent P): the state that belongs to P, followed
  through restores, i.e. exactly the state the federation had when P was current;
- V is a base model (no parent, e.g. ``sealagg model import``): a fresh state.

If the file is missing or does not match (deleted to reclaim disk space, or written for
another optimizer, or by a sealagg older than this module, which kept one
``optimizer_state.safetensors``), the round starts from a fresh state and the reason is
returned for the log and the audit log; a fresh state is always a valid optimizer start
(Reddi et al. 2021 start every buffer at its initial value). Files are named by version
and carry the version's model SHA-256 in their metadata, so a file left from another
federation or an edited database is not taken for this version's state.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as save_safetensors

from sealagg.appliance.errors import ProvisioningError
from sealagg.appliance.models import ModelVersion
from sealagg.appliance.optimizers import STEP_KEY, ServerOptimizer
from sealagg.appliance.pki import write_file_atomic
from sealagg.appliance.store import Store

__all__ = [
    "LEGACY_FILENAME",
    "STATE_DIRNAME",
    "discard_state",
    "restore_state",
    "save_state",
    "state_origin",
    "state_path",
]

STATE_DIRNAME = "optimizer"
LEGACY_FILENAME = "optimizer_state.safetensors"
_log = logging.getLogger("sealagg.optimizer_state")


def state_path(folder: Path, version: int) -> Path:
    """Where the state that belongs to ``version`` is kept."""
    return Path(folder) / STATE_DIRNAME / f"v{version}.safetensors"


def state_origin(store: Store, version: int) -> int | None:
    """The round-produced version whose state ``version`` continues; None for a fresh state.

    Parents always have smaller numbers than their children, so the walk ends.
    """
    model = store.model_version(version)
    while model.round is None and model.parent is not None:  # a restore: its origin's state
        model = store.model_version(model.parent)
    return None if model.round is None else model.version


def save_state(folder: Path, model: ModelVersion, optimizer: ServerOptimizer) -> Path:
    """Write ``optimizer``'s current state as the state that belongs to ``model`` (durably)."""
    path = state_path(folder, model.version)
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
    except OSError as error:
        raise ProvisioningError(f"cannot create {path.parent}: {error.strerror}") from None
    metadata = {
        "optimizer": optimizer.name,
        "version": str(model.version),
        "model_sha256": model.sha256,
    }
    write_file_atomic(path, save_safetensors(optimizer.state_dict(), metadata=metadata), mode=0o600)
    return path


def discard_state(folder: Path, version: int) -> None:
    """Remove a rejected candidate's state: rejected versions can never be trained from."""
    with contextlib.suppress(FileNotFoundError):
        state_path(folder, version).unlink()


def restore_state(store: Store, version: int, optimizer: ServerOptimizer) -> tuple[int | None, str]:
    """Load into ``optimizer`` the state that belongs to ``version``.

    Returns ``(origin, note)``: the version whose saved state was loaded (None: fresh state)
    and, when the state had to start fresh although ``version`` descends from a round, why.
    The optimizer is left untouched only if loading succeeds or a fresh state is set.
    """
    origin = state_origin(store, version)
    if origin is None:
        _reset(optimizer)
        return None, ""
    expected = store.model_version(origin).sha256
    state, problem = _read(state_path(store.folder, origin), optimizer.name, expected)
    if state is None and _is_latest_round_version(store, origin):
        legacy, _ = _read(Path(store.folder) / LEGACY_FILENAME, optimizer.name, None)
        if legacy is not None:  # written by an older sealagg after this very version
            state, problem = legacy, ""
    if state is not None:
        try:
            optimizer.load_state_dict(state)
        except ValueError as error:
            problem = f"the saved state is damaged ({error})"
        else:
            return origin, ""
    _reset(optimizer)
    note = f"no usable optimizer state for version {origin}: {problem}; starting afresh"
    _log.warning("%s", note)
    return None, note


def _reset(optimizer: ServerOptimizer) -> None:
    optimizer.load_state_dict({STEP_KEY: np.zeros(1, dtype=np.int64)})


def _is_latest_round_version(store: Store, version: int) -> bool:
    published = [
        m.version for m in store.model_versions() if m.round is not None and m.status == "accepted"
    ]
    return bool(published) and published[-1] == version


def _read(
    path: Path, name: str, model_sha256: str | None
) -> tuple[Mapping[str, np.ndarray] | None, str]:
    """(state, "") or (None, why not)."""
    if not path.is_file():
        return None, f"{path.name} does not exist"
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            if str(metadata.get("optimizer", "")).lower() != name:
                return None, f"{path.name} holds {metadata.get('optimizer')!r} state, not {name!r}"
            if model_sha256 is not None and metadata.get("model_sha256") != model_sha256:
                return None, f"{path.name} belongs to other weights"
            return {k: handle.get_tensor(k) for k in handle.keys()}, ""  # noqa: SIM118
    except (OSError, SafetensorError) as error:
        return None, f"{path.name} cannot be read ({error})"
