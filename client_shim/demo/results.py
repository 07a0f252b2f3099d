"""What a demo run found out: per round, per client, and overall (filled in by the runner)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from sealagg.client_shim.demo.config import DemoConfig


@dataclasses.dataclass
class RoundResult:
    number: int
    status: str
    reason: str | None
    model_version: int | None
    accuracy: float | None
    contributors: list[str]
    dropped: list[str]
    late: dict[str, list[str]]  # phase -> clients that missed its deadline
    seconds: float | None


@dataclasses.dataclass
class DemoResult:
    config: DemoConfig
    ok: bool = False
    problems: list[str] = dataclasses.field(default_factory=list)
    rounds: list[RoundResult] = dataclasses.field(default_factory=list)
    base_accuracy: float | None = None
    final_accuracy: float | None = None
    centralized_accuracy: float | None = None
    #: client -> round -> bytes sent (None: vanished in that round)
    bytes_sent: dict[str, dict[int, int | None]] = dataclasses.field(default_factory=dict)
    vanished: list[tuple[str, int, str]] = dataclasses.field(default_factory=list)
    epsilon: float | None = None
    audit_ok: bool = False
    audit_detail: str = ""
    shard_sizes: dict[str, int] = dataclasses.field(default_factory=dict)
    #: round -> the audited masking parameters (degree 0 = complete graph, threshold, n, note)
    masking: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    federation_seconds: float = 0.0
    #: The demo folder, when kept (the federation is in its ``federation/`` subfolder).
    folder: Path | None = None

    @property
    def published(self) -> list[RoundResult]:
        return [r for r in self.rounds if r.status == "accepted"]
