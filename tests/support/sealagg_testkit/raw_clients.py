"""Raw clients for the run and evaluation tests: the Aggregator stub over the kit's mutual TLS.

They speak the wire protocol directly (GetTask, SubmitMessage, ReportRefusal), so a test sees
every task the appliance hands out, in order, without the shim's own loop in between.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import grpc
import numpy as np

from sealagg.appliance.kit import ClientKit
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire import sealagg_pb2_grpc as pb_grpc


class RawClient:
    """One client's channel and the tasks it received."""

    def __init__(self, kit: ClientKit, address: str) -> None:
        self.name = kit.name
        ca, key, cert = kit.channel_credentials_material()
        credentials = grpc.ssl_channel_credentials(ca, key, cert)
        options = [("grpc.ssl_target_name_override", kit.server_name)]
        self.channel = grpc.secure_channel(address, credentials, options=options)
        self.stub = pb_grpc.AggregatorStub(self.channel)
        self.tasks: list[pb.Task] = []

    def poll(self, wait: float = 0.5) -> pb.Task:
        task = self.stub.GetTask(pb.TaskRequest(wait_seconds=wait), timeout=wait + 15)
        self.tasks.append(task)
        return task

    def submit(self, header: pb.UploadHeader, data: bytes = b"") -> pb.SubmitAck:
        header.total_bytes = len(data)
        return self.stub.SubmitMessage(pb.UploadMessage(header=header, data=data), timeout=15)

    def submit_update(self, start: pb.RoundStart, value: float = 0.0) -> pb.SubmitAck:
        update = np.full(start.vector_length, value, dtype="<f4").tobytes()
        header = pb.UploadHeader(
            round_id=start.round_id, phase=0, kind="plaintext_update", weight=1.0
        )
        return self.submit(header, update)

    def refuse(self, round_id: bytes, code: str, detail: str) -> None:
        self.stub.ReportRefusal(
            pb.RoundRefusal(round_id=round_id, code=code, detail=detail), timeout=15
        )

    def kinds(self) -> list[str]:
        return [t.WhichOneof("kind") for t in self.tasks]

    def starts(self) -> list[pb.RoundStart]:
        return [t.round_start for t in self.tasks if t.WhichOneof("kind") == "round_start"]

    def run_ends(self) -> list[pb.RunEnd]:
        return [t.run_end for t in self.tasks if t.WhichOneof("kind") == "run_end"]

    def close(self) -> None:
        self.channel.close()


Hook = Callable[[RawClient, pb.Task], None]


def train_until_run_end(
    client: RawClient, *, on_task: Hook | None = None, max_polls: int = 2000
) -> threading.Thread:
    """A thread that polls, answers every plaintext RoundStart with a zero update, calls
    ``on_task`` for each task, and ends when it receives a RunEnd (or after ``max_polls``)."""

    def work() -> None:
        for _ in range(max_polls):
            task = client.poll()
            kind = task.WhichOneof("kind")
            if kind == "round_start":
                client.submit_update(task.round_start)
            if on_task is not None:
                on_task(client, task)
            if kind == "run_end":
                return

    thread = threading.Thread(target=work, daemon=True, name=client.name)
    thread.start()
    return thread
