"""Intel's TCB evaluation for TDX, as QVL does it: whose TDX module, whose quoting enclave,
and which TCB level (with its status) the platform meets.

QVL references (SGX-TDX-DCAP-QuoteVerificationLibrary): TdxModuleCheck.cpp,
EnclaveReportVerifier.cpp (4.1.2.9.5-4.1.2.9.10), TcbLevelCheck.cpp (4.1.2.4.17) and the
convergence of the platform's, the module's and the QE's statuses. The inputs are
verified documents (:mod:`tdx_documents`) and the authenticated quote's fields.
"""

from __future__ import annotations

from collections.abc import Sequence

from sealagg.attest.errors import AppraisalFailure, Reason
from sealagg.attest.tdx_documents import EnclaveLevel, ModuleIdentity, QeIdentity, TcbInfo, TcbLevel
from sealagg.attest.tdx_pck import PckTcb, QeReport


def _masked(value: bytes, mask: bytes) -> bytes:
    return bytes(v & m for v, m in zip(value, mask, strict=True))


def module_identity(
    info: TcbInfo, tee_tcb_svn: bytes
) -> tuple[ModuleIdentity, EnclaveLevel | None]:
    """TEE_TCB_SVN[1] is the TDX module's major version; 0 means TDX 1.0 (``tdxModule``)."""
    version, isvsvn = tee_tcb_svn[1], tee_tcb_svn[0]
    if version == 0:
        return info.tdx_module, None
    wanted = f"TDX_{version:02X}"
    found = [m for m in info.module_identities if m.id.upper() == wanted]
    if not found:
        raise AppraisalFailure(
            Reason.QE_IDENTITY,
            f"TDX module identity mismatch: Intel's TCB info names no {wanted} module "
            "(QVL: TDX_MODULE_MISMATCH)",
        )
    module = found[0]
    for level in module.tcb_levels:
        if isvsvn >= level.isvsvn:
            return module, level
    raise AppraisalFailure(
        Reason.TCB_STATUS,
        f"the TDX module's SVN {isvsvn} is below every level of {wanted} (QVL: TCB_NOT_SUPPORTED)",
    )


def check_module(module: ModuleIdentity, mrsignerseam: bytes, seam_attributes: bytes) -> None:
    """MRSIGNERSEAM must be Intel's module signer: any other TDX module could forge TDs."""
    if mrsignerseam != module.mrsigner:
        raise AppraisalFailure(
            Reason.QE_IDENTITY,
            f"TDX module identity mismatch: MRSIGNERSEAM {mrsignerseam.hex()} is not the signer "
            f"Intel's TCB info names ({module.mrsigner.hex()}): not an Intel TDX module",
        )
    masked = _masked(seam_attributes, module.attributes_mask)
    if masked != _masked(module.attributes, module.attributes_mask) or any(seam_attributes):
        raise AppraisalFailure(
            Reason.QE_IDENTITY,
            f"TDX module identity mismatch: SEAMATTRIBUTES {seam_attributes.hex()} are not "
            "the zero attributes Intel's TCB info requires",
        )


def quoting_enclave_level(identity: QeIdentity, report: QeReport) -> EnclaveLevel:
    """EnclaveReportVerifier: MISCSELECT and ATTRIBUTES under mask, MRSIGNER, ISVPRODID, ISVSVN."""
    if _masked(report.miscselect, identity.miscselect_mask) != identity.miscselect:
        raise AppraisalFailure(
            Reason.QE_IDENTITY, "the quoting enclave's MISCSELECT differs from Intel's TD QE"
        )
    if _masked(report.attributes, identity.attributes_mask) != identity.attributes:
        debug = " (it is a DEBUG enclave)" if report.debug else ""
        raise AppraisalFailure(
            Reason.QE_IDENTITY,
            f"the quoting enclave's ATTRIBUTES differ from Intel's TD QE{debug}",
        )
    if report.mrsigner != identity.mrsigner:
        raise AppraisalFailure(
            Reason.QE_IDENTITY,
            f"the quoting enclave's MRSIGNER {report.mrsigner.hex()} is not Intel's",
        )
    if report.isvprodid != identity.isvprodid:
        raise AppraisalFailure(
            Reason.QE_IDENTITY,
            f"the quoting enclave's ISVPRODID {report.isvprodid} is not the TD QE's "
            f"({identity.isvprodid})",
        )
    for level in identity.tcb_levels:
        if report.isvsvn >= level.isvsvn:
            return level
    raise AppraisalFailure(
        Reason.TCB_STATUS,
        f"the quoting enclave's ISVSVN {report.isvsvn} is below every level Intel lists "
        "(QVL: ISVSVN_NOT_SUPPORTED)",
    )


def match_levels(
    levels: Sequence[TcbLevel], pck: PckTcb, tee_tcb_svn: bytes
) -> tuple[TcbLevel | None, TcbLevel | None]:
    """The first level whose SGX components and PCESVN the PCK meets, and the first of those
    whose TDX components the quote meets. With a TDX module version (TEE_TCB_SVN[1] > 0)
    bytes 0-1 are judged by the module identity instead (QVL isTdxTcbHigherOrEqual)."""
    start = 2 if tee_tcb_svn[1] > 0 else 0
    sgx_level = None
    for level in levels:
        sgx_ok = all(p >= t for p, t in zip(pck.sgx_components, level.sgx_components, strict=True))
        if not sgx_ok or pck.pcesvn < level.pcesvn:
            continue
        sgx_level = sgx_level or level
        if all(tee_tcb_svn[i] >= level.tdx_components[i] for i in range(start, 16)):
            return sgx_level, level
    return sgx_level, None


def converge(status: str, other: str | None) -> str:
    """QVL's convergeTcbStatusWith{TdxModule,Qe}TcbStatus: an OutOfDate part drags the whole
    to OutOfDate, a Revoked part makes it Revoked."""
    if other == "Revoked":
        return "Revoked"
    if other == "OutOfDate":
        if status in ("UpToDate", "SWHardeningNeeded"):
            return "OutOfDate"
        if status in ("ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded"):
            return "OutOfDateConfigurationNeeded"
    return status
