"""Intel's TDX collateral, checked and applied as Intel's Quote Verification Library does it.

A TDX quote proves only that *some* quoting enclave on *some* platform signed it. Whether
that enclave is Intel's, whether the TDX module is Intel's, and whether the platform's
firmware is patched is said by four documents Intel signs (Intel PCS API v4), which an
operator fetches on a connected machine (:func:`fetch_plan`) and ships as a bundle:

* TCB info v3 (``id`` "TDX"): the TCB levels for one FMSPC, each with a status
  (UpToDate, OutOfDate, Revoked ...) and advisory IDs, plus the TDX module's signer.
* QE identity v2 (``id`` "TD_QE"): the TD quoting enclave's MRSIGNER, ISVPRODID,
  attributes/MISCSELECT under masks (DEBUG is not allowed), and its ISVSVN levels.
* PCK CRL (issued by the Platform or Processor CA) and Root CA CRL.

Where the trust comes from: every document is signed by a key whose chain ends in the
Intel SGX Root CA that the policy pins (``trusted_root_sha256``) - the same root the
quote's PCK chain ends in. The bundle's carrier (the appliance, a file share) adds and
removes nothing that matters: a changed byte breaks a signature, a withheld item is
COLLATERAL_MISSING, an old item is refused once its ``nextUpdate`` has passed.

This module plans the download, picks the newest copy of each document that verifies, and
runs QVL's steps in QVL's order; the pieces live in :mod:`tdx_documents` (the signed JSON
documents), :mod:`tdx_crl` (Intel's CRLs) and :mod:`tdx_tcb` (module, QE and TCB level
checks, the status convergence). Their public names stay importable from here.

QVL references (SGX-TDX-DCAP-QuoteVerificationLibrary, section numbers from its code):
QuoteVerifier.cpp 4.1.2.4.4-4.1.2.4.15, TcbLevelCheck.cpp (4.1.2.4.17),
TdxModuleCheck.cpp, EnclaveReportVerifier.cpp (4.1.2.9.5-4.1.2.9.10). Differences:
TCB levels are taken in document order (Intel publishes them highest first; QVL sorts
them); a TCB status string this module does not know is reported as is and so can never
be accepted by a policy (QVL: TCB_UNRECOGNIZED_STATUS).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import TypeVar

from cryptography import x509

from sealagg.attest import _x509
from sealagg.attest.collateral import CollateralBundle, CollateralDownload
from sealagg.attest.errors import AppraisalFailure, Reason
from sealagg.attest.tdx_crl import load_crl, newest_crl, not_revoked
from sealagg.attest.tdx_documents import (
    ENCLAVE_STATUSES,
    MAX_DOCUMENT_BYTES,
    TCB_SIGNING_CN,
    EnclaveLevel,
    ModuleIdentity,
    QeIdentity,
    TcbInfo,
    TcbLevel,
    collateral_invalid,
    common_name,
    load_qe_identity,
    load_tcb_info,
)
from sealagg.attest.tdx_pck import PckTcb, parse_qe_report, pck_tcb
from sealagg.attest.tdx_tcb import (
    check_module,
    converge,
    match_levels,
    module_identity,
    quoting_enclave_level,
)

__all__ = [  # the public names, several of them defined in tdx_documents / tdx_crl / tdx_tcb
    "ENCLAVE_STATUSES",
    "MAX_DOCUMENT_BYTES",
    "PCK_CA_KINDS",
    "PCK_CRL",
    "PCK_LEAF_PHRASE",
    "PCS_URL",
    "PLATFORM_STATUSES",
    "QE_IDENTITY",
    "QE_IDENTITY_CHAIN",
    "ROOT_CA_CRL",
    "ROOT_CA_CRL_URL",
    "TCB_INFO_CHAIN",
    "TCB_INFO_DIR",
    "TCB_SIGNING_CN",
    "EnclaveLevel",
    "ModuleIdentity",
    "QeIdentity",
    "TcbInfo",
    "TcbLevel",
    "TcbVerdict",
    "evaluate",
    "fetch_plan",
    "load_crl",
    "load_qe_identity",
    "load_tcb_info",
]

_HEX = re.compile(r"[0-9A-Fa-f]*")

PCS_URL = "https://api.trustedservices.intel.com"
ROOT_CA_CRL_URL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"

#: Bundle paths (see attest/collateral.py); ``fetch_plan`` fills exactly these.
TCB_INFO_DIR = "tdx/tcb_info"
TCB_INFO_CHAIN = "tdx/tcb_info_issuer_chain.pem"
QE_IDENTITY = "tdx/qe_identity.json"
QE_IDENTITY_CHAIN = "tdx/qe_identity_issuer_chain.pem"
PCK_CRL = {"platform": "tdx/pck_crl_platform.der", "processor": "tdx/pck_crl_processor.der"}
ROOT_CA_CRL = "tdx/root_ca_crl.der"

#: Intel's certificate names (PCK certificate profile); QVL refuses chains without them.
PCK_CA_KINDS = {"Intel SGX PCK Platform CA": "platform", "Intel SGX PCK Processor CA": "processor"}
PCK_LEAF_PHRASE = "SGX PCK Certificate"

#: TCB level statuses Intel publishes in TCB info v3; "Revoked" is never acceptable.
PLATFORM_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
)


@dataclasses.dataclass(frozen=True)
class TcbVerdict:
    """What the collateral says of one quote: Intel's TCB status and why."""

    tcb_status: str
    advisory_ids: tuple[str, ...]
    platform_status: str
    module_status: str | None
    qe_status: str
    pck: PckTcb
    qe_isvsvn: int
    tcb_date: str
    tcb_evaluation_data_number: int
    collateral_expires: float


_Doc = TypeVar("_Doc", TcbInfo, QeIdentity)


# ---------------------------------------------------------------------------- fetch plan


def fetch_plan(fmspc_hex: str) -> list[CollateralDownload]:
    """What ``sealagg attest collateral fetch --tdx-fmspc`` downloads, and where it goes.

    The FMSPC is in the PCK certificate of a quote from the platform (see docs/attest-tdx.md).
    """
    fmspc = _fmspc(fmspc_hex)
    tcb_url = f"{PCS_URL}/tdx/certification/v4/tcb?fmspc={fmspc}"
    qe_url = f"{PCS_URL}/tdx/certification/v4/qe/identity"
    crl_url = f"{PCS_URL}/sgx/certification/v4/pckcrl?ca={{}}&encoding=der"
    return [
        CollateralDownload(tcb_url, _tcb_info_path(fmspc)),
        CollateralDownload(tcb_url, TCB_INFO_CHAIN, response_header="TCB-Info-Issuer-Chain"),
        CollateralDownload(qe_url, QE_IDENTITY),
        CollateralDownload(
            qe_url, QE_IDENTITY_CHAIN, response_header="SGX-Enclave-Identity-Issuer-Chain"
        ),
        CollateralDownload(crl_url.format("platform"), PCK_CRL["platform"]),
        CollateralDownload(crl_url.format("processor"), PCK_CRL["processor"]),
        CollateralDownload(ROOT_CA_CRL_URL, ROOT_CA_CRL),
    ]


def _fmspc(fmspc_hex: object) -> str:
    if not isinstance(fmspc_hex, str) or len(fmspc_hex) != 12 or not _HEX.fullmatch(fmspc_hex):
        raise AppraisalFailure(Reason.COLLATERAL_INVALID, "an FMSPC is 12 hex digits (6 bytes)")
    return fmspc_hex.lower()


def _tcb_info_path(fmspc: str) -> str:
    return f"{TCB_INFO_DIR}/{fmspc}.json"


# ---------------------------------------------------------------------- the whole appraisal


def evaluate(
    collateral: CollateralBundle,
    *,
    pck_chain: Sequence[x509.Certificate],
    qe_report: bytes,
    tee_tcb_svn: bytes,
    mrsignerseam: bytes,
    seam_attributes: bytes,
    anchors: Sequence[bytes],
    now: float,
    min_tcb_evaluation_data_number: int = 0,
) -> TcbVerdict:
    """Judge an authenticated quote against Intel's collateral, QVL's steps in QVL's order.

    ``pck_chain`` is (root, PCK CA, PCK leaf), already verified to a pinned root by the
    caller, and the QE report already verified under the leaf. Refusals: COLLATERAL_MISSING,
    COLLATERAL_INVALID, REVOKED, QE_IDENTITY (quoting enclave or TDX module not Intel's, or
    debuggable), TCB_STATUS (no TCB level matches). A "Revoked" result is returned, not
    raised: the caller refuses it (no policy can accept it).

    Where the bundle holds two copies of a document (the kit's and the appliance's, see
    :meth:`CollateralBundle.merged`), the newest that verifies is used: the highest
    ``tcbEvaluationDataNumber``, then the latest issue date; for CRLs the latest
    thisUpdate. ``min_tcb_evaluation_data_number`` (the policy's floor, 0 = none) refuses
    TCB info and QE identity from before a TCB recovery the policy author knows of: an
    older genuine document is still inside its validity window for up to a month and may
    rate an unpatched platform UpToDate (collateral rollback by whoever ships the bundle).
    """
    if len(pck_chain) != 3 or len(tee_tcb_svn) != 16:
        raise AppraisalFailure(Reason.BROKEN_CHAIN, "need the (root, PCK CA, PCK leaf) chain")
    root, ca, leaf = pck_chain
    pck = pck_tcb(leaf)
    kind = _pck_ca_kind(ca, leaf)
    if not collateral.names("tdx/"):
        raise AppraisalFailure(
            Reason.COLLATERAL_MISSING,
            "the policy requires TDX but no Intel collateral was given: run 'sealagg attest "
            f"collateral fetch --tdx-fmspc {pck.fmspc.hex()}' on a connected machine and ship "
            "the bundle with the appliance or the kit",
        )
    # 4.1.2.4.6-7: the chain's certificates against Intel's CRLs (the newest genuine copy).
    root_crl = newest_crl(
        collateral, ROOT_CA_CRL, "Intel SGX Root CA CRL", "the Root CA CRL", root, now
    )
    not_revoked(ca, root_crl, "the PCK CA certificate")
    pck_crl = newest_crl(
        collateral, PCK_CRL[kind], f"the PCK {kind} CA CRL", "the PCK CRL", ca, now
    )
    not_revoked(leaf, pck_crl, "the PCK certificate")
    # 4.1.2.4.9-10: TCB info for this platform, signed under the same root.
    info = _newest(
        lambda body, chain: _tcb_info_for(body, chain, anchors, now, root, pck),
        collateral,
        (_tcb_info_path(pck.fmspc.hex()), "Intel's TCB info for this FMSPC"),
        (TCB_INFO_CHAIN, "the TCB info signing chain"),
    )
    not_revoked(info.signer, root_crl, "the TCB signing certificate")
    identity = _newest(
        lambda body, chain: _qe_identity_for(body, chain, anchors, now, root),
        collateral,
        (QE_IDENTITY, "Intel's TD quoting enclave identity"),
        (QE_IDENTITY_CHAIN, "the QE identity signing chain"),
    )
    not_revoked(identity.signer, root_crl, "the QE identity signing certificate")
    _check_evaluation_floor(info, identity, min_tcb_evaluation_data_number)
    # 4.1.2.4.11: the TDX module is Intel's.
    module, module_level = module_identity(info, tee_tcb_svn)
    check_module(module, mrsignerseam, seam_attributes)
    # 4.1.2.4.15: the quoting enclave is Intel's TD QE, not debuggable, not revoked.
    report = parse_qe_report(qe_report)
    qe_level = quoting_enclave_level(identity, report)
    # 4.1.2.4.17: the platform's TCB level, converged with the module's and the QE's.
    sgx_level, tdx_level = match_levels(info.tcb_levels, pck, tee_tcb_svn)
    if sgx_level is None or tdx_level is None:
        raise AppraisalFailure(
            Reason.TCB_STATUS,
            "no TCB level in Intel's TCB info covers this platform (QVL: TCB_NOT_SUPPORTED): "
            f"SGX components {list(pck.sgx_components)}, PCESVN {pck.pcesvn}, "
            f"TEE_TCB_SVN {tee_tcb_svn.hex()}",
        )
    module_status = module_level.status if module_level else None
    status = converge(tdx_level.status, module_status)
    status = converge(status, qe_level.status)
    advisories = tdx_level.advisory_ids
    for extra in (module_level, qe_level):
        if extra is not None:
            advisories += tuple(a for a in extra.advisory_ids if a not in advisories)
    expires = min(
        info.next_update,
        identity.next_update,
        root_crl.next_update_utc.timestamp(),  # type: ignore[union-attr]
        pck_crl.next_update_utc.timestamp(),  # type: ignore[union-attr]
    )
    return TcbVerdict(
        tcb_status=status,
        advisory_ids=advisories,
        platform_status=tdx_level.status,
        module_status=module_status,
        qe_status=qe_level.status,
        pck=pck,
        qe_isvsvn=report.isvsvn,
        tcb_date=tdx_level.tcb_date,
        tcb_evaluation_data_number=info.tcb_evaluation_data_number,
        collateral_expires=expires,
    )


def _pck_ca_kind(ca: x509.Certificate, leaf: x509.Certificate) -> str:
    """Platform or Processor CA (which PCK CRL applies); QVL 4.1.2.4.4 checks the leaf's CN."""
    kind = PCK_CA_KINDS.get(common_name(ca))
    if kind is None:
        raise AppraisalFailure(
            Reason.BROKEN_CHAIN, "the PCK CA is neither Intel's PCK Platform CA nor Processor CA"
        )
    if PCK_LEAF_PHRASE not in common_name(leaf):
        raise AppraisalFailure(Reason.BROKEN_CHAIN, "the PCK leaf is not an SGX PCK Certificate")
    return kind


def _same_root(root: x509.Certificate, pck_root: x509.Certificate, what: str) -> None:
    if _x509.fingerprint(root) != _x509.fingerprint(pck_root):
        raise AppraisalFailure(
            Reason.COLLATERAL_INVALID, f"the {what} is signed under another root than the quote"
        )


def _newest(
    load: Callable[[bytes, bytes], _Doc],
    collateral: CollateralBundle,
    document: tuple[str, str],
    chain: tuple[str, str],
) -> _Doc:
    """The newest copy of a signed document (with any copy of its issuer chain) that verifies.

    Every pairing is tried, so a kit's stale copy or an appliance's forged one is skipped;
    none verifying refuses with the local pair's reason."""
    collateral.require(*document)
    collateral.require(*chain)
    best: _Doc | None = None
    first: AppraisalFailure | None = None
    for body in collateral.candidates(document[0]):
        for pem in collateral.candidates(chain[0]):
            try:
                doc = load(body, pem)
            except AppraisalFailure as failure:
                first = first or failure
                continue
            if best is None or _freshness(doc) > _freshness(best):
                best = doc
    if best is None:
        raise first or collateral_invalid(f"no copy of {document[0]} verifies")
    return best


def _freshness(doc: TcbInfo | QeIdentity) -> tuple[int, float]:
    return doc.tcb_evaluation_data_number, doc.issue_date


def _tcb_info_for(
    body: bytes,
    chain: bytes,
    anchors: Sequence[bytes],
    now: float,
    root: x509.Certificate,
    pck: PckTcb,
) -> TcbInfo:
    info = load_tcb_info(body, chain, anchors, now)
    _same_root(info.root, root, "TCB info")
    if info.fmspc != pck.fmspc or info.pce_id != pck.pceid:
        raise AppraisalFailure(
            Reason.COLLATERAL_INVALID,
            f"the TCB info is for FMSPC {info.fmspc.hex()} / PCE-ID {info.pce_id.hex()}, the PCK "
            f"certificate for {pck.fmspc.hex()} / {pck.pceid.hex()}",
        )
    return info


def _qe_identity_for(
    body: bytes, chain: bytes, anchors: Sequence[bytes], now: float, root: x509.Certificate
) -> QeIdentity:
    identity = load_qe_identity(body, chain, anchors, now)
    _same_root(identity.root, root, "QE identity")
    return identity


def _check_evaluation_floor(info: TcbInfo, identity: QeIdentity, floor: int) -> None:
    """The policy's ``min_tcb_evaluation_data_number``: Intel raises the number at each TCB
    recovery; documents below it predate a recovery the policy author requires."""
    for doc, what in ((info, "TCB info"), (identity, "QE identity")):
        if doc.tcb_evaluation_data_number < floor:
            raise collateral_invalid(
                f"Intel's {what} has tcbEvaluationDataNumber {doc.tcb_evaluation_data_number}, "
                f"below the policy's min_tcb_evaluation_data_number {floor}: it predates a TCB "
                "recovery; fetch a fresh bundle"
            )
