"""Server-side optimizers that turn the aggregated client update into the next global model.

The appliance only ever sees Δ, the weighted mean of (client weights - global weights). Plain
FedAvg adds it to the model; Reddi et al. (2021), "Adaptive Federated Optimization" (ICLR),
Algorithm 2, instead treat Δ as a pseudo-gradient and feed it to a server optimizer (momentum,
Adagrad, Adam, Yogi), which tolerates heterogeneous clients better and is easier to tune.

Everything here is numpy only (the appliance runs without torch). Arithmetic is float64 so the
optimizer state does not drift through float32 rounding; the returned model is float32. A step
either succeeds completely or raises and leaves the optimizer untouched, and it refuses NaN or
Inf anywhere, because the appliance must never publish a non-finite model.

Optimizer state is a flat ``dict[str, np.ndarray]`` (``state_dict``) so it can be persisted in
safetensors next to the model: ``"step"`` holds the number of steps taken as a 1-element int64
array, and each per-parameter buffer is stored as ``"<slot>/<parameter name>"`` in float64
(e.g. ``"m/dense.weight"``), which makes a restored optimizer continue bit-for-bit.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from sealagg.appliance.errors import ConfigError

__all__ = [
    "OPTIMIZER_NAMES",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedYogi",
    "ServerOptimizer",
    "make_optimizer",
]

STEP_KEY = "step"
"""``state_dict`` key of the step counter (a 1-element int64 array)."""

Arrays = dict[str, np.ndarray]
SlotState = dict[str, Arrays]
"""Per-parameter optimizer buffers: slot name → parameter name → float64 array."""


# ---------------------------------------------------------------- hyper-parameter checks


def _real(owner: str, name: str, value: object) -> float:
    """Return ``value`` as a finite float, or raise ConfigError naming it."""
    if isinstance(value, bool | np.bool_) or not isinstance(
        value, int | float | np.integer | np.floating
    ):
        raise ConfigError(f"{owner}: {name}={value!r} is invalid: must be a real number")
    number = float(value)
    if not math.isfinite(number):
        raise ConfigError(f"{owner}: {name}={value!r} is invalid: must be finite")
    return number


def _positive(owner: str, name: str, value: object) -> float:
    number = _real(owner, name, value)
    if number <= 0.0:
        raise ConfigError(f"{owner}: {name}={value!r} is invalid: must be > 0")
    return number


def _unit_interval(owner: str, name: str, value: object) -> float:
    """A decay rate: 1 would freeze the buffer forever, so the interval is [0, 1)."""
    number = _real(owner, name, value)
    if not 0.0 <= number < 1.0:
        raise ConfigError(f"{owner}: {name}={value!r} is invalid: must be in [0, 1)")
    return number


# ---------------------------------------------------------------- tensor checks


def _layout(tensors: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(array.shape) for name, array in tensors.items()}


def _require_layout(
    expected: Mapping[str, tuple[int, ...]], actual: Mapping[str, np.ndarray], what: str
) -> None:
    """Raise ValueError naming the first key or shape in ``actual`` that differs."""
    for name, shape in expected.items():
        if name not in actual:
            raise ValueError(f"{what}: missing key {name!r}")
        if tuple(actual[name].shape) != shape:
            raise ValueError(
                f"{what}: {name!r} has shape {tuple(actual[name].shape)}, expected {shape}"
            )
    for name in actual:
        if name not in expected:
            raise ValueError(f"{what}: unexpected key {name!r}")


def _as_float64(tensors: Mapping[str, np.ndarray], what: str) -> Arrays:
    """Validate a model-shaped mapping and view it as float64 (never writes to it)."""
    if not isinstance(tensors, Mapping):
        raise TypeError(f"{what} must be a mapping of str to numpy arrays, got {type(tensors)}")
    if not tensors:
        raise ValueError(f"{what} is empty")
    out: Arrays = {}
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"{what}: key {name!r} is not a str")
        array = np.asarray(value)
        if array.dtype.kind not in "fiu":
            raise TypeError(f"{what}[{name!r}] has dtype {array.dtype}, expected a real number")
        array = array.astype(np.float64, copy=False)
        bad = array.size - int(np.count_nonzero(np.isfinite(array)))
        if bad:
            raise ValueError(f"{what}[{name!r}] contains {bad} NaN or Inf value(s)")
        out[name] = array
    return out


# ---------------------------------------------------------------- the interface


class ServerOptimizer(ABC):
    """Apply the aggregated update Δ to the global model, keeping state across rounds.

    Subclasses declare their per-parameter buffers in ``slots`` and implement
    ``_initial_state`` (the buffers before the first round) and ``_advance`` (one round of the
    update rule); this class does the validation, float64/float32 conversion, the atomic
    commit and (de)serialisation, so every optimizer refuses bad input the same way.
    """

    name: ClassVar[str]
    slots: ClassVar[tuple[str, ...]] = ()
    nonnegative_slots: ClassVar[tuple[str, ...]] = ()
    """Slots that can never be negative (second moments); a loaded negative one is corrupt."""

    def __init__(self, server_lr: float) -> None:
        self.server_lr = _positive(type(self).__name__, "server_lr", server_lr)
        self._steps = 0
        self._state: SlotState = {}

    @property
    def steps(self) -> int:
        """How many successful steps this optimizer (including restored state) has taken."""
        return self._steps

    def step(self, weights: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> Arrays:
        """Return the next global model ``weights + server_lr * direction(Δ)`` as float32.

        Raises ValueError if ``delta`` or ``weights`` hold NaN/Inf, if their keys or shapes
        differ from each other or from the state created on the first step, or if the result
        overflows float32. Neither the inputs nor (on error) the optimizer state are modified.
        """
        w = _as_float64(weights, "weights")
        d = _as_float64(delta, "delta")
        if self._state:
            _require_layout(self._state_layout(), d, "delta does not match the optimizer state")
        _require_layout(_layout(d), w, "weights do not match delta")

        state = self._state or self._initial_state(d)
        advanced, direction = self._advance(state, d)
        # np.asarray: arithmetic on 0-d arrays yields numpy scalars, but callers get arrays.
        new_state: SlotState = {}
        for slot, buffers in advanced.items():
            new_state[slot] = {}
            for name, array in buffers.items():
                if not np.isfinite(array).all():
                    raise ValueError(f"step would make state {slot}/{name!r} non-finite")
                new_state[slot][name] = np.asarray(array, dtype=np.float64)

        result: Arrays = {}
        with np.errstate(over="ignore"):  # reported below as a ValueError instead
            for name, current in w.items():
                updated = np.asarray(current + self.server_lr * direction[name], np.float32)
                if not np.isfinite(updated).all():
                    raise ValueError(f"step would make {name!r} non-finite (float32 overflow)")
                result[name] = updated
        self._state = new_state
        self._steps += 1
        return result

    def state_dict(self) -> Arrays:
        """Copy of the state: ``"step"`` plus one float64 array per ``"<slot>/<param>"``."""
        out: Arrays = {STEP_KEY: np.array([self._steps], dtype=np.int64)}
        for slot, buffers in self._state.items():
            for name, array in buffers.items():
                out[f"{slot}/{name}"] = array.copy()
        return out

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Replace the state with one from ``state_dict`` (e.g. after a restart).

        Validates everything before changing anything; raises ValueError on a missing or
        malformed step counter, unknown keys, slots that disagree on keys or shapes,
        non-finite values or negative second moments.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping, got {type(state)}")
        steps = self._parse_steps(state)
        buffers: SlotState = {}
        for key, value in state.items():
            if key == STEP_KEY:
                continue
            slot, sep, name = key.partition("/") if isinstance(key, str) else ("", "", "")
            if not sep or not name or slot not in self.slots:
                raise ValueError(
                    f"{self.name} state: unexpected key {key!r} "
                    f"(expected {STEP_KEY!r} or '<slot>/<param>' with slot in {self.slots})"
                )
            array = np.asarray(value)
            if array.dtype.kind != "f":
                raise ValueError(f"{self.name} state[{key!r}] has dtype {array.dtype}")
            array = array.astype(np.float64, copy=True)
            if not np.isfinite(array).all():
                raise ValueError(f"{self.name} state[{key!r}] contains NaN or Inf")
            if slot in self.nonnegative_slots and (array < 0).any():
                raise ValueError(f"{self.name} state[{key!r}] has negative entries")
            buffers.setdefault(slot, {})[name] = array
        self._check_loaded_slots(steps, buffers)
        self._state = {slot: buffers[slot] for slot in self.slots if slot in buffers}
        self._steps = steps

    # ------------------------------------------------------------ hooks for subclasses

    def _initial_state(self, delta: Mapping[str, np.ndarray]) -> SlotState:
        """Buffers before the first round, shaped like ``delta``; none by default."""
        return {}

    @abstractmethod
    def _advance(self, state: SlotState, delta: Arrays) -> tuple[SlotState, Arrays]:
        """One round: return new buffers and the direction to add (times ``server_lr``).

        Must build new arrays and never write into ``state`` or ``delta``, so a step that
        fails later leaves the optimizer as it was.
        """

    # ------------------------------------------------------------ helpers

    def _state_layout(self) -> dict[str, tuple[int, ...]]:
        return _layout(self._state[self.slots[0]])

    def _parse_steps(self, state: Mapping[str, np.ndarray]) -> int:
        if STEP_KEY not in state:
            raise ValueError(f"{self.name} state: missing {STEP_KEY!r}")
        counter = np.asarray(state[STEP_KEY])
        if counter.size != 1 or counter.dtype.kind not in "iu":
            raise ValueError(
                f"{self.name} state: {STEP_KEY!r} must be a single integer, got "
                f"dtype {counter.dtype} shape {counter.shape}"
            )
        steps = int(counter.reshape(()))
        if steps < 0:
            raise ValueError(f"{self.name} state: {STEP_KEY!r} is negative ({steps})")
        return steps

    def _check_loaded_slots(self, steps: int, buffers: SlotState) -> None:
        """Buffers exist exactly after the first step, and every slot covers the same model."""
        if not self.slots:
            return
        if steps == 0:
            if buffers:
                raise ValueError(f"{self.name} state: buffers present but step is 0")
            return
        missing = [slot for slot in self.slots if slot not in buffers]
        if missing:
            raise ValueError(f"{self.name} state: step is {steps} but slot(s) {missing} missing")
        reference = self.slots[0]
        for slot in self.slots[1:]:
            _require_layout(
                _layout(buffers[reference]),
                buffers[slot],
                f"{self.name} state: slot {slot!r} does not match slot {reference!r}",
            )

    def _hyperparameters(self) -> dict[str, float]:
        names = inspect.signature(type(self).__init__).parameters
        return {name: getattr(self, name) for name in names if name != "self"}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._hyperparameters().items())
        return f"{type(self).__name__}({params})"


# ---------------------------------------------------------------- FedAvg and momentum


class FedAvg(ServerOptimizer):
    """x ← x + lr·Δ. With lr = 1 this is plain federated averaging.

    It keeps no per-parameter state, so it only checks that weights and Δ agree.
    """

    name = "fedavg"

    def __init__(self, server_lr: float = 1.0) -> None:
        super().__init__(server_lr)

    def _advance(self, state: SlotState, delta: Arrays) -> tuple[SlotState, Arrays]:
        return {}, delta


class FedAvgM(ServerOptimizer):
    """Server momentum (Hsu et al. 2019): v ← β·v + Δ, x ← x + lr·v, with v starting at 0.

    Smooths round-to-round noise from partial client participation.
    """

    name = "fedavgm"
    slots = ("momentum",)

    def __init__(self, server_lr: float = 1.0, momentum: float = 0.9) -> None:
        super().__init__(server_lr)
        self.momentum = _unit_interval(type(self).__name__, "momentum", momentum)

    def _initial_state(self, delta: Mapping[str, np.ndarray]) -> SlotState:
        return {"momentum": {k: np.zeros_like(d) for k, d in delta.items()}}

    def _advance(self, state: SlotState, delta: Arrays) -> tuple[SlotState, Arrays]:
        velocity = {k: self.momentum * state["momentum"][k] + d for k, d in delta.items()}
        return {"momentum": velocity}, velocity


# ---------------------------------------------------------------- adaptive (Reddi et al.)


class _Adaptive(ServerOptimizer):
    """Reddi et al. 2021, Algorithm 2, shared by FedAdagrad, FedAdam and FedYogi.

    m_t = β1·m_{t-1} + (1-β1)·Δ_t;  v_t = variant-specific;  x ← x + η·m_t / (√v_t + τ).
    As in the paper, m starts at 0 and v at τ² (the paper requires v_{-1} ≥ τ²), and there is
    no bias correction. τ bounds the per-coordinate step and so sets the degree of adaptivity.
    """

    slots = ("m", "v")
    nonnegative_slots = ("v",)

    def __init__(self, server_lr: float, beta1: float, beta2: float, tau: float) -> None:
        super().__init__(server_lr)
        owner = type(self).__name__
        self.beta1 = _unit_interval(owner, "beta1", beta1)
        self.beta2 = _unit_interval(owner, "beta2", beta2)
        self.tau = _positive(owner, "tau", tau)

    @abstractmethod
    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        """v_t from v_{t-1} and Δ_t² (elementwise)."""

    def _initial_state(self, delta: Mapping[str, np.ndarray]) -> SlotState:
        tau_sq = self.tau * self.tau
        return {
            "m": {k: np.zeros_like(d) for k, d in delta.items()},
            "v": {k: np.full_like(d, tau_sq) for k, d in delta.items()},
        }

    def _advance(self, state: SlotState, delta: Arrays) -> tuple[SlotState, Arrays]:
        m: Arrays = {}
        v: Arrays = {}
        direction: Arrays = {}
        for k, d in delta.items():
            m[k] = self.beta1 * state["m"][k] + (1.0 - self.beta1) * d
            v[k] = self._second_moment(state["v"][k], d * d)
            direction[k] = m[k] / (np.sqrt(v[k]) + self.tau)
        return {"m": m, "v": v}, direction


class FedAdagrad(_Adaptive):
    """v_t = v_{t-1} + Δ_t²: step sizes only shrink, suited to sparse or rare features.

    ``beta1`` is the shared Algorithm 2 momentum; it defaults to 0 (m_t = Δ_t, classic
    Adagrad) since the paper's FedAdagrad has no second decay rate to pair it with.
    """

    name = "fedadagrad"

    def __init__(self, server_lr: float = 0.1, tau: float = 1e-3, beta1: float = 0.0) -> None:
        super().__init__(server_lr, beta1=beta1, beta2=0.0, tau=tau)

    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return v + delta_sq


class FedAdam(_Adaptive):
    """v_t = β2·v_{t-1} + (1-β2)·Δ_t²: an exponential average that can forget old rounds."""

    name = "fedadam"

    def __init__(
        self, server_lr: float = 0.1, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
    ) -> None:
        super().__init__(server_lr, beta1, beta2, tau)

    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return self.beta2 * v + (1.0 - self.beta2) * delta_sq


class FedYogi(_Adaptive):
    """v_t = v_{t-1} - (1-β2)·Δ_t²·sign(v_{t-1} - Δ_t²): additive, so v changes slowly.

    Unlike Adam, a large v only shrinks by (1-β2)·Δ² per round instead of decaying
    geometrically, which avoids sudden jumps in the effective learning rate.
    """

    name = "fedyogi"

    def __init__(
        self, server_lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
    ) -> None:
        super().__init__(server_lr, beta1, beta2, tau)

    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> np.ndarray:
        return v - (1.0 - self.beta2) * delta_sq * np.sign(v - delta_sq)


# ---------------------------------------------------------------- factory

_REGISTRY: dict[str, type[ServerOptimizer]] = {
    cls.name: cls for cls in (FedAvg, FedAvgM, FedAdagrad, FedAdam, FedYogi)
}
OPTIMIZER_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def make_optimizer(name: str, **params: Any) -> ServerOptimizer:
    """Build the optimizer named in the configuration, e.g. ``make_optimizer("fedadam")``.

    Names are case-insensitive. Raises ConfigError for an unknown name, an unknown keyword
    (listing the valid ones) or an invalid value (lr ≤ 0, a beta outside [0, 1), tau ≤ 0).
    """
    key = name.strip().lower() if isinstance(name, str) else None
    if key not in _REGISTRY:
        raise ConfigError(
            f"optimizer={name!r} is invalid: unknown optimizer; "
            f"valid choices: {', '.join(OPTIMIZER_NAMES)}"
        )
    cls = _REGISTRY[key]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(
            f"optimizer {key!r}: unknown parameter(s) {', '.join(unknown)}; "
            f"valid parameters: {', '.join(accepted)}"
        )
    return cls(**params)
