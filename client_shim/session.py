"""Take part in rounds with a numpy update: the torch-free core of the client shim.

For each round the appliance opens with this client: download the global
model, let the caller compute its update (a delta against the global weights,
flattened in the model's layout) and weight, then either send it in plaintext
(plaintext mode only) or run the secure-aggregation protocol so that only a
masked vector leaves the client. Nothing unprotected is sent in a masked mode.

With a kit that pins the federation authority, the client first asks the appliance for the
newest signed roster (``GetRoster``) and verifies it against the pinned key; every round's
roster is then checked against it and against the durable record of the newest version this
client ever accepted (``<kit>.roster``: an older roster is a rollback). A round the client
refuses (roster, policy, parameters, transcript, attestation) is reported to the appliance
(``ReportRefusal``: a code and the refusal's message, never a key or an update byte), which
audits it and goes on without this client.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import grpc
import numpy as np
from safetensors.numpy import load as load_safetensors

from sealagg.appliance.kit import ClientKit
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire.modelcodec import Layout
from sealagg.attest import AttestationError
from sealagg.client_shim import ckks, roster_record
from sealagg.client_shim.attestation import AttestationGuard, require_attestation
from sealagg.client_shim.connection import Connection, Payload
from sealagg.client_shim.errors import (
    ROUND_LOST,
    ApplianceUnavailableError,
    HyperparametersError,
    ModelMismatchError,
    PrivacyRefusedError,
    RoundRefusedError,
    RunEnded,
)
from sealagg.client_shim.evaluation import answer_federated_evaluation
from sealagg.client_shim.grouping import check_grouping
from sealagg.client_shim.presence import PresenceKeeper
from sealagg.client_shim.privacy import check_round_privacy, round_privacy
from sealagg.client_shim.transcript_ledger import ledger_beside
from sealagg.client_shim.vendor import Evaluator, answer_evaluation
from sealagg.crypto import (
    IdentityKey,
    Message,
    QuantizationSpec,
    RoundConfig,
    SecAggClient,
    decode,
    encode_update,
    encoded_length,
)
from sealagg.crypto.buffer_context import BufferContext
from sealagg.crypto.config import check_round_parameters
from sealagg.crypto.encoding import warm_up
from sealagg.crypto.errors import InfeasibleParametersError, RosterSignatureError, SecAggError
from sealagg.crypto.policy import FederationPolicy, check_round_against_policy
from sealagg.crypto.refusal import MAX_DETAIL_CHARS, RefusalCode, code_for
from sealagg.crypto.roster import Roster, RosterVerifier, members_from_roster
from sealagg.crypto.staleness import StalenessPolicy

_log = logging.getLogger("sealagg.client")

#: What the client reports as a refusal of the round (and then re-raises): every check it
#: makes of the appliance's word. Anything else (a broken update, a lost connection) is not.
#: A model that does not match the round's is refused (and reported) too: the appliance then
#: goes on without this client at once instead of waiting out the phase deadline.
REFUSALS = (
    SecAggError,
    RoundRefusedError,
    PrivacyRefusedError,
    AttestationError,
    ModelMismatchError,
)
#: Modes where only a masked vector leaves the client (an async update is registered first).
MASKED_MODES = ("secagg", "secagg+")
#: The upload kind registering a ready update in a masked asynchronous run (no payload); the
#: appliance's name for it is appliance/async_runs.py's REGISTRATION_KIND (the wire contract).
REGISTRATION_KIND = "async_registration"
#: The largest hyperparameters document a client parses (the appliance's word; bounded).
MAX_HYPERPARAMETERS_CHARS = 64 * 1024

#: (round start, global tensors) -> (flat float32 update, weight in (0, 1], metadata)
ComputeUpdate = Callable[
    [pb.RoundStart, Mapping[str, np.ndarray]], tuple[np.ndarray, float, Mapping[str, object]]
]


#: Asynchronous runs: the appliance's refusals of one update (stale, a spent or unknown lease,
#: a second update into one buffer, an unknown base version). The client goes on with a new
#: lease; anything else (a malformed update, a refusal of the client itself) is raised.
ASYNC_REFUSED = frozenset(
    {
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.NOT_FOUND,
    }
)


@dataclasses.dataclass(frozen=True)
class RoundReport:
    """How a round ended for this client. In an asynchronous run (issue 21) a "round" is one
    lease: ``outcome`` is "accepted" (the update joined buffer ``buffer_number`` with weight
    ``staleness_weight``, ``staleness`` versions behind) or "refused" (``reason`` says why:
    e.g. too stale), and ``model_version`` is 0 (nothing was published by this call)."""

    round_number: int
    outcome: str
    reason: str
    model_version: int
    bytes_sent: int
    staleness: int | None = None
    staleness_weight: float | None = None
    buffer_number: int = 0


class Participant:
    """Runs this client's side of each round over a :class:`Connection`."""

    def __init__(
        self,
        connection: Connection,
        *,
        poll_seconds: float = 5.0,
        evaluate: Evaluator | None = None,
        attestation: AttestationGuard | None = None,
        presence: bool = True,
    ) -> None:
        """``presence``: hold the appliance's Presence stream open (client_shim/presence.py),
        so a vanished client costs the others no deadline; False: poll only."""
        self.connection = connection
        # A kit that carries an attestation policy is enforced by default (PolicyError if broken).
        self.attestation = attestation or AttestationGuard.from_kit(connection)
        self.evaluate = evaluate  # the vendor gate's party: candidate tensors -> holdout metrics
        self.identity = IdentityKey.from_seed(connection.kit.identity_seed)
        self.ledger = ledger_beside(connection.kit)  # durable: no round transcript twice
        self.roster = roster_verifier(connection.kit)  # None: a development kit, no authority
        self.poll_seconds = poll_seconds
        self._roster_synced = False  # the newest roster is fetched once, at the first round
        self.policy: FederationPolicy | None = None  # the one governing the current round
        self._models: dict[int, dict[str, np.ndarray]] = {}
        self._next_start: pb.RoundStart | None = None
        self._next_task: pb.Task | None = None  # handed over with an upload's acknowledgement
        #: The run this client follows: the run of the last round it was offered ("" before
        #: any); its RunEnd ends :meth:`wait_for_round` with :class:`RunEnded`.
        self.run_id = ""
        self._run_end: RunEnded | None = None  # seen while following a round; raised next
        # The kernels load now, before this client can be counted ready, not inside its first
        # round (crypto/encoding.py warm_up; about 0.5 ms once a process has them).
        _log.debug("%s: secure-aggregation kernels ready in %.2f s", connection.kit.name, warm_up())
        #: The live stream telling the appliance this process is here (None: disabled).
        self.presence: PresenceKeeper | None = connection.start_presence() if presence else None
        #: The round a refusal is reported for: the lease's, or its masked buffer's round.
        self._refusing = b""

    def global_model(self, version: int = 0) -> tuple[int, dict[str, np.ndarray]]:
        if version and version in self._models:
            return version, self._models[version]
        got, data = self.connection.download_model(version)
        tensors = load_safetensors(data)
        self._models = {got: tensors}  # keep only the latest
        return got, tensors

    def sync_roster(self) -> Roster | None:
        """Learn the newest roster the appliance holds (``GetRoster``) and verify it against
        the kit's pinned authority and this client's record; None for a development kit.

        Raises (and reports) :class:`RosterSignatureError` when the appliance holds no roster
        the pinned authority signed, :class:`RosterRollbackError` when it offers an older one
        than this client accepted: such an appliance gets no round from this client.
        """
        if self.roster is None or self._roster_synced:
            return None
        try:
            data = self.connection.get_roster(self.roster.version)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            _log.warning("the appliance cannot serve its roster; each round's is checked")
            self._roster_synced = True
            return None
        try:
            if not data:
                raise RosterSignatureError(
                    "the appliance serves no roster signed by the federation authority pinned "
                    "in this kit; nothing was sent"
                )
            roster = self.roster.accept(data)
        except REFUSALS as error:
            self.report_refusal(b"", error)
            raise
        self._roster_synced = True
        return roster

    def report_refusal(self, round_id: bytes, error: BaseException) -> None:
        """Tell the appliance this client refused the round (its code and message only), so
        it is audited and the round goes on without us. Best effort: a failure is logged."""
        if self.presence is not None and self.presence.round_id == bytes(round_id):
            self._declare(b"")  # a refused round is left: never taken back into it
        code = refusal_code(error)
        detail = str(error)[:MAX_DETAIL_CHARS]
        _log.warning("refused round %s: %s (%s)", bytes(round_id).hex()[:16], detail, code.value)
        try:
            self.connection.report_refusal(bytes(round_id), code.value, detail)
        except grpc.RpcError as failure:
            _log.warning("could not report the refusal: %s", failure.code().name)

    def wait_for_round(self, max_polls: int | None = None) -> pb.RoundStart:
        """The next round the appliance opens with this client.

        Raises :class:`RunEnded` when the appliance ends the run this client takes part in
        (a ``RunEnd`` for another run is logged and ignored), ``TimeoutError`` after
        ``max_polls`` polls without a round. Evaluation tasks are answered while waiting."""
        self._declare(b"")  # waiting for a round: no earlier round's state is kept
        self.sync_roster()
        if self._run_end is not None:
            ended, self._run_end = self._run_end, None
            raise ended
        if self._next_start is not None:
            start, self._next_start = self._next_start, None
            return self._entered(start)
        polls = 0
        while max_polls is None or polls < max_polls:
            task = self._task()
            polls += 1
            kind = task.WhichOneof("kind")
            if kind == "round_start":
                return self._entered(task.round_start)
            if kind == "run_end" and (ended := self._ours(task.run_end)) is not None:
                raise ended
            self._maybe_evaluate(task)
        raise TimeoutError("no round started")

    def _entered(self, start: pb.RoundStart) -> pb.RoundStart:
        self.run_id = start.run_id
        self._declare(start.round_id)
        return start

    def _declare(self, round_id: bytes) -> None:
        """Name the round this process holds protocol state for in its heartbeats (b"":
        none). Only a client that still holds the round's state may be taken back into it."""
        if self.presence is not None:
            self.presence.round_id = bytes(round_id)

    def _ours(self, end: pb.RunEnd) -> RunEnded | None:
        """The run end as an exception if it ends the run this client follows (the run of
        the last round it was offered, or the one set in :attr:`run_id`); else None.

        A RunEnd of a run this client never took part in is ignored: e.g. the implicit run
        (``[aggregation] rounds``) that an administrator's new run supersedes while this
        client waits for its first round must not end the client's loop."""
        if not self.run_id or end.run_id != self.run_id:
            _log.info(
                "run %s ended (%s); this client follows %s",
                end.run_id or "-",
                end.status,
                f"run {self.run_id}" if self.run_id else "no run yet",
            )
            return None
        return RunEnded(end.run_id, end.status, end.reason, int(end.model_version))

    def run_round(self, compute: ComputeUpdate, start: pb.RoundStart | None = None) -> RoundReport:
        """Take part in one round (waiting for it to open unless ``start`` is given).

        A refusal (:data:`REFUSALS`) is reported to the appliance, then raised."""
        self.sync_roster()
        start = start or self.wait_for_round()
        self._refusing = bytes(start.round_id)
        try:
            return self._take_part(compute, start)
        except REFUSALS as error:
            self.report_refusal(self._refusing, error)
            raise
        finally:  # the round ended, was refused or failed: no state of it is kept
            self._declare(b"")

    def _take_part(self, compute: ComputeUpdate, start: pb.RoundStart) -> RoundReport:
        hyperparameters_of(start)  # raises HyperparametersError: nothing is sent
        require_attestation(self.attestation, start)  # raises: nothing of ours is sent
        roster = check_members(self.roster, start)  # raises RosterError: nothing is sent
        self.policy = governing_policy(roster, self.connection.kit)  # ckks takes m from it
        masked_lease = start.asynchronous and start.mode in MASKED_MODES
        if masked_lease and start.async_buffer:
            raise RoundRefusedError(
                "a masked buffer's round arrived without this client registering for it; "
                "nothing was sent"
            )
        # A ckks lease registers too; its buffer's round is a ckks round (client_shim/ckks.py).
        ckks_lease = start.asynchronous and start.mode == "ckks" and not start.async_buffer
        if not masked_lease and not ckks_lease:  # a lease lists one client: its buffer's
            check_policy(self.policy, start)  # round is checked; nothing is sent
            check_grouping(start, self.policy, roster)  # a grouped round: before training
        _, tensors = self.global_model(start.model_version)
        if start.mode == "ckks" and not ckks_lease:  # only ciphertexts leave a data owner
            return ckks.take_part(self, start, tensors, compute)  # (a buffer's key holder too)
        layout = Layout.of(tensors)
        update, weight, metadata = compute(start, tensors)
        weight = float(weight) * (start.contribution_weight or 1.0)
        update = np.asarray(update, dtype=np.float32)
        if update.shape != (layout.dimension,):
            raise ModelMismatchError(
                f"update has shape {update.shape}, the global model (version "
                f"{start.model_version}) needs ({layout.dimension},); nothing was sent",
                [f"the flat update: {update.shape} != ({layout.dimension},)"],
            )
        if not np.isfinite(update).all():
            raise ValueError("update contains NaN or Inf; nothing was sent")
        # A masked or ckks lease carries no DP: its buffer's round does, and is checked then.
        checked = None if masked_lease or ckks_lease else self.policy
        dp = round_privacy(start, layout.dimension, checked)  # refused if too weak
        if dp is not None:
            weight = 1.0  # a DP sum has fixed sensitivity: every client counts once
            if start.mode in ("plaintext", "attested"):
                update, below = dp.protect_plain(update)
                metadata = {**metadata, "dp_below_clip": below}
        meta = json.dumps(dict(metadata))
        try:
            if start.mode in ("plaintext", "attested"):  # attested: to the verified TEE only
                header = pb.UploadHeader(
                    round_id=start.round_id,
                    phase=0,
                    kind="plaintext_update",
                    weight=weight,
                    metadata_json=meta,
                )
                if start.asynchronous:  # a lease: submit now, no round to follow
                    return self._submit_async(start, header, update)
                self._upload(header, memoryview(update).cast("B"), start.submit_deadline_unix)
                return self.follow(start, update.nbytes, None)
            if masked_lease or ckks_lease:  # register; the update goes masked (encrypted)
                return self._register_async(start, layout, update, weight, meta)
            return self._secure(start, layout, update, weight, meta, roster)
        except ApplianceUnavailableError:
            raise  # gave up after max_downtime, or refused: not a lost round
        except grpc.RpcError as error:
            if error.code() not in ROUND_LOST:
                raise
            # The appliance restarted, or the round moved on without us: learn how it ended.
            _log.warning(
                "round %d: upload failed (%s); waiting for its outcome",
                start.round_number,
                error.code().name,
            )
            return self.follow(start, 0, None)

    def _submit_async(
        self, start: pb.RoundStart, header: pb.UploadHeader, update: np.ndarray
    ) -> RoundReport:
        """Submit under the lease (its id and base version); the receipt says which buffer
        took the update and with what staleness weight, a refusal why it was not taken."""
        header.base_version = start.model_version  # the lease's: the appliance checks it
        ack = self._lease_submit(start, header, memoryview(update).cast("B"))
        if isinstance(ack, RoundReport):
            return ack
        receipt = ack.receipt
        _log.info("%s", ack.detail)
        return RoundReport(
            start.round_number,
            "accepted",
            ack.detail,
            0,
            header.total_bytes,
            staleness=receipt.staleness,
            staleness_weight=receipt.staleness_weight,
            buffer_number=receipt.buffer_number,
        )

    def _lease_submit(
        self, lease: pb.RoundStart, header: pb.UploadHeader, payload: Payload
    ) -> pb.SubmitAck | RoundReport:
        """Upload under a lease: the acknowledgement, or the report of a refusal (stale, a
        spent or unknown lease, twice into one buffer: the client goes on with a new lease)
        or of a loss (it may not have landed: a new lease too)."""
        header.wait_seconds = self.poll_seconds
        try:
            ack = self.connection.submit(header, payload)
        except grpc.RpcError as error:
            if isinstance(error, ApplianceUnavailableError):
                raise
            if error.code() in ROUND_LOST - ASYNC_REFUSED:  # may not have landed: a new lease
                return RoundReport(lease.round_number, "lost", error.code().name, 0, 0)
            if error.code() not in ASYNC_REFUSED:
                raise
            _log.warning("update on version %d refused: %s", lease.model_version, error.details())
            return RoundReport(lease.round_number, "refused", error.details() or "", 0, 0)
        if ack.HasField("next"):
            self._next_task = ack.next
        return ack

    def _register_async(
        self, lease: pb.RoundStart, layout: Layout, update: np.ndarray, weight: float, meta: str
    ) -> RoundReport:
        """Masked asynchronous run: tell the appliance the update on the lease's version is
        ready (no update byte), wait for the round of the buffer it joined, check that round
        (roster, policy, parameters, and the base version it lists for us: the lease's) and
        take part with ``w * s(tau)``, ``tau`` from the round's transcript."""
        header = pb.UploadHeader(
            round_id=lease.round_id,
            phase=0,
            kind=REGISTRATION_KIND,
            base_version=lease.model_version,
        )
        ack = self._lease_submit(lease, header, b"")
        if isinstance(ack, RoundReport):
            return ack
        receipt = ack.receipt
        _log.info("%s", ack.detail)
        waited = self._await_buffer_round(lease, bytes(receipt.buffer_round_id))
        if isinstance(waited, RoundReport):
            return dataclasses.replace(waited, buffer_number=receipt.buffer_number)
        start = waited
        self._refusing = bytes(start.round_id)  # a refusal now names the buffer's round
        self._declare(start.round_id)
        roster = check_members(self.roster, start)  # raises RosterError: nothing is sent
        self.policy = governing_policy(roster, self.connection.kit)
        check_policy(self.policy, start)
        if start.mode != lease.mode or not start.async_buffer:
            raise RoundRefusedError(
                f"the buffer's round is not a {lease.mode} buffer round; nothing was sent"
            )
        if start.mode == "ckks":  # encrypted, signed with the buffer's context
            report = ckks.take_part_in_buffer(
                self, start, layout, update, weight, meta, trained_on=lease.model_version
            )
            context = ckks.buffer_context(start)
        else:
            report = self._secure(
                start, layout, update, weight, meta, roster, trained_on=lease.model_version
            )
            context = buffer_context_from(start)
        me = start.client_index
        return dataclasses.replace(
            report,
            staleness=context.staleness_of(me),
            staleness_weight=context.weight_of(me),
            buffer_number=receipt.buffer_number,
        )

    def _await_buffer_round(
        self, lease: pb.RoundStart, round_id: bytes
    ) -> pb.RoundStart | RoundReport:
        """The RoundStart of the buffer's round, or a report of how the wait ended (the
        buffer was aborted before its round, this client left out as too stale, the run)."""
        while True:
            task = self._task()
            kind = task.WhichOneof("kind")
            if kind == "round_start" and bytes(task.round_start.round_id) == round_id:
                return task.round_start
            if kind == "round_start":  # not ours: e.g. a lease after an appliance restart
                self._next_start = task.round_start
                return RoundReport(lease.round_number, "aborted", "buffer superseded", 0, 0)
            if kind == "round_end" and bytes(task.round_end.round_id) == round_id:
                return _report(lease, task.round_end, 0)
            if kind == "run_end" and (ended := self._ours(task.run_end)) is not None:
                self._run_end = ended
                reason = f"run {ended.run_id} {ended.status}: {ended.reason}"
                return RoundReport(lease.round_number, "aborted", reason, 0, 0)
            self._maybe_evaluate(task)

    def _secure(
        self,
        start: pb.RoundStart,
        layout: Layout,
        update: np.ndarray,
        weight: float,
        meta: str,
        roster: Roster | None,
        *,
        trained_on: int | None = None,
    ) -> RoundReport:
        # The transcript covers the version of the roster this client verified: clients shown
        # different rosters sign different transcripts and refuse each other's signatures.
        # An asynchronous buffer's round (``trained_on``: our lease's version) also covers
        # every member's base version; we refuse one listing another version for us.
        # A grouped round (client_shim/grouping.py): the split is checked, and the protocol
        # runs under the group's own round id (its transcript's); None: an ordinary round.
        group_round_id = check_grouping(start, self.policy, roster)
        config = round_config_from(
            start,
            roster_version=roster.version if roster else 0,
            buffer=buffer_context_from(start) if trained_on is not None else None,
            round_id=group_round_id,
        )
        dp = round_privacy(start, layout.dimension, self.policy)
        expected = encoded_length(layout.dimension) if dp is None else dp.spec.vector_length
        if config.vector_length != expected:
            raise RoundRefusedError("the round's vector length does not match the model")
        spec = QuantizationSpec(clip=start.clip, max_clients=start.max_clients)
        client = SecAggClient(
            config, start.client_index, self.identity, ledger=self.ledger, trained_on=trained_on
        )
        scale = 1.0  # DP: s(tau) scales the clipped update, never the noise; the count is 1
        if config.buffer is not None:  # w * s(tau), tau from the transcript (crypto's rule)
            weight = config.buffer.fold_weight(start.client_index, weight)
            scale = config.buffer.weight_of(start.client_index)
        encoded = (
            encode_update(update, weight, spec) if dp is None else dp.encode(update, scale=scale)[0]
        )
        client.set_input(encoded)
        advertise = client.advertise_keys()
        sent = self._send(start, 0, advertise, meta, start.submit_deadline_unix)

        def answer(step: pb.ProtocolStep) -> int:
            reply = client.handle(decode(step.payload))
            return self._send(start, step.phase, reply, "", step.deadline_unix)

        return self.follow(start, sent, answer)

    def _send(
        self, start: pb.RoundStart, phase: int, message: Message, meta: str, deadline_unix: float
    ) -> int:
        return self._send_encoded(start, phase, message.encode_parts(), meta, deadline_unix)

    def _send_encoded(
        self, start: pb.RoundStart, phase: int, payload: Payload, meta: str, deadline_unix: float
    ) -> int:
        header = pb.UploadHeader(
            round_id=start.round_id, phase=phase, kind="protocol", metadata_json=meta
        )
        return self._upload(header, payload, deadline_unix)

    def _upload(self, header: pb.UploadHeader, payload: Payload, deadline_unix: float) -> int:
        """Upload, and keep the next task if the appliance sent it with the acknowledgement."""
        header.wait_seconds = self.poll_seconds  # one call per phase instead of two
        ack = self.connection.submit(header, payload, deadline_unix=deadline_unix)
        if ack.HasField("next"):
            self._next_task = ack.next
        return header.total_bytes

    def _task(self) -> pb.Task:
        """The task an acknowledgement brought, else the next one from a poll."""
        task, self._next_task = self._next_task, None
        return task if task is not None else self.connection.get_task(self.poll_seconds)

    def follow(
        self,
        start: pb.RoundStart,
        sent: int,
        answer: Callable[[pb.ProtocolStep], int] | None,
    ) -> RoundReport:
        """Answer this round's protocol steps until it ends (or a newer round starts)."""
        while True:
            task = self._task()
            kind = task.WhichOneof("kind")
            if kind == "round_start":  # our round ended unseen (e.g. an appliance restart)
                self._next_start = task.round_start
                return RoundReport(start.round_number, "aborted", "round superseded", 0, sent)
            if kind == "round_end" and bytes(task.round_end.round_id) == start.round_id:
                return _report(start, task.round_end, sent)
            if kind == "step" and answer and bytes(task.step.round_id) == start.round_id:
                sent += answer(task.step)
            if kind == "run_end" and (ended := self._ours(task.run_end)) is not None:
                self._run_end = ended  # raised by the next wait_for_round
                reason = f"run {ended.run_id} {ended.status}: {ended.reason}"
                return RoundReport(start.round_number, "aborted", reason, 0, sent)
            self._maybe_evaluate(task)

    def _maybe_evaluate(self, task: pb.Task) -> None:
        """Answer an evaluation request: federated (every client, client_shim/evaluation.py)
        or the vendor gate's (its named party only, client_shim/vendor.py)."""
        if task.WhichOneof("kind") != "evaluate":
            return
        request = task.evaluate
        if self.evaluate is None:
            _log.warning(
                "asked to evaluate model version %d, but no evaluate= callback was given",
                request.model_version,
            )
            return
        if request.federated:
            answer_federated_evaluation(self.connection, request, self.evaluate)
        else:
            answer_evaluation(self.connection, request, self.evaluate)


def roster_verifier(kit: ClientKit) -> RosterVerifier | None:
    """The kit's pinned federation authority, or None for a development kit (whose appliance
    made this client's keys and could impersonate it anyway: there, its list is trusted).

    The floor (the newest version this client accepted) is kept beside the kit
    (``<kit>.roster``), so a restarted client still refuses an older roster; it starts at
    the version of the roster the authority put in the kit, so a new client does too."""
    if kit.authority_public_key is None:
        _log.warning(
            "kit %r pins no federation authority: round members are not checked against a "
            "signed roster (development kits only)",
            kit.name,
        )
        return None
    return roster_record.for_kit(kit)


def refusal_code(error: BaseException) -> RefusalCode:
    """The code reported for a refusal: the shim's own error types, then crypto's."""
    if isinstance(error, AttestationError):
        return RefusalCode.ATTESTATION
    if isinstance(error, PrivacyRefusedError):
        return RefusalCode.PRIVACY
    if isinstance(error, ModelMismatchError):  # the model's shapes do not fit the round's
        return RefusalCode.PARAMETERS
    if isinstance(error, RoundRefusedError):  # e.g. a ckks refusal wrapping a roster error
        inner = error.__cause__ or error.__context__
        return code_for(inner) if isinstance(inner, SecAggError) else RefusalCode.PARAMETERS
    return code_for(error)


def hyperparameters_of(start: pb.RoundStart) -> dict[str, object]:
    """The round's hyperparameters (the model owner's JSON object, e.g. ``{"lr": 0.05}``).

    The appliance's word, so parsed defensively: an object at the top, finite numbers only,
    bounded size and depth. Anything else raises :class:`HyperparametersError` and the round
    is refused (nothing sent) rather than trained with guessed settings. An empty field (an
    appliance without runs) is ``{}``."""
    text = start.hyperparameters_json
    if not text:
        return {}
    if len(text) > MAX_HYPERPARAMETERS_CHARS:
        raise HyperparametersError(
            f"round {start.round_number}: hyperparameters of {len(text)} characters (at most "
            f"{MAX_HYPERPARAMETERS_CHARS}); nothing was sent"
        )

    def no_constant(name: str) -> object:
        raise ValueError(f"{name} is not a finite number")

    try:
        value = json.loads(text, parse_constant=no_constant)
    except (ValueError, RecursionError) as error:
        raise HyperparametersError(
            f"round {start.round_number}: hyperparameters are not valid JSON ({error}); "
            "nothing was sent"
        ) from None
    if not isinstance(value, dict):
        raise HyperparametersError(
            f"round {start.round_number}: hyperparameters must be a JSON object, got "
            f"{type(value).__name__}; nothing was sent"
        )
    return value


def check_members(verifier: RosterVerifier | None, start: pb.RoundStart) -> Roster | None:
    """Refuse a round whose members the authority's roster does not admit (ghosts); return
    the verified roster (its signed policy: ``roster.federation_policy()``)."""
    if verifier is None:
        return None
    ckks = start.mode == "ckks" and start.HasField("ckks")  # a ckks lease names no key holder
    roster = verifier.accept(start.roster)
    members_from_roster(
        roster,
        start.participants,
        now=datetime.now(UTC),
        key_holder=start.ckks.key_holder_index if ckks else None,
        key_holder_contributes=start.ckks.key_holder_contributes if ckks else True,
    )
    return roster


def governing_policy(roster: Roster | None, kit: ClientKit) -> FederationPolicy:
    """The policy this client enforces: the authority's, signed into the roster, when it has
    one (the appliance wrote the kit's ``client.toml`` and cannot be trusted to loosen it);
    else the kit's own ``[policy]`` (a development kit trusts the appliance anyway)."""
    if roster is not None and roster.policy:
        return roster.federation_policy()
    return kit.policy


def check_policy(policy: FederationPolicy, start: pb.RoundStart) -> None:
    """Refuse a round whose mode, n, k, t, quorum or DP break the kit's federation policy."""
    try:  # the one crypto function the appliance's config check also runs
        check_round_against_policy(
            policy,
            start.mode,
            len(start.participants),
            start.degree or None,
            start.threshold,
            start.minimum_survivors,
        )
    except InfeasibleParametersError as error:
        raise RoundRefusedError(str(error)) from None
    check_round_privacy(policy, start)  # the signed DP floor, before training: nothing sent


def buffer_context_from(start: pb.RoundStart) -> BufferContext:
    """A masked buffer round's staleness context as the appliance states it (parent, every
    member's base version, the staleness function); refused if malformed or past the run's
    maximum staleness. The transcript binds it, so every member checks the same one."""
    p = start.async_params
    try:
        policy = StalenessPolicy(
            kind=p.staleness, max_staleness=p.max_staleness, a=p.a, alpha=p.alpha, b=p.b
        )
        return BufferContext(
            int(start.model_version),
            {int(m.index): int(m.base_version) for m in start.participants},
            policy,
        )
    except ValueError as error:  # a stale member raises BaseVersionRefusedError (reported)
        raise RoundRefusedError(f"the buffer's staleness parameters: {error}") from None


def round_config_from(
    start: pb.RoundStart,
    *,
    minimum_survivors_floor: int = 3,
    roster_version: int = 0,
    buffer: BufferContext | None = None,
    round_id: bytes | None = None,
) -> RoundConfig:
    """Rebuild the round's public config and refuse parameters that would not protect us.

    ``roster_version`` is the version of the roster this client verified (0: none, a
    development kit); it enters the transcript hash, never the appliance's word. ``buffer``:
    an asynchronous buffer's context (:func:`buffer_context_from`), in the transcript too.
    ``round_id``: the transcript's round id when it is not ``start.round_id`` (a grouped
    round's group, :func:`~sealagg.client_shim.grouping.check_grouping`)."""
    identities = {p.index: bytes(p.identity_key) for p in start.participants}
    try:  # the rule lives in crypto, shared with the appliance's own check
        check_round_parameters(
            participants=len(identities),
            threshold=start.threshold,
            minimum_survivors=start.minimum_survivors,
            minimum_survivors_floor=minimum_survivors_floor,
        )
    except InfeasibleParametersError as error:
        raise RoundRefusedError(str(error)) from None
    return RoundConfig.create(  # the graph is drawn later, from the round transcript
        round_id=bytes(start.round_id) if round_id is None else round_id,
        identities=identities,
        degree=start.degree or None,
        threshold=start.threshold,
        vector_length=start.vector_length,
        minimum_survivors=start.minimum_survivors,
        roster_version=roster_version,
        buffer=buffer,
    )


def _report(start: pb.RoundStart, end: pb.RoundEnd, sent: int) -> RoundReport:
    outcome = pb.RoundEnd.Outcome.Name(end.outcome).lower()
    return RoundReport(start.round_number, outcome, end.reason, end.model_version, sent)
