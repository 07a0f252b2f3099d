"""Helpers for tests and benchmarks: a real federation on loopback, an appliance in a thread.

Shipped with the package (like ``crypto.testing``) so that the tests, the benchmarks and
the client shim's tests build deployments the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from sealagg.appliance import pki
from sealagg.appliance.federation import (
    FederationFolder,
    add_client,
    init_federation,
    install_roster,
    pin_authority,
)
from sealagg.appliance.kit import ClientKit, load_kit
from sealagg.appliance.server import ADMIN_NAMES, Appliance, open_store
from sealagg.crypto import IdentityKey
from sealagg.crypto.roster import IdentityKeySigner, Role, Roster, RosterEntry, Signer, sign_roster


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_model(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "layer.weight": rng.normal(0, 0.1, (16, 8)).astype(np.float32),
        "layer.bias": np.zeros(8, dtype=np.float32),
    }


@dataclasses.dataclass
class Deployment:
    folder: Path
    port: int
    federation: FederationFolder
    kits: dict[str, ClientKit]
    #: The test federation authority (kept beside, never inside, the federation folder).
    authority: Signer | None = None
    roster_version: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def sign_roster(
        self,
        names: Iterable[str] | None = None,
        *,
        roles: Mapping[str, Role] | None = None,
        version: int | None = None,
        signer: Signer | None = None,
        install: bool = True,
        policy: Mapping[str, object] | None = None,
    ) -> bytes:
        """Sign (as the test authority, or ``signer``) a roster of the issued clients (or just
        ``names``) and install it; returns the signed bytes."""
        signer = signer or self.authority
        assert signer is not None, "this deployment has no federation authority"
        federation = FederationFolder.load(self.folder)
        records = {r.name: r for r in federation.client_records() if not r.revoked}
        chosen = sorted(records) if names is None else list(names)
        roles = roles or {}
        self.roster_version = version if version is not None else self.roster_version + 1
        roster = Roster(
            federation=federation.name,
            version=self.roster_version,
            issued_at=datetime.now(UTC),
            entries=tuple(
                roster_entry(records[n], roles.get(n, Role.DATA_OWNER))
                for n in chosen
                if n not in ADMIN_NAMES
            ),
            policy=dict(policy or {}),
        )
        data = sign_roster(roster, signer)
        if install:
            install_roster(federation, data)
        return data

    def configure(self, **sections: dict) -> None:
        """Rewrite sealagg.toml keys, e.g. configure(aggregation={"mode": "plaintext"})."""
        path = self.folder / "sealagg.toml"
        text = path.read_text()
        for section, values in sections.items():
            for key, value in values.items():
                rendered = (
                    f'"{value}"'
                    if isinstance(value, str)
                    else str(value).lower()
                    if isinstance(value, bool)
                    else str(value)
                )
                lines = text.splitlines()
                header = f"[{section}]"
                if header not in lines:
                    lines += ["", header]
                start = lines.index(header)
                end = next(
                    (i for i in range(start + 1, len(lines)) if lines[i].startswith("[")),
                    len(lines),
                )
                body = [ln for ln in lines[start + 1 : end] if ln.split("=")[0].strip() != key]
                lines[start + 1 : end] = [*body, f"{key} = {rendered}"]
                text = "\n".join(lines) + "\n"
        path.write_text(text)


class RunningAppliance:
    """An appliance serving on its own event loop in a background thread."""

    def __init__(self, folder: Path, **kwargs) -> None:
        self.loop = asyncio.new_event_loop()
        self.app = Appliance(folder, **kwargs)
        self.stop_event: asyncio.Event | None = None
        self.port = self.loop.run_until_complete(self.app.start())
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        async def main() -> None:
            self.stop_event = asyncio.Event()
            await self.app.run(self.stop_event)

        try:
            self.loop.run_until_complete(main())
        except BaseException as error:  # surfaced by the test through .error
            self.error = error

    def wait(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the appliance did not finish its rounds in time"
        if self.error:
            raise self.error

    def stop(self) -> None:
        if self.thread.is_alive() and self.stop_event is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
            self.thread.join(10)


def roster_entry(record, role: Role = Role.DATA_OWNER) -> RosterEntry:
    """The roster entry for an issued client record (its key, its certificate's TLS key)."""
    assert record.certificate_pem is not None
    cert = pki.load_certificate(record.certificate_pem, what="client certificate")
    return RosterEntry(
        name=record.name,
        identity_key=record.identity_public_key,
        tls_key_sha256=pki.spki_sha256(cert),
        role=role,
        not_before=record.issued_at - timedelta(days=1),
        not_after=record.not_after,
    )


def make_deployment(
    root: Path,
    *,
    clients: int = 4,
    seed: int = 0,
    model: dict[str, np.ndarray] | None = None,
    authority: bool = True,
) -> Deployment:
    """A federation in ``root/federation`` with ``clients`` kits and a base model.

    With ``authority`` (the default) a test federation authority is pinned before the kits
    are issued, and its signed roster of every client is installed: clients then verify the
    members of every round, as in production. Its key lives in memory, never in the folder.
    The kits themselves are development kits (the appliance made their keys), which is what
    lets tests build many clients quickly; enrolment is tested on its own.
    """
    port = free_port()
    folder = root / "federation"
    fed = init_federation(folder, name="testfed", hosts=["localhost", "127.0.0.1"], port=port)
    signer = IdentityKeySigner(IdentityKey.generate()) if authority else None
    if signer is not None:
        pin_authority(fed, signer.public_key())
    kits = {f"client{i}": load_kit(add_client(fed, f"client{i}")) for i in range(clients)}
    store = open_store(fed)
    store.add_model_version(model or base_model(seed), parent=None, status="accepted")
    store.close()
    deployment = Deployment(folder, port, fed, kits, authority=signer)
    if signer is not None:
        deployment.sign_roster()
    return deployment


class TcpProxy:
    """A loopback TCP relay in front of the appliance, to break connections on purpose.

    ``cut_after(n)`` closes the connection that carries the n-th client-to-appliance byte
    from now on (once), which is a connection lost mid-upload; ``block()`` drops every
    connection and refuses new ones until ``unblock()`` (a network partition).
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._cut_budget: int | None = None
        self._blocked = False
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut_after(self, upstream_bytes: int) -> None:
        with self._lock:
            self._cut_budget = upstream_bytes

    def block(self) -> None:
        with self._lock:
            self._blocked = True
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            _close(*pair)

    def unblock(self) -> None:
        with self._lock:
            self._blocked = False

    def close(self) -> None:
        self.block()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                blocked = self._blocked
            if blocked:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        try:
            while data := source.recv(65536):
                if upstream and self._spend(len(data)):
                    break
                sink.sendall(data)
        except OSError:
            pass
        _close(source, sink)

    def _spend(self, count: int) -> bool:
        """Count upstream bytes against a pending cut; True when this connection must break."""
        with self._lock:
            if self._cut_budget is None:
                return False
            self._cut_budget -= count
            if self._cut_budget > 0:
                return False
            self._cut_budget = None
            self.cuts += 1
            return True


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
