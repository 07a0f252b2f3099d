"""Per-client DP accounting in unit tests (appliance/async_privacy.py): a real state folder,
the controller over it, and the library's own composition to compare against."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dp_accounting
from dp_accounting import rdp

from sealagg.appliance.config import PrivacySection
from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.privacy import PrivacyController
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import make_deployment
from sealagg.crypto.staleness import StalenessPolicy

POLY = StalenessPolicy(kind="polynomial", max_staleness=3, a=0.5)
DELTA = 1e-5


def open_state(tmp_path: Path) -> Iterator[Any]:
    """A deployment's state store (for a fixture: ``yield from open_state(tmp_path)``)."""
    dep = make_deployment(tmp_path, clients=3)
    store = open_store(FederationFolder.load(dep.folder))
    yield store
    store.close()


def controller(store: Any, **privacy: Any) -> PrivacyController:
    privacy.setdefault("mode", "client")
    return PrivacyController(PrivacySection(**privacy), store.folder, store.audit)


def rdp_epsilon(multipliers: list[float], delta: float = DELTA) -> float:
    """The library directly: one GaussianDpEvent per participation, composed, no shortcut."""
    acc = rdp.RdpAccountant()
    acc.compose(
        dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(z) for z in multipliers])
    )
    return float(acc.get_epsilon(delta))
