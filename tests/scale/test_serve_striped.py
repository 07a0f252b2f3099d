"""``sealagg serve`` with a ``[scale]`` section (issue 22): a real appliance whose secagg+
rounds are summed by Ray stripe actors, real shim clients over gRPC and mutual TLS.

- One round, five clients, one vanishing just before its masked input: the published model
  is the exact weighted FedAvg of the four that counted (within the quantization bound),
  the aggregate is what the one-process round decodes from the same sum (bit for bit, and
  the audited digest is that sum's), the audit names the stripes, and the stripes ran on
  the cluster's worker nodes.
- A stripe actor killed while the masked inputs arrive: that round aborts with the reason,
  nothing is published, and the next round (the lost stripe replaced) publishes.
- Refusals: at load, [scale] with a robust rule in a masked mode or with DP, in ckks mode;
  an asynchronous run when it is created. [scale] with masked DP loads. Without [scale]
  the appliance never imports Ray.

The Ray cluster is the session's (tests/scale/conftest.py), joined through ``address``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import ray
from sealagg_testkit.audit import audit_details
from sealagg_testkit.striped import (
    MASKED_DEADLINES,
    assert_published_mean,
    one_round_without,
    record_aggregates,
    two_rounds_with_a_stripe_killed,
)

from sealagg.appliance import admin_api
from sealagg.appliance.cli._common import ADMIN_KIT_DIRNAME, ADMIN_NAME
from sealagg.appliance.config import load_config
from sealagg.appliance.errors import ConfigError
from sealagg.appliance.federation import add_client
from sealagg.crypto import QuantizationSpec, decode_sum

N = 5
#: Unequal stripes, several chunks each (the model has 136 values, 137 words encoded).
SCALE = {"stripes": [3, 1], "chunk_words": 16}
ASYNC = {"buffer_size": 4, "max_staleness": 2, "staleness": "polynomial", "a": 0.5}


def _configure(dep, cluster, rounds: int) -> None:
    dep.configure(
        aggregation={"mode": "secagg+", "min_clients": N, "max_clients": N, "rounds": rounds},
        deadlines=MASKED_DEADLINES,
        scale={**SCALE, "address": cluster.cluster.address},
    )


@pytest.fixture
def aggregated(monkeypatch) -> list[tuple[np.ndarray, object, object]]:
    return record_aggregates(monkeypatch)


def test_serve_runs_a_secagg_plus_round_on_ray_stripes(
    cluster, deployment, running, aggregated
) -> None:
    dep = deployment(clients=N)
    add_client(dep.federation, ADMIN_NAME, out=dep.folder / ADMIN_KIT_DIRNAME)
    _configure(dep, cluster, rounds=1)
    app = running(dep.folder)
    runtime = app.app.orchestrator.scale
    assert runtime is not None and len(runtime.stripes) == 2
    head = ray.get_runtime_context().get_node_id()  # this driver runs on the head node
    nodes = ray.get([s.node_id.remote() for s in runtime.stripes])
    assert head not in nodes and set(nodes) <= {w.node_id for w in cluster.workers}

    # Asynchronous buffers are not striped yet: refused when the run is created.
    with admin_api.connect(dep.folder, address=dep.address, timeout=15) as admin:
        ok, detail, _ = admin.create_run_reply(
            name="async", schedule="async", async_json=json.dumps(ASYNC), start=True
        )
    assert not ok and "not striped yet" in detail, detail

    one_round_without(dep, app, N, "client4")  # published over client0..client3

    # What the one-process round would have published from the same sum, bit for bit.
    ((total, aggregate, _),) = aggregated
    mean, weight = decode_sum(total, QuantizationSpec(clip=1.0, max_clients=N))
    assert np.array_equal(aggregate.mean_update, mean.astype(np.float32))
    assert aggregate.total_weight == weight
    (audited,) = audit_details(dep, "aggregate")
    assert audited["aggregate_sha256"] == hashlib.sha256(total.tobytes()).hexdigest()
    (parameters,) = audit_details(dep, "round_parameters")
    assert parameters["stripes"] == 2 and parameters["stripe_weights"] == [3.0, 1.0]
    assert parameters["cluster"] == "external"
    assert runtime.stripes == []  # the appliance stopped: its stripes are gone, the cluster not


def test_a_lost_stripe_aborts_the_round_and_the_next_one_publishes(
    cluster, deployment, running, monkeypatch
) -> None:
    dep = deployment(clients=N)
    _configure(dep, cluster, rounds=2)
    app = running(dep.folder)
    runtime = app.app.orchestrator.scale
    reports = two_rounds_with_a_stripe_killed(dep, app, N, monkeypatch)
    names = [f"client{i}" for i in range(N)]
    for name in names:  # each client was told: round 1 aborted (and why), round 2 published
        first, second = reports[name]
        assert first.outcome == "aborted" and "stripe" in first.reason, first
        assert second.outcome == "published", second

    aborted, published = app.app.orchestrator.history[-2:]
    assert aborted.outcome == "aborted", aborted
    assert "stripe" in aborted.reason and "nothing is published" in aborted.reason, aborted
    assert published.outcome == "published", published
    assert published.contributors == tuple(names)
    assert runtime.replaced == 1
    assert_published_mean(dep, range(N))  # round 1 published nothing
    assert [r["round"] for r in audit_details(dep, "aggregate")] == [2]


@pytest.mark.parametrize(
    ("sections", "words"),
    [
        # DP runs on stripes in masked modes (tests/scale/test_dp_striped.py) and in
        # plaintext with rule = mean; DP with a robust rule is refused. Plaintext and
        # attested rounds with robust rules: tests/scale/test_serve_robust_striped.py.
        (
            {"aggregation": {"mode": "plaintext", "rule": "median"}, "privacy": {"mode": "client"}},
            "not combined with DP",
        ),
        (
            {
                "aggregation": {"rule": "median", "min_clients": 6},
                "privacy": {"mode": "distributed"},
            },
            "aggregation.rule = median",
        ),
        ({"aggregation": {"rule": "median", "min_clients": 6}}, "aggregation.rule = median"),
        ({"aggregation": {"mode": "ckks"}}, "not aggregation.mode = ckks"),
        ({"scale": {"stripes": 0}}, "scale.stripes"),
    ],
)
def test_unsupported_combinations_are_refused_at_load(deployment, sections, words) -> None:
    """Refused when the configuration is read (serve stops before it starts anything)."""
    dep = deployment(clients=3)
    dep.configure(**{"scale": {"stripes": 2}, **sections})
    with pytest.raises(ConfigError, match="scale") as refused:
        load_config(dep.folder / "sealagg.toml")
    assert words in str(refused.value)


@pytest.mark.parametrize("mode", ["client", "distributed"])
def test_masked_dp_modes_load_with_scale(deployment, mode) -> None:
    """[scale] with privacy.mode client or distributed (secagg / secagg+) is accepted."""
    dep = deployment(clients=3)
    dep.configure(scale={"stripes": 2}, privacy={"mode": mode})
    config = load_config(dep.folder / "sealagg.toml")
    assert config.scale_enabled and config.privacy.mode == mode


NO_RAY = """
import sys
sys.modules["ray"] = None  # as if Ray were not installed: `import ray` raises ImportError
from sealagg.appliance.cli import app
from sealagg.appliance.config import parse_config
from sealagg.appliance.errors import ConfigError
from sealagg.appliance.federation import add_client
from sealagg.appliance.server import Appliance, start_scale

plain = parse_config({"federation": {"name": "f"}})
assert plain.scale is None and not plain.scale_enabled
scaled = parse_config({"federation": {"name": "f"}, "scale": {"stripes": 2}})
try:
    start_scale(scaled)
except ConfigError as error:
    print(error)
"""


def test_the_appliance_runs_without_ray_unless_scale_is_configured() -> None:
    """Without [scale] nothing imports Ray; with it and no Ray, serve stops with the reason."""
    done = subprocess.run(
        [sys.executable, "-c", NO_RAY], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "[scale] needs Ray: install the sealagg[scale] extra" in done.stdout
