"""Mutual TLS refuses every bad client certificate, and clients refuse a bad appliance.

Each forged client certificate has exactly one defect and is recorded as the client's current
certificate (sealagg_testkit/certs.py), so the refusal is for that defect alone; a control
with the same forging but no defect is accepted. A refusal is either a failed handshake
(UNAVAILABLE: the TLS layer verified the chain or the validity) or PERMISSION_DENIED /
UNAUTHENTICATED (the handshake passed and the per-call certificate check refused it, by
name). Another CA's client is covered by
tests/e2e/test_appliance.py::test_bad_uploads_are_refused_and_the_round_goes_on.
"""

from __future__ import annotations

import dataclasses

import grpc
import pytest
from sealagg_testkit.certs import expire_server_certificate, forged_kit

from sealagg.appliance.errors import KitExpiredError
from sealagg.appliance.federation import FederationFolder, revoke_client
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire import sealagg_pb2_grpc as pb_grpc
from sealagg.client_shim.connection import Connection

REFUSED = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,  # a CA-issued certificate refused per call, by name
)


def _call(kit, address: str) -> grpc.StatusCode:
    """One GetTask over a channel built from the kit's material directly: the client shim's
    own validity check (KitExpiredError) is bypassed, so this measures the appliance."""
    ca, key, cert = kit.channel_credentials_material()
    channel = grpc.secure_channel(
        address,
        grpc.ssl_channel_credentials(ca, key, cert),
        options=[("grpc.ssl_target_name_override", kit.server_name)],
    )
    try:
        pb_grpc.AggregatorStub(channel).GetTask(pb.TaskRequest(wait_seconds=0.05), timeout=5)
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()
    finally:
        channel.close()


@pytest.fixture
def live(deployment, running):
    dep = deployment(clients=2)
    dep.configure(aggregation={"mode": "plaintext", "min_clients": 2})
    app = running(dep.folder)
    return dep, app


def test_a_correctly_forged_certificate_is_accepted(live):
    """The control: the forging helper itself yields a certificate the appliance takes."""
    dep, _ = live
    fed = FederationFolder.load(dep.folder)
    assert _call(forged_kit(fed, dep.kits["client0"], "valid"), dep.address) == grpc.StatusCode.OK


@pytest.mark.parametrize("defect", ["expired", "not_yet_valid", "self_signed"])
def test_bad_client_certificates_are_refused(live, defect):
    """Expired (clock far ahead of the cert), not yet valid (clock behind), self-signed."""
    dep, app = live
    fed = FederationFolder.load(dep.folder)
    code = _call(forged_kit(fed, dep.kits["client0"], defect), dep.address)
    assert code in REFUSED, code
    if defect != "self_signed":  # the shim refuses its own out-of-date kit before dialling
        with pytest.raises(KitExpiredError):
            Connection(forged_kit(fed, dep.kits["client0"], defect), address=dep.address)
    # The appliance keeps serving good clients.
    assert _call(dep.kits["client1"], dep.address) == grpc.StatusCode.OK
    assert app.error is None


def test_revoked_client_is_refused_on_a_new_connection(live):
    """A revoked certificate still completes the handshake (the CA issued it) and its first
    call is refused with PERMISSION_DENIED, naming the client (appliance/interceptors.py)."""
    dep, _ = live
    assert _call(dep.kits["client0"], dep.address) == grpc.StatusCode.OK
    revoke_client(FederationFolder.load(dep.folder), "client0")
    assert _call(dep.kits["client0"], dep.address) in REFUSED
    assert _call(dep.kits["client1"], dep.address) == grpc.StatusCode.OK


def test_wrong_hostname_is_refused_by_the_client(live):
    """The client expects another host name than the appliance's certificate names."""
    dep, _ = live
    wrong = dataclasses.replace(dep.kits["client0"], server_name="not-the-appliance.example")
    assert _call(wrong, dep.address) == grpc.StatusCode.UNAVAILABLE


def test_client_refuses_an_appliance_with_an_expired_certificate(deployment, running):
    """Clock skew on the appliance side: its certificate expired; no client talks to it."""
    dep = deployment(clients=1)
    dep.configure(aggregation={"mode": "plaintext", "min_clients": 1})
    expire_server_certificate(FederationFolder.load(dep.folder))
    running(dep.folder)
    assert _call(dep.kits["client0"], dep.address) == grpc.StatusCode.UNAVAILABLE
