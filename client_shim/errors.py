"""Every exception the client shim raises, in one flat module, plus the failure codes they share.

Kept free of the shim's other modules so any of them (``session``, ``ckks``, ``connection``,
``privacy``) can import it without import cycles. Kit errors (expired, tampered, another
appliance at the kit's address) come from the read-only kit API, :mod:`sealagg.appliance.kit`.

The errors about the link to the appliance (:class:`ApplianceUnavailableError`,
:class:`AccessRefusedError`) are also ``grpc.RpcError`` with ``code()`` and ``details()``:
code written against the raw gRPC failure keeps working, and a user gets a sentence that
names the appliance, the client and what to do instead of an ``_InactiveRpcError`` dump.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from sealagg.appliance.kit import KitMismatchError

__all__ = [
    "ROUND_LOST",
    "AccessRefusedError",
    "ApplianceMismatchError",
    "ApplianceUnavailableError",
    "HyperparametersError",
    "ModelMismatchError",
    "PrivacyRefusedError",
    "RoundRefusedError",
    "RunEnded",
]


class ApplianceUnavailableError(ConnectionError, grpc.RpcError):
    """The appliance could not be reached for longer than this client tolerates
    (``max_downtime``); ``waited`` says how long it tried, ``address`` where."""

    def __init__(
        self,
        message: str,
        *,
        address: str = "",
        waited: float = 0.0,
        code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
    ) -> None:
        super().__init__(message)
        self.address = address
        self.waited = waited
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return str(self)


class AccessRefusedError(ApplianceUnavailableError):
    """The appliance answers but refuses this client: its certificate is revoked, superseded
    by a newer kit, or was never registered. Retrying cannot help; the operator must act.

    ``appliance_message`` is the appliance's own reason when it sent one (a refused call);
    empty when the TLS handshake itself was refused (then only the symptom is known)."""

    def __init__(
        self,
        message: str,
        *,
        address: str = "",
        appliance_message: str = "",
        code: grpc.StatusCode = grpc.StatusCode.PERMISSION_DENIED,
    ) -> None:
        super().__init__(message, address=address, code=code)
        self.appliance_message = appliance_message


class ApplianceMismatchError(KitMismatchError, grpc.RpcError):
    """Found during a call: the appliance at the kit's address is not the one the kit was
    issued for (another CA or host name). A :class:`KitMismatchError`, and an RPC failure
    with code UNAVAILABLE (what gRPC itself reported) for code written against gRPC."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return str(self)


class RoundRefusedError(RuntimeError):
    """The client refused a round whose parameters would not protect its update."""


class HyperparametersError(RoundRefusedError):
    """The round's ``hyperparameters_json`` is not a JSON object of finite values: the client
    refuses the round (reported with the parameters code) rather than guess."""


class ModelMismatchError(ValueError):
    """The local model does not match the federation's global model (names, shapes, dtypes):
    training on it would produce an update the round cannot use. ``tensors`` names each
    mismatched tensor (with why), so the data owner can fix the model, not guess."""

    def __init__(self, message: str, tensors: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.tensors = tuple(tensors)


class RunEnded(Exception):  # noqa: N818 - a signal, not a failure
    """The appliance ended the run this client takes part in (``Task.run_end``): there will
    be no more rounds for it. ``run_id``, ``status`` ("finished" | "stopped"), ``reason``
    and ``model_version`` (the run's last accepted model) say how it ended."""

    def __init__(self, run_id: str, status: str, reason: str, model_version: int) -> None:
        super().__init__(f"run {run_id or '-'} {status}: {reason}".rstrip(": "))
        self.run_id = run_id
        self.status = status
        self.reason = reason
        self.model_version = model_version


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
