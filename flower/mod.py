"""The ClientApp side: :func:`sealagg_mod`, in place of Flower's ``secaggplus_mod``.

``ClientApp(client_fn=..., mods=[sealagg_mod])``: the ClientApp's own code is unchanged. For a
TRAIN message carrying sealagg's record the mod runs sealagg's client protocol
(:class:`sealagg.crypto.SecAggClient`): a fresh Ed25519 identity per round, the client's own
policy check of the round, key advertisement and shares, then (when the share bundle
arrives) it calls the ClientApp to train, clips, weights and quantizes the reply's parameters,
masks them, signs the survivor list (the consistency check) and answers the unmasking
request. Only the masked vector leaves; the reply's arrays are emptied (its metrics and
``num_examples`` travel as in Flower's own mod). Every other message passes through.

Where the secrets live: in this process's memory only, keyed by (run, node), from the
identify stage to the unmasking answer, then dropped. sealagg's keys refuse pickling by design
(a secret written to the node's context, as Flower's mod does, outlives the round on disk), so
a round's messages for one node must reach the same ClientApp process: Flower's simulation
engine with one client actor (``backend_config={"init_args": {"num_cpus": 1},
"client_resources": {"num_cpus": 1}}``). Flower 1.42's deployment runtime (SuperNode with
SuperExec) starts one ClientApp process per message, so there every stage after the first is
refused until the client's round state can be exported sealed (a crypto-level follow-up). A
message whose round is not in memory is refused (an error reply, i.e. a dropout), never
guessed.
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from sealagg.crypto import IdentityKey, SecAggClient, decode, encode_update
from sealagg.crypto.errors import OutOfPhaseError, RoundParametersRefusedError, SecAggError
from sealagg.crypto.messages import ShareBundle, UnmaskShares
from sealagg.crypto.policy import FederationPolicy
from sealagg.flower.records import (
    PAYLOAD,
    RECORD,
    STAGE,
    STAGE_IDENTIFY,
    STAGE_OFFER,
    STAGE_PROTOCOL,
    Offer,
    check_offer,
    unpack_offer,
)

__all__ = ["SealaggMod", "make_sealagg_mod", "sealagg_mod"]


@dataclasses.dataclass
class _Session:
    identity: IdentityKey
    offer: Offer | None = None
    client: SecAggClient | None = None


_LOCK = threading.Lock()
_SESSIONS: dict[tuple[int, int], _Session] = {}


def _reply(msg: Message, stage: str, payload: bytes, content: RecordDict | None = None) -> Message:
    out = content if content is not None else RecordDict()
    out.config_records[RECORD] = ConfigRecord({STAGE: stage, PAYLOAD: payload})
    return Message(out, reply_to=msg)


class SealaggMod:
    """The mod, as an object: Flower's simulation engine ships mods to its Ray actors by
    pickling, and an instance of an importable class pickles by reference plus its policy."""

    def __init__(self, policy: FederationPolicy | None = None) -> None:
        self.policy = policy if policy is not None else FederationPolicy()

    def __call__(self, msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        if (
            msg.metadata.message_type != MessageType.TRAIN
            or RECORD not in msg.content.config_records
        ):
            return call_next(msg, ctxt)
        record = msg.content.config_records[RECORD]
        stage, payload = record.get(STAGE), record.get(PAYLOAD)
        if not isinstance(stage, str) or not isinstance(payload, bytes):
            raise OutOfPhaseError("sealagg record without a stage and a bytes payload")
        key = (int(ctxt.run_id), int(msg.metadata.dst_node_id))
        try:
            return _step(self.policy, key, stage, payload, msg, ctxt, call_next)
        except Exception:
            # Whatever went wrong, this round's secrets are dropped with the session: a
            # client that failed never answers a later stage of the same round.
            with _LOCK:
                _SESSIONS.pop(key, None)
            raise


def make_sealagg_mod(policy: FederationPolicy | None = None) -> SealaggMod:
    """A mod enforcing ``policy`` (default: :class:`FederationPolicy`'s defaults)."""
    return SealaggMod(policy)


def _step(policy, key, stage, payload, msg, ctxt, call_next) -> Message:
    if stage == STAGE_IDENTIFY:
        # A fresh identity per round: nothing links this node's rounds, and a previous
        # round's session (aborted or not) is replaced, its secrets dropped.
        session = _Session(IdentityKey.generate())
        with _LOCK:
            _SESSIONS[key] = session
        return _reply(msg, STAGE_IDENTIFY, session.identity.verify_key_bytes)
    with _LOCK:
        session = _SESSIONS.get(key)
    if session is None:
        raise OutOfPhaseError(
            f"sealagg: no round in progress for node {key[1]} in this process (a round's "
            "messages must reach the ClientApp process that identified it)"
        )
    if stage == STAGE_OFFER:
        if session.offer is not None:
            raise OutOfPhaseError("sealagg: a second round offer for the same round")
        offer = unpack_offer(payload)
        check_offer(offer, policy)
        session.client = SecAggClient(offer.config, offer.index, session.identity)
        session.offer = offer
        return _reply(msg, STAGE_OFFER, session.client.advertise_keys().encode())
    if stage != STAGE_PROTOCOL or session.client is None or session.offer is None:
        raise OutOfPhaseError(f"sealagg: stage {stage!r} is not expected now")
    server_msg = decode(payload)
    content = None
    if isinstance(server_msg, ShareBundle):
        content = _train_and_set_input(session, msg, ctxt, call_next)
    reply = session.client.handle(server_msg)
    if isinstance(reply, UnmaskShares):
        with _LOCK:
            _SESSIONS.pop(key, None)
    return _reply(msg, STAGE_PROTOCOL, reply.encode(), content)


def _train_and_set_input(session: _Session, msg, ctxt, call_next) -> RecordDict:
    """Run the ClientApp's training, then hand its weighted, quantized parameters to the client.

    The weight is ``num_examples / max_weight``; above 1 the client refuses instead of
    clamping (a clamped weight would silently bias the mean).
    """
    assert session.client is not None and session.offer is not None
    out = call_next(msg, ctxt)
    if out.has_error():
        raise SecAggError(f"the ClientApp failed to train: {out.error.reason}")
    content = out.content
    fitres = compat.recorddict_to_fitres(content, keep_input=True)
    weight = fitres.num_examples / session.offer.max_weight
    if not 0 < weight <= 1:
        raise RoundParametersRefusedError(
            f"num_examples={fitres.num_examples} is outside (0, max_weight="
            f"{session.offer.max_weight}]: raise max_weight on the server"
        )
    arrays = parameters_to_ndarrays(fitres.parameters)
    vector = (
        np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
        if arrays
        else np.zeros(0)
    )
    expected = session.offer.config.vector_length - 1
    if vector.shape[0] != expected:
        raise RoundParametersRefusedError(
            f"the trained model has {vector.shape[0]} values, the round expects {expected}"
        )
    session.client.set_input(encode_update(vector, weight, session.offer.spec))
    for record in content.array_records.values():
        record.clear()
    return content


sealagg_mod = make_sealagg_mod()
