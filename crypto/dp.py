"""Distributed differential privacy under secure aggregation: discrete noise, rotation, encoding.

Each client clips its update to an L2 bound C, rotates it with a randomized Hadamard
transform (random signs from *public* round randomness, then a normalised Walsh-Hadamard
transform: the norm is kept and the energy is spread evenly over the coordinates, so that a
few large coordinates cannot wrap around the ring), scales it by 1/gamma, rounds it to integers
(conditional stochastic rounding: re-round until the integer vector's norm stays under a
known bound, Kairouz et al. 2021), and adds its share of discrete noise:

* ``discrete_gaussian``: N_Z(0, sigma_c²) by the Canonne-Kamath-Steinke (2020) rejection
  sampler, vectorised (Kairouz, Liu, Steinke 2021, "DDGauss");
* ``skellam``: Poisson(mu) - Poisson(mu), variance 2mu (Agarwal, Kairouz, Liu 2021);
* ``gaussian``: N(0, sigma_c²) added before rounding (client-level DP in masked modes), by
  :meth:`Sampler.gaussian_mechanism`: the input is rounded to a fine grid and a discrete
  Gaussian is added there (never a floating-point Gaussian: Mironov 2012); the guarantee is
  the Gaussian mechanism's on the float sum, rounding to the coarse grid adds at most gamma/2
  per coordinate on top — use a discrete mechanism for an exact one.

The noise is sized so that the secure sum over ``min_survivors`` clients carries the target
standard deviation sigma = z·C: each client adds sigma_c = sigma/√min_survivors. **Dropout caveat**:
with more survivors the sum carries more noise (fine); the protocol never reveals a sum of
fewer than the round's minimum survivors, so ``min_survivors`` must not exceed it (the
appliance takes the round's own minimum). The accountant uses the survivors actually summed.

All randomness for noise and rounding comes from AES-CTR keyed with ``os.urandom`` (the
crypto PRG), never from numpy.random (not a CSPRNG, and a global seed the training code may
set): an attacker must not predict a client's noise. Client-level DP in the shim
(``client_shim.privacy``) uses this same sampler. The CKS sampler here works on float64
uniforms (as TensorFlow Federated's vectorised one does), not exact rational arithmetic, but
only where a probability is compared, never to place a sample: its discrete Laplace draws an
exact uniform integer below t (CKS Algorithm 2), so every integer of the support keeps a
probability within a relative ~2^-50 of the ideal one, whatever t (at most a few tail
integers beyond ~36t lose theirs: mass below 2^-50, a contribution to delta).

Ring layout of one client's vector (length ``padded_dimension + 2``):
``[ rotated, scaled, rounded, noised update | 1 (count) | ±1 + noise (below-clip indicator) ]``.
The indicator e = 2·1[‖x‖ ≤ C] - 1 has sensitivity 1; the appliance learns only its noisy
sum, from which adaptive clipping estimates the fraction of clients under the clip.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from typing import Literal

import numpy as np

from sealagg import kernels
from sealagg.crypto._primitives.prg import SEED_BYTES, expand_mask
from sealagg.crypto.config import RING_BITS

Mechanism = Literal["gaussian", "discrete_gaussian", "skellam"]
MECHANISMS: tuple[str, ...] = ("gaussian", "discrete_gaussian", "skellam")
#: Conditional rounding retries until the norm bound holds with probability ≥ 1 - β per try.
ROUNDING_BETA = math.exp(-0.5)
_MAX_ROUNDING_TRIES = 100
_SIGNED_LIMIT = (1 << (RING_BITS - 1)) - 1
#: The Gaussian mechanism's fine grid: step ≤ sigma·2^-FINE_GRID_BITS/√d (see
#: :func:`fine_grid_step`).
FINE_GRID_BITS = 20
#: Grid units beyond which int64 sums or float64 conversions would stop being exact.
_EXACT_LIMIT = 2.0**52
__all__ = [
    "MECHANISMS",
    "DistributedDPSpec",
    "Sampler",
    "decode_dp_sum",
    "encode_dp_update",
    "fine_grid_step",
    "hadamard_rotate",
    "hadamard_unrotate",
    "rotation_seed",
]


# ----------------------------------------------------------------------------- randomness


class Sampler:
    """Uniforms and noise from AES-CTR keyed by ``os.urandom`` (a fresh key per sampler).

    ``key`` is a deterministic seam for tests only; production callers pass nothing.
    """

    def __init__(self, key: bytes | None = None) -> None:
        self._key = os.urandom(SEED_BYTES) if key is None else key
        if len(self._key) != SEED_BYTES:
            raise ValueError("a sampler key is 32 bytes")
        self._offset = 0

    def words(self, count: int) -> np.ndarray:
        """``count`` uniform uint32 words (each keystream position used once)."""
        out = expand_mask(self._key, count, offset=self._offset)
        self._offset += count
        return out

    def uniform(self, size: int) -> np.ndarray:
        """Uniform float64 in the open interval (0, 1), 53 random bits each."""
        w = self.words(2 * size).astype(np.uint64).reshape(size, 2)
        bits = (w[:, 0] << np.uint64(21)) ^ (w[:, 1] >> np.uint64(11))
        return (bits.astype(np.float64) + 0.5) * 2.0**-53

    def bernoulli_exp(self, gamma: np.ndarray) -> np.ndarray:
        """Bernoulli(exp(-gamma)) per entry (gamma ≥ 0)."""
        return self.uniform(gamma.shape[0]) < np.exp(-gamma)

    def integers(self, bound: int, size: int) -> np.ndarray:
        """Exactly uniform integers in [0, bound): 32/64-bit words, rejection (no modulo bias)."""
        if not 1 <= bound <= 1 << 62:
            raise ValueError(f"bound must lie in 1..2^62, got {bound!r}")
        out = np.empty(size, dtype=np.int64)
        bits = 32 if bound <= 1 << 32 else 64  # one word per draw when it suffices
        accept_below = np.uint64((1 << bits) - (1 << bits) % bound - 1)  # inclusive
        todo = np.arange(size)
        while todo.size:
            if bits == 32:
                x = self.words(todo.size).astype(np.uint64)
            else:
                w = self.words(2 * todo.size).astype(np.uint64).reshape(todo.size, 2)
                x = (w[:, 0] << np.uint64(32)) | w[:, 1]
            keep = x <= accept_below
            out[todo[keep]] = (x[keep] % np.uint64(bound)).astype(np.int64)
            todo = todo[~keep]
        return out

    def discrete_laplace(self, t: int, size: int) -> np.ndarray:
        """P(y) ∝ exp(-|y|/t) for an integer t ≥ 1: CKS 2020 Algorithm 2, vectorised.

        |y| = U + t·V with U uniform in [0, t) kept with probability exp(-U/t) and V ~
        Geometric(1 - e^-1): U is an exact integer, and the float comparisons concern
        probabilities in [e^-1, 1] (relative error ~2^-52), so the float64 arithmetic never
        starves an integer of the support, however large t is (the Mironov 2012 concern).
        """
        if t < 1 or t != int(t):
            raise ValueError(f"t must be a positive integer, got {t!r}")
        t = int(t)
        out = np.zeros(size, dtype=np.int64)
        todo = np.arange(size)
        while todo.size:
            m = todo.size
            u = self.integers(t, m)
            keep = self.bernoulli_exp(u / t)
            v = np.floor(-np.log(self.uniform(m))).astype(np.int64)  # P(V ≥ k) = e^-k
            magnitude = u + t * v
            negative = (self.words(m) & np.uint32(1)).astype(bool)
            keep &= ~(negative & (magnitude == 0))  # +0 and -0 are one point
            out[todo[keep]] = np.where(negative[keep], -magnitude[keep], magnitude[keep])
            todo = todo[~keep]
        return out

    def discrete_gaussian(self, sigma: float, size: int) -> np.ndarray:
        """N_Z(0, sigma²): CKS 2020 Algorithm 3, discrete Laplace proposals, vectorised."""
        _check_scale(sigma, "sigma")
        out = np.zeros(size, dtype=np.int64)
        if sigma == 0.0 or size == 0:
            return out
        t = math.floor(sigma) + 1
        todo = np.arange(size)
        while todo.size:
            y = self.discrete_laplace(t, todo.size)
            gamma = (np.abs(y) - sigma * sigma / t) ** 2 / (2.0 * sigma * sigma)
            keep = self.bernoulli_exp(gamma)
            out[todo[keep]] = y[keep]
            todo = todo[~keep]
        return out

    def poisson(self, mu: float, size: int) -> np.ndarray:
        """Poisson(mu): inversion for mu < 10, Hörmann's PTRS (1993) above, vectorised."""
        _check_scale(mu, "mu")
        out = np.zeros(size, dtype=np.int64)
        if mu == 0.0 or size == 0:
            return out
        if mu < 10.0:
            u = self.uniform(size)
            k = np.zeros(size, dtype=np.int64)
            p = np.full(size, math.exp(-mu))
            cdf = p.copy()
            active = u > cdf
            while active.any():
                k[active] += 1
                p[active] *= mu / k[active]
                cdf[active] += p[active]
                active &= u > cdf
                active &= k < 10_000  # float round-off guard; P(k ≥ 10^4) is nil
            return k
        smu = math.sqrt(mu)
        b = 0.931 + 2.53 * smu
        a = -0.059 + 0.02483 * b
        inv_alpha = 1.1239 + 1.1328 / (b - 3.4)
        vr = 0.9277 - 3.6224 / (b - 2.0)
        log_mu = math.log(mu)
        todo = np.arange(size)
        while todo.size:
            u = self.uniform(todo.size) - 0.5
            v = self.uniform(todo.size)
            us = 0.5 - np.abs(u)
            k = np.floor((2.0 * a / us + b) * u + mu + 0.43)
            fast = (us >= 0.07) & (v <= vr)
            valid = (k >= 0) & ~((us < 0.013) & (v > us))
            slow = valid & ~fast
            check = np.flatnonzero(slow)
            kk = k[check]
            slow[check] = np.log(
                v[check] * inv_alpha / (a / (us[check] ** 2) + b)
            ) <= -mu + kk * log_mu - _lgamma(kk + 1.0)
            keep = fast | slow
            out[todo[keep]] = k[keep].astype(np.int64)
            todo = todo[~keep]
        return out

    def skellam(self, mu: float, size: int) -> np.ndarray:
        """Poisson(mu) - Poisson(mu): symmetric, integer, variance 2mu."""
        return self.poisson(mu, size) - self.poisson(mu, size)

    def gaussian_mechanism(self, values: np.ndarray, sigma: float) -> np.ndarray:
        """``values`` + N(0, sigma²) per coordinate, floating-point safe; float64 out.

        Why not ``values + sigma·(a float Gaussian)``: Mironov (2012) showed that the set of
        floating-point numbers a textbook sampler can output next to ``x`` depends on ``x``
        (Box-Muller, polar and inversion samplers alike), so one noisy value can reveal the
        input exactly; numpy's Gaussian is, besides, no CSPRNG. Here, as Canonne, Kamath and
        Steinke (2020) suggest, the input is first rounded to a fine grid of step ``g``
        (:func:`fine_grid_step`, a power of two chosen from sigma and the dimension only,
        never from the data), ``q = rint(x/g)``, and a discrete Gaussian N_Z(0, (sigma/g)²)
        is added in exact integer arithmetic: ``k = q + Z``. The output ``g·k`` is a function
        of the integer ``k`` alone, so its floating-point representation is post-processing.

        The privacy argument: the multivariate discrete Gaussian on an integer query with L2
        sensitivity D satisfies the same (D²/2s²)-concentrated DP as the continuous one (CKS
        Theorem 14; the RDP curve is identical), here with s = sigma/g. Rounding to nearest
        moves each coordinate by at most g/2, so the rounded query's sensitivity is at most
        C + √d·g ≤ C·(1 + z·2^-FINE_GRID_BITS) for an L2 clip C and sigma = z·C: the
        accountant's figures (computed for the continuous mechanism with sensitivity C) hold
        to a relative z·2^-20 (under 10^-4 for any z ≤ 100). The variance is sigma² to within
        e^(-2π²s²), s ≥ 2^20, so the noise's standard deviation is unchanged.
        """
        _check_scale(sigma, "sigma")
        x = np.asarray(values, dtype=np.float64).reshape(-1)
        if not np.isfinite(x).all():
            raise ValueError("values contain NaN or Inf; nothing sent")
        if sigma == 0.0 or x.size == 0:
            return x.copy()
        step = fine_grid_step(sigma, x.size)
        scaled = x / step
        if np.abs(scaled).max() >= _EXACT_LIMIT:
            raise ValueError("values too large for the noise's grid: clip before adding noise")
        k = np.rint(scaled).astype(np.int64) + self.discrete_gaussian(sigma / step, x.size)
        return k.astype(np.float64) * step


_lgamma = np.vectorize(math.lgamma, otypes=[np.float64])


def fine_grid_step(sigma: float, dimension: int) -> float:
    """The Gaussian mechanism's grid: the power of two nearest below sigma·2^-20/√d.

    Fine enough that rounding to it moves the L2 sensitivity by ≤ sigma·2^-20 (see
    :meth:`Sampler.gaussian_mechanism`); coarse enough that the noise, sigma/g < 2^21·√d grid
    units, stays far inside exact int64 and float64 integers.
    """
    if not (math.isfinite(sigma) and sigma > 0.0) or dimension < 1:
        raise ValueError("a fine grid needs sigma > 0 and a positive dimension")
    target = sigma * 2.0**-FINE_GRID_BITS / math.sqrt(dimension)
    return math.ldexp(1.0, math.frexp(target)[1] - 1)


def _check_scale(value: float, name: str) -> None:
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")


# ------------------------------------------------------------------------------- rotation


def rotation_seed(round_id: bytes) -> bytes:
    """The rotation's sign key: public, derived from the round id (both sides agree)."""
    return hashlib.sha256(b"sealagg/dp-rotation/v1" + bytes(round_id)).digest()


def _signs(seed: bytes, n: int) -> np.ndarray:
    bits = expand_mask(seed, (n + 31) // 32)
    flat = np.unpackbits(bits.view(np.uint8), bitorder="little")[:n]
    return 1.0 - 2.0 * flat.astype(np.float64)


def _fwht(x: np.ndarray) -> np.ndarray:
    """Orthonormal Walsh-Hadamard transform (self-inverse); len(x) a power of two."""
    n = x.shape[0]
    y = x.astype(np.float64, copy=True)
    h = 1
    while h < n:
        y = y.reshape(-1, 2, h)
        y = np.stack((y[:, 0] + y[:, 1], y[:, 0] - y[:, 1]), axis=1)
        h *= 2
    return y.reshape(n) / math.sqrt(n)


def padded_length(dimension: int) -> int:
    """The next power of two ≥ ``dimension`` (the Hadamard transform's size)."""
    if dimension < 1:
        raise ValueError("dimension must be positive")
    return 1 << (dimension - 1).bit_length()


def hadamard_rotate(x: np.ndarray, seed: bytes) -> np.ndarray:
    """H·D·x (zero-padded to a power of two): orthogonal, so ‖·‖₂ is unchanged."""
    x = np.asarray(x, dtype=np.float64)
    n = padded_length(x.shape[0])
    padded = np.zeros(n)
    padded[: x.shape[0]] = x
    return _fwht(padded * _signs(seed, n))


def hadamard_unrotate(y: np.ndarray, seed: bytes, dimension: int) -> np.ndarray:
    """The inverse of :func:`hadamard_rotate`: D·H·y, truncated to ``dimension``."""
    y = np.asarray(y, dtype=np.float64)
    return (_fwht(y) * _signs(seed, y.shape[0]))[:dimension]


# ---------------------------------------------------------------------------- the spec


@dataclasses.dataclass(frozen=True)
class DistributedDPSpec:
    """The public parameters of a DP round; both sides derive the same gamma and bounds from it.

    ``noise_std`` is sigma_c, the standard deviation each client adds per coordinate in update
    units (sigma_total/√min_survivors); ``indicator_std`` the same for the ±1 clip indicator in
    count units (0 turns the indicator off: no adaptive clipping). ``max_clients`` sizes the
    range; ``range_bits`` is how many bits the sum's ±``range_stddevs``·sigma interval takes,
    which leaves 2^(32-range_bits) of headroom before a coordinate wraps.
    """

    mechanism: Mechanism
    dimension: int
    clip: float
    noise_std: float
    indicator_std: float
    max_clients: int
    range_bits: int = 20
    range_stddevs: float = 4.0

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"mechanism must be one of {MECHANISMS}, got {self.mechanism!r}")
        if self.dimension < 1 or self.max_clients < 1:
            raise ValueError("dimension and max_clients must be positive")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip must be a positive L2 bound, got {self.clip!r}")
        for name in ("noise_std", "indicator_std"):
            _check_scale(getattr(self, name), name)
        if not 8 <= self.range_bits <= 28:
            raise ValueError("range_bits must lie in 8..28 (headroom is what is left of 32)")
        if not self.range_stddevs >= 1.0:
            raise ValueError("range_stddevs must be >= 1")
        if self.mechanism != "gaussian" and self.noise_std == 0.0:
            raise ValueError("distributed DP without noise: use the plain encoder")

    @property
    def padded_dimension(self) -> int:
        return padded_length(self.dimension)

    @property
    def vector_length(self) -> int:
        """Ring coordinates: the rotated update, the count and the clip indicator."""
        return self.padded_dimension + 2

    @property
    def gamma(self) -> float:
        """Grid step gamma (update units per integer): the sum's likely range fills range_bits."""
        n, d = self.max_clients, self.padded_dimension
        spread = math.sqrt(n * n * self.clip**2 / d + n * self.noise_std**2)
        return 2.0 * self.range_stddevs * spread / 2.0**self.range_bits

    @property
    def noise_units(self) -> float:
        """Each client's noise standard deviation in grid units (sigma_c/gamma)."""
        return self.noise_std / self.gamma

    @property
    def skellam_mu(self) -> float:
        """mu with 2mu = (sigma_c/gamma)², for the Skellam mechanism."""
        return self.noise_units**2 / 2.0

    @property
    def norm_bound_units(self) -> float:
        """Norm bound of the rounded vector (grid units) enforced by conditional rounding.

        Kairouz et al. 2021, eq. (7) with β = e^-0.5: sqrt(c² + d/4 + √(2 ln 1/β)(c + √d/2)).
        """
        c = self.clip / self.gamma
        d = self.padded_dimension
        return math.sqrt(
            c * c
            + d / 4.0
            + math.sqrt(2.0 * math.log(1.0 / ROUNDING_BETA)) * (c + math.sqrt(d) / 2)
        )

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity of the summed update in update units (C, or the rounded bound)."""
        if self.mechanism == "gaussian":
            return self.clip
        return self.norm_bound_units * self.gamma

    def client_noise_variance(self) -> float:
        """Per-coordinate variance of one client's noise, in update units squared.

        For the discrete Gaussian this is the sigma² of the sampler's parameter (its true
        variance is at most sigma² and within e^(-2π²sigma²) of it for sigma ≥ 1).
        """
        return self.noise_std**2

    def tau(self, survivors: int) -> float:
        """Kairouz et al. 2021 Thm 1's τ: how far a sum of discrete Gaussians is from one.

        ε grows by at most τ-ish terms; with sigma_c/gamma ≫ 1 it is 0.0 in float64. Reported, not
        added (the accountant treats the sum as a Gaussian mechanism).
        """
        if self.mechanism != "discrete_gaussian":
            return 0.0
        s2 = self.noise_units**2
        return 10.0 * sum(
            math.exp(-2.0 * math.pi**2 * s2 * k / (k + 1)) for k in range(1, max(survivors, 1))
        )


# ---------------------------------------------------------------------------- encoding


def _to_ring(values: np.ndarray) -> np.ndarray:
    return (values.astype(np.int64) & 0xFFFFFFFF).astype(np.uint32)


def encode_dp_update(
    update: np.ndarray,
    spec: DistributedDPSpec,
    seed: bytes,
    *,
    sampler: Sampler | None = None,
    scale: float = 1.0,
) -> tuple[np.ndarray, bool]:
    """One client's DP ring vector and whether its update was already within the clip.

    Clip to C, rotate (``seed`` from :func:`rotation_seed`), scale by 1/gamma, round (conditional
    stochastic rounding for discrete mechanisms, continuous noise first for ``gaussian``),
    add the client's discrete noise share, append the count and the noisy indicator.

    ``scale`` in (0, 1] multiplies the *clipped* update, never the noise (an asynchronous
    buffer's staleness weight ``s(tau)``, :mod:`crypto.buffer_context`): the input's L2 norm
    stays at most ``scale·C <= C``, so the sum's sensitivity, the rounding bound and the range
    are those of an unscaled round, and the noise share is the full one whatever ``scale`` is.
    """
    if not (isinstance(scale, int | float) and math.isfinite(scale) and 0.0 < scale <= 1.0):
        raise ValueError(f"scale must lie in (0, 1], got {scale!r}")
    x = np.asarray(update, dtype=np.float64)
    if x.shape != (spec.dimension,):
        raise ValueError(f"update has shape {x.shape}, the spec needs ({spec.dimension},)")
    if not np.isfinite(x).all():
        raise ValueError("update contains NaN or Inf; nothing sent")
    rng = sampler or Sampler()
    clipped, norm = kernels.clip_l2(x, spec.clip)  # the one L2 clip (float32, never over C)
    below = norm <= spec.clip
    if not below:
        x = clipped.astype(np.float64)
    if scale != 1.0:  # after the clip: ‖scale·x‖ <= scale·C <= C
        x = x * float(scale)
    scaled = hadamard_rotate(x, seed) / spec.gamma
    n = scaled.shape[0]
    if spec.mechanism == "gaussian":
        noisy = rng.gaussian_mechanism(scaled, spec.noise_units)
        rounded = np.floor(noisy + rng.uniform(n)).astype(np.int64)
    else:
        bound = spec.norm_bound_units
        for _ in range(_MAX_ROUNDING_TRIES):
            rounded = np.floor(scaled + rng.uniform(n)).astype(np.int64)
            if float(np.linalg.norm(rounded.astype(np.float64))) <= bound:
                break
        else:  # probability ≤ (1-β)^100: practically never
            raise RuntimeError("conditional rounding did not meet its norm bound")
        if spec.mechanism == "discrete_gaussian":
            rounded += rng.discrete_gaussian(spec.noise_units, n)
        else:
            rounded += rng.skellam(spec.skellam_mu, n)
    indicator = 1 if below else -1
    if spec.indicator_std > 0.0:
        if spec.mechanism == "skellam":
            indicator += int(rng.skellam(spec.indicator_std**2 / 2.0, 1)[0])
        else:
            indicator += int(rng.discrete_gaussian(spec.indicator_std, 1)[0])
    else:
        indicator = 0
    if np.abs(rounded).max(initial=0) > _SIGNED_LIMIT // spec.max_clients:
        raise RuntimeError("a coordinate exceeds its share of the ring; lower range_bits")
    out = np.empty(spec.vector_length, dtype=np.uint32)
    out[:n] = _to_ring(rounded)
    out[n] = 1
    out[n + 1] = _to_ring(np.array([indicator]))[0]
    return out, below


@dataclasses.dataclass(frozen=True)
class DecodedDPSum:
    """The mean update, the count summed, and the noisy number of clients under the clip."""

    mean_update: np.ndarray
    count: int
    noisy_below_clip: float
    wrapped_fraction: float


def _signed(values: np.ndarray) -> np.ndarray:
    return values.astype(np.uint32).view(np.int32).astype(np.int64)


def decode_dp_sum(total: np.ndarray, spec: DistributedDPSpec, seed: bytes) -> DecodedDPSum:
    """Undo the ring, the scaling and the rotation of an unmasked sum; divide by the count.

    ``wrapped_fraction`` is the share of coordinates within 1% of the ring's edge: wrap-around
    (modular clipping) shows up there first, so a non-zero value belongs in the audit log.
    """
    if total.dtype != np.uint32 or total.shape != (spec.vector_length,):
        raise TypeError(f"a DP sum is a uint32 vector of length {spec.vector_length}")
    signed = _signed(total)
    n = spec.padded_dimension
    count = int(signed[n])
    if count <= 0:
        raise ValueError("the aggregated count is not positive: nothing to average")
    body = signed[:n]
    edge = np.count_nonzero(np.abs(body) > 0.99 * _SIGNED_LIMIT)
    summed = hadamard_unrotate(body.astype(np.float64) * spec.gamma, seed, spec.dimension)
    below = (float(signed[n + 1]) + count) / 2.0 if spec.indicator_std > 0.0 else float("nan")
    return DecodedDPSum(summed / count, count, below, float(edge) / n)
