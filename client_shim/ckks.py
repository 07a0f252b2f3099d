"""A client's side of a ``ckks`` round: only signed ciphertexts of [w·x, w] leave a data owner.

The key holder (a designated party with the roster role ``key_holder``, sending no update
unless the federation configures it to) generates fresh CKKS keys, advertises the public
context signed with its identity key, and at the end decrypts one sum that it recomputed
itself from the data owners' signed uploads, after checking that they come from at least m
distinct roster data owners of this round. Data owners check, before they send anything,
that the key holder is on the authority's roster in that role, so an appliance cannot hand
them a context whose secret key it holds. No data owner receives the secret key unless both
the federation and the data owner's own configuration (kit ``[ckks] share_secret_key``) say
so, and the key holder seals it only to roster data owners.

In an asynchronous ckks run (issue 21) a data owner registers its update under its lease and
takes part in its buffer's round (:func:`take_part_in_buffer`): it refuses a buffer that lists
another base version for it, folds ``s(tau)`` into its weight and signs the buffer's whole
staleness context with its ciphertexts; the key holder (no lease, :func:`take_part`) rebuilds
that context from its own view and decrypts nothing unless every contribution signed it
(:mod:`crypto.ckks_buffer`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import grpc
import numpy as np

from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire.modelcodec import Layout
from sealagg.client_shim.errors import ROUND_LOST, RoundRefusedError
from sealagg.crypto.buffer_context import BufferContext
from sealagg.crypto.ckks import (
    CkksEncryptor,
    CkksKeyHolder,
    CkksParameters,
    RosterMember,
    check_ckks_round,
    check_key_holder,
    check_secret_context,
    input_limit,
)
from sealagg.crypto.ckks_buffer import buffer_context_for
from sealagg.crypto.ckks_keys import (
    CkksParty,
    ack_message,
    read_bundle,
    read_contribution,
    read_roster,
    refusal_message,
    result_message,
    sealed_message,
)
from sealagg.crypto.errors import CkksError, CkksRoleError, SecAggError
from sealagg.crypto.roster import CONTRIBUTING_ROLES, Role, members_from_roster
from sealagg.crypto.rules import MIN_MASKED_PARTIES
from sealagg.crypto.staleness import StalenessPolicy

if TYPE_CHECKING:
    from sealagg.client_shim.connection import Connection
    from sealagg.crypto import IdentityKey
    from sealagg.crypto.roster import RosterVerifier

_log = logging.getLogger("sealagg.client.ckks")
UPLOAD_KIND = "ckks"

#: (round start, global tensors) -> (flat float32 update, weight in (0, 1], metadata)
ComputeUpdate = Callable[
    [pb.RoundStart, Mapping[str, np.ndarray]], tuple[np.ndarray, float, Mapping[str, object]]
]

Report_co = TypeVar("Report_co", covariant=True)


class RoundFollower(Protocol[Report_co]):
    """What a ckks round needs from the session's :class:`~client_shim.session.Participant`.

    Named here so this module never imports ``session`` (which dispatches ckks rounds to us).
    """

    @property
    def connection(self) -> Connection: ...

    @property
    def identity(self) -> IdentityKey: ...

    @property
    def roster(self) -> RosterVerifier | None: ...

    def follow(
        self,
        start: pb.RoundStart,
        sent: int,
        answer: Callable[[pb.ProtocolStep], int] | None,
    ) -> Report_co: ...


def parameters_from(start: pb.RoundStart) -> CkksParameters:
    """The round's CKKS parameters, refused (``CkksParameterError``) if they cannot protect us."""
    c = start.ckks
    params = CkksParameters(
        int(c.poly_modulus_degree), tuple(int(b) for b in c.coeff_mod_bit_sizes), int(c.scale_bits)
    )
    check_ckks_round(  # the same check the appliance made before opening the round
        params,
        data_owners=len(start.participants) - (0 if c.key_holder_contributes else 1),
        key_holder_listed=c.key_holder_index in {p.index for p in start.participants},
        value_bound=start.clip,
        max_error=c.max_error or 1e-3,
        minimum_contributors=minimum_contributors(start),
    )
    return params


def minimum_contributors(start: pb.RoundStart, policy_minimum: int = MIN_MASKED_PARTIES) -> int:
    """m for this round: the larger of the client's policy (``minimum_sum``) and the round's
    value, never below :data:`MIN_MASKED_PARTIES`. The appliance can only raise it."""
    return max(int(start.minimum_survivors), policy_minimum, MIN_MASKED_PARTIES)


def policy_minimum(participant: RoundFollower[Any]) -> int:
    """m from the federation policy this client enforces: the authority's signed one for this
    round when the session found one (``participant.policy``), else its kit's ``[policy]``."""
    policy = getattr(participant, "policy", None) or participant.connection.kit.policy
    return int(policy.minimum_sum)


class _Announced:
    """A member as the appliance announced it; its role inferred from the round (development
    kits without a pinned authority only: there the appliance is trusted with identities)."""

    __slots__ = ("identity_key", "name", "role")

    def __init__(self, name: str, identity_key: bytes, role: Role) -> None:
        self.name, self.identity_key, self.role = name, identity_key, role


def round_members(verifier: RosterVerifier | None, start: pb.RoundStart) -> dict[int, RosterMember]:
    """Each round member's roster entry by index (role included), refusing ghosts.

    With a pinned authority the entries come from the signed roster; a development kit has
    none, and then the appliance's list is all there is (the session warns about that kit).
    """
    c = start.ckks
    if verifier is not None:
        return dict(
            members_from_roster(
                verifier.accept(start.roster),
                start.participants,
                now=datetime.now(UTC),
                key_holder=c.key_holder_index,
                key_holder_contributes=c.key_holder_contributes,
            )
        )
    separate = not c.key_holder_contributes
    return {
        p.index: _Announced(
            p.name,
            bytes(p.identity_key),
            Role.KEY_HOLDER if separate and p.index == c.key_holder_index else Role.DATA_OWNER,
        )
        for p in start.participants
    }


def own_share_setting(participant: RoundFollower[Any]) -> bool:
    """This client's own ``[ckks] share_secret_key`` (kit ``client.toml``; default false)."""
    section = participant.connection.kit.config.get("ckks", {})
    return bool(section.get("share_secret_key", False)) if isinstance(section, dict) else False


def take_part(
    participant: RoundFollower[Report_co],
    start: pb.RoundStart,
    tensors: Mapping[str, np.ndarray],
    compute: ComputeUpdate,
) -> Report_co:
    """Run this client's side of one ckks round; returns what ``participant.follow`` returns.

    ``participant`` is the session's :class:`~client_shim.session.Participant` (its
    connection, identity and ``follow`` loop). A separate key holder never calls ``compute``
    (in an asynchronous run it takes part in every buffer's round this way, without a lease).
    """
    side = _side(participant, start, Layout.of(tensors), trained_on=None)
    update, weight, meta = None, 0.0, ""
    if side.contributes:
        if side.buffer is not None:
            raise RoundRefusedError(
                "an asynchronous buffer's round arrived without this data owner registering "
                "for it; nothing was sent"
            )
        update, weight, meta = _prepare(start, tensors, side.layout, compute)
    return _run(participant, side, update, weight, meta)


def take_part_in_buffer(
    participant: RoundFollower[Report_co],
    start: pb.RoundStart,
    layout: Layout,
    update: np.ndarray,
    weight: float,
    meta: str,
    *,
    trained_on: int,
) -> Report_co:
    """A data owner's side of its asynchronous buffer's ckks round (issue 21): ``update`` and
    ``weight`` were computed on its lease's version ``trained_on``. The round must list that
    version for it (else nothing is sent); it encrypts ``[w s(tau) x, w s(tau)]``, ``tau``
    from the round's context, and signs that context with its ciphertexts."""
    side = _side(participant, start, layout, trained_on=trained_on)
    if not side.contributes or side.buffer is None:
        raise RoundRefusedError("the buffer's round is not an asynchronous ckks buffer round")
    update, weight = _checked(start, layout, update, weight)
    return _run(participant, side, update, side.buffer.fold_weight(side.index, weight), meta)


def buffer_context(start: pb.RoundStart) -> BufferContext:
    """An asynchronous ckks buffer's staleness context as this round states it (parent, each
    data owner's base version, the staleness function); ``CkksError`` subclasses refuse it."""
    p, c = start.async_params, start.ckks
    try:
        policy = StalenessPolicy(
            kind=p.staleness, max_staleness=p.max_staleness, a=p.a, alpha=p.alpha, b=p.b
        )
    except ValueError as error:
        raise CkksError(f"the buffer's staleness parameters: {error}") from None
    return buffer_context_for(
        int(start.model_version),
        {int(m.index): int(m.base_version) for m in start.participants},
        policy,
        data_owners=[int(m.index) for m in start.participants if m.index != c.key_holder_index],
        key_holder=int(c.key_holder_index),
    )


def _side(
    participant: RoundFollower[Any], start: pb.RoundStart, layout: Layout, *, trained_on: int | None
) -> _Side:
    """This client's checked state for the round; RoundRefusedError before anything is sent."""
    try:
        return _Side(
            participant,
            start,
            layout,
            parameters_from(start),
            round_members(participant.roster, start),
            share_secret_key=own_share_setting(participant),
            minimum=minimum_contributors(start, policy_minimum(participant)),
            buffer=buffer_context(start) if start.async_buffer else None,
            trained_on=trained_on,
        )
    except SecAggError as error:
        raise RoundRefusedError(f"ckks round refused: {error}") from None


def _run(
    participant: RoundFollower[Report_co],
    side: _Side,
    update: np.ndarray | None,
    weight: float,
    meta: str,
) -> Report_co:
    start = side.start
    try:
        sent = side.send(0, side.advert(), meta)
        return participant.follow(start, sent, side.answer_with(update, weight))
    except grpc.RpcError as error:
        if error.code() not in ROUND_LOST:
            raise
        _log.warning("round %d: upload failed (%s)", start.round_number, error.code().name)
        return participant.follow(start, 0, None)


def _prepare(
    start: pb.RoundStart,
    tensors: Mapping[str, np.ndarray],
    layout: Layout,
    compute: ComputeUpdate,
) -> tuple[np.ndarray, float, str]:
    """The caller's update, checked like in the other modes and clipped to ±clip per value."""
    update, weight, metadata = compute(start, tensors)
    weight = float(weight) * (start.contribution_weight or 1.0)
    clipped, weight = _checked(start, layout, update, weight)
    return clipped, weight, json.dumps(dict(metadata))


def _checked(
    start: pb.RoundStart, layout: Layout, update: np.ndarray, weight: float
) -> tuple[np.ndarray, float]:
    """The update as float32 clipped to ±clip, and its weight, refused if malformed."""
    update = np.asarray(update, dtype=np.float32)
    if update.shape != (layout.dimension,):
        raise ValueError(f"update has shape {update.shape}, the model needs ({layout.dimension},)")
    if not np.isfinite(update).all():
        raise ValueError("update contains NaN or Inf; nothing was sent")
    if not 0.0 < weight <= 1.0:
        raise ValueError(f"weight must lie in (0, 1], got {weight}")
    clipped = np.clip(update, -start.clip, start.clip) if start.clip > 0 else update
    return clipped, float(weight)


class _Side:
    """This client's state for one ckks round (its round key, and the secret key if it holds it).

    Every check that can be made before sending anything is made here: the key holder is on
    the roster with the key-holder role (else ``CkksRoleError``: a ghost key holder gets no
    ciphertext), and a round that would seal the secret key to data owners is refused unless
    this client's own configuration accepts it.
    """

    def __init__(
        self,
        participant: RoundFollower[Any],
        start: pb.RoundStart,
        layout: Layout,
        params: CkksParameters,
        members: Mapping[int, RosterMember],
        *,
        share_secret_key: bool,
        minimum: int,
        buffer: BufferContext | None = None,
        trained_on: int | None = None,
    ) -> None:
        self.participant = participant
        self.start = start
        self.round_id = bytes(start.round_id)
        self.layout = layout
        self.dimension = layout.dimension
        self.params = params
        self.index = start.client_index
        self.members = dict(members)
        c = start.ckks
        self.key_holder = c.key_holder_index
        self.key_holder_contributes = c.key_holder_contributes
        check_key_holder(self.members, self.key_holder, contributes=c.key_holder_contributes)
        if c.share_secret_key and not share_secret_key:
            raise CkksError(
                "the round would seal the CKKS secret key to every data owner (then any of "
                "them, with the appliance's copy of the uploads, reads every other's update); "
                "this client's configuration does not accept that ([ckks] share_secret_key)"
            )
        self.share = bool(c.share_secret_key and share_secret_key)
        self.minimum = max(minimum, minimum_contributors(start))
        self.is_key_holder = self.index == self.key_holder
        self.contributes = not self.is_key_holder or c.key_holder_contributes
        self.buffer = buffer  # an asynchronous buffer's context: signed with each upload
        if buffer is not None and self.contributes:
            if trained_on is None:
                raise CkksError("a buffer's data owner takes part only after registering")
            buffer.check_own(self.index, trained_on)  # our weight must not rest on a lie
        self.party = CkksParty(self.round_id, self.index)
        self.holder = CkksKeyHolder.generate(params, self.round_id) if self.is_key_holder else None
        self._received: list[tuple[int, bytes]] = []
        self._total = 0

    def advert(self) -> bytes:
        identity = self.participant.identity
        return self.party.advert(identity, self.holder.public_context if self.holder else None)

    def send(self, phase: int, payload: bytes, meta: str = "", deadline: float = 0.0) -> int:
        header = pb.UploadHeader(
            round_id=self.round_id, phase=phase, kind=UPLOAD_KIND, metadata_json=meta
        )
        self.participant.connection.submit(
            header, payload, deadline_unix=deadline or self.start.submit_deadline_unix
        )
        return len(payload)

    def answer_with(
        self, update: np.ndarray | None, weight: float
    ) -> Callable[[pb.ProtocolStep], int]:
        def answer(step: pb.ProtocolStep) -> int:
            try:
                reply = self._reply(step, update, weight)
            except SecAggError as error:  # refuse; a key holder says why, so the round ends
                _log.warning("round %d: %s", self.start.round_number, error)
                if self.holder is None:
                    return 0  # a data owner sends nothing: the round goes on without us
                reply = refusal_message(self.round_id, str(error))
            return self.send(step.phase, reply, deadline=step.deadline_unix)

        return answer

    def _reply(self, step: pb.ProtocolStep, update: np.ndarray | None, weight: float) -> bytes:
        if step.phase == 1 and self.holder is not None:
            return self._seal_contexts(step.payload)
        if step.phase == 2 and self.contributes and update is not None:
            return self._encrypt(step.payload, update, weight)
        if step.phase == 3 and self.holder is not None:
            return self._contribution(step.payload)
        raise CkksError(f"unexpected step for phase {step.phase}")

    def _verify_advert(self, advert: Any, index: int) -> None:
        member = self.members[index]
        advert.verify(self.round_id, bytes(member.identity_key), signer=member.name)

    def _seal_contexts(self, payload: bytes) -> bytes:
        """Check every advert the appliance relays; seal the secret only to roster data owners
        of this round, and only when both the round and our own configuration share it."""
        assert self.holder is not None
        roster = read_roster(payload, self.round_id)
        secret = self.holder.export_secret_for_sealing() if self.share else None
        for index, advert in roster.items():  # every advert checked before anything is sealed
            member = self.members.get(index)
            if member is None or index == self.index or member.role not in CONTRIBUTING_ROLES:
                raise CkksRoleError(
                    f"the appliance relays an advert of {index}, who is not a roster data "
                    "owner of this round: nothing is sealed"
                )
            self._verify_advert(advert, index)
        sealed = {}
        if secret is not None:
            sealed = {i: self.party.seal_for(advert, secret) for i, advert in roster.items()}
        return sealed_message(self.round_id, sealed)

    def _encrypt(self, payload: bytes, update: np.ndarray, weight: float) -> bytes:
        advert, sealed = read_bundle(payload, self.round_id)
        if advert.index != self.key_holder:
            raise CkksError("the context does not come from the round's key holder")
        self._verify_advert(advert, self.key_holder)  # checked against the roster at the start
        assert advert.context is not None
        if self.share and not self.is_key_holder:
            if sealed is None:
                raise CkksError("the round shares the secret context, but none was sealed to us")
            check_secret_context(self.party.open_from(advert, sealed), advert.context)
        elif sealed is not None:
            raise CkksError("a secret context was sealed to us, but this round does not share it")
        encryptor = CkksEncryptor(self.params, advert.context, self.round_id, buffer=self.buffer)
        return encryptor.encrypt(
            update,
            weight,
            identity=self.participant.identity,
            index=self.index,
            name=self.members[self.index].name,
            model_version=int(self.start.model_version),
        )

    def _contribution(self, payload: bytes) -> bytes:
        """Collect the forwarded uploads; after the last, decrypt the sum we recompute."""
        assert self.holder is not None
        limit = input_limit(self.params, self.dimension)
        position, total, index, upload = read_contribution(payload, self.round_id, limit)
        if position != len(self._received) or (self._total and total != self._total):
            raise CkksError("contributions arrive out of order or change their number")
        self._total = total
        self._received.append((index, upload))
        if position < total - 1:
            return ack_message(self.round_id, position)
        weighted = self.holder.decrypt_contributions(
            self._received,
            self.members,
            dimension=self.dimension,
            model_version=int(self.start.model_version),
            key_holder=self.key_holder,
            key_holder_contributes=self.key_holder_contributes,
            minimum=self.minimum,
            buffer=self.buffer,
        )
        self._received.clear()
        return result_message(self.round_id, weighted.astype("<f8").tobytes())
