"""Round scheduling: who is ready, opening rounds, phase deadlines, publishing models.

Runs on the service's asyncio loop. Clients long-poll :meth:`Orchestrator.poll`
for their next task and upload with :meth:`Orchestrator.submit`; the client's
name always comes from its verified certificate (the caller passes it in).
A phase closes when every expected client answered or its deadline passed;
clients that missed it are dropped for that round, and a round that falls
below its minimum is aborted with every client told. CPU-heavy steps (unmasking)
run in a worker thread so polls keep being served.

With a pinned federation authority, only clients its installed roster admits are chosen
for rounds (:mod:`appliance.roster_gate`; the others are audited as ``client_not_on_roster``
and their uploads refused), every masked round's transcript names the roster's version, and
the roster's signed policy (``c``, ``m``) is the one the round's parameters must meet, since
it is the one every client enforces. A client that refuses a round reports it
(:meth:`Orchestrator.report_refusal`): audited as ``round_refused_by_client``, and the round
goes on without it.

Runs (:mod:`appliance.runs`, :mod:`appliance.run_store`): rounds open only for the running
run, carry its id, its 1-based round index, its budget and its hyperparameters, and count
against its budget in the transaction that opens them. A paused run opens no round (the round
in flight finishes); a finished (budget spent) or stopped run sends every client
``Task(run_end=RunEnd(...))``, also clients that poll later. A federation where no
administrator ever created a run gets an implicit run from ``[aggregation] rounds`` at each
start when none is live (audited ``run_created`` by ``config``), so it behaves as before:
the appliance stops once that budget is spent.

While a candidate of the running run waits for human approval, no further round of that run
opens: its siblings would train from the same parent and waste every client's compute on
candidates that the decision may make obsolete (and approving one would silently discard the
others). Clients idle until an administrator decides.

Asynchronous runs (issue 21, :mod:`appliance.async_runs`): while one runs, no round opens;
the :class:`~appliance.async_runs.AsyncScheduler` leases the current version to polling
clients, buffers their staleness-weighted updates and publishes each full buffer through the
same publish path as a round (:meth:`Orchestrator._publish`). In masked modes a full buffer
is one secure-aggregation round over its registered members
(:meth:`Orchestrator.run_buffer_round`: the same build, drive, dropout recovery, deadlines,
presence and publish path as a synchronous round, with the buffer's base versions in the
transcript), while the next buffer fills.

Readiness expires: a client counts as ready while it polls, or when its last poll ended idle
within ``ready_window``; a client whose last poll handed it a task is busy with it (or gone)
until it polls again. After each round the loop waits briefly for its members to poll again,
so a client that left after its last round is not put into the next one. When a round ends,
its queued RoundStart and protocol steps are removed from every queue: a client that comes
back later never trains for a dead round (its RoundEnd stays).

Rounds do not wait for the dead (issue 25). Each new client holds a Presence stream
(:mod:`appliance.presence`); when a member's stream closes or falls silent, it is *absent* from
the round at once: no phase waits for it any more, so a phase closes as soon as every live
member answered. A member whose stream reopens with a heartbeat naming this round (a network
blip, same process, protocol state intact) is taken back while its phase is open; a restarted
process (no state) is not. Absence never makes anyone a survivor: a member that did not
answer a phase when it closes is dropped from it exactly as at a deadline, and the audit log
says why (``clients_dropped``: ``connection_closed`` / ``silent`` / ``deadline``; refusals are
audited as ``round_refused_by_client``). The remaining deadline is only for members that are
connected but slow (and older clients without presence); it adapts to what this federation's
clients actually take (:mod:`appliance.phase_timing`), never above the configured one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence, Sized
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sealagg.appliance.approvals import record_decision
from sealagg.appliance.async_buffer import BufferPlan, BufferRound
from sealagg.appliance.async_privacy import AsyncPrivacyError
from sealagg.appliance.async_runs import AsyncScheduler
from sealagg.appliance.async_schedule import check_schedule
from sealagg.appliance.ckks_buffer import buffer_round_names, build_ckks_buffer_round
from sealagg.appliance.ckks_round import build_ckks_round
from sealagg.appliance.config import ApplianceConfig
from sealagg.appliance.errors import StoreError
from sealagg.appliance.evaluation import (
    MAX_DEADLINE_SECONDS,
    EvaluationError,
    FederatedEvaluations,
    check_allowed,
)
from sealagg.appliance.grouped_round import (
    build_grouped_round,
    needs_groups,
    one_process_group,
    striped_groups,
)
from sealagg.appliance.metrics import Metrics
from sealagg.appliance.models import ModelVersion
from sealagg.appliance.optimizer_state import discard_state, restore_state, save_state
from sealagg.appliance.optimizers import ServerOptimizer, make_optimizer
from sealagg.appliance.phase_timing import PhaseTimings
from sealagg.appliance.presence import PresenceBoard
from sealagg.appliance.privacy import PrivacyBudgetExhaustedError, PrivacyController, RoundPlan
from sealagg.appliance.robust import build_robust_round
from sealagg.appliance.roster_gate import RosterGate
from sealagg.appliance.rounds import (
    ActiveRound,
    Aggregate,
    MaskedRound,
    Member,
    PlainRound,
    UploadRefusedError,
    UploadSink,
)
from sealagg.appliance.run_store import RunStore
from sealagg.appliance.runs import (
    IMPLICIT_CREATOR,
    Run,
    RunError,
    check_hyperparameters,
    check_name,
    next_status,
)
from sealagg.appliance.store import Store
from sealagg.appliance.vendor_gate import EVALUATION_KIND, VendorGate
from sealagg.appliance.versions import superseded_during_round
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire.modelcodec import Layout, flatten, unflatten
from sealagg.crypto import QuantizationSpec, RoundConfig, encoded_length
from sealagg.crypto.buffer_context import BufferContext
from sealagg.crypto.config import check_round_parameters, default_minimum_survivors
from sealagg.crypto.errors import CoinRevealError, InfeasibleParametersError, SecAggError
from sealagg.crypto.params import choose_graph
from sealagg.crypto.policy import FederationPolicy, check_round_against_policy
from sealagg.crypto.refusal import MAX_DETAIL_CHARS, parse_code
from sealagg.crypto.rules import require_masking_parties

if TYPE_CHECKING:  # Ray is imported only when [scale] is configured
    from sealagg.appliance.scale.runtime import ScaleRuntime

_log = logging.getLogger("sealagg.orchestrator")

#: Why a round running when the operator stops the appliance ends (nothing is published).
STOPPING_REASON = "the appliance is stopping (operator stop); nothing is published"

#: A quality gate sees the candidate and the aggregate; it returns (accept, reason).
QualityGate = Callable[[Mapping[str, np.ndarray], Aggregate], tuple[bool, str]]
#: (number, round id, members, dimension, common RoundStart) -> the round, described in it.
RoundBuilder = Callable[[int, bytes, list[Member], int, pb.RoundStart], ActiveRound]
MAX_POLL_SECONDS = 30.0
SETUP_FAILURE = "cannot set up the round"
#: Uploads larger than this are checked and added in a worker thread (the lock keeps order).
OFF_LOOP_BYTES = 1 << 20
MAX_QUEUED_TASKS = 16
#: Rounds whose late refusals are still audited, and connect-time refusals remembered (each
#: is audited once per client and code, so a client cannot flood the audit log).
RECENT_ROUNDS = 16
MAX_REMEMBERED_REFUSALS = 4096
#: After a round, how long the loop waits for its members to poll again before it picks the
#: next round's members (a member that does not come back within it is left out).
SETTLE_SECONDS = 2.0
#: Rounds in a row the run replaces, uncounted, after members vanished before revealing their
#: graph coins (:meth:`Orchestrator._vanished_before_reveal`). Well below the clients' own
#: bound on unfinished reveals (crypto.ledger.MAX_UNFINISHED_REVEALS), so honest clients never
#: reach their pause because the appliance restarted for them.
MAX_REVEAL_RESTARTS = 2
#: When the implicit run's budget ends the appliance: how long its last round's members have
#: to poll once more and collect their RunEnd.
RUN_END_GRACE = 1.0
#: Run hyperparameter: a federated evaluation after every N-th published round of the run.
EVALUATE_EVERY = "evaluate_every"


@dataclasses.dataclass
class _Link:
    """One client as the orchestrator sees it: its queue of tasks and when it last asked."""

    name: str
    tasks: asyncio.Queue[pb.Task] = dataclasses.field(default_factory=asyncio.Queue)
    last_poll: float = 0.0
    polling: int = 0
    #: Its last poll handed it a task: busy with it (or gone) until it polls again.
    busy: bool = False
    #: The run whose RunEnd it has been handed (each client gets each RunEnd once).
    run_end_seen: str = ""


@dataclasses.dataclass(frozen=True)
class RoundOutcome:
    number: int
    outcome: str  # "published" | "pending_approval" | "rejected" | "aborted"
    reason: str = ""
    model_version: int | None = None
    contributors: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    seconds: float = 0.0
    #: Aborted only because these committed members vanished before revealing their graph
    #: coins: the run may open a fresh round at once, not counted (:data:`MAX_REVEAL_RESTARTS`).
    vanished_before_reveal: tuple[str, ...] = ()


class Orchestrator:
    """Schedules rounds for one federation; one round at a time."""

    def __init__(
        self,
        *,
        config: ApplianceConfig,
        store: Store,
        identity_keys: Callable[[], Mapping[str, bytes]],
        quality_gate: QualityGate | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self._identity_keys = identity_keys
        self._quality_gate = quality_gate
        self._clock = clock
        self.metrics = metrics or Metrics()
        self._links: dict[str, _Link] = {}
        self._round: ActiveRound | None = None
        self._phase_done = asyncio.Event()
        self._lock = asyncio.Lock()
        self._optimizer: ServerOptimizer = make_optimizer(
            config.optimizer.name, **config.optimizer_params()
        )
        self.history: list[RoundOutcome] = []
        self._restart_notices: list[pb.Task] = []
        self._recovered = False
        self._optimizer_version: int | None = None  # the model version its state belongs to
        self._load_optimizer_state()
        self.privacy = PrivacyController(config.privacy, Path(store.folder), store.audit)
        self._privacy_plan: RoundPlan | None = None
        self.phase_deadline: float | None = None
        self.vendor_gate = (  # [gates] vendor: the named party evaluates every candidate
            VendorGate(config.gates, store, self._send_to, clock) if config.gates.vendor else None
        )
        #: The authority's installed roster: who may take part (appliance/roster_gate.py).
        self.roster_gate = RosterGate(Path(store.folder))
        # The signed DP floor: refuse to start below it; every round's plan is checked too.
        self.privacy.use_policy(self.governing_policy)
        self._not_on_roster: dict[str, str] = {}  # name -> the reason last audited
        self._refused: set[str] = set()  # members that refused the current round
        self._recent_rounds: OrderedDict[bytes, int] = OrderedDict()  # round id -> number
        self._refusals_audited: set[tuple[str, bytes, str]] = set()
        self.runs = RunStore(store)
        self._round_run: Run | None = None  # the run of the round being set up or driven
        self._run_end: pb.Task | None = None  # the last ended run's notice, for late pollers
        self.evaluations = FederatedEvaluations(self._send_to, clock)
        #: Live presence streams (issue 25); the service's Presence handler feeds it.
        self.presence = PresenceBoard(
            max_streams=config.presence.max_streams,
            on_vanished=self._vanished,
            on_heartbeat=self._heartbeat,
        )
        #: Members of the current round that vanished (name -> why): not waited for.
        self._absent: dict[str, str] = {}
        self._reconnects_audited: set[tuple[str, str]] = set()  # (member, phase)
        self._refusals_listed: set[str] = set()
        self.timings = PhaseTimings(config.deadlines)
        self._timings_run = ""  # the run whose answer times ``timings`` holds
        self._phase_opened = 0.0  # clock() when the current phase opened
        #: Asynchronous runs: leases, buffers and their publication (appliance/async_runs.py).
        self.async_runs = AsyncScheduler(self)
        #: The stop event of :meth:`run`: an operator's stop (SIGTERM) aborts the running round.
        self._stopping: asyncio.Event | None = None
        #: ``[scale]``: the Ray runtime (appliance/scale/runtime.py) the appliance started;
        #: masked rounds are then summed by its stripes. None: one-process rounds.
        self.scale: ScaleRuntime | None = None

    # ------------------------------------------------------------------ client-facing

    async def poll(self, name: str, wait_seconds: float) -> pb.Task:
        """The next task for ``name``, waiting up to ``wait_seconds`` for one."""
        link = self._links.get(name)
        if link is None:
            link = self._links[name] = _Link(name)
            for notice in self._restart_notices:
                _enqueue(link, notice)
        self._hand_run_end(link)
        self.presence.polled(name)
        link.last_poll = self._clock()
        link.polling += 1
        link.busy = False
        try:  # a timer, not a task per poll (every round makes a dozen polls per client)
            async with asyncio.timeout(min(max(wait_seconds, 0.0), MAX_POLL_SECONDS)):
                task = await link.tasks.get()
                link.busy = True
                return task
        except TimeoutError:
            current = self.store.current_model()
            return pb.Task(
                idle=pb.Idle(
                    retry_after_seconds=1.0,
                    current_model_version=current.version if current else 0,
                )
            )
        finally:
            link.polling -= 1
            link.last_poll = self._clock()

    def check_upload(self, name: str, header: pb.UploadHeader) -> int:
        """Validate a header before reading data; returns the byte limit for the body."""
        if header.kind == EVALUATION_KIND:
            if self.evaluations.knows(bytes(header.round_id)):  # a federated evaluation
                return self.evaluations.check_upload(name, header)
            return self._gate_for(name).check_upload(name, header)
        reason = self._roster_refusal(name)
        if reason is not None:
            raise UploadRefusedError(
                "PERMISSION_DENIED", f"{name} may not take part in rounds: {reason}"
            )
        if self.async_runs.takes(header, round_open=self._round is not None):
            return self.async_runs.check_upload(name, header)
        if self._round is None:
            raise UploadRefusedError(
                "FAILED_PRECONDITION", "no round is open (late, or the round ended)"
            )
        if name in self._refused and bytes(header.round_id) == self._round.round_id:
            raise UploadRefusedError(
                "FAILED_PRECONDITION", f"{name} refused this round; it goes on without it"
            )
        return self._round.check_header(name, header)

    async def report_refusal(self, name: str, round_id: bytes, code: str, detail: str) -> None:
        """A client refused a round (or, with no round id, the roster it was served).

        Audited as ``round_refused_by_client`` once per client, round and code; a member of
        the running round is treated as gone for it (the phase no longer waits for it and
        its uploads are refused), so the others finish when enough remain. ``code`` is one
        of :class:`~sealagg.crypto.refusal.RefusalCode` (anything else counts as "other");
        ``detail`` is cut to printable text of bounded length.
        """
        refusal = parse_code(code).value
        text = "".join(ch if ch.isprintable() else " " for ch in detail[:MAX_DETAIL_CHARS])
        async with self._lock:
            active = self._round
            current = active is not None and round_id == active.round_id
            if current and active is not None and name in active.members:
                if name in self._refused:
                    return
                self._refused.add(name)
                active.expected.discard(name)
                self.store.audit.append(
                    "round_refused_by_client",
                    {
                        "round": active.number,
                        "client": name,
                        "code": refusal,
                        "detail": text,
                        "phase": active.phase_name,
                    },
                )
                _log.warning("round %d: %s refused it (%s)", active.number, name, refusal)
                self._check_phase_done(active)
                return
            number = self._recent_rounds.get(round_id) if round_id else None
            if round_id and number is None:
                return  # no round of ours: nothing to record
            key = (name, round_id, refusal)
            if key in self._refusals_audited:
                return
            if len(self._refusals_audited) >= MAX_REMEMBERED_REFUSALS:
                self._refusals_audited.clear()
            self._refusals_audited.add(key)
            self.store.audit.append(
                "round_refused_by_client",
                {"round": number, "client": name, "code": refusal, "detail": text, "phase": None},
            )
            what = "the roster" if number is None else f"round {number}"
            _log.warning("%s refused %s (%s)", name, what, refusal)

    def stream_sink(self, name: str, header: pb.UploadHeader) -> UploadSink | None:
        """After :meth:`check_upload`: a sink the running round offers to take this upload
        as it arrives ([scale] masked inputs, streamed to the stripes), else None (received
        whole). What the sink's ``finish`` returns goes to :meth:`submit` as the payload, so
        the bookkeeping (answered, timings, the phase's close) is the same for both."""
        if header.kind == EVALUATION_KIND or self._round is None:
            return None
        if self.async_runs.takes(header, round_open=True):
            return None
        current = self._round
        return current.stream_sink(name, header, lambda: self._check_phase_done(current))

    async def submit(
        self, name: str, header: pb.UploadHeader, payload: bytes | bytearray | Sized
    ) -> pb.AsyncReceipt | None:
        """Take one upload (or a finished stream, :meth:`stream_sink`); for an
        asynchronous run's update, the receipt saying how."""
        if header.kind == EVALUATION_KIND:  # outside the round's phases
            if self.evaluations.knows(bytes(header.round_id)):
                self.evaluations.receive(name, header)
                return None
            self._gate_for(name).receive(name, header, payload)  # the vendor gate's report
            return None
        async with self._lock:
            if self.async_runs.takes(header, round_open=self._round is not None):
                big = len(payload) > OFF_LOOP_BYTES  # keep serving polls while it is added
                return await self.async_runs.submit(name, header, payload, off_loop=big)
            current = self._round
            if current is None:
                raise UploadRefusedError(
                    "FAILED_PRECONDITION", "no round is open (late, or the round ended)"
                )
            answered = name in current.answered
            try:
                # Off the loop for a big upload, and for a round whose accept blocks on other
                # processes ([scale]: chunks go to Ray stripes): polls keep being served.
                if len(payload) > OFF_LOOP_BYTES or getattr(current, "accept_off_loop", False):
                    await asyncio.to_thread(current.accept, name, header, payload)
                else:
                    current.accept(name, header, payload)
            finally:  # a refused client may leave the phase (ckks): it can close early too
                if not answered and name in current.answered:
                    self.timings.record(
                        current.number, current.phase_name, self._clock() - self._phase_opened
                    )
                self._check_phase_done(current)
        return None

    def registered_clients(self) -> set[str]:
        return set(self._identity_keys())

    def is_registered(self, name: str) -> bool:
        """One lookup, without building the set of every client (asked on every call)."""
        return name in self._identity_keys()

    def status(self) -> dict:
        """A JSON-safe snapshot for ``sealagg status`` (counts and names, no data)."""
        current = self.store.current_model()
        active = self._round
        return {
            "mode": self.config.aggregation.mode,
            "model_version": current.version if current else None,
            "ready_clients": self.ready_clients(),
            "round": None
            if active is None
            else {
                "number": active.number,
                "phase": active.phase_name,
                "members": sorted(active.members),
                "waiting_for": sorted(active.waiting_for),
                "vanished": dict(sorted(self._absent.items())),
                "phase_deadline": self.phase_deadline,
            },
            "presence_streams": self.presence.live_count(),
            "history": [dataclasses.asdict(o) for o in self.history[-20:]],
            "bytes_in": self.metrics.total("sealagg_bytes_in_total"),
            "bytes_out": self.metrics.total("sealagg_bytes_out_total"),
            "privacy": self.privacy.status(),
            "run": self._run_status(),
            "async": self.async_runs.status(),
        }

    def _run_status(self) -> dict | None:
        """The live run (running, else the latest paused): id, name, status, budget, done."""
        run = self.runs.live()
        if run is None:
            return None
        keys = ("id", "name", "status", "rounds", "rounds_done", "mode")
        return {k: v for k, v in run.as_dict().items() if k in keys}

    def decide(self, round_number: int, approve: bool, reason: str, admin: str) -> str:
        """Approve or reject the candidate of a round waiting for a human decision; with
        ``[gates] approvals_required = 2`` two different approvers must approve before it is
        published (appliance/approvals.py)."""
        result = record_decision(
            self.store,
            round_number,
            approve,
            reason,
            admin,
            required=self.config.gates.approvals_required,
        )
        return result.detail

    # ---------------------------------------------------------------------- scheduling

    def ready_clients(self) -> list[str]:
        """Registered, unrevoked clients that are polling now, or whose last poll ended idle
        within ``ready_window`` (a client whose last poll handed it a task is busy with it or
        gone), with no task waiting for them, and that the installed roster admits (the
        others are audited once per reason)."""
        now = self._clock()
        registered = self._identity_keys()
        excluded = self.store.excluded_participants()  # proven blames, until readmitted
        window = self.config.aggregation.ready_window
        ready = sorted(
            name
            for name, link in self._links.items()
            if name in registered
            and name not in excluded
            and not self.presence.is_gone(name)  # its process died: never chosen
            and link.tasks.empty()  # news not yet collected (a poll woken, not yet returned)
            and (link.polling > 0 or (not link.busy and now - link.last_poll <= window))
        )
        return [name for name in ready if self._roster_refusal(name, audit=True) is None]

    def _roster_refusal(self, name: str, *, audit: bool = False) -> str | None:
        """Why the installed roster does not admit ``name`` now (None: it does); audited as
        ``client_not_on_roster`` when the reason is new."""
        agg = self.config.aggregation
        key_holder = self.config.ckks.key_holder if agg.mode == "ckks" else None
        moment = datetime.fromtimestamp(self._clock(), UTC)
        reason = self.roster_gate.refusal(name, now=moment, key_holder=key_holder or None)
        if reason is None:
            self._not_on_roster.pop(name, None)
        elif audit and self._not_on_roster.get(name) != reason:
            self._not_on_roster[name] = reason
            self.store.audit.append("client_not_on_roster", {"client": name, "reason": reason})
            _log.warning("%s is left out of rounds: %s", name, reason)
        return reason

    def governing_policy(self) -> FederationPolicy:
        """The policy every round must meet: the authority's, signed into the installed roster,
        when it carries one (that is what every client with a pinned authority enforces);
        else the configuration's ``[policy]`` (written into development kits)."""
        roster = self.roster_gate.view().roster
        if roster is not None and roster.policy:
            return roster.federation_policy()
        return self.config.federation_policy()

    def recover(self) -> None:
        """Abort rounds a crash interrupted; call before serving, so no client misses the news."""
        if self._recovered:
            return
        self._recovered = True
        reason = "appliance restarted during the round"
        aborted = self.store.abort_interrupted_rounds(reason)
        if aborted:
            _log.warning("aborted rounds interrupted by a restart: %s", aborted)
        # Tell every client that comes back: a client still inside one of these rounds
        # learns it ended (clients ignore notices for rounds they were not in).
        self._restart_notices = [
            pb.Task(
                round_end=pb.RoundEnd(
                    round_id=self.store.round(n).round_id,
                    outcome=pb.RoundEnd.ABORTED,
                    reason=reason,
                )
            )
            for n in aborted
        ]
        self.runs.fail_open_evaluations("the appliance restarted during the evaluation")
        ended = self.runs.latest_ended()
        if ended is not None and self.runs.live() is None:  # its clients may not have heard
            self._announce_run_end(ended)

    async def run(self, stop: asyncio.Event) -> None:
        """Open rounds for the running run while enough clients are ready, until ``stop``
        (or, for the implicit run of ``[aggregation] rounds``, until its budget is spent)."""
        self._stopping = stop  # a running round's phase wait ends on it (:meth:`_drive`)
        self.recover()
        self._ensure_implicit_run()
        setup_failures = 0
        restarts = 0  # reveal restarts in a row (:data:`MAX_REVEAL_RESTARTS`)
        while not stop.is_set():
            run = self.runs.running()
            if run is not None and run.asynchronous:  # until it pauses, stops or finishes
                await self.async_runs.drive(run, stop)
                await _sleep_or_stop(stop, 0.05)
                continue
            if run is not None and run.budget_spent:  # e.g. its last round was before a restart
                if self._finish_run(run) and run.implicit:
                    await self.deliver_pending(timeout=5.0, stop=stop)
                    return
                continue
            if run is None or self._awaiting_approval(run):
                await _sleep_or_stop(stop, 0.2)
                continue
            ready = self.ready_clients()
            if (
                len(ready) < self.config.aggregation.min_clients
                or self.store.current_model() is None
            ):
                await _sleep_or_stop(stop, 0.2)
                continue
            batch = ready[: self.config.aggregation.max_clients]
            try:  # refuse rounds once the DP budget is spent (logged and audited once)
                if self.privacy.enabled:
                    self.privacy.check_budget(len(batch))
            except PrivacyBudgetExhaustedError:
                if run.implicit and self.config.aggregation.rounds:
                    return
                await _sleep_or_stop(stop, 5.0)
                continue
            outcome = await self.run_round(batch, run=run)
            self.history.append(outcome)
            self.metrics.rounds.labels(outcome.outcome).inc()
            gone = outcome.vanished_before_reveal
            still_running = self.runs.get(run.run_id).status == "running"
            if gone and still_running and restarts < MAX_REVEAL_RESTARTS:
                restarts += 1  # members vanished before revealing their coins: go again at once
                self.runs.uncount_round(run, outcome.number, restart=restarts, gone=gone)
                await self._settle(batch, stop)
                continue
            restarts = 0
            await self._evaluate_if_due(run.run_id, outcome, batch, stop)
            run = self.runs.get(run.run_id)  # rounds counted; paused or stopped meanwhile?
            if run.status == "stopped":
                self._announce_run_end(run)
            elif run.status == "running" and run.budget_spent:
                self._finish_run(run)
                if run.implicit:  # as before runs existed: the appliance stops here
                    await self.deliver_pending(timeout=5.0, stop=stop)
                    await self._run_end_collected(batch, RUN_END_GRACE)
                    return
            if outcome.reason.startswith(SETUP_FAILURE):  # e.g. the CKKS size guard
                setup_failures += 1  # back off: the next attempt would fail the same way
                await _sleep_or_stop(stop, min(60.0, 2.0**setup_failures))
            else:
                setup_failures = 0
                await self._settle(batch, stop)

    async def _evaluate_if_due(
        self, run_id: str, outcome: RoundOutcome, batch: list[str], stop: asyncio.Event
    ) -> None:
        """The run's ``evaluate_every`` hyperparameter: after every N-th round that published
        a model, every ready client evaluates it (federated evaluation, by ``appliance``)."""
        run = self.runs.get(run_id)
        every = json.loads(run.hyperparameters).get(EVALUATE_EVERY)
        if outcome.outcome != "published" or run.status != "running" or not every:
            return
        if run.rounds_done % every:
            return
        await self._settle(batch, stop)  # the members poll again: ready to be asked
        try:
            result = await self.evaluate(
                version=0, run_id=run_id, deadline_seconds=0, by="appliance"
            )
        except (EvaluationError, RunError, StoreError) as error:
            _log.warning("run %s: no evaluation after round %d: %s", run_id, outcome.number, error)
            return
        _log.info("run %s: evaluation after round %d: %s", run_id, outcome.number, result["status"])

    async def _run_end_collected(self, names: list[str], seconds: float) -> None:
        """Wait (at most ``seconds``) until these clients were handed the RunEnd."""
        notice = self._run_end
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        while notice is not None and loop.time() < until:
            links = [self._links.get(n) for n in names if not self.presence.is_gone(n)]
            if all(
                link is not None
                and link.run_end_seen == notice.run_end.run_id
                and link.tasks.empty()
                for link in links
            ):
                return
            await asyncio.sleep(0.02)

    async def _settle(self, names: list[str], stop: asyncio.Event) -> None:
        """Give a round's members a moment to poll again before the next round is chosen, so
        live clients are not left out and clients that left are (readiness expires)."""
        window = min(SETTLE_SECONDS, self.config.aggregation.ready_window)
        loop = asyncio.get_running_loop()
        until = loop.time() + window
        while not stop.is_set() and loop.time() < until:
            links = [self._links.get(n) for n in names if not self.presence.is_gone(n)]
            if all(link is not None and link.polling > 0 and link.tasks.empty() for link in links):
                return
            await asyncio.sleep(0.02)

    # --------------------------------------------------------------------------- runs

    def _ensure_implicit_run(self) -> None:
        """Backward compatibility: with no administrator-created run, start one from the
        config (``[aggregation] rounds``) unless an implicit run is still live."""
        runs = self.runs.runs()
        if any(not r.implicit for r in runs) or any(
            r.status in ("running", "paused") for r in runs
        ):
            return
        agg = self.config.aggregation
        run = self.runs.create(
            name="default",
            mode=agg.mode,
            rounds=agg.rounds,
            hyperparameters={},
            base_model_version=None,
            by=IMPLICIT_CREATOR,
        )
        self._start(run, by=IMPLICIT_CREATOR, reason="no run was created: [aggregation] rounds")

    def _awaiting_approval(self, run: Run) -> bool:
        """A candidate of this run waits for a human: open no sibling round (module doc)."""
        with self.store.snapshot() as conn:
            row = conn.execute(
                "SELECT 1 FROM model_versions m JOIN rounds r ON m.round = r.id "
                "WHERE m.status = 'pending' AND r.run = ? LIMIT 1",
                (run.row,),
            ).fetchone()
        return row is not None

    def create_run(
        self,
        *,
        name: str,
        mode: str,
        rounds: int,
        hyperparameters_json: str,
        base_model_version: int,
        start: bool,
        by: str,
        schedule: str = "",
        async_json: str = "",
    ) -> Run:
        """A new run (RunError with the reason when refused); audited with ``by``.
        ``schedule`` "async" with ``async_json``: buffered asynchronous aggregation
        (appliance/async_schedule.py)."""
        name = check_name(name)
        configured = self.config.aggregation.mode
        mode = mode or configured
        if mode != configured:
            raise RunError(
                f"mode {mode!r} differs from the federation's configured mode {configured!r}: "
                "the loaded configuration (policy, deadlines, key holder, DP) was checked for "
                f"{configured!r} only; change [aggregation] mode and restart the appliance"
            )
        if not 0 <= rounds <= 2**31:
            raise RunError("rounds is a budget from 0 (unbounded) to 2^31")
        hyperparameters = check_hyperparameters(hyperparameters_json)
        every = hyperparameters.get(EVALUATE_EVERY)
        if every is not None:
            if type(every) is not int or every < 1:
                raise RunError(f"{EVALUATE_EVERY} is a whole number of rounds, at least 1")
            try:  # refused now rather than silently after every round
                check_allowed(mode, hyperparameters)
            except EvaluationError as error:
                raise RunError(f"{EVALUATE_EVERY}: {error}") from None
        _, spec = check_schedule(schedule, async_json)
        if spec is not None and self.config.scale_enabled:
            raise RunError("asynchronous runs are not striped yet: remove [scale] to run them")
        if spec is not None:
            agg = self.config.aggregation
            owners = len(self._identity_keys()) - (1 if mode == "ckks" else 0)  # key holder
            spec.check_run(
                mode=mode,
                min_clients=agg.min_clients,
                registered=owners,
                privacy=self.privacy.enabled,
                rule=agg.rule,
                minimum_sum=self.governing_policy().minimum_sum,
            )
            try:  # DP: per-client accounting's own refusals (appliance/async_privacy.py)
                self.privacy.clients.plan(
                    mode=mode, buffer_size=spec.buffer_size, policy=spec.policy
                )
            except AsyncPrivacyError as error:
                raise RunError(f"privacy: {error}") from None
            if EVALUATE_EVERY in hyperparameters:  # refused now, not silently never done
                raise RunError(f"{EVALUATE_EVERY} is not available in async runs yet")
        base = None
        if base_model_version:
            base = self._accepted_version(base_model_version).version
        run = self.runs.create(
            name=name,
            mode=mode,
            rounds=rounds,
            hyperparameters=hyperparameters,
            base_model_version=base,
            by=by,
            async_params=None if spec is None else spec.as_dict(),
        )
        return self.control_run(run.run_id, "start", "", by) if start else run

    def control_run(self, run_id: str, action: str, reason: str, by: str) -> Run:
        """start / pause / resume / stop a run; RunError with the reason when refused.

        Starting or resuming a run while the implicit run (``[aggregation] rounds``) runs
        stops the implicit one first (audited with the administrator's name): once an
        administrator drives runs, the compatibility run gives way."""
        run = self.runs.get(run_id)
        if len(reason) > 1024:
            raise RunError("the reason is at most 1024 characters")
        running = self.runs.running()
        implicit = running is not None and running.implicit and running.row != run.row
        target = next_status(run, action, None if implicit else running)
        if target == "running":
            self._check_base(run)
            if implicit and running is not None:
                self._stop(running, by=by, reason=f"superseded by {run.run_id}")
            current = self.store.current_model()
            started = self.runs.transition(
                run,
                "running",
                by=by,
                reason=reason,
                action=action,
                base_model_version=current.version if current and action == "start" else None,
            )
            self._run_end = None  # the previous run's end is not news for this run's clients
            return started
        if target == "stopped":
            return self._stop(run, by=by, reason=reason)
        return self.runs.transition(run, target, by=by, reason=reason, action=action)

    def _stop(self, run: Run, *, by: str, reason: str) -> Run:
        run = self.runs.transition(run, "stopped", by=by, reason=reason, action="stop")
        if self._round_run is None or self._round_run.row != run.row:
            self._announce_run_end(run)  # else after the round in flight ends (see run())
        return run

    def _start(self, run: Run, *, by: str, reason: str) -> Run:
        """Start the implicit run (no administrator involved)."""
        self._check_base(run)
        current = self.store.current_model()
        self._run_end = None  # the previous run's end is not news for this run's clients
        return self.runs.transition(
            run,
            "running",
            by=by,
            reason=reason,
            action="start",
            base_model_version=current.version if current else None,
        )

    def _check_base(self, run: Run) -> None:
        """A run created from a version starts only while that version is the current one."""
        current = self.store.current_model()
        base = run.base_model_version
        if run.status != "created" or base is None:
            return
        if current is None or current.version != base:
            now = "no accepted model" if current is None else f"version {current.version}"
            raise RunError(
                f"run {run.run_id} starts from model version {base}, but the current model "
                f"is {now}: roll back to it (`sealagg models rollback`) or create the run again"
            )

    def _finish_run(self, run: Run) -> bool:
        """Mark a run whose budget is spent finished and tell its clients; False if it was
        not running any more (e.g. stopped at the same moment)."""
        try:
            run = self.runs.transition(
                run, "finished", by="appliance", reason=f"{run.rounds} rounds done"
            )
        except RunError:
            return False
        self._announce_run_end(run)
        return True

    def _announce_run_end(self, run: Run) -> None:
        """``Task(run_end)`` to every client polling now and, on their next poll, to the
        others (once each)."""
        if self._run_end is not None and self._run_end.run_end.run_id == run.run_id:
            return
        current = self.store.current_model()
        self._run_end = pb.Task(
            run_end=pb.RunEnd(
                run_id=run.run_id,
                status=run.status,
                reason=run.reason or "",
                model_version=current.version if current else 0,
            )
        )
        _log.info("run %s %s: %s", run.run_id, run.status, run.reason or "")
        for link in self._links.values():
            if link.polling > 0 and link.tasks.empty():  # waiting now; the others: next poll
                self._hand_run_end(link)

    def _hand_run_end(self, link: _Link) -> None:
        notice = self._run_end
        if notice is not None and link.run_end_seen != notice.run_end.run_id:
            link.run_end_seen = notice.run_end.run_id
            _enqueue(link, notice)

    def _accepted_version(self, version: int) -> ModelVersion:
        try:
            model = self.store.model_version(version)
        except StoreError:
            raise RunError(f"there is no model version {version}") from None
        if model.status != "accepted":
            raise RunError(f"model version {version} is {model.status}, not accepted")
        return model

    def _evaluable_version(self, version: int) -> ModelVersion:
        """An accepted version or a candidate pending approval. Its clients would receive a
        pending candidate anyway once approved, and it is the sum the round already revealed;
        a rejected one is never handed out again."""
        try:
            model = self.store.model_version(version)
        except StoreError:
            raise RunError(f"there is no model version {version}") from None
        if model.status not in ("accepted", "pending"):
            raise RunError(
                f"model version {version} is {model.status}: only accepted versions and "
                "candidates pending approval are evaluated"
            )
        return model

    # --------------------------------------------------------------- federated evaluation

    async def evaluate(
        self, *, version: int, run_id: str, deadline_seconds: float, by: str
    ) -> dict:
        """Ask every ready client to evaluate an accepted version, or a candidate waiting for
        approval (so approvers can see how it does on every site's data before deciding;
        appliance/evaluation.py); returns the result (weighted means only).
        RunError/EvaluationError when refused."""
        run = self.runs.get(run_id) if run_id else self.runs.live()
        if run is not None and run.status in ("finished", "stopped"):
            raise EvaluationError(f"run {run.run_id} is {run.status}: its clients were told so")
        mode = run.mode if run is not None else self.config.aggregation.mode
        check_allowed(mode, json.loads(run.hyperparameters) if run is not None else {})
        if version:
            model = self._evaluable_version(version)
        else:
            model = self.store.current_model()
            if model is None:
                raise EvaluationError("there is no accepted model version to evaluate")
        deadline = deadline_seconds or self.config.gates.evaluate_deadline
        if not 0 < deadline <= MAX_DEADLINE_SECONDS:
            raise EvaluationError(f"the deadline is 0 < seconds <= {MAX_DEADLINE_SECONDS:g}")
        minimum = max(2, self.governing_policy().minimum_sum)
        clients = self.ready_clients()
        if len(clients) < minimum:
            raise EvaluationError(
                f"{len(clients)} clients are ready; an evaluation needs at least {minimum} "
                "(a mean over fewer could be one client's metrics)"
            )
        run_id = run.run_id if run is not None else ""
        evaluation_id, task, done = self.evaluations.open(
            run_id=run_id,
            version=model.version,
            sha256=model.sha256,
            clients=clients,
            minimum=minimum,
            deadline_seconds=deadline,
        )
        try:
            self.runs.open_evaluation(evaluation_id, run, model.version, by, clients)
            self.evaluations.ask(evaluation_id, task)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), deadline)
        finally:  # also when the admin's call is cancelled: close it, record it, drop its tasks
            result = self.evaluations.close(evaluation_id)
            self._purge(
                lambda t: (
                    t.WhichOneof("kind") == "evaluate"
                    and bytes(t.evaluate.evaluation_id) == evaluation_id
                )
            )
            with contextlib.suppress(StoreError):  # e.g. open_evaluation itself failed
                self.runs.close_evaluation(
                    evaluation_id,
                    status=result.status,
                    clients=result.clients,
                    num_examples=result.num_examples,
                    metrics=result.metrics,
                    reason=result.reason,
                )
        return {**result.as_dict(), "run": run_id}

    async def deliver_pending(self, timeout: float, stop: asyncio.Event | None = None) -> None:
        """Before shutting down, give clients a moment to collect their last tasks; an
        operator's stop ends the wait at once, and a client whose presence stream closed is not
        waited for (one that left, e.g. after refusing the round, would otherwise hold the
        shutdown for the whole ``timeout``)."""
        deadline = self._clock() + timeout
        while any(
            not link.tasks.empty() and not self.presence.is_gone(name)
            for name, link in self._links.items()
        ):
            if self._clock() >= deadline or (stop is not None and stop.is_set()):
                return
            await asyncio.sleep(0.05)

    async def run_round(self, names: list[str], *, run: Run | None = None) -> RoundOutcome:
        """Run one round with ``names`` (for ``run``, counted against its budget); always
        ends with a RoundEnd sent to each of them."""
        self._round_run = run
        try:
            return await self._run_round(names, run)
        finally:
            self._round_run = None

    async def run_buffer_round(self, plan: BufferPlan, run: Run) -> RoundOutcome:
        """Run one masked asynchronous buffer's secure-aggregation round (its ``rounds`` row
        was opened and counted when the buffer opened) over exactly its registered members
        (ckks: and the key holder), on the current version as parent; always ends with a
        RoundEnd to each of them."""
        self._round_run = run
        try:
            model = self.store.current_model()
            if model is None:
                raise RuntimeError("no accepted model version to aggregate into")
            names = sorted(plan.bases)
            if self.config.aggregation.mode == "ckks":  # appliance/ckks_buffer.py
                names = buffer_round_names(self.config, plan)
            return await self._run_opened(plan.number, plan.round_id, names, run, model, plan)
        finally:
            self._round_run = None

    async def _run_round(self, names: list[str], run: Run | None) -> RoundOutcome:
        model = self.store.current_model()
        if model is None:
            raise RuntimeError("no accepted model version to train")
        round_id = self._next_round_id()
        mode = self.config.aggregation.mode
        if run is None:
            number = self.store.open_round(mode, round_id)
        else:  # opened and counted against the run's budget in one transaction
            number, run = self.runs.open_round(
                run, lambda: self.store.open_round(mode, round_id, run=run.row)
            )
        return await self._run_opened(number, round_id, names, run, model, None)

    async def _run_opened(
        self,
        number: int,
        round_id: bytes,
        names: list[str],
        run: Run | None,
        model: ModelVersion,
        buffer: BufferPlan | None,
    ) -> RoundOutcome:
        """The round whose ``rounds`` row is open: build, announce, drive, publish."""
        weights = self.store.load_model(model.version)
        layout = Layout.of(weights)
        keys = self._identity_keys()
        members = [Member(i + 1, n, keys[n]) for i, n in enumerate(names)]
        self._refused = set()
        self._absent = {n: self.presence.gone_reason(n) for n in names if self.presence.is_gone(n)}
        self._reconnects_audited = set()
        self._refusals_listed = set()  # refusals already listed in a clients_dropped entry
        run_id = run.run_id if run is not None else ""
        if run_id != self._timings_run:  # another run: other hyperparameters, other timings
            self.timings.forget()
            self._timings_run = run_id
        self._recent_rounds[round_id] = number
        while len(self._recent_rounds) > RECENT_ROUNDS:
            self._recent_rounds.popitem(last=False)
        participants: dict = {
            "round": number,
            "clients": names,
            "model_version": model.version,
            "contribution_weights": {n: self.config.contribution_weight(n) for n in names},
        }
        if buffer is not None:  # what an asynchronous buffer reveals: who trained on what
            bases = buffer.bases  # ckks: the key holder trained nothing, it has none
            participants["base_versions"] = {n: bases[n] for n in names if n in bases}
        self.store.audit.append("participants", participants)
        try:
            active, start = self._build_round(number, round_id, members, layout, model, buffer)
        except (InfeasibleParametersError, ValueError) as error:
            return self._finish_aborted(number, members, round_id, f"{SETUP_FAILURE}: {error}")
        if run is not None:  # what the clients' own code reads (the appliance never does)
            start.run_id = run.run_id
            start.run_round = run.rounds_done  # counted at open: this round's 1-based index
            start.run_rounds = run.rounds
            start.hyperparameters_json = run.hyperparameters
        if buffer is not None:
            start.run_round = buffer.index
        for m in members:
            self._links.setdefault(m.name, _Link(m.name))
        self._round = active
        for m in members:
            personal = pb.RoundStart()
            personal.CopyFrom(start)
            personal.client_index = m.index
            personal.contribution_weight = self.config.contribution_weight(m.name)
            # The round decides what each member sees (e.g. only its own bucket).
            task = pb.Task(round_start=active.round_start_for(m.name, personal))
            _enqueue(self._links[m.name], task)
        opened = time.perf_counter()
        try:
            outcome = await self._drive(active, members, weights, layout, model.version)
        finally:
            self._round = None
            self._absent = {}
            self._purge(lambda t: _round_of(t) == round_id)  # never delivered once it ended
        return dataclasses.replace(outcome, seconds=time.perf_counter() - opened)

    def _purge(self, dead: Callable[[pb.Task], bool]) -> None:
        """Remove queued tasks that belong to something that ended (a round, an evaluation)."""
        for link in self._links.values():
            kept = []
            while not link.tasks.empty():
                task = link.tasks.get_nowait()
                if not dead(task):
                    kept.append(task)
            for task in kept:
                link.tasks.put_nowait(task)

    async def _drive(
        self,
        active: ActiveRound,
        members: list[Member],
        weights: dict[str, np.ndarray],
        layout: Layout,
        version: int,
    ) -> RoundOutcome:
        per_phase = active.phase_deadlines(self.config.deadlines)
        # A round aborted after every live member answered a phase returns with the event
        # still set: left so, the next round's first phase would close at once, every member
        # counted late ("deadline").
        self._phase_done.clear()
        opened = self._clock()  # the first phase counts from the round's start (training)
        while True:
            phase_name = active.phase_name
            configured = per_phase[min(active.phase_index, len(per_phase) - 1)]
            timeout = self.timings.deadline(phase_name, configured)
            self._phase_opened = opened
            self.phase_deadline = opened + timeout
            if await self._wait_for_phase(active, timeout):
                async with self._lock:  # nothing is published; every member is told why
                    return self._finish_aborted(
                        active.number, members, active.round_id, STOPPING_REASON
                    )
            self.metrics.phase_seconds.labels(active.phase_name).observe(self._clock() - opened)
            async with self._lock:
                late = sorted(active.waiting_for)
                self.metrics.dropouts.inc(len(late))  # counted in aborted rounds too
                phase = active.phase_name
                self._audit_dropped(active, late, configured, timeout)
                in_phase = sorted(active.answered)  # close_phase resets it for the next phase
                answered = len(in_phase)
                for kind, record in active.pending_audit():  # e.g. a client excluded on a blame
                    if kind == "client_excluded":  # durable: out of later rounds until readmitted
                        self.store.exclude_participant(
                            record["client"],
                            round=record["round"],
                            reason=record["reason"],
                            blamed_by=record.get("blamed_by"),
                        )
                        continue
                    self.store.audit.append(kind, record)
                try:
                    tasks = await asyncio.to_thread(active.close_phase)
                except (SecAggError, UploadRefusedError) as error:
                    reason = f"phase {phase}: {error}"
                    if self._refused:  # say who refused, not only how many remained
                        reason += f" (refused by {', '.join(sorted(self._refused))})"
                    outcome = self._finish_aborted(
                        active.number, members, active.round_id, reason, answered=in_phase
                    )
                    if self._vanished_before_reveal(error, late):
                        outcome = dataclasses.replace(outcome, vanished_before_reveal=tuple(late))
                    return outcome
                active.expected -= self._refused  # a client that refused stays gone
                self.store.record_phase(active.number, phase, answered, late)
                self._phase_done.clear()
            opened = self._clock()
            due = opened + self.timings.deadline(
                active.phase_name, per_phase[min(active.phase_index, len(per_phase) - 1)]
            )
            for name, task in tasks.items():
                if task.WhichOneof("kind") == "step":
                    task.step.deadline_unix = due  # the client may resubmit until then
                _enqueue(self._links[name], task)
            if active.finished:
                break
        try:
            aggregate = await asyncio.to_thread(active.aggregate)
        except ValueError as error:  # an impossible sum (out-of-range input): publish nothing
            reason = f"aggregate refused: {error}"
            return self._finish_aborted(active.number, members, active.round_id, reason)
        return await self._publish(active, members, aggregate, weights, layout, version)

    async def _wait_for_phase(self, active: ActiveRound, timeout: float) -> bool:
        """Wait until every live member answered or the deadline; True when the operator
        stopped the appliance meanwhile (the round is then aborted, not waited out: a phase
        deadline can be many minutes, longer than a service manager waits before SIGKILL)."""
        stop = self._stopping
        if stop is not None and stop.is_set():
            return True
        if not self._live_waiting(active):
            return False
        waits = {asyncio.ensure_future(self._phase_done.wait())}
        stopped = asyncio.ensure_future(stop.wait()) if stop is not None else None
        if stopped is not None:
            waits.add(stopped)
        try:
            finished, _ = await asyncio.wait(
                waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for wait in waits:
                wait.cancel()
        if stopped is not None and stopped in finished:
            return True
        if not finished:
            _log.info(
                "round %d phase %s deadline: %d late",
                active.number,
                active.phase_name,
                len(active.waiting_for),
            )
        return False

    # ------------------------------------------------------------------------ presence

    def _live_waiting(self, active: ActiveRound) -> set[str]:
        """Members the phase still waits for: expected, not answered, not vanished."""
        return active.waiting_for - self._absent.keys()

    def _check_phase_done(self, active: ActiveRound) -> None:
        if not self._live_waiting(active):
            self._phase_done.set()

    def _vanished(self, name: str, reason: str) -> None:
        """A client's last presence stream closed or fell silent: if it is a member of the
        running round, no phase waits for it from now on (until it comes back)."""
        self.metrics.vanished.labels(reason).inc()
        active = self._round
        if active is None or name not in active.members or name in self._absent:
            return
        self._absent[name] = reason
        _log.info(
            "round %d phase %s: %s vanished (%s)", active.number, active.phase_name, name, reason
        )
        self._check_phase_done(active)

    def _heartbeat(self, name: str, round_id: bytes) -> None:
        """Take a vanished member back when its heartbeat names this round: the same process
        reconnected with its protocol state. A restarted process names no round: it stays out."""
        active = self._round
        if name not in self._absent or active is None or round_id != active.round_id:
            return
        if self._phase_done.is_set() or name not in active.expected:
            return  # the phase is closing without it, or dropped it already: nothing to wait for
        reason = self._absent.pop(name)
        key = (name, active.phase_name)
        if key not in self._reconnects_audited:  # once per member and phase: a client that
            self._reconnects_audited.add(key)  # cycles its stream cannot flood the audit log
            self.store.audit.append(
                "client_reconnected",
                {"round": active.number, "client": name, "phase": active.phase_name, "was": reason},
            )
        _log.info("round %d: %s came back (%s before)", active.number, name, reason)

    def _vanished_before_reveal(self, error: Exception, late: Sequence[str]) -> bool:
        """Did the round abort only because committed members vanished (presence:
        connection closed or silent) before revealing their graph coins?

        Such a round may be replaced at once by a fresh one among the others
        (:meth:`run`). Why that gives a malicious appliance nothing it lacks: every committed
        coin must be revealed or the round aborts for everyone (crypto/coins.py), and a
        server that withholds or drops a reveal can always abort and open a new round, each
        a fresh independent draw (new round id, keys and coins). The replacement is exactly
        that, and each client's ledger still bounds how many revealed rounds may go
        unfinished in a row (crypto/ledger.py), whoever opened them. A refusal or a
        deadline is not a vanishing: those rounds end as before."""
        if not isinstance(error, CoinRevealError) or not late or self._refused:
            return False
        return all(name in self._absent for name in late)

    def _audit_dropped(
        self, active: ActiveRound, late: Sequence[str], configured: float, timeout: float
    ) -> None:
        """One audit entry per phase that dropped members: who, and why each: ``refused`` (it
        refused the round in this phase; its reason is in ``round_refused_by_client``),
        ``connection_closed`` / ``silent`` (presence), else ``deadline``."""
        refused = sorted(self._refused - self._refusals_listed)
        self._refusals_listed.update(refused)
        if not late and not refused:
            return
        why = {name: self._absent.get(name, "deadline") for name in late}
        why = dict(sorted({**why, **dict.fromkeys(refused, "refused")}.items()))
        for name, reason in why.items():
            self.presence.notify_dropped(name, active.round_id, active.phase_name, reason)
        record: dict = {"round": active.number, "phase": active.phase_name, "clients": why}
        if "deadline" in why.values():
            record["deadline"] = self.timings.describe(active.phase_name, configured)
            live = [n for n, r in why.items() if r == "deadline" and self.presence.is_live(n)]
            if live and timeout < configured:
                # A connected member was slower than history predicted (e.g. the run now
                # trains longer): the next round of this phase waits the configured maximum
                # again and learns anew, so a shortened deadline can never lock rounds out.
                self.timings.forget(active.phase_name)
                record["deadline"]["forgotten"] = True
        self.store.audit.append("clients_dropped", record)

    # ------------------------------------------------------------------------- helpers

    def _build_round(
        self,
        number: int,
        round_id: bytes,
        members: list[Member],
        layout: Layout,
        model: ModelVersion,
        buffer: BufferPlan | None = None,
    ) -> tuple[ActiveRound, pb.RoundStart]:
        """The round for the configured mode and rule, and the RoundStart that describes it
        (``buffer``: a masked asynchronous buffer's round, on ``model`` as parent).

        Raises ``ValueError`` / ``InfeasibleParametersError`` with the reason when the round
        cannot run with these members; the round is then aborted and every member told why.
        """
        agg = self.config.aggregation
        start = pb.RoundStart(
            round_number=number,
            round_id=round_id,
            mode=agg.mode,
            model_version=model.version,
            participants=[
                pb.Participant(index=m.index, name=m.name, identity_key=m.identity_key)
                for m in members
            ],
            clip=agg.clip,
            max_clients=len(members),
            submit_deadline_unix=self._clock() + self.config.deadlines.advertise_keys,
            model_sha256=model.sha256,
            roster=self.roster_gate.view().signed,  # clients check members against it
        )
        self._privacy_plan = None
        if buffer is not None:
            return self._build_buffer_round(number, members, layout.dimension, start, buffer), start
        build = self._build_robust_round if agg.rule != "mean" else self._builders[agg.mode]
        return build(number, round_id, members, layout.dimension, start), start

    def _build_buffer_round(
        self, number: int, members: list[Member], d: int, start: pb.RoundStart, plan: BufferPlan
    ) -> ActiveRound:
        """A masked round whose transcript fixes each member's base version, the parent
        (``start.model_version``) and the staleness function (crypto/buffer_context.py); in
        ckks mode a CKKS round whose contributions sign them (appliance/ckks_buffer.py)."""
        if self.config.aggregation.mode == "ckks":
            active, audit = build_ckks_buffer_round(self.config, number, members, d, start, plan)
            self.store.audit.append("round_parameters", audit)
            return active
        if self.config.aggregation.mode not in ("secagg", "secagg+"):
            raise ValueError("buffer rounds run in masked and ckks modes only")
        context = plan.context(start.model_version, {m.name: m.index for m in members})
        active = self._build_masked_round(number, plan.round_id, members, d, start, context)
        assert isinstance(active, BufferRound)
        active.buffer_index, active.run_id, active.size = plan.index, plan.run_id, plan.size
        if self._privacy_plan is not None:  # DP: s(tau)-weighted decode, charged per client
            dp = self.privacy.for_buffer(
                self._privacy_plan,
                run_id=plan.run_id,
                buffer_index=plan.index,
                buffer_size=plan.size,
                weights={m.index: context.weight_of(m.index) for m in members},
                names={m.index: m.name for m in members},
            )
            self._privacy_plan = dp
            active.decoder = lambda total: dp.decode_survivors(  # survivors: at the end
                total, active.server.result.survivors
            )
        for participant in start.participants:
            participant.base_version = plan.bases[participant.name]
        start.asynchronous = True
        start.async_buffer = True
        start.buffer_number = plan.index
        start.async_params.CopyFrom(plan.params)
        return active

    @property
    def _builders(self) -> dict[str, RoundBuilder]:
        """One builder per aggregation mode (robust rules: :meth:`_build_robust_round`).

        A builder returns the round with its parameters written into ``start`` and audited.
        """
        return {
            "plaintext": self._build_plain_round,
            "attested": self._build_plain_round,  # clients verified the TEE first
            "ckks": self._build_ckks_round,
            "secagg": self._build_masked_round,
            "secagg+": self._build_masked_round,
        }

    def _build_plain_round(
        self, number: int, round_id: bytes, members: list[Member], d: int, start: pb.RoundStart
    ) -> ActiveRound:
        active = (
            self._striped_plain_round(number, round_id, members, d)
            if self.config.scale_enabled  # [scale]: the updates' ranges live on Ray stripes
            else PlainRound(number, round_id, members, d)
        )
        active.describe(start)
        minimum = self.config.aggregation.min_clients
        self._privacy_plan = self.privacy.plan_for(start, dimension=d, minimum=minimum)
        return active

    def _striped_plain_round(
        self, number: int, round_id: bytes, members: list[Member], d: int
    ) -> ActiveRound:
        """[scale] plaintext / attested rounds, any rule: Ray stripes hold the updates and run
        the rule (appliance/scale/plain_round.py); ValueError when infeasible or unstriped."""
        if self.scale is None:
            raise ValueError("[scale] is configured but its Ray runtime is not running")
        agg = self.config.aggregation
        active = self.scale.plain_round_for(
            number, round_id, members, d, rule=agg.rule, f=agg.f, beta=agg.beta
        )
        self.store.audit.append(
            "round_parameters",
            {"round": number, "n": len(members), "dimension": d, **self.scale.describe()},
        )
        return active

    def _build_ckks_round(
        self, number: int, round_id: bytes, members: list[Member], d: int, start: pb.RoundStart
    ) -> ActiveRound:
        # The size guard and the parameter checks raise ValueError.
        active, audit = build_ckks_round(self.config, number, round_id, members, d, start)
        self.store.audit.append("round_parameters", audit)
        return active

    def _build_masked_round(
        self,
        number: int,
        round_id: bytes,
        members: list[Member],
        d: int,
        start: pb.RoundStart,
        buffer: BufferContext | None = None,
    ) -> ActiveRound:
        agg = self.config.aggregation
        n = len(members)
        require_masking_parties(n, f"{agg.mode} round")  # the reason reaches every client
        policy = self.governing_policy()  # what every client enforces
        if needs_groups(agg.max_group_size, n):  # independent secure groups, sums added
            return self._build_grouped_round(number, round_id, members, d, start, buffer)
        c, m = policy.colluders, policy.minimum_sum
        degree, threshold, note = choose_graph(
            n, agg.mode, agg.dropout_rate, agg.corrupt_fraction, colluders=c, minimum_sum=m
        )
        quorum = max(default_minimum_survivors(n, threshold, c), m)
        config = RoundConfig.create(
            round_id=round_id,
            identities={m.index: m.identity_key for m in members},
            threshold=threshold,
            vector_length=self.privacy.vector_length(d, encoded_length(d)),
            degree=degree,
            minimum_survivors=max(self.privacy.minimum_survivors(n, threshold) or 0, quorum),
            roster_version=self.roster_gate.view().version,  # in the transcript every client hashes
            buffer=buffer,  # an asynchronous buffer's base versions: in the transcript too
        )
        check_round_against_policy(  # the clients' own check: refuse what they would refuse
            policy, agg.mode, n, degree, config.threshold, config.minimum_survivors
        )
        check_round_parameters(  # refuse here what every client would refuse
            participants=n,
            threshold=config.threshold,
            minimum_survivors=config.minimum_survivors,
        )
        spec = QuantizationSpec(clip=agg.clip, max_clients=n)
        striped: dict = {}
        if self.config.scale_enabled:  # [scale]: the sum is held by Ray stripes
            if buffer is not None:
                raise ValueError("asynchronous buffers are not striped yet ([scale])")
            if self.scale is None:
                raise ValueError("[scale] is configured but its Ray runtime is not running")
            active = self.scale.round_for(number, round_id, members, config, spec)
            striped = self.scale.describe()
        else:
            kind = MaskedRound if buffer is None else BufferRound
            active = kind(number, round_id, members, config, spec)
        active.describe(start)
        self.store.audit.append(
            "round_parameters",
            {
                "round": number,
                "degree": start.degree,
                "threshold": threshold,
                "n": n,
                "dimension": d,
                "note": note,
                **striped,
            },
        )
        plan = self.privacy.plan_for(start, dimension=d, minimum=config.minimum_survivors)
        self._privacy_plan = plan
        active.decoder = plan.decode if plan is not None else None  # DP: decode the ring sum
        return active

    def _build_grouped_round(
        self,
        number: int,
        round_id: bytes,
        members: list[Member],
        d: int,
        start: pb.RoundStart,
        buffer: BufferContext | None,
    ) -> ActiveRound:
        """More members than ``[aggregation] max_group_size``: groups of at least ``m`` whose
        sums the appliance sees and adds (appliance/grouped_round.py says why that is safe).
        With ``[scale]`` every group is summed by the same Ray stripes, side by side. DP is
        refused at config load; a buffer here, at build."""
        if buffer is not None:
            raise ValueError(
                f"an asynchronous buffer of {len(members)} members exceeds max_group_size = "
                f"{self.config.aggregation.max_group_size}; buffers are not split into groups"
            )
        agg = self.config.aggregation
        striped: dict = {}
        make_group = one_process_group
        if self.config.scale_enabled:  # [scale]: every group on the stripes, in lockstep
            if self.scale is None:
                raise ValueError("[scale] is configured but its Ray runtime is not running")
            make_group, striped = striped_groups(self.scale), self.scale.describe()
        active, audit = build_grouped_round(
            number=number,
            round_id=round_id,
            members=members,
            mode=agg.mode,
            vector_length=encoded_length(d),
            clip=agg.clip,
            max_group_size=agg.max_group_size,
            policy=self.governing_policy(),
            dropout_rate=agg.dropout_rate,
            corrupt_fraction=agg.corrupt_fraction,
            roster_version=self.roster_gate.view().version,  # in every group's transcript
            make_group=make_group,
        )
        active.describe(start)
        self.store.audit.append("grouped_round", {**audit, **striped})
        self._privacy_plan = None
        return active

    def _build_robust_round(
        self, number: int, round_id: bytes, members: list[Member], d: int, start: pb.RoundStart
    ) -> ActiveRound:
        """Robust rules (appliance/robust.py); ValueError when infeasible."""
        if self.privacy.enabled:
            raise ValueError("robust aggregation rules are not combined with DP yet")
        if self.config.scale_enabled and self.config.aggregation.mode in ("plaintext", "attested"):
            active = self._striped_plain_round(number, round_id, members, d)
            active.describe(start)
            return active
        policy = self.governing_policy()  # each bucket meets it, as its clients check
        chooser = functools.partial(
            choose_graph, colluders=policy.colluders, minimum_sum=policy.minimum_sum
        )
        active, audit = build_robust_round(
            self.config.aggregation,
            number,
            round_id,
            members,
            d,
            chooser,
            policy=policy,
            roster_version=self.roster_gate.view().version,
        )
        active.describe(start)
        if audit is not None:
            self.store.audit.append("round_parameters", audit)
        return active

    def _next_round_id(self) -> bytes:
        """Bound to the audit chain's head, so the SecAgg+ graph seed is on the record."""
        head = self.store.audit.head()
        return hashlib.sha256(b"sealagg/round-id/v1" + head.hash.encode() + os.urandom(16)).digest()

    async def _publish(
        self,
        active: ActiveRound,
        members: list[Member],
        aggregate: Aggregate,
        weights: dict[str, np.ndarray],
        layout: Layout,
        version: int,
    ) -> RoundOutcome:
        """Aggregate -> candidate -> gates -> decision -> announcement, each a named step."""
        plan, self._privacy_plan = self._privacy_plan, None
        try:  # account a DP round (too few updates for its noise: abort); note local ε
            self.privacy.finish_round(plan, active.metadata, aggregate)
        except ValueError as error:
            reason = f"privacy: {error}"
            return self._finish_aborted(active.number, members, active.round_id, reason)
        self._use_optimizer_state_of(version)  # e.g. after a rollback: the restored version's
        before = self._optimizer.state_dict()  # the state only advances with an accepted model
        try:
            candidate = self._optimizer.step(weights, unflatten(aggregate.mean_update, layout))
        except ValueError as error:
            return self._finish_aborted(
                active.number, members, active.round_id, f"optimizer refused: {error}"
            )
        self._audit_aggregate(active, aggregate)
        accept, why = (
            (True, "no quality gate")
            if self._quality_gate is None
            else self._quality_gate(candidate, aggregate)
        )
        model = self._store_candidate(candidate, version, active.number)
        accept, why = await self._gate(active, model, version, accept, why)
        if not accept:
            return self._reject(active, members, aggregate, model, version, before, why)
        if self.config.gates.require_approval:
            return self._hold_for_approval(active, members, aggregate, model)
        return self._accept(active, members, aggregate, model)

    def _audit_aggregate(self, active: ActiveRound, aggregate: Aggregate) -> None:
        """What clients declared, the aggregate's digest, and what the round kind reports."""
        digest = hashlib.sha256(active.total_digest_source()).hexdigest()
        if active.metadata:  # what clients declared (example counts, spent ε): no update values
            self.store.audit.append(
                "client_reports", {"round": active.number, "reports": dict(active.metadata)}
            )
        self.store.audit.append(
            "aggregate",
            {
                "round": active.number,
                "contributors": list(aggregate.contributors),
                "dropped": list(aggregate.dropped),
                "total_weight": round(aggregate.total_weight, 9),
                "aggregate_sha256": digest,
            },
        )
        for kind, record in active.result_audit().items():  # e.g. which rule chose whom
            self.store.audit.append(kind, record)

    def _store_candidate(
        self, candidate: dict[str, np.ndarray], parent: int, number: int
    ) -> ModelVersion:
        """The candidate version and the optimizer state that produced it, durably."""
        model = self.store.add_model_version(
            candidate, parent=parent, round=number, status="candidate"
        )
        save_state(self.store.folder, model, self._optimizer)  # durable before it can publish
        self._optimizer_version = model.version
        return model

    async def _gate(
        self, active: ActiveRound, model: ModelVersion, version: int, accept: bool, why: str
    ) -> tuple[bool, str]:
        """After the quality gate: the vendor's holdout, then staleness; the decision audited."""
        if accept and self.vendor_gate is not None:  # evaluated on the vendor's own holdout
            previous = self.store.model_version(version)
            accept, why = await self.vendor_gate.judge(active.round_id, previous, model)
        stale = superseded_during_round(self.store, version) if accept else None
        if stale:  # e.g. a rollback during the round: publishing would silently undo it
            accept, why = False, stale
        self.store.audit.append(
            "gate_decision",
            {"round": active.number, "version": model.version, "accept": accept, "reason": why},
        )
        return accept, why

    def _reject(
        self,
        active: ActiveRound,
        members: list[Member],
        aggregate: Aggregate,
        model: ModelVersion,
        version: int,
        before: dict,
        why: str,
    ) -> RoundOutcome:
        """Undo the optimizer step, discard its state, and record the rejection."""
        self._optimizer.load_state_dict(before)
        self._optimizer_version = version
        discard_state(self.store.folder, model.version)
        self.store.set_model_status(model.version, "rejected")
        self.store.set_round_status(active.number, "rejected", why)
        return self._announce(
            active, members, aggregate, model, "rejected", why, pb.RoundEnd.REJECTED, why
        )

    def _hold_for_approval(
        self, active: ActiveRound, members: list[Member], aggregate: Aggregate, model: ModelVersion
    ) -> RoundOutcome:
        self.store.set_model_status(model.version, "pending")
        self.store.set_round_status(active.number, "pending_approval")
        return self._announce(
            active,
            members,
            aggregate,
            model,
            "pending_approval",
            "",
            pb.RoundEnd.PENDING_APPROVAL,
            "waiting for approval",
        )

    def _accept(
        self, active: ActiveRound, members: list[Member], aggregate: Aggregate, model: ModelVersion
    ) -> RoundOutcome:
        self.store.set_model_status(model.version, "accepted")
        self.store.set_round_status(active.number, "accepted")
        return self._announce(
            active, members, aggregate, model, "published", "", pb.RoundEnd.PUBLISHED, ""
        )

    def _announce(
        self,
        active: ActiveRound,
        members: list[Member],
        aggregate: Aggregate,
        model: ModelVersion,
        outcome: str,
        reason: str,
        wire_outcome: int,
        wire_reason: str,
    ) -> RoundOutcome:
        """Tell every member how the round ended; the outcome for the history."""
        self._tell_all(members, active.round_id, wire_outcome, wire_reason, model.version)
        return RoundOutcome(
            active.number,
            outcome,
            reason,
            model.version,
            aggregate.contributors,
            aggregate.dropped,
        )

    def _load_optimizer_state(self) -> None:
        """On start: the state that belongs to the current model (appliance/optimizer_state.py)."""
        current = self.store.current_model()
        if current is not None:
            restore_state(self.store, current.version, self._optimizer)
            self._optimizer_version = current.version

    def _use_optimizer_state_of(self, version: int) -> None:
        """Continue the state of the version this round trained from: after a rollback, a
        rejected approval or a restart it is not the state the optimizer holds in memory."""
        if self._optimizer_version == version:
            return
        origin, note = restore_state(self.store, version, self._optimizer)
        self._optimizer_version = version
        if note or (origin is not None and origin != version):
            self.store.audit.append(
                "optimizer_state", {"model_version": version, "state_of": origin, "note": note}
            )

    def _finish_aborted(
        self,
        number: int,
        members: list[Member],
        round_id: bytes,
        reason: str,
        *,
        answered: Sequence[str] = (),
    ) -> RoundOutcome:
        """Abort, tell every member; the outcome names who answered the phase where the
        round stopped (``contributors``) and who did not (``dropped``), so an aborted round
        is not reported as "0 clients" when some answered."""
        _log.warning("round %d aborted: %s", number, reason)
        self.store.set_round_status(number, "aborted", reason)
        self._tell_all(members, round_id, pb.RoundEnd.ABORTED, reason, 0)
        dropped = sorted({m.name for m in members} - set(answered))
        return RoundOutcome(number, "aborted", reason, None, tuple(answered), tuple(dropped))

    def _send_to(self, name: str, task: pb.Task) -> None:
        _enqueue(self._links.setdefault(name, _Link(name)), task)

    def _gate_for(self, name: str) -> VendorGate:
        if self.vendor_gate is None:
            raise UploadRefusedError(
                "FAILED_PRECONDITION",
                "no evaluation is open with this id (and this federation has no vendor gate)",
            )
        return self.vendor_gate

    def _tell_all(
        self, members: list[Member], round_id: bytes, outcome: int, reason: str, version: int | None
    ) -> None:
        for m in members:
            end = pb.RoundEnd(
                round_id=round_id, outcome=outcome, reason=reason, model_version=version or 0
            )
            _enqueue(self._links[m.name], pb.Task(round_end=end))


def _round_of(task: pb.Task) -> bytes | None:
    """The round a RoundStart or protocol step belongs to (None for other tasks)."""
    kind = task.WhichOneof("kind")
    if kind == "round_start":
        return bytes(task.round_start.round_id)
    if kind == "step":
        return bytes(task.step.round_id)
    return None


def _enqueue(link: _Link, task: pb.Task) -> None:
    """Queue a task; a client that stopped polling keeps only the newest tasks."""
    while link.tasks.qsize() >= MAX_QUEUED_TASKS:
        link.tasks.get_nowait()
    link.tasks.put_nowait(task)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


__all__ = ["Orchestrator", "QualityGate", "RoundOutcome", "UploadRefusedError", "flatten"]
