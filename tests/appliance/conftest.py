"""Fixtures shared by the appliance's unit tests."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@pytest.fixture
def key() -> Ed25519PrivateKey:
    """A fresh audit signing key."""
    return Ed25519PrivateKey.generate()
