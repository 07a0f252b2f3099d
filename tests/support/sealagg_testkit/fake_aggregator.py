"""A scripted Aggregator on loopback (real gRPC, insecure channel) for the shim's loop tests.

It hands out the tasks a test queues (round starts, run ends, evaluation requests), serves
model versions as safetensors bytes, and records every upload and refusal report. What it
answers to an upload is up to the test (``on_upload``), e.g. a RoundEnd for the round.
Only for testing the client's reaction to the appliance's messages; the appliance's own
behaviour is tested against the real one.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable, Mapping
from concurrent import futures

import grpc
import numpy as np
from safetensors.numpy import save as save_safetensors

from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire import sealagg_pb2_grpc as pb_grpc


class FakeAggregator(pb_grpc.AggregatorServicer):
    def __init__(self, models: Mapping[int, Mapping[str, np.ndarray]], *, port: int = 0) -> None:
        self.models = {v: save_safetensors(dict(t)) for v, t in models.items()}
        self.tasks: queue.Queue[pb.Task] = queue.Queue()
        self.uploads: list[pb.UploadMessage] = []
        self.refusals: list[pb.RoundRefusal] = []
        self.downloads: list[int] = []
        self.on_upload: Callable[[pb.UploadMessage], None] | None = None
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_AggregatorServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")  # 0: any free port
        self.server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def sha256(self, version: int) -> str:
        return hashlib.sha256(self.models[version]).hexdigest()

    def put(self, **task: object) -> None:
        self.tasks.put(pb.Task(**task))

    def GetTask(self, request: pb.TaskRequest, context: grpc.ServicerContext) -> pb.Task:
        try:
            return self.tasks.get(timeout=max(0.05, min(request.wait_seconds, 2.0)))
        except queue.Empty:
            return pb.Task(idle=pb.Idle(retry_after_seconds=0.1))

    def SubmitMessage(
        self, request: pb.UploadMessage, context: grpc.ServicerContext
    ) -> pb.SubmitAck:
        with self.lock:
            self.uploads.append(request)
        if self.on_upload is not None:
            self.on_upload(request)
        return pb.SubmitAck(accepted=True)

    def DownloadModel(self, request: pb.ModelRequest, context: grpc.ServicerContext):
        version = request.version or max(self.models)
        self.downloads.append(version)
        data = self.models[version]
        yield pb.ModelChunk(
            header=pb.ModelHeader(
                version=version, total_bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
            )
        )
        yield pb.ModelChunk(data=data)

    def ReportRefusal(
        self, request: pb.RoundRefusal, context: grpc.ServicerContext
    ) -> pb.RoundRefusalAck:
        with self.lock:
            self.refusals.append(request)
        return pb.RoundRefusalAck()

    def stop(self) -> None:
        self.server.stop(0)
