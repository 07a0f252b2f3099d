"""Fixtures for tests that need a real federation and a running appliance on loopback."""

from __future__ import annotations

import os

# Test subprocesses started from the repository root (``python -c``) must not find our folders
# under their bare names before the installed distributions (Hugging Face's ``kernels``).
os.environ["PYTHONSAFEPATH"] = "1"

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sealagg.appliance.rounds import ActiveRound
from sealagg.appliance.testing import Deployment, RunningAppliance, base_model, make_deployment

__all__ = ["base_model"]


@pytest.fixture
def deployment(tmp_path: Path) -> Callable[..., Deployment]:
    def make(clients: int = 4, seed: int = 0) -> Deployment:
        return make_deployment(tmp_path, clients=clients, seed=seed)

    return make


@pytest.fixture
def running() -> Iterator[Callable[..., RunningAppliance]]:
    started: list[RunningAppliance] = []

    def start(folder: Path, **kwargs) -> RunningAppliance:
        appliance = RunningAppliance(folder, **kwargs)
        started.append(appliance)
        return appliance

    yield start
    for appliance in started:
        appliance.stop()


@pytest.fixture
def accepted(monkeypatch) -> list[tuple[int, str, int, dict | None]]:
    """What the appliance's rounds accepted: (round, client, phase, metadata)."""
    seen: list[tuple[int, str, int, dict | None]] = []
    original = ActiveRound.accept

    def accept(self, name, header, payload):
        original(self, name, header, payload)
        meta = json.loads(header.metadata_json) if header.metadata_json else None
        seen.append((self.number, name, header.phase, meta))

    monkeypatch.setattr(ActiveRound, "accept", accept)
    return seen
