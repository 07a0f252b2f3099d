"""What one demo run is: its options, and who vanishes in which round at which phase.

Local training: SGD with momentum 0.9, lr 0.05, batch 16, 5 epochs per round; server
optimizer FedAvg (server lr 1.0). On this split that reached ~96 % after 5 rounds for seeds
0-3 in simulation; FedAdam (lr 0.03) stayed below 90 %, so FedAvg it is.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from sealagg.client_shim.demo.client import PHASES
from sealagg.crypto.config import default_minimum_survivors

MODES = ("plaintext", "secagg", "secagg+", "ckks")
#: The ckks rounds' designated key holder: one extra client process (``[ckks] key_holder``)
#: that takes part in every round but sends no update. It generates the round's CKKS keys,
#: receives the data owners' signed ciphertexts, recomputes their sum and decrypts only that;
#: no data owner holds the secret key (so none can read another's upload).
KEY_HOLDER = "keyholder"
#: The signed policy's c (colluders the consistency check must withstand): it sets the quorum
#: of survivors a masked round of n clients needs.
POLICY_COLLUDERS = 1
#: The Shamir threshold the appliance picks for the demo's small rounds (complete graph).
DEMO_THRESHOLD = 2


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    clients: int = 5
    rounds: int = 5
    mode: str = "secagg+"
    dp: bool = False
    dropout: float = 0.0
    seed: int = 0
    #: The demo folder (must be new or empty; the federation goes to ``federation/`` in it,
    #: logs and data to ``demo/``); None: a temporary folder.
    folder: Path | None = None
    #: Keep a temporary folder afterwards (a given ``folder`` is always kept).
    keep: bool = False
    epochs: int = 5
    lr: float = 0.05
    momentum: float = 0.9
    batch_size: int = 16
    alpha: float = 0.5
    test_fraction: float = 0.25
    dp_clip: float = 3.0
    dp_noise: float = 0.05
    optimizer: str = "fedavg"
    server_lr: float = 1.0
    #: Who vanishes when: {round: {client name: phase}}; None derives it from ``dropout``.
    vanish_plan: dict[int, dict[str, int]] | None = None
    #: Give up (and fail) after this many seconds.
    timeout: float = 600.0
    #: Serve the appliance's web console (``[console]``) and print its address and a login.
    console: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.clients < 3:
            raise ValueError("the demo needs at least 3 clients (masking hides nothing below)")
        if self.rounds < 1 or self.epochs < 1:
            raise ValueError("rounds and epochs must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout is a fraction in [0, 1)")

    @property
    def client_names(self) -> list[str]:
        return [f"client{i}" for i in range(self.clients)]

    @property
    def key_holder(self) -> str | None:
        """The key holder's client name in mode ckks; None in the other modes."""
        return KEY_HOLDER if self.mode == "ckks" else None

    @property
    def process_names(self) -> list[str]:
        """Every client process: the data owners, then the key holder (mode ckks only)."""
        return self.client_names + ([self.key_holder] if self.key_holder else [])

    @property
    def phase_count(self) -> int:
        return 1 if self.mode == "plaintext" else len(PHASES)

    def phase_name(self, phase: int) -> str:
        return "update" if self.mode == "plaintext" else PHASES[phase]

    def minimum_survivors(self, members: int | None = None) -> int:
        """Fewest clients that must finish a round of ``members`` (default: every client)
        for it to publish: the consistency check's quorum under the policy's c."""
        n = self.clients if members is None else members
        if self.mode == "plaintext":
            return 1
        quorum = default_minimum_survivors(n, DEMO_THRESHOLD, POLICY_COLLUDERS)
        return max(3, n // 2 + 1, quorum)

    def vanishers_per_round(self) -> int:
        if self.dropout <= 0:
            return 0
        return max(1, round(self.dropout * self.clients))

    def plan(self) -> dict[int, dict[str, int]]:
        """{round: {client: phase}}: who vanishes in which round, at which protocol phase."""
        if self.vanish_plan is not None:
            return {r: dict(v) for r, v in self.vanish_plan.items()}
        m = self.vanishers_per_round()
        if m == 0:
            return {}
        most = self.clients - self.minimum_survivors()
        if m > most:
            raise ValueError(
                f"--dropout {self.dropout:g} makes {m} of {self.clients} clients vanish per "
                f"round, but a {self.mode} round needs {self.minimum_survivors()} to finish: "
                f"at most {most} may vanish (lower --dropout or add --clients)"
            )
        rng = np.random.default_rng([self.seed, 0xD120])
        names = self.client_names
        plan: dict[int, dict[str, int]] = {}
        previous: set[str] = set()
        for r in range(1, self.rounds + 1):
            # Prefer clients that did not just vanish: they may still be starting again.
            fresh = [n for n in names if n not in previous]
            pool = fresh if len(fresh) >= m else names
            chosen = rng.choice(pool, size=m, replace=False)
            plan[r] = {str(n): int(rng.integers(self.phase_count)) for n in chosen}
            previous = set(plan[r])
        return plan

    def min_clients(self) -> int:
        """A round opens once this many clients are ready (plus the key holder in mode ckks,
        which must be there and never vanishes): the fewest that still finish when every
        planned vanisher is among them. Vanished clients are noticed at once and restarted,
        so a round does not wait for the restarts unless it needs them to finish."""
        vanishers = self.vanishers_per_round()
        owners = max(3, self.clients - vanishers)
        while owners < self.clients and owners - vanishers < self.minimum_survivors(owners):
            owners += 1
        return owners + (1 if self.key_holder else 0)

    def max_clients(self) -> int:
        """Every client process, the key holder included."""
        return len(self.process_names)
