"""``sealagg certs status|renew-server|renew-client|rotate-ca|finish-ca-rotation|rotate-audit-key``.

Certificate and key lifecycle (appliance/ca_rotation.py, appliance/audit_rotation.py). A
running appliance picks up renewed and rotated certificates at its next handshake; each
operation is audited when it happens (``by: operator``). Clients renew their own certificates
over the wire (client_shim/renewal.py); ``renew-client`` is for one that cannot.
"""

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from sealagg.appliance.cli._common import (
    DEFAULT_FOLDER,
    CLIError,
    FolderOption,
    PassphraseFileOption,
    check_federation,
    console,
    err_console,
    read_passphrase,
    state_exists,
)

certs_app = typer.Typer(help="Certificates and keys: expiry, renewal, CA and audit key rotation.")

WithinOption = Annotated[
    float, typer.Option("--within-days", help="Warn about certificates expiring this soon.")
]


def _federation(folder: Path, passphrase_file: Path | None) -> Any:
    from sealagg.appliance.federation import FederationFolder

    check_federation(folder)
    return FederationFolder.load(folder, passphrase=read_passphrase(passphrase_file))


def _audit(folder: Path, event: str, details: dict[str, Any]) -> None:
    """Audit an offline operation now, in the federation's chain (if it has one yet)."""
    if not state_exists(folder):
        return
    from sealagg.appliance.federation import FederationFolder
    from sealagg.appliance.server import open_store

    store = open_store(FederationFolder.load(folder))
    try:
        store.audit.append(event, {**details, "by": "operator"})
    finally:
        store.close()


def expiry_warnings(folder: Path, within_days: float = 30.0) -> list[str]:
    """The warning lines ``sealagg status`` shows (certificates expiring within 30 days, a
    CA rotation in progress)."""
    from sealagg.appliance.cert_lifecycle import expiry_report

    return expiry_report(folder, within_days=within_days).warnings


def status(folder: FolderOption = DEFAULT_FOLDER, within_days: WithinOption = 30.0) -> None:
    """Every certificate with its issuer and days left; warnings for those expiring soon."""
    from sealagg.appliance import pki
    from sealagg.appliance.cert_lifecycle import certificates, expiry_report

    check_federation(folder)
    table = Table(title="certificates")
    for column in ("role", "name", "serial", "issuer", "not after", "days left"):
        table.add_column(column)
    for cert in certificates(folder):
        left = f"{cert.days_left:.1f}"
        style = "red" if cert.days_left <= within_days else ""
        table.add_row(
            cert.role,
            escape(cert.name),
            format(cert.serial, "x")[:16],
            escape(cert.issuer),
            pki.iso_time(cert.not_after),
            f"[{style}]{left}[/]" if style else left,
        )
    console.print(table)
    for warning in expiry_report(folder, within_days=within_days).warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)


def renew_server(
    folder: FolderOption = DEFAULT_FOLDER, passphrase_file: PassphraseFileOption = None
) -> None:
    """A new server key and certificate from the current CA (same hosts); the running
    appliance presents it at its next handshake."""
    from sealagg.appliance import pki
    from sealagg.appliance.ca_rotation import renew_server_certificate

    federation = _federation(folder, passphrase_file)
    old = federation.server_certificate
    cert = renew_server_certificate(federation)
    _audit(
        folder,
        "server_certificate_renewed",
        {
            "old_serial": format(old.serial_number, "x"),
            "new_serial": format(cert.serial_number, "x"),
            "not_after": pki.iso_time(cert.not_valid_after_utc),
        },
    )
    console.print(
        f"[green]renewed[/] the server certificate until {pki.iso_time(cert.not_valid_after_utc)}"
    )


def renew_client(
    name: Annotated[str, typer.Argument(help="The client to re-issue.")],
    folder: FolderOption = DEFAULT_FOLDER,
    passphrase_file: PassphraseFileOption = None,
    kit: Annotated[
        Path | None,
        typer.Option("--kit", help="The client's kit folder: the renewal is written into it."),
    ] = None,
    csr: Annotated[
        Path | None,
        typer.Option("--csr", help="The client's PEM certificate request for a new key."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write the certificate and CA bundle (PEM) here."),
    ] = None,
) -> None:
    """Re-issue a client's certificate offline (no re-enrolment; the identity key stays).

    With --kit (a kit folder holding the client's key) the renewal is installed there; with
    --csr and --out the client installs it itself."""
    from sealagg.appliance import kit as kit_api
    from sealagg.appliance import pki
    from sealagg.appliance.ca_rotation import renew_client_offline

    if kit is None and out is None:
        raise CLIError("give --kit KIT_FOLDER, or --csr REQUEST --out FILE")
    client_kit = kit_api.load_kit(kit) if kit is not None else None
    if client_kit is not None and client_kit.name != name:
        raise CLIError(f"the kit at {kit} is {client_kit.name!r}'s, not {name!r}'s")
    federation = _federation(folder, passphrase_file)
    request = csr.read_bytes() if csr is not None else None
    result = renew_client_offline(federation, name, request)
    cert = pki.load_certificate(result.certificate_pem, what="the new certificate")
    if client_kit is not None and request is None:
        kit_api.install_renewal(
            client_kit, result.certificate_pem, client_kit.client_key_pem, result.ca_bundle_pem
        )
    if out is not None:
        pki.write_file_atomic(
            out, result.certificate_pem + result.ca_bundle_pem, mode=pki.PUBLIC_FILE_MODE
        )
    if state_exists(folder):
        from sealagg.appliance.renewal import record_in_store
        from sealagg.appliance.server import open_store

        store = open_store(federation)
        try:
            record_in_store(
                store,
                name=name,
                old_serial=result.previous_serial,
                new_serial=cert.serial_number,
                not_after=cert.not_valid_after_utc,
                by="operator",
            )
        finally:
            store.close()
    console.print(
        f"[green]renewed[/] {escape(name)} until {pki.iso_time(cert.not_valid_after_utc)}",
        soft_wrap=True,
    )


def rotate_ca(
    folder: FolderOption = DEFAULT_FOLDER, passphrase_file: PassphraseFileOption = None
) -> None:
    """Start a CA rotation: a new issuing CA; the old one stays trusted until
    finish-ca-rotation. Next: let clients renew, then renew-server, then finish."""
    from sealagg.appliance import pki
    from sealagg.appliance.ca_rotation import rotate_ca as rotate

    federation = _federation(folder, passphrase_file)
    old = federation.ca_certificate
    new = rotate(federation)
    _audit(
        folder,
        "ca_rotated",
        {
            "old_ca_sha256": pki.spki_sha256(old).hex(),
            "new_ca_sha256": pki.spki_sha256(new).hex(),
            "new_ca_subject": new.subject.rfc4514_string(),
        },
    )
    console.print(f"[green]new CA[/] {escape(new.subject.rfc4514_string())}", soft_wrap=True)
    console.print(
        "  next: clients renew (sealagg certs status lists who has not), then "
        "`sealagg certs renew-server`, then `sealagg certs finish-ca-rotation`",
        soft_wrap=True,
    )


def finish_ca_rotation(
    folder: FolderOption = DEFAULT_FOLDER,
    force: Annotated[
        bool, typer.Option("--force", help="Cut off clients still on the old CA.")
    ] = False,
) -> None:
    """Stop trusting the old CA and delete its key."""
    from sealagg.appliance.ca_rotation import finish_ca_rotation as finish

    federation = _federation(folder, None)
    stranded = finish(federation, force=force)
    _audit(folder, "ca_rotation_finished", {"clients_cut_off": stranded})
    console.print("[green]finished[/] the CA rotation: the old CA is no longer trusted")
    if stranded:
        err_console.print(f"[yellow]cut off:[/] {escape(', '.join(stranded))}", soft_wrap=True)


def rotate_audit_key(folder: FolderOption = DEFAULT_FOLDER) -> None:
    """Rotate the audit signing key (appliance stopped). The old key signs the rotation;
    verify the whole chain from the first key or audit_key_history.json."""
    from sealagg.appliance.audit_rotation import rotate_audit_key as rotate

    check_federation(folder)
    if not state_exists(folder):
        raise CLIError("the federation has no audit log yet: nothing to rotate")
    new = rotate(folder)
    console.print(f"[green]rotated[/] the audit key; new public key {new.hex()}", soft_wrap=True)
    console.print(
        "  kits issued from now on are signed by the new key; give clients that pin the "
        "signer the new key",
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Adds ``sealagg certs ...`` to the ``sealagg`` app."""
    certs_app.command("status")(status)
    certs_app.command("renew-server")(renew_server)
    certs_app.command("renew-client")(renew_client)
    certs_app.command("rotate-ca")(rotate_ca)
    certs_app.command("finish-ca-rotation")(finish_ca_rotation)
    certs_app.command("rotate-audit-key")(rotate_audit_key)
    app.add_typer(certs_app, name="certs")
