"""One demo client process: train on its own data shard, take part in the federation's rounds.

    python -m sealagg.client_shim.demo.client --kit KIT --shard-file SHARD.npz --rounds R \
        --epochs E --seed S --result-file RESULT.jsonl [--dp] [--vanish ROUND:PHASE ...]
    python -m sealagg.client_shim.demo.client --kit KIT --key-holder --rounds R ...

It joins through the PyTorch shim (:func:`client_shim.connect`), exactly as a user's
training loop would, and appends one JSON line per round to ``--result-file`` (outcome,
bytes sent, examples, loss; nothing about the data itself). It leaves after round ``R``.

Vanishing (``--vanish 2:3``, or ``--vanish-probability``): in that round the process trains,
takes part in the protocol up to the given phase (its index in :data:`PHASES`: 0 advertise
keys, 1 reveal coins, 2 share keys, 3 masked input, 4 consistency check, 5 unmasking;
a complete graph has no reveal, so 1 vanishes before sharing keys there; plaintext rounds
have phase 0 only) and then exits
with :data:`VANISHED_EXIT_CODE` instead of sending that phase's message, so the appliance sees
a client disappear mid-protocol. The runner starts it again for the next round.

Key holder (``--key-holder``, mode ckks, named in the appliance's ``[ckks] key_holder``): no
data and no training; it takes part in every round without an update (the shim never asks it
for one): it makes the round's CKKS keys, recomputes the sum of the data owners' signed
ciphertexts and decrypts only that. Its result lines say ``"role": "key_holder"``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sealagg.client_shim.demo import cpu_priority
from sealagg.client_shim.errors import HyperparametersError
from sealagg.crypto import Phase

if TYPE_CHECKING:
    import torch

VANISHED_EXIT_CODE = 17
#: The protocol's phases in order, by name (a ``--vanish`` phase is an index into this).
PHASES = tuple(phase.name.lower() for phase in Phase)
DP_DELTA = 1e-5


def parse_vanish(text: str) -> tuple[int, int]:
    """``ROUND:PHASE`` -> (round, phase)."""
    try:
        round_text, phase_text = text.split(":")
        round_number, phase = int(round_text), int(phase_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--vanish takes ROUND:PHASE, got {text!r}") from None
    if round_number < 1 or not 0 <= phase < len(PHASES):
        raise argparse.ArgumentTypeError(
            f"--vanish {text}: rounds start at 1, phases are 0-{len(PHASES) - 1}"
        )
    return round_number, phase


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sealagg.client_shim.demo.client", description=__doc__
    )
    p.add_argument("--kit", type=Path, required=True, help="this client's kit folder")
    role = p.add_mutually_exclusive_group(required=True)
    role.add_argument("--shard-file", type=Path, help=".npz with x and y")
    role.add_argument(
        "--key-holder",
        action="store_true",
        help="the ckks key holder: no data, sends no update, decrypts the verified sum",
    )
    p.add_argument("--rounds", type=int, required=True, help="leave after this round number")
    p.add_argument("--epochs", type=int, default=5, help="local epochs per round")
    p.add_argument("--lr", type=float, default=0.05, help="local SGD learning rate")
    p.add_argument("--momentum", type=float, default=0.9, help="local SGD momentum")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-examples", type=int, default=10_000, help="examples for full weight")
    p.add_argument("--address", default=None, help="HOST:PORT (default: the kit's address)")
    p.add_argument(
        "--max-downtime",
        type=float,
        default=120.0,
        help="seconds the appliance may be unreachable (at start or mid-run) before giving up",
    )
    p.add_argument("--result-file", type=Path, default=None, help="JSON lines, one per round")
    p.add_argument("--dp", action="store_true", help="client-level DP (clip + Gaussian noise)")
    p.add_argument("--dp-clip", type=float, default=3.0, help="L2 bound of the update")
    p.add_argument("--dp-noise", type=float, default=0.05, help="noise multiplier")
    p.add_argument(
        "--vanish",
        type=parse_vanish,
        action="append",
        default=[],
        metavar="ROUND:PHASE",
        help="vanish in this round at this phase (repeatable)",
    )
    p.add_argument(
        "--vanish-probability",
        type=float,
        default=0.0,
        help="in each round, vanish at a random phase with this probability",
    )
    p.add_argument(
        "--wait-for-go",
        action="store_true",
        help="once connected, create RESULT.ready and wait for a line on stdin before polling",
    )
    p.add_argument(
        "--standby",
        action="store_true",
        help="prepare everything, then wait for a line on stdin BEFORE connecting (a warm "
        "replacement for a process of this client that may vanish)",
    )
    return p


class Vanisher:
    """Makes the process exit instead of sending the message of a chosen phase."""

    def __init__(self, write: Callable[[dict], None]) -> None:
        self.write = write
        self.round_number = 0
        self.phase: int | None = None

    def wrap(self, submit: Callable) -> Callable:
        def submit_or_vanish(header, payload, **kwargs):
            if self.phase is not None and header.phase >= self.phase:
                self.write(
                    {
                        "round": self.round_number,
                        "outcome": "vanished",
                        "phase": PHASES[header.phase] if header.kind == "protocol" else "update",
                    }
                )
                logging.getLogger("sealagg.demo").warning(
                    "vanishing in round %d before phase %d", self.round_number, header.phase
                )
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(VANISHED_EXIT_CODE)
            return submit(header, payload, **kwargs)

        return submit_or_vanish


def dp_epsilon(noise_multiplier: float, rounds: int, delta: float = DP_DELTA) -> float | None:
    """ε of ``rounds`` releases of this client's update (Gaussian mechanism, RDP accounting)."""
    if noise_multiplier <= 0:
        return None
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    for _ in range(rounds):
        accountant.step(noise_multiplier=noise_multiplier, sample_rate=1.0)
    return float(accountant.get_epsilon(delta))


def warm_up(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> None:
    """Pay one-off costs before joining (torch's first backward pass, loading the compiled
    quantization kernels), so that a round's first deadline covers training only."""
    import copy

    from sealagg.client_shim.demo.model import train
    from sealagg.crypto import QuantizationSpec, encode_update

    train(copy.deepcopy(model), x[:16], y[:16], epochs=1)
    encode_update(np.zeros(8, dtype=np.float32), 1.0, QuantizationSpec(clip=1.0, max_clients=3))


#: The demo's bounds on the run's hyperparameters: the appliance chooses them, and a data
#: owner's training loop should not let it make the client train forever or diverge.
MAX_LOCAL_EPOCHS = 50
MAX_LR = 10.0


def _bounded(hyper: dict, key: str, default: float, low: float, high: float) -> Any:
    """``hyper[key]`` (or ``default``) when it lies in [low, high]; refused otherwise."""
    value = hyper.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise HyperparametersError(
            f"the run's {key}={value!r} is outside [{low:g}, {high:g}]; this client refuses it"
        )
    return type(default)(value)


def main(argv: list[str] | None = None) -> int:
    """Run the demo client; a refusal or an unreachable appliance ends it with one line on
    stderr (exit 2), not a traceback: the data owner needs the reason, not the stack."""
    args = build_parser().parse_args(argv)
    from sealagg.appliance.kit import ProvisioningError
    from sealagg.client_shim.errors import ApplianceUnavailableError, ModelMismatchError

    try:
        return _main(args)
    except (
        ApplianceUnavailableError,
        ProvisioningError,
        ModelMismatchError,
        HyperparametersError,
    ) as error:
        print(f"sealagg client {args.kit.name}: {error}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True
    )
    idle = args.standby and cpu_priority.enter_idle()  # warm up without slowing the round
    import grpc
    import torch

    from sealagg import client_shim
    from sealagg.client_shim.demo.data import load_shard
    from sealagg.client_shim.demo.model import DigitsMLP, train
    from sealagg.client_shim.session import RoundRefusedError
    from sealagg.crypto.encoding import warm_up as encoding_warm_up

    torch.set_num_threads(1)  # several clients share a small machine
    model = DigitsMLP()
    name = args.kit.name
    result = args.result_file
    role = {"role": "key_holder"} if args.key_holder else {}

    def write(record: dict) -> None:
        if result is not None:
            with result.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"client": name, "pid": os.getpid(), **role, **record}) + "\n")

    if args.key_holder:  # no shard: the shim never asks the key holder for an update
        x, y = np.zeros((0, 64), dtype=np.float32), np.zeros(0, dtype=np.int64)
    else:
        x, y = load_shard(args.shard_file)
        warm_up(model, x, y)
    dp = client_shim.ClientDP(args.dp_clip, args.dp_noise) if args.dp else None
    if dp is not None:
        dp_epsilon(dp.noise_multiplier, 1)  # opacus takes seconds to import: not in a round
    if args.standby:  # warm, not connected: the process it replaces may still be alive
        encoding_warm_up()  # the masking kernels, loaded now rather than after "go"
        if not sys.stdin.readline():
            return 0  # EOF: the runner went away without needing this standby
        if idle:
            cpu_priority.leave_idle()  # it takes over: a client like the others
    federation = client_shim.connect(
        args.kit,
        address=args.address,
        max_examples=args.max_examples,
        dp=dp,
        poll_seconds=2.0,
        max_downtime=args.max_downtime,
    )
    if args.wait_for_go:  # connected (TLS up): now wait until every client is, then poll
        if result is not None:
            result.with_suffix(".ready").touch()
        sys.stdin.readline()  # EOF (the runner went away) also lets us go on
    vanisher = Vanisher(write)
    federation.connection.submit = vanisher.wrap(federation.connection.submit)
    plan = dict(args.vanish)
    chance = random.Random(f"{args.seed}/{name}/{os.getpid()}")  # noqa: S311 - not crypto
    released = 0
    try:
        for rnd in federation.rounds(model):
            started = time.perf_counter()
            number = rnd.round_number
            vanisher.round_number = number
            vanisher.phase = plan.get(number)
            if vanisher.phase is None and chance.random() < args.vanish_probability:
                vanisher.phase = chance.randrange(len(PHASES))
            if vanisher.phase is not None and rnd.start.mode == "plaintext":
                vanisher.phase = 0
            trained = time.perf_counter()
            loss = 0.0
            if not args.key_holder:
                hyper = rnd.hyperparameters  # the run's settings win over the command line
                loss = train(
                    model,
                    x,
                    y,
                    epochs=_bounded(hyper, "local_epochs", args.epochs, 1, MAX_LOCAL_EPOCHS),
                    lr=_bounded(hyper, "lr", args.lr, 1e-6, MAX_LR),
                    momentum=args.momentum,
                    batch_size=args.batch_size,
                    seed=args.seed * 100_003 + number * 1009 + _client_number(name),
                )
            train_seconds = time.perf_counter() - trained
            epsilon = dp_epsilon(dp.noise_multiplier, released + 1) if dp and len(y) else None
            try:
                report = rnd.submit(  # a key holder's num_examples is never used: no update
                    num_examples=max(1, len(y)),
                    metrics={"train_loss": round(loss, 5)},
                    epsilon=epsilon,
                )
            except (grpc.RpcError, RoundRefusedError) as error:  # the round goes on without us
                detail = error.details() if isinstance(error, grpc.RpcError) else str(error)
                logging.getLogger("sealagg.demo").warning("round %d: %s", number, detail)
                write({"round": number, "outcome": "error", "reason": str(detail)})
                if number >= args.rounds:
                    break
                continue
            released += 1
            write(
                {
                    "round": report.round_number,
                    "outcome": report.outcome,
                    "reason": report.reason,
                    "model_version": report.model_version,
                    "bytes_sent": report.bytes_sent,
                    "num_examples": len(y),
                    "train_loss": loss,
                    "epsilon": epsilon,
                    "train_seconds": round(train_seconds, 3),
                    "seconds": round(time.perf_counter() - started, 3),
                }
            )
            if number >= args.rounds:
                break
    finally:
        federation.close()
    return 0


def _client_number(name: str) -> int:
    digits = "".join(c for c in name if c.isdigit())
    return int(digits) if digits else 0


if __name__ == "__main__":
    sys.exit(main())
