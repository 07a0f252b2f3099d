"""Container health probe: the standard gRPC health service, over the appliance's mutual TLS.

Docker and compose run this every 30 s inside the appliance's container (the Dockerfile installs
it as /opt/sealagg/libexec/healthcheck.py). It asks ``grpc.health.v1.Health/Check`` on the main
port, so "healthy" means what the appliance itself reports (the state store and the listener),
not merely that a TCP port is open.

Why the administrator's kit: the port accepts no connection without a client certificate the
federation's CA issued. The probe runs inside the container, which already holds the whole
federation folder (CA key included), so using ``<folder>/admin-kit`` grants it nothing new; the
kit is verified against the folder's own provisioning key before use, as the CLI does.

Exit 0 when the appliance answers SERVING, 1 otherwise (Docker's "unhealthy"), with one line
saying why. A ``sealagg health`` command would be the better home for this (proposed).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_ADDRESS = "127.0.0.1:50051"
ADMIN_KIT_DIRNAME = "admin-kit"


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--folder",
        type=Path,
        default=Path(os.environ.get("SEALAGG_FOLDER", "/federation")),
        help="Federation folder (default: $SEALAGG_FOLDER, else /federation).",
    )
    parser.add_argument(
        "--address",
        default=os.environ.get("SEALAGG_HEALTHCHECK_ADDRESS", DEFAULT_ADDRESS),
        help=f"HOST:PORT to probe (default: $SEALAGG_HEALTHCHECK_ADDRESS, else {DEFAULT_ADDRESS}).",
    )
    parser.add_argument("--service", default="", help="Health service name ('' = overall).")
    parser.add_argument("--timeout", type=float, default=3.0, help="Seconds to wait.")
    return parser.parse_args(argv)


def probe(folder: Path, address: str, service: str, timeout: float) -> str:
    """The appliance's health status name (e.g. ``SERVING``); raises ``RuntimeError`` with the
    reason when it cannot be asked."""
    import grpc
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from sealagg.appliance.errors import ApplianceError
    from sealagg.appliance.kit import load_kit, raw_public_key

    try:
        signer = load_pem_public_key((folder / "audit_public_key.pem").read_bytes())
    except (OSError, ValueError) as error:
        raise RuntimeError(f"no federation at {folder}: {error}") from None
    if not isinstance(signer, Ed25519PublicKey):
        raise RuntimeError(f"{folder}/audit_public_key.pem is not an Ed25519 key")
    try:
        kit = load_kit(folder / ADMIN_KIT_DIRNAME, trusted_signer=raw_public_key(signer))
    except (OSError, ApplianceError) as error:
        raise RuntimeError(f"cannot use the admin kit in {folder}: {error}") from None
    ca, key, cert = kit.channel_credentials_material()
    credentials = grpc.ssl_channel_credentials(ca, key, cert)
    options = [("grpc.ssl_target_name_override", kit.server_name)]
    with grpc.secure_channel(address, credentials, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            code = error.code().name if callable(getattr(error, "code", None)) else "error"
            details = error.details() if callable(getattr(error, "details", None)) else ""
            raise RuntimeError(f"{address} answered {code}: {details}") from None
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    try:
        status = probe(args.folder, args.address, args.service, args.timeout)
    except RuntimeError as error:
        print(f"unhealthy: {error}", file=sys.stderr)
        return 1
    if status != "SERVING":
        print(f"unhealthy: {args.address} reports {status}", file=sys.stderr)
        return 1
    print(f"healthy: {args.address} reports SERVING")
    return 0


if __name__ == "__main__":
    sys.exit(main())
