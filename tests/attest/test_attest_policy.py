"""Policies only narrow (issue 18): required evidence, strict defaults, the client's opt-in.

Each test names the widening it closes: before, the formats of a policy were alternatives
(GPU-only or software evidence passed an SNP policy), missing keys meant "accept anything"
(no TCB floor, any VMPL, omitted RTMRs, infinite age) and the operator's policy alone
accepted the software attester.
"""

from __future__ import annotations

import json
import math
import time
import tomllib
from collections.abc import Mapping
from types import MappingProxyType

import pytest
from sealagg_testkit.attest_evidence import collateral_for, policy, policy_text, tls_spki
from sealagg_testkit.attest_evidence import verifier as make_verifier

from sealagg.attest import (
    Evidence,
    Policy,
    PolicyError,
    Reason,
    SoftwareAttester,
    Verifier,
    _x509,
    parse_policy,
    report_data,
)
from sealagg.attest.errors import AppraisalFailure
from sealagg.attest.policy import FormatPolicy
from sealagg.attest.sevsnp import TcbVersion
from sealagg.attest.testing import SnpAuthority, TdxAuthority
from sealagg.crypto import IdentityKey

GOOD = bytes.fromhex("33" * 48)
GPU_SDK_POLICY = '{"version": "3.0"}'
DAY = 86_400.0


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class FakeGpuAppraiser:
    """Stands in for NVIDIA's SDK (no GPU here): GPU evidence is the report data it was made for.

    The verifier's own checks (binding, required set, order) are what these tests exercise."""

    format = "nvidia-gpu"
    insecure = False

    def appraise(self, evidence, section, now, *, binding, collateral) -> dict[str, object]:
        return {"report_data": bytes(evidence.data), "debug": False, "gpu": "H100-test"}

    def check_tcb(self, claims: Mapping[str, object], section: FormatPolicy) -> None:
        return None


@pytest.fixture(scope="module")
def amd() -> SnpAuthority:
    return SnpAuthority()


def _snp(amd: SnpAuthority, nonce: bytes, spki: bytes, **kw: object) -> Evidence:
    return amd.attester(GOOD, **kw).evidence(report_data(nonce, spki))


def _gpu_verifier(amd: SnpAuthority, **kw: object) -> Verifier:
    from sealagg.attest.verifier import default_appraisers

    appraisers = {**default_appraisers(), "nvidia-gpu": FakeGpuAppraiser()}
    return Verifier(
        policy(snp=amd, measurement=GOOD, gpu_sdk_policy=GPU_SDK_POLICY),
        appraisers=appraisers,
        collateral=collateral_for(amd),
        **kw,  # type: ignore[arg-type]
    )


def _software_text(key: IdentityKey, *, extra: str = "") -> str:
    return (
        f"version = 1\nmax_age_seconds = 60\n[software]\n{extra}"
        f'trusted_keys = ["{key.verify_key_bytes.hex()}"]\n'
        f'[[software.measurements]]\nmeasurement = "{GOOD.hex()}"\n'
    )


# --- every section is required evidence ------------------------------------------------------


def test_gpu_evidence_alone_does_not_pass_a_cpu_and_gpu_policy(amd: SnpAuthority) -> None:
    verifier = _gpu_verifier(amd)
    spki = tls_spki()
    nonce = verifier.challenge()
    gpu = Evidence("nvidia-gpu", report_data(nonce, spki))
    result = verifier.appraise(gpu, nonce=nonce, tls_spki_der=spki)
    assert result.reason is Reason.MISSING_EVIDENCE and "'sev-snp'" in result.detail


def test_cpu_evidence_alone_does_not_pass_a_cpu_and_gpu_policy(amd: SnpAuthority) -> None:
    verifier = _gpu_verifier(amd)
    spki = tls_spki()
    nonce = verifier.challenge()
    result = verifier.appraise(_snp(amd, nonce, spki), nonce=nonce, tls_spki_der=spki)
    assert result.reason is Reason.MISSING_EVIDENCE and "'nvidia-gpu'" in result.detail


def test_cpu_and_gpu_evidence_together_pass_with_claims_by_format(amd: SnpAuthority) -> None:
    verifier = _gpu_verifier(amd)
    spki = tls_spki()
    nonce = verifier.challenge()
    gpu = Evidence("nvidia-gpu", report_data(nonce, spki))
    result = verifier.appraise([gpu, _snp(amd, nonce, spki)], nonce=nonce, tls_spki_der=spki)
    result.require()
    assert result.format == "sev-snp" and result.formats == ("sev-snp", "nvidia-gpu")
    assert result.claims["measurement"] == GOOD.hex()  # the CPU TEE's claims at the top
    assert result.claims["nvidia-gpu"]["gpu"] == "H100-test"  # type: ignore[index]
    assert result.summary()["formats"] == ["sev-snp", "nvidia-gpu"]


def test_gpu_evidence_bound_to_another_tls_key_is_refused(amd: SnpAuthority) -> None:
    verifier = _gpu_verifier(amd)
    spki, relay = tls_spki(), tls_spki()
    nonce = verifier.challenge()
    gpu = Evidence("nvidia-gpu", report_data(nonce, relay))  # a GPU behind another TLS key
    result = verifier.appraise([_snp(amd, nonce, spki), gpu], nonce=nonce, tls_spki_der=spki)
    assert result.reason is Reason.WRONG_TLS_KEY and result.format == "nvidia-gpu"


@pytest.mark.parametrize("allow_insecure", [False, True])
def test_relay_with_software_or_gpu_evidence_fails_an_snp_policy(
    amd: SnpAuthority, allow_insecure: bool
) -> None:
    """Before: with [software] or [nvidia-gpu] beside [sev-snp], either alone passed."""
    verifier = make_verifier(snp=amd, measurement=GOOD, allow_insecure=allow_insecure)
    spki = tls_spki()
    for make in (
        lambda n: SoftwareAttester(IdentityKey.generate(), GOOD).evidence(report_data(n, spki)),
        lambda n: Evidence("nvidia-gpu", report_data(n, spki)),
    ):
        nonce = verifier.challenge()
        result = verifier.appraise(make(nonce), nonce=nonce, tls_spki_der=spki)
        assert result.reason is Reason.FORMAT_NOT_ALLOWED, result
        assert "requires ['sev-snp']" in result.detail


def test_extra_or_duplicate_evidence_is_refused(amd: SnpAuthority) -> None:
    verifier = make_verifier(snp=amd, measurement=GOOD)
    spki = tls_spki()
    nonce = verifier.challenge()
    extra = SoftwareAttester(IdentityKey.generate(), GOOD).evidence(report_data(nonce, spki))
    result = verifier.appraise([_snp(amd, nonce, spki), extra], nonce=nonce, tls_spki_der=spki)
    assert result.reason is Reason.FORMAT_NOT_ALLOWED
    nonce = verifier.challenge()
    twice = [_snp(amd, nonce, spki), _snp(amd, nonce, spki)]
    result = verifier.appraise(twice, nonce=nonce, tls_spki_der=spki)
    assert result.reason is Reason.MALFORMED_EVIDENCE and "twice" in result.detail
    nonce = verifier.challenge()
    result = verifier.appraise([], nonce=nonce, tls_spki_der=spki)
    assert result.reason is Reason.MISSING_EVIDENCE


def test_a_refused_multi_evidence_attempt_consumes_the_nonce(amd: SnpAuthority) -> None:
    verifier = _gpu_verifier(amd)
    spki = tls_spki()
    nonce = verifier.challenge()
    snp = _snp(amd, nonce, spki)
    assert verifier.appraise(snp, nonce=nonce, tls_spki_der=spki).reason is (
        Reason.MISSING_EVIDENCE
    )
    gpu = Evidence("nvidia-gpu", report_data(nonce, spki))
    again = verifier.appraise([snp, gpu], nonce=nonce, tls_spki_der=spki)
    assert again.reason is Reason.REPLAYED_NONCE


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ("gpu", r"\[nvidia-gpu\] is only an addition to \[sev-snp\] or \[tdx\]"),
        ("software+snp", r"\[software\] cannot be combined with hardware"),
        ("snp+tdx", r"\[sev-snp\] and \[tdx\] both required"),
    ],
)
def test_widening_combinations_are_policy_errors(amd: SnpAuthority, sections, message) -> None:
    intel = TdxAuthority()
    text = {
        "gpu": "version = 1\nmax_age_seconds = 60\n"
        f"[nvidia-gpu]\nsdk_policy = '{GPU_SDK_POLICY}'\n",
        "software+snp": policy_text(snp=amd, measurement=GOOD)
        + _software_text(IdentityKey.generate()).split("max_age_seconds = 60\n")[1],
        "snp+tdx": policy_text(snp=amd, measurement=GOOD)
        + policy_text(tdx=intel, measurement=GOOD).split("max_age_seconds = 60\n")[1],
    }[sections]
    with pytest.raises(PolicyError, match=message):
        parse_policy(text)


# --- the software attester: the client's own configuration decides ---------------------------


@pytest.mark.parametrize("policy_opt_in", ["", "allow_insecure = true\n"])
def test_software_evidence_needs_the_clients_opt_in(policy_opt_in: str) -> None:
    """Before: the operator's ``allow_insecure = true`` alone made clients accept it."""
    key = IdentityKey.generate()
    text = _software_text(key, extra=policy_opt_in)
    spki = tls_spki()
    refusing = Verifier(parse_policy(text))
    nonce = refusing.challenge()
    result = refusing.appraise(
        SoftwareAttester(key, GOOD).evidence(report_data(nonce, spki)),
        nonce=nonce,
        tls_spki_der=spki,
    )
    assert result.reason is Reason.INSECURE_NOT_ALLOWED and result.insecure
    assert "not configured to accept an insecure attester" in result.detail
    accepting = Verifier(parse_policy(text), allow_insecure=True)
    nonce = accepting.challenge()
    result = accepting.appraise(
        SoftwareAttester(key, GOOD).evidence(report_data(nonce, spki)),
        nonce=nonce,
        tls_spki_der=spki,
    )
    assert result.require().insecure


def test_allow_insecure_must_be_a_bool() -> None:
    with pytest.raises(TypeError):
        Verifier(parse_policy(_software_text(IdentityKey.generate())), allow_insecure=1)  # type: ignore[arg-type]


# --- strict defaults ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "0", "-1", "3601", "true", '"60"'])
def test_max_age_must_be_finite_and_at_most_an_hour(amd: SnpAuthority, value: str) -> None:
    text = policy_text(snp=amd, measurement=GOOD).replace(
        "max_age_seconds = 60", f"max_age_seconds = {value}"
    )
    with pytest.raises(PolicyError, match=r"0 < max_age_seconds <= 3600"):
        parse_policy(text)


def test_infinite_max_age_in_json_is_refused(amd: SnpAuthority) -> None:
    data = tomllib.loads(policy_text(snp=amd, measurement=GOOD))
    data["max_age_seconds"] = float("inf")
    with pytest.raises(PolicyError, match="max_age_seconds"):
        parse_policy(json.dumps(data), json_format=True)  # json writes Infinity


def test_300_day_old_evidence_is_refused(amd: SnpAuthority) -> None:
    """Before: ``max_age_seconds = inf`` parsed, and evidence 300 days old passed."""
    with pytest.raises(PolicyError, match="max_age_seconds"):
        policy(snp=amd, measurement=GOOD, max_age=math.inf)
    clock = Clock()
    verifier = make_verifier(snp=amd, measurement=GOOD, max_age=3600, clock=clock)
    spki = tls_spki()
    nonce = verifier.challenge()
    evidence = _snp(amd, nonce, spki)
    clock.now += 300 * DAY
    result = verifier.appraise(evidence, nonce=nonce, tls_spki_der=spki)
    assert result.reason is Reason.TOO_OLD


def test_a_policy_built_in_code_is_held_to_the_same_age_rule() -> None:
    with pytest.raises(PolicyError, match="max_age_seconds"):
        Policy(float("inf"), MappingProxyType({}))


def test_snp_tcb_floor_is_required_with_every_component(amd: SnpAuthority) -> None:
    """Before: no ``min_tcb`` meant no floor, and a chip at TCB 0/0/0/0 passed."""
    text = policy_text(snp=amd, measurement=GOOD)
    floor = "min_tcb = { bootloader = 3, tee = 0, snp = 8, microcode = 115 }\n"
    assert floor in text
    with pytest.raises(PolicyError, match="min_tcb is required"):
        parse_policy(text.replace(floor, ""))
    with pytest.raises(PolicyError, match=r"missing \['bootloader', 'tee', 'microcode'\]"):
        parse_policy(text.replace(floor, "min_tcb = { snp = 8 }\n"))
    with pytest.raises(PolicyError, match=r"unknown \['ucode'\]"):
        parse_policy(text.replace(floor, floor[:-3] + ", ucode = 1 }\n"))
    with pytest.raises(PolicyError, match=r"0\.\.255"):
        parse_policy(text.replace("snp = 8", "snp = 256"))
    turin = parse_policy(text.replace(floor, floor[:-3] + ", fmc = 1 }\n"))
    assert turin.section("sev-snp").options["min_tcb"]["fmc"] == 1  # type: ignore[union-attr]


def test_chip_at_tcb_zero_is_refused_by_the_floor() -> None:
    zero = SnpAuthority(pss=False, tcb=TcbVersion(0, 0, 0, 0))
    floor = "min_tcb = { bootloader = 3, tee = 0, snp = 8, microcode = 115 }"
    verifier = make_verifier(snp=zero, measurement=GOOD, extra_snp=floor)
    spki = tls_spki()
    nonce = verifier.challenge()
    result = verifier.appraise(_snp(zero, nonce, spki), nonce=nonce, tls_spki_der=spki)
    assert result.reason is Reason.TCB_TOO_LOW, result


def test_vmpl_defaults_to_zero(amd: SnpAuthority) -> None:
    """Before: a policy without ``required_claims.vmpl`` accepted a VMPL 3 report."""
    assert policy(snp=amd, measurement=GOOD).section("sev-snp").required_claims["vmpl"] == 0  # type: ignore[union-attr]
    verifier = make_verifier(snp=amd, measurement=GOOD)
    spki = tls_spki()
    nonce = verifier.challenge()
    result = verifier.appraise(_snp(amd, nonce, spki, vmpl=3), nonce=nonce, tls_spki_der=spki)
    assert result.reason is Reason.REQUIRED_CLAIM and "'vmpl' is 3, need 0" in result.detail
    explicit = make_verifier(snp=amd, measurement=GOOD, extra_snp="required_claims = { vmpl = 2 }")
    nonce = explicit.challenge()
    assert explicit.appraise(
        _snp(amd, nonce, spki, vmpl=2), nonce=nonce, tls_spki_der=spki
    ).accepted
    with pytest.raises(PolicyError, match=r"vmpl is an integer 0\.\.3"):
        policy(snp=amd, measurement=GOOD, extra_snp="required_claims = { vmpl = 4 }")


def test_snp_entry_must_name_the_measurement(amd: SnpAuthority) -> None:
    text = policy_text(snp=amd, measurement=GOOD).replace("measurement = ", "host_data = ")
    with pytest.raises(PolicyError, match=r"must name \['measurement'\]"):
        parse_policy(text.replace(GOOD.hex(), "11" * 32))


def test_tdx_entry_must_name_mrtd_and_rtmr0_to_2() -> None:
    """Before: an entry with MRTD only accepted any kernel and command line (RTMR1/2)."""
    intel = TdxAuthority()
    text = policy_text(tdx=intel, measurement=GOOD)
    for rtmr in ("rtmr0", "rtmr1", "rtmr2"):
        line = f'{rtmr} = "{"00" * 48}"\n'
        assert line in text
        with pytest.raises(PolicyError, match=rf"one lacks \['{rtmr}'\]"):
            parse_policy(text.replace(line, ""))
    with pytest.raises(PolicyError, match=r"not \['rtmr9'\]"):
        parse_policy(text + f'rtmr9 = "{"00" * 48}"\n')
    with pytest.raises(PolicyError, match="48 bytes"):
        parse_policy(text.replace(f'rtmr2 = "{"00" * 48}"', 'rtmr2 = "00"'))
    assert parse_policy(text + f'rtmr3 = "{"00" * 48}"\n').section("tdx") is not None


def test_tdx_tcb_floor_and_status_list() -> None:
    intel = TdxAuthority()
    text = policy_text(tdx=intel, measurement=GOOD)
    floor = f'min_tee_tcb_svn = "{"00" * 16}"\n'
    with pytest.raises(PolicyError, match="min_tee_tcb_svn is required"):
        parse_policy(text.replace(floor, ""))
    section = parse_policy(text).section("tdx")
    assert section is not None and section.options["accepted_tcb_status"] == ("UpToDate",)
    wider = policy(
        tdx=intel, measurement=GOOD, extra_tdx='accepted_tcb_status = ["UpToDate", "OutOfDate"]'
    ).section("tdx")
    assert wider is not None
    assert wider.options["accepted_tcb_status"] == ("UpToDate", "OutOfDate")
    for bad, message in (
        ('["UpToDate", "Revoked"]', "never include 'Revoked'"),
        ('["Fine"]', r"unknown \['Fine'\]"),
        ("[]", "lists Intel TCB status names"),
        ('"UpToDate"', "lists Intel TCB status names"),
    ):
        with pytest.raises(PolicyError, match=message):
            policy(tdx=intel, measurement=GOOD, extra_tdx=f"accepted_tcb_status = {bad}")


def test_tdx_expected_mrsignerseam_is_checked_hex() -> None:
    intel = TdxAuthority()
    seam = "ab" * 48
    section = policy(
        tdx=intel, measurement=GOOD, extra_tdx=f'expected_mrsignerseam = ["{seam.upper()}"]'
    ).section("tdx")
    assert section is not None and section.options["expected_mrsignerseam"] == (seam,)
    with pytest.raises(PolicyError, match="expected_mrsignerseam"):
        policy(tdx=intel, measurement=GOOD, extra_tdx='expected_mrsignerseam = ["00"]')


@pytest.mark.parametrize(
    "text",
    [
        "a = " + "1" * 5000,  # int() refuses more than 4300 digits: ValueError before
        "a = " + "[" * 50_000,  # RecursionError before
    ],
)
def test_hostile_policy_text_is_a_policy_error(text: str) -> None:
    with pytest.raises(PolicyError, match="not valid TOML"):
        parse_policy(text)
    with pytest.raises(PolicyError, match="not valid JSON"):
        parse_policy(text.replace("a = ", ""), json_format=True)


def test_version_must_be_the_integer_one(amd: SnpAuthority) -> None:
    text = policy_text(snp=amd, measurement=GOOD)
    for version in ("true", "1.0", '"1"'):
        with pytest.raises(PolicyError, match="version must be 1"):
            parse_policy(text.replace("version = 1", f"version = {version}"))


# --- the pipeline refuses, never raises --------------------------------------------------------


class BrokenAppraiser:
    """An appraiser with a bug at one step, to prove the verifier turns it into a refusal."""

    format = "software"
    insecure = True

    def __init__(self, step: str) -> None:
        self.step = step

    def appraise(self, evidence, section, now, *, binding, collateral) -> dict[str, object]:
        if self.step == "no report data":
            return {"debug": False, "measurement": GOOD.hex()}
        if self.step == "not a dict":
            return ["report_data"]  # type: ignore[return-value]
        return {"report_data": binding, "debug": False, "measurement": GOOD.hex()}

    def check_tcb(self, claims: Mapping[str, object], section: FormatPolicy) -> None:
        if self.step == "check_tcb":
            raise KeyError("svn")


@pytest.mark.parametrize(
    ("step", "reason"),
    [
        ("no report data", Reason.WRONG_TLS_KEY),
        ("not a dict", Reason.MALFORMED_EVIDENCE),
        ("check_tcb", Reason.MALFORMED_EVIDENCE),
    ],
)
def test_appraiser_bugs_become_refusals(step: str, reason: Reason) -> None:
    verifier = Verifier(
        parse_policy(_software_text(IdentityKey.generate())),
        appraisers={"software": BrokenAppraiser(step)},
        allow_insecure=True,
    )
    nonce = verifier.challenge()
    result = verifier.appraise(Evidence("software", b"x"), nonce=nonce, tls_spki_der=tls_spki())
    assert result.reason is reason, result


def test_bad_nonce_spki_or_evidence_types_are_refusals(amd: SnpAuthority) -> None:
    """Before: an empty SPKI raised ValueError and a nonce of None raised TypeError."""
    verifier = make_verifier(snp=amd, measurement=GOOD)
    spki = tls_spki()
    nonce = verifier.challenge()
    evidence = _snp(amd, nonce, spki)
    result = verifier.appraise(evidence, nonce=nonce, tls_spki_der=b"")
    assert result.reason is Reason.WRONG_TLS_KEY and "no TLS key" in result.detail
    result = verifier.appraise(evidence, nonce=None, tls_spki_der=spki)  # type: ignore[arg-type]
    assert result.reason is Reason.UNKNOWN_NONCE
    for hostile in ("sev-snp", b"raw", 7, {"format": "sev-snp"}, [None], [Evidence(3, b"")]):  # type: ignore[arg-type]
        nonce = verifier.challenge()
        result = verifier.appraise(hostile, nonce=nonce, tls_spki_der=spki)  # type: ignore[arg-type]
        assert result.reason is Reason.MALFORMED_EVIDENCE, hostile
    nonce = verifier.challenge()
    result = verifier.appraise(
        evidence,
        nonce=nonce,
        tls_spki_der=spki,
        collateral=b"bundle",  # type: ignore[arg-type]
    )
    assert result.reason is Reason.COLLATERAL_INVALID


def test_x509_helpers_refuse_instead_of_raising(amd: SnpAuthority) -> None:
    """Before: an empty chain raised IndexError, an unrepresentable time OverflowError."""
    with pytest.raises(AppraisalFailure) as empty:
        _x509.verify_chain([], [], [], 0.0)
    assert empty.value.reason is Reason.BROKEN_CHAIN
    with pytest.raises(AppraisalFailure) as late:
        _x509.check_validity(amd.ark, 1e300, "ARK")
    assert late.value.reason is Reason.BROKEN_CHAIN
    with pytest.raises(AppraisalFailure):
        _x509.load_pem_chain(b"", "an empty chain")
    with pytest.raises(AppraisalFailure):
        _x509.load_certificate("not bytes", "a string")  # type: ignore[arg-type]
    with pytest.raises(AppraisalFailure) as key:
        _x509.verify_ecdsa(amd.vcek.public_key(), b"", b"m", "not a hash", "a signature")
    assert key.value.reason is Reason.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("value", "expected"),
    [('"genoa"', ("Genoa",)), ('["Milan", "TURIN"]', ("Milan", "Turin"))],
)
def test_snp_product_narrows_and_is_canonical(amd: SnpAuthority, value: str, expected) -> None:
    parsed = parse_policy(
        policy_text(snp=amd, measurement=bytes(48), extra_snp=f"product = {value}")
    )
    assert parsed.section("sev-snp").options["product"] == expected  # type: ignore[union-attr]


@pytest.mark.parametrize("value", ['"Rome"', "[]", "3", '["Genoa", 4]'])
def test_snp_product_outside_milan_genoa_turin_is_a_policy_error(
    amd: SnpAuthority, value: str
) -> None:
    with pytest.raises(PolicyError, match="product"):
        parse_policy(policy_text(snp=amd, measurement=bytes(48), extra_snp=f"product = {value}"))
