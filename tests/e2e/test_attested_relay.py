"""Issue 18, critical: a relay outside the TEE with a copy of the federation folder.

The relay holds every key on disk (server.key, the CA key, the kits left in ``kits/``),
runs its own mutual-TLS endpoint and its own appliance built from the copied folder, and
forwards only ``Attest`` to the genuine, attested appliance (fake SEV-SNP / TDX hardware
with collateral from the test suite's own vendor chains). Before issue 18 the genuine
evidence bound ``server.key``, so the client pinned a certificate the relay could present
and sent its update to the relay in plaintext. Now the genuine appliance's TLS key is born
in memory at start (appliance/tee_identity.py): the client refuses the relay with
``Reason.WRONG_TLS_KEY`` before a single upload byte reaches it.

Everything is real: gRPC on loopback, federation certificates, the appliance, the shim.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sealagg_testkit.attested import (
    HARDWARE,
    HOSTS,
    MEASUREMENT,
    Relay,
    attested_federation,
    stolen_copy,
)
from sealagg_testkit.audit import audit_details

from sealagg.appliance import pki
from sealagg.appliance.errors import ProvisioningError
from sealagg.appliance.federation import FederationFolder, init_federation
from sealagg.appliance.server import Appliance
from sealagg.appliance.testing import Deployment, base_model, free_port
from sealagg.appliance.wire.modelcodec import Layout
from sealagg.attest import AttestationRefusedError, Reason
from sealagg.attest.testing_snp import SnpAuthority
from sealagg.client_shim.attestation import AttestationGuard
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant

DIM = Layout.of(base_model()).dimension


def _federation(root: Path, hardware) -> Deployment:
    """Kits carrying ``hardware``'s strict policy, its collateral in the folder."""
    return attested_federation(root, hardware, deadlines={"advertise_keys": 5})


def _relay_setup(tmp_path: Path, hardware, running, *, own_certificate: bool):
    dep = _federation(tmp_path, hardware)
    copy = stolen_copy(dep, tmp_path)  # every key on disk, CA key and kits included
    genuine = running(dep.folder, attester=hardware.attester(MEASUREMENT))
    backend_port = free_port()
    FederationFolder.load(copy)  # the copy is a complete federation
    config = copy / "sealagg.toml"
    config.write_text(
        config.read_text().replace(f"127.0.0.1:{dep.port}", f"127.0.0.1:{backend_port}", 1)
    )
    # The relay's own appliance: the same code, outside any TEE, with the software attester.
    Deployment(copy, backend_port, FederationFolder.load(copy), {}).configure(
        attestation={"provider": "software"}
    )
    running(copy, insecure=True)
    relay = Relay(
        f"127.0.0.1:{genuine.port}",
        copy,
        backend=f"127.0.0.1:{backend_port}",
        own_certificate=own_certificate,
    )
    return dep, genuine, relay


@pytest.mark.parametrize("own_certificate", [False, True], ids=["passes-cert-through", "own-cert"])
@pytest.mark.parametrize("fmt", sorted(HARDWARE))
def test_a_relay_with_a_copied_folder_gets_no_update_byte(
    tmp_path, running, accepted, fmt, own_certificate
):
    hardware = HARDWARE[fmt]()
    dep, genuine, relay = _relay_setup(tmp_path, hardware, running, own_certificate=own_certificate)
    conn = Connection(dep.kits["client0"], address=relay.address)
    computed: list[int] = []
    try:
        participant = Participant(conn, poll_seconds=0.5)
        with pytest.raises(AttestationRefusedError) as refused:
            participant.run_round(
                lambda s, t: computed.append(1) or (np.ones(DIM, np.float32), 1.0, {})
            )
    finally:
        conn.close()
        relay.close()
    assert refused.value.reason is Reason.WRONG_TLS_KEY
    assert "Attest" in relay.calls  # the relay did forward the genuine evidence
    assert relay.upload_bytes == 0 and not {"Submit", "SubmitMessage"} & set(relay.calls)
    assert not computed and not accepted  # no update was even computed, none accepted
    genuine.stop()
    results = audit_details(dep.folder, "attestation_result")
    assert all(not r["accepted"] for r in results)  # the genuine appliance saw nothing else


@pytest.mark.parametrize("fmt", sorted(HARDWARE))
def test_the_genuine_appliance_is_accepted_through_the_same_steps(tmp_path, running, fmt):
    """The control: the same client, policy and collateral against the genuine appliance."""
    hardware = HARDWARE[fmt]()
    dep = _federation(tmp_path, hardware)
    app = running(dep.folder, attester=hardware.attester(MEASUREMENT))
    conn = Connection(dep.kits["client0"], address=dep.address)
    try:
        participant = Participant(conn, poll_seconds=0.5)
        report = participant.run_round(lambda s, t: (np.ones(DIM, np.float32), 1.0, {}))
        result = participant.attestation.last_result
    finally:
        conn.close()
    assert report.outcome == "published"
    assert result.accepted and not result.insecure and result.format == fmt
    app.wait(30)
    results = audit_details(dep.folder, "attestation_result")
    assert [(r["client"], r["accepted"]) for r in results] == [("client0", True)]


@pytest.mark.parametrize("fmt", sorted(HARDWARE))
def test_the_appliance_restarted_outside_the_tee_is_refused(tmp_path, running, accepted, fmt):
    """The folder's appliance run outside any TEE (software attester) against a hardware policy.

    Even a client that allows the insecure attester for development refuses it here: its
    hardware policy requires hardware evidence.
    """
    hardware = HARDWARE[fmt]()
    dep = _federation(tmp_path, hardware)
    dep.configure(attestation={"provider": "software"}, aggregation={"rounds": 4})
    running(dep.folder)
    for allow in (False, True):
        conn = Connection(dep.kits["client0"], address=dep.address, allow_insecure_attester=allow)
        computed: list[int] = []

        def compute(s, t, computed=computed):
            computed.append(1)
            return np.ones(DIM, np.float32), 1.0, {}

        try:
            participant = Participant(conn, poll_seconds=0.5)
            with pytest.raises(AttestationRefusedError) as refused:
                participant.run_round(compute)
        finally:
            conn.close()
        assert refused.value.reason is Reason.FORMAT_NOT_ALLOWED, refused.value  # not hardware
        assert not computed and not accepted


def test_the_tls_key_is_born_in_memory_at_every_start(tmp_path, running):
    """An attesting appliance never presents server.key, never writes its key, and makes a
    new one at each start; the audit names the key each start presented."""
    hardware = SnpAuthority()
    dep = _federation(tmp_path, hardware)
    folder_key = FederationFolder.load(dep.folder).server_certificate
    spkis = []
    for _ in range(2):
        app = running(dep.folder, attester=hardware.attester(MEASUREMENT))
        identity = app.app.tls_identity
        assert identity.ephemeral
        assert identity.spki_sha256 != pki.spki_sha256(folder_key)
        pki.check_issued_by(identity.certificate, dep.federation.ca_certificate)
        key = pki.load_tls_key(identity.key_pem, None, what="the born key")
        scalar = key.private_numbers().private_value.to_bytes(32, "big")
        body = b"".join(identity.key_pem.splitlines()[1:-1])  # the base64, lines joined
        for path in dep.folder.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert scalar not in data and body[40:] not in b"".join(data.splitlines()), path
        conn = Connection(dep.kits["client0"], address=dep.address)
        try:  # the certificate the client attests and pins is the one born at this start
            assert AttestationGuard.from_kit(conn).verify().accepted
            assert conn.pinned_certificate == identity.chain_pem
        finally:
            conn.close()
        spkis.append(identity.spki_sha256.hex())
        app.stop()
    assert spkis[0] != spkis[1]
    logged = [e["tls_spki_sha256"] for e in audit_details(dep.folder, "attestation_provider")]
    assert logged == spkis


def test_a_protected_ca_key_must_be_given_to_an_attesting_appliance(tmp_path):
    """The born key's certificate is issued at start: a passphrase-protected CA key must be
    unlocked for it, and the refusal says how (``sealagg serve --passphrase-file``)."""
    folder = tmp_path / "federation"
    init_federation(folder, name="testfed", hosts=HOSTS, port=free_port(), passphrase=b"pw")
    Deployment(folder, 0, FederationFolder.load(folder), {}).configure(
        attestation={"provider": "software"}
    )
    with pytest.raises(ProvisioningError, match="passphrase-file"):
        Appliance(folder)
    app = Appliance(folder, ca_passphrase=b"pw")
    try:
        assert app.tls_identity.ephemeral
    finally:
        app.store.close()
