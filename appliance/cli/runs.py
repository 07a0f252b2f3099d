"""``sealagg runs list|create|start|pause|resume|stop|show`` and ``sealagg evaluate``.

Every command talks to the running appliance over mutual TLS with the administrator kit
(Admin.CreateRun / ControlRun / ListRuns / Evaluate); each change is audited there with the
administrator's name. At most one run runs at a time; a created run waits until started.
"""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from sealagg.appliance.cli._admin import (
    AddressOption,
    AdminClient,
    InsecureOption,
    KitOption,
    TimeoutOption,
)
from sealagg.appliance.cli._common import (
    DEFAULT_FOLDER,
    CLIError,
    FolderOption,
    console,
    err_console,
    short_time,
    styled,
)

runs_app = typer.Typer(help="Runs: create, start, pause, resume, stop, list.", no_args_is_help=True)

RunArgument = Annotated[str, typer.Argument(help="Run id (see `sealagg runs list`).")]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why (kept in the audit log).")]


def _client(
    folder: Path, kit: Path | None, address: str | None, timeout: float, insecure: bool
) -> AdminClient:
    return AdminClient(folder, kit_path=kit, address=address, timeout=timeout, insecure=insecure)


def _finish(ok: bool, detail: str, run: dict[str, Any] | None, as_json: bool = False) -> None:
    if not ok:
        err_console.print(f"[bold red]refused:[/] {escape(detail)}", soft_wrap=True)
        raise typer.Exit(1)
    if as_json and run is not None:
        typer.echo(json.dumps(run, indent=2, sort_keys=True))
        return
    console.print(f"[green]ok:[/] {escape(detail)}", soft_wrap=True)


def _hyperparameters(text: str | None, path: Path | None) -> str:
    if text is not None and path is not None:
        raise typer.BadParameter("give --hyperparameters or --hyperparameters-file, not both")
    if path is not None:
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise CLIError(f"cannot read {path}: {error}") from None
    return text or ""


@runs_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="A label for the run.")],
    rounds: Annotated[int, typer.Option("--rounds", min=0, help="Round budget (0 = none).")] = 0,
    mode: Annotated[
        str, typer.Option("--mode", help="Aggregation mode (default: the configured one).")
    ] = "",
    hyperparameters: Annotated[
        str | None,
        typer.Option("--hyperparameters", help='JSON object sent with every round: {"lr": 0.05}'),
    ] = None,
    hyperparameters_file: Annotated[
        Path | None, typer.Option("--hyperparameters-file", help="The same, from a JSON file.")
    ] = None,
    base: Annotated[
        int, typer.Option("--base", min=0, help="Accepted model version to start from (0: now).")
    ] = 0,
    start: Annotated[bool, typer.Option("--start", help="Start it at once.")] = False,
    schedule: Annotated[
        str,
        typer.Option(
            "--schedule",
            help="sync (rounds, the default) or async (buffered asynchronous aggregation).",
        ),
    ] = "",
    async_json: Annotated[
        str,
        typer.Option(
            "--async-json",
            help='Async parameters as a JSON object: {"buffer_size": 5, "max_staleness": 4, '
            '"staleness": "polynomial", "a": 0.5, "max_open_buffers": 2}',
        ),
    ] = "",
    folder: FolderOption = DEFAULT_FOLDER,
    address: AddressOption = None,
    kit: KitOption = None,
    timeout: TimeoutOption = 10.0,
    insecure: InsecureOption = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run as JSON.")] = False,
) -> None:
    """Create a run (it waits, queued, until `sealagg runs start ID` unless --start)."""
    text = _hyperparameters(hyperparameters, hyperparameters_file)
    with _client(folder, kit, address, timeout, insecure) as client:
        ok, detail, run = client.create_run(
            name=name,
            mode=mode,
            rounds=rounds,
            hyperparameters_json=text,
            base_model_version=base,
            start=start,
            schedule=schedule,
            async_json=async_json,
        )
    _finish(ok, detail, run, as_json)


def _control(action: str) -> Callable[..., None]:
    def command(
        run_id: RunArgument,
        reason: ReasonOption = "",
        folder: FolderOption = DEFAULT_FOLDER,
        address: AddressOption = None,
        kit: KitOption = None,
        timeout: TimeoutOption = 10.0,
        insecure: InsecureOption = False,
    ) -> None:
        with _client(folder, kit, address, timeout, insecure) as client:
            ok, detail, run = client.control_run(run_id, action, reason)
        _finish(ok, detail, run)

    command.__doc__ = {
        "start": "Start a created run (at most one run runs at a time).",
        "pause": "Pause a run: no new round opens; the round in flight finishes.",
        "resume": "Resume a paused run.",
        "stop": "Stop a run for good: no new round; every client is told the run ended.",
    }[action]
    return command


for _action in ("start", "pause", "resume", "stop"):
    runs_app.command(_action)(_control(_action))


def _table(runs: list[dict[str, Any]]) -> Table:
    table = Table(title="runs")
    for column in ("id", "name", "mode", "status", "rounds", "created", "by", "reason"):
        table.add_column(column, overflow="fold")
    for run in runs:
        budget = run.get("rounds") or 0
        done = run.get("rounds_done", 0)
        table.add_row(
            escape(str(run.get("id"))),
            escape(str(run.get("name"))),
            escape(str(run.get("mode"))),
            styled(str(run.get("status"))),
            f"{done}/{budget}" if budget else f"{done}/∞",
            short_time(run.get("created_at")),
            escape(str(run.get("created_by"))),
            escape(str(run.get("reason") or "")),
        )
    return table


@runs_app.command("list")
def list_command(
    folder: FolderOption = DEFAULT_FOLDER,
    address: AddressOption = None,
    kit: KitOption = None,
    timeout: TimeoutOption = 10.0,
    insecure: InsecureOption = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the runs as JSON.")] = False,
) -> None:
    """List the federation's runs."""
    with _client(folder, kit, address, timeout, insecure) as client:
        runs = client.list_runs()
    if as_json:
        typer.echo(json.dumps(runs, indent=2, sort_keys=True))
    elif not runs:
        console.print("no runs yet")
    else:
        console.print(_table(runs))


@runs_app.command("show")
def show(
    run_id: RunArgument,
    folder: FolderOption = DEFAULT_FOLDER,
    address: AddressOption = None,
    kit: KitOption = None,
    timeout: TimeoutOption = 10.0,
    insecure: InsecureOption = False,
) -> None:
    """Show one run, hyperparameters included, as JSON."""
    with _client(folder, kit, address, timeout, insecure) as client:
        runs = [r for r in client.list_runs() if r.get("id") == run_id]
    if not runs:
        raise CLIError(f"there is no run {run_id!r} (see `sealagg runs list`)")
    typer.echo(json.dumps(runs[0], indent=2, sort_keys=True))


def evaluate_command(
    version: Annotated[
        int,
        typer.Option(
            "--version",
            min=0,
            help="Accepted version, or a candidate pending approval (0: the current).",
        ),
    ] = 0,
    run_id: Annotated[str, typer.Option("--run", help="Run (default: the live one).")] = "",
    deadline: Annotated[
        float, typer.Option("--deadline", min=0.0, help="Seconds clients have (0: default).")
    ] = 0.0,
    folder: FolderOption = DEFAULT_FOLDER,
    address: AddressOption = None,
    kit: KitOption = None,
    timeout: TimeoutOption = 10.0,
    insecure: InsecureOption = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Federated evaluation: every ready client evaluates a version on its own data; only
    the mean weighted by example counts is kept (no client's own metrics)."""
    with _client(folder, kit, address, timeout, insecure) as client:
        ok, detail, result = client.evaluate(
            version=version, run_id=run_id, deadline_seconds=deadline
        )
    if as_json and result is not None:
        typer.echo(json.dumps(result, indent=2, sort_keys=True))
        if not ok:
            raise typer.Exit(1)
        return
    if not ok:
        err_console.print(f"[bold red]refused:[/] {escape(detail)}", soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"[green]ok:[/] {escape(detail)}", soft_wrap=True)
    if result and result.get("metrics"):
        table = Table(title=f"weighted mean over {result.get('num_examples')} examples")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for name, value in sorted(result["metrics"].items()):
            table.add_row(escape(str(name)), f"{value:.6g}")
        console.print(table)


def register(app: typer.Typer) -> None:
    """``sealagg runs ...`` and ``sealagg evaluate``."""
    app.add_typer(runs_app, name="runs")
    app.command("evaluate")(evaluate_command)
