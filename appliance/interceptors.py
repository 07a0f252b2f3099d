"""Server interceptors: who may call at all, and requests that do not parse.

:class:`PeerCheckInterceptor` refuses, per call and by name, clients whose certificate is no
longer admitted (see its docstring for why this is not done in the TLS handshake).

:class:`MalformedRequestInterceptor`: refuse requests that are not the method's protobuf with
INVALID_ARGUMENT, not UNKNOWN.

Left alone, grpc.aio answers bytes that fail to parse with UNKNOWN ("Unexpected
<DecodeError>") and logs a traceback per call: an unclear status, and a log any certificate
holder can flood. This interceptor wraps each method's request deserializer so a parse failure
becomes a marker, and the handler is replaced by one that aborts with INVALID_ARGUMENT and
logs a single line. Streaming requests are checked message by message.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from google.protobuf.message import DecodeError

from sealagg.appliance.metrics import Metrics
from sealagg.appliance.peer_check import PeerRefusal, PeerRefusedError

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


def _streaming(
    inner: Callable[..., Any], check: Callable[[Any, grpc.aio.ServicerContext], Awaitable[None]]
) -> Callable[..., Any]:
    """A server-streaming behaviour with ``check`` first, in the style of ``inner``: an async
    generator, or a coroutine that writes with ``context.write`` (grpc's health Watch)."""
    if inspect.isasyncgenfunction(inner):

        async def generate(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator:
            await check(request, context)
            async for response in inner(request, context):
                yield response

        return generate

    async def write(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await check(request, context)
        return await inner(request, context)

    return write


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

        async def check(request: Any, context: grpc.aio.ServicerContext) -> None:
            if request is _MALFORMED:
                await _refuse(context, method)

        return grpc.unary_stream_rpc_method_handler(_streaming(inner_us, check), parse, out)
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


# ---- who may call at all ------------------------------------------------------------------

Gate = Callable[[grpc.aio.ServicerContext], Awaitable[None]]
#: A refusal of the same client for the same reason is logged at most this often.
LOG_EVERY_SECONDS = 60.0
_LOGGED_KEYS = 4096


def _gated(handler: grpc.RpcMethodHandler, gate: Gate) -> grpc.RpcMethodHandler:
    """``handler`` with ``gate(context)`` awaited before its behaviour runs (or reads a request)."""
    parse, out = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await gate(context)
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, parse, out)
    if handler.unary_stream:

        async def check(request: Any, context: grpc.aio.ServicerContext) -> None:
            await gate(context)

        return grpc.unary_stream_rpc_method_handler(
            _streaming(handler.unary_stream, check), parse, out
        )
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(requests: AsyncIterator, context: grpc.aio.ServicerContext) -> Any:
            await gate(context)
            return await inner_su(requests, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, parse, out)

    async def check_stream(requests: Any, context: grpc.aio.ServicerContext) -> None:
        await gate(context)

    return grpc.stream_stream_rpc_method_handler(
        _streaming(handler.stream_stream, check_stream), parse, out
    )


class PeerCheckInterceptor(grpc.aio.ServerInterceptor):
    """Refuse every call whose client certificate is not admitted now, before any handler runs.

    Why per call and not in the TLS handshake: the handshake trusts the federation CA, so a
    certificate the CA issued completes it even when it is revoked, superseded or no longer
    registered; only here is its client name available, so the refusal names the client and
    its reason (PERMISSION_DENIED, a human message), is counted in
    ``sealagg_refused_calls_total{reason}`` and logged with the name. Refusing in the
    handshake gave the operator an anonymous C-core line and the client a bare UNAVAILABLE.
    A refused certificate still gets nothing but the refusal: the gate runs before the
    handler, before any streamed request is read, for every service on the port (the health
    service included). Certificates the CA did not issue, or outside their validity, still
    fail the handshake (the TLS library checks the chain and the dates).
    """

    def __init__(
        self,
        admit: Callable[[bytes], str],
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._admit = admit
        self._metrics = metrics
        self._clock = clock
        #: (client, reason) -> when it was last logged: a refused client retrying in a loop
        #: is counted every time but logged once per LOG_EVERY_SECONDS (no log flooding).
        self._logged: dict[tuple[str | None, str], float] = {}

    def _log_refusal(self, method: str, refusal: PeerRefusal) -> None:
        key = (refusal.name, refusal.reason)
        now = self._clock()
        last = self._logged.get(key)
        if last is not None and now - last < LOG_EVERY_SECONDS:
            return
        if len(self._logged) >= _LOGGED_KEYS:
            self._logged.clear()
        self._logged[key] = now
        _log.warning("refused a call to %s: %s", method, refusal)

    async def _gate(self, method: str, context: grpc.aio.ServicerContext) -> None:
        pems = (context.auth_context() or {}).get("x509_pem_cert") or []
        try:
            if not pems:
                raise PeerRefusedError(PeerRefusal(None, "no_certificate", "no client certificate"))
            der = x509.load_pem_x509_certificate(pems[0]).public_bytes(Encoding.DER)
            self._admit(der)
        except PeerRefusedError as error:
            refusal = error.refusal
        except ValueError:
            refusal = PeerRefusal(None, "invalid", "the client certificate does not parse")
        else:
            return
        self._metrics.refused_calls.labels(refusal.reason).inc()
        self._log_refusal(method, refusal)
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"this appliance refuses the call: {refusal}. Ask the federation's operator for a "
            "new kit if this is unexpected.",
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return _gated(handler, functools.partial(self._gate, handler_call_details.method))
