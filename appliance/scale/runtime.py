"""The Ray side of ``sealagg serve`` with a ``[scale]`` section: cluster, stripes, rounds.

:meth:`ScaleRuntime.start` runs when the appliance starts: with no ``address`` it starts a
local hardened cluster (:func:`.cluster.start_local_cluster`: token auth, no dashboard,
Jobs or Client server, stripes on worker nodes only) and owns it; with an ``address`` it
joins that cluster as a driver (reusing this process's connection when it is already
connected there; the cluster's token comes from ``RAY_AUTH_TOKEN`` in the environment, never
from the configuration file; TLS is the operator's to set up: ``RAY_USE_TLS=1`` and
``RAY_TLS_SERVER_CERT/KEY``, ``RAY_TLS_CA_CERT`` in this appliance's environment as in every
node's, else a warning is logged, not an error: a cluster whose ports only ever cross an
encrypted private link may run without) and at stop leaves it running, disconnecting if it
connected.
It creates one stripe actor per configured weight (:func:`.cluster.stripe_options`: worker
nodes, spread).

Before each round :meth:`ScaleRuntime.round_for` checks that every stripe answers and
replaces one that does not (its node was lost: the round it served was aborted, and the
new actor lands on a remaining worker), then builds a
:class:`~.masked_round.StripedMaskedRound` over ranges planned for the round's vector;
:meth:`ScaleRuntime.plain_round_for` does the same for plaintext and attested rounds
(:class:`~.plain_round.StripedPlainRound`, every rule), on plain stripes
(:mod:`.plain_stripe`) that replace the masked ones at the first such round.
:meth:`ScaleRuntime.shutdown` kills the stripes and, when it started the cluster, stops it.

Only this module (and the rest of ``appliance.scale``) imports Ray; the appliance imports
it lazily, when the configuration has ``[scale]``.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import ray
from ray.exceptions import RayError

from sealagg.appliance.config import ScaleSection
from sealagg.appliance.errors import ConfigError
from sealagg.appliance.robust import check_feasible
from sealagg.appliance.rounds import Member
from sealagg.appliance.scale.cluster import (
    LocalCluster,
    ray_tls_enabled,
    start_local_cluster,
    stripe_options,
)
from sealagg.appliance.scale.coordinator import plan_stripes, stripe_actor_class
from sealagg.appliance.scale.masked_round import StripedMaskedRound
from sealagg.appliance.scale.plain_round import StripedPlainRound
from sealagg.appliance.scale.plain_stripe import plain_stripe_actor_class
from sealagg.crypto import QuantizationSpec, RoundConfig

_log = logging.getLogger(__name__)
#: Seconds a stripe may take to answer the liveness probe before a round (a lost node's
#: actor fails at once once Ray knows; this bounds the wait while it does not yet).
PROBE_SECONDS = 10.0


class ScaleRuntime:
    """A connected Ray cluster and this appliance's stripe actors (see the module doc)."""

    def __init__(
        self, section: ScaleSection, local: LocalCluster | None, *, connected: bool = False
    ) -> None:
        self.section = section
        self.local = local  # the cluster this runtime started (stopped with it), if any
        self.connected = connected  # this runtime connected the driver (disconnects at stop)
        self.kind = "masked"  # the stripes' class: "masked" (Stripe) or "plain" (PlainStripe)
        self._actor = stripe_actor_class(**stripe_options())
        self.stripes: list[Any] = [self._actor.remote() for _ in section.weights]
        self.replaced = 0  # stripes replaced after a loss, over the appliance's life

    @classmethod
    def start(cls, section: ScaleSection) -> ScaleRuntime:
        """Start (no ``address``) or join (``address``) the cluster and create the stripes;
        blocks until every stripe answers."""
        local: LocalCluster | None = None
        connected = False
        if section.address is None:
            local = start_local_cluster(
                workers=section.workers, object_store_mib=section.object_store_mib
            )
        elif not ray.is_initialized():
            if not ray_tls_enabled():
                _log.warning(
                    "scale: [scale] address = %s but RAY_USE_TLS is not set: Ray traffic to "
                    "that cluster (masked inputs, the unmask plan) is not encrypted; set "
                    "RAY_USE_TLS=1 and RAY_TLS_SERVER_CERT/KEY, RAY_TLS_CA_CERT for every node "
                    "and this appliance",
                    section.address,
                )
            ray.init(address=section.address, include_dashboard=False, log_to_driver=False)
            connected = True
        elif ray.get_runtime_context().gcs_address != section.address:
            raise ConfigError(
                f"[scale] address = {section.address}: this process is already connected to "
                f"the Ray cluster at {ray.get_runtime_context().gcs_address}"
            )
        runtime = cls(section, local, connected=connected)
        try:
            nodes = ray.get([s.node_id.remote() for s in runtime.stripes], timeout=300)
        except BaseException:
            runtime.shutdown()
            raise
        _log.info(
            "scale: %d stripes on %d Ray node(s) (%s cluster)",
            len(runtime.stripes),
            len(set(nodes)),
            "local" if local is not None else "external",
        )
        return runtime

    def describe(self) -> dict:
        """What the round_parameters audit record says about the stripes (no node names)."""
        return {
            "stripes": len(self.stripes),
            "stripe_weights": list(self.section.weights),
            "cluster": "local" if self.local is not None else "external",
        }

    def round_for(
        self,
        number: int,
        round_id: bytes,
        members: list[Member],
        config: RoundConfig,
        spec: QuantizationSpec,
        alongside: list[bytes] | None = None,
    ) -> StripedMaskedRound:
        """A round over live stripes (lost ones replaced first); ``ValueError`` when the
        ranges cannot be planned or the stripes cannot begin (the round is then aborted).

        ``alongside``: the round ids of the groups of the same grouped round already begun
        on these stripes (appliance/grouped_round.py). Such a group is begun beside them, on
        the stripes as they are: only the first group checks and replaces the stripes (a
        replaced stripe would forget the groups before it)."""
        if not alongside:
            self._use("masked")
            self._replace_lost()
        return StripedMaskedRound(
            number,
            round_id,
            members,
            config,
            spec,
            stripes=self.stripes,
            ranges=plan_stripes(config.vector_length, self.section.weights),
            chunk_words=self.section.chunk_words,
            timeout=self.section.call_timeout,
            alongside=alongside or (),
        )

    def plain_round_for(
        self,
        number: int,
        round_id: bytes,
        members: list[Member],
        dimension: int,
        *,
        rule: str,
        f: int,
        beta: float,
    ) -> StripedPlainRound:
        """A plaintext / attested round over live plain stripes (:mod:`.plain_round`), for
        ``rule`` (``mean`` or a robust rule, checked feasible for these members here, as
        :func:`appliance.robust.build_robust_round` checks it); ``ValueError`` as
        :meth:`round_for`."""
        if rule != "mean":
            check_feasible(rule, len(members), f, beta, unit="clients")
        self._use("plain")
        self._replace_lost()
        return StripedPlainRound(
            number,
            round_id,
            members,
            dimension,
            rule=rule,
            f=f,
            beta=beta,
            stripes=self.stripes,
            ranges=plan_stripes(dimension, self.section.weights),
            chunk_words=self.section.chunk_words,
            timeout=self.section.call_timeout,
        )

    def _use(self, kind: str) -> None:
        """Stripes of ``kind``: the pool started with masked stripes; a plaintext or attested
        appliance swaps it once, at its first round, for plain ones (the mode is fixed while
        the appliance runs). ``ValueError`` when the new stripes do not start."""
        if kind == self.kind:
            return
        for stripe in self.stripes:
            with contextlib.suppress(RayError):
                ray.kill(stripe, no_restart=True)
        make = plain_stripe_actor_class if kind == "plain" else stripe_actor_class
        self._actor = make(**stripe_options())
        self.stripes = [self._actor.remote() for _ in self.section.weights]
        self.kind = kind
        try:
            ray.get([s.node_id.remote() for s in self.stripes], timeout=self.section.call_timeout)
        except RayError as error:
            raise ValueError(
                f"the Ray cluster could not start the {kind} stripes ({type(error).__name__})"
            ) from None
        _log.info("scale: %d %s stripes started", len(self.stripes), kind)

    def _replace_lost(self) -> None:
        """Probe every stripe (one bounded wait for all); replace those whose actor is dead
        and wait for the replacements to answer. ``ValueError`` (the round is not started)
        when a stripe neither answers nor is known dead, or the cluster cannot place one.

        This runs while the orchestrator builds the round, on its event loop: the probe is
        one round trip per stripe (milliseconds), and only after a loss does it wait for new
        actors to start (bounded by ``call_timeout``)."""
        try:
            probes = [s.node_id.remote() for s in self.stripes]
            _, silent = ray.wait(probes, num_returns=len(probes), timeout=PROBE_SECONDS)
            if silent:
                raise ValueError(
                    f"{len(silent)} stripe(s) did not answer within {PROBE_SECONDS:g} s (a node "
                    "unreachable, or the cluster overloaded); the round is not started"
                )
            fresh = []
            for i, probe in enumerate(probes):
                try:
                    ray.get(probe, timeout=0)
                except RayError as error:
                    _log.warning(
                        "scale: stripe %d is lost (%s); replacing it", i, type(error).__name__
                    )
                    with contextlib.suppress(RayError):
                        ray.kill(self.stripes[i], no_restart=True)
                    self.stripes[i] = self._actor.remote()
                    fresh.append(self.stripes[i].node_id.remote())
                    self.replaced += 1
            if fresh:
                ray.get(fresh, timeout=self.section.call_timeout)
        except RayError as error:
            raise ValueError(
                f"the Ray cluster could not provide the stripes ({type(error).__name__}): "
                "no worker node offers a stripe slot, or the cluster is gone"
            ) from None

    def shutdown(self) -> None:
        """Kill the stripes; stop the cluster if this runtime started it."""
        for stripe in self.stripes:
            with contextlib.suppress(RayError):
                ray.kill(stripe, no_restart=True)
        self.stripes = []
        if self.local is not None:
            self.local.shutdown()
            self.local = None
        elif self.connected:  # joined an external cluster: leave it running, disconnect
            ray.shutdown()
            self.connected = False
