"""Byzantine-robust aggregation rules for the appliance (``[aggregation] rule``).

Two ways to run a robust rule, by mode:

* ``plaintext`` / ``attested`` (:class:`RobustPlainRound`): the appliance already sees
  every update, so it keeps each one (O(n·d) memory instead of the running sum's
  O(d): 100 clients x 1M float32 = 400 MB) and applies the rule to the individual
  updates. Client weights are *not* used by the rule: a Byzantine client could
  otherwise claim a large weight (the audit log still records them).
* ``secagg`` / ``secagg+`` (:class:`BucketedRound`): the appliance must not see
  individual updates, so clients are split into buckets of at least
  ``bucket_size`` (>= 3) by a permutation derived from the round id (public
  randomness, on the audit chain). Each bucket runs its own SecAgg instance,
  participants re-indexed 1..m and each client's RoundStart listing only its
  bucket, and the rule runs over the bucket means.

What bucketing protects against: f Byzantine clients can spoil at most f buckets;
as long as spoiled buckets stay below the rule's breakdown point (a minority of
buckets for the median, fewer than ``floor(beta·k)`` per side for the trimmed
mean, ``k > 2f + 2`` for Krum), the published update stays near the honest bucket
means. Random assignment from the round id keeps a client from choosing its
bucket; the appliance picks the round id, so a malicious appliance could grind it
(the appliance is trusted for integrity, not for seeing updates, in this design).
What it costs: (1) privacy: the appliance learns every bucket's sum, i.e. the sum
of ``bucket_size`` updates instead of the sum of all n; the smallest bucket sets
the privacy level (3 is the floor: with two, each member would learn the other's
update from the sum); (2) robustness: a Byzantine update is diluted by only
1/bucket_size inside its bucket, and the rule sees k = n / bucket_size points,
so it tolerates fewer attackers than on individual updates (f < k/2 for the
median) and fewer honest points average out noise; (3) availability: each bucket
needs its own SecAgg quorum (all 3 members of a bucket of 3), a failed bucket is
dropped from the round, and the round aborts only when too few buckets remain.
Bigger buckets mean more privacy and more dropout tolerance but fewer buckets,
hence less robustness.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import get_args

import numpy as np

from sealagg import kernels
from sealagg.appliance.config import AggregationSection, Rule
from sealagg.appliance.rounds import (
    ActiveRound,
    Aggregate,
    LockstepRound,
    MaskedRound,
    Member,
    PlainRound,
    UploadRefusedError,
)
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.crypto import QuantizationSpec, RoundConfig, encoded_length
from sealagg.crypto.config import default_minimum_survivors
from sealagg.crypto.errors import SecAggError
from sealagg.crypto.policy import FederationPolicy, check_round_against_policy
from sealagg.crypto.rules import require_masking_parties

RULES: tuple[str, ...] = get_args(Rule)
#: (n, mode, dropout_rate, corrupt_fraction) -> (degree or None, threshold, audit note).
GraphChooser = Callable[[int, str, float, float], tuple[int | None, int, str]]


def check_feasible(rule: str, k: int, f: int, beta: float, *, unit: str = "updates") -> None:
    """Refuse (``ValueError``) a rule that offers no robustness over ``k`` points."""
    if rule not in RULES:
        raise ValueError(f"unknown aggregation rule {rule!r}; choose one of {', '.join(RULES)}")
    if k < 1:
        raise ValueError(f"no {unit} to aggregate")
    if rule in ("krum", "multi_krum"):
        kernels.require_byzantine_bound(k, f)  # "Krum needs n > 2f + 2: ..."
    elif rule in ("median", "geometric_median") and k < 3:
        raise ValueError(f"{rule} over {k} {unit} is just their mean: it needs at least 3")
    elif rule == "trimmed_mean" and kernels.trim_count(k, beta) == 0:
        raise ValueError(
            f"trimmed_mean with beta={beta} trims nothing from {k} {unit}; "
            f"raise beta to at least 1/{k}"
        )


def apply_rule(rule: str, updates: np.ndarray, f: int, beta: float) -> tuple[np.ndarray, dict]:
    """(float32 aggregate of the (k, d) rows, what the rule chose, for the audit log)."""
    check_feasible(rule, updates.shape[0], f, beta)
    if rule == "mean":
        return kernels.weighted_mean(updates, np.ones(updates.shape[0])), {}
    if rule == "median":
        return kernels.coordinate_median(updates), {}
    if rule == "trimmed_mean":
        trim = kernels.trim_count(updates.shape[0], beta)
        return kernels.trimmed_mean(updates, beta), {"trimmed_per_side": trim}
    if rule == "krum":
        chosen = kernels.krum(updates, f)
        return updates[chosen].copy(), {"selected": [chosen]}
    if rule == "multi_krum":
        mean, chosen = kernels.multi_krum(updates, f)
        return mean, {"selected": sorted(int(i) for i in chosen)}
    z, steps = kernels.geometric_median(updates)
    return z, {"weiszfeld_steps": steps}


class RobustPlainRound(PlainRound):
    """Plaintext/attested round that keeps every update and applies a robust rule at the end."""

    def __init__(
        self,
        number: int,
        round_id: bytes,
        members: list[Member],
        dimension: int,
        *,
        rule: str,
        f: int,
        beta: float,
    ) -> None:
        super().__init__(number, round_id, members, dimension)
        self.rule, self.f, self.beta = rule, f, beta
        self.updates: dict[str, np.ndarray] = {}  # O(n·d): the price of a robust rule
        self.robust_report: dict = {}
        self._result: np.ndarray | None = None

    def _accept(self, member: Member, header: pb.UploadHeader, payload: bytes) -> None:
        super()._accept(member, header, payload)  # validates size, weight, finiteness
        self.updates[member.name] = np.frombuffer(payload, dtype="<f4").astype(np.float32)

    def close_phase(self) -> dict[str, pb.Task]:
        tasks = super().close_phase()
        try:
            check_feasible(self.rule, len(self.updates), self.f, self.beta, unit="updates")
        except ValueError as error:
            self._done = False
            raise UploadRefusedError("ABORTED", f"robust rule: {error}") from None
        return tasks

    def aggregate(self) -> Aggregate:
        names = sorted(self.updates)
        stacked = np.stack([self.updates[n] for n in names])
        result, chosen = apply_rule(self.rule, stacked, self.f, self.beta)
        if "selected" in chosen:
            chosen = {"selected": [names[i] for i in chosen["selected"]]}
        self.robust_report = {"rule": self.rule, "clients": len(names), **chosen}
        self._result = result
        dropped = tuple(sorted(set(self.members) - self.answered))
        return Aggregate(result, self.total_weight, tuple(names), dropped)

    def total_digest_source(self) -> bytes:
        return b"" if self._result is None else self._result.tobytes()

    def result_audit(self) -> dict[str, dict]:
        """Which rule ran and which clients it chose."""
        return _robust_audit(self.number, self.robust_report)


def assign_buckets(round_id: bytes, names: list[str], bucket_size: int) -> list[list[str]]:
    """Split ``names`` into ``len(names) // bucket_size`` buckets (sizes differ by at most 1).

    The order is SHA-256(round id ‖ name): public, reproducible by anyone holding
    the round id and the participant list, and not choosable by a client.
    """
    require_masking_parties(bucket_size, "a bucket")  # the appliance sees each bucket's sum
    k = len(names) // bucket_size
    if k < 1:
        raise ValueError(f"{len(names)} clients cannot fill one bucket of {bucket_size}")
    order = sorted(
        names, key=lambda n: hashlib.sha256(b"sealagg/buckets/v1" + round_id + n.encode()).digest()
    )
    return [sorted(order[i::k]) for i in range(k)]


class BucketedRound(LockstepRound):
    """Masked modes with a robust rule: one :class:`MaskedRound` per bucket, closed in lockstep.

    Uploads are dispatched by the sender's certificate name to its bucket; the
    robust rule runs over the bucket means. A bucket whose SecAgg instance fails
    (too few survivors, a protocol abort) is dropped; the round aborts only when
    the remaining buckets no longer satisfy the rule.
    """

    def __init__(
        self,
        number: int,
        round_id: bytes,
        members: list[Member],
        buckets: list[MaskedRound],
        *,
        rule: str,
        f: int,
        beta: float,
    ) -> None:
        super().__init__(number, round_id, members, buckets)
        self.rule, self.f, self.beta = rule, f, beta
        self.buckets, self.bucket_of = self.parts, self.part_of
        self.live = set(range(len(buckets)))
        self.failures: dict[int, str] = {}
        self.robust_report: dict = {}

    def describe(self, start: pb.RoundStart) -> None:
        """The common vector length; the rest is per bucket (:meth:`round_start_for`)."""
        start.vector_length = self.buckets[0].config.vector_length

    def round_start_for(self, name: str, common: pb.RoundStart) -> pb.RoundStart:
        """This client's RoundStart: only its bucket, re-indexed, with the bucket's parameters."""
        return self.part_round_start(name, common, len(self.buckets[self.bucket_of[name]].members))

    def result_audit(self) -> dict[str, dict]:
        """Which rule ran over which buckets, which failed and which were chosen."""
        return _robust_audit(self.number, self.robust_report)

    def upload_limit(self, header: pb.UploadHeader) -> int:
        return self.buckets[min(self.live)].upload_limit(header) if self.live else 0

    def close_phase(self) -> dict[str, pb.Task]:
        """Close every live bucket's phase; a bucket already finished waits for the others.

        Buckets close together but need not be in the same phase: one whose graph is
        complete skips the coin reveal (:mod:`crypto.coins`), so it runs one phase ahead
        of a sparse one and finishes one close earlier.
        """
        tasks: dict[str, pb.Task] = {}
        for b in sorted(self.live):
            bucket = self.buckets[b]
            if bucket.finished:
                continue
            try:
                tasks.update(bucket.close_phase())
            except SecAggError as error:  # this bucket is lost; the others go on
                self.failures[b] = f"{error.reason.value}: {error}"
                self.live.discard(b)
        try:
            check_feasible(self.rule, len(self.live), self.f, self.beta, unit="surviving buckets")
        except ValueError as error:
            lost = "; ".join(f"bucket {b}: {why}" for b, why in sorted(self.failures.items()))
            raise UploadRefusedError("ABORTED", f"robust rule: {error} ({lost})") from None
        running = [self.buckets[b] for b in sorted(self.live) if not self.buckets[b].finished]
        return self._advance(running, tasks)

    def aggregate(self) -> Aggregate:
        live = sorted(self.live)
        parts = [self.buckets[b].aggregate() for b in live]
        means = np.stack([p.mean_update.astype(np.float32) for p in parts])
        result, chosen = apply_rule(self.rule, means, self.f, self.beta)
        if "selected" in chosen:
            chosen = {"selected_buckets": [live[i] for i in chosen["selected"]]}
        self.robust_report = {
            "rule": self.rule,
            "buckets": [sorted(self.buckets[b].members) for b in range(len(self.buckets))],
            "failed_buckets": {str(b): why for b, why in sorted(self.failures.items())},
            **chosen,
        }
        contributors = tuple(sorted(n for p in parts for n in p.contributors))
        dropped = tuple(sorted(set(self.members) - set(contributors)))
        total_weight = float(sum(p.total_weight for p in parts))
        return Aggregate(result.astype(np.float32), total_weight, contributors, dropped)

    def total_digest_source(self) -> bytes:
        return b"".join(self.buckets[b].total_digest_source() for b in sorted(self.live))


def _robust_audit(number: int, report: dict) -> dict[str, dict]:
    return {"robust_aggregation": {"round": number, **report}} if report else {}


def build_bucketed_round(
    *,
    number: int,
    round_id: bytes,
    members: list[Member],
    mode: str,
    vector_length: int,
    clip: float,
    dropout_rate: float,
    corrupt_fraction: float,
    bucket_size: int,
    rule: str,
    f: int,
    beta: float,
    choose_graph: GraphChooser,
    policy: FederationPolicy | None = None,
    roster_version: int = 0,
) -> tuple[BucketedRound, dict]:
    """A :class:`BucketedRound` and its audit record; ``ValueError`` when infeasible.

    With ``policy`` (the one the clients enforce; ``choose_graph`` must take its ``c`` and
    ``m`` too) every bucket's threshold and quorum meet it, or the round is refused here."""
    names = [m.name for m in members]
    groups = assign_buckets(round_id, names, bucket_size)
    check_feasible(rule, len(groups), f, beta, unit="buckets")
    by_name = {m.name: m for m in members}
    buckets, params = [], []
    for group in groups:
        local = [Member(i + 1, n, by_name[n].identity_key) for i, n in enumerate(group)]
        m = len(local)
        degree, threshold, note = choose_graph(m, mode, dropout_rate, corrupt_fraction)
        quorum = (
            None
            if policy is None
            else max(default_minimum_survivors(m, threshold, policy.colluders), policy.minimum_sum)
        )
        config = RoundConfig.create(
            round_id=round_id,
            identities={x.index: x.identity_key for x in local},
            threshold=threshold,
            vector_length=vector_length,
            degree=degree,
            minimum_survivors=quorum,
            roster_version=roster_version,
        )
        if policy is not None:  # the bucket's clients run this very check
            check_round_against_policy(
                policy, mode, m, degree, config.threshold, config.minimum_survivors
            )
        spec = QuantizationSpec(clip=clip, max_clients=m)
        buckets.append(MaskedRound(number, round_id, local, config, spec))
        params.append({"size": m, "threshold": threshold, "degree": degree or 0, "note": note})
    active = BucketedRound(number, round_id, members, buckets, rule=rule, f=f, beta=beta)
    audit = {
        "round": number,
        "rule": rule,
        "f": f,
        "beta": beta,
        "buckets": [sorted(g) for g in groups],
        "bucket_parameters": params,
    }
    return active, audit


def build_robust_round(
    agg: AggregationSection,
    number: int,
    round_id: bytes,
    members: list[Member],
    dimension: int,
    choose_graph: GraphChooser,
    *,
    policy: FederationPolicy | None = None,
    roster_version: int = 0,
) -> tuple[ActiveRound, dict | None]:
    """The round for ``agg.rule`` in ``agg.mode`` and its audit record (None in plaintext).

    Raises ``ValueError`` with the reason when the rule cannot work with these clients.
    """
    if agg.mode in ("plaintext", "attested"):
        check_feasible(agg.rule, len(members), agg.f, agg.beta, unit="clients")
        active = RobustPlainRound(
            number, round_id, members, dimension, rule=agg.rule, f=agg.f, beta=agg.beta
        )
        return active, None
    if agg.mode not in ("secagg", "secagg+"):
        raise ValueError(f"rule {agg.rule} is not available in {agg.mode} mode")
    return build_bucketed_round(
        number=number,
        round_id=round_id,
        members=members,
        mode=agg.mode,
        vector_length=encoded_length(dimension),
        clip=agg.clip,
        dropout_rate=agg.dropout_rate,
        corrupt_fraction=agg.corrupt_fraction,
        bucket_size=agg.bucket_size,
        rule=agg.rule,
        f=agg.f,
        beta=agg.beta,
        choose_graph=choose_graph,
        policy=policy,
        roster_version=roster_version,
    )
