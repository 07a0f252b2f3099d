"""The web console: an aiohttp app on the appliance's own event loop, over HTTPS.

Why in the appliance process (not a companion reading the state): the live phase, the
waiting and vanished clients and the deadlines exist only in the orchestrator's memory, and
every action must go through the same code as the gRPC Admin service
(:class:`~sealagg.appliance.admin_ops.AdminOperations`, audited with the admin's name). A
companion would need a second path into that state, or a copy of it.

The console listens on its own address (``[console] host``/``port``; loopback by default),
with the appliance's server certificate and key and an *optional* client certificate checked
against the federation's CA (:mod:`.auth` says who a request is). Every page is served from
the package (no CDN: the appliance has no internet); every response carries a strict
Content-Security-Policy (no inline script, nothing from elsewhere) and ``X-Frame-Options:
DENY``; nothing is cached.

Routes: ``GET /`` (the page), ``/static/*``, ``GET /login?token=`` (one-time token ->
session cookie), ``POST /logout``, ``GET /api/me``, ``GET /api/view/<name>`` (an admin
view), ``GET /events`` (server-sent events: the ``live`` view every ``LIVE_SECONDS`` when it
changed, and a keep-alive), ``GET /plots/<name>.svg``, and the actions ``POST /api/decide``,
``/api/revoke``, ``/api/run/<action>``, ``/api/audit/verify``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import secrets
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from sealagg.appliance.console import plots
from sealagg.appliance.console.auth import (
    ANONYMOUS_VIEWS,
    SESSION_COOKIE,
    Identity,
    LoginTokens,
    Refusal,
    Sessions,
    certificate_csrf,
    check_csrf,
    check_origin,
)

__all__ = ["ConsoleServer", "ConsoleSettings", "tls_context"]

_log = logging.getLogger("sealagg.console")

#: How often the live stream looks at the ``live`` view (it sends only when it changed).
LIVE_SECONDS = 0.5
#: A keep-alive comment at least this often (proxies and browsers drop silent streams).
KEEPALIVE_SECONDS = 10.0
#: Longest request body accepted (reasons and names only).
MAX_BODY_BYTES = 16 * 1024
#: Run actions the console offers (AdminOperations.control_run decides what is valid).
RUN_ACTIONS = frozenset({"start", "pause", "resume", "stop"})
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
STATIC_TYPES = {"console.js": "text/javascript", "console.css": "text/css"}


class Views(Protocol):
    def view(self, name: str, args: Mapping[str, object] | None = None) -> Any: ...


class Operations(Protocol):
    def authorize_view(self, admin: str) -> None: ...
    def decide(self, admin: str, round_number: int, approve: bool, reason: str) -> Any: ...
    def control_run(self, admin: str, run_id: str, action: str, reason: str) -> Any: ...
    def revoke(self, admin: str, name: str, reason: str) -> Any: ...
    def verify_audit(self, admin: str) -> Any: ...


@dataclass(frozen=True)
class ConsoleSettings:
    """What the server needs from ``[console]`` (appliance/config.py)."""

    host: str = "127.0.0.1"
    port: int = 0
    anonymous_read: bool = True
    session_seconds: float = 30 * 60.0
    token_seconds: float = 120.0
    #: Host name for URLs when ``host`` is a wildcard (the server certificate's name).
    public_host: str = "localhost"


def tls_context(key_pem: bytes, chain_pem: bytes, client_cas_pem: bytes) -> ssl.SSLContext:
    """HTTPS with the appliance's key and chain; a client certificate is optional but, when
    presented, must chain to one of the federation's CAs (otherwise the handshake fails).

    The key reaches OpenSSL through an anonymous in-memory file (``memfd``) where the platform
    has one, so an attesting appliance's key, born in memory, never touches a disk."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    material = key_pem + b"\n" + chain_pem
    if hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir():
        fd = os.memfd_create("sealagg-console-tls", 0)
        try:
            os.write(fd, material)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
    else:  # pragma: no cover - non-Linux: a private temporary file, removed at once
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "tls.pem"
            path.touch(mode=0o600)
            path.write_bytes(material)
            context.load_cert_chain(str(path))
    context.verify_mode = ssl.CERT_OPTIONAL
    context.load_verify_locations(cadata=client_cas_pem.decode("ascii"))
    return context


def _url_host(host: str, public_host: str) -> str:
    if host in ("", "0.0.0.0", "::", "[::]"):  # noqa: S104 (naming the wildcard, not binding)
        return public_host
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


class ConsoleServer:
    """The console's HTTP application and its listener.

    ``check_peer``: certificate DER -> client name, raising for a refused certificate (the
    gRPC per-call check); ``is_admin``: whether a name is an administrator now; ``roles``:
    an admin's role names (for the page to show only the buttons that can work);
    ``audit``: appends an audit event (a console session started).
    """

    def __init__(
        self,
        *,
        views: Views,
        operations: Operations,
        settings: ConsoleSettings,
        ssl_context: ssl.SSLContext | None,
        check_peer: Callable[[bytes], str],
        is_admin: Callable[[str], bool],
        roles: Callable[[str], list[str]] = lambda name: [],
        audit: Callable[[str, dict], None] | None = None,
    ) -> None:
        self.views = views
        self.operations = operations
        self.settings = settings
        self._ssl = ssl_context
        self._check_peer = check_peer
        self._is_admin = is_admin
        self._roles = roles
        self._audit = audit
        self.tokens = LoginTokens(settings.token_seconds)
        self.sessions = Sessions(settings.session_seconds)
        self._csrf_key = secrets.token_bytes(32)
        self._runner: web.AppRunner | None = None
        self._streams: set[asyncio.Task] = set()
        self.port: int | None = None
        self.app = self._build_app()

    # ---- lifecycle --------------------------------------------------------------------

    @property
    def origin(self) -> str:
        scheme = "https" if self._ssl is not None else "http"
        host = _url_host(self.settings.host, self.settings.public_host)
        return f"{scheme}://{host}:{self.port}"

    @property
    def url(self) -> str:
        return self.origin + "/"

    def allowed_origins(self) -> frozenset[str]:
        """The console's own origins: its URL, and the loopback names of the same port."""
        scheme = "https" if self._ssl is not None else "http"
        hosts = {_url_host(self.settings.host, self.settings.public_host).lower()}
        if self.settings.host in ("127.0.0.1", "localhost", "::1", "[::1]"):
            hosts |= {"127.0.0.1", "localhost", "[::1]"}
        return frozenset(f"{scheme}://{h}:{self.port}" for h in hosts)

    async def start(self) -> str:
        """Bind and serve; returns the console's URL."""
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            self.settings.host.strip("[]"),
            self.settings.port,
            ssl_context=self._ssl,
            reuse_address=False,
        )
        await site.start()
        server = site._server  # aiohttp exposes the bound port only here
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]
        _log.info("console listening on %s", self.url)
        return self.url

    async def close(self) -> None:
        for task in list(self._streams):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def login(self, admin: str) -> tuple[str, float]:
        """A one-time login URL for ``admin`` and its lifetime in seconds (thread-safe)."""
        if self.port is None:
            raise RuntimeError("the console is not serving")
        token = self.tokens.mint(admin)
        return f"{self.origin}/login?token={token}", self.settings.token_seconds

    # ---- identity -----------------------------------------------------------------------

    def identify(self, request: web.Request) -> Identity:
        note = ""
        der = _peer_certificate(request)
        if der is not None:
            try:
                name = self._check_peer(der)
            except Exception as error:  # (any refusal: not an admin)
                name, note = None, f"certificate refused: {error}"
            if name is not None and self._is_admin(name):
                return Identity(name, "certificate", certificate_csrf(self._csrf_key, der))
            if name is not None:
                note = f"the certificate of {name} is a client's, not an administrator's"
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
        if session is not None and self._is_admin(session.admin):
            return Identity(session.admin, "session", session.csrf)
        return Identity(None, "anonymous", None, note)

    def _reader(self, request: web.Request, view: str | None = None) -> Identity:
        """The viewer of a read; :class:`Refusal` if the read-only policy does not allow it."""
        identity = self.identify(request)
        if identity.is_admin:
            return identity
        if not self.settings.anonymous_read:
            raise Refusal(401, "sign in: run `sealagg console` and open the link it prints")
        if view is not None and view not in ANONYMOUS_VIEWS:
            raise Refusal(403, f"the {view} view is shown to administrators only")
        return identity

    async def _actor(self, request: web.Request) -> tuple[Identity, dict[str, Any]]:
        """The admin behind a state-changing request and its JSON/form body; refuses (403)
        anything without an admin identity, the console's Origin and the CSRF token."""
        identity = self.identify(request)
        if not identity.is_admin:
            reason = identity.note or "no administrator identity"
            raise Refusal(403, f"refused: {reason} (read-only; sign in with `sealagg console`)")
        check_origin(
            request.headers.get("Origin"), request.headers.get("Referer"), self.allowed_origins()
        )
        body = await _body(request)
        presented = request.headers.get("X-CSRF-Token") or body.get("csrf")
        check_csrf(identity.csrf, presented if isinstance(presented, str) else None)
        return identity, body

    # ---- the app ------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._headers_middleware], client_max_size=MAX_BODY_BYTES
        )
        app.router.add_get("/", self._page)
        app.router.add_get("/static/{file}", self._static)
        app.router.add_get("/login", self._login)
        app.router.add_post("/logout", self._logout)
        app.router.add_get("/api/me", self._me)
        app.router.add_get("/api/view/{name}", self._view)
        app.router.add_get("/events", self._events)
        app.router.add_get("/plots/{name}.svg", self._plot)
        app.router.add_post("/api/decide", self._decide)
        app.router.add_post("/api/revoke", self._revoke)
        app.router.add_post("/api/run/{action}", self._run_action)
        app.router.add_post("/api/audit/verify", self._verify_audit)
        return app

    @web.middleware
    async def _headers_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable]
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except Refusal as refusal:
            response = _error(refusal.status, refusal.reason, request)
        except web.HTTPException as error:
            response = _error(error.status, error.reason or "error", request)
        except Exception as error:  # a bug or a store failure: say so, headers and all
            _log.exception("console request %s %s failed", request.method, request.path)
            response = _error(500, f"the appliance could not answer: {error}", request)
        _secure(response)
        return response

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(body=_static_file("console.html"), content_type="text/html")

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["file"]
        if name not in STATIC_TYPES:
            raise Refusal(404, "no such file")
        return web.Response(body=_static_file(name), content_type=STATIC_TYPES[name])

    async def _login(self, request: web.Request) -> web.Response:
        admin = self.tokens.redeem(request.query.get("token", ""))
        if not self._is_admin(admin):
            raise Refusal(403, f"{admin} is no longer an administrator")
        session_id, _ = self.sessions.start(admin)
        if self._audit is not None:
            self._audit("console_session", {"by": admin, "via": "login token"})
        response = web.Response(status=303, headers={"Location": "/"})
        response.set_cookie(
            SESSION_COOKIE,
            session_id,
            path="/",
            secure=True,
            httponly=True,
            samesite="Strict",
            max_age=int(self.settings.session_seconds),
        )
        return response

    async def _logout(self, request: web.Request) -> web.Response:
        identity, _ = await self._actor(request)
        if identity.via == "session":
            self.sessions.end(request.cookies.get(SESSION_COOKIE))
        response = web.json_response({"ok": True})
        response.del_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
        return response

    async def _me(self, request: web.Request) -> web.Response:
        identity = self.identify(request)
        roles = self._roles(identity.admin) if identity.admin else []
        return web.json_response(
            {
                "admin": identity.admin,
                "via": identity.via,
                "roles": roles,
                "csrf": identity.csrf,
                "note": identity.note,
                "anonymous_read": self.settings.anonymous_read,
                "can_read": identity.is_admin or self.settings.anonymous_read,
            }
        )

    async def _view(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        identity = self._reader(request, name)
        if identity.is_admin:
            self._authorize_view(identity.admin, name)
        args = {k: _arg(v) for k, v in request.query.items()}
        return web.json_response(self._read(name, args))

    def _authorize_view(self, admin: str | None, name: str) -> None:
        """An admin's read goes through the same role check as the gRPC ``Query``."""
        check = getattr(self.operations, "authorize_view", None)
        if check is None or admin is None:
            return
        try:
            check(admin)
        except PermissionError as error:
            raise Refusal(403, str(error)) from None

    def _read(self, name: str, args: Mapping[str, object] | None = None) -> Any:
        try:
            return self.views.view(name, args or {})
        except ValueError as error:  # ViewError: unknown view or bad arguments
            raise Refusal(400, str(error)) from None

    async def _plot(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in plots.PLOTS:
            raise Refusal(404, f"no plot {name!r} (plots: {', '.join(sorted(plots.PLOTS))})")
        view, args, render = plots.PLOTS[name]
        self._reader(request, view)
        svg = render(self._read(view, args))
        return web.Response(text=svg, content_type="image/svg+xml")

    async def _events(self, request: web.Request) -> web.StreamResponse:
        self._reader(request, "live")
        session_id = request.cookies.get(SESSION_COOKIE)
        was_session = self.identify(request).via == "session"
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        _secure(response)
        await response.prepare(request)
        task = asyncio.current_task()
        if task is not None:
            self._streams.add(task)
        last, quiet = None, 0.0
        try:
            while True:
                if was_session and self.sessions.get(session_id) is None:
                    await response.write(b"event: expired\ndata: {}\n\n")
                    break
                try:
                    text = json.dumps(self.views.view("live", {}), sort_keys=True)
                except Exception as error:  # (a view failure ends nothing)
                    text = json.dumps({"error": str(error)})
                if text != last:
                    await response.write(f"event: live\ndata: {text}\n\n".encode())
                    last, quiet = text, 0.0
                elif quiet >= KEEPALIVE_SECONDS:
                    await response.write(b": keep-alive\n\n")
                    quiet = 0.0
                await asyncio.sleep(LIVE_SECONDS)
                quiet += LIVE_SECONDS
        except ConnectionResetError:  # the browser went away
            pass
        finally:  # cancelled too: the console closing, or aiohttp dropping the request
            if task is not None:
                self._streams.discard(task)
        return response

    # ---- actions ------------------------------------------------------------------------

    async def _act(self, call: Callable[[], Any]) -> web.Response:
        try:
            result = call()
            if inspect.isawaitable(result):
                result = await result
        except PermissionError as error:
            raise Refusal(403, str(error)) from None
        except (ValueError, LookupError) as error:
            return web.json_response({"ok": False, "detail": str(error)}, status=400)
        except Exception as error:  # (StoreError, RunError, ProvisioningError, ...)
            _log.warning("console action failed: %s", error)
            return web.json_response({"ok": False, "detail": str(error)}, status=409)
        return web.json_response(_result(result))

    async def _decide(self, request: web.Request) -> web.Response:
        identity, body = await self._actor(request)
        number = _int(body.get("round"), "round")
        approve = body.get("approve")
        if not isinstance(approve, bool):
            raise Refusal(400, "approve must be true or false")
        reason = _text(body.get("reason"), "reason")
        return await self._act(
            lambda: self.operations.decide(identity.admin, number, approve, reason)
        )

    async def _revoke(self, request: web.Request) -> web.Response:
        identity, body = await self._actor(request)
        name = _text(body.get("name"), "name", required=True)
        reason = _text(body.get("reason"), "reason")
        return await self._act(lambda: self.operations.revoke(identity.admin, name, reason))

    async def _run_action(self, request: web.Request) -> web.Response:
        identity, body = await self._actor(request)
        action = request.match_info["action"]
        if action not in RUN_ACTIONS:
            raise Refusal(404, f"no run action {action!r} ({', '.join(sorted(RUN_ACTIONS))})")
        run_id = _text(body.get("run_id"), "run_id", required=True)
        reason = _text(body.get("reason"), "reason")
        return await self._act(
            lambda: self.operations.control_run(identity.admin, run_id, action, reason)
        )

    async def _verify_audit(self, request: web.Request) -> web.Response:
        identity, _ = await self._actor(request)
        return await self._act(lambda: self.operations.verify_audit(identity.admin))


# ---- helpers ------------------------------------------------------------------------------


def _static_file(name: str) -> bytes:
    return resources.files("sealagg.appliance.console").joinpath("static", name).read_bytes()


def _peer_certificate(request: web.Request) -> bytes | None:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    return ssl_object.getpeercert(binary_form=True)


def _secure(response: web.StreamResponse) -> None:
    headers = response.headers
    headers["Content-Security-Policy"] = CSP
    headers["X-Frame-Options"] = "DENY"
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "same-origin"
    headers["Cross-Origin-Opener-Policy"] = "same-origin"
    headers["Cross-Origin-Resource-Policy"] = "same-origin"
    headers["Cache-Control"] = "no-store"


def _error(status: int, reason: str, request: web.Request) -> web.Response:
    if request.path.startswith(("/api/", "/events", "/plots/")):
        return web.json_response({"ok": False, "error": reason}, status=status)
    return web.Response(
        status=status,
        text=f"sealagg console: {reason}\n",
        content_type="text/plain",
    )


async def _body(request: web.Request) -> dict[str, Any]:
    if request.method != "POST":
        raise Refusal(405, "state-changing requests must be POST")
    if request.content_type == "application/json":
        try:
            data = await request.json()
        except ValueError:
            raise Refusal(400, "the body is not JSON") from None
        if not isinstance(data, dict):
            raise Refusal(400, "the body must be a JSON object")
        return data
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return dict(await request.post())
    if request.can_read_body:
        raise Refusal(415, "send JSON (application/json) or a form")
    return {}


def _arg(value: str) -> object:
    return int(value) if value.isascii() and value.lstrip("-").isdigit() else value


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise Refusal(400, f"{what} must be a whole number")
    try:
        number = int(value)
    except ValueError:
        raise Refusal(400, f"{what} must be a whole number") from None
    if number < 0:
        raise Refusal(400, f"{what} must not be negative")
    return number


def _text(value: object, what: str, *, required: bool = False, limit: int = 1000) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise Refusal(400, f"{what} must be text")
    value = value.strip()
    if required and not value:
        raise Refusal(400, f"{what} is required")
    if len(value) > limit:
        raise Refusal(400, f"{what} is longer than {limit} characters")
    return value


def _result(result: Any) -> Any:
    if isinstance(result, dict):
        return {"ok": True, **result} if "ok" not in result else result
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], bool):
        return {"ok": result[0], "detail": str(result[1])}
    if hasattr(result, "as_dict"):
        return {"ok": True, "detail": "", "result": result.as_dict()}
    return {"ok": True, "detail": "" if result is None else str(result)}
