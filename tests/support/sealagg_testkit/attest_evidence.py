"""Shared builders for the attest tests: policies and a fresh TLS key's SPKI."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec

from sealagg.attest import Policy, parse_policy
from sealagg.attest.testing import SnpAuthority, TdxAuthority, spki_der


def tls_spki() -> bytes:
    return spki_der(ec.generate_private_key(ec.SECP256R1()).public_key())


def policy_text(
    *,
    snp: SnpAuthority | None = None,
    tdx: TdxAuthority | None = None,
    measurement: bytes = b"",
    max_age: float = 60,
    extra_snp: str = "",
    extra_tdx: str = "",
) -> str:
    text = f"version = 1\nmax_age_seconds = {max_age}\n"
    if snp is not None:
        text += f'[sev-snp]\ntrusted_ark_sha256 = ["{snp.ark_sha256}"]\n{extra_snp}\n'
        text += f'[[sev-snp.measurements]]\nmeasurement = "{measurement.hex()}"\n'
    if tdx is not None:
        text += f'[tdx]\ntrusted_root_sha256 = ["{tdx.root_sha256}"]\n{extra_tdx}\n'
        text += f'[[tdx.measurements]]\nmrtd = "{measurement.hex()}"\n'
    return text


def policy(**kwargs: object) -> Policy:
    return parse_policy(policy_text(**kwargs))  # type: ignore[arg-type]
