"""Prometheus metrics of one appliance: rounds, phase latencies, dropouts, bytes, refusals,
and gauges of the service's state (run, round, phase, model version, ready clients, days to
certificate expiry).

Each appliance gets its own registry (tests run several in one process). The metrics carry
counts, timings, client names and certificate dates only, never client data.

The state gauges are a custom collector (:class:`StateCollector`) that reads the orchestrator's
``status()`` snapshot at scrape time: nothing has to remember to update them, so they can never
drift from what ``sealagg status`` shows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

_log = logging.getLogger("sealagg.metrics")

SECONDS_PER_DAY = 86400.0


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rounds = Counter("sealagg_rounds_total", "Rounds by outcome", ["outcome"], registry=r)
        self.phase_seconds = Histogram(
            "sealagg_phase_seconds", "Time each phase stayed open", ["phase"], registry=r
        )
        self.dropouts = Counter(
            "sealagg_dropouts_total", "Clients dropped at a deadline", registry=r
        )
        self.vanished = Counter(
            "sealagg_vanished_total",
            "Clients whose presence stream closed or fell silent, by reason",
            ["reason"],
            registry=r,
        )
        self.bytes_in = Counter("sealagg_bytes_in_total", "Bytes uploaded by clients", registry=r)
        self.bytes_out = Counter(
            "sealagg_bytes_out_total", "Model bytes sent to clients", registry=r
        )
        self.refused_calls = Counter(
            "sealagg_refused_calls_total",
            "Calls refused for identity, by reason (revoked, superseded, unregistered, ...)",
            ["reason"],
            registry=r,
        )
        self.refused_uploads = Counter(
            "sealagg_refused_uploads_total",
            "Uploads refused as malformed or out of place",
            registry=r,
        )
        self.upload_limit_refusals = Counter(
            "sealagg_upload_limit_refusals_total",
            "Uploads refused by an [uploads] bound (per client, memory, deadline)",
            ["limit"],
            registry=r,
        )
        self.upload_bytes_in_flight = Gauge(
            "sealagg_upload_bytes_in_flight",
            "Declared bytes of the uploads being received now",
            registry=r,
        )
        self.address: str | None = None
        self._http: Any = None

    def total(self, name: str) -> float:
        """A counter's current value, summed over its labels (for the status view)."""
        total = 0.0
        for metric in self._counters():  # not registry.collect(): that runs the collectors
            for family in metric.collect():
                for sample in family.samples:
                    if sample.name == name:
                        total += sample.value
        return total

    def _counters(self) -> tuple[Counter, ...]:
        return (
            self.rounds,
            self.dropouts,
            self.bytes_in,
            self.bytes_out,
            self.refused_calls,
            self.refused_uploads,
            self.upload_limit_refusals,
        )

    def watch(self, collector: Collector) -> None:
        """Add a collector read at every scrape (e.g. :class:`StateCollector`)."""
        self.registry.register(collector)

    def serve(self, listen: str) -> str:
        """Expose /metrics on ``host:port`` (loopback by default in the config); returns and
        logs the URL, so an operator knows where to point Prometheus."""
        host, _, port = listen.rpartition(":")
        addr = host.strip("[]") or "127.0.0.1"
        server, _ = start_http_server(int(port), addr=addr, registry=self.registry)
        self._http = server
        bound = server.server_address[1]
        shown = f"[{addr}]" if ":" in addr else addr
        self.address = f"http://{shown}:{bound}/metrics"
        _log.info("metrics served at %s", self.address)
        return self.address

    def close(self) -> None:
        """Stop serving /metrics and free the port (a restart in-process can bind it again)."""
        server, self._http = self._http, None
        if server is not None:
            server.shutdown()
            server.server_close()


@dataclass(frozen=True)
class CertificateExpiry:
    """Days until a certificate's notAfter (negative: expired), and whose it is."""

    certificate: str  # "server" | "ca" | "client"
    client: str
    not_after: datetime

    def days(self, now: datetime) -> float:
        return (self.not_after - now).total_seconds() / SECONDS_PER_DAY


class StateCollector(Collector):
    """Gauges read at scrape time from ``status()`` and the federation's certificates.

    ``status``: the orchestrator's snapshot (a dict as ``sealagg status`` shows it); a run id,
    when the snapshot carries one under ``"run"``, becomes ``sealagg_run_info``.
    ``certificates``: the server and CA certificates and the soonest-expiring active client
    certificate. Either may fail (store closed, folder unreadable): the scrape then reports
    ``sealagg_state_up 0`` instead of failing as a whole.
    """

    def __init__(
        self,
        status: Callable[[], Mapping[str, Any]],
        certificates: Callable[[], list[CertificateExpiry]],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._status = status
        self._certificates = certificates
        self._clock = clock

    def describe(self) -> list[Metric]:
        return []  # collected lazily: registering must not take a snapshot

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("sealagg_state_up", "1 when the state snapshot could be read")
        try:
            status = dict(self._status())
        except Exception as error:  # a closed store, a stopped loop: report, do not raise
            _log.debug("metrics: no status snapshot (%s)", error)
            status = None
        up.add_metric([], 0.0 if status is None else 1.0)
        yield up
        if status is not None:
            yield from _status_gauges(status)
        try:
            certificates = self._certificates()
        except Exception as error:
            _log.debug("metrics: certificates unreadable (%s)", error)
            certificates = []
        if certificates:
            now = self._clock()
            expiry = GaugeMetricFamily(
                "sealagg_certificate_expiry_days",
                "Days until the certificate expires (server, CA, soonest active client)",
                labels=["certificate", "client"],
            )
            for item in certificates:
                expiry.add_metric([item.certificate, item.client], item.days(now))
            yield expiry


def _status_gauges(status: Mapping[str, Any]) -> Iterator[Metric]:
    version = status.get("model_version")
    yield GaugeMetricFamily(
        "sealagg_model_version",
        "Current accepted model version (0: none)",
        value=float(version or 0),
    )
    ready = status.get("ready_clients") or []
    yield GaugeMetricFamily(
        "sealagg_ready_clients", "Clients ready for a round now", value=float(len(ready))
    )
    active = status.get("round")
    number = float(active.get("number") or 0) if isinstance(active, Mapping) else 0.0
    yield GaugeMetricFamily(
        "sealagg_round_number", "Number of the round in progress (0: none)", value=number
    )
    phase = GaugeMetricFamily(
        "sealagg_round_phase", "1 for the phase the appliance is in (idle between rounds)",
        labels=["phase"],
    )  # fmt: skip
    name = str(active.get("phase") or "idle") if isinstance(active, Mapping) else "idle"
    phase.add_metric([name], 1.0)
    yield phase
    run_id = _run_id(status.get("run"))
    if run_id is not None:
        info = InfoMetricFamily("sealagg_run", "The run in progress")
        info.add_metric([], {"run_id": run_id})
        yield info


def _run_id(run: object) -> str | None:
    """The run id from ``status()["run"]``: a mapping with ``id``/``run_id``, or the id itself."""
    if isinstance(run, Mapping):
        run = run.get("id", run.get("run_id"))
    if run is None or isinstance(run, bool):
        return None
    if isinstance(run, int | str):
        return str(run)
    return None
