"""Fake TEE hardware for tests: SNP reports and TDX quotes in the real binary layouts.

Shipped with the package (as Tink ships its ``testing`` module) so the attest,
appliance and shim tests build evidence the same way. The keys and certificate
chains are generated here; nothing in this module is trusted by a real policy.
SNP lives in :mod:`testing_snp`, TDX in :mod:`testing_tdx`, shared helpers in
:mod:`testing_common`.
"""

from sealagg.attest.testing_common import DEFAULT_TCB, spki_der
from sealagg.attest.testing_snp import SnpAuthority, SnpTestAttester
from sealagg.attest.testing_tdx import TdxAuthority, TdxTestAttester

__all__ = [
    "DEFAULT_TCB",
    "SnpAuthority",
    "SnpTestAttester",
    "TdxAuthority",
    "TdxTestAttester",
    "spki_der",
]
