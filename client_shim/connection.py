"""The client's channel to the appliance: mutual TLS from the client kit, chunked transfers."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import grpc

from appliance.kit import ClientKit
from appliance.wire import sealagg_pb2 as pb
from appliance.wire import sealagg_pb2_grpc as pb_grpc

CHUNK_BYTES = 1 << 20
MAX_MESSAGE_BYTES = 2 * 1024 * 1024
INSECURE_NAME_HEADER = "sealagg-insecure-client"


class ApplianceUnavailableError(ConnectionError):
    """The appliance could not be reached after the retries allowed."""


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
    ) -> None:
        self.kit = kit
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
            self._metadata = ()
            ca, key, cert = kit.channel_credentials_material()
            creds = grpc.ssl_channel_credentials(ca, key, cert)
            options.append(("grpc.ssl_target_name_override", kit.server_name))
            self.channel = grpc.secure_channel(self.address, creds, options=options)
        self.stub = pb_grpc.AggregatorStub(self.channel)

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
        delay, waited = 0.25, 0.0
        while True:
            try:
                return self.stub.GetTask(
                    pb.TaskRequest(wait_seconds=wait_seconds),
                    timeout=wait_seconds + self.timeout,
                    metadata=self._metadata,
                )
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or waited >= self.retry_seconds:
                    raise
                time.sleep(delay)
                waited += delay
                delay = min(delay * 2, 5.0)

    def submit(self, header: pb.UploadHeader, payload: bytes | memoryview) -> pb.SubmitAck:
        header.total_bytes = len(payload)
        return self.stub.Submit(
            _chunks(header, payload), timeout=self.timeout, metadata=self._metadata
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


def _chunks(header: pb.UploadHeader, payload: bytes | memoryview) -> Iterator[pb.UploadChunk]:
    yield pb.UploadChunk(header=header)
    view = memoryview(payload).cast("B")
    for start in range(0, len(view), CHUNK_BYTES):
        yield pb.UploadChunk(data=bytes(view[start : start + CHUNK_BYTES]))
