"""gRPC handlers: identity from the TLS certificate, chunked uploads and downloads.

Every call first establishes who is calling from the verified client
certificate (``Federation.check_peer_certificate``: CA, validity, clientAuth,
revocation), never from a message field. Uploads are size-checked from their
header before any buffer is allocated, then held to the ``[uploads]`` bounds
(:mod:`appliance.upload_limits`: uploads and bytes in flight per client, memory in
total, a whole-upload deadline from the declared size, never past the phase's
deadline); each chunk must also arrive within ``CHUNK_IDLE_SECONDS``. A refusal by
one of those bounds reaches the client with its reason and is audited under its name.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sized
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from sealagg.appliance.attestation import AttestationEndpoint, report_details
from sealagg.appliance.errors import ProvisioningError, StoreError
from sealagg.appliance.metrics import Metrics
from sealagg.appliance.orchestrator import Orchestrator
from sealagg.appliance.presence import PresenceBoard, TooManyStreamsError
from sealagg.appliance.rounds import UploadRefusedError, UploadSink
from sealagg.appliance.store import Store
from sealagg.appliance.upload_limits import UploadBudget, UploadLimitError
from sealagg.appliance.vendor_gate import EVALUATION_KIND
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire import sealagg_pb2_grpc as pb_grpc
from sealagg.attest import AttestationError

_log = logging.getLogger("sealagg.service")

CHUNK_BYTES = 1 << 20
CHUNK_IDLE_SECONDS = 30.0
#: Audit entries remembered to name each (client, bound, round, phase) refusal once.
_AUDITED_KEYS = 4096
#: Model downloads streamed at once; the others wait (bounds send buffers at any n).
DOWNLOAD_SLOTS = 8
INSECURE_NAME_HEADER = "sealagg-insecure-client"
#: Longest round id a heartbeat may name (round ids are 32 bytes; more is cut, never kept).
ROUND_ID_BYTES = 32

Identify = Callable[[grpc.aio.ServicerContext], str]


def certificate_identity(check_peer: Callable[[bytes], str]) -> Identify:
    """Identify callers by their verified TLS client certificate."""

    def identify(context: grpc.aio.ServicerContext) -> str:
        auth = context.auth_context()
        pems = auth.get("x509_pem_cert") or []
        if not pems:
            raise PermissionError("no client certificate")
        der = x509.load_pem_x509_certificate(pems[0]).public_bytes(Encoding.DER)
        try:
            return check_peer(der)
        except ProvisioningError as error:
            raise PermissionError(str(error)) from None

    return identify


def insecure_identity(context: grpc.aio.ServicerContext) -> str:
    """Development only: the caller names itself in a header. Never use in production."""
    for key, value in context.invocation_metadata() or ():
        if key == INSECURE_NAME_HEADER:
            return str(value)
    raise PermissionError(f"--insecure mode needs the {INSECURE_NAME_HEADER} header")


async def who(identify: Identify, context: grpc.aio.ServicerContext, metrics: Metrics) -> str:
    """The caller's name. With TLS, :class:`~sealagg.appliance.interceptors.PeerCheckInterceptor`
    already refused certificates that are not admitted (by name, PERMISSION_DENIED); what is
    refused here is a revocation that landed between the two checks, or an --insecure caller
    without its name header."""
    try:
        return identify(context)
    except PermissionError as error:
        metrics.refused_calls.labels("identity").inc()
        _log.warning("refused a call: %s", error)
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED, f"not a client of this federation: {error}"
        )
        raise  # unreachable: abort raises


_who = who  # its older private name (tests/e2e/test_malicious_roster.py imports it)


_STREAM_ENDED = object()


async def _presence_notices(
    board: PresenceBoard, token: int, heartbeats: AsyncIterator[pb.Heartbeat], silence: float
) -> AsyncIterator[pb.PresenceNotice]:
    """Feed heartbeats to the board and yield the notices to write, until the stream ends.

    Heartbeats are read by their own task (the stream is full duplex); a silence of
    ``silence`` seconds is reported once per silence period, and the stream stays open so the
    client can come back on it."""
    notices = board.notices(token)
    loop = asyncio.get_running_loop()
    last_beat = loop.time()

    async def read() -> None:
        nonlocal last_beat
        try:
            async for beat in heartbeats:
                last_beat = loop.time()
                board.heartbeat(token, bytes(beat.round_id[:ROUND_ID_BYTES]))
        finally:
            notices.put_nowait(_STREAM_ENDED)  # type: ignore[arg-type]

    reader = asyncio.create_task(read())
    try:
        while True:
            remaining = last_beat + silence - loop.time()
            try:
                async with asyncio.timeout(max(remaining, 0.0)):
                    notice = await notices.get()
            except TimeoutError:
                if loop.time() - last_beat >= silence:
                    board.silent(token)
                    last_beat = loop.time()  # noticed once per silence period
                continue
            if notice is _STREAM_ENDED:
                return
            yield notice
    finally:
        reader.cancel()


class AggregatorService(pb_grpc.AggregatorServicer):
    def __init__(
        self,
        orchestrator: Orchestrator,
        store: Store,
        identify: Identify,
        metrics: Metrics,
        attestation: AttestationEndpoint | None = None,
        budget: UploadBudget | None = None,
    ) -> None:
        self._orch = orchestrator
        self._store = store
        self._identify = identify
        self._metrics = metrics
        self._budget = budget or UploadBudget(orchestrator.config.uploads, metrics)
        self._downloads = asyncio.Semaphore(DOWNLOAD_SLOTS)
        self._attestation = attestation
        self._audited: set[tuple] = set()

    async def Attest(
        self, request: pb.AttestRequest, context: grpc.aio.ServicerContext
    ) -> pb.AttestReply:
        await who(self._identify, context, self._metrics)
        if self._attestation is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "this appliance has no attester configured"
            )
        endpoint = self._attestation
        try:
            items = await asyncio.to_thread(endpoint.evidence, request.nonce)
        except ValueError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except (AttestationError, OSError) as error:  # the TEE's report interface failed
            _log.error("the attester failed: %s", error)
            # Not UNAVAILABLE: over a pinned channel a client reads that as "another key".
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"the attester failed: {error}"
            )
        (fmt, evidence, certs), *more = items
        return pb.AttestReply(
            format=fmt,
            evidence=evidence,
            certificates=certs,
            tls_certificate_der=endpoint.certificate_der,
            additional=[pb.EvidenceItem(format=f, evidence=e, certificates=c) for f, e, c in more],
            collateral=await asyncio.to_thread(endpoint.collateral_bytes),
        )

    async def ReportAttestation(
        self, request: pb.AttestationReport, context: grpc.aio.ServicerContext
    ) -> pb.AttestationReportAck:
        name = await who(self._identify, context, self._metrics)
        details = report_details(
            name, request.accepted, request.format, request.reason, request.detail
        )
        self._store.audit.append("attestation_result", details)
        _log.log(
            logging.INFO if request.accepted else logging.WARNING,
            "attestation by %s: %s",
            name,
            "accepted" if request.accepted else f"REFUSED ({details['reason']})",
        )
        return pb.AttestationReportAck()

    async def GetRoster(
        self, request: pb.RosterRequest, context: grpc.aio.ServicerContext
    ) -> pb.RosterReply:
        """The installed signed roster, as the authority signed it (empty: none). Clients
        verify it against the authority key pinned in their kit: relaying it adds no trust."""
        await who(self._identify, context, self._metrics)
        return pb.RosterReply(roster=self._orch.roster_gate.view().signed)

    async def ReportRefusal(
        self, request: pb.RoundRefusal, context: grpc.aio.ServicerContext
    ) -> pb.RoundRefusalAck:
        """A client refused a round: audited, and the round goes on without it."""
        name = await who(self._identify, context, self._metrics)
        await self._orch.report_refusal(name, bytes(request.round_id), request.code, request.detail)
        return pb.RoundRefusalAck()

    async def Presence(
        self, request_iterator: AsyncIterator[pb.Heartbeat], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.PresenceNotice]:
        """Hold a client's presence stream (issue 25, :mod:`appliance.presence`): its end or
        its silence tells the orchestrator at once that the client vanished."""
        name = await who(self._identify, context, self._metrics)
        if not self._orch.is_registered(name):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"{name} does not take part in rounds"
            )
        section = self._orch.config.presence
        if not section.enabled:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "presence is turned off here")
        board = self._orch.presence
        try:
            token = board.open(name)
        except TooManyStreamsError as error:
            self._metrics.refused_calls.labels("presence_streams").inc()
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        try:  # however it ends (EOF, reset, cancelled by a dead peer): the client left
            yield pb.PresenceNotice(
                beat_seconds=section.beat_seconds, silence_seconds=section.silence_seconds
            )
            async for notice in _presence_notices(
                board, token, request_iterator, section.silence_seconds
            ):
                yield notice
        finally:
            board.close(token)

    async def GetTask(self, request: pb.TaskRequest, context: grpc.aio.ServicerContext) -> pb.Task:
        name = await who(self._identify, context, self._metrics)
        if not self._orch.is_registered(name):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"{name} does not take part in rounds"
            )
        return await self._orch.poll(name, request.wait_seconds)

    async def Submit(
        self, request_iterator: AsyncIterator[pb.UploadChunk], context: grpc.aio.ServicerContext
    ) -> pb.SubmitAck:
        name = await who(self._identify, context, self._metrics)
        header = None
        receipt = None
        try:
            with self._budget.stream(name):  # counted from its first byte, header or not
                first = await _next_chunk(request_iterator)
                if first is None or first.WhichOneof("kind") != "header":
                    raise UploadRefusedError("INVALID_ARGUMENT", "an upload starts with its header")
                header = first.header
                self._orch.check_upload(name, header)  # size and phase before allocating
                sink = self._orch.stream_sink(name, header)  # [scale] masked inputs: streamed
                phase_end = self._phase_end(header)
                async with self._budget.hold(name, header.total_bytes, phase_end):
                    payload = await self._receive(header, request_iterator, phase_end, sink)
                    receipt = await self._orch.submit(name, header, payload)
                    size = len(payload)
                    del payload  # not held while the acknowledgement waits for the next task
        except UploadRefusedError as refused:
            await self._refuse(name, refused, context, header)
        return await self._accepted(name, header, size, receipt)

    async def SubmitMessage(
        self, request: pb.UploadMessage, context: grpc.aio.ServicerContext
    ) -> pb.SubmitAck:
        name = await who(self._identify, context, self._metrics)
        header = request.header
        receipt = None
        try:
            self._orch.check_upload(name, header)
            if header.total_bytes > CHUNK_BYTES:
                raise UploadRefusedError(
                    "INVALID_ARGUMENT", "an upload over one chunk goes through Submit"
                )
            if len(request.data) != header.total_bytes:
                raise UploadRefusedError(
                    "INVALID_ARGUMENT",
                    f"upload of {len(request.data)} bytes, its header declared "
                    f"{header.total_bytes}",
                )
            # Already received whole (gRPC caps it at two chunks); counted against the same
            # per-client and memory bounds so a flood of them is refused like streams.
            with self._budget.stream(name):
                async with self._budget.hold(name, len(request.data), self._phase_end(header)):
                    receipt = await self._orch.submit(name, header, request.data)
        except UploadRefusedError as refused:
            await self._refuse(name, refused, context, header)
        return await self._accepted(name, header, len(request.data), receipt)

    def _phase_end(self, header: pb.UploadHeader) -> float | None:
        """The phase's deadline in event-loop time; None for a gate report (no phase)."""
        wall = self._orch.phase_deadline  # the orchestrator's clock is wall time (time.time)
        if header.kind == EVALUATION_KIND or wall is None:
            return None
        return asyncio.get_running_loop().time() + (wall - time.time())

    async def _refuse(
        self,
        name: str,
        refused: UploadRefusedError,
        context: grpc.aio.ServicerContext,
        header: pb.UploadHeader | None = None,
    ) -> None:
        self._metrics.refused_uploads.inc()
        _log.info("refused upload from %s: %s", name, refused.detail)
        if isinstance(refused, UploadLimitError):
            self._audit_limit(name, refused, header)
        await context.abort(getattr(grpc.StatusCode, refused.code), refused.detail)

    def _audit_limit(
        self, name: str, refused: UploadLimitError, header: pb.UploadHeader | None
    ) -> None:
        """Audit a bound's refusal under the client's name, once per (client, bound, round,
        phase): the evidence is kept, and a flood of refused calls cannot flood the log (the
        metric counts every refusal)."""
        self._metrics.upload_limit_refusals.labels(refused.limit).inc()
        round_id = bytes(header.round_id).hex() if header is not None else ""
        phase = header.phase if header is not None else -1
        key = (name, refused.limit, round_id, phase)
        if key in self._audited:
            return
        if len(self._audited) >= _AUDITED_KEYS:
            self._audited.clear()
        self._audited.add(key)
        self._store.audit.append(
            "upload_refused",
            {
                "client": name,
                "limit": refused.limit,
                "status": refused.code,
                "reason": refused.detail,
                "round_id": round_id,
                "phase": phase,
            },
        )

    async def _accepted(
        self,
        name: str,
        header: pb.UploadHeader,
        size: int,
        receipt: pb.AsyncReceipt | None = None,
    ) -> pb.SubmitAck:
        """The acknowledgement, carrying the next task if the client asked to wait for it,
        and for an asynchronous run's update its receipt (buffer, staleness, weight)."""
        self._metrics.bytes_in.inc(size)
        ack = pb.SubmitAck(accepted=True, detail="accepted")
        if receipt is not None and receipt.buffer_round_id:  # masked: registered, not sent
            ack.receipt.CopyFrom(receipt)
            ack.detail = (
                f"registered for buffer {receipt.buffer_number} ({receipt.buffered} of "
                f"{receipt.buffer_size}), {receipt.staleness} versions behind now; the update "
                "goes masked (ckks: encrypted) into the buffer's secure-aggregation round"
            )
        elif receipt is not None:
            ack.receipt.CopyFrom(receipt)
            ack.detail = (
                f"accepted into buffer {receipt.buffer_number} ({receipt.buffered} of "
                f"{receipt.buffer_size}): staleness {receipt.staleness}, weight "
                f"{receipt.staleness_weight:.6g}"
            )
        if header.wait_seconds > 0 and self._orch.is_registered(name):
            ack.next.CopyFrom(await self._orch.poll(name, header.wait_seconds))
        return ack

    async def _receive(
        self,
        header: pb.UploadHeader,
        chunks: AsyncIterator[pb.UploadChunk],
        phase_end: float | None,
        sink: UploadSink | None = None,
    ) -> bytearray | Sized:
        """The upload's bytes, within its whole-upload deadline (from now: memory granted);
        with a ``sink``, its bytes go to the sink as they arrive (same bounds and checks) and
        this is what the sink's ``finish`` returns. A stream that ends early or is refused
        is aborted: the round never counts it (appliance/scale/masked_round.py)."""
        if sink is None:
            return await self._receive_into(header, chunks, phase_end, None)
        try:
            return await self._receive_into(header, chunks, phase_end, sink)
        except BaseException:
            sink.abort()
            raise

    async def _receive_into(
        self,
        header: pb.UploadHeader,
        chunks: AsyncIterator[pb.UploadChunk],
        phase_end: float | None,
        sink: UploadSink | None,
    ) -> bytearray | Sized:
        loop = asyncio.get_running_loop()
        began = loop.time()
        allowed = self._budget.transfer_seconds(header.total_bytes)
        until = began + allowed
        by_phase = phase_end is not None and phase_end < until
        if by_phase:
            until = phase_end
        buffer = bytearray(header.total_bytes) if sink is None else None
        filled = 0
        try:
            async with asyncio.timeout_at(until):
                while (chunk := await _next_chunk(chunks)) is not None:
                    if chunk.WhichOneof("kind") != "data":
                        raise UploadRefusedError("INVALID_ARGUMENT", "only one header per upload")
                    end = filled + len(chunk.data)
                    if end > header.total_bytes:
                        raise UploadRefusedError(
                            "INVALID_ARGUMENT", "upload is longer than its header declared"
                        )
                    if buffer is not None:
                        buffer[filled:end] = chunk.data
                    else:  # forwarded as it arrives; a refusal ends the upload here
                        await sink.feed(chunk.data)
                    filled = end
        except TimeoutError:
            progress = (
                f"{filled:,} of {header.total_bytes:,} bytes after {loop.time() - began:.1f} s"
            )
            if by_phase:
                raise UploadLimitError(
                    "DEADLINE_EXCEEDED",
                    "phase_deadline",
                    f"upload not finished before the phase's deadline: {progress}",
                ) from None
            limits = self._budget.limits
            raise UploadLimitError(
                "DEADLINE_EXCEEDED",
                "upload_deadline",
                f"upload too slow: {progress}; an upload must finish within "
                f"{limits.grace_seconds:g} s + its size at {limits.min_rate:,} B/s "
                f"({allowed:.1f} s here; [uploads])",
            ) from None
        if filled != header.total_bytes:
            raise UploadRefusedError(
                "INVALID_ARGUMENT", f"upload truncated: {filled} of {header.total_bytes} bytes"
            )
        return buffer if buffer is not None else await sink.finish()

    async def DownloadModel(
        self, request: pb.ModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelChunk]:
        name = await who(self._identify, context, self._metrics)
        if request.version > 2**63 - 1:  # beyond SQLite's INTEGER: no such version
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no model version {request.version}")
        try:
            model = (
                self._store.current_model()
                if request.version == 0
                else self._store.model_version(request.version)
            )
        except StoreError as error:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
        gate = self._orch.vendor_gate  # the gate party may fetch the candidate it must evaluate
        if model is None or (
            model.status != "accepted"
            and not (gate is not None and gate.may_download(name, model.version))
            # a client asked (federated evaluation) to evaluate a candidate pending approval
            and not self._orch.evaluations.may_download(name, model.version)
        ):
            await context.abort(grpc.StatusCode.NOT_FOUND, "no accepted model version to download")
        path = Path(self._store.folder) / model.path
        size = path.stat().st_size
        yield pb.ModelChunk(
            header=pb.ModelHeader(version=model.version, total_bytes=size, sha256=model.sha256)
        )
        async with self._downloads:
            with path.open("rb") as handle:  # stream: the model is never held whole in memory
                while chunk := handle.read(CHUNK_BYTES):
                    yield pb.ModelChunk(data=chunk)
        self._metrics.bytes_out.inc(size)

    async def RenewCertificate(
        self, request: pb.RenewalRequest, context: grpc.aio.ServicerContext
    ) -> pb.RenewalReply:
        """The caller renews its own TLS certificate (appliance/renewal.py); identity from
        mutual TLS, never from the request."""
        name = await who(self._identify, context, self._metrics)
        renewer = getattr(self, "renewer", None)  # set by the Appliance (server.py)
        if renewer is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "this appliance does not renew certificates"
            )
        return await renewer.serve(name, request, context)


async def _next_chunk(chunks: AsyncIterator[pb.UploadChunk]) -> pb.UploadChunk | None:
    try:
        async with asyncio.timeout(CHUNK_IDLE_SECONDS):  # a timer, not a task per chunk
            return await anext(chunks)
    except StopAsyncIteration:
        return None
    except TimeoutError:
        raise UploadRefusedError(
            "DEADLINE_EXCEEDED", "upload stalled: no data for too long"
        ) from None
