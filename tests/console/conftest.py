"""A console over real HTTPS on loopback, with the federation's real certificates.

The console server runs on its own event loop in a thread (as on the appliance, beside gRPC);
requests go through ``http.client`` with the federation CA as the only trust anchor and, when
asked, a kit's client certificate. Identity checks are the real ones (the per-call
certificate check, the signed admin directory); the admin views and operations are stand-ins
that record what they were asked (the appliance-level wiring is tested in the browser test).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sealagg.appliance.admins import DirectoryWatch, issue_admin
from sealagg.appliance.console import ConsoleHandle, ConsoleSettings, start_console
from sealagg.appliance.federation import FederationFolder, add_client
from sealagg.appliance.kit import ClientKit, load_kit
from sealagg.appliance.peer_check import CachedPeerCheck
from sealagg.appliance.server import client_trust_anchors
from sealagg.appliance.tee_identity import folder_identity
from sealagg.appliance.testing import make_deployment


class RecordingViews:
    """Admin views that answer with fixed data and remember what was read."""

    def __init__(self) -> None:
        self.reads: list[str] = []
        self.live = {"round": None, "mode": "secagg+", "ready_clients": []}

    def view(self, name: str, args: Any = None) -> Any:
        self.reads.append(name)
        if name == "live":
            return self.live
        if name == "audit":
            return {"total": 1, "offset": 0, "limit": 100, "entries": [{"seq": 1}]}
        if name == "federation":
            return {"name": "testfed", "mode": "secagg+"}
        if name in ("versions", "rounds", "clients", "runs", "approvals", "attestations"):
            return []
        if name == "privacy":
            return {"enabled": False, "runs": []}
        raise ValueError(f"unknown view {name!r}")


@dataclass
class RecordingOperations:
    """Admin operations that record each call (so a refused request provably did nothing)."""

    calls: list[tuple] = field(default_factory=list)

    def authorize_view(self, admin: str) -> None:
        pass

    def decide(self, admin: str, round_number: int, approve: bool, reason: str) -> str:
        self.calls.append(("decide", admin, round_number, approve, reason))
        return f"round {round_number} {'approved' if approve else 'rejected'}"

    def control_run(self, admin: str, run_id: str, action: str, reason: str) -> str:
        self.calls.append(("control_run", admin, run_id, action, reason))
        return f"run {run_id} {action}"

    def revoke(self, admin: str, name: str, reason: str) -> str:
        self.calls.append(("revoke", admin, name, reason))
        return f"revoked {name}"

    def verify_audit(self, admin: str) -> dict:
        self.calls.append(("verify_audit", admin))
        return {"ok": True, "entries": 3, "first_broken": None}


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def cookie(self) -> str | None:
        """The session cookie's ``name=value`` from Set-Cookie, if one was set."""
        for value in self.headers.get_all("Set-Cookie") or []:
            return value.split(";", 1)[0]
        return None


class Console:
    """A running console and an HTTPS client for it."""

    def __init__(self, root: Path, *, anonymous_read: bool = True) -> None:
        self.deployment = make_deployment(root, clients=2)
        self.folder = self.deployment.folder
        federation = FederationFolder.load(self.folder)
        self.federation = federation
        self.kits: dict[str, ClientKit] = dict(self.deployment.kits)
        self.kits["admin"] = load_kit(
            add_client(federation, "admin", out=self.folder / "admin-kit")
        )
        issue_admin(federation, "olga", ["operator"], out=root / "olga-kit", added_by="test")
        self.kits["olga"] = load_kit(root / "olga-kit")
        self.root = root
        self.views = RecordingViews()
        self.ops = RecordingOperations()
        directory = DirectoryWatch(self.folder).current
        self.audited: list[tuple[str, dict]] = []
        identity = folder_identity(federation)
        self.ca_pem = self.kits["admin"].ca_cert_pem
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.handle: ConsoleHandle = self._run(
            start_console(
                settings=ConsoleSettings(
                    anonymous_read=anonymous_read, token_seconds=60.0, session_seconds=600.0
                ),
                views=self.views,
                operations=self.ops,
                key_pem=identity.key_pem,
                chain_pem=identity.chain_pem,
                client_cas_pem=client_trust_anchors(federation),
                check_peer=CachedPeerCheck(federation),
                is_admin=lambda name: directory().is_admin(name),
                roles=lambda name: sorted(r.value for r in directory().roles_of(name)),
                audit=lambda event, details: self.audited.append((event, details)),
            )
        )
        self.port = self.handle.server.port
        self.origin = f"https://127.0.0.1:{self.port}"

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def close(self) -> None:
        self._run(self.handle.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def tls(self, as_kit: str | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.ca_pem.decode())
        if as_kit is not None:
            kit = self.kits[as_kit]
            path = self.root / f"{as_kit}-tls.pem"
            path.write_bytes(kit.client_key_pem + b"\n" + kit.client_cert_pem)
            context.load_cert_chain(str(path))
        return context

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
        as_kit: str | None = None,
        cookie: str | None = None,
    ) -> Reply:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.tls(as_kit), timeout=10
        )
        sent = dict(headers or {})
        if cookie:
            sent["Cookie"] = cookie
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        try:
            connection.request(method, path, body=data, headers=sent)
            response = connection.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            connection.close()

    def session(self, admin: str = "admin") -> tuple[str, str]:
        """A signed-in session: (the cookie header value, its CSRF token)."""
        url, _ = self.handle.login(admin)
        reply = self.request("GET", url.removeprefix(self.origin))
        assert reply.status == 303, reply.body
        cookie = reply.cookie()
        assert cookie is not None
        me = self.request("GET", "/api/me", cookie=cookie).json()
        assert me["admin"] == admin and me["via"] == "session"
        return cookie, me["csrf"]


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    running = Console(tmp_path)
    yield running
    running.close()


@pytest.fixture
def private_console(tmp_path: Path) -> Iterator[Console]:
    """``anonymous_read = false``: nothing without an admin identity."""
    running = Console(tmp_path, anonymous_read=False)
    yield running
    running.close()
