"""Admin.Status of the running appliance, over mutual TLS with the administrator's kit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class StatusPoller:
    """One channel to the Admin service (the appliance reserves the name 'admin' for it)."""

    def __init__(self, kit_path: Path) -> None:
        import grpc

        from sealagg.appliance.kit import load_kit
        from sealagg.appliance.wire import sealagg_pb2 as pb
        from sealagg.appliance.wire import sealagg_pb2_grpc as pb_grpc

        kit = load_kit(kit_path)
        ca, key, cert = kit.channel_credentials_material()
        self._grpc = grpc
        self._pb = pb
        self._channel = grpc.secure_channel(
            kit.address,
            grpc.ssl_channel_credentials(ca, key, cert),
            options=[("grpc.ssl_target_name_override", kit.server_name)],
        )
        self._stub = pb_grpc.AdminStub(self._channel)

    def status(self, timeout: float = 1.0) -> dict[str, Any] | None:
        """The status JSON, or None while the appliance does not answer."""
        try:
            reply = self._stub.Status(self._pb.StatusRequest(), timeout=timeout)
            return json.loads(reply.json)
        except (self._grpc.RpcError, ValueError):
            return None

    def close(self) -> None:
        self._channel.close()
