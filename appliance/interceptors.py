"""Refuse requests that are not the method's protobuf with INVALID_ARGUMENT, not UNKNOWN.

Left alone, grpc.aio answers bytes that fail to parse with UNKNOWN ("Unexpected
<DecodeError>") and logs a traceback per call: an unclear status, and a log any certificate
holder can flood. This interceptor wraps each method's request deserializer so a parse failure
becomes a marker, and the handler is replaced by one that aborts with INVALID_ARGUMENT and
logs a single line. Streaming requests are checked message by message.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

_log = logging.getLogger("sealagg.service")


class _Malformed:
    """Stands for a request that failed to parse."""


_MALFORMED = _Malformed()
_DETAIL = "the request is not a valid {} message"


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return _MALFORMED

    return parse


async def _refuse(context: grpc.aio.ServicerContext, method: str) -> None:
    _log.info("refused a malformed request to %s", method)
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _DETAIL.format(method))


async def _checked(
    requests: AsyncIterator[Any], context: grpc.aio.ServicerContext, method: str
) -> AsyncIterator[Any]:
    async for request in requests:
        if request is _MALFORMED:
            await _refuse(context, method)
        yield request


def _guard(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    parse = _safe(handler.request_deserializer)
    out = handler.response_serializer
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if request is _MALFORMED:
                await _refuse(context, method)
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, parse, out)
    if handler.unary_stream:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator:
            if request is _MALFORMED:
                await _refuse(context, method)
            async for response in inner_us(request, context):
                yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream, parse, out)
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(requests: AsyncIterator, context: grpc.aio.ServicerContext) -> Any:
            return await inner_su(_checked(requests, context, method), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, parse, out)
    inner_ss = handler.stream_stream

    async def stream_stream(requests: AsyncIterator, context: grpc.aio.ServicerContext):
        async for response in inner_ss(_checked(requests, context, method), context):
            yield response

    return grpc.stream_stream_rpc_method_handler(stream_stream, parse, out)


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """Map request parse failures to INVALID_ARGUMENT for every method of the server."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return _guard(handler, handler_call_details.method)
