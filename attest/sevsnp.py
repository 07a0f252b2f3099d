"""AMD SEV-SNP appraisal as AMD's own verifiers do it: from AMD-signed collateral, strictly.

The steps, each a refusal with its own reason when it fails:

1. Parse the report (layout in :mod:`snp_abi`) and pick the key that signed it: the
   report's SIGNING_KEY says VCEK or VLEK; the certificate comes from the evidence's
   certificate table, else from the collateral bundle (paths in :mod:`snp_collateral`).
2. Verify the report's ECDSA P-384 signature with that key (BAD_SIGNATURE); only now
   is any field believed, and only once step 5 has shown the key is AMD's.
3. Decide the product: from CPUID_FAM_ID/CPUID_MOD_ID for report versions 3 and 5;
   for version 2 (which names none) from the policy's optional ``product`` and the
   endorsement certificate's productName, or else the one product whose bundle folder
   holds this chip's VCEK. The product fixes the TCB layout (Turin differs) and the
   collateral folder.
4. The certificate must be for this product, (VCEK) this chip's hwID and exactly the
   report's REPORTED_TCB in every SPL, FMC included on Turin (BROKEN_CHAIN).
5. Chain VCEK -> ASK -> ARK (VLEK -> ASVK -> ARK), the ARK pinned by the policy's
   ``trusted_ark_sha256``; the ARK-signed CRL from the bundle must be current and list
   neither the ASK/ASVK nor the VCEK/VLEK (COLLATERAL_MISSING / COLLATERAL_INVALID / REVOKED).
6. Strict defaults (:meth:`SevSnpAppraiser.check_tcb`, also run at the end of
   :meth:`SevSnpAppraiser.appraise` so a direct caller gets them too): no debug policy
   bit, VMPL 0 unless the policy names another in ``required_claims.vmpl``,
   ``min_guest_svn``, and a TCB floor ``min_tcb`` that must name every component of the
   product (bootloader, tee, snp, microcode; fmc too on Turin). The floor is judged on
   both the REPORTED_TCB (the TCB the VCEK certifies: a chip can only derive VCEKs of
   its running TCB or lower, so this is the cryptographically backed lower bound) and
   the COMMITTED_TCB (the lowest firmware the host may roll back to under a live
   guest without the guest noticing).
"""

from __future__ import annotations

from collections.abc import Mapping

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from sealagg.attest import _x509, snp_collateral
from sealagg.attest.collateral import CollateralBundle
from sealagg.attest.errors import AppraisalFailure, Reason
from sealagg.attest.evidence import SEV_SNP, Evidence
from sealagg.attest.policy import FormatPolicy
from sealagg.attest.snp_abi import (
    GENOA,
    MILAN,
    POLICY_DEBUG_BIT,
    PRODUCTS,
    REPORT_BYTES,
    SIG_ALGO_ECDSA_P384_SHA384,
    SIGNATURE_COMPONENT_BYTES,
    SIGNATURE_OFFSET,
    SIGNED_BYTES,
    SUPPORTED_VERSIONS,
    TURIN,
    VCEK,
    VLEK,
    SnpReport,
    TcbVersion,
    parse_report,
    product_from_cpuid,
    tcb_components,
)
from sealagg.attest.snp_collateral import (
    OID_BLSPL,
    OID_HWID,
    OID_SNPSPL,
    OID_TEESPL,
    OID_UCODESPL,
)

__all__ = [  # the names this module had before the split, still importable from here
    "OID_BLSPL",
    "OID_HWID",
    "OID_SNPSPL",
    "OID_TEESPL",
    "OID_UCODESPL",
    "POLICY_DEBUG_BIT",
    "REPORT_BYTES",
    "SIGNATURE_COMPONENT_BYTES",
    "SIGNATURE_OFFSET",
    "SIGNED_BYTES",
    "SIG_ALGO_ECDSA_P384_SHA384",
    "SUPPORTED_VERSIONS",
    "SevSnpAppraiser",
    "SnpReport",
    "TcbVersion",
    "parse_report",
    "product_from_cpuid",
]


def _policy_products(section: FormatPolicy) -> tuple[str, ...] | None:
    """The optional ``product`` of the policy (a name or a list of names), canonical."""
    raw = section.options.get("product")
    if raw is None:
        return None
    names = [raw] if isinstance(raw, str) else raw
    if not isinstance(names, list | tuple) or not names:
        raise AppraisalFailure(Reason.REQUIRED_CLAIM, "the policy's product is malformed")
    return tuple(snp_collateral.canonical_product(n) for n in names)


def _product(
    report: SnpReport,
    section: FormatPolicy,
    leaf: x509.Certificate | None,
    collateral: CollateralBundle,
) -> str:
    """Which AMD product made the report (see step 3 of the module docstring)."""
    allowed = _policy_products(section)
    if report.version >= 3:
        if report.product is None:
            raise AppraisalFailure(
                Reason.UNSUPPORTED_VERSION,
                f"CPU family {report.cpuid_family:#x} model {report.cpuid_model:#x} is not "
                "Milan, Genoa or Turin",
            )
        product = report.product
    elif leaf is not None:
        product = snp_collateral.kds_extensions(leaf).product or ""
        if product not in PRODUCTS:
            raise AppraisalFailure(
                Reason.BROKEN_CHAIN, f"the endorsement key names no known product ({product!r})"
            )
    else:
        product = _product_from_bundle(report, allowed, collateral)
    if report.version < 3 and product == TURIN:
        raise AppraisalFailure(
            Reason.UNSUPPORTED_VERSION, "a Turin writes reports of version 3 or later"
        )
    if allowed is not None and product not in allowed:
        raise AppraisalFailure(
            Reason.REQUIRED_CLAIM, f"the report comes from a {product}, the policy allows {allowed}"
        )
    return product


def _product_from_bundle(
    report: SnpReport, allowed: tuple[str, ...] | None, collateral: CollateralBundle
) -> str:
    """Version 2, no certificate in the evidence: the one product whose folder has this key."""
    candidates = [p for p in (allowed or (MILAN, GENOA)) if p != TURIN]
    if not candidates:
        raise AppraisalFailure(Reason.UNSUPPORTED_VERSION, "a Turin writes version 3 or later")

    def path(product: str) -> str:
        if report.signing_key == VLEK:
            return snp_collateral.vlek_path(product, report.reported_tcb)
        return snp_collateral.vcek_path(product, report.chip_id, report.reported_tcb)

    found = [p for p in candidates if collateral.get(path(p)) is not None]
    if len(found) > 1:
        raise AppraisalFailure(
            Reason.COLLATERAL_INVALID,
            f"the bundle has this chip's key for {found}; name the product in the policy",
        )
    if not found:
        collateral.require(path(candidates[0]), f"the {report.signing_key.upper()} of this chip")
    return found[0]


def _at_least(tcb: Mapping[str, int], floor: Mapping[str, int], names: tuple[str, ...]) -> str:
    """The first component of ``tcb`` below ``floor``, or an empty string."""
    return next((n for n in names if tcb[n] < floor[n]), "")


class SevSnpAppraiser:
    """Appraise SNP evidence; ``certificates`` = any of ARK, ASK/ASVK, VCEK/VLEK (DER or PEM)."""

    format = SEV_SNP
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
        if not isinstance(evidence, Evidence) or not isinstance(section, FormatPolicy):
            raise AppraisalFailure(
                Reason.MALFORMED_EVIDENCE, "SNP appraisal needs evidence and a policy section"
            )
        report = parse_report(evidence.data)
        signer = report.signing_key
        if signer not in (VCEK, VLEK):
            raise AppraisalFailure(
                Reason.BROKEN_CHAIN, f"report signed by a {signer} key, not a VCEK or VLEK"
            )
        if not isinstance(collateral, CollateralBundle):
            raise AppraisalFailure(Reason.COLLATERAL_MISSING, "no collateral bundle was given")
        certs = snp_collateral.load_evidence_certificates(evidence.certificates)
        leaf = certs.leaf(signer)
        product = None
        if leaf is None:
            product = _product(report, section, None, collateral)
            leaf = snp_collateral.bundled_endorsement(
                collateral, product, signer, report.chip_id, report.reported_tcb
            )
        key = snp_collateral.endorsement_key(leaf, signer)
        signature = encode_dss_signature(report.signature_r, report.signature_s)
        _x509.verify_ecdsa(
            key, signature, report.signed_body, hashes.SHA384(), "the report signature"
        )
        # The report is as the key's owner signed it; step 5 shows the owner is AMD's chip.
        if report.version not in SUPPORTED_VERSIONS:
            raise AppraisalFailure(
                Reason.UNSUPPORTED_VERSION, f"SNP report version {report.version} is not supported"
            )
        if report.signature_algo != SIG_ALGO_ECDSA_P384_SHA384:
            raise AppraisalFailure(
                Reason.MALFORMED_EVIDENCE,
                f"signature algorithm {report.signature_algo} is not ECDSA P-384",
            )
        if product is None:
            product = _product(report, section, leaf, collateral)
        # First what the certificate says (product, chip, TCB), then whether AMD said it.
        snp_collateral.check_endorsement(
            snp_collateral.kds_extensions(leaf),
            signer=signer,
            product=product,
            chip_id=report.chip_id,
            tcb=report.reported_tcb,
        )
        snp_collateral.verify_endorsement(
            leaf,
            signer=signer,
            product=product,
            evidence=certs,
            collateral=collateral,
            anchors=section.trust_anchors,
            now=now,
        )
        claims: dict[str, object] = {
            "version": report.version,
            "product": product,
            "signing_key": signer,
            "guest_svn": report.guest_svn,
            "policy": report.policy,
            "debug": report.debug,
            "vmpl": report.vmpl,
            "measurement": report.measurement.hex(),
            "host_data": report.host_data.hex(),
            "id_key_digest": report.id_key_digest.hex(),
            "author_key_digest": report.author_key_digest.hex(),
            "family_id": report.family_id.hex(),
            "image_id": report.image_id.hex(),
            "reported_tcb": report.reported_tcb.as_dict(),
            "committed_tcb": report.committed_tcb.as_dict(),
            "current_tcb": report.current_tcb.as_dict(),
            "chip_id": report.chip_id.hex(),
            "report_data": report.report_data,
        }
        self.check_tcb(claims, section)
        return claims

    def check_tcb(self, claims: Mapping[str, object], section: FormatPolicy) -> None:
        """The strict defaults: no debug, VMPL pinned, guest SVN and a complete TCB floor."""
        if claims.get("debug") is not False:
            raise AppraisalFailure(Reason.DEBUG_ENABLED, "the guest policy allows debugging")
        want_vmpl = section.required_claims.get("vmpl", 0)
        if claims.get("vmpl") != want_vmpl or isinstance(want_vmpl, bool):
            raise AppraisalFailure(
                Reason.REQUIRED_CLAIM,
                f"claim 'vmpl' is {claims.get('vmpl')!r}, need {want_vmpl!r} (VMPL 0 unless the "
                "policy names another in required_claims)",
            )
        min_svn = section.options.get("min_guest_svn", 0)
        svn = claims.get("guest_svn")
        if not _non_negative_int(min_svn) or not isinstance(svn, int) or svn < min_svn:
            raise AppraisalFailure(Reason.TCB_TOO_LOW, f"guest SVN {svn!r} is below {min_svn!r}")
        names = tcb_components(str(claims.get("product")))
        floor = section.options.get("min_tcb")
        if not isinstance(floor, Mapping) or not all(
            _non_negative_int(floor.get(n)) for n in names
        ):
            raise AppraisalFailure(
                Reason.TCB_TOO_LOW,
                f"the policy's min_tcb must name {list(names)} for a {claims.get('product')}: "
                "without a floor any TCB, however old, would pass",
            )
        for which in ("reported_tcb", "committed_tcb"):
            tcb = claims.get(which)
            if not isinstance(tcb, Mapping) or not all(isinstance(tcb.get(n), int) for n in names):
                raise AppraisalFailure(Reason.TCB_TOO_LOW, f"the claims carry no {which}")
            low = _at_least(tcb, floor, names)
            if low:
                raise AppraisalFailure(
                    Reason.TCB_TOO_LOW,
                    f"{which.replace('_', ' ')} {low} = {tcb[low]} is below the floor {floor[low]}",
                )


def _non_negative_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
