"""The client's patience with the appliance, and its refusals, against a real appliance on
loopback (mutual TLS, real certificates, a real revoked kit).

Before issue 19 a client gave up with a raw ``_InactiveRpcError`` after a fixed 120 s of
downtime that ``connect()`` could not change, and a revoked client got a traceback.
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from sealagg import client_shim
from sealagg.appliance import pki
from sealagg.appliance.federation import FederationFolder, revoke_client
from sealagg.appliance.kit import ClientKit, KitMismatchError, load_kit
from sealagg.appliance.testing import RunningAppliance, free_port, make_deployment
from sealagg.client_shim.connection import Connection

FAST = {"wait_initial": 0.05, "wait_max": 0.2, "wait_jitter": 0.05}


@pytest.fixture
def dep(tmp_path):
    return make_deployment(tmp_path, clients=3)


def test_max_downtime_is_set_from_connect_and_ends_in_a_clear_error(dep, running):
    app = running(dep.folder)
    federation = client_shim.connect(dep.kits["client0"], address=dep.address, max_downtime=1.5)
    connection = federation.connection
    assert connection.max_downtime == 1.5
    connection.backoff = FAST
    assert connection.get_task(0.1).WhichOneof("kind") in ("idle", "round_start")
    app.stop()  # the appliance goes away for good
    with pytest.raises(client_shim.ApplianceUnavailableError) as info:
        connection.get_task(0.1)
    error = info.value
    assert not isinstance(error, client_shim.AccessRefusedError)
    message = str(error)
    assert dep.address in message and "'client0'" in message and "max_downtime=1.5 s" in message
    assert error.address == dep.address and error.waited > 0
    assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.UNAVAILABLE
    federation.close()


def test_a_poll_waits_through_an_appliance_restart_within_max_downtime(dep, running):
    app = running(dep.folder)
    connection = Connection(dep.kits["client1"], address=dep.address, timeout=5, max_downtime=60)
    connection.backoff = FAST
    assert connection.get_task(0.1).WhichOneof("kind") in ("idle", "round_start")
    app.stop()
    restarted: list[RunningAppliance] = []

    def restart() -> None:
        time.sleep(1.0)
        restarted.append(running(dep.folder))

    thread = threading.Thread(target=restart, daemon=True)
    thread.start()
    assert connection.get_task(0.1).WhichOneof("kind") in ("idle", "round_start")
    thread.join(30)
    assert restarted
    connection.close()


def test_connect_waits_for_an_appliance_that_is_not_up_yet(dep, running):
    started: list[RunningAppliance] = []

    def later() -> None:
        time.sleep(1.5)
        started.append(running(dep.folder))

    thread = threading.Thread(target=later, daemon=True)
    thread.start()
    federation = client_shim.connect(dep.kits["client0"], address=dep.address, max_downtime=60)
    assert federation.connection.get_task(0.1).WhichOneof("kind") in ("idle", "round_start")
    federation.close()
    thread.join(30)


def test_the_roster_sync_that_opens_every_round_waits_for_a_late_appliance(dep, running):
    """A client whose first call is a round's roster sync (``Participant.run_round`` on a
    bare Connection) waits for an appliance that comes up seconds later; before, gRPC's five
    quick attempts (about 2-4 s) ran out and the client died with UNAVAILABLE."""
    connection = Connection(dep.kits["client0"], address=dep.address, timeout=5, max_downtime=60)
    connection.backoff = FAST
    started: list[RunningAppliance] = []

    def later() -> None:
        time.sleep(5.0)  # longer than gRPC's own retry policy lasts
        started.append(running(dep.folder))

    thread = threading.Thread(target=later, daemon=True)
    thread.start()
    assert connection.get_roster(0) != b""  # the signed roster, once the appliance answers
    thread.join(30)
    assert started
    connection.close()


def test_the_roster_sync_gives_up_after_max_downtime(dep):
    connection = Connection(
        dep.kits["client0"], address=f"127.0.0.1:{free_port()}", timeout=1, max_downtime=1.0
    )
    connection.backoff = FAST
    with pytest.raises(client_shim.ApplianceUnavailableError, match="roster"):
        connection.get_roster(0)
    connection.close()


def test_connect_gives_up_after_max_downtime_when_nothing_answers(dep):
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(client_shim.ApplianceUnavailableError) as info:
        client_shim.connect(dep.kits["client0"], address=address, max_downtime=1.0)
    assert address in str(info.value) and "within 1 s" in str(info.value)
    with pytest.raises(ValueError, match="max_downtime"):
        client_shim.connect(dep.kits["client0"], address=address, max_downtime=-1)


def test_revoked_client_gets_a_clear_refusal_at_connect_and_mid_run(dep, running):
    running(dep.folder)
    connected = Connection(dep.kits["client2"], address=dep.address, timeout=5, max_downtime=60)
    assert connected.get_task(0.1).WhichOneof("kind") in ("idle", "round_start")
    revoke_client(FederationFolder.load(dep.folder), "client2")
    # Mid-run: the next poll is refused at once and says why (retrying out max_downtime
    # would have ended in ApplianceUnavailableError, not AccessRefusedError).
    with pytest.raises(client_shim.AccessRefusedError) as info:
        connected.get_task(0.1)
    assert "revoked" in str(info.value) and "'client2'" in str(info.value)
    assert dep.address in str(info.value)
    connected.close()
    # At connect: refused at once, with the appliance's reason.
    with pytest.raises(client_shim.AccessRefusedError, match="revoked") as info:
        client_shim.connect(dep.kits["client2"], address=dep.address, max_downtime=60)
    assert isinstance(info.value, grpc.RpcError)  # still an RPC failure for older callers
    # The others are served.
    other = client_shim.connect(dep.kits["client1"], address=dep.address, max_downtime=5)
    assert other.connection.get_task(0.1).WhichOneof("kind") in ("idle", "round_start")
    other.close()


def test_certificate_refused_in_the_tls_handshake_is_named_not_retried(dep, running):
    """A certificate from the federation's CA that the appliance never registered: the TLS
    handshake itself fails, which gRPC reports as UNAVAILABLE like a stopped appliance. The
    client tells the two apart and says so instead of retrying for max_downtime."""
    running(dep.folder)
    fed = FederationFolder.load(dep.folder)
    key = pki.generate_tls_key()
    forged = pki.issue_client_certificate(
        fed.ca_certificate, fed.ca_private_key(), key.public_key(), name="client1", now=None
    )
    genuine = dep.kits["client1"]
    kit = ClientKit(
        **{
            **{f: getattr(genuine, f) for f in genuine.__dataclass_fields__},
            "client_cert_pem": pki.certificate_pem(forged),
            "client_key_pem": pki.private_key_pem(key, None),
        }
    )
    connection = Connection(kit, address=dep.address, timeout=5, max_downtime=60)
    with pytest.raises(client_shim.AccessRefusedError) as info:
        connection.get_task(0.1)
    assert "refuses" in str(info.value) and "'client1'" in str(info.value)
    connection.close()


def test_kit_of_another_federation_fails_fast_during_a_poll(dep, running, tmp_path):
    from sealagg.appliance.federation import add_client, init_federation

    running(dep.folder)
    other = init_federation(tmp_path / "other", name="other", hosts=["localhost"], port=dep.port)
    stranger = Connection(
        load_kit(add_client(other, "client0")), address=dep.address, timeout=5, max_downtime=60
    )
    with pytest.raises(KitMismatchError, match="another federation"):
        stranger.get_task(0.1)
    stranger.close()


def test_demo_client_prints_one_line_for_a_revoked_kit(dep, running, tmp_path, capsys):
    from sealagg.client_shim.demo.client import main

    running(dep.folder)
    revoke_client(FederationFolder.load(dep.folder), "client2")
    kit = dep.kits["client2"].source
    code = main(["--kit", str(kit), "--key-holder", "--rounds", "1", "--address", dep.address])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("sealagg client") and "revoked" in err[-1]
    assert not any("Traceback" in line for line in err)


def test_a_normal_connect_makes_no_certificate_less_handshake(dep, running, capfd):
    """connect() used to open a TLS connection without a client certificate first (to tell a
    wrong kit early), and the appliance logged a refused handshake for every normal client.
    That probe now runs only after a failure."""
    running(dep.folder)
    capfd.readouterr()
    federation = client_shim.connect(dep.kits["client0"], address=dep.address, max_downtime=10)
    assert federation.connection.get_task(0.1).WhichOneof("kind") in ("idle", "round_start")
    federation.close()
    err = capfd.readouterr().err
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" not in err
    assert "Handshake failed" not in err
