"""The ServerApp side: :class:`SealaggWorkflow`, in place of Flower's ``SecAggPlusWorkflow``.

``DefaultWorkflow(fit_workflow=SealaggWorkflow(...))``: per round, the strategy samples clients
and builds their fit instructions (``configure_fit``) as usual; the workflow then runs
sealagg's server protocol (:class:`sealagg.crypto.SecAggServer`) over Flower's grid, one
``send_and_receive`` per stage with a finite deadline, and hands the unmasked weighted mean to
the strategy's ``aggregate_fit`` exactly as Flower's SecAgg+ workflow does (every surviving
result carries the same aggregate, so FedAvg, FedAdam, ... work unchanged).

Stages: identify (fresh per-round identities) → offer (the round's config; each client checks
it against its own policy and advertises keys) → sealagg's phases (coin reveal on sparse
graphs, key shares, masked input, where the clients train, consistency signatures, unmasking).
A client that errs or misses a deadline is a dropout; sealagg recovers it when the threshold
and quorum allow and otherwise aborts the round: the model stays as it was, the reason is
logged and recorded in :attr:`SealaggWorkflow.rounds`, and the next round starts afresh.

Who is who: a client's round index comes from the node id the grid reports as the sender,
never from a message's content; identities are fresh per round and learnt in the identify
stage, as in Flower's own SecAgg+ (there is no PKI in a Flower app: a server that forges
clients is outside this model, as it is in Flower's; the appliance's signed client kits close
that gap).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, cast

import flwr.compat.common.recorddict_compat as compat
import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp.grid import Grid

from sealagg.crypto import RoundConfig, SecAggServer, decode, decode_sum, encoded_length
from sealagg.crypto.errors import SecAggError
from sealagg.crypto.messages import ROUND_ID_BYTES, ShareBundle
from sealagg.flower.knobs import DEFAULT_TIMEOUT, MODULUS, KnobRefusedError, SealaggKnobs
from sealagg.flower.records import (
    PAYLOAD,
    RECORD,
    STAGE,
    STAGE_IDENTIFY,
    STAGE_OFFER,
    STAGE_PROTOCOL,
    Offer,
    pack_offer,
)

__all__ = ["RoundRecord", "SealaggWorkflow"]

log = logging.getLogger("sealagg.flower")

#: An Ed25519 verify key (what the identify stage returns).
VERIFY_KEY_BYTES = 32


@dataclasses.dataclass
class RoundRecord:
    """What happened in one round (no secrets, no individual values)."""

    server_round: int
    sampled: int
    completed: bool = False
    reason: str = ""
    degree: int = 0
    threshold: int = 0
    minimum_survivors: int = 0
    survivors: int = 0
    dropped: list[int] = dataclasses.field(default_factory=list)
    error_bound: float = 0.0
    seconds: float = 0.0  # the round's wall time on the server clock (training included)


class SealaggWorkflow:
    """Secure aggregation of the fit results with sealagg's protocol, over Flower's grid.

    Takes Flower's ``SecAggPlusWorkflow`` knobs by the same names (see
    :mod:`sealagg.flower.knobs` for how each maps and what is refused); ``num_shares`` and
    ``reconstruction_threshold`` may be left out, and sealagg's parameter finder picks them
    for ``dropout_rate``. Static refusals raise :class:`KnobRefusedError` here; those that
    depend on the number of sampled clients abort the round with the reason.
    """

    def __init__(
        self,
        num_shares: int | float | None = None,
        reconstruction_threshold: int | float | None = None,
        *,
        max_weight: float = 1000.0,
        clipping_range: float = 8.0,
        quantization_range: int = 1 << 22,
        modulus_range: int = MODULUS,
        timeout: float | None = DEFAULT_TIMEOUT,
        dropout_rate: float = 0.1,
        corrupt_fraction: float = 0.0,
        **policy: Any,
    ) -> None:
        from sealagg.crypto.policy import FederationPolicy

        self.knobs = SealaggKnobs(
            num_shares=num_shares,
            reconstruction_threshold=reconstruction_threshold,
            max_weight=max_weight,
            clipping_range=clipping_range,
            quantization_range=quantization_range,
            modulus_range=modulus_range,
            timeout=timeout,
            dropout_rate=dropout_rate,
            corrupt_fraction=corrupt_fraction,
            policy=FederationPolicy(**policy),
        )
        self.rounds: list[RoundRecord] = []

    def __call__(self, grid: Grid, context: Context) -> None:
        if not isinstance(context, LegacyContext):
            raise TypeError(f"expected a LegacyContext, got {type(context).__name__}")
        cfg = context.state.config_records[MAIN_CONFIGS_RECORD]
        server_round = cast(int, cfg[WorkflowKey.CURRENT_ROUND])
        started = time.perf_counter()
        round_ = _Round(self, grid, context, server_round)
        try:
            round_.run()
        finally:
            round_.record.seconds = time.perf_counter() - started


class _Round:
    def __init__(
        self, owner: SealaggWorkflow, grid: Grid, context: LegacyContext, server_round: int
    ) -> None:
        self.owner, self.grid, self.context, self.server_round = owner, grid, context, server_round
        self.timeout = owner.knobs.timeout
        self.record = RoundRecord(server_round=server_round, sampled=0)
        owner.rounds.append(self.record)

    def abort(self, reason: str) -> None:
        self.record.reason = reason
        log.warning("sealagg round %s aborted: %s", self.server_round, reason)

    def send(self, payloads: dict[int, tuple[str, bytes, RecordDict | None]]) -> dict[int, Any]:
        """One stage: a message per node, replies by the sender's node id (errors dropped)."""
        messages = []
        for node_id, (stage, payload, base) in payloads.items():
            content = base if base is not None else RecordDict()
            content.config_records[RECORD] = ConfigRecord({STAGE: stage, PAYLOAD: payload})
            messages.append(
                Message(
                    content=content,
                    dst_node_id=node_id,
                    message_type=MessageType.TRAIN,
                    group_id=str(self.server_round),
                )
            )
        replies = {}
        for reply in self.grid.send_and_receive(messages, timeout=self.timeout):
            src = reply.metadata.src_node_id
            if reply.has_error() or src not in payloads:
                continue
            record = reply.content.config_records.get(RECORD)
            payload = record.get(PAYLOAD) if record is not None else None
            if isinstance(payload, bytes):
                replies[src] = (payload, reply)
        return replies

    def run(self) -> None:
        context = self.context
        parameters = compat.arrayrecord_to_parameters(
            context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True
        )
        shapes = [(a.shape, a.dtype) for a in parameters_to_ndarrays(parameters)]
        dimension = sum(int(np.prod(s)) for s, _ in shapes)
        proxy_fitins = context.strategy.configure_fit(
            self.server_round, parameters, context.client_manager
        )
        if not proxy_fitins:
            return self.abort("configure_fit sampled no clients")
        fitins = {p.node_id: compat.fitins_to_recorddict(f, True) for p, f in proxy_fitins}
        proxies = {p.node_id: p for p, _ in proxy_fitins}
        self.record.sampled = len(fitins)

        # Identify: fresh identities; the round is built on the nodes that answered.
        replies = self.send({nid: (STAGE_IDENTIFY, b"", None) for nid in fitins})
        keys = [payload for payload, _ in replies.values()]
        # A malformed or repeated verify key leaves the round now (SecAggClient would refuse
        # it later anyway); a repeated key is dropped for every node that sent it.
        nodes = sorted(
            nid
            for nid, (payload, _) in replies.items()
            if len(payload) == VERIFY_KEY_BYTES and keys.count(payload) == 1
        )
        index = {nid: i for i, nid in enumerate(nodes, start=1)}
        node_of = {i: nid for nid, i in index.items()}
        try:
            plan = self.owner.knobs.plan(len(nodes))
        except KnobRefusedError as error:
            return self.abort(str(error))
        self.record.degree, self.record.threshold = plan.degree, plan.threshold
        self.record.minimum_survivors = plan.minimum_survivors
        config = RoundConfig(
            round_id=os.urandom(ROUND_ID_BYTES),
            identities={index[nid]: replies[nid][0] for nid in nodes},
            degree=plan.degree,
            threshold=plan.threshold,
            vector_length=encoded_length(dimension),
            minimum_survivors=plan.minimum_survivors,
        )
        server = SecAggServer(config)
        stage: dict[int, tuple[str, bytes, RecordDict | None]] = {}
        for nid in nodes:
            offer = Offer(config, index[nid], plan.spec, plan.max_weight)
            stage[nid] = (STAGE_OFFER, pack_offer(offer), None)
        fit_replies: dict[int, Message] = {}
        try:
            while True:
                for nid, (payload, reply) in self.send(stage).items():
                    try:
                        msg = decode(payload)
                        server.receive(index[nid], msg)
                    except SecAggError as error:  # a bad message is that client's dropout
                        log.warning("sealagg: node %s's reply refused: %s", nid, error)
                        continue
                    if stage[nid][2] is not None:  # the stage that carried the fit instructions
                        fit_replies[nid] = reply
                if server.phase is None:
                    break
                outgoing = server.close_phase()
                if server.phase is None:  # the unmasking closed: the result is in
                    break
                stage = {}
                for u, msg in outgoing.items():
                    nid = node_of[u]
                    base = fitins[nid] if isinstance(msg, ShareBundle) else None
                    stage[nid] = (STAGE_PROTOCOL, msg.encode(), base)
        except SecAggError as error:
            return self.abort(f"{type(error).__name__}: {error}")
        result = server.result
        mean, _total_weight = decode_sum(result.total, plan.spec)
        arrays, offset = [], 0
        for shape, dtype in shapes:
            size = int(np.prod(shape))
            arrays.append(mean[offset : offset + size].reshape(shape).astype(dtype))
            offset += size
        survivors = {node_of[u] for u in result.survivors}
        self.record.completed = True
        self.record.survivors = len(survivors)
        self.record.dropped = sorted(set(fitins) - survivors)
        self.record.error_bound = plan.spec.error_bound(len(survivors))
        aggregate = ndarrays_to_parameters(arrays)
        results = []
        for nid in sorted(survivors):
            fitres = compat.recorddict_to_fitres(fit_replies[nid].content, keep_input=False)
            fitres.parameters = aggregate
            results.append((proxies[nid], fitres))
        failures = [Exception(f"node {nid} dropped") for nid in self.record.dropped]
        params, metrics = context.strategy.aggregate_fit(self.server_round, results, failures)
        if params:
            context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
                params, True
            )
            context.history.add_metrics_distributed_fit(
                server_round=self.server_round, metrics=metrics
            )
        return None
