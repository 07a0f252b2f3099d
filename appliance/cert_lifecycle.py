"""How long the federation's certificates have left, and which need attention.

Read from public files only (``ca.pem``, ``server.pem``, ``clients/*.json``), so ``sealagg
status``, ``sealagg certs status`` and the metrics gauges need no key and no passphrase.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from sealagg.appliance import pki
from sealagg.appliance.errors import ProvisioningError
from sealagg.appliance.federation import ClientRecord, FederationPaths

__all__ = ["WARN_WITHIN_DAYS", "CertificateStatus", "ExpiryReport", "certificates", "expiry_report"]

#: Certificates expiring within this many days are warned about (clients renew at 30 too).
WARN_WITHIN_DAYS = 30.0


@dataclasses.dataclass(frozen=True)
class CertificateStatus:
    """One certificate: whose, which serial, which CA issued it, days left."""

    role: str  # "ca", "previous-ca", "server", "client"
    name: str
    serial: int
    issuer: str
    not_after: datetime
    days_left: float


@dataclasses.dataclass(frozen=True)
class ExpiryReport:
    server_days: float
    #: The active client whose certificate expires first, and its days left.
    soonest_client: tuple[str, float] | None
    warnings: list[str]
    ca_days: float = float("inf")
    #: A CA rotation is in progress: these active clients still hold old-CA certificates.
    clients_on_previous_ca: list[str] = dataclasses.field(default_factory=list)


def _days(cert_after: datetime, now: datetime) -> float:
    return (cert_after - now) / timedelta(days=1)


def _load(path: Path) -> x509.Certificate:
    return pki.load_certificate(pki.read_file(path, limit=64 * 1024), what=str(path))


def certificates(folder: Path, *, now: datetime | None = None) -> list[CertificateStatus]:
    """The CA(s), the server certificate and every active client's certificate."""
    moment = pki.check_time(now)
    paths = FederationPaths(Path(folder))
    out: list[CertificateStatus] = []

    def add(role: str, name: str, cert: x509.Certificate) -> None:
        out.append(
            CertificateStatus(
                role=role,
                name=name,
                serial=cert.serial_number,
                issuer=cert.issuer.rfc4514_string(),
                not_after=cert.not_valid_after_utc,
                days_left=_days(cert.not_valid_after_utc, moment),
            )
        )

    add("ca", "ca", _load(paths.ca_cert))
    if paths.ca_previous_cert.exists():
        add("previous-ca", "ca-previous", _load(paths.ca_previous_cert))
    add("server", "server", _load(paths.server_cert))
    revoked = pki.RevocationList.load(paths.revoked)
    for path in sorted(paths.clients.glob("*.json")):
        record = ClientRecord.from_json(pki.read_file(path, limit=1 << 20), source=path)
        if record.revoked or record.serial in revoked or record.certificate_pem is None:
            continue
        add("client", record.name, pki.load_certificate(record.certificate_pem, what=str(path)))
    return out


def expiry_report(
    federation_folder: Path,
    *,
    now: datetime | None = None,
    within_days: float = WARN_WITHIN_DAYS,
) -> ExpiryReport:
    """Days left for the server and the soonest active client, with a warning line for each
    certificate that expires within ``within_days`` (or has expired)."""
    moment = now or datetime.now(UTC)
    try:
        statuses = certificates(federation_folder, now=moment)
    except ProvisioningError as error:
        return ExpiryReport(float("nan"), None, [f"cannot read the certificates: {error}"])
    warnings: list[str] = []
    server_days, ca_days = float("nan"), float("inf")
    soonest: tuple[str, float] | None = None
    previous_issuer = next((s for s in statuses if s.role == "previous-ca"), None)
    on_previous: list[str] = []
    for status in statuses:
        if status.role == "server":
            server_days = status.days_left
        elif status.role == "ca":
            ca_days = status.days_left
        elif status.role == "client":
            if soonest is None or status.days_left < soonest[1]:
                soonest = (status.name, status.days_left)
            # The previous CA is self-signed: its issuer is its own subject.
            if previous_issuer is not None and status.issuer == previous_issuer.issuer:
                on_previous.append(status.name)
        if status.days_left <= 0:
            warnings.append(f"{status.role} certificate {status.name!r} has EXPIRED")
        elif status.days_left <= within_days:
            hint = {
                "server": "run `sealagg certs renew-server`",
                "client": "the client renews itself on connect; or `sealagg certs renew-client`",
                "ca": "run `sealagg certs rotate-ca`",
                "previous-ca": "finish the CA rotation",
            }[status.role]
            warnings.append(
                f"{status.role} certificate {status.name!r} expires in "
                f"{status.days_left:.1f} days ({pki.iso_time(status.not_after)}): {hint}"
            )
    if previous_issuer is not None:
        warnings.append(
            "a CA rotation is in progress"
            + (
                f"; still on the old CA: {', '.join(on_previous)}"
                if on_previous
                else "; every active client has renewed (renew-server, then finish-ca-rotation)"
            )
        )
    return ExpiryReport(server_days, soonest, warnings, ca_days, on_previous)
