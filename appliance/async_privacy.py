"""Per-client DP accounting for asynchronous buffered runs (issue 21, client-level DP).

In a synchronous round every client is in every round, so one federation ε covers them all.
In an asynchronous run a fast client contributes to more published versions than a slow one,
so ε is kept **per client**: each client's privacy loss is composed over the buffers it
actually contributed to, and a client whose next contribution could pass the budget
(``[privacy] target_epsilon``) is refused while the others continue.

The mechanism, per buffer. Each member clips its update to L2 ``C`` and adds its own Gaussian
noise of std ``sigma_c = z·C/√K`` before uploading (``client_shim.privacy``, the lease's
``RoundStart.privacy``; weight 1). The appliance publishes the weighted mean
``Σ ω_i y_i / Σ ω_i`` with ``ω_i = w_i·s(tau_i)`` (:mod:`appliance.async_buffer`), so the
appliance's weight multiplies the member's noise as well as its signal: stale members make
the buffer *less* noisy. The security argument:

- Scaling every ``ω_i`` by one constant leaves the published mean unchanged, so the release
  is a post-processing of ``S' = Σ (ω_i/ω_max)·y_i``: each member's signal has L2 norm at most
  ``C`` there (the freshest member's exactly ``C``), and the summed noise is Gaussian with std
  ``sigma_c·√(Σ ω_i²)/ω_max``. The buffer is one Gaussian mechanism of multiplier
  ``z_b = sigma_c·√(Σ ω_i²) / (ω_max·C)`` for every member (:func:`buffer_noise_multiplier`);
  ``z_b = z`` when all members are equally fresh, ``z_b < z`` otherwise. No member gets credit
  for its own down-weighting (``ω_j < ω_max`` would lower its sensitivity to ``ω_j/ω_max·C``):
  that would need the staleness to be independent of the member's data, which a client that
  chooses when to arrive does not guarantee.
- The schedule (who is in which buffer, with which staleness) is public: the appliance learns
  it and audits it (``async_buffer``), and the guarantee is about the contents of a client's
  updates given its participations, as in synchronous rounds (zero-out adjacency, the
  sensitivity-C Gaussian of :mod:`appliance.accounting`).
- **Against whom.** The guarantee covers what the run publishes (model versions, to model
  consumers and other clients). The appliance itself sees each noised update (in the TEE in
  attested mode), which carries only its own share ``sigma_c`` (multiplier ``z/√K``); and the
  buffer's noise counts every member's share, so members that collude (and know their own
  shares) leave less, as in synchronous rounds.
- **No amplification by sampling.** Amplification needs the server to pick each client at
  random with a known probability; here clients choose when they arrive, so every recorded
  participation is a full (q = 1) Gaussian release and ``[privacy] population`` is ignored.
- Composition per client, adaptive: Gaussian mechanisms of multipliers ``z_1..z_k`` compose to
  exactly one Gaussian of ``(Σ z_b⁻²)^(-1/2)`` (Gaussian DP, Dong-Roth-Su 2019, Cor. 3.3; for
  RDP the orders add identically), so a client's ledger is its list of ``z_b`` and ε comes
  from the library (:func:`appliance.accounting.epsilon`, rdp or pld) for that one Gaussian
  composed with the federation's synchronous rounds (each counted for every client, as the
  synchronous controller does). Recorded ``z_b`` are rounded *down*: ε is never understated.
- **Admission** must hold before the buffer's other members are known, so it charges the next
  contribution at the plan's floor: the smallest ``z_b`` a full buffer of this run can carry,
  ``z·√((1 + (K-1)·r²)/K)`` with ``r = min s / max s`` over ``0..max_staleness`` and client
  weights 1 (the shim sends 1 under DP; the submit hook refuses any other weight). Updates
  accepted into buffers not yet published are charged the same way (pending). So a client
  admitted now stays within the budget however the buffer fills; :meth:`ClientPrivacyLedger.
  record` re-checks every member with the actual ``z_b`` and refuses the release otherwise.
- **Charged before release.** ``record`` is called before the buffer's mean goes through the
  publish path and persists the ledger first: a crash between the two overstates ε, never
  understates it. A buffer that is abandoned (never published) releases its pending charges.

**Masked buffers (secagg, secagg+): distributed DP per secure-aggregation round.** The
appliance never sees a member's update, so nobody can scale a member's noise with its weight
the way the plaintext path does; instead:

- Each buffer's round is planned like a synchronous masked DP round
  (:meth:`appliance.privacy.PrivacyController.plan_for` from ``_build_masked_round``): each
  member adds ``sigma_c = z·C/√m`` inside its ring vector (:mod:`crypto.dp`, Gaussian on a
  fine grid), ``m`` the *round's own* minimum of survivors (at least ``max(t, m_policy)`` and
  ``[privacy] min_survivors``, fixed when the round is built, on its actual members). The
  protocol reveals no sum over fewer than ``m`` survivors (clients refuse to unmask), so any
  sum the server can ever see carries noise of std at least ``√m·sigma_c = z·C``.
- Staleness is folded into the **signal only**: a member clips to ``C``, multiplies the
  clipped update by ``s(tau) <= 1`` (``tau`` from the round's transcript, which binds every
  member's base version, the parent and the staleness function: :mod:`crypto.buffer_context`)
  and adds its *full* noise share; its count coordinate stays 1. Its input therefore has L2
  norm at most ``s(tau)·C <= C``: zero-out sensitivity ``C`` for every member, as in a
  synchronous round, and the revealed sum is one Gaussian mechanism of multiplier
  ``z_b = √survivors·sigma_c / C >= z`` for each survivor. As for plaintext buffers no member
  gets credit for its own down-weighting (``s(tau)·C``): staleness follows when the client
  chose to arrive. Scaling the noise with ``s(tau)`` too would lower ``z_b`` below ``z`` for
  stale buffers (the plaintext path's ``z_b`` formula); keeping it whole keeps every buffer at
  least at ``z``, at some cost in utility for stale buffers.
- The appliance divides the unmasked signal sum by ``Σ s(tau_i)`` over the survivors, which it
  computes from the transcript (public): post-processing, no privacy cost. It checks that the
  count coordinate sums to the number of survivors (each member counted once), so a member
  cannot weigh itself more through the count either.
- **Charges.** Admission and pending charges use the plan's floor, ``z`` (no full buffer's
  round carries less); :meth:`ClientPrivacyLedger.record_masked` charges each *survivor* the
  actual ``z_b`` before the aggregate goes through the publish path (members that dropped out
  of the round are not in the revealed sum and are released with the buffer's pending
  charges). The run-level controller records nothing for a buffer round: each survivor is
  charged once, here, and the federation ε there counts the most-charged client.
- Only ``[privacy] mode = "client"`` (the Gaussian mechanism in the ring, sensitivity ``C``):
  the discrete mechanisms' sensitivity is the rounding bound, which depends on the round's
  dimension and grid, so admission could not bound a buffer's cost before it is built.

Per-client state lives in ``privacy_clients.json`` beside the synchronous controller's
``privacy_state.json`` (written atomically), federation-wide across runs; pending charges are
in memory only (buffers do not survive a restart). Every buffer appends a ``privacy`` audit
entry (``schedule: "async"``) with each member's ε after it. Calls come from the event loop
(under the orchestrator's lock): no locking here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from sealagg.appliance.accounting import RoundPrivacy, conservative, epsilon
from sealagg.appliance.audit import AuditLog
from sealagg.appliance.config import PrivacySection
from sealagg.appliance.pki import write_file_atomic
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.crypto.staleness import StalenessPolicy

__all__ = [
    "AsyncDPPlan",
    "AsyncPrivacyError",
    "ClientBudgetExhaustedError",
    "ClientPrivacyLedger",
    "buffer_noise_multiplier",
    "staleness_ratio_floor",
]

_log = logging.getLogger("sealagg.privacy")
STATE_FILE = "privacy_clients.json"
#: Modes where the appliance sees (and weights) each noised update.
PLAIN_DP_MODES = ("plaintext", "attested")
#: Modes where each buffer is one secure-aggregation round with distributed noise.
MASKED_DP_MODES = ("secagg", "secagg+")
ASYNC_DP_MODES = PLAIN_DP_MODES + MASKED_DP_MODES
#: Admission's floor sits this much below ``z`` so that a round's ``√m·(z·C/√m)/C``, which
#: floating point may put a hair under ``z``, never rounds (down) below it.
_FLOOR_SLACK = 1e-9
MAX_NAME_CHARS = 256
MEMO_SIZE = 4096


class AsyncPrivacyError(ValueError):
    """Parameters under which an asynchronous run's DP cannot be accounted (or a bad call)."""


class ClientBudgetExhaustedError(RuntimeError):
    """This client's next contribution could pass ``[privacy] target_epsilon``."""

    def __init__(self, client: str, message: str) -> None:
        super().__init__(message)
        self.client = client


def staleness_ratio_floor(policy: StalenessPolicy) -> float:
    """``min s(tau) / max s(tau)`` over ``0..max_staleness``: how unequal two members'
    staleness weights can be (1 for ``constant``). Evaluated, not assumed monotone."""
    weights = [policy.weight(tau) for tau in range(policy.max_staleness + 1)]
    return min(weights) / max(weights)


def buffer_noise_multiplier(noise_std: float, clip: float, weights: Iterable[float]) -> float:
    """``z_b = noise_std·√(Σ ω²) / (max ω·clip)``: the one Gaussian a published buffer is for
    each member, with members' noise of std ``noise_std`` scaled by their weights ``ω``
    (module docstring: the mean is invariant to scaling all ω, so the freshest member's
    sensitivity is ``clip`` and nobody's is more)."""
    omegas = [float(w) for w in weights]
    if not omegas:
        raise AsyncPrivacyError("a buffer without members releases nothing to account")
    if not all(math.isfinite(w) and w > 0.0 for w in omegas):
        bad = sum(1 for w in omegas if not (math.isfinite(w) and w > 0.0))
        raise AsyncPrivacyError(f"member weights must be finite and > 0 ({bad} are not)")
    if not (math.isfinite(noise_std) and noise_std > 0.0 and math.isfinite(clip) and clip > 0):
        raise AsyncPrivacyError("noise_std and clip must be finite and > 0")
    top = max(omegas)
    return noise_std * math.sqrt(math.fsum((w / top) ** 2 for w in omegas)) / clip


@dataclasses.dataclass(frozen=True)
class AsyncDPPlan:
    """One asynchronous run's DP: what every lease carries and what admission assumes."""

    clip: float
    noise_multiplier: float  # z of a full buffer of equally fresh members
    buffer_size: int  # K: the noise is sized for a sum over K
    noise_std: float  # each client's share: z·C/√K
    floor: float  # the smallest z_b a full buffer of this run can carry (admission)
    range_bits: int = 20
    masked: bool = False  # secagg / secagg+: distributed noise per buffer round

    def params(self) -> pb.PrivacyParams:
        """``RoundStart.privacy`` of a lease (the shim clips, adds its share, sends weight 1).
        Plaintext and attested only: a masked buffer's round carries its own parameters."""
        if self.masked:
            raise AsyncPrivacyError("a masked lease carries no DP parameters: its round does")
        return pb.PrivacyParams(
            mode="client",
            mechanism="gaussian",
            clip=self.clip,
            noise_std=self.noise_std,
            indicator_std=0.0,
            min_survivors=self.buffer_size,
            range_bits=self.range_bits,
        )

    def buffer_noise_multiplier(self, weights: Iterable[float]) -> float:
        return buffer_noise_multiplier(self.noise_std, self.clip, weights)


@dataclasses.dataclass
class _Client:
    participations: list[tuple[int, float]] = dataclasses.field(default_factory=list)  # (round, z)
    inverse_square: float = 0.0  # Σ z_b⁻²

    def add(self, number: int, z: float) -> None:
        self.participations.append((number, z))
        self.inverse_square += z**-2


def _combined(inverse_square: float) -> float:
    """The one Gaussian equal to a client's compositions (rounded down: ε never understated)."""
    return math.inf if inverse_square <= 0.0 else conservative(inverse_square**-0.5)


class ClientPrivacyLedger:
    """Per-client ε of asynchronous runs: plan, admit, join, record, status (federation-wide).

    ``base_rounds`` returns the synchronous controller's recorded rounds: every client is
    charged for them too (a synchronous round counts every client, as its controller does).
    """

    def __init__(
        self,
        config: PrivacySection,
        folder: Path,
        audit: AuditLog,
        *,
        base_rounds: Callable[[], Sequence[RoundPrivacy]] = tuple,
    ) -> None:
        self.config = config
        self._path = Path(folder) / STATE_FILE
        self._audit = audit
        self._base = base_rounds
        self.clients: dict[str, _Client] = {}
        self.exhausted: dict[str, str] = {}
        self.last: dict = {}
        self._pending: dict[int, dict[str, float]] = {}  # round -> {client: floor z}
        self._memo: dict[tuple, float] = {}
        self._load()

    @property
    def enabled(self) -> bool:
        return self.config.mode != "none"

    # ----------------------------------------------------------------------- planning

    def plan(self, *, mode: str, buffer_size: int, policy: StalenessPolicy) -> AsyncDPPlan | None:
        """The run's DP plan (None without DP); AsyncPrivacyError when it cannot be accounted."""
        if not self.enabled:
            return None
        cfg = self.config
        if mode not in ASYNC_DP_MODES:
            raise AsyncPrivacyError(
                f"DP in async runs works in {', '.join(ASYNC_DP_MODES)} modes, not {mode!r}"
            )
        if cfg.mode != "client":
            raise AsyncPrivacyError(
                f'async runs take client-level DP ([privacy] mode = "client"), not {cfg.mode!r}'
                + (
                    " (a discrete mechanism's sensitivity depends on each buffer round's grid, "
                    "so a contribution's cost could not be bounded at admission)"
                    if mode in MASKED_DP_MODES
                    else ""
                )
            )
        if cfg.target_quantile is not None:
            raise AsyncPrivacyError(
                "adaptive clipping ([privacy] target_quantile) is not available in async runs: "
                "the per-buffer clip-indicator release is not accounted per client; set a "
                "fixed clip"
            )
        if type(buffer_size) is not int or buffer_size < 1:
            raise AsyncPrivacyError(f"buffer_size must be a whole number >= 1, got {buffer_size!r}")
        if cfg.min_survivors > buffer_size:
            raise AsyncPrivacyError(
                f"[privacy] min_survivors {cfg.min_survivors} exceeds buffer_size {buffer_size}: "
                "every published buffer covers exactly K clients, fewer than the noise needs"
            )
        z = cfg.noise_multiplier
        if mode in MASKED_DP_MODES:
            # Every revealed sum covers at least the round's m survivors, each adding z·C/√m,
            # and every input has norm <= C: z_b >= z (module docstring), whatever s(tau).
            r = 1.0
            plan = AsyncDPPlan(
                clip=cfg.clip,
                noise_multiplier=z,
                buffer_size=buffer_size,
                noise_std=z * cfg.clip / math.sqrt(buffer_size),  # nominal: the round sizes it
                floor=conservative(z * (1.0 - _FLOOR_SLACK)),
                range_bits=cfg.range_bits,
                masked=True,
            )
            return self._check_once(plan, z, r)
        r = staleness_ratio_floor(policy)
        plan = AsyncDPPlan(
            clip=cfg.clip,
            noise_multiplier=z,
            buffer_size=buffer_size,
            noise_std=z * cfg.clip / math.sqrt(buffer_size),
            floor=conservative(z * math.sqrt((1.0 + (buffer_size - 1) * r * r) / buffer_size)),
            range_bits=cfg.range_bits,
        )
        return self._check_once(plan, z, r)

    def _check_once(self, plan: AsyncDPPlan, z: float, r: float) -> AsyncDPPlan:
        """Refuse a plan whose single contribution could already pass the target."""
        target = self.config.target_epsilon
        if target > 0.0:
            once = self._epsilon_at(plan.floor**-2)
            if once > target:
                raise AsyncPrivacyError(
                    f"one contribution could cost ε = {once:.3f} > target {target:g} (noise "
                    f"multiplier {z:g}, floor {plan.floor:g} for staleness weights down to "
                    f"{r:.3g}): raise noise_multiplier, or narrow max_staleness / the staleness "
                    "function"
                )
        return plan

    # ---------------------------------------------------------------------- admission

    def admit(self, client: str, plan: AsyncDPPlan) -> None:
        """Raise :class:`ClientBudgetExhaustedError` (its message is for the client) when one
        more contribution, charged at the plan's floor on top of the client's recorded and
        pending ones, could pass the target."""
        _check_name(client)
        target = self.config.target_epsilon
        if target <= 0.0:
            return
        pending = sum(z**-2 for p in self._pending.values() for n, z in p.items() if n == client)
        spent = self._inverse_square(client)
        eps = self._epsilon_at(spent + pending + plan.floor**-2)
        if eps <= target:
            self.exhausted.pop(client, None)
            return
        message = self.exhausted.get(client)
        if message is None:
            message = (
                f"privacy budget of {client} spent: another update could reach ε = {eps:.3f} > "
                f"target {target:g} (δ = {self.config.delta:g}); no more updates are taken "
                "from this client"
            )
            self.exhausted[client] = message
            _log.warning("privacy budget of %s exhausted: ε next %.3f > %g", client, eps, target)
            self._audit.append(
                "privacy_budget_exhausted",
                {
                    "client": client,
                    "schedule": "async",
                    "epsilon_spent": _finite(self.epsilon(client)),
                    "epsilon_next": _finite(eps),
                    "target": target,
                },
            )
            self._save()
        raise ClientBudgetExhaustedError(client, message)

    def admissible(self, clients: Iterable[str], plan: AsyncDPPlan) -> list[str]:
        """The ``clients`` that :meth:`admit` would take now (fewer than K: no buffer fills)."""
        out = []
        for name in clients:
            try:
                self.admit(name, plan)
            except ClientBudgetExhaustedError:
                continue
            out.append(name)
        return out

    def join(self, client: str, round_number: int, plan: AsyncDPPlan) -> None:
        """An admitted client's update was accepted into the buffer of ``round_number``:
        charge it at the floor until the buffer is recorded or abandoned."""
        _check_name(client)
        self._pending.setdefault(int(round_number), {})[client] = plan.floor

    def abandon(self, round_number: int) -> None:
        """The buffer of ``round_number`` will never be published: its charges are released."""
        self._pending.pop(int(round_number), None)

    # ------------------------------------------------------------------------ recording

    def record(
        self,
        plan: AsyncDPPlan,
        *,
        round_number: int,
        run_id: str,
        buffer_index: int,
        weights: Mapping[str, float],
    ) -> dict:
        """Charge every member of a buffer *before* it is published; returns the audit record.

        ``weights``: member -> its weight in the published mean (``Contribution.weight``). The
        ledger derives ``z_b`` from them (a caller cannot pass a nominal multiplier that
        overstates the noise). Raises AsyncPrivacyError for fewer than K members or bad
        weights, ClientBudgetExhaustedError when a member would pass the target; nothing is
        charged then, and the buffer must not be published.
        """
        if plan.masked:
            raise AsyncPrivacyError("a masked buffer is charged from its round: record_masked")
        if len(weights) < plan.buffer_size:
            raise AsyncPrivacyError(
                f"only {len(weights)} updates, the DP noise needs {plan.buffer_size}: "
                "publishing would carry less noise than configured"
            )
        for name in weights:
            _check_name(name)
        z_b = conservative(plan.buffer_noise_multiplier(weights.values()))
        fields = {
            "clip": plan.clip,
            "buffer_size": plan.buffer_size,
            "survivors": len(weights),
            "noise_std_per_client": plan.noise_std,
            "noise_multiplier": plan.noise_multiplier,
        }
        return self._commit(int(round_number), run_id, buffer_index, sorted(weights), z_b, fields)

    def record_masked(
        self,
        *,
        round_number: int,
        run_id: str,
        buffer_index: int,
        buffer_size: int,
        survivors: Sequence[str],
        min_survivors: int,
        clip: float,
        noise_std: float,
        staleness_weights: Mapping[str, float],
    ) -> dict:
        """Charge every survivor of a masked buffer's round *before* its aggregate is
        published; returns the audit record (module docstring, "Masked buffers").

        ``noise_std`` and ``min_survivors`` are the round's own DP plan (each member's share
        and the ``m`` it was sized for), ``clip`` its sensitivity; the ledger derives
        ``z_b = √survivors·noise_std/clip`` from them. Raises AsyncPrivacyError for fewer
        survivors than the noise needs (or bad arguments), ClientBudgetExhaustedError when a
        survivor would pass the target; nothing is charged then, and nothing is published.
        """
        names = sorted(survivors)
        if len(set(names)) != len(names):
            raise AsyncPrivacyError("a survivor is listed twice")
        for name in names:
            _check_name(name)
        if type(min_survivors) is not int or min_survivors < 1:
            raise AsyncPrivacyError(f"min_survivors is a whole number >= 1, got {min_survivors!r}")
        if len(names) < min_survivors:
            raise AsyncPrivacyError(
                f"only {len(names)} survivors, the DP noise needs {min_survivors}: "
                "publishing would carry less noise than configured"
            )
        if not all(math.isfinite(v) and v > 0.0 for v in (clip, noise_std)):
            raise AsyncPrivacyError("clip and noise_std must be finite and > 0")
        z_b = conservative(math.sqrt(len(names)) * noise_std / clip)
        fields = {
            "clip": clip,
            "buffer_size": int(buffer_size),
            "survivors": len(names),
            "min_survivors": min_survivors,
            "noise_std_per_client": noise_std,
            "effective_noise_std": math.sqrt(len(names)) * noise_std,
            "noise_multiplier": self.config.noise_multiplier,
            "masked": True,
            "staleness_weights": {
                n: round(float(staleness_weights[n]), 12) for n in names if n in staleness_weights
            },
        }
        return self._commit(int(round_number), run_id, buffer_index, names, z_b, fields)

    def _commit(
        self,
        number: int,
        run_id: str,
        buffer_index: int,
        names: Sequence[str],
        z_b: float,
        fields: Mapping[str, object],
    ) -> dict:
        """Charge ``z_b`` to every one of ``names`` (all or none), persist, audit."""
        target = self.config.target_epsilon
        after = {n: self._epsilon_at(self._inverse_square(n) + z_b**-2) for n in sorted(names)}
        over = {n: e for n, e in after.items() if target > 0.0 and e > target}
        if over:
            name, eps = next(iter(over.items()))
            raise ClientBudgetExhaustedError(
                name,
                f"buffer {buffer_index} of run {run_id} would bring {name} to ε = {eps:.3f} > "
                f"target {target:g}: not published",
            )
        for name in names:
            self.clients.setdefault(name, _Client()).add(number, z_b)
        self._pending.pop(number, None)
        worst = max(self.clients, key=lambda n: self.clients[n].inverse_square)
        record = {
            "round": number,
            "run": run_id,
            "buffer": int(buffer_index),
            "schedule": "async",
            "mode": "client",
            "mechanism": "gaussian",
            **fields,
            "sampling_rate": 1.0,  # no amplification: clients choose when they arrive
            "effective_noise_multiplier": z_b,
            "epsilon_round": _finite(epsilon([RoundPrivacy(number, 1.0, z_b)], *self._acc())),
            "epsilon_cumulative": _finite(self.epsilon(worst)),  # the worst client's
            "epsilon_per_client": {n: _finite(e) for n, e in after.items()},
            "delta": self.config.delta,
            "accountant": self.config.accountant,
        }
        self.last = record
        self._save()  # charged before the release (module docstring)
        self._audit.append("privacy", record)
        return record

    # --------------------------------------------------------------------------- queries

    def epsilon(self, client: str) -> float:
        """``client``'s ε so far at the configured δ (synchronous rounds included)."""
        return self._epsilon_at(self._inverse_square(client))

    def worst(self) -> RoundPrivacy | None:
        """The most-charged client's async compositions as one q = 1 round (for the
        synchronous controller's federation ε), or None."""
        if not self.clients:
            return None
        top = max(c.inverse_square for c in self.clients.values())
        return RoundPrivacy(0, 1.0, _combined(top)) if top > 0.0 else None

    def status(self) -> dict:
        """JSON-safe per-client summary (empty when no async buffer was ever accounted)."""
        if not self.clients and not self.exhausted:
            return {}
        return {
            "epsilon_per_client": {n: _finite(self.epsilon(n)) for n in sorted(self.clients)},
            "participations_per_client": {
                n: len(c.participations) for n, c in sorted(self.clients.items())
            },
            "clients_exhausted": sorted(self.exhausted),
            "last_buffer": dict(self.last),
        }

    def _acc(self) -> tuple[float, str]:
        return self.config.delta, self.config.accountant

    def _inverse_square(self, client: str) -> float:
        entry = self.clients.get(client)
        return entry.inverse_square if entry else 0.0

    def _epsilon_at(self, inverse_square: float) -> float:
        """ε of the synchronous rounds plus one q = 1 Gaussian of ``inverse_square`` (Σ z⁻²),
        memoised: admission asks per client per poll, and a pld evaluation takes ~0.3 s."""
        base = list(self._base())
        key = (len(base), inverse_square, *self._acc())
        hit = self._memo.get(key)
        if hit is None:
            extra = (
                [] if inverse_square <= 0.0 else [RoundPrivacy(0, 1.0, _combined(inverse_square))]
            )
            hit = epsilon([*base, *extra], *self._acc())
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            self._memo[key] = hit
        return hit

    # ----------------------------------------------------------------------- persistence

    def _save(self) -> None:
        state = {
            "clients": {
                n: [[r, z] for r, z in c.participations] for n, c in sorted(self.clients.items())
            },
            "exhausted": self.exhausted,
            "last": self.last,
        }
        write_file_atomic(self._path, json.dumps(state).encode(), mode=0o600)

    def _load(self) -> None:
        if not self._path.exists():
            return
        state = json.loads(self._path.read_text(encoding="utf-8"))
        for name, rows in state.get("clients", {}).items():
            entry = self.clients.setdefault(str(name), _Client())
            for number, z in rows:
                entry.add(int(number), float(z))
        self.exhausted = {str(k): str(v) for k, v in state.get("exhausted", {}).items()}
        self.last = dict(state.get("last", {}))


def _check_name(client: object) -> None:
    if not isinstance(client, str) or not client or len(client) > MAX_NAME_CHARS:
        raise AsyncPrivacyError(f"a client name is a non-empty string, got {client!r:.60}")


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
