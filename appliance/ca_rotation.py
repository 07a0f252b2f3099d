"""Offline certificate operations: renew the server certificate, re-issue a client's, rotate
the CA. Each needs the CA key (``--passphrase-file`` for a protected federation) and takes the
folder's lock; a running appliance picks the result up at its next handshake.

CA rotation, the operator's steps (README, "Certificates"):

1. ``sealagg certs rotate-ca``: a new CA becomes the issuing one. The old CA stays trusted for
   client certificates (``ca-previous.pem``) and its key stays (``ca-previous.key``) so the
   server certificate clients trust today keeps being served. ``ca-cross.pem``, the new CA
   certified by the old key, lets a client learn the new CA from one it already trusts.
2. Clients renew (automatically within 30 days of expiry, or ``sealagg-renew``): they get a
   certificate from the new CA and the bundle (new CA, old CA, cross-certificate).
   ``sealagg certs status`` lists who is still on the old CA.
3. ``sealagg certs renew-server``: the server certificate now comes from the new CA; clients
   that renewed trust it; a client that did not cannot connect any more (it must get a new
   kit or its bundle: ``sealagg certs renew-client``).
4. ``sealagg certs finish-ca-rotation``: the old CA and its key are deleted; certificates it
   issued are refused from the next handshake on. Refused while the server certificate or an
   active client still depends on the old CA, unless ``force``.

Why the server certificate is re-issued only in step 3: clients verify the server by the CA
in their kit; one issued by the new CA before they have it would lock them all out.
"""

from __future__ import annotations

import contextlib
import dataclasses
from datetime import datetime

from cryptography import x509

from sealagg.appliance import pki
from sealagg.appliance.errors import ProvisioningError
from sealagg.appliance.federation import ClientRecord, FederationFolder
from sealagg.appliance.renewal import record_renewal
from sealagg.appliance.tee_identity import server_hosts

__all__ = [
    "clients_on_previous_ca",
    "finish_ca_rotation",
    "renew_client_offline",
    "renew_server_certificate",
    "rotate_ca",
    "rotation_in_progress",
]


def rotation_in_progress(federation: FederationFolder) -> bool:
    return federation.previous_ca_certificate is not None


def renew_server_certificate(
    federation: FederationFolder, *, now: datetime | None = None
) -> x509.Certificate:
    """A new server key and certificate from the current CA, for the same hosts.

    A new key, not the old one re-certified: the key file is what a copy of the folder
    leaks, and clients pin the CA, not the server key, so changing it costs them nothing.
    The key is written before the certificate; a server reading in between keeps the old
    pair (tee_identity.refreshed_identity)."""
    moment = pki.issuance_time(now)
    with federation._exclusive():
        ca_key = federation.ca_private_key()
        key = pki.generate_tls_key()
        cert = pki.issue_server_certificate(
            federation.ca_certificate,
            ca_key,
            key.public_key(),
            hosts=server_hosts(federation.server_certificate),
            now=moment,
        )
        paths = federation.paths
        pki.write_file_atomic(
            paths.server_key, pki.private_key_pem(key, None), mode=pki.PRIVATE_FILE_MODE
        )
        pki.write_file_atomic(
            paths.server_cert, pki.certificate_pem(cert), mode=pki.PUBLIC_FILE_MODE
        )
    return cert


@dataclasses.dataclass(frozen=True)
class OfflineRenewal:
    record: ClientRecord
    certificate_pem: bytes
    ca_bundle_pem: bytes
    previous_serial: int


def renew_client_offline(
    federation: FederationFolder,
    name: str,
    csr_pem: bytes | None = None,
    *,
    now: datetime | None = None,
) -> OfflineRenewal:
    """Re-issue client ``name``'s certificate from the current CA without re-enrolment, for a
    client that cannot renew over the wire (its certificate expired, or it is still on the
    old CA after step 3). ``csr_pem``: the client's request for its key (an enrolled client
    keeps its key to itself); without it, the current key is re-certified, which the operator
    can do only because the certificate holds the public key. The identity key is unchanged.
    """
    name = pki.validate_client_name(name)
    moment = pki.issuance_time(now)
    with federation._exclusive():
        record = federation.client_record(name)
        if record is None or record.revoked or record.certificate_pem is None:
            raise ProvisioningError(f"no active client {name!r} with a recorded certificate")
        old = pki.load_certificate(record.certificate_pem, what=f"{name}'s certificate")
        if csr_pem is None:
            public_key = old.public_key()
        else:
            public_key = pki.load_client_csr(csr_pem.decode("ascii"), name=name).public_key()
        cert = pki.issue_client_certificate(
            federation.ca_certificate,
            federation.ca_private_key(),
            public_key,  # type: ignore[arg-type]
            name=name,
            now=moment,
        )
        renewed = record_renewal(federation, record, cert, old, moment)
    return OfflineRenewal(
        renewed, pki.certificate_pem(cert), federation.ca_bundle_pem(), record.serial
    )


def rotate_ca(federation: FederationFolder, *, now: datetime | None = None) -> x509.Certificate:
    """Step 1: make a new issuing CA; the old one stays trusted until
    :func:`finish_ca_rotation`."""
    moment = pki.issuance_time(now)
    paths = federation.paths
    with federation._exclusive():
        if rotation_in_progress(federation):
            raise ProvisioningError(
                "a CA rotation is already in progress: finish it first "
                "(sealagg certs finish-ca-rotation)"
            )
        old_cert = federation.ca_certificate
        old_key = federation.ca_private_key()
        old_key_pem = pki.read_file(paths.ca_key, limit=64 * 1024)  # as stored (encrypted)
        new_key = pki.generate_tls_key()
        new_cert = pki.create_ca(
            federation.name, new_key, now=moment, common_name=pki.rotated_ca_name(moment)
        )
        cross = pki.cross_certify(new_cert, old_cert, old_key, now=moment)
        private, public = pki.PRIVATE_FILE_MODE, pki.PUBLIC_FILE_MODE
        # Old material first: if this stops half-way, the old CA is still whole somewhere.
        pki.write_file_atomic(paths.ca_previous_key, old_key_pem, mode=private)
        pki.write_file_atomic(paths.ca_previous_cert, pki.certificate_pem(old_cert), mode=public)
        pki.write_file_atomic(paths.ca_cross_cert, pki.certificate_pem(cross), mode=public)
        passphrase = federation._passphrase
        pki.write_file_atomic(paths.ca_key, pki.private_key_pem(new_key, passphrase), mode=private)
        pki.write_file_atomic(paths.ca_cert, pki.certificate_pem(new_cert), mode=public)
    return new_cert


def clients_on_previous_ca(federation: FederationFolder) -> list[str]:
    """Active clients whose current certificate the old CA issued (they must renew)."""
    previous = federation.previous_ca_certificate
    if previous is None:
        return []
    names = []
    revoked = federation.revocations()
    for record in federation.client_records():
        if record.revoked or record.serial in revoked or record.certificate_pem is None:
            continue
        cert = pki.load_certificate(record.certificate_pem, what=record.name)
        if cert.issuer == previous.subject:
            names.append(record.name)
    return names


def finish_ca_rotation(federation: FederationFolder, *, force: bool = False) -> list[str]:
    """Step 4: stop trusting the old CA and delete its key. Returns the clients cut off
    (only with ``force``)."""
    paths = federation.paths
    with federation._exclusive():
        previous = federation.previous_ca_certificate
        if previous is None:
            raise ProvisioningError("no CA rotation is in progress")
        if federation.server_certificate.issuer == previous.subject:
            raise ProvisioningError(
                "the server certificate still comes from the old CA: run "
                "`sealagg certs renew-server` first (once the clients have renewed)"
            )
        stranded = clients_on_previous_ca(federation)
        if stranded and not force:
            raise ProvisioningError(
                f"{len(stranded)} active client(s) still hold a certificate from the old CA "
                f"({', '.join(stranded)}); they would be locked out. Let them renew, re-issue "
                "them (sealagg certs renew-client NAME), or pass --force"
            )
        for path in (paths.ca_cross_cert, paths.ca_previous_cert, paths.ca_previous_key):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        pki.fsync_directory(paths.folder)
    return stranded
