"""The appliance's web console (issue 24): pages for the security team, served over HTTPS by
the appliance process on its own address.

``start_console(...)`` binds and serves on the running event loop and returns a
:class:`ConsoleHandle` (``.url``, ``.login(admin) -> (url, expires_seconds)``, ``.close()``).
The server, identity and CSRF rules are in :mod:`.server` and :mod:`.auth`; the plots in
:mod:`.plots`; the page itself (vanilla JavaScript, nothing from the network) in ``static/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sealagg.appliance.console.server import (
    ConsoleServer,
    ConsoleSettings,
    Operations,
    Views,
    tls_context,
)

__all__ = ["ConsoleHandle", "ConsoleServer", "ConsoleSettings", "start_console"]


@dataclass
class ConsoleHandle:
    """A running console: its URL, one-time logins, and shutdown."""

    server: ConsoleServer

    @property
    def url(self) -> str:
        return self.server.url

    def login(self, admin: str) -> tuple[str, float]:
        """A one-time login URL for ``admin`` (the gRPC ``OpenConsole`` hands it out)."""
        return self.server.login(admin)

    async def close(self) -> None:
        await self.server.close()


async def start_console(
    *,
    settings: ConsoleSettings,
    views: Views,
    operations: Operations,
    key_pem: bytes | None,
    chain_pem: bytes | None,
    client_cas_pem: bytes | None,
    check_peer: Callable[[bytes], str],
    is_admin: Callable[[str], bool],
    roles: Callable[[str], list[str]] = lambda name: [],
    audit: Callable[[str, dict], None] | None = None,
) -> ConsoleHandle:
    """Serve the console on the running loop; TLS material None only in tests of the HTTP
    layer (a session cookie is Secure: browsers would not send it over plain HTTP)."""
    context = (
        tls_context(key_pem, chain_pem, client_cas_pem)
        if key_pem is not None and chain_pem is not None and client_cas_pem is not None
        else None
    )
    server = ConsoleServer(
        views=views,
        operations=operations,
        settings=settings,
        ssl_context=context,
        check_peer=check_peer,
        is_admin=is_admin,
        roles=roles,
        audit=audit,
    )
    await server.start()
    return ConsoleHandle(server)
