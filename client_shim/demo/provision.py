"""Provision the demo federation as production does: an authority, enrolled clients.

Three parties, each doing only its own part:

* the security team (``sealagg authority ...``, its folder ``authority/`` beside, never
  inside, the federation): ``init`` makes the passphrase-protected authority key and the
  signed federation policy (c = 1, m = 3, only the demo's mode); ``approve`` signs the roster
  with every client's enrolment request (the ckks key holder in role ``key_holder``);
  ``sign-kit`` countersigns each issued kit;
* each data owner (:mod:`sealagg.client_shim.enrol`, in ``clients/<name>/``): makes its own
  identity and TLS keys and an enrolment request, pinning the authority key; later installs
  its countersigned kit beside those keys (the appliance never holds them);
* the operator (``sealagg ...`` on the federation folder): ``init`` (CA, server certificate,
  audit key, ``sealagg.toml``, the administrator's kit), ``roster install`` (pins the
  authority key, installs its roster), ``add-client --request`` (certifies each client's own
  TLS key), a few ``sealagg.toml`` keys for the demo, and ``model import`` (a 64→64→10 MLP
  initialised from the seed, written as safetensors).

Independent steps run side by side, so this costs three more command starts than the
development kits it replaced.
"""

from __future__ import annotations

import dataclasses
import secrets
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sealagg.appliance.kit import AUTHORITY_KEY, parse_authority_key
from sealagg.client_shim import enrol
from sealagg.client_shim.demo.commands import run_authority, run_sealagg, run_sealagg_each
from sealagg.client_shim.demo.config import POLICY_COLLUDERS, DemoConfig
from sealagg.client_shim.demo.toml_edit import Scalar, set_keys_in_file

FEDERATION_NAME = "sealagg-demo"
#: Beside the federation folder: the security team's authority and the clients' own folders.
AUTHORITY_DIRNAME = "authority"
CLIENTS_DIRNAME = "clients"
#: The federation policy the authority signs: c colluders, sums over at least m clients.
POLICY_MINIMUM_SUM = 3
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
    if config.console:  # loopback, a free port; read-only viewing without signing in
        settings["console"] = {"enabled": True}
    return settings


def write_base_model(path: Path, seed: int) -> None:
    """The initial global model as safetensors (what ``sealagg model import`` takes)."""
    import safetensors.numpy

    from sealagg.client_shim.demo.model import make_model, to_numpy

    safetensors.numpy.save_file(to_numpy(make_model(seed)), str(path))


def provision(folder: Path, config: DemoConfig, work: Path) -> Federation:
    """Create the federation in ``folder`` (new or empty), its authority and the clients'
    enrolled kits beside it, running each command in ``work``."""
    root = folder.parent
    authority, clients = root / AUTHORITY_DIRNAME, root / CLIENTS_DIRNAME
    passphrase = secrets.token_urlsafe(24)  # the demo's throwaway authority key only
    policy = ["--colluders", str(POLICY_COLLUDERS), "--minimum-sum", str(POLICY_MINIMUM_SUM)]
    with ThreadPoolExecutor(max_workers=2) as pool:  # the operator's and the security team's
        federation_done = pool.submit(
            run_sealagg,
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
        authority_done = pool.submit(
            run_authority,
            "init",
            "--out",
            str(authority),
            "--federation",
            FEDERATION_NAME,
            *policy,
            "--mode",
            config.mode,
            passphrase=passphrase,
            cwd=work,
        )
        federation_done.result()
        authority_done.result()
    key = parse_authority_key((authority / AUTHORITY_KEY).read_bytes())  # given out of band
    requests = {  # on each client's machine: its own keys never leave clients/<name>
        name: enrol.request(
            name=name,
            federation=FEDERATION_NAME,
            authority_key=key,
            folder=clients / name,
            request_out=work / f"{name}.request.json",
        )
        for name in config.process_names
    }
    owners = [str(requests[name]) for name in config.client_names]
    run_authority("approve", *owners, "--dir", str(authority), passphrase=passphrase, cwd=work)
    if config.key_holder:
        holder = str(requests[config.key_holder])
        run_authority(
            "approve", holder, "--role", "key_holder", "--dir", str(authority),
            passphrase=passphrase, cwd=work,
        )  # fmt: skip
    run_sealagg(
        "roster", "install", str(authority / "roster.json"), "--authority-key", key.hex(),
        federation=folder, cwd=work,
    )  # fmt: skip
    federation = Federation(
        folder, {name: clients / name for name in config.process_names}, folder / ADMIN_KIT_DIRNAME
    )
    set_keys_in_file(federation.config_file, demo_settings(config))
    base_model = work / "base-model.safetensors"
    write_base_model(base_model, config.seed)
    issued = {name: folder / "kits" / name for name in config.process_names}
    run_sealagg_each(  # independent of each other once the roster is installed
        [
            *(
                ("add-client", "--request", str(requests[n]), "--out", str(k))
                for n, k in issued.items()
            ),
            ("model", "import", str(base_model)),
        ],
        federation=folder,
        cwd=work,
    )
    run_authority(
        "sign-kit", *(str(path) for path in issued.values()), "--dir", str(authority),
        passphrase=passphrase, cwd=work,
    )  # fmt: skip
    for name, path in issued.items():
        enrol.install(path, federation.kits[name])
    return federation
