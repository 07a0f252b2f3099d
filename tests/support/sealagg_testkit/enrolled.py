"""A federation whose clients enrolled as production clients do (no development kits).

Each client makes its own identity and TLS keys and an enrolment request
(:func:`sealagg.client_shim.enrol.request`); the federation authority (a real
passphrase-protected key folder beside, never inside, the federation) approves all requests
into one roster version; the appliance installs that roster and certifies each request; the
authority countersigns each issued kit; the client installs it next to its own keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from sealagg.appliance import authority as auth
from sealagg.appliance.federation import (
    add_enrolled_client,
    init_federation,
    install_roster,
    pin_authority,
)
from sealagg.appliance.kit import load_kit
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import Deployment, base_model, free_port
from sealagg.client_shim import enrol
from sealagg.crypto.roster import Role

PASSPHRASE = b"a long enough test passphrase"
FEDERATION = "testfed"


def authority_folder(dep: Deployment) -> Path:
    """The authority's folder of a deployment made by :func:`make_enrolled_deployment`."""
    return dep.folder.parent / "authority"


def make_enrolled_deployment(
    root: Path, names: Sequence[str], *, roles: Mapping[str, Role] | None = None
) -> Deployment:
    """A federation in ``root/federation``, its authority in ``root/authority``, and one
    enrolled client kit per name in ``root/clients/<name>``; base model 0 installed."""
    port = free_port()
    federation = init_federation(
        root / "federation", name=FEDERATION, hosts=["localhost", "127.0.0.1"], port=port
    )
    authority = root / "authority"
    signer = auth.init_authority(authority, PASSPHRASE, federation=FEDERATION)
    pin_authority(federation, signer.public_key())
    (root / "requests").mkdir()
    requests = {
        name: enrol.request(
            name=name,
            federation=FEDERATION,
            authority_key=signer.public_key(),
            folder=root / "clients" / name,
            request_out=root / "requests" / f"{name}.json",
        ).read_bytes()
        for name in names
    }
    roles = roles or {}
    roster, signed = auth.approve_all(
        authority, signer, [(requests[n], roles.get(n, Role.DATA_OWNER)) for n in names]
    )
    install_roster(federation, signed)
    kits = {}
    for name in names:
        issued = add_enrolled_client(federation, requests[name], out=root / "issued" / name)
        auth.sign_kit(authority, signer, issued)
        enrol.install(issued, root / "clients" / name)
        kits[name] = load_kit(root / "clients" / name)
    store = open_store(federation)
    store.add_model_version(base_model(), parent=None, status="accepted")
    store.close()
    return Deployment(
        root / "federation", port, federation, kits, authority=signer, roster_version=roster.version
    )
