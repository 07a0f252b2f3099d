"""One buffer of an asynchronous ``ckks`` run (issue 21): a CKKS round among its members.

A buffer of an asynchronous run in mode ``ckks`` fills like a masked one: the first K data
owners that *register* an update trained on their leased version (no update byte reaches the
appliance then; :class:`~appliance.async_buffer.MaskedBuffer`). When it is full, one CKKS
round (:mod:`appliance.ckks_round`: phases keys, context, encrypted_input, decrypt) runs among
exactly those data owners plus the run's key holder ([ckks].key_holder, roster role
``key_holder``, which never takes a lease and trains nothing), on the current version as
parent. Members past the maximum staleness by then are left out and told, as in masked
buffers (:mod:`appliance.async_runs`).

The round's public context (:class:`~crypto.buffer_context.BufferContext`: parent, every
data owner's base version, the staleness function) is announced in the ``RoundStart``
(``async_buffer``, per-participant ``base_version``, ``async_params``) and bound into what
each data owner signs with its ciphertexts (:mod:`crypto.ckks_buffer`). Each data owner
checks the base version listed for it against its lease and encrypts
``[w s(tau) x, w s(tau)]``. What is checked where, and why:

- **On arrival** (:class:`CkksBufferRound`): the appliance's accumulator refuses a
  contribution claiming another base version than the buffer lists for its signer, or
  signed over another context; that member leaves the round, the others go on if at least m
  are left.
- **Before decrypting**: the key holder rebuilds the context from its own view of the round,
  recomputes the sum from the signed uploads and refuses the whole buffer if any of them
  was signed over another context or claims another base (an appliance that showed members
  different base versions gets nothing decrypted); it also refuses a total weight above the
  sum of the contributors' ``s(tau)``.
- **Before publishing**: the appliance makes the same total-weight check on the decrypted
  sum, and audits, per contributor, its base version, ``tau`` and ``s(tau)``.

What the server learns beyond a synchronous ckks round: which base versions contributed to
each buffer (audited in ``participants`` and ``async_buffer``), as in masked buffers. The key
holder receives each member's ciphertext, as in a synchronous ckks round.
"""

from __future__ import annotations

from sealagg.appliance.async_buffer import BufferPlan
from sealagg.appliance.ckks_round import CkksPlan, CkksRound, build_ckks_round
from sealagg.appliance.config import ApplianceConfig
from sealagg.appliance.rounds import Member
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.crypto.buffer_context import BufferContext
from sealagg.crypto.ckks import CkksAccumulator, check_buffer_total

__all__ = ["CkksBufferRound", "buffer_round_names", "build_ckks_buffer_round"]


class CkksBufferRound(CkksRound):
    """A ckks round whose contributions are signed over the buffer's staleness context."""

    def __init__(
        self,
        number: int,
        round_id: bytes,
        members: list[Member],
        plan: CkksPlan,
        dimension: int,
        buffer: BufferContext,
        *,
        buffer_index: int,
        run_id: str,
        size: int,
    ) -> None:
        super().__init__(number, round_id, members, plan, dimension)
        self.buffer = buffer
        self.buffer_index = buffer_index
        self.run_id = run_id
        self.size = size

    def _new_accumulator(self, context: bytes) -> CkksAccumulator:
        return CkksAccumulator(
            self.plan.params,
            context,
            self.round_id,
            self.dimension,
            model_version=self.plan.model_version,
            buffer=self.buffer,
        )

    def _check_total(self, total: float) -> None:
        indices = [self.members[n].index for n in self.contributors]
        check_buffer_total(self.buffer, indices, total, self.plan.params)

    def result_audit(self) -> dict[str, dict]:
        """Which base versions the published sum covers, with each ``tau`` and ``s(tau)``."""
        return {
            "async_buffer": {
                "round": self.number,
                "run": self.run_id,
                "buffer": self.buffer_index,
                "buffer_size": self.size,
                "parent_version": self.buffer.parent_version,
                "encrypted": True,
                "members": {name: self._member(name) for name in sorted(self.contributors)},
            }
        }

    def _member(self, name: str) -> dict:
        index = self.members[name].index
        return {
            "base_version": self.buffer.base_versions[index],
            "staleness": self.buffer.staleness_of(index),
            "staleness_weight": round(self.buffer.weight_of(index), 12),
            "client_weight": "inside the ciphertext",
        }


def buffer_round_names(config: ApplianceConfig, plan: BufferPlan) -> list[str]:
    """The buffer round's members: its registered data owners and the run's key holder."""
    return sorted({*plan.bases, config.ckks.key_holder} - {""})


def build_ckks_buffer_round(
    config: ApplianceConfig,
    number: int,
    members: list[Member],
    dimension: int,
    start: pb.RoundStart,
    plan: BufferPlan,
) -> tuple[CkksBufferRound, dict]:
    """The buffer's CKKS round on ``start.model_version`` as parent, and its audit record;
    ValueError with the reason refuses it (every member is told)."""
    section = config.ckks
    if section.key_holder_contributes:
        raise ValueError(
            "asynchronous ckks buffers need a separate key holder ([ckks] "
            "key_holder_contributes = false): it takes no lease and trains nothing"
        )
    if section.key_holder in plan.bases:
        raise ValueError(f"the key holder {section.key_holder!r} registered an update")
    owners = {m.name: m.index for m in members if m.name != section.key_holder}
    # Refuses a member past the maximum staleness (the scheduler left those out already).
    context = plan.context(start.model_version, owners)
    base, audit = build_ckks_round(config, number, plan.round_id, members, dimension, start)
    active = CkksBufferRound(
        number,
        plan.round_id,
        members,
        base.plan,
        dimension,
        context,
        buffer_index=plan.index,
        run_id=plan.run_id,
        size=plan.size,
    )
    for participant in start.participants:  # the key holder trained nothing: 0
        participant.base_version = plan.bases.get(participant.name, 0)
    start.asynchronous = True
    start.async_buffer = True
    start.buffer_number = plan.index
    start.async_params.CopyFrom(plan.params)
    audit.update(async_buffer=plan.index, parent_version=context.parent_version)
    return active, audit
