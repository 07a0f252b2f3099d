"""Fuzz of every public appraisal entry point at the verifier level (issue 18).

"Every appraiser returns a refusal, never raises": 10,000 examples per entry point, and no
exception other than AppraisalFailure (appraisers, _x509, the collateral bundle) or
PolicyError (policy parsing) may escape; ``Verifier.appraise`` raises nothing at all.

Inputs are hypothesis byte strings read as *edit scripts*: random bytes, or genuine evidence,
certificates and collateral from the test authorities with bytes flipped, cut or dropped,
so the parsers get past their first length check. One example drives every entry point
(each format through the verifier, the software and NVIDIA appraisers directly, every _x509
function on the derived certificates): each entry point gets its 10,000 examples while the
file stays near a minute on a small shared machine (hypothesis itself costs ~1 ms per
example there). The TDX and SNP parsers are fuzzed on their own in their modules' tests.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import time
import tomllib
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sealagg_testkit.attest_evidence import collateral_for, policy_text, tls_spki

from sealagg.attest import (
    FORMATS,
    AttestationResult,
    Evidence,
    Policy,
    PolicyError,
    SoftwareAttester,
    Verifier,
    _x509,
    parse_policy,
    report_data,
)
from sealagg.attest.collateral import CollateralBundle
from sealagg.attest.errors import AppraisalFailure, Reason
from sealagg.attest.evidence import NVIDIA_GPU, SEV_SNP, SOFTWARE, TDX
from sealagg.attest.nvidia import NvidiaGpuAppraiser, parse_evidence_list
from sealagg.attest.policy import (
    CPU_TEE_FORMATS,
    MAX_AGE_LIMIT_SECONDS,
    TDX_TCB_STATUSES,
    policy_from_dict,
)
from sealagg.attest.software import SoftwareAppraiser
from sealagg.attest.testing import SnpAuthority, TdxAuthority
from sealagg.crypto import IdentityKey

FUZZ = settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
GOOD = bytes.fromhex("33" * 48)
GPU_SDK_POLICY = '{"version": "3.0"}'
GPU_EVIDENCE = b'[{"evidence": "00", "certificate": "00", "arch": "HOPPER"}]'


@functools.cache
def world() -> dict[str, Any]:
    """Genuine material, made once: authorities, evidence, policy texts, collateral."""
    amd, intel, sw_key = SnpAuthority(), TdxAuthority(), IdentityKey.generate()
    rd = report_data(bytes(32), tls_spki())  # bound to a nonce no verifier issued
    sw_text = (
        "version = 1\nmax_age_seconds = 60\n[software]\n"
        f'trusted_keys = ["{sw_key.verify_key_bytes.hex()}"]\n'
        f'[[software.measurements]]\nmeasurement = "{GOOD.hex()}"\n'
    )
    texts = {
        SEV_SNP: policy_text(snp=amd, measurement=GOOD),
        TDX: policy_text(tdx=intel, measurement=GOOD),
        SOFTWARE: sw_text,
        NVIDIA_GPU: policy_text(snp=amd, measurement=GOOD, gpu_sdk_policy=GPU_SDK_POLICY),
    }
    snp_bundle = collateral_for(amd) or CollateralBundle.empty()
    tdx_bundle = collateral_for(intel) or CollateralBundle.empty()
    certs = [c.public_bytes(Encoding.DER) for c in (amd.ark, amd.ask, amd.vcek)]
    certs += [c.public_bytes(Encoding.DER) for c in (intel.root, intel.ca, intel.pck)]
    return {
        "evidence": {
            SEV_SNP: amd.attester(GOOD).evidence(rd),
            TDX: intel.attester(GOOD).evidence(rd),
            SOFTWARE: SoftwareAttester(sw_key, GOOD).evidence(rd),
            NVIDIA_GPU: Evidence(NVIDIA_GPU, GPU_EVIDENCE),
        },
        "texts": texts,
        "policies": {fmt: parse_policy(text) for fmt, text in texts.items()},
        "bundles": {SEV_SNP: snp_bundle, TDX: tdx_bundle, NVIDIA_GPU: snp_bundle},
        "certs": certs,
        "parsed_certs": [x509.load_der_x509_certificate(c) for c in certs],
        "pem_chain": intel.pem_chain(),
        "spki": tls_spki(),
    }


# --- edit scripts: bytes from hypothesis -> hostile inputs ---------------------------------------


def derive(genuine: bytes, script: bytes) -> bytes:
    """Random bytes, the genuine blob, or the genuine blob with flips / a cut / an extension."""
    if not script:
        return genuine
    mode, body = script[0] % 5, script[1:]
    if mode == 0:
        return body
    if mode == 1 or not genuine:
        return genuine
    out = bytearray(genuine)
    for i in range(0, len(body) - 2, 3):
        out[int.from_bytes(body[i : i + 2], "little") % len(out)] ^= body[i + 2] or 1
    if mode == 3:
        out = out[: int.from_bytes(body[:2].ljust(2, b"\0"), "little") % (len(out) + 1)]
    if mode == 4:
        out += body
    return bytes(out)


def derive_certs(genuine: tuple[bytes, ...], script: bytes) -> tuple[bytes, ...]:
    """The genuine tuple; one certificate replaced by a mutated one; random tuples; drops."""
    pool = [*world()["certs"], world()["pem_chain"]]
    if not script:
        return genuine
    mode, body = script[0] % 4, script[1:]
    if mode == 0 or not genuine:
        pick = pool[body[0] % len(pool)] if body else b""
        return tuple(derive(pick, body[1:]) for _ in range(script[0] % 4))
    out = list(genuine)
    at = (body[0] if body else 0) % len(out)
    if mode == 1:
        out[at] = derive(pool[(body[1] if len(body) > 1 else 0) % len(pool)], body[2:])
    elif mode == 2:
        out[at] = derive(out[at], body[1:])
    else:
        del out[at]
    return tuple(out)


def derive_collateral(genuine: CollateralBundle, script: bytes) -> CollateralBundle | None:
    """None, the genuine bundle, one item mutated or dropped, random items, or wire bytes."""
    if not script:
        return genuine
    mode, body = script[0] % 5, script[1:]
    names = sorted(genuine.files)
    if mode == 0:
        return None
    if mode == 1:  # from the wire: a refusal is fine, anything else escapes
        try:
            return CollateralBundle.from_bytes(body)
        except AppraisalFailure:
            return None
    if not names or mode == 4:
        name = (names or ["tdx/qe_identity.json"])[(body[0] if body else 0) % max(len(names), 1)]
        return CollateralBundle({**genuine.files, name: body[1:]})
    files = dict(genuine.files)
    name = names[(body[0] if body else 0) % len(names)]
    if mode == 2:
        files[name] = derive(files[name], body[1:])
    else:
        del files[name]
    return CollateralBundle(files)


# --- every appraisal entry point, one example ------------------------------------------------


def _refused(fmt: str, pieces: Any, collateral: CollateralBundle | None) -> AttestationResult:
    w = world()
    verifier = Verifier(w["policies"][fmt], collateral=w["bundles"].get(fmt), allow_insecure=True)
    nonce = verifier.challenge()
    spki = w["spki"]
    result = verifier.appraise(pieces, nonce=nonce, tls_spki_der=spki, collateral=collateral)
    assert isinstance(result, AttestationResult)
    # Everything here is bound to a nonce this verifier never issued: nothing may pass.
    assert not result.accepted and isinstance(result.reason, Reason), result
    return result


def _refusal_only(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except AppraisalFailure as failure:
        assert isinstance(failure.reason, Reason)
        return None


def _x509_entry_points(blob: bytes, now: float, signature: bytes) -> None:
    """Every public _x509 function on certificates loaded from ``blob``."""
    genuine = world()["parsed_certs"]
    other = genuine[len(blob) % len(genuine)]
    cert = _refusal_only(lambda: _x509.load_certificate(blob, "fuzzed certificate"))
    chain = _refusal_only(lambda: _x509.load_pem_chain(blob, "fuzzed chain")) or []
    loaded = [c for c in [cert, *chain] if c is not None][:3]
    for c in loaded:
        pins = [_refusal_only(lambda c=c: _x509.fingerprint(c)) or b""]
        _refusal_only(lambda c=c: _x509.verify_issued_by(c, c, "self"))
        _refusal_only(lambda c=c: _x509.verify_issued_by(c, other, "by genuine"))
        _refusal_only(lambda c=c: _x509.verify_issued_by(other, c, "issuing genuine"))
        _refusal_only(lambda c=c: _x509.check_validity(c, now, "fuzzed"))
        _refusal_only(lambda c=c, p=pins: _x509.verify_chain([c, other], ["r", "l"], p, now))
        _refusal_only(lambda c=c, p=pins: _x509.verify_chain([other, c], ["r", "l"], p, now))
        key = _public_key_or_none(c)
        _refusal_only(
            lambda k=key: _x509.verify_ecdsa(k, signature, blob, hashes.SHA384(), "fuzzed")
        )
    _refusal_only(lambda: _x509.verify_chain(loaded, ["a", "b", "c"][: len(loaded)], [], now))
    _refusal_only(
        lambda: _x509.verify_ecdsa(other.public_key(), signature, blob, hashes.SHA256(), "sig")
    )


def _public_key_or_none(cert: x509.Certificate) -> object:
    """``cryptography``'s own ``public_key()`` may raise on a hostile certificate: not ours."""
    try:
        return cert.public_key()
    except Exception:
        return None


def _evidence_set(blob: bytes, script: bytes) -> None:
    """A random set of pieces (formats, duplicates, strangers), nonce, TLS key and opt-in."""
    w = world()
    policy_format = FORMATS[script[0] % len(FORMATS)] if script else SEV_SNP
    verifier = Verifier(w["policies"][policy_format], allow_insecure=len(script) % 2 == 1)
    names = [*FORMATS, "", "sgx", "SEV-SNP"]
    pieces: Any = [
        Evidence(names[b % len(names)], blob[i * 8 : i * 8 + b % 9])
        for i, b in enumerate(script[1:5])
    ]
    if len(pieces) == 1 and len(script) % 3 == 0:
        pieces = pieces[0]
    kind = len(blob) % 5
    nonce: Any = [verifier.challenge(), bytes(32), None, b"", "nonce"][kind]
    spki: Any = [w["spki"], b"", blob[:3], None, "spki"][len(script) % 5]
    result = verifier.appraise(pieces, nonce=nonce, tls_spki_der=spki)
    assert not result.accepted and isinstance(result.reason, Reason)


@FUZZ
@given(
    blob=st.binary(max_size=1400),
    cert_script=st.binary(max_size=48),
    collateral_script=st.binary(max_size=48),
)
def test_fuzz_every_appraisal_entry_point(
    blob: bytes, cert_script: bytes, collateral_script: bytes
) -> None:
    """Verifier.appraise per format and on random sets, the software and NVIDIA appraisers,
    and every _x509 function."""
    w = world()
    evidence = w["evidence"]
    for fmt in (SEV_SNP, TDX):
        genuine = evidence[fmt]
        data = derive(genuine.data, blob)
        certs = derive_certs(genuine.certificates, cert_script)
        bundle = derive_collateral(w["bundles"][fmt], collateral_script)
        _refused(fmt, Evidence(fmt, data, certs), bundle)

    software = derive(evidence[SOFTWARE].data, blob)
    _refused(SOFTWARE, Evidence(SOFTWARE, software), None)
    section = w["policies"][SOFTWARE].section(SOFTWARE)
    appraiser = SoftwareAppraiser()
    claims = _refusal_only(
        lambda: appraiser.appraise(
            Evidence(SOFTWARE, software),
            section,
            time.time(),
            binding=blob[:64],
            collateral=CollateralBundle.empty(),
        )
    )
    if claims is not None:
        _refusal_only(lambda: appraiser.check_tcb(claims, section))

    gpu = derive(GPU_EVIDENCE, blob) if blob[:1] != b"[" else blob  # and deep nesting
    # Through the verifier the GPU piece is judged only after the CPU TEE's passed (that needs
    # fresh hardware evidence): here the set rules; the appraiser itself is called below.
    _refused(NVIDIA_GPU, [Evidence(SEV_SNP, blob), Evidence(NVIDIA_GPU, gpu)], None)
    gpu_section = w["policies"][NVIDIA_GPU].section(NVIDIA_GPU)
    _refusal_only(lambda: parse_evidence_list(gpu))
    _refusal_only(
        lambda: NvidiaGpuAppraiser().appraise(
            Evidence(NVIDIA_GPU, gpu),
            gpu_section,
            time.time(),
            binding=blob[:64],
            collateral=CollateralBundle.empty(),
        )
    )

    _evidence_set(blob, cert_script)

    certs = derive_certs(evidence[SEV_SNP].certificates, cert_script) or (blob,)
    now = int.from_bytes(collateral_script[:9] or b"\0", "little", signed=True) * 1.0
    for cert in certs[:2]:
        _x509_entry_points(cert, now if collateral_script[:1] != b"\0" else math.inf, blob[:104])


# --- policy parsing ----------------------------------------------------------------------------

_HOSTILE_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 60, 255, 256, 3600, 3601, 2**70, math.inf, -math.inf, math.nan,
    0.5, "", "zz", "00" * 16, "00" * 32, "33" * 48, "ab" * 48, "UpToDate", "Revoked", "OutOfDate",
    GPU_SDK_POLICY, "{}", [], {}, [1], ["UpToDate"], ["Revoked"], ["00" * 32], {"a": 1},
    {"bootloader": 1, "tee": 1, "snp": 1, "microcode": 1}, {"snp": 1}, {"vmpl": 3},
    {"vmpl": "0"}, [{"measurement": "33" * 48}], [{"mrtd": "33" * 48}], [{}], [[]],
]  # fmt: skip


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def edit_policy(base: dict[str, Any], script: bytes) -> dict[str, Any]:
    """Each 3 script bytes replace, delete or add one value somewhere in a genuine policy."""
    doc = copy.deepcopy(base)
    keys = sorted({k for p in _paths(base) for k in p if isinstance(k, str)} | set(FORMATS))
    for i in range(0, len(script) - 2, 3):
        where, what, how = script[i], script[i + 1], script[i + 2] % 3
        path = _paths(doc)[where % len(_paths(doc))]
        target: Any = doc
        for step in path:
            target = target[step]
        value = copy.deepcopy(_HOSTILE_VALUES[what % len(_HOSTILE_VALUES)])
        if how == 0 and path:
            parent: Any = doc
            for step in path[:-1]:
                parent = parent[step]
            del parent[path[-1]]
        elif how == 1 and path:
            parent = doc
            for step in path[:-1]:
                parent = parent[step]
            parent[path[-1]] = value
        elif isinstance(target, dict):
            target[keys[what % len(keys)]] = value
        elif isinstance(target, list):
            target.append(value)
    return doc


def _narrow(p: Policy) -> None:
    """What every policy that parses must guarantee (the issue's widening cases)."""
    assert math.isfinite(p.max_age_seconds) and 0 < p.max_age_seconds <= MAX_AGE_LIMIT_SECONDS
    present = set(p.formats)
    assert len(present & set(CPU_TEE_FORMATS)) <= 1
    assert NVIDIA_GPU not in present or present & set(CPU_TEE_FORMATS)
    assert SOFTWARE not in present or present == {SOFTWARE}
    snp, tdx = p.section(SEV_SNP), p.section(TDX)
    if snp is not None:
        assert set(snp.options["min_tcb"]) >= {"bootloader", "tee", "snp", "microcode"}
        assert snp.required_claims["vmpl"] in range(4)
    if tdx is not None:
        assert len(tdx.options["min_tee_tcb_svn"]) == 32
        assert set(tdx.options["accepted_tcb_status"]) <= set(TDX_TCB_STATUSES)
        for entry in tdx.measurements:
            assert {"mrtd", "rtmr0", "rtmr1", "rtmr2"} <= set(entry)
    for fmt, section in p.formats.items():
        assert fmt == NVIDIA_GPU or section.measurements


@FUZZ
@given(script=st.binary(max_size=30), text=st.text(max_size=120))
def test_fuzz_policy_parsing(script: bytes, text: str) -> None:
    """Mutated genuine policies, random TOML and JSON: a narrow Policy or a PolicyError."""
    texts = world()["texts"]
    base = tomllib.loads(list(texts.values())[script[0] % len(texts)] if script else "")
    doc = edit_policy(base, script[1:])
    attempts: list[Callable[[], Policy]] = [
        lambda: policy_from_dict(doc),
        lambda: parse_policy(json.dumps(doc), json_format=True),
        lambda: parse_policy(text),
        lambda: parse_policy(text, json_format=True),
    ]
    for attempt in attempts:
        with contextlib.suppress(PolicyError):
            _narrow(attempt())
