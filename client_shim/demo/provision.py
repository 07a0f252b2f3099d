"""Provision the demo federation as an operator would, through the ``sealagg`` CLI.

``sealagg init`` creates the federation (CA, server certificate, audit key, ``sealagg.toml``
and the administrator's kit), ``sealagg add-client`` one kit per client (in mode ckks also
one for the key holder, named in ``[ckks] key_holder``), a few keys of the
generated ``sealagg.toml`` are set for the demo, and ``sealagg model import`` registers the
base model (a 64→64→10 MLP initialised from the seed, written as safetensors).
"""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

from sealagg.client_shim.demo.commands import run_sealagg, run_sealagg_each
from sealagg.client_shim.demo.config import DemoConfig
from sealagg.client_shim.demo.toml_edit import Scalar, set_keys_in_file

FEDERATION_NAME = "sealagg-demo"
#: Where ``sealagg init`` writes the administrator's kit, inside the federation folder.
ADMIN_KIT_DIRNAME = "admin-kit"
#: Seconds each phase waits for late clients. The first phase includes local training (~0.2 s)
#: and, for a client that vanished in the previous round, possibly its restart (a cold Python
#: + torch start and warm-up take ~5 s on a busy 2-core machine). Protocol phases take
#: milliseconds here; their deadlines only matter when a client vanished.
DEADLINES = {
    "advertise_keys": 15.0,
    "share_keys": 5.0,
    "masked_input": 5.0,
    "consistency_check": 5.0,
    "unmasking": 5.0,
}
#: The appliance clips every update coordinate to ±clip before quantization; local updates
#: here reach ~1.5 in a few coordinates, so 2.0 keeps them intact.
COORDINATE_CLIP = 2.0


@dataclasses.dataclass(frozen=True)
class Federation:
    """The provisioned federation: its folder and the kits the demo hands out."""

    folder: Path
    kits: dict[str, Path]
    admin_kit: Path

    @property
    def config_file(self) -> Path:
        return self.folder / "sealagg.toml"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def demo_settings(config: DemoConfig) -> dict[str, dict[str, Scalar]]:
    """The ``sealagg.toml`` keys the demo sets on top of what ``sealagg init`` wrote."""
    settings: dict[str, dict[str, Scalar]] = {
        "aggregation": {
            "mode": config.mode,
            "min_clients": config.min_clients(),
            "max_clients": config.max_clients(),
            "rounds": config.rounds,
            "dropout_rate": max(0.1, round(config.dropout, 3)),
            "clip": COORDINATE_CLIP,
            "ready_window": 10.0,
        },
        "deadlines": dict(DEADLINES),
        "optimizer": {"name": config.optimizer, "server_lr": config.server_lr},
    }
    if config.key_holder:  # mode ckks refuses a round without a designated key holder
        settings["ckks"] = {"key_holder": config.key_holder}
    return settings


def write_base_model(path: Path, seed: int) -> None:
    """The initial global model as safetensors (what ``sealagg model import`` takes)."""
    import safetensors.numpy

    from sealagg.client_shim.demo.model import make_model, to_numpy

    safetensors.numpy.save_file(to_numpy(make_model(seed)), str(path))


def provision(folder: Path, config: DemoConfig, work: Path) -> Federation:
    """Create the federation in ``folder`` (new or empty), running each command in ``work``."""
    run_sealagg(
        "init",
        "--name",
        FEDERATION_NAME,
        "--host",
        "localhost",
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
        federation=folder,
        cwd=work,
    )
    kits = {name: folder / "kits" / name for name in config.process_names}
    federation = Federation(folder, kits, folder / ADMIN_KIT_DIRNAME)
    set_keys_in_file(federation.config_file, demo_settings(config))
    base_model = work / "base-model.safetensors"
    write_base_model(base_model, config.seed)
    # Independent of each other once the federation exists: issued side by side.
    run_sealagg_each(
        [
            *(("add-client", name, "--out", str(kit)) for name, kit in kits.items()),
            ("model", "import", str(base_model)),
        ],
        federation=folder,
        cwd=work,
    )
    return federation
