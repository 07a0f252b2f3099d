"""Every exception the client shim raises, in one flat module, plus the failure codes they share.

Kept free of the shim's other modules so any of them (``session``, ``ckks``, ``connection``,
``privacy``) can import it without import cycles. Kit errors (expired, tampered, another
appliance at the kit's address) come from the read-only kit API, :mod:`sealagg.appliance.kit`.
"""

from __future__ import annotations

import grpc

__all__ = [
    "ROUND_LOST",
    "ApplianceUnavailableError",
    "PrivacyRefusedError",
    "RoundRefusedError",
]


class ApplianceUnavailableError(ConnectionError):
    """The appliance could not be reached after the retries allowed."""


class RoundRefusedError(RuntimeError):
    """The client refused a round whose parameters would not protect its update."""


class PrivacyRefusedError(RuntimeError):
    """The round's DP parameters would protect this client less than they claim."""


#: Upload failures after which the client waits for the round's outcome instead of failing:
#: the appliance restarted, or the round moved on without us.
ROUND_LOST = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    }
)
