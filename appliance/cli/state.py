"""``sealagg state backup|verify|restore``: the federation's state, kept safe elsewhere.

The work is in :mod:`appliance.backup`; these commands only parse options and print.
"""

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from sealagg.appliance.cli._actor import AsKitOption, AsOption, resolve_actor
from sealagg.appliance.cli._common import (
    DEFAULT_FOLDER,
    CLIError,
    FolderOption,
    check_federation,
    console,
)

state_app = typer.Typer(
    help="Online backup, verification and restore of the federation's state.",
    no_args_is_help=True,
)

AuditKeyOption = Annotated[
    Path | None,
    typer.Option(
        "--audit-key",
        help="The federation's audit PUBLIC key from your own records: the current one "
        "(audit_public_key.pem) or, after rotations, the first one. Without it the backup's "
        "own copy is used, which proves the backup is consistent, not that it is yours.",
    ),
]
ExpectedCountOption = Annotated[
    int | None,
    typer.Option(
        "--expected-count",
        min=0,
        help="Audit entry count recorded outside the appliance (with --expected-hash).",
    ),
]
ExpectedHashOption = Annotated[
    str | None,
    typer.Option("--expected-hash", help="Audit head hash recorded with --expected-count."),
]


def _audit_key(path: Path | None):
    if path is None:
        return None
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(path.read_bytes())
    except OSError as error:
        raise CLIError(f"cannot read {path}: {error.strerror}") from None
    except ValueError:
        raise CLIError(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise CLIError(f"{path} is not an Ed25519 public key")
    return key


def _expected(count: int | None, head: str | None) -> tuple[int, str] | None:
    if (count is None) != (head is None):
        raise typer.BadParameter(
            "give --expected-count and --expected-hash together",
            param_hint="--expected-count/--expected-hash",
        )
    if count is None or head is None:
        return None
    head = head.strip().lower()
    if len(head) != 64 or any(c not in "0123456789abcdef" for c in head):
        raise typer.BadParameter("must be 64 hex digits", param_hint="--expected-hash")
    return count, head


def backup(
    destination: Annotated[
        Path,
        typer.Argument(
            help="New folder, or a file ending in .tar, to write; never overwritten.",
        ),
    ],
    folder: FolderOption = DEFAULT_FOLDER,
    include_private_keys: Annotated[
        bool,
        typer.Option(
            "--include-private-keys",
            help="Also copy ca.key, server.key and audit_signing_key.pem (secrets: keep such "
            "a backup as safe as the appliance itself). Default: listed, not copied.",
        ),
    ] = False,
    as_name: AsOption = None,
    as_kit: AsKitOption = None,
) -> None:
    """Back up the state while the appliance runs (SQLite online backup); verified, audited.

    Copies the database, the model files, the folder's public files and a manifest signed by
    the audit key. The backup is verified before it is kept and recorded as `state_backup`
    in the audit log.
    Private keys are left out unless --include-private-keys: a restore then needs them from
    your key store (--keys-from). Client kits are never copied.
    """
    from sealagg.appliance.admins import Action
    from sealagg.appliance.backup import create_backup

    check_federation(folder)
    actor = resolve_actor(folder, Action.STATE_BACKUP, as_name, as_kit)
    report = create_backup(folder, destination, include_private_keys=include_private_keys, by=actor)
    console.print(
        f"[green]backed up[/] to {escape(str(report.path))}: {report.files} files, "
        f"{report.models} model files, audit head {report.audit_head.count} entries "
        f"{report.audit_head.hash}",
        soft_wrap=True,
    )
    console.print(f"  manifest sha256 {report.manifest_sha256}", soft_wrap=True)
    keys = ", ".join(report.private_keys)
    if report.private_keys_included:
        console.print(
            f"  [yellow]private keys INCLUDED[/] ({escape(keys)}): store this backup as a secret",
            soft_wrap=True,
        )
    else:
        console.print(
            f"  private keys NOT included: a restore needs {escape(keys)} from your key store",
            soft_wrap=True,
        )


def verify(
    backup_path: Annotated[Path, typer.Argument(metavar="BACKUP", help="Backup folder or .tar.")],
    audit_key: AuditKeyOption = None,
    expected_count: ExpectedCountOption = None,
    expected_hash: ExpectedHashOption = None,
) -> None:
    """Check a backup: signature, file hashes, SQLite integrity, audit chain, model files.

    Every file's SHA-256 against the signed manifest, the audit chain and its head against the
    manifest, and every model file against model_versions; exit 1 at the first problem."""
    from sealagg.appliance.backup import verify_backup

    expected = _expected(expected_count, expected_hash)
    report = verify_backup(
        backup_path, audit_public_key=_audit_key(audit_key), expected_head=expected
    )
    console.print(
        f"state verify: [bold green]OK[/] federation {escape(report.federation)}, made "
        f"{report.created} by {escape(report.created_by)}; schema {report.schema_version}; "
        f"{report.files} files, {report.models} model files; audit {report.audit_head.count} "
        f"entries, head {report.audit_head.hash}",
        soft_wrap=True,
    )
    console.print(f"  manifest sha256 {report.manifest_sha256}", soft_wrap=True)
    if not report.key_from_caller:
        console.print(
            "  [yellow]checked against the audit key inside the backup[/]: pass --audit-key "
            "with your own copy to prove it is your federation's",
            soft_wrap=True,
        )
    included = "included" if report.private_keys_included else "not included"
    console.print(f"  private keys {included}: {escape(', '.join(report.private_keys))}")


def restore(
    backup_path: Annotated[Path, typer.Argument(metavar="BACKUP", help="Backup folder or .tar.")],
    folder: FolderOption = DEFAULT_FOLDER,
    keys_from: Annotated[
        Path | None,
        typer.Option(
            "--keys-from",
            help="Folder with the private keys the backup left out (ca.key, server.key, "
            "audit_signing_key.pem), e.g. from your key store.",
        ),
    ] = None,
    audit_key: AuditKeyOption = None,
    expected_count: ExpectedCountOption = None,
    expected_hash: ExpectedHashOption = None,
    as_name: AsOption = None,
    as_kit: AsKitOption = None,
) -> None:
    """Restore a backup into a new or empty folder (--folder), e.g. on a new machine.

    On the new machine: install sealagg, copy the backup over, do NOT run `sealagg init`
    (that makes a different federation: new CA, new audit key), then run
    `sealagg state restore BACKUP --folder /srv/federation --keys-from /secure/keys
    --audit-key audit_public_key.pem` and start `sealagg serve` there. The backup is verified
    first; the restored audit chain continues under the same key with a `state_restored`
    entry; rounds interrupted at backup time are aborted at the first start. A restore is a
    rollback to the backup's moment: re-issue or revoke again any client changed since. If the
    new machine has another address, its server certificate must name it.
    Refused while an appliance runs on --folder. --as NAME is checked against the restored
    federation's administrators (a refusal undoes the restore).
    """
    from sealagg.appliance.admins import Action
    from sealagg.appliance.backup import restore_backup

    expected = _expected(expected_count, expected_hash)
    if as_kit is not None and as_name is None:  # before anything is written
        raise CLIError("--as-kit proves the administrator named by --as: give --as NAME too")
    report = restore_backup(
        backup_path,
        folder,
        keys_from=keys_from,
        audit_public_key=_audit_key(audit_key),
        expected_head=expected,
        by=lambda restored: resolve_actor(restored, Action.STATE_RESTORE, as_name, as_kit),
    )
    source = "the backup" if report.private_keys_from == "backup" else str(keys_from)
    # (keys_from wins when both are there: the operator's key store is the reference copy)
    console.print(
        f"[green]restored[/] federation {escape(report.backup.federation)} into "
        f"{escape(str(report.folder))} (backup of {report.backup.created}, private keys from "
        f"{escape(source)}); audit log {report.audit_count} entries, verified",
        soft_wrap=True,
    )
    console.print(
        "  this is the state of the backup's moment: clients issued or revoked since then "
        "must be issued or revoked again; then start the appliance with `sealagg serve`",
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Adds ``sealagg state backup|verify|restore``."""
    state_app.command("backup")(backup)
    state_app.command("verify")(verify)
    state_app.command("restore")(restore)
    app.add_typer(state_app, name="state")
