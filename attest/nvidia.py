"""NVIDIA GPU confidential computing: an optional appraiser using NVIDIA's attestation SDK.

If ``nv_attestation_sdk`` is not installed the appraiser reports
PROVIDER_UNAVAILABLE (a refused result, never an accept). When the SDK is
present, the first 32 bytes of the binding (SHA-512(nonce || SPKI)) are the GPU
nonce, so GPU evidence is bound to the same TLS key. The SDK path is untested
here (no GPU, no SDK); treat it as a starting point.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping

from attest.errors import AppraisalFailure, Reason
from attest.evidence import NVIDIA_GPU, Evidence
from attest.policy import FormatPolicy

SDK_MODULE = "nv_attestation_sdk"


def sdk_available() -> bool:
    return importlib.util.find_spec(SDK_MODULE) is not None


class NvidiaGpuAppraiser:
    format = NVIDIA_GPU
    insecure = False

    def appraise(self, evidence: Evidence, section: FormatPolicy, now: float) -> dict[str, object]:
        if not sdk_available():
            raise AppraisalFailure(
                Reason.PROVIDER_UNAVAILABLE,
                "NVIDIA GPU attestation needs nv_attestation_sdk, which is not installed",
            )
        sdk = importlib.import_module(f"{SDK_MODULE}.attestation")
        client = sdk.Attestation()
        client.add_verifier(
            sdk.Devices.GPU, sdk.Environment.REMOTE, section.options.get("verifier_url", ""), ""
        )
        token = evidence.data.decode("utf-8", "replace")
        sdk_policy = section.options.get("sdk_policy", "")
        if not sdk_policy or not client.validate_token(sdk_policy, token):
            raise AppraisalFailure(Reason.BAD_SIGNATURE, "NVIDIA SDK refused the GPU token")
        claims = getattr(client, "get_token_claims", lambda _t: {})(token) or {}
        raise AppraisalFailure(  # binding to the TLS key is not extractable generically yet
            Reason.WRONG_TLS_KEY,
            f"GPU token verified ({len(claims)} claims) but its nonce binding is not checked yet",
        )

    def check_tcb(self, claims: Mapping[str, object], section: FormatPolicy) -> None:
        return None
