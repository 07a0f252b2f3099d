"""``sealagg.toml``, validated at start: an invalid value is refused with its key and why.

The file written by ``sealagg init`` holds safe defaults; every section and key
below may be edited. Unknown keys are refused (a typo must not silently fall
back to a default).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, model_validator

from appliance.errors import ConfigError

Mode = Literal["plaintext", "secagg", "secagg+"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FederationSection(_Section):
    name: str
    format: Literal[1] = 1


class ServerSection(_Section):
    listen: str = "127.0.0.1:50051"
    public_address: str = "127.0.0.1:50051"
    tls_server_name: str = "localhost"
    #: Prometheus metrics on this address ("" turns them off). Loopback by default.
    metrics_listen: str = ""


class AggregationSection(_Section):
    mode: Mode = "secagg+"
    #: A round opens only when this many clients are ready; fewer and it waits.
    min_clients: int = Field(3, ge=1)
    max_clients: int = Field(1000, ge=1)
    #: Largest single upload, in bytes; checked from the declared size before allocation.
    max_upload_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    #: Expected dropout and corrupt fractions, for the SecAgg+ parameter finder.
    dropout_rate: float = Field(0.1, ge=0.0, lt=1.0)
    corrupt_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    #: Per-coordinate clipping range of the update before quantization.
    clip: float = Field(1.0, gt=0.0)
    #: Rounds to run before the appliance stops (0 = run until stopped).
    rounds: int = Field(0, ge=0)
    #: Seconds a client may go without polling and still count as ready.
    ready_window: float = Field(10.0, gt=0.0)

    @model_validator(mode="after")
    def _masking_needs_three(self) -> AggregationSection:
        if self.mode != "plaintext" and self.min_clients < 3:
            raise ValueError(
                "min_clients must be at least 3 in masked modes: with two parties, masking "
                "hides nothing (use attested mode and/or DP)"
            )
        if self.max_clients < self.min_clients:
            raise ValueError("max_clients must be at least min_clients")
        return self


class DeadlinesSection(_Section):
    """Seconds each phase waits for clients before it closes without them."""

    advertise_keys: float = Field(60.0, gt=0.0, description="includes local training")
    share_keys: float = Field(60.0, gt=0.0)
    masked_input: float = Field(300.0, gt=0.0)
    consistency_check: float = Field(60.0, gt=0.0)
    unmasking: float = Field(60.0, gt=0.0)


class OptimizerSection(_Section):
    model_config = ConfigDict(extra="allow", frozen=True)  # optimizer hyper-parameters
    name: str = "fedavg"


class GatesSection(_Section):
    #: A new global model waits in `pending` until `sealagg approve ROUND`.
    require_approval: bool = False


class ApplianceConfig(_Section):
    """The whole file; ``weights`` maps a client name to its contribution weight in (0, 1]."""

    federation: FederationSection
    server: ServerSection = ServerSection()
    aggregation: AggregationSection = AggregationSection()
    deadlines: DeadlinesSection = DeadlinesSection()
    optimizer: OptimizerSection = OptimizerSection()
    gates: GatesSection = GatesSection()
    weights: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _weights_in_range(self) -> ApplianceConfig:
        for name, weight in self.weights.items():
            if not 0.0 < weight <= 1.0:
                raise ValueError(f"weights.{name} = {weight}: a contribution weight lies in (0, 1]")
        return self

    def contribution_weight(self, name: str) -> float:
        return self.weights.get(name, 1.0)

    def optimizer_params(self) -> dict[str, Any]:
        return dict(self.optimizer.model_extra or {})


def _describe(error: pydantic.ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        value = item.get("input")
        shown = "" if isinstance(value, dict) else f" = {value!r}"
        lines.append(f"{source}: {key}{shown}: {item['msg']}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], *, source: str = "sealagg.toml") -> ApplianceConfig:
    try:
        return ApplianceConfig.model_validate(data)
    except pydantic.ValidationError as error:
        raise ConfigError(_describe(error, source)) from None


def load_config(path: Path) -> ApplianceConfig:
    """Read and validate the configuration file; :class:`ConfigError` names every bad key."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no configuration file (run `sealagg init` first)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, source=str(path))
