"""The appliance's side of client-level DP: per-round parameters, adaptive clip, accounting.

Per round the :class:`PrivacyController` decides the parameters every client applies
(``RoundStart.privacy``), decodes the DP sum in masked modes, moves the adaptive clip,
records the round with the accountant and appends a ``privacy`` entry to the audit log.
Its state (the current clip, every round's sampling rate and effective noise, the local
DP-SGD ε clients last reported) is persisted next to the state database, so a restart
neither resets the clip nor forgets spent budget.

Noise and the dropout caveat. The noise is sized so that a sum over ``m`` clients (the
round's protocol minimum of survivors, or ``privacy.min_survivors`` if larger, in which
case the protocol's minimum is raised to it) carries sigma = z·C: each client adds sigma/√m. Fewer
survivors would mean less noise, so in masked modes no sum over fewer than ``m`` is ever
revealed (clients refuse to unmask, and refuse a round whose ``m`` exceeds the protocol's),
and in plaintext mode a round with fewer than ``m`` updates is aborted, not published.
More survivors mean more noise than needed; the accountant uses the survivors actually
summed, so ε is never understated, and the effective noise is audited per round.

Adaptive clipping (Andrew et al. 2021): each client also contributes e = ±1 (under / over
the clip) with noise; from the noisy count b̄ of clients under the clip,
C ← C·exp(-η(b̄/s - target)). The noise budget z is split as z_Δ⁻² + (2sigma_b)⁻² = z⁻² so the
pair is one Gaussian of multiplier z (which the accountant composes). In plaintext mode the
appliance sees the bits (metadata) and adds the count's noise itself.

The federation's DP floor. The authority's signed policy may set a floor on the noise
multiplier and require DP (:func:`crypto.policy.check_privacy_against_policy`); every
client refuses a round below it. The appliance runs the same rule first: on its
configuration when it starts (:meth:`PrivacyController.use_policy`), and on every round it
plans, with the very numbers the clients receive (and a discrete mechanism's rounded
sensitivity), so an honest appliance never opens a round its clients would refuse.

Budget: with ``target_epsilon`` set, a round is *refused* (not opened) when ε after it
(assuming the configured noise) would exceed the target; the appliance then opens no more
rounds and says so in its status and audit log.

Asynchronous runs account per client (:mod:`appliance.async_privacy`, ``self.clients``): a
fast client contributes to more buffers than a slow one. The two ledgers compose: each
client's async ε includes every synchronous round, and the federation ε here includes the
most-charged client's async contributions, so neither schedule hides the other's spending.
A masked buffer's round is planned here like any masked round (its noise sized for the
round's own minimum of survivors) but as a :class:`BufferRoundPlan`: decoded with the
transcript's staleness weights and charged per survivor in ``self.clients``, never to
``self.rounds`` (no client is charged twice for one buffer).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from sealagg.appliance.accounting import (
    RoundPrivacy,
    combine_noise_multipliers,
    conservative,
    epsilon,
)
from sealagg.appliance.async_privacy import ClientBudgetExhaustedError, ClientPrivacyLedger
from sealagg.appliance.audit import AuditLog
from sealagg.appliance.config import PrivacySection
from sealagg.appliance.errors import ConfigError
from sealagg.appliance.pki import write_file_atomic
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.crypto.config import default_minimum_survivors
from sealagg.crypto.dp import DistributedDPSpec, Sampler, decode_dp_sum, rotation_seed
from sealagg.crypto.policy import (
    FederationPolicy,
    PrivacyFloorError,
    RoundNoise,
    check_privacy_against_policy,
)

_log = logging.getLogger("sealagg.privacy")
STATE_FILE = "privacy_state.json"
#: Modes where the appliance sums individual float updates (a TEE in attested mode).
UNMASKED_MODES = ("plaintext", "attested")
_CLIP_RANGE = (1e-6, 1e6)
__all__ = ["BufferRoundPlan", "PrivacyBudgetExhaustedError", "PrivacyController", "RoundPlan"]


class PrivacyBudgetExhaustedError(RuntimeError):
    """Opening another round would spend more than ``privacy.target_epsilon``."""


@dataclasses.dataclass(frozen=True)
class RoundPlan:
    """One round's DP parameters as sent to the clients, and what accounting needs."""

    number: int
    mode: str  # "client" | "distributed"
    masked: bool
    spec: DistributedDPSpec
    seed: bytes
    min_survivors: int
    sampling_rate: float
    count_noise: float  # sigma of the noisy ±1 sum, total over m clients (0 = not adaptive)

    def params(self) -> pb.PrivacyParams:
        return pb.PrivacyParams(
            mode=self.mode,
            mechanism=self.spec.mechanism,
            clip=self.spec.clip,
            noise_std=self.spec.noise_std,
            indicator_std=self.spec.indicator_std,
            min_survivors=self.min_survivors,
            range_bits=self.spec.range_bits,
        )

    def vector_length(self) -> int:
        return self.spec.vector_length

    def noise(self) -> RoundNoise:
        """The noise the clients are told to add, as the policy rule reads it (their view)."""
        return RoundNoise(
            mode=self.mode,
            mechanism=self.spec.mechanism,
            clip=self.spec.clip,
            noise_std=self.spec.noise_std,
            indicator_std=self.spec.indicator_std,
            min_survivors=self.min_survivors,
            sensitivity=self.spec.sensitivity,
        )

    def decode(self, total: np.ndarray) -> tuple[np.ndarray, float, dict]:
        """Masked modes: (mean update, survivors, extras) from the unmasked ring sum."""
        out = decode_dp_sum(total, self.spec, self.seed)
        extras = {"noisy_below_clip": out.noisy_below_clip, "wrapped": out.wrapped_fraction}
        return out.mean_update, float(out.count), extras


@dataclasses.dataclass(frozen=True)
class BufferRoundPlan(RoundPlan):
    """A masked asynchronous buffer's round under DP (:mod:`appliance.async_privacy`,
    "Masked buffers"): the synchronous masked plan's noise, the staleness weights ``s(tau)``
    of its members as the round's transcript fixes them, and what the per-client charge
    names. Members scale their clipped update by ``s(tau)``, not their noise; the count
    coordinate stays 1 each."""

    run_id: str = ""
    buffer_index: int = 0
    buffer_size: int = 0
    weights: Mapping[int, float] = dataclasses.field(default_factory=dict)  # index -> s(tau)
    names: Mapping[int, str] = dataclasses.field(default_factory=dict)  # index -> member

    def decode_survivors(
        self, total: np.ndarray, survivors: Iterable[int]
    ) -> tuple[np.ndarray, float, dict]:
        """(staleness-weighted mean, Σ s(tau) over the survivors, extras) from the ring sum.

        The sum is ``Σ s_i·x_i + noise``; dividing by ``Σ s_i`` (public: the transcript) is
        post-processing. ValueError (the buffer is aborted, nothing published) when the count
        coordinate is not the number of survivors: some member did not count exactly once.
        """
        ids = sorted(int(u) for u in survivors)
        out = decode_dp_sum(total, self.spec, self.seed)
        if out.count != len(ids):
            raise ValueError(
                f"the count coordinate sums to {out.count}, not the {len(ids)} survivors: a "
                "member's vector does not count once"
            )
        try:
            weight = math.fsum(self.weights[u] for u in ids)
        except KeyError:
            raise ValueError("a survivor has no staleness weight in the buffer") from None
        if not (math.isfinite(weight) and weight > 0.0):
            raise ValueError("the survivors' staleness weights sum to no positive weight")
        mean = out.mean_update * (out.count / weight)  # Σ s·x / Σ s
        extras = {"noisy_below_clip": float("nan"), "wrapped": out.wrapped_fraction}
        return mean, weight, extras


class PrivacyController:
    """Per-federation DP state: the clip, the accountant's rounds, local ε reports."""

    def __init__(self, config: PrivacySection, folder: Path, audit: AuditLog) -> None:
        self.config = config
        self._path = Path(folder) / STATE_FILE
        self._audit = audit
        self.clip = config.clip
        self.rounds: list[RoundPrivacy] = []
        self.local_epsilon: dict[str, float] = {}
        self.last: dict = {}
        self.exhausted = ""
        self._spent: tuple[tuple, float] | None = None
        self._load()
        #: Per-client ε of asynchronous runs (beside this file, ``privacy_clients.json``).
        self.clients = ClientPrivacyLedger(config, folder, audit, base_rounds=lambda: self.rounds)
        #: The policy every client enforces (the authority's signed one): see :meth:`use_policy`.
        self._policy: Callable[[], FederationPolicy] | None = None

    @property
    def enabled(self) -> bool:
        return self.config.mode != "none"

    @property
    def adaptive(self) -> bool:
        return self.config.target_quantile is not None

    # ---------------------------------------------------------------- the signed floor

    def use_policy(self, policy: Callable[[], FederationPolicy]) -> None:
        """Hold every round to ``policy()`` (read anew per round: a roster installed while
        running governs the next round) and check the configuration now.

        Raises :class:`ConfigError` (the rule's reason) when ``[privacy]`` is below the
        policy's floor or off where it requires DP: the appliance refuses to start what
        every client would refuse."""
        try:
            self.check_policy(policy())
        except PrivacyFloorError as error:
            raise ConfigError(
                f"[privacy]: the clients' signed federation policy would refuse every round: "
                f"{error}"
            ) from None
        self._policy = policy

    def check_policy(self, policy: FederationPolicy) -> None:
        """The clients' DP rule on the configuration: z (with adaptive clipping, the update's
        and the clip bit's noise together, which the split keeps at z), any clip, one client
        (the ratio does not depend on m). A discrete mechanism's grid is checked per round."""
        if not self.enabled:
            check_privacy_against_policy(policy, None)
            return
        z, clip = self.config.noise_multiplier, self.config.clip
        mechanism = "gaussian" if self.config.mode == "client" else self.config.mechanism
        noise = RoundNoise(
            self.config.mode, mechanism, clip=clip, noise_std=z * clip, min_survivors=1
        )
        check_privacy_against_policy(policy, noise)

    def _check_round(self, plan: RoundPlan | None) -> None:
        """The clients' DP rule on the round about to be sent (their numbers, exactly)."""
        if self._policy is not None:
            check_privacy_against_policy(self._policy(), None if plan is None else plan.noise())

    # ------------------------------------------------------------------------ planning

    def _split(self, expected: int) -> tuple[float, float]:
        """(update z_D, count sigma_e of the ±1 bits): z_D⁻² + sigma_e⁻² = z⁻² (Andrew et al.)."""
        z = self.config.noise_multiplier
        if not self.adaptive:
            return z, 0.0
        sigma_b = self.config.quantile_noise or expected / 20.0
        sigma_e = 2.0 * sigma_b  # e = 2b - 1: sensitivity 1 instead of ½
        if sigma_e <= z:
            raise ValueError(
                f"privacy.quantile_noise {sigma_b:g} leaves no budget for the update at "
                f"noise_multiplier {z:g}: it must exceed z/2"
            )
        return (z**-2 - sigma_e**-2) ** -0.5, sigma_e

    def protocol_minimum(self, default: int, n: int) -> int:
        """The minimum survivors the protocol must enforce: DP's minimum if larger."""
        return min(n, max(default, self.config.min_survivors))

    def sampling_rate(self, round_size: int) -> float:
        pop = self.config.population
        return 1.0 if pop <= 0 else min(1.0, round_size / pop)

    def check_budget(self, round_size: int) -> None:
        """Raise :class:`PrivacyBudgetExhaustedError` if this round would pass the target."""
        target = self.config.target_epsilon
        if target <= 0.0:
            return
        nxt = RoundPrivacy(0, self.sampling_rate(round_size), self.config.noise_multiplier)
        eps = epsilon([*self._accounted(), nxt], self.config.delta, self.config.accountant)
        if eps <= target:
            self.exhausted = ""
            return
        if not self.exhausted:
            _log.warning("privacy budget exhausted: ε next %.3f > target %g", eps, target)
            self.exhausted = (
                f"privacy budget: another round would reach ε = {eps:.3f} > target "
                f"{target:g} (δ = {self.config.delta:g}); no more rounds are opened"
            )
            self._audit.append(
                "privacy_budget_exhausted",
                {"epsilon_spent": _finite(self.spent()), "epsilon_next": eps, "target": target},
            )
            self._save()
        raise PrivacyBudgetExhaustedError(self.exhausted)

    def plan(
        self, *, number: int, round_id: bytes, masked: bool, n: int, dimension: int, minimum: int
    ) -> RoundPlan:
        """This round's parameters for ``n`` clients whose protocol minimum is ``minimum``."""
        m = max(1, minimum if masked else (self.config.min_survivors or minimum))
        z_update, sigma_e = self._split(n)
        mechanism = "gaussian" if self.config.mode == "client" else self.config.mechanism
        spec = DistributedDPSpec(
            mechanism=mechanism,  # type: ignore[arg-type]
            dimension=dimension,
            clip=self.clip,
            noise_std=z_update * self.clip / math.sqrt(m),
            indicator_std=sigma_e / math.sqrt(m) if masked else 0.0,
            max_clients=n,
            range_bits=self.config.range_bits,
        )
        return RoundPlan(
            number=number,
            mode=self.config.mode,
            masked=masked,
            spec=spec,
            seed=rotation_seed(round_id),
            min_survivors=m,
            sampling_rate=self.sampling_rate(n),
            count_noise=sigma_e,
        )

    # ---------------------------------------------------------- orchestrator hooks

    def minimum_survivors(self, n: int, threshold: int) -> int | None:
        """The protocol's minimum survivors when DP needs more than the default, else None."""
        if not self.enabled or not self.config.min_survivors:
            return None
        return self.protocol_minimum(default_minimum_survivors(n, threshold), n)

    def vector_length(self, dimension: int, plain_length: int) -> int:
        """Masked vector length: DP's layout (padded + count + indicator) or the plain one."""
        if not self.enabled:
            return plain_length
        return DistributedDPSpec(
            mechanism="gaussian",
            dimension=dimension,
            clip=1.0,
            noise_std=1.0,
            indicator_std=0.0,
            max_clients=1,
        ).vector_length

    def plan_for(self, start: pb.RoundStart, *, dimension: int, minimum: int) -> RoundPlan | None:
        """Plan the round ``start`` describes and put the parameters into it (None: no DP).

        Raises :class:`~sealagg.crypto.policy.PrivacyFloorError` (the round is aborted with
        the reason) when the plan breaks the governing policy's DP floor."""
        if not self.enabled:
            self._check_round(None)
            return None
        plan = self.plan(
            number=int(start.round_number),
            round_id=bytes(start.round_id),
            masked=start.mode not in UNMASKED_MODES,
            n=len(start.participants),
            dimension=dimension,
            minimum=minimum,
        )
        self._check_round(plan)
        start.privacy.CopyFrom(plan.params())
        return plan

    def for_buffer(
        self,
        plan: RoundPlan,
        *,
        run_id: str,
        buffer_index: int,
        buffer_size: int,
        weights: Mapping[int, float],
        names: Mapping[int, str],
    ) -> BufferRoundPlan:
        """``plan`` (a masked round's, from :meth:`plan_for`) as a masked asynchronous
        buffer's: ``weights`` each member's ``s(tau)`` by participant index (the transcript's),
        ``names`` the members. Its :meth:`finish_round` charges the survivors per client."""
        if not plan.masked or self.config.mode != "client" or plan.count_noise:
            raise ValueError(
                "a masked buffer's DP round takes client-level DP without adaptive clipping"
            )
        if set(weights) != set(names) or not all(
            math.isfinite(w) and 0.0 < w <= 1.0 for w in weights.values()
        ):
            raise ValueError("every member needs a staleness weight in (0, 1]")
        fields = {f.name: getattr(plan, f.name) for f in dataclasses.fields(RoundPlan)}
        return BufferRoundPlan(
            **fields,
            run_id=run_id,
            buffer_index=int(buffer_index),
            buffer_size=int(buffer_size),
            weights=dict(weights),
            names=dict(names),
        )

    def finish_round(
        self, plan: RoundPlan | None, metadata: Mapping[str, Mapping], aggregate
    ) -> dict | None:
        """Account a finished round from its :class:`~appliance.rounds.Aggregate`.

        Without a plan (no DP this round) only the clients' local DP-SGD ε is noted.
        """
        if plan is None:
            self._note_local_epsilon(metadata)
            return None
        if isinstance(plan, BufferRoundPlan):
            return self._finish_buffer(plan, metadata, aggregate)
        survivors = len(aggregate.contributors)
        if plan.masked:
            noisy = float(aggregate.privacy.get("noisy_below_clip", float("nan")))
        else:
            if not math.isclose(aggregate.total_weight, survivors, rel_tol=1e-6):
                raise ValueError("under DP every client sends weight 1 (a fixed-sensitivity sum)")
            noisy = self.plaintext_count(
                plan, {n: metadata.get(n, {}) for n in aggregate.contributors}
            )
        return self.finish(plan, survivors, noisy, metadata, aggregate.privacy)

    def _finish_buffer(self, plan: BufferRoundPlan, metadata: Mapping[str, Mapping], aggregate):
        """A masked buffer's round: each survivor charged in the per-client ledger (before the
        release); ValueError (the buffer is aborted, nothing published) when it cannot be."""
        self._note_local_epsilon(metadata)
        contributors = list(aggregate.contributors)
        by_name = {name: plan.weights[u] for u, name in plan.names.items()}
        try:
            return self.clients.record_masked(
                round_number=plan.number,
                run_id=plan.run_id,
                buffer_index=plan.buffer_index,
                buffer_size=plan.buffer_size,
                survivors=contributors,
                min_survivors=plan.min_survivors,
                clip=plan.spec.sensitivity,
                noise_std=plan.spec.noise_std,
                staleness_weights=by_name,
            )
        except ClientBudgetExhaustedError as error:
            raise ValueError(str(error)) from None

    # ------------------------------------------------------------------------ finishing

    def plaintext_count(self, plan: RoundPlan, reports: Mapping[str, Mapping]) -> float:
        """Plaintext mode: the clients' below-clip bits summed, plus the count's noise here."""
        bits = [bool(r.get("dp_below_clip")) for r in reports.values()]
        if not plan.count_noise:
            return float("nan")
        # The same CSPRNG, floating-point-safe Gaussian as the clients' DP noise (Mironov 2012).
        exact = np.array([float(sum(1 if b else -1 for b in bits))])
        signed = float(Sampler().gaussian_mechanism(exact, plan.count_noise)[0])
        return (signed + len(bits)) / 2.0

    def finish(
        self,
        plan: RoundPlan,
        survivors: int,
        noisy_below: float,
        reports: Mapping[str, Mapping],
        extras: Mapping[str, float] | None = None,
    ) -> dict:
        """Account the round, move the clip, remember local ε; returns the audit record.

        Raises ``ValueError`` (the round is then aborted, nothing published) when fewer
        clients than the noise was sized for contributed.
        """
        if survivors < plan.min_survivors:
            raise ValueError(
                f"only {survivors} updates, the DP noise needs {plan.min_survivors}: "
                "publishing would carry less noise than configured"
            )
        spec = plan.spec
        z_update = math.sqrt(survivors) * spec.noise_std / spec.sensitivity
        parts = [z_update]
        if plan.count_noise:
            parts.append(
                math.sqrt(survivors) * spec.indicator_std if plan.masked else plan.count_noise
            )
        z_eff = conservative(combine_noise_multipliers(parts))
        self.rounds.append(RoundPrivacy(plan.number, plan.sampling_rate, z_eff))
        self._note_local_epsilon(reports)
        delta, kind = self.config.delta, self.config.accountant
        round_eps = epsilon([self.rounds[-1]], delta, kind)
        record = {
            "round": plan.number,
            "mode": plan.mode,
            "mechanism": spec.mechanism,
            "clip": spec.clip,
            "survivors": survivors,
            "min_survivors": plan.min_survivors,
            "sampling_rate": plan.sampling_rate,
            "noise_std_per_client": spec.noise_std,
            "effective_noise_std": math.sqrt(survivors) * spec.noise_std,
            "sensitivity": spec.sensitivity,
            "effective_noise_multiplier": z_eff,
            "epsilon_round": _finite(round_eps),
            "epsilon_cumulative": _finite(self.spent()),
            "delta": delta,
            "accountant": kind,
        }
        if spec.mechanism != "gaussian":
            record["grid_step"] = spec.gamma
            record["tau"] = spec.tau(survivors)
        for key, value in (extras or {}).items():
            if key != "noisy_below_clip" and math.isfinite(value):
                record[key] = float(value)
        if self.adaptive and math.isfinite(noisy_below):
            fraction = noisy_below / survivors
            target = self.config.target_quantile or 0.5
            lo, hi = _CLIP_RANGE
            new = self.clip * math.exp(-self.config.clip_learning_rate * (fraction - target))
            self.clip = min(hi, max(lo, new))
            record["noisy_fraction_below_clip"] = fraction
            record["next_clip"] = self.clip
        self.last = record
        self._audit.append("privacy", record)
        self._save()
        return record

    def _note_local_epsilon(self, reports: Mapping[str, Mapping]) -> None:
        """Keep each client's last reported example-level (Opacus DP-SGD) ε for the status."""
        for name, report in reports.items():
            value = report.get("epsilon") if isinstance(report, Mapping) else None
            if isinstance(value, int | float) and math.isfinite(value) and value >= 0:
                self.local_epsilon[str(name)] = float(value)

    # --------------------------------------------------------------------------- status

    def _accounted(self) -> list[RoundPrivacy]:
        """The synchronous rounds plus the most-charged client's async buffers (as one
        q = 1 Gaussian, exact for composed q = 1 Gaussians: :mod:`appliance.async_privacy`)."""
        worst = self.clients.worst()
        return [*self.rounds] if worst is None else [*self.rounds, worst]

    def spent(self) -> float:
        """Cumulative ε so far (cached per number of rounds: status polls must stay cheap)."""
        worst = self.clients.worst()
        key = (len(self.rounds), worst)
        if self._spent is None or self._spent[0] != key:
            eps = epsilon(self._accounted(), self.config.delta, self.config.accountant)
            self._spent = (key, eps)
        return self._spent[1]

    def status(self) -> dict:
        """JSON-safe summary for the Admin Status."""
        if not self.enabled:
            return {"mode": "none", "local_dp_epsilon": dict(self.local_epsilon)}
        return {
            "mode": self.config.mode,
            "mechanism": "gaussian" if self.config.mode == "client" else self.config.mechanism,
            "noise_multiplier": self.config.noise_multiplier,
            "clip": self.clip,
            "adaptive": self.adaptive,
            "delta": self.config.delta,
            "accountant": self.config.accountant,
            "rounds_accounted": len(self.rounds),
            "epsilon_cumulative": _finite(self.spent()),
            "epsilon_last_round": self.last.get("epsilon_round"),
            "target_epsilon": self.config.target_epsilon or None,
            "exhausted": self.exhausted or None,
            "last_round": dict(self.last),
            "local_dp_epsilon": dict(self.local_epsilon),
            **self.clients.status(),  # async runs: epsilon_per_client, ... (none: nothing)
        }

    # ------------------------------------------------------------------------ persistence

    def _save(self) -> None:
        state = {
            "clip": self.clip,
            "rounds": [dataclasses.asdict(r) for r in self.rounds],
            "local_epsilon": self.local_epsilon,
            "last": self.last,
            "exhausted": self.exhausted,
        }
        write_file_atomic(self._path, json.dumps(state).encode(), mode=0o600)

    def _load(self) -> None:
        if not self._path.exists():
            return
        state = json.loads(self._path.read_text(encoding="utf-8"))
        self.clip = float(state.get("clip", self.config.clip))
        self.rounds = [RoundPrivacy(**r) for r in state.get("rounds", [])]
        self.local_epsilon = {str(k): float(v) for k, v in state.get("local_epsilon", {}).items()}
        self.last = dict(state.get("last", {}))
        self.exhausted = str(state.get("exhausted", ""))
        if not self.adaptive:
            self.clip = self.config.clip


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
