"""Every exception the appliance raises, in one flat module."""

from __future__ import annotations


class ApplianceError(Exception):
    """Base class: the appliance refused an operation; the message says why."""


class ConfigError(ApplianceError):
    """A configuration value is invalid; names the key, the value and why."""


class ProvisioningError(ApplianceError):
    """A federation folder, certificate or client kit could not be created or read."""


class KitTamperedError(ProvisioningError):
    """A client kit's contents no longer match their signature."""


class KitExpiredError(ProvisioningError):
    """A client kit whose certificates are expired or not yet valid: nothing is sent with it."""


class KitMismatchError(ProvisioningError):
    """The appliance answering at the kit's address is not the one the kit was issued for."""


class CertificateError(ProvisioningError):
    """A certificate is invalid for its purpose (wrong CA, expired, revoked, bad name)."""


class AuditChainError(ApplianceError):
    """The audit log's hash chain or signatures do not verify; names the first bad entry."""


class StoreError(ApplianceError):
    """Durable state could not be read or written (disk full, read-only, corrupt)."""


class AuditVerificationError(AuditChainError):
    """The audit log failed verification at entry ``seq`` (``None``: not tied to one entry).

    ``reason`` says what was found (edited entry, missing entry, truncated tail, bad signature
    or wrong key, ...); the message names both.
    """

    def __init__(self, seq: int | None, reason: str) -> None:
        self.seq = seq
        self.reason = reason
        where = "audit log" if seq is None else f"audit entry seq {seq}"
        super().__init__(f"{where}: {reason}")
