"""Helpers for tests and benchmarks: a real federation on loopback, an appliance in a thread.

Shipped with the package (like ``crypto.testing``) so that the tests, the benchmarks and
the client shim's tests build deployments the same way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
from pathlib import Path

import numpy as np

from appliance.federation import Federation, add_client, init_federation
from appliance.kit import ClientKit, load_kit
from appliance.server import Appliance, open_store


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
    federation: Federation
    kits: dict[str, ClientKit]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

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


def make_deployment(
    root: Path, *, clients: int = 4, seed: int = 0, model: dict[str, np.ndarray] | None = None
) -> Deployment:
    """A federation in ``root/federation`` with ``clients`` kits and a base model."""
    port = free_port()
    folder = root / "federation"
    fed = init_federation(folder, name="testfed", hosts=["localhost", "127.0.0.1"], port=port)
    kits = {f"client{i}": load_kit(add_client(fed, f"client{i}")) for i in range(clients)}
    store = open_store(fed)
    store.add_model_version(model or base_model(seed), parent=None, status="accepted")
    store.close()
    return Deployment(folder, port, fed, kits)
