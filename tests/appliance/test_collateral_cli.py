"""``sealagg attest collateral fetch|show`` against a fake Intel PCS / AMD KDS on loopback.

Nothing here touches the network: a urllib handler sends every HTTPS request for a vendor
host to a local ``http.server`` that serves the test suite's own collateral (signed by the
fake Intel and AMD chains in attest/testing_*), Intel's issuer chains as URL-encoded
response headers as PCS sends them. The vendor modules' real fetch plans are used unchanged.
"""

from __future__ import annotations

import http.server
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sealagg.appliance.cli import app
from sealagg.appliance.cli._common import CLIError
from sealagg.appliance.cli.attest import download
from sealagg.attest import snp_collateral, tdx_collateral
from sealagg.attest.collateral import CollateralBundle, CollateralDownload
from sealagg.attest.testing_snp import SnpAuthority
from sealagg.attest.testing_tdx import TdxAuthority


class FakeVendors:
    """A loopback HTTP server answering for vendor hosts: key "/<host><path>?<query>"."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes, dict[str, str]]] = {}
        self.hits: list[str] = []
        vendors = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                vendors.hits.append(self.path)
                status, body, headers = vendors.routes.get(self.path, (404, b"no such item", {}))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @staticmethod
    def key(url: str) -> str:
        parts = urllib.parse.urlsplit(url)
        return f"/{parts.netloc}{parts.path}" + (f"?{parts.query}" if parts.query else "")

    def publish(self, plan: list[CollateralDownload], bundle: CollateralBundle) -> None:
        """Serve ``bundle``'s items where ``plan`` expects them (bodies or headers)."""
        for item in plan:
            status, body, headers = self.routes.get(self.key(item.url), (200, b"", {}))
            data = bundle.files[item.path]
            if item.response_header is None:
                body = data
            else:  # PCS URL-encodes the PEM chain into one header line
                headers = {**headers, item.response_header: urllib.parse.quote(data.decode())}
            self.routes[self.key(item.url)] = (status, body, headers)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _VendorHostsOnLoopback(urllib.request.BaseHandler):
    """Answers https://<vendor host>/... from the fake server (plain HTTP on loopback)."""

    handler_order = 100  # before urllib's own HTTPS handler: no request leaves the machine

    def __init__(self, port: int) -> None:
        self.port = port

    def https_open(self, request: urllib.request.Request):
        local = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{FakeVendors.key(request.full_url)}",
            headers=dict(request.header_items()),
        )
        local.timeout = request.timeout  # type: ignore[attr-defined]
        return urllib.request.HTTPHandler().http_open(local)


@pytest.fixture
def vendors() -> Iterator[FakeVendors]:
    fake = FakeVendors()
    urllib.request.install_opener(urllib.request.build_opener(_VendorHostsOnLoopback(fake.port)))
    try:
        yield fake
    finally:
        urllib.request.install_opener(None)  # type: ignore[arg-type]
        fake.close()


def _files(folder: Path) -> Mapping[str, bytes]:
    return CollateralBundle.from_directory(folder).files


def test_tdx_fetch_writes_every_planned_item_where_the_appraiser_reads_it(vendors, tmp_path):
    intel = TdxAuthority()
    fmspc = intel.fmspc.hex()
    plan = tdx_collateral.fetch_plan(fmspc)
    want = intel.collateral()
    vendors.publish(plan, want)
    out = tmp_path / "collateral"
    result = CliRunner().invoke(
        app, ["attest", "collateral", "fetch", "--out", str(out), "--tdx-fmspc", fmspc.upper()]
    )
    assert result.exit_code == 0, result.output
    got = _files(out)
    assert set(got) == {item.path for item in plan} == set(want.files)
    assert got == dict(want.files)  # header items URL-decoded back to the PEM chain
    assert sorted(vendors.hits) == sorted({vendors.key(i.url) for i in plan})  # once per URL


def test_snp_fetch_names_the_vcek_of_the_chip_and_tcb(vendors, tmp_path):
    amd = SnpAuthority()
    plan = snp_collateral.fetch_plan(amd.product, amd.chip_id.hex(), amd.tcb.hex)
    bundle = amd.collateral()
    vendors.publish(plan, bundle)
    out = tmp_path / "collateral"
    args = ["--snp-product", amd.product, "--snp-chip-id", amd.chip_id.hex()]
    result = CliRunner().invoke(
        app, ["attest", "collateral", "fetch", "--out", str(out), *args, "--snp-tcb", amd.tcb.hex]
    )
    assert result.exit_code == 0, result.output
    got = _files(out)
    assert set(got) == {item.path for item in plan}
    assert all(got[name] == bundle.files[name] for name in got)
    assert any(name.startswith(f"sev-snp/{amd.product}/vcek/{amd.chip_id.hex()}/") for name in got)


def test_a_failed_item_writes_nothing_and_names_the_url(vendors, tmp_path):
    intel = TdxAuthority()
    plan = tdx_collateral.fetch_plan(intel.fmspc.hex())
    vendors.publish(plan[:-1], intel.collateral())  # the root CA CRL is missing: HTTP 404
    out = tmp_path / "collateral"
    result = CliRunner().invoke(
        app, ["attest", "collateral", "fetch", "--out", str(out), "--tdx-fmspc", intel.fmspc.hex()]
    )
    assert result.exit_code == 1
    assert "HTTP 404" in result.output and "IntelSGXRootCA" in result.output
    assert not out.exists()


def test_a_missing_issuer_chain_header_is_an_error(vendors):
    intel = TdxAuthority()
    plan = tdx_collateral.fetch_plan(intel.fmspc.hex())
    bodies_only = [i for i in plan if i.response_header is None]
    vendors.publish(bodies_only, intel.collateral())
    with pytest.raises(CLIError, match="TCB-Info-Issuer-Chain"):
        download(plan)


@pytest.mark.parametrize(
    ("item", "why"),
    [
        (CollateralDownload("http://kdsintf.amd.com/vcek/v1/Milan/crl", "a.der"), "HTTPS"),
        (CollateralDownload("file:///etc/passwd", "a.der"), "HTTPS"),
        (CollateralDownload("https://api.trustedservices.intel.com/x", "../escape"), "bad path"),
    ],
)
def test_plans_are_checked_before_anything_is_kept(vendors, item, why):
    vendors.routes[vendors.key(item.url)] = (200, b"data", {})
    with pytest.raises(CLIError, match=why):
        download([item])


def test_fetch_needs_a_platform(tmp_path):
    result = CliRunner().invoke(app, ["attest", "collateral", "fetch", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "--tdx-fmspc" in result.output
    bad = ["attest", "collateral", "fetch", "--out", str(tmp_path), "--tdx-fmspc", "xyz"]
    result = CliRunner().invoke(app, bad)
    assert result.exit_code == 1 and "FMSPC" in result.output


def test_show_lists_items_and_flags_stale_ones(tmp_path):
    intel = TdxAuthority()
    intel.collateral(now=time.time() - 40 * 86400).write_directory(tmp_path)  # 30-day items
    result = CliRunner().invoke(app, ["attest", "collateral", "show", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for name in CollateralBundle.from_directory(tmp_path).names():
        (line,) = [ln for ln in lines if ln.startswith(name + " ")]
        assert ("stale" in line) == name.endswith((".der", ".json")), line  # not the chains
        assert "next update 20" in line
