"""``sealagg audit verify|export``: check and hand out the tamper-evident audit log.

Verification needs only the federation's audit *public* key and reads the state database
read-only, so an auditor can run it without access to any private key.
"""

import tempfile
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from rich.markup import escape

from sealagg.appliance.cli._common import (
    DEFAULT_FOLDER,
    CLIError,
    FolderOption,
    console,
    err_console,
    open_state_readonly,
)
from sealagg.appliance.errors import AuditVerificationError

audit_app = typer.Typer(help="The signed, hash-chained audit log.")


def _public_key(folder: Path, path: Path | None) -> Ed25519PublicKey:
    path = path if path is not None else folder / "audit_public_key.pem"
    try:
        key = load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise CLIError(
            f"no audit public key at {path} (pass --folder, or --public-key PEM)"
        ) from None
    except OSError as error:
        raise CLIError(f"cannot read {path}: {error.strerror}") from None
    except ValueError:
        raise CLIError(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise CLIError(f"{path} is not an Ed25519 public key")
    return key


def verify(
    folder: FolderOption = DEFAULT_FOLDER,
    expected_count: Annotated[
        int | None,
        typer.Option(
            "--expected-count",
            min=0,
            help="Entry count recorded outside the appliance (with --expected-hash): catches "
            "a rolled-back or truncated log.",
        ),
    ] = None,
    expected_hash: Annotated[
        str | None,
        typer.Option("--expected-hash", help="Head hash recorded with --expected-count."),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", help="Verify an export (`sealagg audit export`) instead."),
    ] = None,
    public_key: Annotated[
        Path | None,
        typer.Option("--public-key", help="Audit public key PEM (default: the folder's)."),
    ] = None,
) -> None:
    """Verify every entry, the chain and the signed head; exit 1 at the first bad entry."""
    from sealagg.appliance.admin_ops import AuditCheck, check_audit
    from sealagg.appliance.audit import verify_jsonl

    if (expected_count is None) != (expected_hash is None):
        raise typer.BadParameter(
            "give --expected-count and --expected-hash together",
            param_hint="--expected-count/--expected-hash",
        )
    expected = None
    if expected_count is not None and expected_hash is not None:
        expected_hash = expected_hash.strip().lower()
        if len(expected_hash) != 64 or any(c not in "0123456789abcdef" for c in expected_hash):
            raise typer.BadParameter("must be 64 hex digits", param_hint="--expected-hash")
        expected = (expected_count, expected_hash)
    key = _public_key(folder, public_key)
    if public_key is None and (folder / "audit_key_history.json").exists():
        from sealagg.appliance.audit_rotation import audit_key_history

        key = audit_key_history(folder)  # the first key, then every rotation (certs.py)
    if file is not None:
        try:
            report = verify_jsonl(file, key, expected_head=expected)
        except AuditVerificationError as error:
            result = AuditCheck(False, 0, first_broken={"seq": error.seq, "reason": error.reason})
        else:
            result = AuditCheck(True, report.count, report.head_hash, report.expected_head_checked)
    else:  # the same check as the Admin service's VerifyAudit (admin_ops.py)
        store = open_state_readonly(folder)
        try:
            result = check_audit(store, key, expected_head=expected)
        finally:
            store.close()
    if not result.ok:
        broken = result.first_broken or {}
        where = "" if broken.get("seq") is None else f" at entry {broken['seq']}"
        console.print(
            f"audit verify: [bold red]BROKEN[/]{where}: {escape(str(broken.get('reason', '')))}",
            soft_wrap=True,
        )
        raise typer.Exit(1)
    checked = " (matches the expected head)" if result.expected_head_checked else ""
    console.print(
        f"audit verify: [bold green]OK[/] ({result.entries} entries, head {result.head_hash})"
        f"{checked}",
        soft_wrap=True,
    )


def export(
    out: Annotated[
        Path, typer.Argument(help="JSON-lines file to write, or - for standard output.")
    ],
    folder: FolderOption = DEFAULT_FOLDER,
) -> None:
    """Export every entry (one JSON object a line) and the signed head as the last line.

    ``-`` writes the export to standard output (and the summary to standard error), so it
    can be piped, e.g. into ``ssh archive 'cat > audit.jsonl'``."""
    to_stdout = str(out) == "-"
    if not to_stdout and out.is_dir():
        raise CLIError(f"{out} is a folder; give a file name")
    store = open_state_readonly(folder)
    try:
        if to_stdout:  # the same bytes as a file export: written, then streamed out
            with tempfile.TemporaryDirectory(prefix="sealagg-audit-") as scratch:
                staged = Path(scratch) / "audit.jsonl"
                head = store.audit.export_jsonl(staged)
                with staged.open("rb") as source:
                    while chunk := source.read(1 << 16):
                        typer.echo(chunk, nl=False)  # bytes go to stdout's binary buffer
        else:
            head = store.audit.export_jsonl(out)
    finally:
        store.close()
    report = err_console if to_stdout else console  # stdout carries only the export
    where = "standard output" if to_stdout else str(out)
    report.print(
        f"[green]exported[/] {head.count} audit entries to {escape(where)} (head {head.hash})",
        soft_wrap=True,
    )
    report.print(
        "  record the head outside the appliance; check later with `sealagg audit verify "
        f"--expected-count {head.count} --expected-hash {head.hash}`",
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    audit_app.command("verify")(verify)
    audit_app.command("export")(export)
    app.add_typer(audit_app, name="audit")
