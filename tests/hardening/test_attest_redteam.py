"""Red team, end to end: attacks on attested mode's trust statements over real gRPC.

Everything is real but the TEE: loopback gRPC with the federation's certificates, the
appliance, the shim, fake SEV-SNP / TDX hardware with collateral from the test suite's own
vendor chains. Each test names the README / docs statement it attacks.

Breaks found (the tests failed before their fixes):
- a refused appraisal left the certificate it had just pinned (the relay's) in place, so the
  next ``Connection.submit`` went to the relay, against "uploads stay refused until a freshly
  verified certificate is pinned" (client_shim/attestation.py now drops the pin);
- a revocation, or a fresh bundle, that the operator ships with the appliance after the kits
  were issued never reached clients: the kit's older copy always won (README step 6);
- ``allow_insecure_attester="false"`` (any truthy non-boolean) switched the insecure
  attester on.
"""

from __future__ import annotations

import shutil
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sealagg_testkit.attested import (
    HARDWARE,
    HOSTS,
    MEASUREMENT,
    Relay,
    attested_federation,
    stolen_copy,
)
from sealagg_testkit.audit import audit_details
from typer.testing import CliRunner

from sealagg.appliance import pki
from sealagg.appliance.attestation import collateral_path
from sealagg.appliance.cli import app as cli
from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.server import Appliance
from sealagg.appliance.testing import Deployment
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.attest import (
    AttestationError,
    AttestationRefusedError,
    AttesterUnavailableError,
    Reason,
)
from sealagg.attest.collateral import CollateralBundle
from sealagg.attest.tdx_collateral import PCK_CRL
from sealagg.attest.testing_snp import SnpAuthority
from sealagg.attest.testing_tdx import TdxAuthority
from sealagg.client_shim.attestation import (
    ALLOW_INSECURE_ENV,
    AttestationGuard,
    insecure_attester_allowed,
)
from sealagg.client_shim.connection import Connection

DAY = timedelta(days=1)


def _refresh(dep: Deployment, bundle: CollateralBundle) -> None:
    """The operator replaces the appliance's bundle (the running appliance re-reads it)."""
    shutil.rmtree(collateral_path(dep.folder), ignore_errors=True)
    bundle.write_directory(collateral_path(dep.folder))


def _minting_relay(genuine_port: int, copy: Path) -> Relay:
    """The relay names a certificate it minted with the copied CA key for the GENUINE key
    (the SPKI the evidence binds): same key, valid CA signature, serverAuth, right hosts."""
    fed = FederationFolder.load(copy)
    minted: dict[bytes, bytes] = {}

    def name(genuine_der: bytes) -> bytes:
        if genuine_der not in minted:
            genuine = x509.load_der_x509_certificate(genuine_der)
            cert = pki.issue_server_certificate(
                fed.ca_certificate,
                fed.ca_private_key(),
                genuine.public_key(),  # type: ignore[arg-type]
                hosts=HOSTS,
                now=datetime.now(UTC),
            )
            assert cert.public_key() == genuine.public_key() and cert != genuine
            minted[genuine_der] = cert.public_bytes(Encoding.DER)
        return minted[genuine_der]

    return Relay(f"127.0.0.1:{genuine_port}", copy, name_certificate=name)


# ---------------------------------------------------------------------------------------
# README: "if the relay passes the genuine certificate through, the pinned handshake fails;
# if it names a certificate of its own ..., the evidence is bound to another key".
# The gap between the two: a certificate of the relay's own making for the GENUINE key.


@pytest.mark.parametrize("fmt", ["sev-snp", "tdx"])
def test_a_relay_naming_a_minted_certificate_for_the_genuine_key_gets_nothing(
    tmp_path, running, fmt
):
    """The evidence binds the minted certificate's key (it IS the genuine key), so the
    binding passes; the pinned handshake then needs that key's private half, which never
    left the TEE. Refused before any byte of an update moves, and uploads stay refused."""
    hardware = HARDWARE[fmt]()
    dep = attested_federation(tmp_path, hardware)
    genuine = running(dep.folder, attester=hardware.attester(MEASUREMENT))
    relay = _minting_relay(genuine.port, stolen_copy(dep, tmp_path))
    conn = Connection(dep.kits["client0"], address=relay.address)
    try:
        with pytest.raises(AttestationRefusedError) as refused:
            AttestationGuard.from_kit(conn).verify()
        assert refused.value.reason is Reason.WRONG_TLS_KEY, refused.value
        assert "handshake" in refused.value.result.detail
        with pytest.raises(AttestationError, match="nothing was sent"):
            conn.submit(pb.UploadHeader(phase=0, kind="plaintext_update"), b"\x01" * 64)
    finally:
        conn.close()
        relay.close()
    assert relay.attests >= 1 and relay.upload_bytes == 0


# ---------------------------------------------------------------------------------------
# client_shim/connection.py (unpin): "Uploads stay refused until a freshly verified
# certificate is pinned"; README: "Both are refused ... before a single update byte is sent".


def test_a_refused_appraisal_leaves_no_pinned_certificate_to_upload_to(tmp_path, running):
    """BREAK (fixed): the guard pins the certificate the appliance names *before* appraising
    its evidence. When the appraisal refused (here: a relay naming the folder's server
    certificate, whose key it holds), the pin stayed and ``Connection.submit`` sent the
    update to the relay. Now a refused (or failed) appraisal drops the pin."""
    amd = SnpAuthority()
    dep = attested_federation(tmp_path, amd)
    genuine = running(dep.folder, attester=amd.attester(MEASUREMENT))
    copy = stolen_copy(dep, tmp_path)
    relay = Relay(f"127.0.0.1:{genuine.port}", copy, own_certificate=True)
    conn = Connection(dep.kits["client0"], address=relay.address)
    guard = AttestationGuard.from_kit(conn)
    try:
        for _ in range(2):  # a second attempt behaves the same (fresh probe, same refusal)
            with pytest.raises(AttestationRefusedError) as refused:
                guard.verify()
            assert refused.value.reason is Reason.WRONG_TLS_KEY, refused.value
            assert conn.pinned_certificate is None and guard.due()
            with pytest.raises(AttestationError, match="nothing was sent"):
                conn.submit(pb.UploadHeader(phase=0, kind="plaintext_update"), b"\x01" * 64)
    finally:
        conn.close()
        relay.close()
    assert relay.upload_bytes == 0


def test_the_genuine_appliance_still_gets_uploads_after_a_refusal_was_cleared(tmp_path, running):
    """The control for the test above: dropping the pin does not lock a client out. After a
    refusal (no collateral yet), the operator ships the bundle and the next verification
    pins the genuine certificate; an upload then reaches the appliance."""
    amd = SnpAuthority()
    dep = attested_federation(tmp_path, amd, collateral=CollateralBundle.empty())
    running(dep.folder, attester=amd.attester(MEASUREMENT))
    conn = Connection(dep.kits["client0"], address=dep.address)
    guard = AttestationGuard.from_kit(conn)
    try:
        with pytest.raises(AttestationRefusedError) as refused:
            guard.verify()
        assert refused.value.reason is Reason.COLLATERAL_MISSING
        with pytest.raises(AttestationError, match="nothing was sent"):
            conn.submit(pb.UploadHeader(phase=0, kind="plaintext_update"), b"\x01" * 64)
        _refresh(dep, amd.collateral())
        assert guard.verify().accepted and conn.pinned_certificate is not None
        with pytest.raises(grpc.RpcError) as reached:  # no round open: the appliance answers
            conn.submit(pb.UploadHeader(phase=0, kind="plaintext_update"), b"\x01" * 64)
        assert reached.value.code() is not grpc.StatusCode.UNAVAILABLE
    finally:
        conn.close()
    results = [
        (r["accepted"], r["reason"]) for r in audit_details(dep.folder, "attestation_result")
    ]
    assert results == [(False, "collateral_missing"), (True, "")]


# ---------------------------------------------------------------------------------------
# README step 6: "Before the CRL's next update ... fetch again; the running appliance sends
# the new bundle with its next Attest reply"; the collateral "travels in the kit and in
# every Attest reply; the carrier adds no trust".


def test_a_revocation_the_operator_ships_reaches_clients_whose_kits_are_older(tmp_path, running):
    """BREAK (fixed): kits carry the bundle of their issue day; AMD then revokes the ASK and
    the operator ships the new CRL with the appliance. The kit's older CRL (still current)
    won, so every client kept accepting the revoked chain. Audited as ``revoked``."""
    amd = SnpAuthority()
    issued_then = amd.collateral(now=datetime.now(UTC).timestamp() - 3 * 86400)
    dep = attested_federation(tmp_path, amd, collateral=issued_then)
    kit = dep.kits["client0"]
    assert CollateralBundle.from_bytes(kit.attestation_collateral).files == issued_then.files
    _refresh(dep, amd.collateral(revoked=["ask"]))
    running(dep.folder, attester=amd.attester(MEASUREMENT))
    conn = Connection(kit, address=dep.address)
    try:
        with pytest.raises(AttestationRefusedError) as refused:
            AttestationGuard.from_kit(conn).verify()
    finally:
        conn.close()
    assert refused.value.reason is Reason.REVOKED, refused.value
    (entry,) = audit_details(dep.folder, "attestation_result")
    assert entry["reason"] == "revoked" and not entry["accepted"]


def test_a_fresh_bundle_from_the_appliance_replaces_a_stale_kit_copy(tmp_path, running):
    """BREAK (fixed): once the kit's copy of Intel's PCK CRL passed its nextUpdate every
    client refused, although the operator had refreshed the appliance's bundle."""
    intel = TdxAuthority()
    bundle = intel.collateral()
    now = datetime.now(UTC)
    stale = intel.crl("platform", last_update=now - 40 * DAY, next_update=now - DAY)
    kit_bundle = CollateralBundle({**bundle.files, PCK_CRL["platform"]: stale})
    dep = attested_federation(tmp_path, intel, collateral=kit_bundle)
    _refresh(dep, bundle)
    running(dep.folder, attester=intel.attester(MEASUREMENT))
    conn = Connection(dep.kits["client0"], address=dep.address)
    try:
        result = AttestationGuard.from_kit(conn).verify()
    finally:
        conn.close()
    assert result.accepted and result.claims["tcb_status"] == "UpToDate"
    assert [r["accepted"] for r in audit_details(dep.folder, "attestation_result")] == [True]


# ---------------------------------------------------------------------------------------
# docs/attest-*.md: "sealagg attest collateral fetch" writes the vendor items into --out
# (paths from the vendor modules' fetch plans) over HTTPS; "show" lists a bundle.


@pytest.mark.parametrize(
    "args",
    [
        ["--tdx-fmspc", "../../etc"],
        ["--tdx-fmspc", "00806f05\r\nX: y"],
        ["--snp-product", "../Milan"],
        ["--snp-product", "Milan", "--snp-chip-id", "../" * 40, "--snp-tcb", "00" * 8],
        ["--snp-product", "Milan", "--snp-chip-id", "ab" * 64, "--snp-tcb", "00\r\nHost: x"],
        ["--snp-product", "Milan", "--snp-chip-id", "ab" * 63 + "\r\n", "--snp-tcb", "00" * 8],
    ],
    ids=["fmspc-path", "fmspc-crlf", "product-path", "chip-path", "tcb-crlf", "chip-crlf"],
)
def test_fetch_arguments_cannot_steer_paths_or_requests(tmp_path, monkeypatch, args):
    """Path traversal and header/query injection through the CLI's arguments: refused while
    planning, before any request is made and anything is written."""
    requests: list[str] = []
    monkeypatch.setattr(
        urllib.request, "urlopen", lambda request, **kw: requests.append(request.full_url)
    )
    out = tmp_path / "bundle"
    result = CliRunner().invoke(cli, ["attest", "collateral", "fetch", "--out", str(out), *args])
    assert result.exit_code == 1, result.output
    assert "cannot plan the download" in result.output or "FMSPC" in result.output
    assert not requests and not out.exists() and list(tmp_path.iterdir()) == []


def test_show_reports_hostile_files_instead_of_crashing(tmp_path):
    """``show`` reads whatever is in a folder: a deeply nested JSON, garbage under a CRL's
    name and a file name the bundle refuses are reported, the others still listed."""
    intel = TdxAuthority()
    intel.collateral().write_directory(tmp_path)
    (tmp_path / "tdx" / "qe_identity.json").write_bytes(b"[" * 100_000)
    (tmp_path / "tdx" / "pck_crl_platform.der").write_bytes(b"\x30\x82garbage")
    (tmp_path / "tdx" / "bad\\name.der").write_bytes(b"x")
    result = CliRunner().invoke(cli, ["attest", "collateral", "show", str(tmp_path)])
    assert result.exit_code == 0 and result.exception is None, result.output
    lines = result.output.splitlines()
    assert any(ln.startswith("tdx/qe_identity.json ") for ln in lines), result.output
    assert any(ln.startswith("tdx/root_ca_crl.der ") and "20" in ln for ln in lines)
    assert any("bad\\name.der" in ln and "not a bundle item" in ln for ln in lines)


# ---------------------------------------------------------------------------------------
# README: "An appliance restarted outside the TEE has no hardware evidence for its key";
# "client configuration ... the data owner alone ... default refuse".


@pytest.mark.parametrize("provider", ["sev-snp", "tdx", "configfs-tsm"])
def test_a_copied_folder_configured_for_hardware_does_not_start_outside_a_tee(tmp_path, provider):
    """The folder copied to a host with no TEE (no configfs-tsm): a hardware provider does
    not start at all, so it can neither serve a key nor forge evidence for one (with the
    software provider it starts and clients refuse it: tests/e2e/test_attested_relay.py)."""
    amd = SnpAuthority()
    dep = attested_federation(tmp_path, amd, provider=provider)
    dep.configure(attestation={"tsm_root": str(tmp_path / "no-configfs-tsm")})
    with pytest.raises(AttesterUnavailableError, match="not a TEE guest"):
        Appliance(dep.folder)


@pytest.mark.parametrize("value", ["false", "0", 1, "yes"])
def test_only_a_real_boolean_switches_the_insecure_attester_on(value, monkeypatch):
    """``bool("false")`` is True: a client reading its switch from text must not end up
    accepting the software attester by accident."""
    with pytest.raises(TypeError, match="True, False or None"):
        insecure_attester_allowed(value)  # type: ignore[arg-type]
    for env, want in (("1", True), ("true", False), ("yes", False), ("", False)):
        monkeypatch.setenv(ALLOW_INSECURE_ENV, env)
        assert insecure_attester_allowed(None) is want
    assert insecure_attester_allowed(False) is False
