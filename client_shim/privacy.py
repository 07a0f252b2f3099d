"""Client-side protection of an update before it is masked: L2 clipping and client-level DP.

Everything here is numpy only (no torch, no opacus), so the appliance's tests and a
torch-free client can use it.

:class:`ClientDP` asks each client to clip its whole update to an L2 bound and add Gaussian
noise of standard deviation ``noise_multiplier * clip`` before the update leaves the process
(the Gaussian mechanism applied per client, as in DP-FedAvg with local noise). Every client
adds the full noise, so the published aggregate carries more noise than central DP would
need (local-DP-like protection of each update, with no accounting on the appliance); the
federation-wide options below add only a share each. The noise comes from the same sampler as
distributed DP (:class:`sealagg.crypto.dp.Sampler`: AES-CTR keyed by ``os.urandom`` afresh on
every call, never numpy.random), so it cannot be replayed or predicted from a global seed the
training code may have set, and it is added on a fine integer grid
(:meth:`~sealagg.crypto.dp.Sampler.gaussian_mechanism`), because a floating-point Gaussian
leaks the input through the low bits of its output (Mironov 2012).

:func:`round_privacy` is the federation-wide counterpart the appliance asks for in each
round's ``RoundStart.privacy`` (``[privacy]`` in ``sealagg.toml``): clip to the round's C
(adaptive clipping moves it), add this client's *share* of the noise (sigma/√min_survivors), and
report whether the update was under the clip (plaintext: as metadata; masked: as a noisy
extra coordinate of the masked vector, see :mod:`crypto.dp`). All its noise and rounding
come from that same sampler. Those parameters are the appliance's word, so the client holds
them to the federation's signed DP floor (:func:`check_round_privacy`, the one rule of
:func:`crypto.policy.check_privacy_against_policy`): at round start, before training, on the
noise multiplier the numbers it is told to add amount to; and again once the model's
dimension fixes a discrete mechanism's grid, on the effective one. Below the floor, or no DP
where the policy requires it, the round is refused (:class:`PrivacyRefusedError`, reported
with the ``privacy`` code) and nothing of this client's leaves.

Note that without round DP the appliance clips every *coordinate* to ``aggregation.clip``
before quantization; :class:`ClientDP` noise large compared with that range gets clipped there
as well, which biases the mean. Keep ``noise_multiplier * clip`` well below that clip. (Round
DP uses its own encoding, :mod:`crypto.dp`, sized for its noise.)

:func:`opacus_epsilon` reads the privacy spent by example-level DP-SGD (Opacus) so that the
client can report it to the appliance with each submission.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import TYPE_CHECKING, Any

import numpy as np

from sealagg import kernels
from sealagg.client_shim.errors import PrivacyRefusedError
from sealagg.crypto.dp import (
    MECHANISMS,
    DistributedDPSpec,
    Sampler,
    encode_dp_update,
    rotation_seed,
)
from sealagg.crypto.policy import (
    FederationPolicy,
    PrivacyFloorError,
    RoundNoise,
    check_privacy_against_policy,
)

if TYPE_CHECKING:
    from sealagg.appliance.wire import sealagg_pb2 as pb

__all__ = [
    "ClientDP",
    "PrivacyRefusedError",
    "RoundPrivacy",
    "add_gaussian_noise",
    "check_round_privacy",
    "clip_l2",
    "opacus_epsilon",
    "protect_update",
    "round_noise",
    "round_privacy",
]


def _real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


@dataclasses.dataclass(frozen=True)
class ClientDP:
    """Client-level DP: clip the whole update to ``clip`` (L2), add N(0, (nm·clip)²) noise."""

    clip: float
    noise_multiplier: float

    def __post_init__(self) -> None:
        clip = _real("ClientDP.clip", self.clip)
        noise = _real("ClientDP.noise_multiplier", self.noise_multiplier)
        if clip <= 0.0:
            raise ValueError(f"ClientDP.clip must be > 0 (an L2 bound), got {self.clip!r}")
        if noise < 0.0:
            raise ValueError(
                f"ClientDP.noise_multiplier must be >= 0, got {self.noise_multiplier!r}"
            )
        object.__setattr__(self, "clip", clip)
        object.__setattr__(self, "noise_multiplier", noise)

    @property
    def noise_std(self) -> float:
        """Standard deviation of the Gaussian noise added to each coordinate."""
        return self.noise_multiplier * self.clip


def clip_l2(update: np.ndarray, bound: float) -> np.ndarray:
    """``update`` scaled down so that its L2 norm is at most ``bound`` (a float32 copy).

    The one L2 clip is :func:`sealagg.kernels.clip_l2`; this keeps the shim's argument
    checks (any shape, a real positive bound) and drops the norm it also returns.
    """
    bound = _real("clip", bound)
    if bound <= 0.0:
        raise ValueError(f"clip must be > 0 (an L2 bound), got {bound!r}")
    x = np.asarray(update, dtype=np.float32)
    return kernels.clip_l2(x.reshape(-1), bound)[0].reshape(x.shape)


def add_gaussian_noise(update: np.ndarray, std: float) -> np.ndarray:
    """``update`` plus N(0, std²) per coordinate: the crypto sampler's floating-point-safe
    Gaussian mechanism, keyed from ``os.urandom`` on every call (the float32 cast of its
    output is post-processing)."""
    std = _real("std", std)
    if std < 0.0:
        raise ValueError(f"std must be >= 0, got {std!r}")
    x = np.asarray(update, dtype=np.float32)
    if std == 0.0:
        return x.copy()
    noisy = Sampler().gaussian_mechanism(x.astype(np.float64), std)
    return noisy.reshape(x.shape).astype(np.float32)


def protect_update(
    update: np.ndarray, *, clip: float | None = None, dp: ClientDP | None = None
) -> np.ndarray:
    """Apply the client's L2 clip (if any), then client-level DP (if any); float32 out."""
    out = np.asarray(update, dtype=np.float32)
    if clip is not None:
        out = clip_l2(out, clip)
    if dp is not None:
        out = add_gaussian_noise(clip_l2(out, dp.clip), dp.noise_std)
    return out


def opacus_epsilon(privacy_engine: Any, delta: float) -> float:
    """The ε spent so far by an Opacus ``PrivacyEngine`` at ``delta`` (0.0 before any step).

    Opacus' accountants fail on an empty history; no private step taken means nothing
    spent, so this returns 0.0 then.
    """
    delta = _real("delta", delta)
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}")
    accountant = getattr(privacy_engine, "accountant", None)
    try:
        if accountant is not None and len(accountant) == 0:
            return 0.0
    except TypeError:  # an accountant without a history length: ask the engine
        pass
    epsilon = float(privacy_engine.get_epsilon(delta))
    if math.isnan(epsilon) or epsilon < 0.0:
        raise ValueError(f"the privacy engine reported an invalid epsilon {epsilon!r}")
    return epsilon


@dataclasses.dataclass(frozen=True)
class RoundPrivacy:
    """This round's client-level DP as the client applies it (from ``RoundStart.privacy``)."""

    mode: str
    spec: DistributedDPSpec
    seed: bytes

    def protect_plain(self, update: np.ndarray) -> tuple[np.ndarray, bool]:
        """Plaintext mode: the clipped update plus this client's Gaussian share; under clip?"""
        clipped, norm = kernels.clip_l2(np.asarray(update, dtype=np.float32), self.spec.clip)
        return add_gaussian_noise(clipped, self.spec.noise_std), norm <= self.spec.clip

    def encode(self, update: np.ndarray, *, scale: float = 1.0) -> tuple[np.ndarray, bool]:
        """Masked modes: the ring vector (rotated, rounded, noised, count, indicator).

        ``scale``: an asynchronous buffer's ``s(tau)`` from the round's transcript, applied to
        the clipped update only; the noise share stays the full one (the buffer's noise must
        not shrink with its members' staleness: :mod:`appliance.async_privacy`)."""
        return encode_dp_update(update, self.spec, self.seed, scale=scale)


def round_noise(start: pb.RoundStart, spec: DistributedDPSpec | None = None) -> RoundNoise | None:
    """The noise ``start`` asks this client to add, as the policy rule reads it (None: no
    DP); ``spec`` adds a discrete mechanism's rounded sensitivity once the dimension is known.
    """
    if not start.HasField("privacy") or start.privacy.mode in ("", "none"):
        return None
    p = start.privacy
    return RoundNoise(
        mode=p.mode,
        mechanism=p.mechanism,
        clip=p.clip,
        noise_std=p.noise_std,
        indicator_std=p.indicator_std,
        min_survivors=p.min_survivors,
        sensitivity=None if spec is None else spec.sensitivity,
    )


def check_round_privacy(
    policy: FederationPolicy, start: pb.RoundStart, spec: DistributedDPSpec | None = None
) -> None:
    """Refuse a round whose DP is below ``policy``'s signed floor or missing where the policy
    requires it: :class:`PrivacyRefusedError` (reported as ``privacy``), nothing sent.

    The appliance runs the same crypto rule on its configuration and on every round it
    plans, so an honest appliance never opens a round this refuses."""
    try:
        check_privacy_against_policy(policy, round_noise(start, spec))
    except PrivacyFloorError as error:
        raise PrivacyRefusedError(f"{error}; nothing was sent") from None


def round_privacy(
    start: pb.RoundStart, dimension: int, policy: FederationPolicy | None = None
) -> RoundPrivacy | None:
    """The round's DP parameters, checked; None when the round runs without DP.

    Refuses noise sized for more survivors than the protocol guarantees (the appliance
    could otherwise reveal a sum over fewer clients, with less noise than it claims), a
    distributed mode outside masked aggregation, noise that is zero or not finite, and,
    with ``policy``, DP below its signed floor (:func:`check_round_privacy`, with the
    rounded sensitivity of a discrete mechanism) or missing where it requires DP.
    """
    if not start.HasField("privacy") or start.privacy.mode in ("", "none"):
        if policy is not None:
            check_round_privacy(policy, start)  # refused if the policy requires DP
        return None
    p = start.privacy
    if start.mode not in ("plaintext", "attested", "secagg", "secagg+"):
        raise PrivacyRefusedError(f"client-level DP is not available in {start.mode} mode yet")
    masked = start.mode not in ("plaintext", "attested")  # attested: each update seen in a TEE
    if p.mode not in ("client", "distributed"):
        raise PrivacyRefusedError(f"unknown privacy mode {p.mode!r}")
    if p.mode == "distributed" and not masked:
        raise PrivacyRefusedError("distributed DP in plaintext mode would expose the noise shares")
    if p.mechanism not in MECHANISMS or (p.mode == "distributed") == (p.mechanism == "gaussian"):
        raise PrivacyRefusedError(f"mechanism {p.mechanism!r} does not fit mode {p.mode!r}")
    if not (math.isfinite(p.noise_std) and p.noise_std > 0.0) or p.min_survivors < 1:
        raise PrivacyRefusedError("the round asks for no noise")
    if masked and p.min_survivors > start.minimum_survivors:
        raise PrivacyRefusedError(
            f"noise sized for {p.min_survivors} survivors, but the protocol reveals sums over "
            f"as few as {start.minimum_survivors}"
        )
    try:
        spec = DistributedDPSpec(
            mechanism=p.mechanism,  # type: ignore[arg-type]
            dimension=dimension,
            clip=p.clip,
            noise_std=p.noise_std,
            indicator_std=p.indicator_std,
            max_clients=max(start.max_clients, 1),
            range_bits=p.range_bits or 20,
        )
    except ValueError as error:
        raise PrivacyRefusedError(f"invalid privacy parameters: {error}") from None
    if policy is not None:
        check_round_privacy(policy, start, spec)
    return RoundPrivacy(p.mode, spec, rotation_seed(bytes(start.round_id)))
