"""Fuzz every public TDX entry point: hostile bytes and JSON refuse, never crash.

Issue 18: the appraisers let exceptions escape when called directly with fuzzed input. Each
entry point here gets 10,000 examples (hypothesis) mixing random input with mutations of a
valid quote and of Intel-signed collateral; mutated JSON is re-signed with the test Intel's
key, so the field parsers behind the signature check are reached too. Only AppraisalFailure
may escape.

Hypothesis draws one seed per example and a seeded ``random.Random`` builds the input: the
engine's per-draw cost would otherwise dominate (10,000 examples x 11 entry points must stay
well under a minute on a shared 2-core machine). A failure prints the seed, which replays it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import random
import struct
import time
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sealagg_testkit.attest_evidence import policy

from sealagg.attest import Evidence
from sealagg.attest.collateral import CollateralBundle
from sealagg.attest.errors import AppraisalFailure
from sealagg.attest.tdx import SIGNED_BYTES, TdxAppraiser, parse_quote, quote_fmspc
from sealagg.attest.tdx_collateral import (
    QE_IDENTITY,
    QE_IDENTITY_CHAIN,
    TCB_INFO_CHAIN,
    evaluate,
    fetch_plan,
    load_crl,
    load_qe_identity,
    load_tcb_info,
)
from sealagg.attest.tdx_pck import SGX_EXTENSION_OID, parse_qe_report, parse_sgx_extensions, pck_tcb
from sealagg.attest.testing_tdx import QE_ATTRIBUTES, TdxAuthority

#: Mutated certificates with a zero serial parse with a deprecation warning; that is the point.
pytestmark = pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
FUZZ = settings(
    max_examples=10_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
SEEDS = st.integers(min_value=0, max_value=2**64 - 1)
MRTD = bytes.fromhex("44" * 48)
NOW = time.time()


class World:
    """One test Intel, a genuine quote and its collateral, built once for every example."""

    def __init__(self) -> None:
        self.intel = TdxAuthority()
        self.anchors = [bytes.fromhex(self.intel.root_sha256)]
        self.bundle = self.intel.collateral(now=NOW)
        self.quote = self.intel.quote(bytes(64), mrtd=MRTD)
        self.parsed = parse_quote(self.quote)
        self.tcb_info_path = next(n for n in self.bundle.files if n.startswith("tdx/tcb_info/"))
        self.tcb_doc = json.loads(self.bundle.files[self.tcb_info_path])["tcbInfo"]
        self.qe_doc = json.loads(self.bundle.files[QE_IDENTITY])["enclaveIdentity"]
        self.crls = sorted(n for n in self.bundle.files if n.endswith(".der"))
        self.pck_der = self.intel.pck.public_bytes(Encoding.DER)
        sgx = self.intel.pck.extensions.get_extension_for_oid(
            x509.ObjectIdentifier(SGX_EXTENSION_OID)
        ).value
        self.sgx_extension: bytes = sgx.value  # type: ignore[attr-defined]
        section = policy(tdx=self.intel, measurement=MRTD).section("tdx")
        assert section is not None
        self.section = section
        self.chain = [self.intel.root, self.intel.ca, self.intel.pck]


@functools.cache
def world() -> World:
    return World()


# ------------------------------------------------------------------------------ generators

_BOUNDARY_U32 = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF)


def mutate(rng: random.Random, valid: bytes) -> bytes:
    """Random bytes (1 in 6), or ``valid`` with a few edits: overwrite, bit flip, delete,
    insert, a boundary length written over a field, and perhaps a truncation."""
    mode = rng.randrange(6)
    if mode == 0:
        return rng.randbytes(rng.randrange(len(valid) + 64))
    out = bytearray(valid)
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(len(out) + 1)
        op = rng.randrange(5)
        if op == 0 and pos < len(out):
            out[pos] = rng.randrange(256)
        elif op == 1 and pos < len(out):
            out[pos] ^= 1 << rng.randrange(8)
        elif op == 2:
            del out[pos : pos + rng.randint(1, 32)]
        elif op == 3:
            out[pos:pos] = rng.randbytes(rng.randint(1, 8))
        else:
            fmt = rng.choice(["<H", "<I", ">H", ">I", "B"])
            value = rng.choice(_BOUNDARY_U32) & (0xFF if fmt == "B" else 0xFFFFFFFF)
            value &= 0xFFFF if fmt[-1] == "H" else 0xFFFFFFFF
            packed = struct.pack(fmt, value)
            out[pos : pos + len(packed)] = packed
    if mode == 5:
        del out[rng.randrange(len(out) + 1) :]
    return bytes(out)


_STRINGS = (
    "",
    "UpToDate",
    "OutOfDate",
    "Revoked",
    "TDX",
    "TD_QE",
    "TDX_03",
    "2024-03-13T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00+14:00",
    "2024-13-45T99:99:99Z",
    "2024-03-13T00:00:00",
    "00" * 48,
    "ff" * 16,
    "zz",
    "\ud800",
    "é" * 40,
)
_NUMBERS = (0, 1, -1, 255, 256, 65535, 65536, 2**32, 2**64, -(2**70), 0.5, 1e308)


def json_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rng.choice((None, True, False, None, True, False, float("nan")))
    if kind == 1:
        return rng.choice(_NUMBERS)
    if kind == 2:
        return rng.choice(_STRINGS)
    if kind == 3:
        return "".join(chr(rng.randrange(0x20, 0x250)) for _ in range(rng.randrange(12)))
    if kind == 4:
        return rng.randbytes(rng.randrange(70)).hex()
    if kind == 5:
        return [json_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    if kind == 6:
        return [{"svn": json_value(rng, depth + 1)} for _ in range(rng.choice((0, 15, 16, 17)))]
    return {rng.choice(_STRINGS): json_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def edit(rng: random.Random, doc: dict) -> dict:
    """``doc`` with one to three members somewhere inside it replaced, removed or added."""
    out = json.loads(json.dumps(doc))
    for _ in range(rng.randint(1, 3)):
        target: object = out
        for _ in range(rng.randrange(5)):  # walk down a random path
            children = list(target.values()) if isinstance(target, dict) else target
            children = [c for c in children if isinstance(c, dict | list)] if children else []
            if not children:
                break
            target = rng.choice(children)
        if isinstance(target, dict):
            key = rng.choice([*target, rng.choice(_STRINGS)]) if target else "x"
            if rng.randrange(3) == 0:
                target.pop(key, None)
            else:
                target[key] = json_value(rng)
        elif isinstance(target, list) and target:
            index = rng.randrange(len(target))
            if rng.randrange(2):
                del target[index]
            else:
                target[index] = json_value(rng)
    return out


def signed_body(rng: random.Random, key: str, doc: dict, valid: bytes) -> bytes:
    """Intel-signed edits of ``doc`` (half), raw mutations of the body, or odd envelopes."""
    choice = rng.randrange(4)
    if choice < 2:
        return world().intel.sign_document(key, edit(rng, doc))
    if choice == 2:
        return mutate(rng, valid)
    envelope = {key: json_value(rng), "signature": rng.choice(["00" * 64, "zz", 5, ""])}
    return json.dumps(envelope).encode()


def refuses_or_returns(call: Callable[[], object]) -> None:
    with contextlib.suppress(AppraisalFailure):
        call()


# --------------------------------------------------------------------------- the quote


def resigned(rng: random.Random) -> bytes:
    """A quote whose header/body bytes and QE report fields are fuzzed, then signed properly:
    the checks after the signatures (collateral, QE identity, TCB levels) see hostile values."""
    w = world()
    signed = bytearray(w.quote[:SIGNED_BYTES])
    for _ in range(rng.randint(0, 6)):
        pos = rng.randrange(2, SIGNED_BYTES)  # keep the version: the rest is what QVL reads
        signed[pos] = rng.choice((0, 1, 0xFF, rng.randrange(256)))
    qe = {
        "qe_isvsvn": rng.choice((0, 3, 4, 0xFFFF)),
        "qe_isvprodid": rng.choice((2, 2, 99)),
        "qe_debug": rng.randrange(8) == 0,
        "qe_miscselect": rng.choice((bytes(4), rng.randbytes(4))),
        "qe_attributes": rng.choice((QE_ATTRIBUTES, rng.randbytes(16))),
    }
    return bytes(signed) + w.intel.signature_data(bytes(signed), **qe)


@FUZZ
@given(SEEDS)
def test_the_quote_parsers_and_the_appraiser_never_crash(seed: int) -> None:
    w, rng = world(), random.Random(seed)
    raw = resigned(rng) if rng.randrange(3) == 0 else mutate(rng, w.quote)
    appraiser = TdxAppraiser()

    def appraise() -> None:
        claims = appraiser.appraise(
            Evidence("tdx", raw), w.section, NOW, binding=bytes(64), collateral=w.bundle
        )
        appraiser.check_tcb(claims, w.section)

    refuses_or_returns(lambda: parse_quote(raw))
    refuses_or_returns(lambda: quote_fmspc(raw))
    refuses_or_returns(appraise)
    _fuzz_pck_parsers(w, rng)


def _fuzz_pck_parsers(w: World, rng: random.Random) -> None:
    refuses_or_returns(lambda: parse_sgx_extensions(mutate(rng, w.sgx_extension)))
    refuses_or_returns(lambda: parse_qe_report(mutate(rng, w.parsed.qe_report)))
    try:
        cert = x509.load_der_x509_certificate(mutate(rng, w.pck_der))
    except (ValueError, x509.InvalidVersion):  # not a certificate: nothing for pck_tcb
        return
    refuses_or_returns(lambda: pck_tcb(cert))


# ---------------------------------------------------------------------- the collateral


@FUZZ
@given(SEEDS)
def test_every_collateral_entry_point_never_crashes(seed: int) -> None:
    w, rng = world(), random.Random(seed)
    fmspc = rng.choice([rng.randbytes(6).hex(), str(json_value(rng)), rng.randbytes(7).hex()])
    refuses_or_returns(lambda: fetch_plan(fmspc))
    tcb_info = signed_body(rng, "tcbInfo", w.tcb_doc, w.bundle.files[w.tcb_info_path])
    chain = w.bundle.files[TCB_INFO_CHAIN]
    tcb_chain = chain if rng.randrange(4) else mutate(rng, chain)
    refuses_or_returns(lambda: load_tcb_info(tcb_info, tcb_chain, w.anchors, NOW))
    identity = signed_body(rng, "enclaveIdentity", w.qe_doc, w.bundle.files[QE_IDENTITY])
    chain = w.bundle.files[QE_IDENTITY_CHAIN]
    qe_chain = chain if rng.randrange(4) else mutate(rng, chain)
    refuses_or_returns(lambda: load_qe_identity(identity, qe_chain, w.anchors, NOW))
    crl = mutate(rng, w.bundle.files[rng.choice(w.crls)])
    if rng.randrange(4) == 0:
        crl = b"-----BEGIN X509 CRL-----\n" + crl + b"\n-----END X509 CRL-----\n"
    issuer = rng.choice([w.intel.root, w.intel.ca])
    refuses_or_returns(lambda: load_crl(crl, issuer, NOW, "a CRL"))
    _fuzz_evaluate(w, rng)


def _fuzz_evaluate(w: World, rng: random.Random) -> None:
    files = dict(w.bundle.files)
    choice = rng.randrange(4)
    if choice == 0:
        del files[rng.choice(sorted(files))]
    elif choice == 1:
        name = rng.choice(sorted(files))
        files[name] = mutate(rng, files[name])
    elif choice == 2:
        files[w.tcb_info_path] = w.intel.sign_document("tcbInfo", edit(rng, w.tcb_doc))
        files[QE_IDENTITY] = w.intel.sign_document("enclaveIdentity", edit(rng, w.qe_doc))
    q = w.parsed
    report = q.qe_report if rng.randrange(2) else _resize(mutate(rng, q.qe_report), 384, rng)
    tee = q.body["tee_tcb_svn"] if rng.randrange(2) else rng.randbytes(16)
    seam = q.body["mrsignerseam"] if rng.randrange(4) else rng.randbytes(48)
    attributes = q.body["seam_attributes"] if rng.randrange(4) else rng.randbytes(8)
    refuses_or_returns(
        lambda: evaluate(
            CollateralBundle(files),
            pck_chain=w.chain,
            qe_report=report,
            tee_tcb_svn=tee,
            mrsignerseam=seam,
            seam_attributes=attributes,
            anchors=w.anchors,
            now=NOW,
        )
    )


def _resize(blob: bytes, size: int, rng: random.Random) -> bytes:
    """Mostly the right size (so the checks behind the length check are reached)."""
    if rng.randrange(4) == 0:
        return blob
    return (blob + bytes(size))[:size]
