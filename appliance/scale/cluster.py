"""Start a Ray cluster for striped rounds, with what can be hardened from here hardened.

:func:`start_local_cluster` runs a head and ``workers`` worker nodes on this machine
(``ray.cluster_utils.Cluster``: separate raylets and object stores, so transfers cross
nodes and a node can be removed), and connects this process as the driver. Settings:

* token authentication (``RAY_AUTH_MODE=token``, Ray >= 2.52) with a fresh 256-bit token
  from ``secrets``, in this process's environment only, inherited by the nodes it starts:
  a process that can reach the GCS or a raylet port but lacks the token is refused;
* TLS on every gRPC port (``RAY_USE_TLS=1``; ``tls=True``, the default): a throw-away
  private CA and one P-256 node certificate (:mod:`.tls`, files 0600 in a 0700 directory,
  the CA key never written), used by every node and this driver as server and client
  certificate: a process without a certificate from that CA cannot complete a handshake,
  so it can neither read stripe traffic (masked inputs, the unmask plan) nor call in;
* no dashboard (``include_dashboard=False``): no HTTP API, hence no Jobs API that would
  run submitted code; no Ray Client server (no ``ray_client_server_port``); usage stats off;
* stripes only on worker nodes (a ``stripe_slot`` resource), never on the coordinator's head.

Like the token, the TLS settings go into this process's environment (every node it starts
inherits them) and Ray's C++ config is re-read so the driver speaks TLS too.

Not done here, and the operator's job for a real multi-machine cluster (see the package
doc): node certificates from the appliance's private CA on every machine, with
``RAY_USE_TLS``/``RAY_TLS_*`` set in each node's and the appliance's environment, and a
private, firewalled network for every Ray port.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from typing import Any

import ray
from ray.cluster_utils import Cluster

from sealagg.appliance.scale.tls import local_cluster_tls

#: The custom resource every stripe asks for: only worker nodes offer it.
STRIPE_RESOURCE = "stripe_slot"
_MIB = 1 << 20
#: The variables Ray reads to speak TLS (every process, the driver included).
TLS_VARIABLES = ("RAY_USE_TLS", "RAY_TLS_SERVER_CERT", "RAY_TLS_SERVER_KEY", "RAY_TLS_CA_CERT")


@dataclasses.dataclass
class LocalCluster:
    """A started cluster: the ``Cluster`` object and its worker nodes (removable)."""

    cluster: Cluster
    workers: list[Any]

    def remove_worker(self, node: Any) -> None:
        """Take a worker node away (its actors die with it)."""
        self.cluster.remove_node(node, allow_graceful=False)
        self.workers.remove(node)

    def shutdown(self) -> None:
        ray.shutdown()
        self.cluster.shutdown()


def hardened_environment() -> dict[str, str]:
    """The environment the nodes inherit: token auth on, generous start-up timeouts (a
    loaded 2-core machine starts agents slowly), usage reporting off."""
    return {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_agent_register_timeout_ms": "180000",
        "RAY_raylet_start_wait_time_s": "180",
        # A dead node is noticed in seconds, so a lost stripe aborts the round promptly.
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_failure_threshold": "3",
    }


def start_local_cluster(
    workers: int = 2,
    *,
    object_store_mib: int = 80,
    stripe_slots: int = 64,
    attempts: int = 2,
    tls: bool = True,
) -> LocalCluster:
    """A head plus ``workers`` worker nodes, one CPU each, small object stores; connected.
    With ``tls`` (the default) every node and this driver speak mutually authenticated TLS
    (:mod:`.tls`). A start that times out inside Ray (a loaded machine) is torn down and
    tried again."""
    env = hardened_environment()
    # One token per driver process: Ray caches the token it loaded, so a second cluster
    # started by the same process must use the same one.
    env["RAY_AUTH_TOKEN"] = os.environ.get("RAY_AUTH_TOKEN") or env["RAY_AUTH_TOKEN"]
    if tls:
        env.update(local_cluster_tls().environment())
    else:
        for name in TLS_VARIABLES:
            os.environ.pop(name, None)
    os.environ.update(env)
    # Ray reads RAY_* settings into its C++ config when it is imported; re-read them so
    # this driver speaks token auth and TLS too (else its own GCS clients are refused).
    ray._raylet.Config.initialize("{}")
    node = {"num_cpus": 1, "object_store_memory": object_store_mib * _MIB}
    for attempt in range(attempts):
        cluster = Cluster(shutdown_at_exit=True)
        try:
            cluster.add_node(**node, include_dashboard=False)
            nodes = [
                cluster.add_node(**node, resources={STRIPE_RESOURCE: stripe_slots})
                for _ in range(workers)
            ]
        except Exception:  # Ray's own start-up timeout (a raylet slow to register)
            cluster.shutdown()
            if attempt + 1 == attempts:
                raise
            continue
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        return LocalCluster(cluster, nodes)
    raise ValueError("attempts must be at least 1")


def ray_tls_enabled() -> bool:
    """Whether this process's environment tells Ray to speak TLS (as Ray itself parses it)."""
    return os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")


def stripe_options() -> dict[str, Any]:
    """Actor options for stripes: on worker nodes only, spread across them."""
    return {"resources": {STRIPE_RESOURCE: 1}, "scheduling_strategy": "SPREAD"}
