"""Evidence as it travels from attester to verifier: a format tag, the signed blob, certificates."""

from __future__ import annotations

import dataclasses

#: Evidence formats known to the verifier.
SEV_SNP = "sev-snp"
TDX = "tdx"
SOFTWARE = "software"
NVIDIA_GPU = "nvidia-gpu"
FORMATS = (SEV_SNP, TDX, SOFTWARE, NVIDIA_GPU)


@dataclasses.dataclass(frozen=True)
class Evidence:
    """``data``: the raw report or quote; ``certificates``: DER or PEM (e.g. ARK, ASK, VCEK)."""

    format: str
    data: bytes
    certificates: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.data, bytes | bytearray):
            raise TypeError("evidence data must be bytes")
