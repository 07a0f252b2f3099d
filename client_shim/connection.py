"""The client's channel to the appliance: mutual TLS from the client kit, chunked transfers."""

from __future__ import annotations

import hashlib
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence

import grpc

from sealagg.appliance.kit import ClientKit, KitMismatchError
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire import sealagg_pb2_grpc as pb_grpc
from sealagg.attest import AttestationError
from sealagg.client_shim.errors import ApplianceUnavailableError

CHUNK_BYTES = 1 << 20
MAX_MESSAGE_BYTES = 2 * 1024 * 1024
INSECURE_NAME_HEADER = "sealagg-insecure-client"

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
        retry_seconds: float = 120.0,
        allow_insecure_attester: bool | None = None,
    ) -> None:
        """``allow_insecure_attester``: accept an appliance whose evidence comes from the
        INSECURE software attester (development). The data owner's own choice, never the
        kit's or the appliance's; None reads ``SEALAGG_ALLOW_INSECURE_ATTESTER=1`` from the
        environment, default refuse (client_shim/attestation.py)."""
        self.kit = kit
        self.allow_insecure_attester = allow_insecure_attester
        #: PEM of the attested certificate this channel trusts alone; None: the kit's CA.
        self.pinned_certificate: bytes | None = None
        self._pin_required = False  # once attested, uploads go to a pinned appliance only
        self._unary_uploads = True  # False once an older appliance answered UNIMPLEMENTED
        self.address = address or kit.address
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        if insecure:
            self._metadata: tuple[tuple[str, str], ...] = ((INSECURE_NAME_HEADER, kit.name),)
            self.channel = grpc.insecure_channel(self.address, options=options)
        else:
            kit.check_validity()  # an expired kit fails here, before any connection
            self._metadata = ()
            ca, key, cert = kit.channel_credentials_material()
            creds = grpc.ssl_channel_credentials(ca, key, cert)
            options.append(("grpc.ssl_target_name_override", kit.server_name))
            self.channel = grpc.secure_channel(self.address, creds, options=options)
        self.stub = pb_grpc.AggregatorStub(self.channel)

    def check_appliance_identity(self, timeout: float = 5.0) -> bool:
        """Raise :class:`KitMismatchError` if the appliance at our address is not the one
        this kit was issued for (its certificate does not chain to the kit's CA or names
        another host). Returns False if nothing answers yet, True if the identity checked out.

        A plain TLS handshake with no client certificate and no request: nothing of ours is
        sent, and a wrong kit fails at once instead of after the whole retry period.
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

    def pin_server_certificate(self, certificate_pem: bytes) -> None:
        """Reconnect trusting only this appliance certificate (attested mode).

        The certificate is the sole trust anchor (gRPC/BoringSSL accept a CA-issued leaf as
        one; tests/shim/test_attestation.py checks it), so every later handshake on this channel
        must present exactly it: the session key is the attested one, not merely CA-issued.
        """
        _, key, cert = self.kit.channel_credentials_material()
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.ssl_target_name_override", self.kit.server_name),
        ]
        creds = grpc.ssl_channel_credentials(certificate_pem, key, cert)
        old, self.channel = self.channel, grpc.secure_channel(self.address, creds, options=options)
        self.stub = pb_grpc.AggregatorStub(self.channel)
        self._metadata = ()
        self.pinned_certificate, self._pin_required = bytes(certificate_pem), True
        old.close()

    def unpin(self) -> None:
        """Back to the kit's CA-trusted channel: the pinned certificate stopped answering
        (e.g. the attested appliance restarted with a new in-memory key, or a relay sits in
        between). Uploads stay refused until a freshly verified certificate is pinned."""
        if self.pinned_certificate is None:
            return
        ca, key, cert = self.kit.channel_credentials_material()
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.ssl_target_name_override", self.kit.server_name),
        ]
        creds = grpc.ssl_channel_credentials(ca, key, cert)
        old, self.channel = self.channel, grpc.secure_channel(self.address, creds, options=options)
        self.stub = pb_grpc.AggregatorStub(self.channel)
        self.pinned_certificate = None
        old.close()

    def wait_until_ready(self, timeout: float, *, backoff: float = 0.5) -> None:
        """Retry with exponential backoff until the appliance answers, or raise clearly."""
        deadline = time.monotonic() + timeout
        delay = backoff
        while True:
            try:
                grpc.channel_ready_future(self.channel).result(timeout=min(delay, 5.0))
                return
            except grpc.FutureTimeoutError:
                if time.monotonic() >= deadline:
                    raise ApplianceUnavailableError(
                        f"the appliance at {self.address} did not answer within {timeout:.0f} s"
                    ) from None
                delay = min(delay * 2, 5.0)

    def get_task(self, wait_seconds: float) -> pb.Task:
        """The next task; while the appliance is unreachable, retry with backoff."""
        delay, began = 0.25, time.monotonic()
        while True:
            try:
                return self.stub.GetTask(
                    pb.TaskRequest(wait_seconds=wait_seconds),
                    timeout=wait_seconds + self.timeout,
                    metadata=self._metadata,
                )
            except grpc.RpcError as error:
                # A silent network (partition, dead route) shows as DEADLINE_EXCEEDED: a
                # healthy appliance always answers a poll within wait_seconds.
                transient = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                if error.code() not in transient or (
                    time.monotonic() - began >= self.retry_seconds
                ):
                    raise
                if error.code() == grpc.StatusCode.UNAVAILABLE and self.pinned_certificate:
                    _log.warning("%s: the attested appliance stopped answering", self.kit.name)
                    self.unpin()  # polls may go on; uploads wait for a new attestation
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

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
        acknowledgement may carry the next task (``SubmitAck.next``).
        """
        parts = [memoryview(p).cast("B") for p in _buffers(payload)]
        header.total_bytes = sum(len(p) for p in parts)
        delay, attempts = 0.25, 0
        while True:
            remaining = deadline_unix - clock()
            timeout = self.timeout if not deadline_unix else max(1.0, min(self.timeout, remaining))
            try:
                return self._send_once(header, parts, timeout + header.wait_seconds)
            except grpc.RpcError as error:
                code = error.code()
                if attempts and code == grpc.StatusCode.ALREADY_EXISTS:
                    return pb.SubmitAck(accepted=True, detail="accepted by an earlier attempt")
                if code not in RESUBMIT_ON or clock() + delay >= deadline_unix:
                    raise
                attempts += 1
                _log.warning(
                    "%s: upload for phase %d failed (%s); sending it again (attempt %d)",
                    self.kit.name,
                    header.phase,
                    code.name,
                    attempts + 1,
                )
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

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
        it against the kit's pinned authority."""
        reply = self.stub.GetRoster(
            pb.RosterRequest(known_version=known_version),
            timeout=self.timeout,
            metadata=self._metadata,
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
        for chunk in stream:
            if chunk.WhichOneof("kind") == "header":
                header = chunk.header
            else:
                parts.append(chunk.data)
        data = b"".join(parts)
        if header is None or len(data) != header.total_bytes:
            raise ConnectionError("model download incomplete")
        if hashlib.sha256(data).hexdigest() != header.sha256:
            raise ConnectionError("model download does not match its SHA-256")
        return header.version, data

    def close(self) -> None:
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
