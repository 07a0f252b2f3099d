"""Shared builders for the attest tests: policies and a fresh TLS key's SPKI.

The policies follow the strict schema (attest/policy.py): the SNP TCB floor is the test
authority's own TCB, VMPL 0 by default, every TDX entry pins MRTD and RTMR0-2 (zeros, as the
test quotes carry by default) and a TEE TCB SVN floor of zero. ``extra_snp`` / ``extra_tdx``
replace a default key they name (``min_tcb``, ``min_tee_tcb_svn``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from cryptography.hazmat.primitives.asymmetric import ec

from sealagg.attest import Policy, Verifier, parse_policy
from sealagg.attest.collateral import CollateralBundle
from sealagg.attest.testing import SnpAuthority, TdxAuthority, spki_der

ZERO_RTMR = bytes(48)


def tls_spki() -> bytes:
    return spki_der(ec.generate_private_key(ec.SECP256R1()).public_key())


def _inline(table: Mapping[str, int]) -> str:
    return "{ " + ", ".join(f"{k} = {v}" for k, v in table.items()) + " }"


def policy_text(
    *,
    snp: SnpAuthority | None = None,
    tdx: TdxAuthority | None = None,
    measurement: bytes = b"",
    max_age: float = 60,
    extra_snp: str = "",
    extra_tdx: str = "",
    rtmrs: tuple[bytes, bytes, bytes] = (ZERO_RTMR, ZERO_RTMR, ZERO_RTMR),
    gpu_sdk_policy: str | None = None,
) -> str:
    """A strict policy for the given test authority (pass exactly one of ``snp`` / ``tdx``).

    ``gpu_sdk_policy``: also require NVIDIA GPU evidence, appraised under this SDK policy."""
    text = f"version = 1\nmax_age_seconds = {max_age}\n"
    if snp is not None:
        text += f'[sev-snp]\ntrusted_ark_sha256 = ["{snp.ark_sha256}"]\n'
        if "min_tcb" not in extra_snp:
            text += f"min_tcb = {_inline(snp.tcb.as_dict())}\n"
        text += f"{extra_snp}\n"
        text += f'[[sev-snp.measurements]]\nmeasurement = "{measurement.hex()}"\n'
    if tdx is not None:
        text += f'[tdx]\ntrusted_root_sha256 = ["{tdx.root_sha256}"]\n'
        if "min_tee_tcb_svn" not in extra_tdx:
            text += f'min_tee_tcb_svn = "{"00" * 16}"\n'
        text += f"{extra_tdx}\n"
        text += f'[[tdx.measurements]]\nmrtd = "{measurement.hex()}"\n'
        text += "".join(f'rtmr{i} = "{r.hex()}"\n' for i, r in enumerate(rtmrs))
    if gpu_sdk_policy is not None:
        text += f"[nvidia-gpu]\nsdk_policy = '{gpu_sdk_policy}'\n"
    return text


def policy(**kwargs: object) -> Policy:
    return parse_policy(policy_text(**kwargs))  # type: ignore[arg-type]


def collateral_for(*authorities: object) -> CollateralBundle | None:
    """The authorities' signed collateral, when they publish it (``authority.collateral()``)."""
    bundle: CollateralBundle | None = None
    for authority in authorities:
        item = getattr(authority, "collateral", None)
        item = item() if callable(item) else item
        if isinstance(item, CollateralBundle):
            bundle = item if bundle is None else bundle.merged(item)
    return bundle


def verifier(
    *,
    allow_insecure: bool = False,
    clock: Callable[[], float] | None = None,
    **kwargs: object,
) -> Verifier:
    """A :class:`Verifier` for :func:`policy` ``(**kwargs)`` with the authorities' collateral."""
    authorities = [kwargs.get("snp"), kwargs.get("tdx")]
    return Verifier(
        policy(**kwargs),
        collateral=collateral_for(*(a for a in authorities if a is not None)),
        allow_insecure=allow_insecure,
        **({"clock": clock} if clock is not None else {}),
    )
