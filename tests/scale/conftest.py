"""One local Ray cluster for every test of ``tests/scale`` that needs one (session scope).

Starting a cluster (a head and two worker nodes, one CPU each, 80 MB object stores) takes
20-200 s on a loaded 2-core machine (about the same with TLS on, the default: measured
22.5/21.6 s without, 24.8/18.5 s with), so test_striped_rounds.py, test_groups.py,
test_serve_striped.py and the rest share one; it runs with token auth and TLS, so every scale
test runs over TLS (test_ray_tls.py proves TLS is on). A test that removes a worker node
adds a replacement (the :func:`restored_cluster` fixture), so the cluster stays usable for
what runs after it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

#: Worker nodes of the shared cluster (the head runs no stripe).
WORKERS = 2


@pytest.fixture(scope="session")
def cluster() -> Iterator[Any]:
    from sealagg.appliance.scale.cluster import start_local_cluster

    started = start_local_cluster(workers=WORKERS)
    yield started
    started.shutdown()


@pytest.fixture
def restored_cluster(cluster: Any) -> Iterator[Any]:
    """The shared cluster, for a test that removes worker nodes: afterwards, replacements
    like the original workers are added until it has :data:`WORKERS` again."""
    from sealagg.appliance.scale.cluster import STRIPE_RESOURCE

    yield cluster
    while len(cluster.workers) < WORKERS:
        node = cluster.cluster.add_node(
            num_cpus=1, object_store_memory=80 << 20, resources={STRIPE_RESOURCE: 64}
        )
        cluster.cluster.wait_for_nodes()
        cluster.workers.append(node)
