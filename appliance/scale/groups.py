"""Many clients per round: independent secure groups whose sums are added.

The split is :func:`sealagg.crypto.groups.plan_groups` (public, fixed by the round id and
the client list before any key exists; its docstring has the security argument: the
server learns every group's sum, each over at least ``m`` clients). Here each group
becomes its own round (:func:`group_configs`: its own round id, its threshold and quorum
checked against the federation policy with every colluder assumed in that group) and is
run by a ``run_group`` callable: a :class:`~.coordinator.StripedRound` on Ray stripes
(:func:`striped_runner`) or the one-process protocol (:func:`crypto.simulation.run_round`).

Adding: group sums are added in Z_(2^32), *before* decoding. The quantised encoding
(:func:`crypto.encode_update`) is made to be decoded from a ring sum of up to
``max_clients`` inputs, weight coordinate included; the modular sum of the group sums
is exactly that ring sum over every survivor of every group, so one
:func:`crypto.decode_sum` of the total gives the weighted mean over all of them, bit for
bit as one round over the same survivors would. Decoding each group and averaging the
means would round twice and need the group weights re-applied.

Dropouts are per group: each group closes its own survivor list. A group that cannot
finish (below its threshold or quorum, a stripe lost, any abort) aborts **the whole
round**: :class:`GroupAbortedError`, no total, nothing published. Publishing the other
groups' total instead would decide after the fact, by a failure the server can provoke
(it can silence a group's messages), which clients the round's model is made from. The
groups that did finish have revealed their sums to the server (each over at least ``m``
clients, as their members agreed); that is not undone, only not published.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from sealagg.crypto import IdentityKey, Phase, RoundConfig
from sealagg.crypto.groups import GroupPlan
from sealagg.crypto.policy import FederationPolicy, check_round_against_policy
from sealagg.crypto.rules import minimum_quorum


class GroupAbortedError(RuntimeError):
    """A group could not finish: the whole round is aborted and nothing is published."""

    def __init__(self, index: int, members: tuple[int, ...], cause: BaseException) -> None:
        super().__init__(
            f"group {index} ({len(members)} clients) aborted ({type(cause).__name__}: {cause}); "
            "the whole round is aborted and nothing is published"
        )
        self.index, self.members = index, members


class _GroupResult(Protocol):
    total: np.ndarray
    survivors: tuple[int, ...]
    dropped_before_masking: tuple[int, ...]
    dropped_after_masking: tuple[int, ...]


#: Runs one group's round: (config, identities, inputs, dropouts) -> its unmasked sum.
GroupRunner = Callable[
    [RoundConfig, Mapping[int, IdentityKey], Mapping[int, np.ndarray], Mapping[int, Phase]],
    _GroupResult,
]


@dataclasses.dataclass(frozen=True)
class GroupSurvivors:
    """Who counted in one group (the group's sum itself is not kept: only the total is
    published)."""

    index: int
    round_id: bytes
    members: tuple[int, ...]
    survivors: tuple[int, ...]
    dropped_before_masking: tuple[int, ...]
    dropped_after_masking: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class GroupedOutcome:
    """The round's total (Z_(2^32) sum of the group sums) and each group's survivors."""

    total: np.ndarray
    groups: tuple[GroupSurvivors, ...]

    @property
    def survivors(self) -> tuple[int, ...]:
        return tuple(sorted(u for g in self.groups for u in g.survivors))


def group_configs(
    plan: GroupPlan,
    verify_keys: Mapping[int, bytes],
    *,
    threshold: int,
    vector_length: int,
    policy: FederationPolicy,
    mode: str = "secagg",
    degree: int | None = None,
) -> tuple[RoundConfig, ...]:
    """One :class:`RoundConfig` per group: the group's own round id, its members' keys,
    ``threshold`` (capped at the group's degree), and the smallest quorum meeting the
    policy for that group; each checked with :func:`check_round_against_policy` (the
    check every client runs), assuming all ``policy.colluders`` are in that group."""
    if plan.minimum_sum < policy.minimum_sum:
        raise ValueError("the plan's minimum sum is below the policy's")
    configs = []
    for i, members in enumerate(plan.groups):
        n = len(members)
        k = None if degree is None or degree >= n - 1 else degree
        t = min(threshold, n - 1 if k is None else k)
        quorum = minimum_quorum(n, t, policy.colluders, policy.minimum_sum)
        check_round_against_policy(policy, mode, n, k, t, quorum)
        configs.append(
            RoundConfig.create(
                round_id=plan.round_id_of(i),
                identities={u: verify_keys[u] for u in members},
                threshold=t,
                vector_length=vector_length,
                degree=k,
                minimum_survivors=quorum,
            )
        )
    return tuple(configs)


def run_grouped_round(
    plan: GroupPlan,
    configs: Sequence[RoundConfig],
    identities: Mapping[int, IdentityKey],
    inputs: Mapping[int, np.ndarray],
    dropouts: Mapping[int, Phase] | None = None,
    *,
    run_group: GroupRunner,
) -> GroupedOutcome:
    """Run every group (in index order) and add their sums modulo 2^32. Raises
    :class:`GroupAbortedError` when any group aborts (see the module doc)."""
    if len(configs) != len(plan.groups):
        raise ValueError("one config per group")
    dropouts = dict(dropouts or {})
    total = np.zeros(configs[0].vector_length, dtype=np.uint32)
    done = []
    for i, (members, config) in enumerate(zip(plan.groups, configs, strict=True)):
        if config.participants != members or config.round_id != plan.round_id_of(i):
            raise ValueError(f"config {i} is not group {i} of the plan")
        try:
            result = run_group(
                config,
                {u: identities[u] for u in members},
                {u: inputs[u] for u in members},
                {u: p for u, p in dropouts.items() if u in members},
            )
        except Exception as error:  # any abort of any group aborts the round
            raise GroupAbortedError(i, members, error) from error
        total += np.asarray(result.total, dtype=np.uint32)  # wraps: Z_(2^32)
        done.append(
            GroupSurvivors(
                index=i,
                round_id=config.round_id,
                members=members,
                survivors=tuple(result.survivors),
                dropped_before_masking=tuple(result.dropped_before_masking),
                dropped_after_masking=tuple(result.dropped_after_masking),
            )
        )
    return GroupedOutcome(total=total, groups=tuple(done))


def striped_runner(
    stripes: Sequence[Any], weights: Sequence[float], *, chunk_words: int | None = None
) -> GroupRunner:
    """Run each group as a :class:`~.coordinator.StripedRound` on ``stripes`` (one range
    per weight), one group after another on the same stripes, driven by
    :func:`~.local.run_striped_round` with real protocol clients."""
    from sealagg.appliance.scale.coordinator import CHUNK_WORDS, StripedRound, plan_stripes
    from sealagg.appliance.scale.local import run_striped_round

    def run(config, identities, inputs, dropouts):  # type: ignore[no-untyped-def]
        ranges = plan_stripes(config.vector_length, weights)
        striped = StripedRound(
            config, stripes[: len(ranges)], ranges, chunk_words=chunk_words or CHUNK_WORDS
        )
        return run_striped_round(striped, identities, inputs, dropouts)

    return run
