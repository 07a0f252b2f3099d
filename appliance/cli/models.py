"""``sealagg model import|list|show|export|rollback``, ``sealagg export``, ``sealagg rollback``.

Models enter and leave as safetensors (a JSON header and raw tensor bytes: no pickle), the
only export format: the appliance never imports torch (a client converts, where torch is).
"""

import contextlib
import enum
import json
import os
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from sealagg.appliance.cli._common import (
    DEFAULT_FOLDER,
    CLIError,
    FolderOption,
    check_federation,
    console,
    open_state_readonly,
    open_state_writable,
    short_time,
    state_exists,
    styled,
)

#: safetensors refuses headers above 100 MB; so do we, before reading one.
MAX_HEADER_BYTES = 100 * 1024 * 1024
FLOAT_DTYPES = {"F16": "float16", "F32": "float32", "F64": "float64"}

model_app = typer.Typer(help="Model versions: import a base model, list, show, export, roll back.")


class ExportFormat(enum.StrEnum):
    """The export formats: safetensors only (anything else is refused by the option's choice)."""

    safetensors = "safetensors"


def _read_header(path: Path) -> dict[str, Any]:
    """The safetensors JSON header, or CLIError saying the file is not safetensors."""
    not_safetensors = f"{path} is not a safetensors file"
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CLIError(f"{not_safetensors} (too short)")
            length = int.from_bytes(prefix, "little")
            if not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
                raise CLIError(f"{not_safetensors} (no valid header; a PyTorch .pt/.bin file?)")
            header = json.loads(handle.read(length).decode("utf-8"))
    except FileNotFoundError:
        raise CLIError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise CLIError(f"{path} is a folder, not a safetensors file") from None
    except (UnicodeDecodeError, ValueError):
        raise CLIError(f"{not_safetensors} (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise CLIError(f"{not_safetensors} (its header is not a JSON object)")
    return header


def _load_float_tensors(path: Path) -> dict[str, np.ndarray]:
    """Tensors of a safetensors file, refusing anything but float16/32/64 tensors."""
    import safetensors.numpy

    header = _read_header(path)
    tensors = {name: info for name, info in header.items() if name != "__metadata__"}
    if not tensors:
        raise CLIError(f"{path} holds no tensors")
    for name, info in sorted(tensors.items()):
        dtype = info.get("dtype") if isinstance(info, dict) else None
        if not isinstance(dtype, str) or dtype not in FLOAT_DTYPES:  # a list is unhashable
            hint = " (convert bfloat16 to float32 first)" if dtype == "BF16" else ""
            raise CLIError(
                f"{path}: tensor {name!r} has dtype {dtype}: only float16/32/64 tensors are "
                f"aggregated; drop integer buffers (e.g. num_batches_tracked) from the state "
                f"dict{hint}"
            )
    try:
        loaded = safetensors.numpy.load_file(str(path))
    except Exception as error:  # the parser's error types vary between versions
        raise CLIError(f"{path} is not a valid safetensors file: {error}") from None
    for name, array in loaded.items():
        if array.dtype.kind != "f":  # cannot happen after the header check; belt and braces
            raise CLIError(f"{path}: tensor {name!r} has dtype {array.dtype}, not float")
    return loaded


def import_model(
    file: Annotated[Path, typer.Argument(help="Base model weights (.safetensors).")],
    folder: FolderOption = DEFAULT_FOLDER,
) -> None:
    """Register a base model version (accepted, no parent): rounds start from it."""
    from sealagg.appliance.models import validate_tensors

    check_federation(folder)
    tensors = _load_float_tensors(file)
    try:
        tensors = validate_tensors(tensors)
    except (TypeError, ValueError) as error:
        raise CLIError(f"{file}: {error}") from None
    store = open_state_writable(folder)
    try:
        known = {m.sha256: m.version for m in store.model_versions()}
        model = store.add_model_version(tensors, parent=None, status="accepted")
    finally:
        store.close()
    parameters = sum(int(a.size) for a in tensors.values())
    console.print(
        f"[green]imported[/] {escape(str(file))} as model version [bold]{model.version}[/] "
        f"(base model, accepted): {len(tensors)} tensors, {parameters:,} parameters",
        soft_wrap=True,
    )
    console.print(f"  sha256 {model.sha256}", soft_wrap=True)
    if model.sha256 in known:
        console.print(
            f"  [yellow]note:[/] the same weights are already version {known[model.sha256]}",
            soft_wrap=True,
        )
    console.print("  it is now the current model: the next round trains from it", soft_wrap=True)


def list_models(folder: FolderOption = DEFAULT_FOLDER) -> None:
    """List model versions."""
    check_federation(folder)
    if not state_exists(folder):
        console.print("no model versions yet (import one with `sealagg model import FILE`)")
        return
    store = open_state_readonly(folder)
    try:
        models = store.model_versions()
        current = store.current_model()
    finally:
        store.close()
    if not models:
        console.print("no model versions yet (import one with `sealagg model import FILE`)")
        return
    table = Table(title="model versions")
    for column in ("version", "parent", "round", "status", "created", "sha256", "metrics"):
        table.add_column(column)
    for m in models:
        mark = " [bold](current)[/]" if current is not None and m.version == current.version else ""
        table.add_row(
            str(m.version),
            "-" if m.parent is None else str(m.parent),
            "-" if m.round is None else str(m.round),
            styled(m.status) + mark,
            short_time(m.created_at),
            m.sha256[:16],
            _metrics_brief(m.metrics),
        )
    console.print(table)


#: Shown first in `model list` (the rest are in `model show`).
_BRIEF_METRICS = ("eer", "hter", "accuracy", "fpr", "fnr")


def _metrics_brief(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return "-"
    keys = [k for k in _BRIEF_METRICS if k in metrics] or sorted(metrics)[:3]
    return escape(" ".join(f"{k}={_number(metrics[k])}" for k in keys))


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def show_model(
    version: Annotated[int, typer.Argument(help="Model version number.", min=1)],
    folder: FolderOption = DEFAULT_FOLDER,
) -> None:
    """Show one model version: lineage, status, file, every recorded metric."""
    from sealagg.appliance.errors import StoreError

    store = open_state_readonly(folder)
    try:
        try:
            model = store.model_version(version)
        except StoreError as error:
            raise CLIError(str(error)) from None
        current = store.current_model()
        restored = [
            m.version for m in store.model_versions() if m.sha256 == model.sha256 and m is not model
        ]
    finally:
        store.close()
    mark = " (current)" if current is not None and current.version == model.version else ""
    console.print(f"model version [bold]{model.version}[/]{mark}", soft_wrap=True)
    parent = "-" if model.parent is None else str(model.parent)
    origin = (
        "base model"
        if model.parent is None
        else (f"round {model.round}" if model.round is not None else f"restored from {parent}")
    )
    console.print(f"  status   {styled(model.status)}", soft_wrap=True)
    console.print(f"  parent   {parent} ({origin})", soft_wrap=True)
    console.print(f"  created  {short_time(model.created_at)}", soft_wrap=True)
    console.print(f"  sha256   {model.sha256}", soft_wrap=True)
    same = [v for v in restored if v != model.version]
    if same:
        console.print(f"  same weights as version(s) {', '.join(map(str, same))}", soft_wrap=True)
    if not model.metrics:
        console.print("  metrics  none recorded", soft_wrap=True)
        return
    console.print("  metrics", soft_wrap=True)
    for key in sorted(model.metrics):
        console.print(f"    {escape(key)} = {_number(model.metrics[key])}", soft_wrap=True)


def rollback_model(
    version: Annotated[int, typer.Argument(help="An earlier accepted version.", min=1)],
    folder: FolderOption = DEFAULT_FOLDER,
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the audit log).")] = "",
) -> None:
    """Make an earlier accepted version current again (a new version, same weights; audited)."""
    import getpass

    from sealagg.appliance.errors import StoreError
    from sealagg.appliance.versions import rollback

    store = open_state_writable(folder)
    try:
        try:
            restored = rollback(store, version, by=getpass.getuser(), reason=reason)
        except StoreError as error:
            raise CLIError(str(error)) from None
    finally:
        store.close()
    console.print(
        f"[green]rolled back:[/] version {version}'s weights are current again as version "
        f"[bold]{restored.version}[/] (sha256 {restored.sha256[:16]}); the next round trains "
        "from it",
        soft_wrap=True,
    )


def _write_atomically(path: Path, write: Any, *, force: bool) -> None:
    """Call ``write(tmp_path)``, then move the result to ``path`` (never half a file)."""
    if (path.exists() or path.is_symlink()) and not force:
        raise CLIError(f"{path} already exists (add --force to replace it)")
    if path.is_dir():
        raise CLIError(f"{path} is a folder; give a file name")
    if not path.parent.is_dir():
        raise CLIError(f"the folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def export_model(
    version: Annotated[str, typer.Argument(help="Model version number, or 'current'.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write.")],
    folder: FolderOption = DEFAULT_FOLDER,
    format: Annotated[
        ExportFormat, typer.Option("--format", help="safetensors (the only format).")
    ] = ExportFormat.safetensors,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
) -> None:
    """Write a model version to a file, as safetensors, byte for byte as stored."""
    from sealagg.appliance.admin_ops import stored_model

    if version == "current":
        number = 0
    else:
        try:
            number = int(version)
        except ValueError:
            raise CLIError(f"{version!r} is not a model version (a number or 'current')") from None
        if number < 1:
            raise CLIError(f"{version!r} is not a model version (they count from 1)")
    store = open_state_readonly(folder)
    try:  # the bytes the Admin service's ExportModel streams (admin_ops.py)
        model, data = stored_model(store, number)
    except LookupError as error:
        raise CLIError(str(error)) from None
    finally:
        store.close()

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    _write_atomically(out, write, force=force)
    console.print(
        f"[green]exported[/] model version {model.version} ({styled(model.status)}) to "
        f"{escape(str(out))} as {format.value}, sha256 {model.sha256}",
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    model_app.command("import")(import_model)
    model_app.command("list")(list_models)
    model_app.command("export")(export_model)
    model_app.command("show")(show_model)
    model_app.command("rollback")(rollback_model)
    app.add_typer(model_app, name="model")
    app.command("rollback")(rollback_model)
    app.command("export")(export_model)
