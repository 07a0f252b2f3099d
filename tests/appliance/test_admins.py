"""Named administrators with roles (appliance/admins.py, ``sealagg admins ...``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from sealagg.appliance.admins import (
    LEGACY_ADMIN,
    Action,
    AdminDirectory,
    AdminPermissionError,
    DirectoryWatch,
    Role,
    admin_directory_path,
)
from sealagg.appliance.cli import app
from sealagg.appliance.errors import ProvisioningError
from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.kit import load_kit
from sealagg.appliance.participant_sync import sync_participants
from sealagg.appliance.server import open_store

runner = CliRunner()


def sealagg(*args: object) -> Result:
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def refused(result: Result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "federation"
    result = sealagg("init", "-f", path, "--name", "adminfed", "--host", "localhost")
    assert result.exit_code == 0, result.output
    return path


def add_admin(folder: Path, name: str, *roles: str) -> Path:
    out = folder.parent / f"{name}-kit"
    args = ["admins", "add", name, "-f", folder, "--out", out]
    for role in roles:
        args += ["--role", role]
    result = sealagg(*args)
    assert result.exit_code == 0, result.output
    return out


def test_add_issues_a_kit_and_records_the_roles(folder: Path) -> None:
    kit_path = add_admin(folder, "alice", "approver", "auditor")
    kit = load_kit(kit_path)
    assert kit.name == "alice"
    directory = AdminDirectory.load(folder)
    assert directory.is_admin("alice") and directory.is_admin(LEGACY_ADMIN)
    assert directory.roles_of("alice") == {Role.APPROVER, Role.AUDITOR}
    assert directory.entry("alice").serial == kit.certificate.serial_number
    directory.authorize("alice", Action.DECIDE)
    directory.authorize("alice", "audit_export")
    directory.authorize("alice", "status")
    listed = sealagg("admins", "list", "-f", folder)
    assert listed.exit_code == 0, listed.output
    assert "alice" in listed.output and "approver, auditor" in listed.output


def test_authorize_refuses_what_the_roles_do_not_allow(folder: Path) -> None:
    add_admin(folder, "carol", "auditor")
    add_admin(folder, "olga", "operator")
    directory = AdminDirectory.load(folder)
    with pytest.raises(AdminPermissionError, match="carol may not decide: that needs the role"):
        directory.authorize("carol", Action.DECIDE)
    with pytest.raises(PermissionError, match="needs the role operator"):
        directory.authorize("carol", "create_run")
    with pytest.raises(AdminPermissionError, match="olga may not decide"):
        directory.authorize("olga", "decide")
    directory.authorize("olga", "control_run")
    directory.authorize("olga", "revoke_client")
    with pytest.raises(AdminPermissionError, match="only the federation's owner"):
        directory.authorize("olga", Action.MANAGE_ADMINS)
    with pytest.raises(AdminPermissionError, match="mallory is not an administrator"):
        directory.authorize("mallory", "status")
    with pytest.raises(AdminPermissionError, match="unknown administrative action"):
        directory.authorize("olga", "drop_tables")
    for action in Action:  # the legacy admin keeps every role (backward compatible)
        directory.authorize(LEGACY_ADMIN, action)


def test_a_participant_name_cannot_become_an_admin_and_back(folder: Path) -> None:
    assert sealagg("add-client", "bob", "-f", folder).exit_code == 0
    refused(
        sealagg("admins", "add", "bob", "--role", "approver", "-f", folder),
        "never also be a participant",
    )
    assert sealagg("revoke", "bob", "-f", folder).exit_code == 0
    refused(  # not even once bob's certificate is revoked: its history is a participant's
        sealagg("admins", "add", "bob", "--role", "approver", "-f", folder),
        "never also be a participant",
    )
    add_admin(folder, "alice", "approver")
    refused(sealagg("add-client", "alice", "-f", folder), "is a named administrator")
    refused(sealagg("admins", "add", "admin", "--role", "auditor", "-f", folder), "owner")
    refused(sealagg("admins", "add", "zed", "--role", "root", "-f", folder), "unknown role")
    assert not AdminDirectory.load(folder).is_admin("bob")


def test_admins_are_never_participants_at_sync(folder: Path) -> None:
    add_admin(folder, "alice", "approver")
    assert sealagg("add-client", "client0", "-f", folder).exit_code == 0
    federation = FederationFolder.load(folder)
    store = open_store(federation)
    try:
        sync_participants(federation, store, admin_names=AdminDirectory.load(folder).names())
        assert [p.name for p in store.participants()] == ["client0"]
    finally:
        store.close()


def test_a_hand_edited_directory_is_refused(folder: Path) -> None:
    add_admin(folder, "carol", "auditor")
    path = admin_directory_path(folder)
    document = json.loads(path.read_text())
    document["admins"]["carol"]["roles"] = ["approver", "auditor", "operator"]
    path.write_text(json.dumps(document))
    with pytest.raises(ProvisioningError, match="not signed by this federation's provisioning"):
        AdminDirectory.load(folder)
    watch = DirectoryWatch(folder)  # what the running appliance uses: fails closed
    assert watch.current().names() == {LEGACY_ADMIN}
    assert watch.error is not None and "not signed" in watch.error
    with pytest.raises(AdminPermissionError, match="carol is not an administrator"):
        watch.current().authorize("carol", "decide")


def test_a_broken_directory_never_turns_an_admin_into_a_client(folder: Path) -> None:
    add_admin(folder, "carol", "auditor")
    watch = DirectoryWatch(folder)
    assert "carol" in watch.never_participants()
    admin_directory_path(folder).write_text("{}")
    assert not watch.current().is_admin("carol")  # no roles while the file is broken
    assert "carol" in watch.never_participants()  # yet never a participant either


def test_remove_revokes_the_certificate_and_the_roles(folder: Path) -> None:
    kit_path = add_admin(folder, "alice", "approver")
    watch = DirectoryWatch(folder)
    assert watch.current().is_admin("alice")
    result = sealagg("admins", "remove", "alice", "-f", folder)
    assert result.exit_code == 0, result.output
    federation = FederationFolder.load(folder)
    record = federation.client_record("alice")
    assert record.revoked
    assert load_kit(kit_path).certificate.serial_number in federation.revocations()
    assert not watch.current().is_admin("alice")  # the running appliance sees it at once
    refused(sealagg("admins", "remove", "alice", "-f", folder), "not a named administrator")
    refused(sealagg("admins", "remove", "admin", "-f", folder), "not a named administrator")


def test_a_revoked_admin_certificate_loses_its_roles(folder: Path) -> None:
    add_admin(folder, "alice", "approver")
    assert sealagg("revoke", "alice", "-f", folder).exit_code == 0
    assert not AdminDirectory.load(folder).is_admin("alice")
    assert AdminDirectory.load(folder, current_only=False).entry("alice") is None


def test_as_name_is_checked_against_its_roles(folder: Path) -> None:
    add_admin(folder, "carol", "auditor")
    refused(
        sealagg("add-client", "client0", "-f", folder, "--as", "carol"),
        "carol may not add client",
    )
    assert FederationFolder.load(folder).client_record("client0") is None  # nothing issued
    refused(
        sealagg("admins", "add", "eve", "--role", "approver", "-f", folder, "--as", "carol"),
        "only the federation's owner",
    )
    refused(
        sealagg("add-client", "client0", "-f", folder, "--as", "mallory"),
        "mallory is not an administrator",
    )


def test_as_kit_must_hold_the_named_admins_key(folder: Path) -> None:
    olga_kit = add_admin(folder, "olga", "operator")
    carol_kit = add_admin(folder, "carol", "auditor")
    refused(
        sealagg("add-client", "c1", "-f", folder, "--as", "olga", "--as-kit", carol_kit),
        "belongs to 'carol', not 'olga'",
    )
    result = sealagg("add-client", "c1", "-f", folder, "--as", "olga", "--as-kit", olga_kit)
    assert result.exit_code == 0, result.output
