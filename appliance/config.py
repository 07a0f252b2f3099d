"""``sealagg.toml``, validated at start: an invalid value is refused with its key and why.

The file written by ``sealagg init`` holds safe defaults; every section and key
below may be edited. Unknown keys are refused (a typo must not silently fall
back to a default).
"""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sealagg.appliance.errors import ConfigError
from sealagg.crypto.config import default_minimum_survivors
from sealagg.crypto.errors import InfeasibleParametersError
from sealagg.crypto.params import choose_graph
from sealagg.crypto.policy import FederationPolicy, check_round_against_policy
from sealagg.crypto.rules import DEFAULT_COLLUDERS, MIN_MASKED_PARTIES, require_masking_parties

Mode = Literal["plaintext", "secagg", "secagg+", "ckks", "attested"]
#: Aggregation rules (appliance/robust.py); the one list of their names.
Rule = Literal["mean", "median", "trimmed_mean", "krum", "multi_krum", "geometric_median"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FederationSection(_Section):
    name: str
    format: Literal[1] = 1


def check_listen_address(value: str) -> str:
    """``HOST:PORT`` with a host and a port in 1-65535 (IPv6 hosts in brackets).

    Port 0 is refused: gRPC and the metrics server would bind a random port and say so only
    in a log line, so clients and Prometheus would be pointed at a port nobody listens on
    (``127.0.0.1:99999`` was accepted and listened on a random port). Tests pick free ports.
    """
    host, colon, port = value.rpartition(":")
    if not colon or not host.strip("[]"):
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:50051)")
    bracketed = host.startswith("[") and host.endswith("]")
    if ":" in host and not bracketed:
        raise ValueError(f"{value!r}: an IPv6 host goes in brackets, e.g. [::1]:50051")
    if any(c.isspace() for c in host) or "[" in host.strip("[]") or "]" in host.strip("[]"):
        raise ValueError(f"{value!r}: the host {host!r} is not a host name or address")
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: the port must be a number from 1 to 65535, not {port!r}")
    return value


class ServerSection(_Section):
    listen: str = "127.0.0.1:50051"
    public_address: str = "127.0.0.1:50051"
    tls_server_name: str = "localhost"
    #: Prometheus metrics on this address ("" turns them off). Loopback by default.
    metrics_listen: str = ""

    @field_validator("listen")
    @classmethod
    def _listen_is_host_port(cls, value: str) -> str:
        return check_listen_address(value)

    @field_validator("metrics_listen")
    @classmethod
    def _metrics_listen_is_host_port(cls, value: str) -> str:
        return value if value == "" else check_listen_address(value)


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
    #: Robust rule (appliance/robust.py): on individual updates in plaintext/attested mode
    #: (the appliance then keeps all n updates: O(n·d) memory), on bucket means in masked modes.
    rule: Rule = "mean"
    #: Byzantine clients Krum/Multi-Krum tolerate (needs n > 2f + 2 points: updates or buckets).
    f: int = Field(0, ge=0)
    #: Trimmed mean: fraction trimmed per side (floor(beta·n) values).
    beta: float = Field(0.1, ge=0.0, lt=0.5)
    #: Masked modes with a robust rule: clients per SecAgg bucket (the appliance sees bucket sums).
    bucket_size: int = Field(MIN_MASKED_PARTIES, ge=MIN_MASKED_PARTIES)
    #: secagg/secagg+ with rule = mean (issue 22): a round of more members is split into
    #: independent secure groups of at least the policy's minimum_sum, by a public rule each
    #: client checks; the appliance sees every group's sum and adds them (0: never split).
    max_group_size: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _masking_needs_three(self) -> AggregationSection:
        if self.mode not in ("plaintext", "attested"):
            require_masking_parties(self.min_clients, f"min_clients: a {self.mode} round")
        if self.max_clients < self.min_clients:
            raise ValueError("max_clients must be at least min_clients")
        if self.rule != "mean" and self.mode == "ckks":
            raise ValueError(
                f"rule = {self.rule} needs individual updates or bucket sums: use plaintext, "
                "attested, secagg or secagg+ (ckks sums everything under one key)"
            )
        return self


class PolicySection(_Section):
    """The federation policy written into every client kit, which the clients enforce.

    ``colluders`` (c) data owners may work with the appliance; every revealed sum covers at
    least ``minimum_sum`` (m) clients; clients take part only in ``allowed_modes`` (empty:
    just ``aggregation.mode``). Checked at start with the clients' own function, so the
    appliance refuses to start with a configuration its clients would refuse.
    """

    colluders: int = Field(DEFAULT_COLLUDERS, ge=0)
    minimum_sum: int = Field(MIN_MASKED_PARTIES, ge=MIN_MASKED_PARTIES)
    allowed_modes: tuple[Mode, ...] = ()

    def federation_policy(self, mode: str) -> FederationPolicy:
        return FederationPolicy(
            colluders=self.colluders,
            minimum_sum=self.minimum_sum,
            allowed_modes=frozenset(self.allowed_modes or (mode,)),
        )


class DeadlinesSection(_Section):
    """Seconds each phase waits for clients before it closes without them."""

    advertise_keys: float = Field(60.0, gt=0.0, description="includes local training")
    share_keys: float = Field(60.0, gt=0.0)
    masked_input: float = Field(300.0, gt=0.0)
    consistency_check: float = Field(60.0, gt=0.0)
    unmasking: float = Field(60.0, gt=0.0)
    #: Adaptive deadlines (issue 25, ``appliance/phase_timing.py``): once ``adaptive_min_rounds``
    #: rounds were measured, a phase waits ``adaptive_factor`` x the 95th percentile of how long
    #: this federation's clients took to answer it over the last ``adaptive_rounds`` rounds, at
    #: least ``adaptive_floor`` seconds and never more than the configured value above (the
    #: maximum). Only connected-but-slow clients (and old clients without presence) are waited
    #: for: a vanished client is noticed at once (``[presence]``).
    adaptive: bool = True
    adaptive_factor: float = Field(4.0, ge=1.0)
    adaptive_floor: float = Field(5.0, gt=0.0)
    adaptive_rounds: int = Field(20, ge=1, le=1000)
    adaptive_min_rounds: int = Field(3, ge=1, le=1000)

    @model_validator(mode="after")
    def _history_fits_the_window(self) -> DeadlinesSection:
        if self.adaptive_min_rounds > self.adaptive_rounds:
            raise ValueError("adaptive_min_rounds cannot exceed adaptive_rounds (never adaptive)")
        return self


class PresenceSection(_Section):
    """Live presence of clients (issue 25, ``appliance/presence.py``).

    Each client holds one Presence stream open and sends a heartbeat every ``beat_seconds``.
    A closed stream (a dead process, a reset) counts the client as vanished at once; a stream
    silent for ``silence_seconds`` (a network that went away without a reset) counts the same.
    A vanished member is no longer waited for: the phase closes as soon as every live member
    answered. ``max_streams`` bounds the streams one client may hold (a reconnect overlaps
    the old stream until the appliance notices it closed; more is refused)."""

    enabled: bool = True
    beat_seconds: float = Field(1.0, gt=0.0, le=60.0)
    silence_seconds: float = Field(5.0, gt=0.0, le=600.0)
    max_streams: int = Field(2, ge=1, le=16)

    @model_validator(mode="after")
    def _silence_spans_beats(self) -> PresenceSection:
        if self.silence_seconds < 2 * self.beat_seconds:
            raise ValueError("silence_seconds must be at least twice beat_seconds")
        return self


class UploadsSection(_Section):
    """Bounds on uploads in flight (``appliance/upload_limits.py``).

    Any certificate holder can open uploads; without these bounds one authenticated client
    held every upload slot with a byte every few seconds (the round aborted) or grew the
    appliance's memory with hundreds of declared-but-unsent uploads. An upload must finish
    within ``grace_seconds`` + its declared size / ``min_rate`` after it gets its memory, and
    never after its phase's deadline; a client has at most ``per_client`` uploads and
    ``client_bytes`` declared bytes in flight (one upload is always allowed, whatever its
    size); all clients together at most ``total_bytes`` being received (an upload waits,
    first come first served, until it fits; one alone is admitted whatever its size).
    """

    #: Slowest accepted upload rate, bytes per second (the default is 2 Mbit/s).
    min_rate: int = Field(256 * 1024, ge=1024)
    #: Seconds added to every upload's size-derived deadline (connection and TLS set-up).
    grace_seconds: float = Field(30.0, gt=0.0)
    #: Uploads one client may have in flight (a second one covers a retry while the
    #: appliance has not yet noticed that the first connection died).
    per_client: int = Field(2, ge=1, le=64)
    #: Declared bytes one client may have in flight.
    client_bytes: int = Field(128 * 1024 * 1024, ge=1024)
    #: Declared bytes of all uploads being received at once.
    total_bytes: int = Field(256 * 1024 * 1024, ge=1024)

    @model_validator(mode="after")
    def _total_holds_a_client(self) -> UploadsSection:
        if self.total_bytes < self.client_bytes:
            raise ValueError("total_bytes must be at least client_bytes")
        return self


class CkksSection(_Section):
    """Mode ``ckks`` (TenSEAL): ring degree, moduli, scale, per-client size budget, key holder.

    The key holder is a designated party (role ``key_holder`` on the authority's roster) that
    sends no update; no data owner holds the secret key unless the federation says so here.
    """

    poly_modulus_degree: Literal[8192, 16384] = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 40)
    scale_bits: int = Field(40, ge=20, le=60)
    #: Largest encrypted upload per client; a bigger model is refused (use secagg+).
    budget_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    #: The party that holds the CKKS secret key and decrypts the (verified) sum. Required for
    #: mode ckks: a round without a designated key holder is refused.
    key_holder: str = ""
    #: The key holder also sends an update (it is then a data owner holding the secret key:
    #: only when the federation accepts that).
    key_holder_contributes: bool = False
    #: INSECURE against a colluding appliance: seal the secret key to every data owner, so any
    #: of them (with the appliance's copy of the ciphertexts) reads every other's update.
    #: Clients refuse such a round unless their own configuration accepts it too.
    share_secret_key: bool = False
    #: m: the fewest distinct signed data owners the key holder decrypts a sum of (never < 3).
    min_contributors: int = Field(MIN_MASKED_PARTIES, ge=MIN_MASKED_PARTIES)
    #: Refuse parameters whose worst-case error per value of the weighted sum exceeds this.
    max_error: float = Field(1e-3, gt=0.0)


class OptimizerSection(_Section):
    model_config = ConfigDict(extra="allow", frozen=True)  # optimizer hyper-parameters
    name: str = "fedavg"


class AttestationSection(_Section):
    """TEE evidence the appliance gives clients (appliance/attestation.py); mode ``attested``."""

    provider: Literal["none", "software", "sev-snp", "tdx", "configfs-tsm"] = "none"
    #: Ed25519 seed of the INSECURE software attester (relative to the federation folder).
    software_key: str = "attestation/software.key"
    #: configfs-tsm report directory ("" = /sys/kernel/config/tsm/report).
    tsm_root: str = ""


class GatesSection(_Section):
    #: A new global model waits in `pending` until `sealagg approve ROUND`.
    require_approval: bool = False
    #: Different approvers needed to publish a candidate (2 = two-person rule; one rejection
    #: rejects). Only meaningful with ``require_approval`` (appliance/approvals.py).
    approvals_required: int = Field(1, ge=1, le=2)
    #: Vendor quality gate (appliance/vendor_gate.py): the party that evaluates each candidate
    #: on its own holdout; "" = none. Accepted only if ``metric`` is no worse than the last
    #: accepted version's (within ``tolerance``); no report before the deadline = rejected.
    vendor: str = ""
    metric: str = Field("eer", pattern=r"^[A-Za-z0-9_]{1,64}$")
    higher_is_better: bool = False
    tolerance: float = Field(0.0, ge=0.0)
    evaluate_deadline: float = Field(300.0, gt=0.0)


class PrivacySection(_Section):
    """Client-level differential privacy of the published model (see ``appliance/privacy.py``).

    ``client``: each client clips its update to L2 ``clip`` and adds Gaussian noise so that
    the sum over ``min_survivors`` carries sigma = noise_multiplier·clip (any aggregation mode).
    ``distributed``: the same target, with discrete noise (``mechanism``) on the quantized,
    rotated vector, so the secure sum itself is the DP mechanism (masked modes only).
    """

    mode: Literal["none", "client", "distributed"] = "none"
    mechanism: Literal["discrete_gaussian", "skellam"] = "discrete_gaussian"
    #: z: the summed noise's standard deviation over the L2 sensitivity (covers both
    #: the update and, with adaptive clipping, the clip-indicator count).
    noise_multiplier: float = Field(1.0, gt=0.0)
    #: L2 clip C of the whole update (the starting value when adaptive).
    clip: float = Field(1.0, gt=0.0)
    #: Adaptive clipping (Andrew et al. 2021): C follows this quantile of update norms.
    target_quantile: float | None = Field(None, gt=0.0, lt=1.0)
    clip_learning_rate: float = Field(0.2, gt=0.0)
    #: sigma_b of the noisy below-clip count, in clients (0 = expected round size / 20).
    quantile_noise: float = Field(0.0, ge=0.0)
    delta: float = Field(1e-5, gt=0.0, lt=1.0)
    #: Refuse to open a round whose ε (with it) would exceed this; 0 = no limit.
    target_epsilon: float = Field(0.0, ge=0.0)
    #: Clients that could be sampled; q = round size / population (0 = q is 1, no
    #: amplification by sampling: the conservative choice unless sampling is random).
    population: int = Field(0, ge=0)
    #: Noise is sized for a sum over this many clients (0 = the round's protocol minimum).
    min_survivors: int = Field(0, ge=0)
    accountant: Literal["rdp", "pld"] = "rdp"
    #: Distributed mode: bits the sum's ±4sigma range spans (32 - this = headroom before wrap).
    range_bits: int = Field(20, ge=8, le=28)


class ScaleSection(_Section):
    """``[scale]``: masked rounds summed by Ray stripe actors (``sealagg[scale]``, issue 22).

    Present (and ``enabled``), ``sealagg serve`` starts or joins a Ray cluster
    (``appliance/scale/runtime.py``) and every secagg / secagg+ round's sum is held by
    ``stripes`` actors, one coordinate range each; the protocol and the clients are
    unchanged. Absent, Ray is never imported. ``stripes``: a count (equal ranges) or
    relative weights (unequal ranges, e.g. ``[3, 1]``). ``address``: unset starts a local
    hardened cluster of one head and ``workers`` worker nodes on this machine; set, joins
    that existing cluster (``host:port`` of its GCS; its token comes from ``RAY_AUTH_TOKEN``
    in the appliance's environment, never from this file, and its worker nodes must offer
    the ``stripe_slot`` resource).
    """

    enabled: bool = True
    stripes: int | tuple[float, ...] = 2
    workers: int = Field(2, ge=1, le=64)
    address: str | None = None
    #: Coordinates per chunk forwarded to a stripe (4 bytes each): an upload streams to the
    #: stripes in pieces of this size.
    chunk_words: int = Field(1 << 18, ge=16, le=1 << 24)
    #: Object store of each node of the local cluster, MiB.
    object_store_mib: int = Field(80, ge=64, le=1 << 20)
    #: Seconds a call to a stripe may take before the stripe counts as lost (round aborted).
    call_timeout: float = Field(120.0, gt=0.0, le=3600.0)

    @field_validator("stripes")
    @classmethod
    def _stripes_are_counts_or_weights(cls, value: int | tuple[float, ...]):
        if isinstance(value, int):
            if not 1 <= value <= 64:
                raise ValueError(f"stripes = {value}: a count from 1 to 64 (or a list of weights)")
        elif not 1 <= len(value) <= 64 or not all(w > 0 for w in value):
            raise ValueError("stripes: 1 to 64 positive weights, one per stripe")
        return value

    @field_validator("address")
    @classmethod
    def _address_is_host_port(cls, value: str | None) -> str | None:
        return None if value is None else check_listen_address(value)

    @property
    def weights(self) -> tuple[float, ...]:
        """One relative weight per stripe."""
        if isinstance(self.stripes, int):
            return (1.0,) * self.stripes
        return tuple(float(w) for w in self.stripes)


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class ConsoleSection(_Section):
    """The web console (issue 24, ``appliance/console/``): HTTPS on its own address, served by
    the appliance process beside gRPC. Off by default; loopback unless configured.

    ``anonymous_read``: visitors without an admin identity may look at the pages (never the
    audit log's entries, never an action). Unset, it is on for a loopback host and off
    otherwise; it is refused for a non-loopback host, where anyone on the network could read
    the federation's roster and rounds.
    """

    enabled: bool = False
    host: str = "127.0.0.1"
    #: 0 picks a free port; the address actually bound is logged and shown by ``serve``.
    port: int = Field(0, ge=0, le=65535)
    anonymous_read: bool | None = None
    session_minutes: float = Field(30.0, gt=0.0, le=24 * 60)
    token_seconds: float = Field(120.0, gt=0.0, le=3600.0)

    @field_validator("host")
    @classmethod
    def _host_is_a_host(cls, value: str) -> str:
        bracketed = f"[{value}]" if ":" in value and not value.startswith("[") else value
        check_listen_address(f"{bracketed}:1")
        return value

    @model_validator(mode="after")
    def _anonymous_only_on_loopback(self) -> ConsoleSection:
        if self.anonymous_read and not is_loopback_host(self.host):
            raise ValueError(
                f"anonymous_read = true with host = {self.host!r}: anyone who can reach that "
                "address could read the federation's roster, rounds and approvals; set "
                "anonymous_read = false (admins sign in) or bind the console to loopback"
            )
        return self

    @property
    def anonymous(self) -> bool:
        """The effective read-only policy (unset: on for loopback only)."""
        if self.anonymous_read is None:
            return is_loopback_host(self.host)
        return self.anonymous_read


class ApplianceConfig(_Section):
    """The whole file; ``weights`` maps a client name to its contribution weight in (0, 1]."""

    federation: FederationSection
    server: ServerSection = ServerSection()
    aggregation: AggregationSection = AggregationSection()
    deadlines: DeadlinesSection = DeadlinesSection()
    presence: PresenceSection = PresenceSection()
    uploads: UploadsSection = UploadsSection()
    optimizer: OptimizerSection = OptimizerSection()
    gates: GatesSection = GatesSection()
    privacy: PrivacySection = PrivacySection()
    ckks: CkksSection = CkksSection()
    attestation: AttestationSection = AttestationSection()
    policy: PolicySection = PolicySection()
    console: ConsoleSection = ConsoleSection()
    #: ``[scale]`` (issue 22): absent = the one-process appliance, Ray never imported.
    scale: ScaleSection | None = None
    weights: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _clients_would_accept(self) -> ApplianceConfig:
        """Refuse what the clients would refuse: the same crypto check, at min_clients."""
        try:
            policy = self.federation_policy()
        except (TypeError, ValueError) as error:
            raise ValueError(f"policy: {error}") from None
        try:
            self._check_policy(policy)
        except InfeasibleParametersError as error:
            raise ValueError(
                f"the clients' policy would refuse this configuration: {error}"
            ) from None
        return self

    def _check_policy(self, policy: FederationPolicy) -> None:
        agg = self.aggregation
        check_round_against_policy(policy, agg.mode, agg.min_clients, None, 2, agg.min_clients)
        if agg.mode in ("secagg", "secagg+") and agg.rule == "mean":
            n = agg.min_clients
            degree, threshold, _ = choose_graph(
                n,
                agg.mode,
                agg.dropout_rate,
                agg.corrupt_fraction,
                colluders=policy.colluders,
                minimum_sum=policy.minimum_sum,
            )
            quorum = default_minimum_survivors(n, threshold, policy.colluders)
            check_round_against_policy(
                policy, agg.mode, n, degree, threshold, max(quorum, policy.minimum_sum)
            )

    def federation_policy(self) -> FederationPolicy:
        """The policy the clients enforce (written into their kits)."""
        return self.policy.federation_policy(self.aggregation.mode)

    @model_validator(mode="after")
    def _weights_in_range(self) -> ApplianceConfig:
        for name, weight in self.weights.items():
            if not 0.0 < weight <= 1.0:
                raise ValueError(f"weights.{name} = {weight}: a contribution weight lies in (0, 1]")
        if self.privacy.mode != "none" and self.aggregation.mode not in (
            "plaintext",
            "attested",
            "secagg",
            "secagg+",
        ):
            raise ValueError(f"privacy is not available in {self.aggregation.mode} mode yet")
        if self.privacy.mode == "distributed" and self.aggregation.mode in (
            "plaintext",
            "attested",
        ):
            raise ValueError(
                "privacy.mode = distributed needs a masked aggregation mode (secagg, secagg+): "
                "in plaintext the appliance would see each client's small noise share"
            )
        return self

    @model_validator(mode="after")
    def _attested_needs_attester(self) -> ApplianceConfig:
        if self.aggregation.mode == "attested" and self.attestation.provider == "none":
            raise ValueError(
                "aggregation.mode = attested needs [attestation] provider (software for "
                "development; sev-snp, tdx or configfs-tsm in a confidential VM)"
            )
        return self

    @model_validator(mode="after")
    def _groups_supported(self) -> ApplianceConfig:
        """``max_group_size`` (appliance/grouped_round.py): refuse at load what grouped rounds
        cannot run, each with the reason."""
        agg = self.aggregation
        if agg.max_group_size == 0:
            return self
        if agg.mode not in ("secagg", "secagg+") or agg.rule != "mean":
            raise ValueError(
                "aggregation.max_group_size splits secagg/secagg+ rounds with rule = mean only "
                f"(this is {agg.mode} with rule = {agg.rule}; robust rules use bucket_size)"
            )
        floor = max(self.policy.minimum_sum, MIN_MASKED_PARTIES)
        if agg.max_group_size < floor:
            raise ValueError(
                f"aggregation.max_group_size = {agg.max_group_size} is below the policy's "
                f"minimum_sum {floor}: the appliance sees every group's sum"
            )
        if self.privacy.mode != "none":
            raise ValueError(
                "aggregation.max_group_size with [privacy] is not supported: each group's sum "
                "would carry only its members' noise, less than the round's noise promises"
            )
        return self

    @model_validator(mode="after")
    def _scale_supports_this(self) -> ApplianceConfig:
        """Refuse what striped rounds cannot run yet, at load rather than at the first round."""
        if not self.scale_enabled:
            return self
        agg = self.aggregation
        if agg.mode not in ("secagg", "secagg+", "plaintext", "attested"):
            raise ValueError(
                "[scale] runs secagg, secagg+, plaintext and attested rounds, not "
                f"aggregation.mode = {agg.mode}"
            )
        if agg.mode == "attested" and self.scale is not None and self.scale.address is not None:
            # Clients send plaintext to the attested machine only; a stripe on another Ray node
            # would see its range outside that attestation (appliance/scale/plain_round.py).
            raise ValueError(
                "[scale] address with aggregation.mode = attested is refused: stripes on other "
                "machines would see clients' plaintext outside the attested appliance; remove "
                "address (a local cluster runs inside the attested machine) or [scale]"
            )
        # privacy.mode client / distributed run as in one process: the noise is in the
        # clients' encodings and the appliance decodes the assembled ring sum (post-processing,
        # appliance/scale/masked_round.py); _weights_in_range refuses modes masked rounds refuse.
        if agg.rule != "mean" and agg.mode in ("secagg", "secagg+"):
            raise ValueError(
                f"[scale] with aggregation.rule = {agg.rule} in {agg.mode} is not supported yet: "
                "bucketed robust rounds are not striped; use rule = mean, plaintext or attested "
                "mode, or remove [scale]"
            )
        if agg.rule != "mean" and self.privacy.mode != "none":
            raise ValueError(
                f"[scale] with aggregation.rule = {agg.rule} and [privacy] is refused: robust "
                "rules are not combined with DP (as without [scale])"
            )
        return self

    @property
    def scale_enabled(self) -> bool:
        """Whether rounds run on Ray stripes (a ``[scale]`` section with ``enabled``)."""
        return self.scale is not None and self.scale.enabled

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
