"""CPU per call of the gRPC shapes a client can use for a small upload, on loopback.

Why the appliance takes small uploads as one unary call (``SubmitMessage``) and hands the next
task back with the acknowledgement: a client-streaming call costs the synchronous Python client
a request-iterator thread per call, and every extra call costs the appliance's event loop. A
grpc.aio server with generic handlers runs in a child process; the client measures its own
process CPU, the server's is read from /proc. Plain HTTP/2 (no TLS): the per-call overhead is
the point, not encryption.

    .venv/bin/python benchmarks/grpc_call_cost.py --calls 2000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc

PAYLOAD = b"x" * 2000  # about a sealed share bundle


def _same(data: bytes) -> bytes:
    return data


def _process_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve(port: int) -> None:
    async def unary(request: bytes, context) -> bytes:
        return b"ok"

    async def client_stream(requests, context) -> bytes:
        async for _ in requests:
            pass
        return b"ok"

    async def bidi(requests, context):
        async for request in requests:
            yield request

    async def main() -> None:
        server = grpc.aio.server()
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(unary, _same, _same),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream, _same, _same),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi, _same, _same),
        }
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("b.B", handlers)])
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def measure(port: int, shape: str, calls: int) -> float:
    """Client CPU seconds per call (or per message on one bidirectional stream)."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    unary = channel.unary_unary("/b.B/Unary", _same, _same)
    stream = channel.stream_unary("/b.B/ClientStream", _same, _same)
    bidi = channel.stream_stream("/b.B/Bidi", _same, _same)
    for _ in range(20):  # connect and warm up
        unary(PAYLOAD)
    start = time.process_time()
    if shape == "unary":
        for _ in range(calls):
            unary(PAYLOAD)
    elif shape == "client-stream":
        for _ in range(calls):
            stream(iter([b"header", PAYLOAD]))
    else:
        outgoing: queue.Queue[bytes | None] = queue.Queue()

        def requests() -> Iterator[bytes]:
            while (item := outgoing.get()) is not None:
                yield item

        replies = bidi(requests())
        for _ in range(calls):
            outgoing.put(PAYLOAD)
            next(replies)
        outgoing.put(None)
    used = time.process_time() - start
    channel.close()
    return used / calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--port", type=int, default=50557)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.port)
        return
    if args.shape:
        print(measure(args.port, args.shape, args.calls))
        return
    server = subprocess.Popen([sys.executable, __file__, "--serve", "--port", str(args.port)])
    try:
        time.sleep(2.0)
        for shape in ("unary", "client-stream", "bidi") * 2:
            before = _process_cpu(server.pid)
            argv = [sys.executable, __file__, "--shape", shape, "--calls", str(args.calls)]
            out = subprocess.run(
                [*argv, "--port", str(args.port)],
                capture_output=True,
                text=True,
                check=True,
            )
            server_ms = (_process_cpu(server.pid) - before) / (args.calls + 20) * 1e3
            client_ms = float(out.stdout) * 1e3
            print(f"{shape:14s} client {client_ms:.2f} ms, server {server_ms:.2f} ms per call")
    finally:
        server.kill()


if __name__ == "__main__":
    main()
