"""Hypothesis fuzz of every SEV-SNP entry point: hostile bytes are refused, never a crash.

The review found 13 SNP crashes when the appraiser was called directly with fuzzed input
(an empty SubjectPublicKeyInfo raised ValueError, among others). Each test here feeds
random and mutated reports, certificates, CRLs and bundles to public functions of
``sevsnp`` and ``snp_collateral``, 10,000 examples per entry point: anything but
:class:`AppraisalFailure` escaping is a failure. Seeds are genuine items of a test AMD,
so mutations reach deep into the checks (a flipped extension byte still parses).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sealagg_testkit.snp_cases import BINDING, GOOD, section

from sealagg.attest import Evidence
from sealagg.attest.collateral import CollateralBundle
from sealagg.attest.errors import AppraisalFailure
from sealagg.attest.sevsnp import SevSnpAppraiser, TcbVersion, parse_report
from sealagg.attest.snp_abi import REPORT_BYTES, VCEK, VLEK
from sealagg.attest.snp_collateral import (
    OID_BLSPL,
    OID_CSPID,
    OID_HWID,
    OID_PRODUCT_NAME,
    EvidenceCertificates,
    bundled_endorsement,
    canonical_product,
    chain_path,
    check_crl,
    check_endorsement,
    crl_path,
    endorsement_key,
    fetch_plan,
    fetch_plan_for_report,
    kds_extensions,
    kds_hwid,
    load_evidence_certificates,
    vcek_path,
    verify_endorsement,
    vlek_path,
)
from sealagg.attest.testing import SnpAuthority

# cryptography warns about malformed name attributes in mutated certificates: expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
FUZZ = settings(
    max_examples=10_000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DER = Encoding.DER
NOW = time.time()
AMD = SnpAuthority()
TURIN_AMD = SnpAuthority(product="Turin")
SECTION = section(AMD)
BUNDLE = AMD.collateral()
REPORTS = [
    AMD.report(BINDING, measurement=GOOD),
    AMD.report(BINDING, measurement=GOOD, version=3),
    AMD.report(BINDING, measurement=GOOD, version=5, signer=VLEK),
    TURIN_AMD.report(BINDING, measurement=GOOD),
]
GENUINE = [c.public_bytes(DER) for c in (AMD.ark, AMD.ask, AMD.asvk, AMD.vcek, AMD.vlek)]
CRLS = [AMD.crl(), AMD.crl(revoked=["ask"]), AMD.crl(signer=VLEK)]


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _header_len(der: bytes, at: int) -> tuple[int, int]:
    """(header size, content length) of the DER element at ``at``."""
    first = der[at + 1]
    if first < 0x80:
        return 2, first
    size = first & 0x7F
    return 2 + size, int.from_bytes(der[at + 2 : at + 2 + size], "big")


def _resign(cert_der: bytes, tbs: bytes) -> bytes:
    """A certificate with TBSCertificate ``tbs``, validly signed by the test ASK."""
    outer_hdr, _ = _header_len(cert_der, 0)
    tbs_hdr, tbs_len = _header_len(cert_der, outer_hdr)
    after = cert_der[outer_hdr + tbs_hdr + tbs_len :]
    alg_hdr, alg_len = _header_len(after, 0)
    signature = AMD.sign_as("ask", tbs)
    body = tbs + after[: alg_hdr + alg_len] + b"\x03" + _der_len(len(signature) + 1) + b"\x00"
    body += signature
    return b"\x30" + _der_len(len(body)) + body


def _tbs_with(cert_der: bytes, old: bytes, new: bytes) -> bytes:
    outer_hdr, _ = _header_len(cert_der, 0)
    tbs_hdr, tbs_len = _header_len(cert_der, outer_hdr)
    inner = cert_der[outer_hdr + tbs_hdr : outer_hdr + tbs_hdr + tbs_len]
    assert inner.count(old) == 1
    inner = inner.replace(old, new)
    return b"\x30" + _der_len(len(inner)) + inner


def _empty_spki_vcek() -> bytes:
    """The reviewer's crash: a VCEK, validly signed by the ASK, whose SPKI holds no key."""
    der = AMD.vcek.public_bytes(DER)
    spki = AMD.vcek.public_key().public_bytes(DER, PublicFormat.SubjectPublicKeyInfo)
    algorithm = spki[2 : 2 + 2 + spki[3]]  # SEQUENCE { id-ecPublicKey, secp384r1 }
    empty = b"\x30" + _der_len(len(algorithm) + 3) + algorithm + b"\x03\x01\x00"
    return _resign(der, _tbs_with(der, spki, empty))


def _hostile_leaves() -> list[bytes]:
    """Validly signed leaves no honest AMD issues: wrong key types, malformed AMD extensions."""
    good = {e.oid: e.value.value for e in AMD.vcek.extensions}  # type: ignore[attr-defined]
    keys = [
        ec.generate_private_key(ec.SECP256R1()).public_key(),
        ed25519.Ed25519PrivateKey.generate().public_key(),
        rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key(),
    ]
    odd_extensions = [
        {**good, OID_BLSPL: b"\x02\x01\xff"},  # -1
        {**good, OID_BLSPL: b"\x02\x02\x01\x00"},  # 256
        {**good, OID_BLSPL: b"\x04\x01\x03"},  # not an INTEGER
        {**good, OID_PRODUCT_NAME: b"\x16\x03Mi\xff"},
        {**good, OID_PRODUCT_NAME: b"\x0c\x08Milan-B0"},
        {**good, OID_HWID: AMD.chip_id[:63]},
        {**good, OID_HWID: b""},
        {**good, OID_CSPID: b"\x16\x01x"},
    ]
    leaves = [AMD.issue_leaf(key, good) for key in keys]
    leaves += [AMD.issue_leaf(AMD.vcek_key.public_key(), ext) for ext in odd_extensions]
    return [_empty_spki_vcek(), *(c.public_bytes(DER) for c in leaves)]


HOSTILE = _hostile_leaves()
CERTS = GENUINE + HOSTILE


def _mutate(original: bytes, seed: int) -> bytes:
    """``original`` unchanged (a third of the time, so the deep checks are reached), with up
    to four flipped bytes, or also cut, extended or overwritten at one place; or noise."""
    rng = random.Random(seed)
    roll = rng.random()
    if roll < 0.05:
        return rng.randbytes(rng.randrange(0, 80))
    out = bytearray(original)
    if roll < 0.35 or not out:
        return bytes(out)
    for _ in range(rng.randrange(0, 5)):
        out[rng.randrange(len(out))] ^= rng.randrange(1, 256)
    at, edit = rng.randrange(len(out) + 1), rng.choice(["none", "none", "cut", "add", "over"])
    data = rng.randbytes(rng.randrange(1, 24))
    if edit == "cut":
        del out[at:]
    elif edit == "add":
        out[at:at] = data
    elif edit == "over":
        out[at : at + len(data)] = data
    return bytes(out)


def mutated(originals: list[bytes]) -> st.SearchStrategy[bytes]:
    """Genuine items, mutated by :func:`_mutate`: two draws per item keep Hypothesis cheap
    (its engine, not the code under test, dominates the run time of these tests)."""
    return st.builds(_mutate, st.sampled_from(originals), st.integers(0, 2**64))


def _refuses_or_returns(fn: Callable[[], object]) -> None:
    """Run ``fn``: returning or refusing is fine; any other exception fails the test."""
    with contextlib.suppress(AppraisalFailure):
        fn()


# ------------------------------------------------------------------ targeted regressions


def test_empty_spki_is_refused_everywhere() -> None:
    """The reviewer's case: a VCEK with an empty SubjectPublicKeyInfo raised ValueError."""
    blob = _empty_spki_vcek()
    cert = x509.load_der_x509_certificate(blob)
    with pytest.raises(ValueError):
        cert.public_key()  # what used to escape
    with pytest.raises(AppraisalFailure):
        endorsement_key(cert, VCEK)
    with pytest.raises(AppraisalFailure):
        SevSnpAppraiser().appraise(
            Evidence("sev-snp", REPORTS[0], (GENUINE[0], GENUINE[1], blob)),
            SECTION, NOW, binding=BINDING, collateral=BUNDLE,
        )  # fmt: skip


@pytest.mark.parametrize("index", range(len(HOSTILE)))
def test_validly_signed_hostile_leaves_are_refused(index: int) -> None:
    """Wrong key types and malformed AMD extensions, signed by the genuine ASK."""
    with pytest.raises(AppraisalFailure):
        SevSnpAppraiser().appraise(
            Evidence("sev-snp", REPORTS[0], (GENUINE[0], GENUINE[1], HOSTILE[index])),
            SECTION, NOW, binding=BINDING, collateral=BUNDLE,
        )  # fmt: skip


@pytest.mark.parametrize("now", [float("nan"), float("inf"), -1e300, 1e300, True, "now"])
def test_impossible_clock_is_refused(now: object) -> None:
    with pytest.raises(AppraisalFailure):
        check_crl(CRLS[0], AMD.ark, {"ASK": AMD.ask}, now, "crl")  # type: ignore[arg-type]
    with pytest.raises(AppraisalFailure):
        SevSnpAppraiser().appraise(
            Evidence("sev-snp", REPORTS[0], AMD.certificates()),
            SECTION, now, binding=BINDING, collateral=BUNDLE,  # type: ignore[arg-type]
        )  # fmt: skip


# -------------------------------------------------------------------------------- fuzz
# Hypothesis costs about a millisecond per example on this machine whatever the test does,
# so each test below drives several entry points with every example: each still gets its
# 10,000 examples, and the file stays within about a minute.


def _noise(size: int) -> st.SearchStrategy[bytes]:
    """``size`` random bytes from one draw (cheaper than ``st.binary`` for a whole report)."""
    return st.integers(0, 2**64).map(lambda seed: random.Random(seed).randbytes(size))


_TCBS = [AMD.tcb, TURIN_AMD.tcb, TcbVersion(0, 0, 0, 0), TcbVersion(255, 255, 255, 255, fmc=0)]
_POOL: list[object] = [
    None, "", "Milan", "genoa", "TURIN", "Turin", "Naples", "Milan-B0", VCEK, VLEK, "none",
    0, -1, 1 << 70, 3.5, b"Milan", ["Milan"], AMD.chip_id, AMD.chip_id[:8], bytes(63),
    AMD.chip_id.hex(), AMD.chip_id[:8].hex(), "zz" * 32, AMD.tcb.hex, TURIN_AMD.tcb.hex,
    "7308000000000003", "730800000000000", "g308000000000003", *_TCBS,
]  # fmt: skip


def _pick(rng: random.Random) -> object:
    """A value from the pool, or random text/hex/bytes."""
    kind = rng.random()
    if kind < 0.7:
        return rng.choice(_POOL)
    if kind < 0.8:
        return rng.randbytes(rng.randrange(0, 72))
    if kind < 0.9:
        return rng.randbytes(rng.randrange(0, 70)).hex()
    return "".join(chr(rng.randrange(0, 0x3000)) for _ in range(rng.randrange(0, 20)))


@FUZZ
@given(raw=st.one_of(mutated(REPORTS), _noise(REPORT_BYTES)), seed=st.integers(0, 2**64))
def test_fuzz_report_parser_paths_and_plans(raw: bytes, seed: int) -> None:
    """parse_report, fetch_plan_for_report, fetch_plan and every bundle-path function."""
    rng = random.Random(seed)
    product, chip, tcb, chip_bytes, tcb_obj, signer = (_pick(rng) for _ in range(6))
    _refuses_or_returns(lambda: parse_report(raw))
    _refuses_or_returns(lambda: fetch_plan_for_report(raw, product))  # type: ignore[arg-type]
    _refuses_or_returns(lambda: fetch_plan_for_report(raw, None))
    _refuses_or_returns(lambda: canonical_product(product))
    _refuses_or_returns(lambda: kds_hwid(product, chip_bytes))  # type: ignore[arg-type]
    _refuses_or_returns(lambda: vcek_path(product, chip_bytes, tcb_obj))  # type: ignore[arg-type]
    _refuses_or_returns(lambda: vlek_path(product, tcb_obj))  # type: ignore[arg-type]
    _refuses_or_returns(lambda: chain_path(product, signer))  # type: ignore[arg-type]
    _refuses_or_returns(lambda: crl_path(product, signer))  # type: ignore[arg-type]
    _refuses_or_returns(lambda: fetch_plan(product, chip, tcb))  # type: ignore[arg-type]


def _load(blob: bytes) -> x509.Certificate | None:
    try:
        return x509.load_der_x509_certificate(blob)
    except (ValueError, x509.InvalidVersion):
        return None


_BUNDLE_ITEMS = sorted(BUNDLE.files)


def _bundle(edits: list[tuple[int, bytes | None]]) -> CollateralBundle:
    files = dict(BUNDLE.files)
    for index, blob in edits:
        name = _BUNDLE_ITEMS[index % len(_BUNDLE_ITEMS)]
        if blob is None:
            files.pop(name, None)
        else:
            files[name] = blob
    return CollateralBundle(files)


_SEEDS = [*CERTS, *CRLS, *(BUNDLE.files[n] for n in _BUNDLE_ITEMS)]
BUNDLES = st.builds(
    _bundle, st.lists(st.tuples(st.integers(0, 99), st.none() | mutated(_SEEDS)), max_size=2)
)
_CLOCKS: list[object] = [NOW, NOW, NOW, 0.0, -1.0, 1e12, 1e300, float("nan"), float("inf"), 2**70]


@FUZZ
@given(
    blobs=st.lists(mutated(CERTS), max_size=3),
    crl=mutated(CRLS),
    bundle=BUNDLES,
    seed=st.integers(0, 2**64),
)
def test_fuzz_certificates_crls_and_chains(
    blobs: list[bytes], crl: bytes, bundle: CollateralBundle, seed: int
) -> None:
    """load_evidence_certificates, kds_extensions, endorsement_key, EvidenceCertificates.leaf,
    check_endorsement, check_crl, bundled_endorsement and verify_endorsement."""
    rng = random.Random(seed)
    ark = rng.choice([AMD.ark, AMD.ark, AMD.ask, AMD.vcek, TURIN_AMD.ark])
    signer = rng.choice([VCEK, VLEK, "none"])
    product = rng.choice(["Milan", "Milan", "Genoa", "Turin"])
    chip = AMD.chip_id if rng.random() < 0.8 else rng.randbytes(64)
    now = rng.choice(_CLOCKS)
    tcb = TURIN_AMD.tcb if product == "Turin" else AMD.tcb
    for blob in blobs:
        cert = _load(blob)
        if cert is None:
            continue
        _refuses_or_returns(lambda c=cert: endorsement_key(c, signer))
        _refuses_or_returns(lambda c=cert: EvidenceCertificates((c,), (c,), ()).leaf(signer))
        try:
            ext = kds_extensions(cert)
        except AppraisalFailure:
            continue
        _refuses_or_returns(
            lambda e=ext: check_endorsement(
                e, signer=signer, product=product, chip_id=chip, tcb=tcb
            )
        )
    _refuses_or_returns(lambda: check_crl(crl, ark, {"ASK": AMD.ask, "VCEK": AMD.vcek}, now))

    def chain() -> None:
        certs = load_evidence_certificates(blobs)
        leaf = certs.leaf(signer) or bundled_endorsement(bundle, product, signer, chip, tcb)
        verify_endorsement(
            leaf, signer=signer, product=product, evidence=certs, collateral=bundle,
            anchors=SECTION.trust_anchors, now=now,
        )  # fmt: skip

    _refuses_or_returns(chain)


@FUZZ
@given(
    raw=mutated(REPORTS),
    blobs=st.one_of(
        st.sampled_from([AMD.certificates(), AMD.certificates(VLEK), ()]),
        st.tuples(st.just(GENUINE[0]), st.just(GENUINE[1]), mutated(CERTS)),
        st.lists(mutated(CERTS), max_size=3),
    ),
    bundle=BUNDLES,
)
def test_fuzz_appraise(raw: bytes, blobs: tuple[bytes, ...], bundle: CollateralBundle) -> None:
    """SevSnpAppraiser.appraise, as the review called it: directly, with hostile everything."""
    appraiser = SevSnpAppraiser()
    _refuses_or_returns(
        lambda: appraiser.appraise(
            Evidence("sev-snp", raw, tuple(blobs)), SECTION, NOW, binding=BINDING, collateral=bundle
        )
    )
