"""Who is looking at the console, and whether a request may change anything.

Identity, strongest first:

1. **An administrator's mutual-TLS certificate.** The console's TLS asks for a client
   certificate (optional) and verifies it against the federation's CA; the same per-call
   check as gRPC (:class:`~sealagg.appliance.peer_check.CachedPeerCheck`: revoked,
   superseded, expired are refused) names the holder, and the admin directory must list that
   name. A participant's certificate is valid but is *not* an administrator: its holder is
   treated as anonymous.
2. **A session** started with a one-time login token. ``sealagg console`` asks the Admin
   service (over the admin's mTLS) for a token; it is 32 random bytes, kept only as its
   SHA-256, valid once and for ``token_seconds``. ``GET /login`` exchanges it for a session
   cookie (random id, ``HttpOnly; Secure; SameSite=Strict``, kept server-side as its SHA-256
   with the admin's name and an expiry). The token travels in a URL, hence single use and a
   short life; the cookie never leaves the browser's TLS connection to this origin.
3. **Anonymous**, when ``[console] anonymous_read`` allows it (see :data:`ANONYMOUS_VIEWS`).

Secrets are looked up by the SHA-256 of the presented value (a dict lookup on a hash leaks
nothing useful about the stored secret's bytes through timing) and CSRF tokens compared with
:func:`hmac.compare_digest`. Nothing here logs a token, a session id or a CSRF token.

State-changing requests (:func:`require_action`) must be POST and carry all of: an admin
identity; an ``Origin`` (or, without one, a ``Referer``) equal to the console's own origin;
the identity's CSRF token in ``X-CSRF-Token`` (or the form field ``csrf``). A cross-site
form or ``fetch`` cannot read the token and cannot forge the Origin; SameSite=Strict keeps the
cookie off cross-site requests too, so each defence would hold alone. Anything else is 403
with the reason, before the action runs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from sealagg.appliance.admin_views import VIEWS

__all__ = [
    "ANONYMOUS_VIEWS",
    "SESSION_COOKIE",
    "Identity",
    "LoginTokens",
    "Refusal",
    "Session",
    "Sessions",
    "check_csrf",
    "check_origin",
    "origin_of",
]

#: ``__Host-``: the browser accepts the cookie only with Secure, Path=/ and no Domain, so a
#: sibling host cannot plant or overwrite it.
SESSION_COOKIE = "__Host-sealagg-console"
#: Views an anonymous viewer may read when ``anonymous_read`` is on: everything on the
#: dashboard except the audit log's entries (they name administrators, reasons and client
#: events in detail; the log's *verification* is an auditor's action).
ANONYMOUS_VIEWS = frozenset(VIEWS) - {"audit"}
#: At most this many live sessions / unredeemed tokens (oldest dropped first): bounded memory.
MAX_SESSIONS = 256
MAX_TOKENS = 256


class Refusal(Exception):  # noqa: N818 (a refusal, not an internal error)
    """A request refused before it did anything; ``status`` is the HTTP status, the message
    the reason shown to the user."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


@dataclass
class Session:
    """A console session: who, until when, and its CSRF token."""

    admin: str
    expires: float
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))


@dataclass(frozen=True)
class Identity:
    """The viewer of one request. ``admin`` is None for an anonymous viewer."""

    admin: str | None
    via: Literal["certificate", "session", "anonymous"]
    csrf: str | None = None
    #: Why a presented credential did not make this viewer an admin (shown on the page).
    note: str = ""

    @property
    def is_admin(self) -> bool:
        return self.admin is not None


class LoginTokens:
    """One-time login tokens: minted for a named admin, redeemed once, before they expire."""

    def __init__(self, lifetime: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.lifetime = lifetime
        self._clock = clock
        self._tokens: dict[bytes, tuple[str, float]] = {}
        self._lock = threading.Lock()  # minted from gRPC handlers, redeemed from HTTP ones

    def mint(self, admin: str) -> str:
        token = secrets.token_urlsafe(32)
        now = self._clock()
        with self._lock:
            self._prune(now)
            while len(self._tokens) >= MAX_TOKENS:
                self._tokens.pop(next(iter(self._tokens)))
            self._tokens[_digest(token)] = (admin, now + self.lifetime)
        return token

    def redeem(self, token: str) -> str:
        """The admin the token was minted for; :class:`Refusal` if it is unknown, used or
        expired (one message for all three: the page cannot tell a guesser which)."""
        now = self._clock()
        with self._lock:
            found = self._tokens.pop(_digest(token), None) if token else None
        if found is None or found[1] < now:
            raise Refusal(
                403,
                "this login link is invalid, already used or expired: run `sealagg console` "
                "for a new one",
            )
        return found[0]

    def _prune(self, now: float) -> None:
        for key in [k for k, (_, until) in self._tokens.items() if until < now]:
            del self._tokens[key]


class Sessions:
    """Server-side sessions, keyed by the SHA-256 of the cookie's random id."""

    def __init__(self, lifetime: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.lifetime = lifetime
        self._clock = clock
        self._sessions: dict[bytes, Session] = {}
        self._lock = threading.Lock()

    def start(self, admin: str) -> tuple[str, Session]:
        """A new session for ``admin``: (the cookie value, the session)."""
        session_id = secrets.token_urlsafe(32)
        now = self._clock()
        session = Session(admin=admin, expires=now + self.lifetime)
        with self._lock:
            self._prune(now)
            while len(self._sessions) >= MAX_SESSIONS:
                self._sessions.pop(next(iter(self._sessions)))
            self._sessions[_digest(session_id)] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(_digest(session_id))
            if session is not None and session.expires < self._clock():
                self._sessions.pop(_digest(session_id), None)
                return None
        return session

    def end(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._sessions.pop(_digest(session_id), None)

    def end_all(self, admin: str) -> None:
        """Ends every session of ``admin`` (a revoked or removed administrator)."""
        with self._lock:
            for key in [k for k, s in self._sessions.items() if s.admin == admin]:
                del self._sessions[key]

    def _prune(self, now: float) -> None:
        for key in [k for k, s in self._sessions.items() if s.expires < now]:
            del self._sessions[key]


def certificate_csrf(key: bytes, certificate_der: bytes) -> str:
    """The CSRF token of a certificate-authenticated admin (no session to keep one in): an
    HMAC under the console's per-start secret, so it is stable for the certificate and
    unguessable without the secret."""
    mac = hmac.new(
        key, b"sealagg console csrf\x00" + hashlib.sha256(certificate_der).digest(), hashlib.sha256
    )
    return mac.hexdigest()


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of a URL, lower-cased; None if it has none."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def check_origin(origin: str | None, referer: str | None, allowed: frozenset[str]) -> None:
    """Refuse unless the request comes from one of the console's own origins.

    ``Origin`` decides when present (``null`` is refused: sandboxed frames, data: URLs);
    without it the ``Referer``'s origin; with neither the request is refused (browsers send
    Origin on every POST, so only a non-browser client or a stripped header lacks both)."""
    if origin is not None:
        source, what = origin.strip().lower(), "Origin"
    elif referer:
        source, what = origin_of(referer.strip()) or "", "Referer"
    else:
        raise Refusal(403, "refused: a state-changing request needs an Origin header")
    if source not in allowed:
        raise Refusal(
            403,
            f"refused: cross-origin request ({what} {source or 'missing'!s} is not this "
            "console's origin)",
        )


def check_csrf(expected: str | None, presented: str | None) -> None:
    """Refuse unless ``presented`` equals the identity's CSRF token (constant time)."""
    if not expected or not presented:
        raise Refusal(403, "refused: missing CSRF token (reload the console page)")
    if not hmac.compare_digest(expected.encode(), presented.encode("utf-8", "replace")):
        raise Refusal(403, "refused: wrong CSRF token (reload the console page)")
