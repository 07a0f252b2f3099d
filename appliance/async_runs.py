"""Asynchronous buffered aggregation (FedBuff with staleness weights, issue 21): the scheduler.

While an ``async`` run is running (parameters: :mod:`appliance.async_schedule`), there are no
rounds to wait for. Every ready client that is polling gets a *lease*: a ``RoundStart`` with
``asynchronous`` set, naming the current model version. It trains whenever it can and submits
under the lease id; the update joins the buffer that is filling when it arrives, weighted by
``w * s(tau)`` (``tau`` = current version - the lease's version, :mod:`crypto.staleness`), and is
added in place (:class:`~appliance.async_buffer.AsyncBuffer`). When K updates are in, the
buffer's weighted mean goes through the synchronous publish path (optimizer, quality gate,
vendor gate, approvals, audit, model version) and the next buffer opens; each buffer is a
``rounds`` row of its run and counts against the run's budget when it opens.

The rules, each with its reason:

- **The base version is the lease's.** A submission names a lease the appliance issued to the
  caller (identity from mutual TLS); a claimed base version must equal the lease's, and one
  that does not exist or was never leased to this client is refused. So no client can claim a
  fresher base than it downloaded (a larger weight), nor a version that never existed.
- **Past the maximum staleness is refused**, with the reason, and the lease is spent: the
  client polls for a new lease on the current version.
- **One update per client per buffer.** A client already in the filling buffer gets no new
  lease until it closes, and a second update into it is refused (``ALREADY_EXISTS``): no
  client can weigh more than once in a published mean of K.
- **Bounded memory.** At most ``max_open_buffers`` buffers (filling or publishing), each one
  O(d) sum; at most :data:`LEASES_PER_CLIENT` leases per client.
- **Leases go to clients polling now.** A lease queued for a client that is away would be
  stale by the time it is collected.

Masked modes (secagg, secagg+): each buffer is one secure-aggregation round among exactly
the first K clients that register for it. A client trains on its leased version and, when its
update is ready, *registers* under the lease (``async_registration``: no update byte, the
same lease, base-version, staleness and one-per-buffer checks as above); when K registered,
the buffer is full, the next one starts filling, and the full buffer's round runs
(:meth:`~appliance.orchestrator.Orchestrator.run_buffer_round`: the masked-round machinery
with its dropout recovery, consistency check, deadlines and presence) on the current version
as parent. Its transcript fixes, for every member, the base version it trained on, the parent
and the staleness function (:mod:`crypto.buffer_context`); each member signs its own base
version into its key advertisement, refuses a round listing another one for it, and folds
``w * s(tau)`` into the weight coordinate of its masked vector, ``tau`` computed from the
transcript. A member past the maximum staleness by the time its buffer's round starts is left
out and told; a buffer whose members (before the round) or survivors (in it) fall below the
round's minimum (at least ``max(t, m)``) is aborted, not published, and its members told: the
privacy condition (at least ``m`` clients in any revealed sum) holds per buffer. Buffers
never share members' masks: each round has its own id, keys and transcript.

Mode ckks: buffers fill the same way (registrations, no update byte); a full buffer's round is
a CKKS round among its data owners and the run's key holder, which takes no lease (it trains
nothing) and whose checks replace the transcript's (:mod:`appliance.ckks_buffer`).

What the appliance cannot check: whether a member really folded ``s(tau)`` into its masked
vector. The weight rides inside the vector, which only its owner sees; a malicious client can
skip ``s(tau)`` (weigh as if fresh), exactly as it can misstate its own weight ``w`` in a
synchronous masked round. Its influence stays bounded (``w * s <= 1``, the clip); the
appliance verifies the base versions and the transcript, not the contents of a masked vector.

What the server learns that it does not in synchronous mode: in plaintext and attested modes
it sees every update anyway; in addition, each publication records which base versions
contributed and with which staleness weights (audit ``async_buffer``), i.e. how far behind
each member was, a timing signal a synchronous round (every member on one version) lacks. In
masked modes the same: per buffer, its members, their base versions (signed, audited in
``participants`` and ``async_buffer``), when each registered (as a plaintext run sees when
each update arrives) and the sum over its survivors; no individual update.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import secrets
from typing import TYPE_CHECKING

from sealagg.appliance.async_buffer import (
    AsyncBuffer,
    BufferPlan,
    Contribution,
    Lease,
    MaskedBuffer,
    Registration,
)
from sealagg.appliance.async_privacy import (
    AsyncDPPlan,
    AsyncPrivacyError,
    ClientBudgetExhaustedError,
)
from sealagg.appliance.async_schedule import BUFFER_ROUND_MODES, AsyncSpec
from sealagg.appliance.errors import StoreError
from sealagg.appliance.rounds import UploadRefusedError
from sealagg.appliance.runs import Run, RunError
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire.modelcodec import Layout
from sealagg.crypto.rules import MIN_MASKED_PARTIES
from sealagg.crypto.staleness import StaleUpdateError, staleness

if TYPE_CHECKING:
    from sealagg.appliance.orchestrator import Orchestrator, RoundOutcome

__all__ = ["LEASES_PER_CLIENT", "REGISTRATION_KIND", "AsyncScheduler"]

_log = logging.getLogger("sealagg.async")

#: Leases remembered per client (a client that polls again abandons the older ones); spent
#: leases are remembered as long, so a resent upload is told it landed.
LEASES_PER_CLIENT = 8
#: How often the loop looks for polling clients and full buffers when nothing wakes it.
TICK_SECONDS = 0.05
UPDATE_KIND = "plaintext_update"
#: Masked modes: "my update on the lease's version is ready" (no payload); the update itself
#: leaves the client only masked, in its buffer's secure-aggregation round.
REGISTRATION_KIND = "async_registration"
MAX_METADATA_CHARS = 4096


class AsyncScheduler:
    """Leases, buffers and publications of the one running asynchronous run.

    Runs on the orchestrator's event loop; uploads arrive under the orchestrator's lock.
    It publishes through the orchestrator's own publish path (``Orchestrator._publish``), so
    a buffer is gated, approved, audited and versioned exactly as a round is.
    """

    def __init__(self, orchestrator: Orchestrator) -> None:
        self._orch = orchestrator
        self.run_id = ""  # the run whose state this holds ("" = none)
        self.spec: AsyncSpec | None = None
        self.dimension = 0
        self.masked = False  # secagg / secagg+: buffers are secure-aggregation rounds
        self.dp: AsyncDPPlan | None = None  # client-level DP, accounted per client
        self._told_spent: set[str] = set()  # clients sent a RunEnd for their spent budget
        self.filling: AsyncBuffer | MaskedBuffer | None = None
        self.full: collections.deque[AsyncBuffer | MaskedBuffer] = collections.deque()
        self._secure: asyncio.Task | None = None  # the masked buffer round in flight
        self.leases: dict[bytes, Lease] = {}
        self._by_client: dict[str, collections.OrderedDict[bytes, None]] = {}
        self._spent: dict[str, collections.OrderedDict[bytes, int]] = {}  # lease -> buffer
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------- the run's loop

    @property
    def attached(self) -> bool:
        return bool(self.run_id)

    def takes(self, header: pb.UploadHeader, *, round_open: bool) -> bool:
        """Whether an upload is this scheduler's: any upload while no round is open, and a
        registration while a masked buffer's round runs (the next buffer keeps filling)."""
        if not self.attached:
            return False
        return not round_open or header.kind == REGISTRATION_KIND

    async def drive(self, run: Run, stop: asyncio.Event) -> None:
        """Lease, buffer and publish for ``run`` while it runs (returns when it is paused,
        stopped or finished, or at ``stop``). A paused run keeps its buffers in memory; updates
        still join the filling buffer, and it publishes once the run resumes."""
        orch = self._orch
        refusal = self._refusal(run)
        if refusal is not None:  # e.g. the configuration changed since the run was created
            _log.warning("run %s stopped: %s", run.run_id, refusal)
            orch._stop(run, by="appliance", reason=refusal)
            return
        if not self._attach(run):
            return  # no accepted model yet: the orchestrator's loop asks again
        while not stop.is_set():
            run = orch.runs.get(run.run_id)
            if run.status != "running":
                break
            if run.budget_spent and self.filling is None and not self.full:
                orch._finish_run(run)
                break
            self._open_buffer(run)  # first: the next buffer fills while this one publishes
            starved = self._starved(run)
            if starved is not None:
                _log.warning("run %s stopped: %s", run.run_id, starved)
                orch._stop(run, by="appliance", reason=starved)
                break
            self._lease_to_polling(run)
            if self._secure is not None and self._secure.done():
                self._secure.result()  # a bug in it surfaces here, not silently
                self._secure = None
                continue
            if self.full and self._secure is None and not orch._awaiting_approval(run):
                if not self.masked:
                    await self._publish(self.full[0], run)
                    continue
                # Its round runs beside this loop: leases and registrations go on meanwhile.
                self._secure = asyncio.create_task(self._run_buffer(self.full[0], run))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_SECONDS)
        if self._secure is not None:  # the buffer round in flight finishes, as a round does
            secure, self._secure = self._secure, None
            await secure
        run = orch.runs.get(run.run_id)
        if run.status in ("finished", "stopped"):
            self.detach(f"run {run.status}")

    def _refusal(self, run: Run) -> str | None:
        """Why the loaded configuration cannot drive ``run`` (None: it can). Its rules were
        checked at creation against the configuration then; a restart may load another."""
        agg = self._orch.config.aggregation
        if run.mode != agg.mode:
            return f"the federation's mode is now {agg.mode!r}, the run's is {run.mode!r}"
        try:
            spec = AsyncSpec.parse(run.async_params or "")
            spec.check_run(
                mode=agg.mode,
                min_clients=agg.min_clients,
                registered=spec.buffer_size,  # clients come and go: not a reason to stop
                privacy=self._orch.privacy.enabled,
                rule=agg.rule,
                minimum_sum=self._orch.governing_policy().minimum_sum,
            )
            self._orch.privacy.clients.plan(
                mode=agg.mode, buffer_size=spec.buffer_size, policy=spec.policy
            )
        except (RunError, AsyncPrivacyError) as error:
            return str(error)
        return None

    def _attach(self, run: Run) -> bool:
        """Hold ``run``'s state (new, unless it is the run already held); False while there
        is no accepted model to lease."""
        if self.run_id == run.run_id:
            return True
        current = self._orch.store.current_model()
        if current is None:
            return False
        self.detach("another run started")
        self.spec = AsyncSpec.parse(run.async_params or "")
        self.masked = run.mode in BUFFER_ROUND_MODES  # ckks too: appliance/ckks_buffer.py
        self.dp = self._orch.privacy.clients.plan(
            mode=run.mode, buffer_size=self.spec.buffer_size, policy=self.spec.policy
        )
        self.dimension = Layout.of(self._orch.store.load_model(current.version)).dimension
        self.run_id = run.run_id
        return True

    def detach(self, reason: str) -> None:
        """Forget the run's state; its unpublished buffers' rounds are aborted (recorded)."""
        for buffer in [*self.full, *([self.filling] if self.filling else [])]:
            with contextlib.suppress(StoreError):
                self._orch.store.set_round_status(buffer.number, "aborted", reason)
            self._orch.privacy.clients.abandon(buffer.number)  # never released: no cost
            if isinstance(buffer, MaskedBuffer):  # its members wait for its round: tell them
                self._tell(buffer, list(buffer.members), f"buffer aborted: {reason}")
        self.run_id = ""
        self.spec = None
        self.dp = None
        self._told_spent.clear()
        self.filling = None
        self.full.clear()
        self.leases.clear()
        self._by_client.clear()
        self._spent.clear()

    def _open_buffer(self, run: Run) -> None:
        """Open the next buffer (a round of the run, counted against its budget) when none is
        filling, the budget allows and fewer than ``max_open_buffers`` are open."""
        spec = self.spec
        assert spec is not None
        if self.filling is not None or run.budget_spent:
            return
        if len(self.full) >= spec.max_open_buffers:
            return
        orch = self._orch
        round_id = orch._next_round_id()
        mode = run.mode
        number, run = orch.runs.open_round(
            run, lambda: orch.store.open_round(mode, round_id, run=run.row)
        )
        if self.masked:  # names and base versions only: the vectors stay masked
            self.filling = MaskedBuffer(
                number=number,
                round_id=round_id,
                run_id=run.run_id,
                index=run.rounds_done,
                size=spec.buffer_size,
            )
        else:
            self.filling = AsyncBuffer(
                number=number,
                round_id=round_id,
                run_id=run.run_id,
                index=run.rounds_done,  # counted at open: this buffer's 1-based index
                size=spec.buffer_size,
                dimension=self.dimension,
            )
        _log.info("run %s: buffer %d open (round %d)", run.run_id, run.rounds_done, number)

    def _lease_to_polling(self, run: Run) -> None:
        """A lease on the current version to every ready client polling now that is not in
        the filling buffer."""
        orch = self._orch
        buffer = self.filling
        if buffer is None or orch._awaiting_approval(run):
            return
        current = orch.store.current_model()
        if current is None:
            return
        for name in orch.ready_clients():
            link = orch._links.get(name)
            if link is None or link.polling == 0 or self._waiting(name):
                continue
            if run.mode == "ckks" and name == orch.config.ckks.key_holder:
                continue  # it trains nothing: it joins each buffer's round as key holder
            if not self._has_budget(name, run, current.version):
                continue
            orch._send_to(name, pb.Task(round_start=self._lease(name, current, run, buffer)))

    def _starved(self, run: Run) -> str | None:
        """DP: why no buffer can fill any more (fewer than K clients with budget left), once
        nothing is pending; None otherwise. Spending only grows, so waiting would not help."""
        spec, buffer = self.spec, self.filling
        if self.dp is None or spec is None or buffer is None or buffer.members or self.full:
            return None
        names = self._orch._identity_keys()
        left = self._orch.privacy.clients.admissible(names, self.dp)
        if len(left) >= spec.buffer_size:
            return None
        return (
            f"privacy budget: only {len(left)} client(s) can still contribute, a buffer needs "
            f"{spec.buffer_size}"
        )

    def _has_budget(self, name: str, run: Run, version: int) -> bool:
        """DP: whether ``name`` may contribute once more; a client whose budget is spent gets
        no lease, and one RunEnd with the reason (its part in the run is over)."""
        if self.dp is None:
            return True
        try:
            self._orch.privacy.clients.admit(name, self.dp)
        except ClientBudgetExhaustedError as error:
            if name not in self._told_spent:
                self._told_spent.add(name)
                end = pb.RunEnd(
                    run_id=run.run_id, status="stopped", reason=str(error), model_version=version
                )
                self._orch._send_to(name, pb.Task(run_end=end))
            return False
        return True

    def _waiting(self, name: str) -> bool:
        """In the filling buffer, or in a full one not yet published (masked: waiting for or
        inside its round): no new lease until that buffer closes. A lease handed out before
        the buffer's version is published would start every member, the fastest included,
        one version behind (measured: async diverged on non-IID digits at K = 5;
        benchmarks/RESULTS.md, issue 21), and in masked mode it would interrupt the member's
        running protocol."""
        if self.filling is not None and name in self.filling.members:
            return True
        return any(name in b.members for b in self.full)

    def _lease(
        self, name: str, current, run: Run, buffer: AsyncBuffer | MaskedBuffer
    ) -> pb.RoundStart:
        spec = self.spec
        assert spec is not None
        orch = self._orch
        lease = Lease(secrets.token_bytes(32), name, current.version, orch._clock())
        self.leases[lease.lease_id] = lease
        held = self._by_client.setdefault(name, collections.OrderedDict())
        held[lease.lease_id] = None
        while len(held) > LEASES_PER_CLIENT:
            old, _ = held.popitem(last=False)
            self.leases.pop(old, None)
        agg = orch.config.aggregation
        key = orch._identity_keys()[name]
        start = pb.RoundStart(
            round_number=buffer.number,
            round_id=lease.lease_id,
            mode=run.mode,
            model_version=current.version,
            client_index=1,
            participants=[pb.Participant(index=1, name=name, identity_key=key)],
            vector_length=self.dimension,
            clip=agg.clip,
            max_clients=spec.buffer_size,
            model_sha256=current.sha256,
            contribution_weight=orch.config.contribution_weight(name),
            roster=orch.roster_gate.view().signed,
            run_id=run.run_id,
            run_round=buffer.index,
            run_rounds=run.rounds,
            hyperparameters_json=run.hyperparameters,
            asynchronous=True,
            buffer_number=buffer.index,
            async_params=spec.wire(),
        )
        if self.dp is not None and not self.masked:  # the shim clips, adds its share, weight 1
            start.privacy.CopyFrom(self.dp.params())  # masked: the buffer's round carries them
        return start

    async def _publish(self, buffer: AsyncBuffer, run: Run) -> None:
        """The buffer's weighted mean through the round publish path (the oldest full first,
        so versions follow buffers in order)."""
        orch = self._orch
        buffer.publishing = True
        current = orch.store.current_model()
        assert current is not None
        weights = orch.store.load_model(current.version)
        layout = Layout.of(weights)
        orch.store.record_phase(buffer.number, "update", len(buffer.members), [])
        try:
            aggregate = await asyncio.to_thread(buffer.aggregate)
            refusal = self._charge(buffer, run)  # DP: every member's ε, before the release
            if refusal is not None:
                outcome = orch._finish_aborted(buffer.number, [], buffer.round_id, refusal)
            else:
                outcome = await orch._publish(
                    buffer, [], aggregate, weights, layout, current.version
                )
        finally:
            self.full.popleft()
        orch.history.append(outcome)
        orch.metrics.rounds.labels(outcome.outcome).inc()
        _log.info(
            "run %s: buffer %d %s (version %s)",
            run.run_id,
            buffer.index,
            outcome.outcome,
            outcome.model_version,
        )
        self._wake.set()

    def _charge(self, buffer: AsyncBuffer, run: Run) -> str | None:
        """Charge every member's ε for this buffer before it is released; the reason the
        buffer is aborted instead (a member past its budget, fewer than K), else None."""
        if self.dp is None:
            return None
        ledger = self._orch.privacy.clients
        weights = {name: c.weight for name, c in buffer.members.items()}
        try:
            ledger.record(
                self.dp,
                round_number=buffer.number,
                run_id=run.run_id,
                buffer_index=buffer.index,
                weights=weights,
            )
        except (AsyncPrivacyError, ClientBudgetExhaustedError) as error:
            ledger.abandon(buffer.number)
            return f"privacy: {error}"
        return None

    # ------------------------------------------------------------------------ uploads

    def check_upload(self, name: str, header: pb.UploadHeader) -> int:
        """Validate a header before its data is read; returns the byte limit."""
        kind = REGISTRATION_KIND if self.masked else UPDATE_KIND
        if header.kind != kind:
            what = "registrations (the update goes masked or encrypted into its buffer's round)"
            raise UploadRefusedError(
                "INVALID_ARGUMENT",
                f"this asynchronous run takes {what if self.masked else 'updates'}, "
                f"not {header.kind!r}",
            )
        self._lease_of(name, bytes(header.round_id))
        limit = 0 if self.masked else 4 * self.dimension
        if header.total_bytes > limit:
            raise UploadRefusedError(
                "RESOURCE_EXHAUSTED", f"declared size {header.total_bytes} exceeds {limit} bytes"
            )
        if header.metadata_json:
            try:
                meta = json.loads(header.metadata_json)
            except (ValueError, RecursionError):
                raise UploadRefusedError("INVALID_ARGUMENT", "metadata_json is not JSON") from None
            if not isinstance(meta, dict) or len(header.metadata_json) > MAX_METADATA_CHARS:
                raise UploadRefusedError(
                    "INVALID_ARGUMENT", "metadata_json must be a small JSON object"
                )
        return limit

    async def submit(
        self, name: str, header: pb.UploadHeader, payload: bytes | bytearray, *, off_loop: bool
    ) -> pb.AsyncReceipt:
        """Take one update into the filling buffer (call under the orchestrator's lock);
        UploadRefusedError with the reason the client is told. The checks and bookkeeping
        run on the event loop; with ``off_loop`` the O(d) check-and-add runs in a worker
        thread, so polls keep being served while a large update is added."""
        spec = self.spec
        assert spec is not None
        self.check_upload(name, header)
        if len(payload) != header.total_bytes:
            raise UploadRefusedError(
                "INVALID_ARGUMENT",
                f"received {len(payload)} bytes, header declared {header.total_bytes}",
            )
        lease = self._lease_of(name, bytes(header.round_id))
        self._check_base(name, lease, header.base_version)
        current = self._orch.store.current_model()
        assert current is not None
        try:
            tau = staleness(current.version, lease.version)
            weight = spec.policy.weight(tau)
        except StaleUpdateError as error:
            self._spend(name, lease, 0)
            raise UploadRefusedError(
                "FAILED_PRECONDITION", f"stale update refused: {error}"
            ) from None
        buffer = self.filling
        if buffer is None:
            raise UploadRefusedError(
                "FAILED_PRECONDITION",
                f"no buffer of run {self.run_id} is filling ({len(self.full)} full, waiting to "
                "be published, or the run's budget is spent): poll for a new task",
            )
        if isinstance(buffer, MaskedBuffer):
            registration = Registration(name, lease.version, tau)  # metadata: with its keys
            self._admit(name, lease, header)  # DP: budget left for one more buffer
            buffer.register(registration)
            if self.dp is not None:  # charged at the floor until its round is recorded
                self._orch.privacy.clients.join(name, buffer.number, self.dp)
            self._spend(name, lease, buffer.index)
            self._close_if_full(buffer)
            return self._receipt(buffer, lease, current.version, tau, weight, 0.0)
        contribution = Contribution(name, lease.version, tau, weight, float(header.weight))
        self._admit(name, lease, header)
        if off_loop:
            await asyncio.to_thread(buffer.add, name, payload, contribution, header.metadata_json)
            if buffer is not self.filling:  # the run stopped meanwhile: its buffers are gone
                raise UploadRefusedError("FAILED_PRECONDITION", f"run {self.run_id or ''} ended")
        else:
            buffer.add(name, payload, contribution, header.metadata_json)
        if self.dp is not None:  # charged at the plan's floor until the buffer is recorded
            self._orch.privacy.clients.join(name, buffer.number, self.dp)
        self._spend(name, lease, buffer.index)
        self._close_if_full(buffer)
        return self._receipt(buffer, lease, current.version, tau, weight, contribution.weight)

    def _admit(self, name: str, lease: Lease, header: pb.UploadHeader) -> None:
        """DP: weight 1 (a fixed-sensitivity sum, as the shim sends), and budget left for one
        more contribution; UploadRefusedError with the reason otherwise (the lease is spent)."""
        if self.dp is None:
            return
        if header.weight != 1.0 and not self.masked:  # masked: the ring's count is 1 each
            raise UploadRefusedError(
                "INVALID_ARGUMENT",
                f"under DP every update has weight 1 (a fixed-sensitivity sum), not "
                f"{header.weight:g}; nothing was added",
            )
        try:
            self._orch.privacy.clients.admit(name, self.dp)
        except ClientBudgetExhaustedError as error:
            self._spend(name, lease, 0)
            raise UploadRefusedError("FAILED_PRECONDITION", str(error)) from None

    def _close_if_full(self, buffer: AsyncBuffer | MaskedBuffer) -> None:
        if buffer.full:
            self.full.append(buffer)
            self.filling = None
            self._open_buffer(self._orch.runs.get(self.run_id))  # no gap for the next update
            self._wake.set()

    @staticmethod
    def _receipt(
        buffer: AsyncBuffer | MaskedBuffer,
        lease: Lease,
        current: int,
        tau: int,
        s: float,
        weight: float,
    ) -> pb.AsyncReceipt:
        """What the client is told; for a masked registration, the round id to wait for
        (its staleness then is the one at registration: the round's transcript fixes the
        final one from its parent, and ``weight`` is 0: the client's own is never seen)."""
        return pb.AsyncReceipt(
            buffer_number=buffer.index,
            round_number=buffer.number,
            base_version=lease.version,
            current_version=current,
            staleness=tau,
            staleness_weight=s,
            weight=weight,
            buffered=len(buffer.members),
            buffer_size=buffer.size,
            buffer_round_id=buffer.round_id if isinstance(buffer, MaskedBuffer) else b"",
        )

    # -------------------------------------------------------------- masked buffers

    async def _run_buffer(self, buffer: MaskedBuffer, run: Run) -> None:
        """One full masked buffer's secure-aggregation round, on the current version as
        parent. Members past the maximum staleness by now are left out and told; with too
        few left for the round's minimum the buffer is aborted (nothing revealed)."""
        spec = self.spec
        assert spec is not None
        orch = self._orch
        buffer.publishing = True
        try:
            current = orch.store.current_model()
            assert current is not None
            stale = {
                name: r
                for name, r in buffer.members.items()
                if not _fresh_enough(spec, current.version, r.base_version)
            }
            if stale:
                reason = (
                    f"stale by the time buffer {buffer.index} ran: based on a version more than "
                    f"{spec.policy.max_staleness} behind {current.version}; train on the "
                    "current model"
                )
                self._tell(buffer, list(stale), reason)
                orch.store.audit.append(
                    "async_members_stale",
                    {"round": buffer.number, "buffer": buffer.index, "clients": sorted(stale)},
                )
            bases = {n: r.base_version for n, r in buffer.members.items() if n not in stale}
            floor = self._member_floor()
            if len(bases) < floor:
                outcome = self._abort(
                    buffer,
                    list(bases),
                    f"buffer {buffer.index}: {len(bases)} members left, below the "
                    f"{floor} a masked buffer needs; nothing was revealed or published",
                )
            else:
                plan = BufferPlan(
                    number=buffer.number,
                    round_id=buffer.round_id,
                    run_id=buffer.run_id,
                    index=buffer.index,
                    size=buffer.size,
                    bases=bases,
                    policy=spec.policy,
                    params=spec.wire(),
                )
                outcome = await orch.run_buffer_round(plan, run)
        finally:
            if self.full and self.full[0] is buffer:
                self.full.popleft()
            # DP: a published buffer's survivors were charged in its round (record_masked
            # cleared its pending charges); an aborted one never released anything.
            orch.privacy.clients.abandon(buffer.number)
        orch.history.append(outcome)
        orch.metrics.rounds.labels(outcome.outcome).inc()
        _log.info(
            "run %s: masked buffer %d %s (version %s)",
            run.run_id,
            buffer.index,
            outcome.outcome,
            outcome.model_version,
        )
        self._wake.set()

    def _member_floor(self) -> int:
        """The fewest members a masked buffer's round may start with: its K floor."""
        config = self._orch.config
        agg = config.aggregation
        ckks = config.ckks.min_contributors if agg.mode == "ckks" else 0  # the key holder's m
        return max(
            MIN_MASKED_PARTIES, agg.min_clients, self._orch.governing_policy().minimum_sum, ckks
        )

    def _abort(self, buffer: MaskedBuffer, names: list[str], reason: str) -> RoundOutcome:
        from sealagg.appliance.orchestrator import RoundOutcome

        _log.warning("run %s: %s", buffer.run_id, reason)
        self._orch.store.set_round_status(buffer.number, "aborted", reason)
        self._tell(buffer, names, reason)
        return RoundOutcome(buffer.number, "aborted", reason, None, (), tuple(sorted(names)))

    def _tell(self, buffer: MaskedBuffer, names: list[str], reason: str) -> None:
        """A RoundEnd naming the buffer's round, to members waiting for it (aborted)."""
        end = pb.RoundEnd(round_id=buffer.round_id, outcome=pb.RoundEnd.ABORTED, reason=reason)
        for name in names:
            self._orch._send_to(name, pb.Task(round_end=end))

    def _lease_of(self, name: str, lease_id: bytes) -> Lease:
        lease = self.leases.get(lease_id)
        if lease is not None and lease.client == name:
            return lease
        spent = self._spent.get(name, {}).get(lease_id)
        if spent is not None:
            where = f"its update joined buffer {spent}" if spent else "its update was refused"
            raise UploadRefusedError(
                "ALREADY_EXISTS", f"this lease was already used ({where}); poll for a new task"
            )
        raise UploadRefusedError(
            "FAILED_PRECONDITION",
            f"run {self.run_id} issued no open lease with this id to {name}: an update is "
            "submitted under the lease that named its base version (poll for a task)",
        )

    def _check_base(self, name: str, lease: Lease, claimed: int) -> None:
        """A claimed base version must exist and be the lease's (0: the lease's)."""
        if not claimed or claimed == lease.version:
            return
        try:
            self._orch.store.model_version(claimed)
        except (StoreError, ValueError, OverflowError):
            raise UploadRefusedError(
                "NOT_FOUND", f"base version {claimed} does not exist; nothing was added"
            ) from None
        raise UploadRefusedError(
            "FAILED_PRECONDITION",
            f"base version {claimed} was never leased to {name} under this lease (it names "
            f"version {lease.version}); nothing was added",
        )

    def _spend(self, name: str, lease: Lease, buffer_index: int) -> None:
        self.leases.pop(lease.lease_id, None)
        self._by_client.get(name, {}).pop(lease.lease_id, None)
        spent = self._spent.setdefault(name, collections.OrderedDict())
        spent[lease.lease_id] = buffer_index
        while len(spent) > LEASES_PER_CLIENT:
            spent.popitem(last=False)

    def status(self) -> dict | None:
        """For ``sealagg status``: the filling buffer, full buffers and open leases (counts)."""
        if not self.attached or self.spec is None:
            return None
        filling = self.filling
        return {
            "run": self.run_id,
            "masked": self.masked,
            "buffer_size": self.spec.buffer_size,
            "filling": None
            if filling is None
            else {
                "buffer": filling.index,
                "round": filling.number,
                "updates": len(filling.members),
            },
            "full": [b.index for b in self.full],
            "leases": len(self.leases),
        }


def _fresh_enough(spec: AsyncSpec, current: int, base: int) -> bool:
    """Within the run's maximum staleness (crypto/staleness.py, the one rule)."""
    try:
        spec.policy.check(staleness(current, base))
    except StaleUpdateError:
        return False
    return True
