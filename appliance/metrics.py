"""Prometheus metrics of one appliance: rounds, phase latencies, dropouts, bytes, refusals.

Each appliance gets its own registry (tests run several in one process). The
metrics carry counts and timings only, never client data.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


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
        self.bytes_in = Counter("sealagg_bytes_in_total", "Bytes uploaded by clients", registry=r)
        self.bytes_out = Counter(
            "sealagg_bytes_out_total", "Model bytes sent to clients", registry=r
        )
        self.refused_calls = Counter(
            "sealagg_refused_calls_total", "Calls refused for identity", registry=r
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

    def total(self, name: str) -> float:
        """A counter's current value (for the status view)."""
        return self.registry.get_sample_value(name) or 0.0

    def serve(self, listen: str) -> None:
        """Expose /metrics on ``host:port`` (loopback by default in the config)."""
        host, _, port = listen.rpartition(":")
        start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=self.registry)
