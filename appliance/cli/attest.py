"""``sealagg attest collateral fetch|show``: the vendor-signed collateral bundle.

``fetch`` runs on a machine with Internet access (never the appliance's job, never in
tests): it asks each vendor module for its download plan (``attest/tdx_collateral.py``,
``attest/snp_collateral.py``), downloads every item from Intel's PCS and AMD's KDS, and
writes the files under ``--out`` in the bundle layout (attest/collateral.py). Copy that
folder to ``<federation>/attestation/collateral/``: the appliance sends it with every Attest
reply and kits issued afterwards carry it. Where the bytes travelled adds no trust: every item
is signed by a vendor key chaining to the root the policy pins, and the clients check those
signatures and the items' dates (stale collateral is refused: fetch again before nextUpdate).

``show`` lists a bundle's items with the date each expires (nextUpdate / notAfter).
"""

from __future__ import annotations

import ipaddress
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from sealagg.appliance import pki
from sealagg.appliance.cli._common import CLIError, console

if TYPE_CHECKING:
    from sealagg.attest.collateral import CollateralDownload

app = typer.Typer(help="Attested mode: the vendor collateral bundle.", no_args_is_help=True)
collateral_app = typer.Typer(help="Fetch or inspect a collateral bundle.", no_args_is_help=True)
app.add_typer(collateral_app, name="collateral")

#: One item is a few KiB (a CRL, a TCB info JSON); anything this large is not collateral.
MAX_ITEM_BYTES = 4 * 1024 * 1024
TIMEOUT_SECONDS = 60.0
USER_AGENT = "sealagg-collateral-fetch"

Opener = Callable[..., object]


def plan_for(
    *,
    tdx_fmspc: str | None,
    snp_product: str | None,
    snp_chip_id: str | None,
    snp_tcb: str | None,
) -> list[CollateralDownload]:
    """Every download the vendor modules ask for, for the platforms named."""
    from sealagg.attest import AttestationError  # imported lazily: only this command needs it

    if tdx_fmspc is None and snp_product is None:
        raise CLIError("name a platform: --tdx-fmspc and/or --snp-product")
    if snp_product is None and (snp_chip_id or snp_tcb):
        raise CLIError("--snp-chip-id and --snp-tcb need --snp-product")
    if (snp_chip_id is None) != (snp_tcb is None):
        raise CLIError("--snp-chip-id and --snp-tcb go together (they name one VCEK)")
    plan: list[CollateralDownload] = []
    try:
        if tdx_fmspc is not None:
            from sealagg.attest import tdx_collateral

            plan += tdx_collateral.fetch_plan(tdx_fmspc)
        if snp_product is not None:
            from sealagg.attest import snp_collateral

            plan += snp_collateral.fetch_plan(snp_product, snp_chip_id, snp_tcb)
    except AttestationError as error:
        raise CLIError(f"cannot plan the download: {error}") from None
    return plan


def download(
    plan: Sequence[CollateralDownload],
    *,
    opener: Opener = urllib.request.urlopen,
    timeout: float = TIMEOUT_SECONDS,
) -> dict[str, bytes]:
    """Bundle path -> bytes for every item of ``plan``; each URL is fetched once.

    All or nothing: any failure raises CLIError naming the URL, before a file is written.
    """
    from sealagg.attest.collateral import CollateralBundle

    try:  # the names must stay inside the bundle: checked before anything is fetched
        CollateralBundle({item.path: b"" for item in plan})
    except ValueError as error:
        raise CLIError(f"the download plan names a bad path: {error}") from None
    for item in plan:
        _check_url(item.url)
    responses: dict[str, tuple[bytes, dict[str, str]]] = {}
    files: dict[str, bytes] = {}
    for item in plan:
        if item.url not in responses:
            responses[item.url] = _get(item.url, opener, timeout)
        body, headers = responses[item.url]
        if item.response_header is None:
            files[item.path] = body
            continue
        value = headers.get(item.response_header.lower())
        if value is None:
            raise CLIError(f"{item.url} sent no {item.response_header} header")
        files[item.path] = urllib.parse.unquote(value).encode()
    return files


def _get(url: str, opener: Opener, timeout: float) -> tuple[bytes, dict[str, str]]:
    _check_url(url)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})  # noqa: S310 - scheme checked above
    try:
        with opener(request, timeout=timeout) as response:  # type: ignore[attr-defined]
            body = response.read(MAX_ITEM_BYTES + 1)
            headers = {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as error:
        raise CLIError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise CLIError(f"{url}: {reason}") from None
    if len(body) > MAX_ITEM_BYTES:
        raise CLIError(f"{url}: the response is larger than {MAX_ITEM_BYTES} bytes")
    return body, headers


def _check_url(url: str) -> None:
    """HTTPS, except to this machine (tests serve fake files on loopback)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme != "http" or not loopback:
        raise CLIError(f"refusing to fetch {url}: collateral is fetched over HTTPS")


def write_bundle(files: dict[str, bytes], out: Path) -> list[Path]:
    """Write each item atomically under ``out`` (existing items are replaced)."""
    written = []
    for name, data in sorted(files.items()):
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        pki.write_file_atomic(target, data, mode=pki.PUBLIC_FILE_MODE)
        written.append(target)
    return written


@collateral_app.command("fetch")
def fetch(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Bundle folder to fill; copy it to <federation>/attestation/collateral/.",
        ),
    ],
    tdx_fmspc: Annotated[
        str | None, typer.Option("--tdx-fmspc", help="TDX platform FMSPC (12 hex digits).")
    ] = None,
    snp_product: Annotated[
        str | None, typer.Option("--snp-product", help="AMD product: Milan, Genoa or Turin.")
    ] = None,
    snp_chip_id: Annotated[
        str | None, typer.Option("--snp-chip-id", help="SNP CHIP_ID (128 hex digits): its VCEK.")
    ] = None,
    snp_tcb: Annotated[
        str | None, typer.Option("--snp-tcb", help="SNP REPORTED_TCB (16 hex digits).")
    ] = None,
) -> None:
    """Download Intel PCS / AMD KDS collateral (run on a connected machine)."""
    plan = plan_for(
        tdx_fmspc=tdx_fmspc, snp_product=snp_product, snp_chip_id=snp_chip_id, snp_tcb=snp_tcb
    )
    files = download(plan)
    for path in write_bundle(files, out):
        console.print(f"  {escape(str(path))}", soft_wrap=True)
    console.print(
        f"[green]fetched {len(files)} collateral items[/] into {escape(str(out))}; copy it to "
        "<federation>/attestation/collateral/ and re-issue kits to ship it with them",
        soft_wrap=True,
    )


@collateral_app.command("show")
def show(
    folder: Annotated[Path, typer.Argument(help="A collateral bundle folder.")],
) -> None:
    """List a bundle's items and when each must be refreshed."""
    if not folder.is_dir():
        raise CLIError(f"{folder} is not a folder")
    items = _folder_items(folder)
    if not items:
        console.print("the bundle is empty")
        return
    now = datetime.now(UTC)
    for name, data in items:
        if data is None:  # show lists what the folder holds; the appliance refuses this one
            console.print(f"{escape(name)}  not a bundle item name (skipped)", soft_wrap=True)
            continue
        expiry = expires(name, data)
        note = "-" if expiry is None else expiry.isoformat()
        if expiry is not None and expiry < now:
            note += " [bold red](stale: fetch again)[/]"
        console.print(f"{escape(name)}  {len(data)} B  next update {note}", soft_wrap=True)


def _folder_items(folder: Path) -> list[tuple[str, bytes | None]]:
    """Every file under ``folder`` by bundle name; None for a name a bundle refuses (so
    one odd file in the folder is reported, not a traceback)."""
    from sealagg.attest.collateral import CollateralBundle

    items: list[tuple[str, bytes | None]] = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        name = path.relative_to(folder).as_posix()
        try:
            CollateralBundle({name: b""})
        except ValueError:
            items.append((name, None))
            continue
        items.append((name, path.read_bytes()))
    return items


def expires(name: str, data: bytes) -> datetime | None:
    """When an item stops being valid: nextUpdate of a CRL / TCB info / QE identity, or the
    earliest notAfter of a certificate chain. None if the item says nothing we can read."""
    from cryptography import x509

    try:
        if name.endswith(".json"):
            body = json.loads(data)
            inner = body.get("tcbInfo") or body.get("enclaveIdentity") or {}
            value = inner.get("nextUpdate")
            return None if not value else datetime.fromisoformat(value.replace("Z", "+00:00"))
        if name.endswith(".pem"):
            certs = x509.load_pem_x509_certificates(data)
            return min(c.not_valid_after_utc for c in certs)
        if "crl" in name:
            crl = x509.load_der_x509_crl(data)
            return crl.next_update_utc
        return x509.load_der_x509_certificate(data).not_valid_after_utc
    except (ValueError, TypeError, AttributeError, RecursionError):  # hostile files: no date
        return None


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="attest")
