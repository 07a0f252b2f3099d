"""The ClientApp side: :func:`sealagg_mod`, in place of Flower's ``secaggplus_mod``.

``ClientApp(client_fn=..., mods=[sealagg_mod])``: the ClientApp's own code is unchanged. For a
TRAIN message carrying sealagg's record the mod runs sealagg's client protocol
(:class:`sealagg.crypto.SecAggClient`): a fresh Ed25519 identity per round, the client's own
policy check of the round, key advertisement and shares, then (when the share bundle
arrives) it calls the ClientApp to train, clips, weights and quantizes the reply's parameters,
masks them, signs the survivor list (the consistency check) and answers the unmasking
request. Only the masked vector leaves; the reply's arrays are emptied (its metrics and
``num_examples`` travel as in Flower's own mod). Every other message passes through.

Where a round's secrets live between two messages: in the node's ``Context.state`` (one
``ConfigRecord`` named :data:`STATE_RECORD`), *sealed*; Flower's own ``secaggplus_mod`` keeps
its state there too, but in the clear. Both of Flower's runtimes keep ``Context.state``
between messages: the simulation engine (the state travels with the node's context, not
with a client actor) and the deployment runtime, where the SuperNode starts one ClientApp
process per message and stores the context the process pushes back. Each message, the mod
opens the state, runs one step, seals the next state (:meth:`SecAggClient.export_state`)
and drops the round's record once it answered the unmasking request or failed. A message
whose round is not in the state is refused (an error reply, i.e. a dropout), never guessed.

Security argument for the sealed state. The state goes only to the SuperNode, the data
owner's own process on the data owner's machine: the same local channel already carries
the ClientApp's plaintext training reply (the unmasked model), so the round's secrets add
nothing the client's own SuperNode could not already see. The context never goes to the
SuperLink (the SuperNode keeps it in its NodeState, per run). Sealing still matters: the key
is :data:`STATE_KEY_FILE` under the Flower home directory (``$FLWR_HOME``, else ``~/.flwr``),
32 CSPRNG bytes, mode 0600 in a 0700 directory, made once by the first ClientApp and never
sent anywhere, so whatever the SuperNode keeps, dumps or persists holds ciphertext only; the
associated data (format version, run, node, the offer's hash, round id) refuses a state for
another round, run or node, or a tampered one. Nothing here logs a state; key objects still
refuse pickling. What sealing cannot stop is a rollback (the SuperNode handing back an older
record): that needs the SuperNode itself, which is the data owner's. The node's transcript
ledger (sealed in the same record, spanning the run's rounds) refuses a second claim of a
round id or transcript and bounds graph re-draws (the reveal budget) against the server.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.utils import get_flwr_home

from sealagg.crypto import IdentityKey, SecAggClient, decode, encode_update
from sealagg.crypto.client_state import (
    STATE_KEY_BYTES,
    PortableTranscriptLedger,
    new_state_key,
    open_identity,
    seal_identity,
)
from sealagg.crypto.errors import OutOfPhaseError, RoundParametersRefusedError, SecAggError
from sealagg.crypto.messages import ShareBundle
from sealagg.crypto.policy import FederationPolicy
from sealagg.flower.records import (
    PAYLOAD,
    RECORD,
    STAGE,
    STAGE_IDENTIFY,
    STAGE_OFFER,
    STAGE_PROTOCOL,
    STATE_RECORD,
    Offer,
    check_offer,
    unpack_offer,
)

__all__ = ["STATE_KEY_FILE", "SealaggMod", "make_sealagg_mod", "sealagg_mod"]

#: The sealing key's path under the Flower home directory.
STATE_KEY_FILE = Path("sealagg") / "state.key"

_KEY_LOCK = threading.Lock()
_KEYS: dict[Path, bytes] = {}


def state_key() -> bytes:
    """This machine's sealing key, made on first use (atomically: written to a private
    temporary file, then linked into place, so concurrent ClientApps agree on one key)."""
    path = get_flwr_home() / STATE_KEY_FILE
    with _KEY_LOCK:
        if path in _KEYS:
            return _KEYS[path]
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(new_state_key())
                    f.flush()
                    os.fsync(f.fileno())
                with contextlib.suppress(FileExistsError):  # another ClientApp won the race
                    os.link(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        key = path.read_bytes()
        if len(key) != STATE_KEY_BYTES:
            raise OutOfPhaseError(f"sealagg: {path} is not a {STATE_KEY_BYTES}-byte key")
        _KEYS[path] = key
        return key


class _Store:
    """The node's sealed round state in ``Context.state`` (bytes values, never logged)."""

    IDENTITY, OFFER, CLIENT, LEDGER = "identity", "offer", "client", "ledger"

    def __init__(self, ctxt: Context, run_id: int, node_id: int) -> None:
        if STATE_RECORD not in ctxt.state.config_records:
            ctxt.state.config_records[STATE_RECORD] = ConfigRecord()
        self.record = ctxt.state.config_records[STATE_RECORD]
        self.key = state_key()
        self.context = f"sealagg.flower|run={run_id}|node={node_id}".encode()

    def get(self, name: str) -> bytes | None:
        value = self.record.get(name)
        return value if isinstance(value, bytes) else None

    def put(self, name: str, value: bytes) -> None:
        self.record[name] = value

    def drop_round(self) -> None:
        for name in (self.IDENTITY, self.OFFER, self.CLIENT):
            self.record.pop(name, None)

    def round_context(self, offer: bytes) -> bytes:
        return self.context + b"|offer=" + hashlib.sha256(offer).digest()

    def ledger(self) -> PortableTranscriptLedger:
        blob = self.get(self.LEDGER)
        if blob is None:
            return PortableTranscriptLedger()
        return PortableTranscriptLedger.restore(blob, key=self.key, context=self.context)

    def save_ledger(self, ledger: PortableTranscriptLedger) -> None:
        self.put(self.LEDGER, ledger.export(key=self.key, context=self.context))


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
        store = _Store(ctxt, int(ctxt.run_id), int(msg.metadata.dst_node_id))
        try:
            return _step(self.policy, store, stage, payload, msg, ctxt, call_next)
        except Exception:
            # Whatever went wrong, this round's sealed secrets are dropped from the context:
            # a client that failed never answers a later stage of the same round.
            store.drop_round()
            raise


def make_sealagg_mod(policy: FederationPolicy | None = None) -> SealaggMod:
    """A mod enforcing ``policy`` (default: :class:`FederationPolicy`'s defaults)."""
    return SealaggMod(policy)


def _step(policy, store: _Store, stage, payload, msg, ctxt, call_next) -> Message:
    if stage == STAGE_IDENTIFY:
        # A fresh identity per round: nothing links this node's rounds, and a previous
        # round's state (aborted or not) is replaced, its secrets dropped.
        store.drop_round()
        identity = IdentityKey.generate()
        store.put(store.IDENTITY, seal_identity(identity, key=store.key, context=store.context))
        return _reply(msg, STAGE_IDENTIFY, identity.verify_key_bytes)
    if stage == STAGE_OFFER:
        sealed_identity = store.get(store.IDENTITY)
        if sealed_identity is None:
            raise OutOfPhaseError(
                "sealagg: a round offer without an identified round (or a second offer)"
            )
        identity = open_identity(sealed_identity, key=store.key, context=store.context)
        store.drop_round()
        offer = unpack_offer(payload)
        check_offer(offer, policy)
        ledger = store.ledger()
        client = SecAggClient(offer.config, offer.index, identity, ledger=ledger)
        advertise = client.advertise_keys()
        store.put(store.OFFER, payload)
        store.put(
            store.CLIENT,
            client.export_state(key=store.key, context=store.round_context(payload)),
        )
        return _reply(msg, STAGE_OFFER, advertise.encode())
    offer_bytes, blob = store.get(store.OFFER), store.get(store.CLIENT)
    if stage != STAGE_PROTOCOL or offer_bytes is None or blob is None:
        raise OutOfPhaseError(
            f"sealagg: no round in progress for node {msg.metadata.dst_node_id} in its context "
            f"(stage {stage!r}): a round's messages follow identify and offer, in order"
        )
    offer = unpack_offer(offer_bytes)
    server_msg = decode(payload)
    ledger = store.ledger()
    try:
        client = SecAggClient.import_state(
            blob,
            key=store.key,
            round_id=server_msg.round_id,
            context=store.round_context(offer_bytes),
            ledger=ledger,
        )
        content = None
        if isinstance(server_msg, ShareBundle):
            content = _train_and_set_input(client, offer, msg, ctxt, call_next)
        reply = client.handle(server_msg)
    finally:
        store.save_ledger(ledger)  # a claim counts for the reveal budget even if the step failed
    if client.state == "done":
        store.drop_round()
    else:
        store.put(
            store.CLIENT,
            client.export_state(key=store.key, context=store.round_context(offer_bytes)),
        )
    return _reply(msg, STAGE_PROTOCOL, reply.encode(), content)


def _train_and_set_input(client: SecAggClient, offer: Offer, msg, ctxt, call_next) -> RecordDict:
    """Run the ClientApp's training, then hand its weighted, quantized parameters to the client.

    The weight is ``num_examples / max_weight``; above 1 the client refuses instead of
    clamping (a clamped weight would silently bias the mean).
    """
    out = call_next(msg, ctxt)
    if out.has_error():
        raise SecAggError(f"the ClientApp failed to train: {out.error.reason}")
    content = out.content
    fitres = compat.recorddict_to_fitres(content, keep_input=True)
    weight = fitres.num_examples / offer.max_weight
    if not 0 < weight <= 1:
        raise RoundParametersRefusedError(
            f"num_examples={fitres.num_examples} is outside (0, max_weight="
            f"{offer.max_weight}]: raise max_weight on the server"
        )
    arrays = parameters_to_ndarrays(fitres.parameters)
    vector = (
        np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
        if arrays
        else np.zeros(0)
    )
    expected = offer.config.vector_length - 1
    if vector.shape[0] != expected:
        raise RoundParametersRefusedError(
            f"the trained model has {vector.shape[0]} values, the round expects {expected}"
        )
    client.set_input(encode_update(vector, weight, offer.spec))
    for record in content.array_records.values():
        record.clear()
    return content


sealagg_mod = make_sealagg_mod()
