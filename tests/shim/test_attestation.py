"""Attested mode end to end: real gRPC on loopback, real federation certificates.

The shim verifies the appliance before anything of its own is sent, pins the attested
certificate for the session, and refuses a relay holding another certificate. The software
attester is accepted only where the client itself allows it (the ``insecure_ok`` fixture
sets SEALAGG_ALLOW_INSECURE_ATTESTER=1, as a developer would); the relay with a copied
federation folder is tests/e2e/test_attested_relay.py.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
import tomllib
from concurrent import futures
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from sealagg_testkit.attested import HOSTS, MEASUREMENT, policy_federation, strict_policy
from sealagg_testkit.audit import audit_details

from sealagg.appliance import pki
from sealagg.appliance.attestation import (
    SOFTWARE_MEASUREMENT,
    AttestationEndpoint,
    client_policy_path,
    collateral_path,
)
from sealagg.appliance.config import parse_config
from sealagg.appliance.errors import ConfigError, ProvisioningError
from sealagg.appliance.federation import FederationFolder, add_client
from sealagg.appliance.kit import load_kit
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import Deployment, base_model
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire import sealagg_pb2_grpc as pb_grpc
from sealagg.appliance.wire.modelcodec import Layout, flatten
from sealagg.attest import (
    AttestationError,
    AttestationRefusedError,
    PolicyError,
    Reason,
    SoftwareAttester,
)
from sealagg.attest.collateral import CollateralBundle
from sealagg.attest.testing import SnpAuthority
from sealagg.client_shim.attestation import (
    ALLOW_INSECURE_ENV,
    AttestationGuard,
    policy_from_kit,
)
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant
from sealagg.crypto import IdentityKey

DIM = Layout.of(base_model()).dimension
FAST = {"advertise_keys": 6}


@pytest.fixture
def insecure_ok(monkeypatch):
    """This client's own configuration accepts the INSECURE software attester (development)."""
    monkeypatch.setenv(ALLOW_INSECURE_ENV, "1")


def _federation(root: Path, *, clients: int = 2, policy: str | None = None, software=True):
    """A federation whose kits carry an attestation policy (software attester by default)."""
    return policy_federation(root, clients=clients, policy=policy, software=software)


def _delta(i: int) -> np.ndarray:
    return np.random.default_rng(7 + i).normal(0, 0.05, DIM).astype(np.float32)


def test_grpc_accepts_a_ca_issued_leaf_as_the_only_trust_anchor(tmp_path, running):
    """The pinning the shim relies on: the leaf alone is a trust anchor; another leaf is not."""
    dep = _federation(tmp_path, clients=1, software=False)
    other = _federation(tmp_path / "other", clients=1, software=False)
    running(dep.folder)
    kit = dep.kits["client0"]
    for leaf, ok in (
        (dep.federation.server_certificate, True),
        (other.federation.server_certificate, False),
    ):
        conn = Connection(kit, address=dep.address)
        conn.pin_server_certificate(pki.certificate_pem(leaf))
        ready = grpc.channel_ready_future(conn.channel)
        try:
            ready.result(timeout=3)
            connected = True
        except grpc.FutureTimeoutError:
            connected = False
        conn.close()
        assert connected is ok


def test_attested_rounds_publish_the_mean_and_audit_every_verification(
    tmp_path, running, capfd, insecure_ok
):
    dep = _federation(tmp_path)
    dep.configure(
        aggregation={"mode": "attested", "min_clients": 2, "rounds": 2},
        attestation={"provider": "software"},
        deadlines=FAST,
    )
    app = running(dep.folder)
    reports, errors = {}, {}

    def work(name: str) -> None:
        i = int(name.removeprefix("client"))
        conn = Connection(dep.kits[name], address=dep.address)
        participant = Participant(conn, poll_seconds=1.0)
        try:
            reports[name] = [
                participant.run_round(lambda s, t, i=i: (_delta(i), 0.5, {})) for _ in range(2)
            ]
            assert participant.attestation.last_result.insecure
        except Exception as error:
            errors[name] = error
        finally:
            conn.close()

    threads = [threading.Thread(target=work, args=(n,)) for n in dep.kits]
    for t in threads:
        t.start()
    app.wait(90)
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert all(r.outcome == "published" for rs in reports.values() for r in rs), reports
    store = open_store(FederationFolder.load(dep.folder))
    try:
        model = store.current_model()
        tensors = store.load_model(model.version)
    finally:
        store.close()
    base = base_model()
    mean = (_delta(0) + _delta(1)) / 2
    want = flatten(base, Layout.of(base)) + 2 * mean  # the same update in both rounds
    np.testing.assert_allclose(flatten(tensors, Layout.of(base)), want, atol=1e-5)
    results = audit_details(dep, "attestation_result")
    assert len(results) == 4 and all(r["accepted"] for r in results)  # 2 clients x 2 rounds
    assert {r["client"] for r in results} == {"client0", "client1"}
    (provider,) = audit_details(dep, "attestation_provider")
    assert provider["format"] == "software" and provider["insecure"] and not provider["additional"]
    assert provider["tls_spki_sha256"] == app.app.tls_identity.spki_sha256.hex()
    assert "SOFTWARE attester" in capfd.readouterr().err


def test_refused_evidence_stops_the_client_and_nothing_is_sent(
    tmp_path, running, accepted, insecure_ok
):
    dep = _federation(tmp_path, clients=2)
    # Issue client9's kit under a policy that expects another measurement.
    path = client_policy_path(dep.folder)
    path.write_text(path.read_text().replace(SOFTWARE_MEASUREMENT.hex(), "55" * 48))
    kit = load_kit(add_client(dep.federation, "client9"))
    dep.configure(
        aggregation={"mode": "attested", "min_clients": 1, "rounds": 1},
        attestation={"provider": "software"},
        deadlines={"advertise_keys": 2},
    )
    app = running(dep.folder)
    conn = Connection(kit, address=dep.address)
    participant = Participant(conn, poll_seconds=1.0)
    computed = []
    with pytest.raises(AttestationRefusedError) as refused:
        participant.run_round(lambda s, t: computed.append(1) or (_delta(0), 1.0, {}))
    conn.close()
    assert refused.value.reason is Reason.MEASUREMENT_NOT_ALLOWED
    assert "measurement_not_allowed" in str(refused.value)
    assert not computed and not accepted  # nothing of client9 reached a round
    app.stop()
    results = audit_details(dep, "attestation_result")
    assert [(r["client"], r["accepted"], r["reason"]) for r in results] == [
        ("client9", False, "measurement_not_allowed")
    ]


class _Relay(pb_grpc.AggregatorServicer):
    """A man in the middle with its own CA-issued certificate, forwarding Attest upstream."""

    def __init__(self, upstream: Connection, own_der: bytes | None) -> None:
        self.upstream, self.own_der, self.calls = upstream, own_der, []

    def Attest(self, request, context):
        self.calls.append("Attest")
        reply = self.upstream.stub.Attest(request, timeout=10)
        if self.own_der is not None:
            reply.tls_certificate_der = self.own_der
        return reply

    def ReportAttestation(self, request, context):
        self.calls.append(("Report", request.reason))
        return pb.AttestationReportAck()

    def GetTask(self, request, context):
        self.calls.append("GetTask")
        context.abort(grpc.StatusCode.UNAVAILABLE, "relay")

    def Submit(self, request_iterator, context):
        self.calls.append("Submit")
        context.abort(grpc.StatusCode.UNAVAILABLE, "relay")


def _start_relay(dep: Deployment, upstream: Connection, *, substitute: bool):
    key = pki.generate_tls_key()
    fed = dep.federation
    cert = pki.issue_server_certificate(
        fed.ca_certificate, fed.ca_private_key(), key.public_key(), hosts=HOSTS,
        now=datetime.now(UTC),
    )  # fmt: skip
    der = cert.public_bytes(Encoding.DER)
    relay = _Relay(upstream, der if substitute else None)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_AggregatorServicer_to_server(relay, server)
    creds = grpc.ssl_server_credentials(
        [(pki.private_key_pem(key, None), pki.certificate_pem(cert))]
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    return server, relay, f"127.0.0.1:{port}"


@pytest.mark.parametrize("substitute", [False, True], ids=["passes-cert-through", "own-cert"])
def test_relay_with_another_certificate_is_refused(
    tmp_path, running, accepted, substitute, insecure_ok
):
    dep = _federation(tmp_path, clients=2)
    dep.configure(
        aggregation={"mode": "attested", "min_clients": 2}, attestation={"provider": "software"}
    )
    running(dep.folder)
    upstream = Connection(dep.kits["client1"], address=dep.address)  # the relay is a member
    server, relay, address = _start_relay(dep, upstream, substitute=substitute)
    conn = Connection(dep.kits["client0"], address=address)
    try:
        participant = Participant(conn, poll_seconds=1.0)
        start = pb.RoundStart(round_number=1, round_id=b"\x01" * 32, mode="attested")
        computed = []
        with pytest.raises(AttestationRefusedError) as refused:
            participant.run_round(lambda s, t: computed.append(1) or (_delta(0), 1.0, {}), start)
        assert refused.value.reason is Reason.WRONG_TLS_KEY
        assert not computed and "Submit" not in relay.calls and not accepted
        assert ("Report", "bound_to_another_tls_key") in relay.calls
    finally:
        conn.close()
        upstream.close()
        server.stop(0)


def test_fake_snp_hardware_over_the_wire(tmp_path, running):
    amd = SnpAuthority()
    dep = _federation(tmp_path, clients=1, software=False, policy=strict_policy(amd, max_age=30))
    amd.collateral().write_directory(collateral_path(dep.folder))
    for attester, reason in (
        (amd.attester(MEASUREMENT), None),
        (amd.attester(MEASUREMENT, debug=True), Reason.DEBUG_ENABLED),
    ):
        app = running(dep.folder, attester=attester)
        conn = Connection(dep.kits["client0"], address=f"127.0.0.1:{app.port}")
        guard = AttestationGuard.from_kit(conn)
        try:
            if reason is None:
                result = guard.verify()
                assert result.accepted and not result.insecure and result.format == "sev-snp"
                result = guard.verify()  # again, over the pinned channel: a fresh nonce
                assert result.claims["measurement"] == MEASUREMENT.hex()
            else:
                with pytest.raises(AttestationRefusedError) as refused:
                    guard.verify()
                assert refused.value.reason is reason
        finally:
            conn.close()
            app.stop()
    results = audit_details(dep, "attestation_result")
    assert [(r["accepted"], r["reason"]) for r in results] == [
        (True, ""),
        (True, ""),
        (False, "debug_enabled"),
    ]


def test_attested_round_needs_a_policy_in_the_kit(tmp_path, running, accepted):
    dep = _federation(tmp_path, clients=1, software=False)
    conn = Connection(dep.kits["client0"], address=dep.address)
    participant = Participant(conn)
    assert participant.attestation is None
    start = pb.RoundStart(round_number=1, round_id=b"\x02" * 32, mode="attested")
    with pytest.raises(PolicyError, match="no attestation policy"):
        participant.run_round(lambda s, t: (_delta(0), 1.0, {}), start)
    conn.close()


def test_a_malformed_policy_is_never_shipped_nor_accepted(tmp_path):
    dep = _federation(tmp_path, clients=1)
    client_policy_path(dep.folder).write_text("version = 1\n[software]\n")
    with pytest.raises(ProvisioningError, match="attestation policy"):
        add_client(dep.federation, "client5")
    broken = dataclasses.replace(dep.kits["client0"], attestation_policy=b"version = = 1")
    conn = Connection(broken, address=dep.address)
    with pytest.raises(PolicyError, match="nothing"):
        Participant(conn)
    conn.close()


def test_attested_mode_needs_an_attester() -> None:
    with pytest.raises(ConfigError, match="attestation"):
        parse_config({"federation": {"name": "f"}, "aggregation": {"mode": "attested"}})
    config = parse_config(
        {
            "federation": {"name": "f"},
            "aggregation": {"mode": "attested", "min_clients": 2},
            "attestation": {"provider": "software"},
        }
    )
    assert config.aggregation.min_clients == 2  # two parties are allowed: no masking involved


def test_reverification_follows_the_configured_interval(tmp_path, running, insecure_ok):
    dep = _federation(tmp_path, clients=1)
    dep.configure(attestation={"provider": "software"})
    running(dep.folder)
    now = [1000.0]
    conn = Connection(dep.kits["client0"], address=dep.address)
    guard = AttestationGuard(
        conn, policy_from_kit(conn.kit), interval_seconds=60, clock=lambda: now[0]
    )
    try:
        first = guard.before_upload()
        now[0] += 59
        assert guard.before_upload() is first  # within the interval: no new evidence
        now[0] += 2
        assert guard.before_upload() is not first
    finally:
        conn.close()
    assert len(audit_details(dep, "attestation_result")) == 2


def _one_verification(dep: Deployment, running, **options) -> Reason | None:
    """Start the appliance (``options``: Appliance keywords), verify once as client0, stop:
    None if accepted, else the refusal's reason."""
    app = running(dep.folder, **{k: v for k, v in options.items() if k != "allow"})
    conn = Connection(
        dep.kits["client0"], address=dep.address, allow_insecure_attester=options.get("allow")
    )
    try:
        AttestationGuard.from_kit(conn).verify()
        return None
    except AttestationRefusedError as refused:
        return refused.reason
    finally:
        conn.close()
        app.stop()


def test_only_the_clients_own_configuration_accepts_the_software_attester(
    tmp_path, running, monkeypatch
):
    """Issue 18: the operator's policy file cannot opt clients in; the client decides."""
    dep = _federation(tmp_path, clients=1)
    assert (
        "allow_insecure"
        not in tomllib.loads(client_policy_path(dep.folder).read_text())["software"]
    )
    dep.configure(attestation={"provider": "software"})
    monkeypatch.delenv(ALLOW_INSECURE_ENV, raising=False)
    assert _one_verification(dep, running) is Reason.INSECURE_NOT_ALLOWED  # default: refuse
    assert _one_verification(dep, running, allow=True) is None
    monkeypatch.setenv(ALLOW_INSECURE_ENV, "1")
    assert _one_verification(dep, running) is None
    assert _one_verification(dep, running, allow=False) is Reason.INSECURE_NOT_ALLOWED
    monkeypatch.setenv(ALLOW_INSECURE_ENV, "yes")  # only "1" opts in
    assert _one_verification(dep, running) is Reason.INSECURE_NOT_ALLOWED
    results = audit_details(dep, "attestation_result")
    assert [r["reason"] for r in results] == [
        "insecure_attester_not_allowed",
        "",
        "",
        "insecure_attester_not_allowed",
        "insecure_attester_not_allowed",
    ]


def test_every_evidence_item_reaches_the_verifier(tmp_path, running, insecure_ok):
    """AttestReply.additional is appraised: an extra format is refused, a missing one too."""
    amd = SnpAuthority()
    gpu_policy = '{"version": "1.0"}'
    dep = _federation(tmp_path, clients=1, software=False, policy=strict_policy(amd, max_age=30))
    amd.collateral().write_directory(collateral_path(dep.folder))
    extra = SoftwareAttester(IdentityKey.generate(), SOFTWARE_MEASUREMENT)
    attesters = [amd.attester(MEASUREMENT), extra]
    assert _one_verification(dep, running, attester=attesters) is Reason.FORMAT_NOT_ALLOWED
    client_policy_path(dep.folder).write_text(
        strict_policy(amd, max_age=30, gpu_sdk_policy=gpu_policy)
    )
    dep.kits["client0"] = load_kit(add_client(dep.federation, "client1"))  # new policy
    assert _one_verification(dep, running, attester=attesters[:1]) is Reason.MISSING_EVIDENCE
    (provider, *_) = audit_details(dep, "attestation_provider")
    assert provider["format"] == "sev-snp" and provider["additional"] == ["software"]


def test_collateral_comes_from_the_appliance_or_the_kit(tmp_path, running, monkeypatch):
    amd = SnpAuthority()
    dep = _federation(tmp_path, clients=1, software=False, policy=strict_policy(amd, max_age=30))
    attester = amd.attester(MEASUREMENT)
    # Neither the appliance nor the kit has any: a hardware policy refuses, naming the item.
    assert _one_verification(dep, running, attester=attester) is Reason.COLLATERAL_MISSING
    # The appliance's bundle travels in the Attest reply.
    amd.collateral().write_directory(collateral_path(dep.folder))
    assert _one_verification(dep, running, attester=attester) is None
    # A kit issued while the folder holds a bundle carries it (one signed kit file) ...
    kit = load_kit(add_client(dep.federation, "client1"))
    shipped = CollateralBundle.from_bytes(kit.attestation_collateral)
    assert shipped.files == CollateralBundle.from_directory(collateral_path(dep.folder)).files
    shutil.rmtree(collateral_path(dep.folder))
    dep.kits["client0"] = kit
    assert _one_verification(dep, running, attester=attester) is None  # ... and it suffices
    # A malformed bundle from the appliance is a refusal, not a crash.
    monkeypatch.setattr(AttestationEndpoint, "collateral_bytes", lambda self: b"\xc1garbage")
    assert _one_verification(dep, running, attester=attester) is Reason.COLLATERAL_INVALID


def test_a_restarted_appliance_is_verified_again_before_the_next_upload(
    tmp_path, running, insecure_ok
):
    """A new start means a new in-memory key: the pinned certificate stops answering, polls
    fall back to the kit's CA, uploads are refused until the new certificate is attested."""
    dep = _federation(tmp_path, clients=1)
    dep.configure(attestation={"provider": "software"})
    first = running(dep.folder)
    conn = Connection(dep.kits["client0"], address=dep.address, retry_seconds=30)
    guard = AttestationGuard.from_kit(conn, interval_seconds=3600)
    try:
        guard.before_upload()
        old = conn.pinned_certificate
        first.stop()
        second = running(dep.folder)
        conn.get_task(0.1)  # the pinned certificate fails; the poll goes on over the CA
        assert conn.pinned_certificate is None and guard.due()
        with pytest.raises(AttestationError, match="nothing was sent"):
            conn.submit(pb.UploadHeader(phase=1), b"update")
        guard.before_upload()  # within the interval, but the pin was lost: verified again
        assert conn.pinned_certificate not in (None, old)
        assert conn.pinned_certificate == pki.certificate_pem(second.app.tls_identity.certificate)
    finally:
        conn.close()


def test_a_refreshed_collateral_bundle_is_served_without_a_restart(tmp_path, running):
    amd = SnpAuthority()
    dep = _federation(tmp_path, clients=1, software=False, policy=strict_policy(amd, max_age=30))
    running(dep.folder, attester=amd.attester(MEASUREMENT))
    conn = Connection(dep.kits["client0"], address=dep.address)
    guard = AttestationGuard.from_kit(conn)
    try:
        with pytest.raises(AttestationRefusedError) as refused:
            guard.verify()
        assert refused.value.reason is Reason.COLLATERAL_MISSING
        amd.collateral().write_directory(collateral_path(dep.folder))  # the operator refreshes
        assert guard.verify().accepted
    finally:
        conn.close()
