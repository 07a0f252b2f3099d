"""A client's side of a ``ckks`` round: only ciphertexts of [w·x, w] leave a data owner.

The key holder (the round's designated data owner, or a separate party that sends
no update) generates fresh CKKS keys, advertises the public context signed with its
identity key, seals the secret context to each data owner when the round shares it,
and at the end decrypts the appliance's sum and returns that sum only. Data owners
check the key holder's signature before encrypting, so an appliance cannot hand them
a context whose secret key it holds. Every check is done before anything is sent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import grpc
import numpy as np

from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire.modelcodec import Layout
from sealagg.client_shim.errors import ROUND_LOST, RoundRefusedError
from sealagg.crypto.ckks import (
    CkksEncryptor,
    CkksKeyHolder,
    CkksParameters,
    check_ckks_round,
    check_secret_context,
)
from sealagg.crypto.ckks_keys import (
    CkksParty,
    read_bundle,
    read_roster,
    result_message,
    sealed_message,
)
from sealagg.crypto.errors import CkksError, SecAggError

if TYPE_CHECKING:
    from sealagg.client_shim.connection import Connection
    from sealagg.crypto import IdentityKey

_log = logging.getLogger("sealagg.client.ckks")
UPLOAD_KIND = "ckks"
MINIMUM_CONTRIBUTORS = 3

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
    )
    return params


def take_part(
    participant: RoundFollower[Report_co],
    start: pb.RoundStart,
    tensors: Mapping[str, np.ndarray],
    compute: ComputeUpdate,
) -> Report_co:
    """Run this client's side of one ckks round; returns what ``participant.follow`` returns.

    ``participant`` is the session's :class:`~client_shim.session.Participant` (its
    connection, identity and ``follow`` loop). A separate key holder never calls ``compute``.
    """
    try:
        params = parameters_from(start)
    except SecAggError as error:
        raise RoundRefusedError(f"ckks round refused: {error}") from None
    layout = Layout.of(tensors)
    side = _Side(participant, start, layout, params)
    update, weight, meta = None, 0.0, ""
    if side.contributes:
        update, weight, meta = _prepare(start, tensors, layout, compute)
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
    update = np.asarray(update, dtype=np.float32)
    if update.shape != (layout.dimension,):
        raise ValueError(f"update has shape {update.shape}, the model needs ({layout.dimension},)")
    if not np.isfinite(update).all():
        raise ValueError("update contains NaN or Inf; nothing was sent")
    if not 0.0 < weight <= 1.0:
        raise ValueError(f"weight must lie in (0, 1], got {weight}")
    clipped = np.clip(update, -start.clip, start.clip) if start.clip > 0 else update
    return clipped, weight, json.dumps(dict(metadata))


class _Side:
    """This client's state for one ckks round (its round key, and the secret key if it holds it)."""

    def __init__(
        self,
        participant: RoundFollower[Any],
        start: pb.RoundStart,
        layout: Layout,
        params: CkksParameters,
    ) -> None:
        self.participant = participant
        self.start = start
        self.round_id = bytes(start.round_id)
        self.dimension = layout.dimension
        self.params = params
        self.index = start.client_index
        c = start.ckks
        self.is_key_holder = self.index == c.key_holder_index
        self.contributes = not self.is_key_holder or c.key_holder_contributes
        self.identities = {p.index: bytes(p.identity_key) for p in start.participants}
        self.names = {p.index: p.name for p in start.participants}
        self.party = CkksParty(self.round_id, self.index)
        self.holder = CkksKeyHolder.generate(params, self.round_id) if self.is_key_holder else None

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
            except SecAggError as error:  # refuse: send nothing, the round goes on without us
                _log.warning("round %d: %s", self.start.round_number, error)
                return 0
            return self.send(step.phase, reply, deadline=step.deadline_unix)

        return answer

    def _reply(self, step: pb.ProtocolStep, update: np.ndarray | None, weight: float) -> bytes:
        if step.phase == 1 and self.holder is not None:
            return self._seal_contexts(step.payload)
        if step.phase == 2 and self.contributes and update is not None:
            return self._encrypt(step.payload, update, weight)
        if step.phase == 3 and self.holder is not None:
            weighted = self.holder.decrypt_sum(
                step.payload, self.dimension, minimum=MINIMUM_CONTRIBUTORS
            )
            return result_message(self.round_id, weighted.astype("<f8").tobytes())
        raise CkksError(f"unexpected step for phase {step.phase}")

    def _seal_contexts(self, payload: bytes) -> bytes:
        assert self.holder is not None
        roster = read_roster(payload, self.round_id)
        secret = (
            self.holder.export_secret_for_sealing() if self.start.ckks.share_secret_key else None
        )
        sealed = {}
        for index, advert in roster.items():
            if index not in self.identities or index == self.index:
                raise CkksError(f"roster names {index}, who is not a data owner of this round")
            advert.verify(self.round_id, self.identities[index], signer=self.names[index])
            if secret is not None:
                sealed[index] = self.party.seal_for(advert, secret)
        return sealed_message(self.round_id, sealed)

    def _encrypt(self, payload: bytes, update: np.ndarray, weight: float) -> bytes:
        advert, sealed = read_bundle(payload, self.round_id)
        holder = self.start.ckks.key_holder_index
        if advert.index != holder:
            raise CkksError("the context does not come from the round's key holder")
        advert.verify(self.round_id, self.identities[holder], signer=self.names[holder])
        assert advert.context is not None
        if self.start.ckks.share_secret_key and not self.is_key_holder:
            if sealed is None:
                raise CkksError("the round shares the secret context, but none was sealed to us")
            check_secret_context(self.party.open_from(advert, sealed), advert.context)
        encryptor = CkksEncryptor(self.params, advert.context, self.round_id)
        return encryptor.encrypt(update, weight)
