"""NVIDIA GPU confidential computing: an optional appraiser on NVIDIA's attestation SDK.

GPU evidence is only ever an addition to CPU TEE evidence (the policy refuses a GPU-only
policy; the verifier judges the GPU piece after the CPU TEE's). The evidence must be a
JSON array of objects (checked first, so hostile input is refused the same way with or
without the SDK). Without ``nv_attestation_sdk`` installed the appraiser then refuses with
PROVIDER_UNAVAILABLE (tested). With it, the GPU evidence list (JSON, from the
SDK's ``get_evidence`` on the appliance) is appraised by the SDK against the
policy's ``sdk_policy`` (NVIDIA's JSON appraisal policy: it must require CC mode
on, i.e. not devtools, and the reference-manifest measurement checks), with the
SDK nonce set to the first 32 bytes of SHA-512(nonce || SPKI), so GPU evidence
is bound to the same TLS key as the CPU evidence. That path is untested here
(no GPU, no SDK) and fails closed on any SDK error. SDK calls as in NVIDIA's
nvtrust ``guest_tools/attestation_sdk`` (``Attestation.set_nonce``,
``add_verifier``, ``attest``, ``validate_token``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from collections.abc import Mapping

from sealagg.attest.collateral import CollateralBundle
from sealagg.attest.errors import AppraisalFailure, Reason
from sealagg.attest.evidence import NVIDIA_GPU, Evidence
from sealagg.attest.policy import FormatPolicy

SDK_MODULE = "nv_attestation_sdk"
#: GPU evidence larger than this is refused before parsing (it comes from the appraised side).
MAX_EVIDENCE_BYTES = 1024 * 1024


def sdk_available() -> bool:
    return importlib.util.find_spec(SDK_MODULE) is not None


class NvidiaGpuAppraiser:
    format = NVIDIA_GPU
    insecure = False

    def appraise(
        self,
        evidence: Evidence,
        section: FormatPolicy,
        now: float,
        *,
        binding: bytes,
        collateral: CollateralBundle,
    ) -> dict[str, object]:
        evidence_list = parse_evidence_list(evidence.data)
        if not sdk_available():
            raise AppraisalFailure(
                Reason.PROVIDER_UNAVAILABLE,
                "NVIDIA GPU attestation needs nv_attestation_sdk, which is not installed",
            )
        try:
            sdk = importlib.import_module(f"{SDK_MODULE}.attestation")
            client = sdk.Attestation()
            client.set_nonce(binding[:32].hex())
            url = str(section.options.get("verifier_url", ""))
            client.add_verifier(sdk.Devices.GPU, sdk.Environment.REMOTE, url, "")
            verified = client.attest(evidence_list) is True
            accepted = verified and client.validate_token(section.options["sdk_policy"]) is True
        except Exception as exc:  # fail closed on any SDK or network error
            raise AppraisalFailure(
                Reason.PROVIDER_UNAVAILABLE, f"NVIDIA SDK failed: {exc}"
            ) from None
        if not accepted:
            raise AppraisalFailure(
                Reason.BAD_SIGNATURE if not verified else Reason.MEASUREMENT_NOT_ALLOWED,
                "NVIDIA's SDK refused the GPU evidence (signature, nonce, or appraisal policy)",
            )
        # The SDK checked the GPU evidence's nonce equals binding[:32].
        return {"report_data": binding, "debug": False}

    def check_tcb(self, claims: Mapping[str, object], section: FormatPolicy) -> None:
        return None  # TCB/driver versions are part of NVIDIA's appraisal policy


def parse_evidence_list(data: bytes) -> list[dict[str, object]]:
    """The SDK's ``get_evidence`` output: a non-empty JSON array of objects, one per GPU.

    Checked before the SDK sees it, so hostile input is refused the same way with or without
    the SDK installed (never an exception: deep nesting and huge numbers included)."""
    if not isinstance(data, bytes | bytearray) or len(data) > MAX_EVIDENCE_BYTES:
        raise AppraisalFailure(Reason.MALFORMED_EVIDENCE, "GPU evidence is missing or too large")
    try:
        parsed = json.loads(bytes(data))
    except (ValueError, RecursionError):  # JSON and UTF-8 errors, huge integers, deep nesting
        raise AppraisalFailure(Reason.MALFORMED_EVIDENCE, "GPU evidence is not JSON") from None
    if not isinstance(parsed, list) or not parsed or not all(isinstance(e, dict) for e in parsed):
        raise AppraisalFailure(
            Reason.MALFORMED_EVIDENCE, "GPU evidence is a JSON array of one object per GPU"
        )
    return parsed
