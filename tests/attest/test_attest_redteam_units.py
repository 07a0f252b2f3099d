"""Red team, unit level: each test tries to break one trust statement of the README's
"Attested mode" section or docs/attest-{policy,tdx,snp}.md, with the test suite's own Intel
and AMD (attest/testing_*). The statement is quoted above each group.

Breaks found (each test failed before its fix):
- the kit's copy of an item always won over the appliance's, so a revocation (CRL) or a TCB
  recovery (TCB info) the operator shipped after the kits were issued never reached clients,
  and a kit whose copy went stale refused the fresh bundle the appliance sent (README, "On
  real hardware" step 6): now the newest copy that verifies is used, never an older one;
- collateral rollback: an older genuine TCB info (before a TCB recovery, still inside its
  month of validity) rated an unpatched platform UpToDate; the policy can now set
  ``min_tcb_evaluation_data_number``;
- a JSON policy naming a section (or ``max_age_seconds``) twice was read with the last copy
  silently winning;
- a symbolic link planted in the appliance's collateral folder was followed and the target's
  bytes sent to every client in the Attest reply.
"""

from __future__ import annotations

import datetime
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from sealagg_testkit.attest_evidence import policy, policy_text, tls_spki

from sealagg.attest import (
    Evidence,
    PolicyError,
    Reason,
    SoftwareAttester,
    Verifier,
    parse_policy,
    report_data,
)
from sealagg.attest.collateral import CollateralBundle
from sealagg.attest.snp_collateral import crl_path
from sealagg.attest.tdx_collateral import PCK_CRL, ROOT_CA_CRL, TCB_INFO_CHAIN
from sealagg.attest.testing import SnpAuthority, TdxAuthority
from sealagg.attest.testing_tdx import (
    DEFAULT_PCESVN,
    DEFAULT_SGX_TCB,
    DEFAULT_TEE_TCB_SVN,
    tcb_level,
)
from sealagg.crypto import IdentityKey

MEASUREMENT = bytes.fromhex("44" * 48)
DAY = datetime.timedelta(days=1)


@pytest.fixture(scope="module")
def intel() -> TdxAuthority:
    return TdxAuthority()


@pytest.fixture(scope="module")
def amd() -> SnpAuthority:
    return SnpAuthority()


def _at(offset: datetime.timedelta = datetime.timedelta(0)) -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) + offset


def _tdx(
    intel: TdxAuthority,
    *,
    kit: CollateralBundle | None,
    appliance: CollateralBundle | None,
    extra: str = "",
):
    """One genuine TDX quote appraised with the kit's bundle and the appliance's."""
    verifier = Verifier(policy(tdx=intel, measurement=MEASUREMENT, extra_tdx=extra), collateral=kit)
    spki, nonce = tls_spki(), verifier.challenge()
    quote = intel.quote(report_data(nonce, spki), mrtd=MEASUREMENT)
    return verifier.appraise(
        Evidence("tdx", quote), nonce=nonce, tls_spki_der=spki, collateral=appliance
    )


def _snp(amd: SnpAuthority, *, kit: CollateralBundle | None, appliance: CollateralBundle | None):
    verifier = Verifier(policy(snp=amd, measurement=MEASUREMENT), collateral=kit)
    spki, nonce = tls_spki(), verifier.challenge()
    evidence = amd.attester(MEASUREMENT).evidence(report_data(nonce, spki))
    return verifier.appraise(evidence, nonce=nonce, tls_spki_der=spki, collateral=appliance)


def _pck_crl(intel: TdxAuthority, *, issued: datetime.datetime, revoke: bool) -> bytes:
    return intel.crl(
        "platform",
        revoked=[intel.pck] if revoke else [],
        last_update=issued,
        next_update=issued + 30 * DAY,
    )


def _replace(bundle: CollateralBundle, path: str, data: bytes) -> CollateralBundle:
    return CollateralBundle({**bundle.files, path: data})


# ---------------------------------------------------------------------------------------
# README: "report data is SHA-512(nonce || SubjectPublicKeyInfo of the appliance's TLS key)";
# docs/attest-policy.md: "The nonce is consumed first, so a refused attempt cannot be retried
# with the same nonce"; max_age_seconds bounds "the time since this verifier issued its nonce".


def test_evidence_made_for_one_nonce_is_refused_for_another(amd: SnpAuthority) -> None:
    """A relay that asked the genuine appliance for evidence under nonce A (its own request)
    answers the client's nonce B with it: refused, and B cannot be tried again."""
    verifier = Verifier(policy(snp=amd, measurement=MEASUREMENT), collateral=amd.collateral())
    spki = tls_spki()
    nonce_a, nonce_b = verifier.challenge(), verifier.challenge()
    for_a = amd.attester(MEASUREMENT).evidence(report_data(nonce_a, spki))
    refused = verifier.appraise(for_a, nonce=nonce_b, tls_spki_der=spki)
    assert refused.reason is Reason.WRONG_TLS_KEY, refused.detail
    for_b = amd.attester(MEASUREMENT).evidence(report_data(nonce_b, spki))
    again = verifier.appraise(for_b, nonce=nonce_b, tls_spki_der=spki)
    assert again.reason is Reason.REPLAYED_NONCE, again.detail
    assert verifier.appraise(for_a, nonce=nonce_a, tls_spki_der=spki).accepted  # the control


def test_evidence_for_the_right_nonce_but_another_tls_key_is_refused(intel: TdxAuthority) -> None:
    verifier = Verifier(policy(tdx=intel, measurement=MEASUREMENT), collateral=intel.collateral())
    genuine, relay = tls_spki(), tls_spki()
    nonce = verifier.challenge()
    quote = intel.quote(report_data(nonce, genuine), mrtd=MEASUREMENT)
    result = verifier.appraise(Evidence("tdx", quote), nonce=nonce, tls_spki_der=relay)
    assert result.reason is Reason.WRONG_TLS_KEY, result.detail


def test_evidence_older_than_max_age_is_refused(amd: SnpAuthority) -> None:
    now = [time.time()]
    verifier = Verifier(
        policy(snp=amd, measurement=MEASUREMENT, max_age=60),
        collateral=amd.collateral(),
        clock=lambda: now[0],
    )
    spki, nonce = tls_spki(), verifier.challenge()
    evidence = amd.attester(MEASUREMENT).evidence(report_data(nonce, spki))
    now[0] += 61  # the relay held the answer back for a minute
    result = verifier.appraise(evidence, nonce=nonce, tls_spki_der=spki)
    assert result.reason is Reason.TOO_OLD, result.detail


# ---------------------------------------------------------------------------------------
# docs/attest-policy.md: "every listed format is *required* evidence"; "software evidence is
# refused unless the client opted in; nothing in the kit or from the appliance can turn it on".


def test_software_evidence_with_allow_insecure_only_in_the_kit_is_refused() -> None:
    key = IdentityKey.from_seed(bytes(32))
    text = (
        "version = 1\nmax_age_seconds = 60\n[software]\nallow_insecure = true\n"
        f'trusted_keys = ["{key.verify_key_bytes.hex()}"]\n'
        f'[[software.measurements]]\nmeasurement = "{MEASUREMENT.hex()}"\n'
    )
    for allow, want in ((False, Reason.INSECURE_NOT_ALLOWED), (True, None)):
        verifier = Verifier(parse_policy(text), allow_insecure=allow)
        spki, nonce = tls_spki(), verifier.challenge()
        evidence = SoftwareAttester(key, MEASUREMENT).evidence(report_data(nonce, spki))
        result = verifier.appraise(evidence, nonce=nonce, tls_spki_der=spki)
        assert result.reason is want, result.detail
        assert result.insecure


def test_software_evidence_beside_genuine_hardware_is_refused_even_when_opted_in(
    amd: SnpAuthority,
) -> None:
    """A relay adds its own (software) piece next to the genuine SNP report: a format the
    policy does not name is refused, whatever the client allows."""
    key = IdentityKey.from_seed(bytes(32))
    verifier = Verifier(
        policy(snp=amd, measurement=MEASUREMENT),
        collateral=amd.collateral(),
        allow_insecure=True,
    )
    spki, nonce = tls_spki(), verifier.challenge()
    binding = report_data(nonce, spki)
    pieces = [
        amd.attester(MEASUREMENT).evidence(binding),
        SoftwareAttester(key, MEASUREMENT).evidence(binding),
    ]
    result = verifier.appraise(pieces, nonce=nonce, tls_spki_der=spki)
    assert result.reason is Reason.FORMAT_NOT_ALLOWED, result.detail


def test_gpu_evidence_alone_is_missing_the_cpu_tee(amd: SnpAuthority) -> None:
    verifier = Verifier(
        policy(snp=amd, measurement=MEASUREMENT, gpu_sdk_policy="{}"),
        collateral=amd.collateral(),
    )
    spki, nonce = tls_spki(), verifier.challenge()
    gpu = Evidence("nvidia-gpu", b'[{"certificate": "", "evidence": ""}]')
    result = verifier.appraise(gpu, nonce=nonce, tls_spki_der=spki)
    assert result.reason is Reason.MISSING_EVIDENCE, result.detail


# ---------------------------------------------------------------------------------------
# docs/attest-policy.md: "The policy is a TOML (or JSON, same structure) file"; "A policy
# only ever narrows what is accepted"; "a malformed policy is a PolicyError".


def _json_policy(amd: SnpAuthority, *, weak_after: str) -> str:
    strict = (
        f'{{"trusted_ark_sha256": ["{amd.ark_sha256}"], '
        '"min_tcb": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}, '
        f'"measurements": [{{"measurement": "{MEASUREMENT.hex()}"}}]}}'
    )
    weak = (
        f'{{"trusted_ark_sha256": ["{amd.ark_sha256}"], '
        '"min_tcb": {"bootloader": 0, "tee": 0, "snp": 0, "microcode": 0}, '
        '"required_claims": {"vmpl": 3}, '
        f'"measurements": [{{"measurement": "{"00" * 48}"}}]}}'
    )
    sections = {
        "section": f'"sev-snp": {strict}, "sev-snp": {weak}',
        "max_age": f'"max_age_seconds": 60, "sev-snp": {strict}, "max_age_seconds": 3600',
        "nested": f'"sev-snp": {strict[:-1]}, "min_tcb": {{"bootloader": 0, "tee": 0, '
        '"snp": 0, "microcode": 0}}',
    }
    head = '"version": 1, ' + ('"max_age_seconds": 60, ' if weak_after != "max_age" else "")
    return "{" + head + sections[weak_after] + "}"


@pytest.mark.parametrize("where", ["section", "max_age", "nested"])
def test_a_json_policy_naming_a_key_twice_is_refused(amd: SnpAuthority, where: str) -> None:
    """json.loads keeps the last copy: a reviewer reading the first (strict) section would
    approve a policy whose second copy accepts any image at TCB 0 from VMPL 3."""
    with pytest.raises(PolicyError, match="twice"):
        parse_policy(_json_policy(amd, weak_after=where), json_format=True)


@pytest.mark.parametrize("bad", ["-1", "true", '"18"', "1.5", str(2**32)])
def test_the_tcb_evaluation_floor_is_an_integer(intel: TdxAuthority, bad: str) -> None:
    text = policy_text(
        tdx=intel, measurement=MEASUREMENT, extra_tdx=f"min_tcb_evaluation_data_number = {bad}"
    )
    with pytest.raises(PolicyError, match="min_tcb_evaluation_data_number"):
        parse_policy(text)


# ---------------------------------------------------------------------------------------
# README: collateral "travels in the kit and in every Attest reply; the carrier adds no
# trust"; step 6: "Before the CRL's next update ... fetch again; the running appliance sends
# the new bundle with its next Attest reply"; docs/attest-tdx.md step 7: "After an Intel TCB
# recovery ... an UpToDate platform may become OutOfDate".


def test_a_revocation_shipped_by_the_appliance_after_the_kit_was_issued_is_enforced(
    intel: TdxAuthority,
) -> None:
    """BREAK (fixed): the kit's older PCK CRL (still current) won over the appliance's newer
    one that revokes the PCK certificate, so the revoked platform was accepted."""
    base = intel.collateral()
    kit = _replace(base, PCK_CRL["platform"], _pck_crl(intel, issued=_at(-3 * DAY), revoke=False))
    appliance = _replace(base, PCK_CRL["platform"], _pck_crl(intel, issued=_at(-DAY), revoke=True))
    result = _tdx(intel, kit=kit, appliance=appliance)
    assert result.reason is Reason.REVOKED, result.detail


def test_an_older_genuine_crl_cannot_roll_back_the_kits_newer_one(intel: TdxAuthority) -> None:
    """CRL rollback: the appliance sends Intel's list from before the revocation (genuine,
    inside its validity window); the kit's newer list, which revokes, is the one used."""
    base = intel.collateral()
    kit = _replace(base, PCK_CRL["platform"], _pck_crl(intel, issued=_at(-DAY), revoke=True))
    appliance = _replace(
        base, PCK_CRL["platform"], _pck_crl(intel, issued=_at(-3 * DAY), revoke=False)
    )
    result = _tdx(intel, kit=kit, appliance=appliance)
    assert result.reason is Reason.REVOKED, result.detail


def test_a_stale_kit_copy_does_not_hide_the_fresh_bundle_the_appliance_sends(
    intel: TdxAuthority, amd: SnpAuthority
) -> None:
    """BREAK (fixed): every client whose kit carried last month's bundle refused for ever
    once it went stale, although the operator refreshed the appliance's (README step 6)."""
    month_ago = time.time() - 35 * 86400
    stale_kit = intel.collateral(now=month_ago)
    assert _tdx(intel, kit=stale_kit, appliance=None).reason is Reason.COLLATERAL_INVALID
    assert _tdx(intel, kit=stale_kit, appliance=intel.collateral()).accepted
    stale_snp = amd.collateral(crl="stale")
    assert _snp(amd, kit=stale_snp, appliance=None).reason is Reason.COLLATERAL_INVALID
    assert _snp(amd, kit=stale_snp, appliance=amd.collateral()).accepted


def test_an_snp_revocation_shipped_by_the_appliance_is_enforced_and_cannot_be_rolled_back(
    amd: SnpAuthority,
) -> None:
    """BREAK (fixed) for AMD's ARK-signed CRL: the newer list revoking the ASK wins whichever
    side carries it."""
    old = amd.collateral(now=time.time() - 3 * 86400)  # issued 4 days ago, still current
    new = amd.collateral(revoked=["ask"])
    assert _snp(amd, kit=old, appliance=new).reason is Reason.REVOKED
    assert _snp(amd, kit=new, appliance=old).reason is Reason.REVOKED
    assert _snp(amd, kit=old, appliance=old).accepted  # the control: nothing revoked then


def _tcb_info(
    intel: TdxAuthority, *, evaluation: int, platform_status: str, issued_days_ago: float
) -> bytes:
    issued = _at(-datetime.timedelta(days=issued_days_ago))
    levels = [
        tcb_level(DEFAULT_SGX_TCB, DEFAULT_PCESVN, DEFAULT_TEE_TCB_SVN, platform_status),
        *intel.tcb_levels()[1:],
    ]
    doc = intel.tcb_info_document(
        issued=issued,
        next_update=issued + 30 * DAY,
        tcbEvaluationDataNumber=evaluation,
        tcbLevels=levels,
    )
    return intel.sign_document("tcbInfo", doc)


def _tcb_info_path(intel: TdxAuthority) -> str:
    return f"tdx/tcb_info/{intel.fmspc.hex()}.json"


def test_a_tcb_recovery_shipped_by_the_appliance_reaches_clients_with_older_kits(
    intel: TdxAuthority,
) -> None:
    """BREAK (fixed): after Intel's TCB recovery (evaluation number 18 rates this firmware
    OutOfDate) the kit's evaluation-17 TCB info still won and called it UpToDate."""
    path = _tcb_info_path(intel)
    kit = _replace(
        intel.collateral(),
        path,
        _tcb_info(intel, evaluation=17, platform_status="UpToDate", issued_days_ago=5),
    )
    appliance = _replace(
        intel.collateral(),
        path,
        _tcb_info(intel, evaluation=18, platform_status="OutOfDate", issued_days_ago=1),
    )
    result = _tdx(intel, kit=kit, appliance=appliance)
    assert result.reason is Reason.TCB_STATUS and "OutOfDate" in result.detail, result.detail
    assert _tdx(intel, kit=appliance, appliance=kit).reason is Reason.TCB_STATUS  # either side


def test_collateral_rollback_by_the_appliance_is_refused_by_the_evaluation_floor(
    intel: TdxAuthority,
) -> None:
    """BREAK (fixed by a policy key): with no copy in the kit, the appliance picks which
    genuine TCB info to send. Intel's pre-recovery document (evaluation 17, still inside its
    validity) rates the unpatched platform UpToDate; QVL would accept it too. A policy that
    names the recovery (``min_tcb_evaluation_data_number = 18``) refuses it."""
    old = _replace(
        intel.collateral(),
        _tcb_info_path(intel),
        _tcb_info(intel, evaluation=17, platform_status="UpToDate", issued_days_ago=20),
    )
    assert _tdx(intel, kit=None, appliance=old).accepted  # without the floor: inherent
    floor = "min_tcb_evaluation_data_number = 18"
    result = _tdx(intel, kit=None, appliance=old, extra=floor)
    assert result.reason is Reason.COLLATERAL_INVALID, result.detail
    assert "tcbEvaluationDataNumber 17" in result.detail
    identity = intel.sign_document(
        "enclaveIdentity",
        intel.qe_identity_document(
            issued=_at(-DAY), next_update=_at(29 * DAY), tcbEvaluationDataNumber=18
        ),
    )
    fresh = _replace(
        _replace(
            intel.collateral(),
            _tcb_info_path(intel),
            _tcb_info(intel, evaluation=18, platform_status="UpToDate", issued_days_ago=1),
        ),
        "tdx/qe_identity.json",
        identity,
    )
    assert _tdx(intel, kit=None, appliance=fresh, extra=floor).accepted
    # The QE identity is held to the same floor.
    stale_qe = _replace(fresh, "tdx/qe_identity.json", old.files["tdx/qe_identity.json"])
    result = _tdx(intel, kit=None, appliance=stale_qe, extra=floor)
    assert result.reason is Reason.COLLATERAL_INVALID and "QE identity" in result.detail


def test_a_forged_newer_document_from_the_appliance_is_never_chosen(intel: TdxAuthority) -> None:
    """The appliance ADDS a newer-looking TCB info (evaluation 99, UpToDate) signed by a key
    of its own: it does not verify, so the kit's genuine copy is used; alone it is refused."""
    forger = ec.generate_private_key(ec.SECP256R1())
    issued = _at(-datetime.timedelta(hours=1))
    forged_doc = intel.tcb_info_document(
        issued=issued, next_update=issued + 30 * DAY, tcbEvaluationDataNumber=99
    )
    forged = _replace(
        intel.collateral(),
        _tcb_info_path(intel),
        intel.sign_document("tcbInfo", forged_doc, forger),
    )
    kit = _replace(
        intel.collateral(),
        _tcb_info_path(intel),
        _tcb_info(intel, evaluation=17, platform_status="OutOfDate", issued_days_ago=2),
    )
    result = _tdx(intel, kit=kit, appliance=forged)
    assert result.reason is Reason.TCB_STATUS and "OutOfDate" in result.detail, result.detail
    alone = _tdx(intel, kit=None, appliance=forged)
    assert alone.reason is Reason.COLLATERAL_INVALID, alone.detail


# ---------------------------------------------------------------------------------------
# docs/attest-tdx.md step 6: TCB info and QE identity are signed "by Intel's TCB Signing
# cert, its chain ending in the pinned root"; step 5: CRLs "signed by their issuer".


def test_collateral_from_another_pinned_root_than_the_quote_is_refused(
    intel: TdxAuthority,
) -> None:
    """A policy pinning two Intel roots (a migration): the quote's PCK chain ends in one, the
    TCB info and its chain are genuine documents of the other. Refused: one root per quote."""
    other = TdxAuthority()
    text = policy_text(tdx=intel, measurement=MEASUREMENT).replace(
        f'trusted_root_sha256 = ["{intel.root_sha256}"]',
        f'trusted_root_sha256 = ["{intel.root_sha256}", "{other.root_sha256}"]',
    )
    theirs = other.collateral()
    for swapped in (
        {_tcb_info_path(intel): theirs.files[_tcb_info_path(intel)],
         TCB_INFO_CHAIN: theirs.files[TCB_INFO_CHAIN]},
        {PCK_CRL["platform"]: theirs.files[PCK_CRL["platform"]]},
        {ROOT_CA_CRL: theirs.files[ROOT_CA_CRL]},
    ):  # fmt: skip
        bundle = CollateralBundle({**intel.collateral().files, **swapped})
        verifier = Verifier(parse_policy(text), collateral=bundle)
        spki, nonce = tls_spki(), verifier.challenge()
        quote = intel.quote(report_data(nonce, spki), mrtd=MEASUREMENT)
        result = verifier.appraise(Evidence("tdx", quote), nonce=nonce, tls_spki_der=spki)
        assert result.reason is Reason.COLLATERAL_INVALID, (sorted(swapped), result.detail)


# ---------------------------------------------------------------------------------------
# docs/attest-snp.md: "the VCEK's hwID must equal the report's CHIP_ID".


def test_a_genuine_vcek_of_another_chip_is_refused(amd: SnpAuthority) -> None:
    """AMD's ASK did sign this VCEK, for the same key, TCB and product, but another chip:
    a certificate from one machine cannot vouch for a report claiming to be another."""
    other_chip = bytes(reversed(range(64)))
    foreign = amd.vcek_certificate(chip_id=other_chip)
    certs = (amd.ark.public_bytes(Encoding.DER), amd.ask.public_bytes(Encoding.DER),
             foreign.public_bytes(Encoding.DER))  # fmt: skip
    verifier = Verifier(policy(snp=amd, measurement=MEASUREMENT), collateral=amd.collateral())
    spki, nonce = tls_spki(), verifier.challenge()
    raw = amd.report(report_data(nonce, spki), measurement=MEASUREMENT)
    result = verifier.appraise(Evidence("sev-snp", raw, certs), nonce=nonce, tls_spki_der=spki)
    assert result.reason is Reason.BROKEN_CHAIN and "another chip" in result.detail


def test_the_bundle_keeps_every_copy_and_the_local_one_first(amd: SnpAuthority) -> None:
    """The mechanism behind the collateral fixes: merged() keeps both copies of an item."""
    path = crl_path(amd.product)
    kit, appliance = amd.collateral(now=time.time() - 86400), amd.collateral()
    merged = kit.merged(appliance)
    assert merged.get(path) == kit.files[path]
    assert merged.candidates(path) == (kit.files[path], appliance.files[path])
    assert kit.merged(kit).candidates(path) == (kit.files[path],)
    assert merged.files == {**appliance.files, **kit.files}


def test_a_symlink_planted_in_the_collateral_folder_is_not_shipped(tmp_path) -> None:
    """The appliance sends its collateral folder to every client. Whoever controls the
    storage under it (the host, outside the TEE) must not make that a file reader by
    planting a link to a file only the guest can read."""
    secret = tmp_path / "guest-only.txt"
    secret.write_bytes(b"guest secret")
    folder = tmp_path / "collateral" / "tdx"
    folder.mkdir(parents=True)
    (folder / "root_ca_crl.der").write_bytes(b"crl")
    (folder / "pck_crl_platform.der").symlink_to(secret)
    bundle = CollateralBundle.from_directory(tmp_path / "collateral")
    assert bundle.names() == ["tdx/root_ca_crl.der"]
    assert b"guest secret" not in bundle.to_bytes()
