"""The verifier pipeline: nonces, binding, policy loading, software and optional providers."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sealagg_testkit.attest_evidence import collateral_for, policy, policy_text, tls_spki
from sealagg_testkit.attest_evidence import verifier as _verifier

from sealagg.attest import (
    AttesterUnavailableError,
    ConfigfsTsmAttester,
    Evidence,
    PolicyError,
    Reason,
    SoftwareAttester,
    Verifier,
    load_policy,
    parse_policy,
    report_data,
)
from sealagg.attest.nvidia import sdk_available
from sealagg.attest.testing import SnpAuthority
from sealagg.crypto import IdentityKey

GOOD = bytes.fromhex("33" * 48)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def amd() -> SnpAuthority:
    return SnpAuthority()


def _evidence(amd: SnpAuthority, nonce: bytes, spki: bytes) -> Evidence:
    return amd.attester(GOOD).evidence(report_data(nonce, spki))


def test_replayed_nonce_is_refused(amd: SnpAuthority) -> None:
    verifier = _verifier(snp=amd, measurement=GOOD)
    spki = tls_spki()
    nonce = verifier.challenge()
    evidence = _evidence(amd, nonce, spki)
    assert verifier.appraise(evidence, nonce=nonce, tls_spki_der=spki).accepted
    again = verifier.appraise(evidence, nonce=nonce, tls_spki_der=spki)
    assert again.reason is Reason.REPLAYED_NONCE


def test_nonce_not_issued_by_this_verifier_is_refused(amd: SnpAuthority) -> None:
    issuer, verifier = (_verifier(snp=amd, measurement=GOOD) for _ in range(2))
    spki = tls_spki()
    nonce = issuer.challenge()
    result = verifier.appraise(_evidence(amd, nonce, spki), nonce=nonce, tls_spki_der=spki)
    assert result.reason is Reason.UNKNOWN_NONCE


def test_old_evidence_is_refused(amd: SnpAuthority) -> None:
    clock = Clock()
    verifier = _verifier(snp=amd, measurement=GOOD, max_age=30, clock=clock)
    spki = tls_spki()
    nonce = verifier.challenge()
    evidence = _evidence(amd, nonce, spki)
    clock.now += 31
    result = verifier.appraise(evidence, nonce=nonce, tls_spki_der=spki)
    assert result.reason is Reason.TOO_OLD
    fresh = verifier.challenge()
    clock.now += 29
    assert verifier.appraise(_evidence(amd, fresh, spki), nonce=fresh, tls_spki_der=spki).accepted


def test_evidence_bound_to_another_tls_key_is_refused(amd: SnpAuthority) -> None:
    verifier = _verifier(snp=amd, measurement=GOOD)
    genuine_key, relay_key = tls_spki(), tls_spki()
    nonce = verifier.challenge()
    evidence = _evidence(amd, nonce, genuine_key)  # the relay forwards the genuine appliance's
    result = verifier.appraise(evidence, nonce=nonce, tls_spki_der=relay_key)
    assert result.reason is Reason.WRONG_TLS_KEY
    assert result.reason.value == "bound_to_another_tls_key"


def test_format_absent_from_policy_is_refused(amd: SnpAuthority) -> None:
    verifier = _verifier(snp=amd, measurement=GOOD)
    nonce = verifier.challenge()
    attester = SoftwareAttester(IdentityKey.generate(), GOOD)
    spki = tls_spki()
    result = verifier.appraise(
        attester.evidence(report_data(nonce, spki)), nonce=nonce, tls_spki_der=spki
    )
    assert result.reason is Reason.FORMAT_NOT_ALLOWED


def _software_policy(key: IdentityKey, *, allow: str = "true") -> str:
    return (
        "version = 1\nmax_age_seconds = 60\n[software]\n"
        f'allow_insecure = {allow}\ntrusted_keys = ["{key.verify_key_bytes.hex()}"]\n'
        f'[[software.measurements]]\nmeasurement = "{GOOD.hex()}"\n'
    )


def test_software_attester_is_accepted_but_marked_insecure() -> None:
    key = IdentityKey.generate()
    verifier = Verifier(parse_policy(_software_policy(key)), allow_insecure=True)
    spki = tls_spki()
    nonce = verifier.challenge()
    evidence = SoftwareAttester(key, GOOD).evidence(report_data(nonce, spki))
    result = verifier.appraise(evidence, nonce=nonce, tls_spki_der=spki).require()
    assert result.insecure and result.summary()["insecure"] is True
    assert "report_data" not in result.summary()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda key: SoftwareAttester(IdentityKey.generate(), GOOD), Reason.UNTRUSTED_ROOT),
        (lambda key: SoftwareAttester(key, GOOD, debug=True), Reason.DEBUG_ENABLED),
        (lambda key: SoftwareAttester(key, bytes(48)), Reason.MEASUREMENT_NOT_ALLOWED),
    ],
)
def test_software_refusals(make, reason: Reason) -> None:
    key = IdentityKey.generate()
    verifier = Verifier(parse_policy(_software_policy(key)), allow_insecure=True)
    spki = tls_spki()
    nonce = verifier.challenge()
    result = verifier.appraise(
        make(key).evidence(report_data(nonce, spki)), nonce=nonce, tls_spki_der=spki
    )
    assert result.reason is reason and result.insecure


def test_software_evidence_tampering_is_refused() -> None:
    key = IdentityKey.generate()
    verifier = Verifier(parse_policy(_software_policy(key)), allow_insecure=True)
    spki = tls_spki()
    for pos in range(0, 168, 3):
        if 136 <= pos < 168:
            continue  # the signer key: changing it is an untrusted key, tested above
        nonce = verifier.challenge()
        raw = bytearray(SoftwareAttester(key, GOOD).evidence(report_data(nonce, spki)).data)
        raw[pos] ^= 1
        result = verifier.appraise(Evidence("software", bytes(raw)), nonce=nonce, tls_spki_der=spki)
        assert result.reason in (Reason.BAD_SIGNATURE, Reason.MALFORMED_EVIDENCE), pos


def test_software_policy_contradicting_itself_is_refused() -> None:
    with pytest.raises(PolicyError, match="allow_insecure = False contradicts"):
        parse_policy(_software_policy(IdentityKey.generate(), allow="false"))


def test_nvidia_plugin_is_cleanly_absent(amd: SnpAuthority) -> None:
    assert not sdk_available()  # the SDK is not a dependency; with it this test must change
    verifier = Verifier(
        policy(snp=amd, measurement=GOOD, gpu_sdk_policy='{"version": "3.0"}'),
        collateral=collateral_for(amd),
    )
    spki = tls_spki()
    nonce = verifier.challenge()
    gpu = Evidence("nvidia-gpu", b'[{"evidence": "00", "certificate": "00"}]')
    result = verifier.appraise([_evidence(amd, nonce, spki), gpu], nonce=nonce, tls_spki_der=spki)
    assert not result.accepted and result.reason is Reason.PROVIDER_UNAVAILABLE
    assert result.format == "nvidia-gpu" and "not installed" in result.detail


def test_configfs_tsm_is_absent_here(tmp_path: Path) -> None:
    with pytest.raises(AttesterUnavailableError, match="configfs-tsm"):
        ConfigfsTsmAttester(root=tmp_path / "tsm" / "report")


def test_policy_file_missing_or_malformed(tmp_path: Path, amd: SnpAuthority) -> None:
    with pytest.raises(PolicyError, match="no attestation policy"):
        load_policy(tmp_path / "absent.toml")
    good = policy_text(snp=amd, measurement=GOOD)
    bad = {
        "not toml": "version = = 1",
        "no version": good.replace("version = 1\n", ""),
        "no max age": good.replace("max_age_seconds = 60\n", ""),
        "no format": "version = 1\nmax_age_seconds = 60\n",
        "no measurement": good.split("[[sev-snp.measurements]]")[0],
        "no trust anchor": good.replace(f'"{amd.ark_sha256}"', ""),
        "bad hex": good.replace(GOOD.hex(), "zz"),
        "unknown key": good.replace("[sev-snp]\n", "[sev-snp]\nallow_debug = true\n"),
        "unknown format": good + "[sgx]\n",
        "negative age": good.replace("max_age_seconds = 60", "max_age_seconds = -1"),
        "gpu without sdk policy": good + "[nvidia-gpu]\n",
        "gpu with own measurements": good
        + "[nvidia-gpu]\nsdk_policy = '{}'\n[[nvidia-gpu.measurements]]\nmeasurement = \"00\"\n",
    }
    for name, text in bad.items():
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        with pytest.raises(PolicyError):  # case: name
            load_policy(path)


def test_policy_json_is_accepted(tmp_path: Path, amd: SnpAuthority) -> None:
    import tomllib

    path = tmp_path / "policy.json"
    path.write_text(json.dumps(tomllib.loads(policy_text(snp=amd, measurement=GOOD))))
    assert load_policy(path).section("sev-snp") is not None


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_policy_parser_raises_only_policy_errors(text: str) -> None:
    with contextlib.suppress(PolicyError):
        parse_policy(text)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=1400), st.sampled_from(["sev-snp", "tdx", "software"]))
def test_random_evidence_is_refused_never_crashes(blob: bytes, fmt: str) -> None:
    anchor = "00" * 32
    sections = {
        "software": _software_policy(IdentityKey.generate()),
        "tdx": (
            f'version = 1\nmax_age_seconds = 60\n[tdx]\ntrusted_root_sha256 = ["{anchor}"]\n'
            f'min_tee_tcb_svn = "{"00" * 16}"\n[[tdx.measurements]]\n'
            + "".join(f'{k} = "{GOOD.hex()}"\n' for k in ("mrtd", "rtmr0", "rtmr1", "rtmr2"))
        ),
        "sev-snp": (
            f'version = 1\nmax_age_seconds = 60\n[sev-snp]\ntrusted_ark_sha256 = ["{anchor}"]\n'
            "min_tcb = { bootloader = 0, tee = 0, snp = 0, microcode = 0 }\n"
            f'[[sev-snp.measurements]]\nmeasurement = "{GOOD.hex()}"\n'
        ),
    }
    verifier = Verifier(parse_policy(sections[fmt]), allow_insecure=True)
    nonce = verifier.challenge()
    result = verifier.appraise(Evidence(fmt, blob), nonce=nonce, tls_spki_der=tls_spki())
    assert not result.accepted and result.reason is not None
