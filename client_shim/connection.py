"""The client's channel to the appliance: mutual TLS from the client kit, chunked transfers."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import grpc
import stamina

from sealagg.appliance.kit import ClientKit, KitMismatchError
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire import sealagg_pb2_grpc as pb_grpc
from sealagg.attest import AttestationError
from sealagg.client_shim.errors import (
    AccessRefusedError,
    ApplianceMismatchError,
    ApplianceUnavailableError,
)
from sealagg.client_shim.presence import PresenceKeeper
from sealagg.client_shim.renewal import renew_on_connect

CHUNK_BYTES = 1 << 20
MAX_MESSAGE_BYTES = 2 * 1024 * 1024
INSECURE_NAME_HEADER = "sealagg-insecure-client"
#: How long a client keeps trying while the appliance cannot be reached, by default (at
#: start and mid-run alike): long enough for an appliance restart or a short network outage.
DEFAULT_MAX_DOWNTIME = 120.0

#: Codes under which the appliance answered but refused *this client*: no retry can help.
REFUSED = frozenset({grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED})
#: Poll failures that mean "the appliance is down or unreachable": retried for max_downtime.
#: A silent network (partition, dead route) shows as DEADLINE_EXCEEDED: a healthy appliance
#: always answers a poll within wait_seconds.
DOWNTIME = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

#: gRPC's own retry policy, for the short idempotent calls (model download, roster, refusal
#: report): a refused connection during an appliance restart is retried inside the channel,
#: with backoff, no code of ours. The long waits (polls through a downtime, resubmits until a
#: phase deadline) stay with stamina: gRPC caps a policy at 5 attempts and cannot tell a
#: refused client certificate from a restarting appliance.
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": "sealagg.v1.Aggregator", "method": m}
                    for m in ("DownloadModel", "GetRoster", "ReportRefusal")
                ],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.25s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)

#: stamina's backoff between retries: 0.25 s doubling to 5 s, plus up to 0.5 s of jitter (so
#: clients that lost the appliance together do not all come back in the same instant).
BACKOFF = {"wait_initial": 0.25, "wait_max": 5.0, "wait_jitter": 0.5}

T = TypeVar("T")

#: Upload failures that mean "this attempt did not land (or its answer was lost)": the same
#: upload may be sent again while the phase is open. Sending the same bytes twice is safe:
#: the appliance answers ALREADY_EXISTS to a duplicate and keeps the first.
RESUBMIT_ON = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
    }
)

_log = logging.getLogger("sealagg.client")

Buffer = bytes | bytearray | memoryview
#: One buffer, or a list/tuple of buffers sent back to back as one upload.
Payload = Buffer | list[Buffer] | tuple[Buffer, ...]


class Connection:
    """A gRPC channel authenticated by the kit's client certificate."""

    def __init__(
        self,
        kit: ClientKit,
        *,
        address: str | None = None,
        insecure: bool = False,
        timeout: float = 60.0,
        max_downtime: float = DEFAULT_MAX_DOWNTIME,
        retry_seconds: float | None = None,
        allow_insecure_attester: bool | None = None,
    ) -> None:
        """``max_downtime``: how many seconds in a row the appliance may be unreachable
        before a poll gives up with :class:`ApplianceUnavailableError` (``retry_seconds`` is
        its older name). ``allow_insecure_attester``: accept an appliance whose evidence
        comes from the INSECURE software attester (development). The data owner's own choice,
        never the kit's or the appliance's; None reads ``SEALAGG_ALLOW_INSECURE_ATTESTER=1``
        from the environment, default refuse (client_shim/attestation.py)."""
        if not insecure:  # within 30 days of expiry: a new certificate, same identity
            kit = renew_on_connect(kit, address=address)
        self.kit = kit
        self.allow_insecure_attester = allow_insecure_attester
        #: PEM of the attested certificate this channel trusts alone; None: the kit's CA.
        self.pinned_certificate: bytes | None = None
        self._pin_required = False  # once attested, uploads go to a pinned appliance only
        self._unary_uploads = True  # False once an older appliance answered UNIMPLEMENTED
        self.address = address or kit.address
        self.timeout = timeout
        self.max_downtime = float(max_downtime if retry_seconds is None else retry_seconds)
        self.insecure = insecure
        #: stamina's backoff between attempts (jittered exponential); tests may shrink it.
        self.backoff = dict(BACKOFF)
        #: The live Presence stream (issue 25), once a participant starts it; None before.
        self.presence: PresenceKeeper | None = None
        self.closed = False
        if insecure:
            self._metadata: tuple[tuple[str, str], ...] = ((INSECURE_NAME_HEADER, kit.name),)
            self.channel = grpc.insecure_channel(self.address, options=_options(None))
        else:
            kit.check_validity()  # an expired kit fails here, before any connection
            self._metadata = ()
            self.channel = self._secure_channel(kit.ca_cert_pem)
        self.stub = pb_grpc.AggregatorStub(self.channel)

    @property
    def retry_seconds(self) -> float:
        """The older name of :attr:`max_downtime`."""
        return self.max_downtime

    def _secure_channel(self, trusted_pem: bytes, *, own_connection: bool = False) -> grpc.Channel:
        _, key, cert = self.kit.channel_credentials_material()
        creds = grpc.ssl_channel_credentials(trusted_pem, key, cert)
        options = _options(self.kit.server_name, own_connection=own_connection)
        return grpc.secure_channel(self.address, creds, options=options)

    def presence_channel(self) -> grpc.Channel:
        """A channel for the Presence stream alone, trusting what the calls' channel trusts
        now (the pinned attested certificate, else the kit's CA).

        Its own TCP connection: a reset of the connection that carries an upload (which the
        upload's resubmission survives) does not count this client as vanished, and a large
        upload never queues a heartbeat behind it. A dead process closes both."""
        if self.insecure:
            return grpc.insecure_channel(self.address, options=_options(None, own_connection=True))
        trusted = self.pinned_certificate or self.kit.ca_cert_pem
        return self._secure_channel(trusted, own_connection=True)

    def check_appliance_identity(self, timeout: float = 5.0) -> bool:
        """Raise :class:`KitMismatchError` if the appliance at our address is not the one
        this kit was issued for (its certificate does not chain to the kit's CA or names
        another host). Returns False if nothing answers yet, True if the identity checked out.

        A plain TLS handshake with no client certificate and no request: nothing of ours is
        sent, and a wrong kit fails at once instead of after the whole retry period. Only
        run after a failure (the appliance logs the certificate-less handshake it refuses).
        """
        host, _, port = self.address.rpartition(":")
        context = ssl.create_default_context(cadata=self.kit.ca_cert_pem.decode("ascii"))
        context.set_alpn_protocols(["h2"])
        try:
            with (
                socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as raw,
                context.wrap_socket(raw, server_hostname=self.kit.server_name),
            ):
                return True
        except ssl.SSLCertVerificationError as error:
            raise KitMismatchError(
                f"the appliance at {self.address} is not the one kit {self.kit.name!r} was "
                f"issued for ({error.verify_message}): the kit belongs to another federation, "
                "or the address is wrong. Nothing was sent."
            ) from None
        except (OSError, ValueError):
            return False  # not reachable (yet); the caller retries

    def refused_in_handshake(self, timeout: float = 5.0) -> bool:
        """True if the appliance answers (its TLS identity checks out) but will not complete
        a connection with this client's certificate: revoked, superseded or never registered.

        A refused certificate is only a closed socket to gRPC (UNAVAILABLE, like a stopped
        appliance), so we ask twice: a certificate-less handshake (is the appliance up, and
        ours?) and a fresh channel with our certificate (does it ever become ready?). A fresh
        channel has no reconnect backoff, so an appliance that just came back is not
        mistaken for a refusal. Raises :class:`KitMismatchError` for another appliance.
        """
        if self.insecure or not self.check_appliance_identity(timeout=timeout):
            return False
        probe = self._secure_channel(self.kit.ca_cert_pem)  # a pinned key may be gone: the CA
        try:
            grpc.channel_ready_future(probe).result(timeout=timeout)
            return False
        except grpc.FutureTimeoutError:
            return True
        finally:
            probe.close()

    def _refusal(self, error: grpc.RpcError) -> AccessRefusedError | None:
        """The clear error for a call the appliance refused to this client, else None."""
        if isinstance(error, ApplianceUnavailableError):
            return error if isinstance(error, AccessRefusedError) else None
        code = error.code()
        if code in REFUSED:
            said = error.details() or code.name
            return AccessRefusedError(
                f"the appliance at {self.address} refuses client {self.kit.name!r}: {said}. "
                "Its certificate is revoked or superseded by a newer kit; ask the operator.",
                address=self.address,
                appliance_message=said,
                code=code,
            )
        try:
            refused = code == grpc.StatusCode.UNAVAILABLE and self.refused_in_handshake()
        except KitMismatchError as mismatch:  # never retried: another appliance answers
            raise ApplianceMismatchError(str(mismatch)) from None
        if refused:
            return AccessRefusedError(
                f"the appliance at {self.address} answers but refuses client "
                f"{self.kit.name!r} in the TLS handshake: its certificate is revoked, "
                "superseded by a newer kit, or not registered. Ask the operator.",
                address=self.address,
                code=code,
            )
        return None

    def _named(self, error: grpc.RpcError) -> grpc.RpcError:
        """A refusal of this client as :class:`AccessRefusedError`; any other failure as is."""
        if error.code() in REFUSED:
            return self._refusal(error) or error
        return error

    def _through_downtime(self, call: Callable[[], T], what: str, limit: float | None = None) -> T:
        """Run ``call``, retrying (stamina: jittered exponential backoff) while the appliance
        is unreachable, for at most ``max_downtime`` seconds in a row. A refusal of this
        client raises :class:`AccessRefusedError` at once; running out of patience raises
        :class:`ApplianceUnavailableError` naming the address and the time waited."""
        began = time.monotonic()
        limit = self.max_downtime if limit is None else limit
        retries = stamina.retry_context(
            on=_is_downtime,
            attempts=None if limit > 0 else 1,
            timeout=limit if limit > 0 else None,
            **self.backoff,
        )
        try:
            for attempt in retries:
                with attempt:
                    if attempt.num > 1:
                        _log.info(
                            "%s: the appliance at %s is unreachable (%s); attempt %d after %.0f s "
                            "(max_downtime %g s)",
                            self.kit.name,
                            self.address,
                            what,
                            attempt.num,
                            time.monotonic() - began,
                            limit,
                        )
                    try:
                        return call()
                    except grpc.RpcError as error:
                        if error.code() == grpc.StatusCode.UNAVAILABLE and self.pinned_certificate:
                            _log.warning(
                                "%s: the attested appliance stopped answering", self.kit.name
                            )
                            self.unpin()  # polls may go on; uploads wait for a new attestation
                            raise  # retried at once on the CA-trusted channel
                        if (refused := self._refusal(error)) is not None:
                            raise refused from None
                        raise
        except grpc.RpcError as error:
            if not _is_downtime(error):
                raise
            waited = time.monotonic() - began
            raise ApplianceUnavailableError(
                f"client {self.kit.name!r} gave up on the appliance at {self.address}: "
                f"unreachable for {waited:.0f} s ({what}; last error {error.code().name}; "
                f"max_downtime={limit:g} s). Is it running and reachable from here?",
                address=self.address,
                waited=waited,
                code=error.code(),
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover - stamina always ends above

    def pin_server_certificate(self, certificate_pem: bytes) -> None:
        """Reconnect trusting only this appliance certificate (attested mode).

        The certificate is the sole trust anchor (gRPC/BoringSSL accept a CA-issued leaf as
        one; tests/shim/test_attestation.py checks it), so every later handshake on this channel
        must present exactly it: the session key is the attested one, not merely CA-issued.
        """
        old, self.channel = self.channel, self._secure_channel(certificate_pem)
        self.stub = pb_grpc.AggregatorStub(self.channel)
        self._metadata = ()
        self.pinned_certificate, self._pin_required = bytes(certificate_pem), True
        self._handover_presence()
        old.close()

    def unpin(self) -> None:
        """Back to the kit's CA-trusted channel: the pinned certificate stopped answering
        (e.g. the attested appliance restarted with a new in-memory key, or a relay sits in
        between). Uploads stay refused until a freshly verified certificate is pinned."""
        if self.pinned_certificate is None:
            return
        old, self.channel = self.channel, self._secure_channel(self.kit.ca_cert_pem)
        self.stub = pb_grpc.AggregatorStub(self.channel)
        self.pinned_certificate = None
        self._handover_presence()
        old.close()

    def start_presence(self) -> PresenceKeeper:
        """Hold the Presence stream open (one keeper per connection; started once)."""
        if self.presence is None:
            self.presence = PresenceKeeper(self).start()
        return self.presence

    def _handover_presence(self) -> None:
        """The presence stream moves to a channel with the new trust before its old one
        closes: the appliance must not see this client vanish because it pinned a certificate."""
        if self.presence is not None:
            self.presence.handover()

    def wait_until_ready(self, timeout: float) -> None:
        """Wait (up to ``timeout`` s) until the appliance answers a call of ours (a read-only
        ``GetRoster``: a poll could take a task we are not ready for).

        A wrong appliance (:class:`KitMismatchError`) or a refused certificate
        (:class:`AccessRefusedError`) fails at the first unanswered attempt, not at the end.
        """

        def ready() -> None:
            try:
                grpc.channel_ready_future(self.channel).result(timeout=min(2.0, max(timeout, 0.5)))
            except grpc.FutureTimeoutError:
                raise _NotReadyError(grpc.StatusCode.UNAVAILABLE) from None
            try:  # a connection is not access: an appliance refuses a revoked client per call
                self.stub.GetRoster(
                    pb.RosterRequest(known_version=0),
                    timeout=min(self.timeout, 10.0),
                    metadata=self._metadata,
                )
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise

        self._through_downtime(ready, "waiting for the appliance at start", limit=timeout)

    def get_task(self, wait_seconds: float) -> pb.Task:
        """The next task; while the appliance is unreachable, retry for ``max_downtime``."""
        request = pb.TaskRequest(wait_seconds=wait_seconds)
        return self._through_downtime(
            lambda: self.stub.GetTask(
                request, timeout=wait_seconds + self.timeout, metadata=self._metadata
            ),
            "polling for a task",
        )

    def submit(
        self,
        header: pb.UploadHeader,
        payload: Payload,
        *,
        deadline_unix: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> pb.SubmitAck:
        """Send one upload; if the connection is lost, send it again until ``deadline_unix``.

        ``payload`` is one buffer or a sequence of buffers sent back to back (a large vector
        goes out without being joined to its message header first). Up to one chunk travels
        in a single unary call, more as a chunk stream. With no deadline (0) there is one
        attempt. An ALREADY_EXISTS answer to a repeated attempt means an earlier attempt
        landed and only its acknowledgement was lost. With ``header.wait_seconds`` set, the
        acknowledgement may carry the next task (``SubmitAck.next``). Resubmits back off with
        stamina (jittered exponential); a refusal of this client raises
        :class:`AccessRefusedError` at once.
        """
        parts = [memoryview(p).cast("B") for p in _buffers(payload)]
        header.total_bytes = sum(len(p) for p in parts)
        budget = deadline_unix - clock() if deadline_unix else 0.0
        retries = stamina.retry_context(
            on=_is_resubmittable,
            attempts=None if budget > 0 else 1,
            timeout=budget if budget > 0 else None,
            **self.backoff,
        )
        for attempt in retries:
            with attempt:
                if attempt.num > 1:
                    _log.warning(
                        "%s: upload for phase %d failed; sending it again (attempt %d)",
                        self.kit.name,
                        header.phase,
                        attempt.num,
                    )
                remaining = deadline_unix - clock()
                timeout = (
                    self.timeout if not deadline_unix else max(1.0, min(self.timeout, remaining))
                )
                try:
                    return self._send_once(header, parts, timeout + header.wait_seconds)
                except grpc.RpcError as error:
                    code = error.code()
                    if attempt.num > 1 and code == grpc.StatusCode.ALREADY_EXISTS:
                        return pb.SubmitAck(accepted=True, detail="accepted by an earlier attempt")
                    if code in REFUSED and (refused := self._refusal(error)) is not None:
                        raise refused from None
                    raise
        raise AssertionError("unreachable")  # pragma: no cover - stamina always ends above

    def _send_once(
        self, header: pb.UploadHeader, parts: list[memoryview], timeout: float
    ) -> pb.SubmitAck:
        if self._pin_required and self.pinned_certificate is None:
            raise AttestationError(
                f"{self.kit.name}: the attested appliance's certificate no longer answers and "
                "no new one has been verified; nothing was sent"
            )
        if self._unary_uploads and header.total_bytes <= CHUNK_BYTES:
            message = pb.UploadMessage(header=header, data=b"".join(parts))
            try:
                return self.stub.SubmitMessage(message, timeout=timeout, metadata=self._metadata)
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                # An appliance from before SubmitMessage: nothing was accepted; stream instead.
                _log.info("%s: the appliance has no one-message uploads; streaming", self.kit.name)
                self._unary_uploads = False
        return self.stub.Submit(_chunks(header, parts), timeout=timeout, metadata=self._metadata)

    def get_roster(self, known_version: int) -> bytes:
        """The signed roster the appliance holds (b"" if none); unverified: the caller checks
        it against the kit's pinned authority.

        Every round starts with this call, so it rides through downtime as polls do (for
        ``max_downtime``): a client started before its appliance, or across a restart, waits
        for it instead of failing after gRPC's five quick attempts."""
        reply = self._through_downtime(
            lambda: self.stub.GetRoster(
                pb.RosterRequest(known_version=known_version),
                timeout=self.timeout,
                metadata=self._metadata,
            ),
            "roster",
        )
        return bytes(reply.roster)

    def report_refusal(self, round_id: bytes, code: str, detail: str) -> None:
        """Tell the appliance this client refused a round (code and reason, nothing secret)."""
        self.stub.ReportRefusal(
            pb.RoundRefusal(round_id=round_id, code=code, detail=detail),
            timeout=min(self.timeout, 10.0),
            metadata=self._metadata,
        )

    def download_model(self, version: int = 0) -> tuple[int, bytes]:
        """A model version's safetensors bytes, checked against the announced SHA-256."""
        stream = self.stub.DownloadModel(
            pb.ModelRequest(version=version), timeout=self.timeout, metadata=self._metadata
        )
        header: pb.ModelHeader | None = None
        parts: list[bytes] = []
        try:
            for chunk in stream:
                if chunk.WhichOneof("kind") == "header":
                    header = chunk.header
                else:
                    parts.append(chunk.data)
        except grpc.RpcError as error:
            raise self._named(error) from None
        data = b"".join(parts)
        if header is None or len(data) != header.total_bytes:
            raise ConnectionError("model download incomplete")
        if hashlib.sha256(data).hexdigest() != header.sha256:
            raise ConnectionError("model download does not match its SHA-256")
        return header.version, data

    def close(self) -> None:
        self.closed = True
        if self.presence is not None:
            self.presence.stop()  # the appliance sees the stream end now
        self.channel.close()


def _buffers(payload: Payload) -> Sequence[Buffer]:
    """A list or tuple is several buffers; anything else is one (any buffer-protocol object)."""
    return payload if isinstance(payload, list | tuple) else (payload,)


def _chunks(header: pb.UploadHeader, parts: Sequence[memoryview]) -> Iterator[pb.UploadChunk]:
    """The header, then the parts' bytes in chunks of ``CHUNK_BYTES`` (across part borders)."""
    yield pb.UploadChunk(header=header)
    pending: list[memoryview] = []
    size = 0
    for part in parts:
        start = 0
        while start < len(part):
            piece = part[start : start + CHUNK_BYTES - size]
            pending.append(piece)
            size += len(piece)
            start += len(piece)
            if size == CHUNK_BYTES:
                yield pb.UploadChunk(data=b"".join(pending))
                pending, size = [], 0
    if size:
        yield pb.UploadChunk(data=b"".join(pending))


def _options(server_name: str | None, *, own_connection: bool = False) -> list[tuple[str, object]]:
    """Channel options: message limits, gRPC's retry policy for the short idempotent calls,
    and a reconnect backoff short enough that a client notices a restarted appliance within
    seconds (gRPC's default grows to 120 s). ``own_connection``: never share a TCP
    connection with another channel (gRPC pools them by target and options otherwise)."""
    options: list[tuple[str, object]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", _SERVICE_CONFIG),
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.min_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 5000),
    ]
    if server_name is not None:
        options.append(("grpc.ssl_target_name_override", server_name))
    if own_connection:
        options.append(("grpc.use_local_subchannel_pool", 1))
    return options


class _NotReadyError(grpc.RpcError):
    """The channel did not become ready in one wait (internal: retried like UNAVAILABLE)."""

    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__("the appliance did not answer")
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "the appliance did not answer"


#: Our own verdicts: also ``grpc.RpcError`` (for older callers), never retried.
_FINAL = (ApplianceUnavailableError, ApplianceMismatchError)


def _is_downtime(error: Exception) -> bool:
    """stamina's hook: retry a poll while the appliance seems down, never a refusal."""
    return (
        isinstance(error, grpc.RpcError)
        and not isinstance(error, _FINAL)
        and error.code() in DOWNTIME
    )


def _is_resubmittable(error: Exception) -> bool:
    """stamina's hook: an upload that may not have landed is sent again (never a refusal)."""
    return (
        isinstance(error, grpc.RpcError)
        and not isinstance(error, _FINAL)
        and error.code() in RESUBMIT_ON
    )
