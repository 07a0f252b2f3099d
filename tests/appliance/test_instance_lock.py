"""The library-level Appliance holds its folder exclusively, from before it reads anything."""

from __future__ import annotations

import asyncio
import os

import pytest

from sealagg.appliance.errors import ConfigError, ProvisioningError
from sealagg.appliance.instance_lock import FolderInUseError, InstanceLock, holder_pid
from sealagg.appliance.server import Appliance
from sealagg.appliance.store import Store, default_state_path


def _config_loads(dep) -> int:
    """``config_loaded`` entries in the verified audit chain: one per appliance start."""
    store = Store.open(default_state_path(dep.folder), read_only=True)
    try:
        entries = store.audit.entries(dep.federation.audit_signing_key.public_key())
        return sum(1 for e in entries if e.event == "config_loaded")
    finally:
        store.close()


def test_a_second_appliance_on_a_running_folder_is_refused_before_it_writes(deployment, running):
    dep = deployment(clients=3)
    app = running(dep.folder)
    assert _config_loads(dep) == 1
    with pytest.raises(
        FolderInUseError, match=f"in use by another appliance \\(pid {os.getpid()}\\)"
    ):
        Appliance(dep.folder)
    assert _config_loads(dep) == 1  # the second one wrote nothing
    assert app.thread.is_alive() and app.error is None


def test_the_lock_is_released_on_close_and_on_a_failed_start(deployment):
    dep = deployment(clients=3)
    app = Appliance(dep.folder)
    assert app.instance_lock.held and holder_pid(dep.folder) == os.getpid()
    asyncio.run(app.close())
    assert not app.instance_lock.held and holder_pid(dep.folder) is None

    config = dep.folder / "sealagg.toml"
    good = config.read_text()
    config.write_text(good.replace("min_clients = 3", "min_clients = 0"))
    with pytest.raises(ConfigError, match="min_clients"):
        Appliance(dep.folder)
    config.write_text(good)
    again = Appliance(dep.folder)  # the failed start left nothing held
    asyncio.run(again.close())


def test_the_lock_is_taken_before_the_folder_is_read(deployment, tmp_path):
    """Held by someone else, even a broken folder is refused as busy, not read."""
    dep = deployment(clients=3)
    with InstanceLock(dep.folder):
        (dep.folder / "sealagg.toml").write_text("not toml [")
        with pytest.raises(FolderInUseError):
            Appliance(dep.folder)
    with pytest.raises(ProvisioningError, match="not a valid federation configuration"):
        Appliance(dep.folder)


def test_a_missing_folder_is_not_created_by_the_lock(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(Exception, match="does not exist"):
        Appliance(missing)
    assert not missing.exists()
