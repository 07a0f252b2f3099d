"""The report after a demo run: every global model's accuracy, the bytes each client sent,
the final accuracy next to centralized training, masking, DP, dropouts and the audit check."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table

from sealagg.client_shim.demo.results import DemoResult


def _pct(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f} %"


_SHORT_PHASES = {
    "advertise_keys": "advertise",
    "share_keys": "share",
    "masked_input": "masked",
    "consistency_check": "consistency",
    "unmasking": "unmask",
    "update": "update",
}


def _describe_masking(masking: dict[int, dict[str, Any]], mode: str) -> str:
    """One phrase per distinct graph/threshold, with the rounds that used it."""
    groups: dict[tuple[int, int, int], list[int]] = {}
    for number, p in sorted(masking.items()):
        key = (int(p.get("degree", 0)), int(p.get("threshold", 0)), int(p.get("n", 0)))
        groups.setdefault(key, []).append(number)
    parts = []
    for (degree, threshold, n), numbers in groups.items():
        graph = "complete graph" if degree == 0 else f"Harary graph of degree {degree}"
        parts.append(
            f"{graph} over {n} clients, Shamir threshold t={threshold} "
            f"(round{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))})"
        )
    text = "; ".join(parts)
    if mode == "secagg+" and any(
        str(p.get("note", "")).startswith("finder targets unreachable") for p in masking.values()
    ):
        text += (
            ". The SecAgg+ parameter finder's targets need more clients than this demo has, "
            "so the appliance used the complete graph (as in SecAgg), as audited"
        )
    return text


def render_report(result: DemoResult, console: Console) -> None:
    """Print the tables and the summary lines, problems last."""
    config = result.config
    rounds = Table(title="global models (test accuracy on the held-out 25 %)", title_justify="left")
    rounds.add_column("round", justify="right")
    rounds.add_column("outcome")
    rounds.add_column("model", justify="right")
    rounds.add_column("accuracy", justify="right")
    rounds.add_column("contributors", justify="right")
    rounds.add_column("dropped / late")
    rounds.add_column("seconds", justify="right")
    rounds.add_row("0", "base model", "1", _pct(result.base_accuracy), "", "", "")
    for r in result.rounds:
        late = "; ".join(f"{phase}: {', '.join(names)}" for phase, names in r.late.items())
        rounds.add_row(
            str(r.number),
            "published" if r.status == "accepted" else f"{r.status} {r.reason or ''}",
            "-" if r.model_version is None else str(r.model_version),
            _pct(r.accuracy),
            str(len(r.contributors)) if r.contributors else "-",
            escape(late) if late else "-",
            "-" if r.seconds is None else f"{r.seconds:.1f}",
        )
    sent = Table(
        title="bytes sent per client per round (KiB; ✗ phase: vanished before sending it)",
        title_justify="left",
    )
    sent.add_column("client")
    sent.add_column("examples", justify="right")
    numbers = list(range(1, config.rounds + 1))
    for n in numbers:
        sent.add_column(f"r{n}", justify="right")
    for name, per_round in result.bytes_sent.items():
        cells = []
        for n in numbers:
            value = per_round.get(n, "absent")
            vanished = next((p for c, r, p in result.vanished if c == name and r == n), None)
            if vanished is not None:
                cells.append(f"✗ {_SHORT_PHASES.get(vanished, vanished)}")
            elif value == "absent":
                cells.append("-")
            else:
                cells.append(f"{(value or 0) / 1024:.1f}")
        if name == config.key_holder:  # sends keys and the decrypted sum, never an update
            sent.add_row(f"{name} (key holder)", "-", *cells)
        else:
            sent.add_row(name, str(result.shard_sizes.get(name, "")), *cells)
    console.print(Group(rounds, sent))
    gap = None
    if result.final_accuracy is not None and result.centralized_accuracy is not None:
        gap = 100 * (result.centralized_accuracy - result.final_accuracy)
    console.print(
        f"final accuracy ({escape(config.mode)}): [bold]{_pct(result.final_accuracy)}[/]   "
        f"centralized (same model, {config.rounds * config.epochs} epochs on all training data): "
        f"{_pct(result.centralized_accuracy)}"
        + (f"   gap {gap:+.1f} points" if gap is not None else "")
    )
    if result.masking and config.mode != "ckks":  # ckks rounds have no graph or threshold
        console.print(f"masking: {escape(_describe_masking(result.masking, config.mode))}")
    if config.dp:
        eps = "-" if result.epsilon is None else f"{result.epsilon:.3g}"
        console.print(
            f"client-level DP: L2 clip {config.dp_clip:g}, noise multiplier {config.dp_noise:g}; "
            f"ε per client = {eps} at δ=1e-5 after its last release (RDP). With this few "
            "clients the noise that keeps the model useful gives no meaningful ε."
        )
    if result.vanished:
        console.print(
            f"dropouts: {len(result.vanished)} client process(es) vanished mid-protocol "
            f"({', '.join(f'{c} in round {r} at {p}' for c, r, p in result.vanished)})"
        )
    audit = "[green]OK[/]" if result.audit_ok else "[red]FAILED[/]"
    console.print(f"audit verify: {audit}  [dim]{escape(result.audit_detail)}[/]")
    console.print(
        f"wall time: {result.seconds:.1f} s (federation {result.federation_seconds:.1f} s)"
    )
    if result.folder is not None:
        console.print(
            f"demo folder kept: {result.folder} (the federation is in federation/, for "
            "`sealagg ... --folder`; logs, data and exported models in demo/)",
            soft_wrap=True,
        )
    for problem in result.problems:
        console.print(f"[red]problem:[/] {escape(problem)}", soft_wrap=True)
