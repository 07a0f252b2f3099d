"""Fake AMD for tests: SEV-SNP reports in the ABI layout and a KDS-shaped certificate world.

:class:`SnpAuthority` plays AMD's key distribution service for one product and one chip:
an ARK (self-signed) that signs an ASK and an ASVK, a VCEK (signed by the ASK, with AMD's
X.509 extensions: structVersion, productName, the SPLs, hwID) and a VLEK (signed by the
ASVK, with cspID instead of hwID), RSA-PSS/SHA-384 as AMD signs (``pss=False`` gives an
ECDSA P-384 chain instead), and ARK-signed CRLs. :meth:`SnpAuthority.collateral` writes
them into a bundle at the paths of :mod:`snp_collateral`, with knobs for the failures a
verifier must catch: revoked ASK/VCEK/ASVK/VLEK, stale, not-yet-valid and mis-signed CRLs,
missing items. Nothing here is trusted by a real policy.
"""

from __future__ import annotations

import datetime
import hashlib
import struct
import time
from collections.abc import Collection, Mapping

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from sealagg.attest import snp_abi, snp_collateral
from sealagg.attest.collateral import CollateralBundle
from sealagg.attest.evidence import SEV_SNP, Evidence
from sealagg.attest.snp_abi import GENOA, MILAN, TURIN, VCEK, VLEK, TcbVersion
from sealagg.attest.testing_common import _DER, _PEM, AMD_PSS, DEFAULT_TCB

#: A Turin TCB whose components all differ, so a layout mix-up shows.
TURIN_TEST_TCB = TcbVersion(bootloader=4, tee=2, snp=9, microcode=0x4A, fmc=1)
#: CPUID family, model, stepping each product's firmware writes (report version >= 3).
CPUID = {MILAN: (0x19, 0x01, 0x01), GENOA: (0x19, 0x11, 0x01), TURIN: (0x1A, 0x02, 0x00)}
#: What :meth:`SnpAuthority.collateral` can make wrong about a CRL.
CRL_MODES = ("valid", "stale", "future", "mis-signed", "missing")
_DAY = datetime.timedelta(days=1)


def _amd_name(cn: str) -> x509.Name:
    """AMD's subject/issuer names: CN plus Engineering, AMD, Santa Clara, CA, US."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _der_int(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


def _ia5(text: str) -> bytes:
    return bytes([0x16, len(text)]) + text.encode("ascii")


class SnpAuthority:
    """A fake AMD for one product and one chip at one TCB (see the module docstring)."""

    def __init__(
        self,
        *,
        pss: bool = True,
        chip_id: bytes = bytes(range(64)),
        tcb: TcbVersion | None = None,
        product: str = MILAN,
        stepping: str = "B0",
        csp_id: str = "sealagg-test-csp",
    ) -> None:
        self.product = snp_collateral.canonical_product(product)
        self.chip_id = chip_id
        self.tcb = tcb or (TURIN_TEST_TCB if self.product == TURIN else DEFAULT_TCB)
        if self.tcb.turin != (self.product == TURIN):
            raise ValueError(
                f"a {self.product} TCB {'has' if self.product == TURIN else 'has no'} fmc"
            )
        self.product_name = f"{self.product}-{stepping}"
        self.csp_id = csp_id
        self._pss = pss
        self._ark_key = self._ca_key()
        self._ask_key = self._ca_key()
        self._asvk_key = self._ca_key()
        self.vcek_key = ec.generate_private_key(ec.SECP384R1())
        self.vlek_key = ec.generate_private_key(ec.SECP384R1())
        ark_cn = f"ARK-{self.product}"
        self.ark = self._issue(ark_cn, self._ark_key.public_key(), ark_cn, self._ark_key, ca=True)
        self.ask = self._issue(
            f"SEV-{self.product}", self._ask_key.public_key(), ark_cn, self._ark_key, ca=True
        )
        self.asvk = self._issue(
            f"SEV-VLEK-{self.product}", self._asvk_key.public_key(), ark_cn, self._ark_key, ca=True
        )
        self.vcek = self.vcek_certificate()
        self.vlek = self.vlek_certificate()

    # ------------------------------------------------------------------ certificates

    def _ca_key(self) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
        if self._pss:  # AMD's are RSA-4096; 2048 keeps the tests fast and changes nothing here
            return rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return ec.generate_private_key(ec.SECP384R1())

    def _issue(
        self,
        subject: str,
        public_key: object,
        issuer: str,
        signing_key: object,
        *,
        ca: bool,
        extensions: Mapping[x509.ObjectIdentifier, bytes] | None = None,
    ) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_amd_name(subject))
            .issuer_name(_amd_name(issuer))
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 365 * _DAY)
        )
        if ca:
            builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        for oid, value in (extensions or {}).items():
            builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
        return builder.sign(
            signing_key,  # type: ignore[arg-type]
            hashes.SHA384(),
            rsa_padding=AMD_PSS if self._pss else None,
        )

    def _spl_extensions(self, tcb: TcbVersion) -> dict[x509.ObjectIdentifier, bytes]:
        ext = {
            snp_collateral.OID_BLSPL: _der_int(tcb.bootloader),
            snp_collateral.OID_TEESPL: _der_int(tcb.tee),
            snp_collateral.OID_SNPSPL: _der_int(tcb.snp),
        }
        for minor in (4, 5, 6, 7):  # reserved SPLs, present (as zero) in AMD's certificates
            ext[x509.ObjectIdentifier(f"1.3.6.1.4.1.3704.1.3.{minor}")] = _der_int(0)
        ext[snp_collateral.OID_UCODESPL] = _der_int(tcb.microcode)
        if tcb.fmc is not None:
            ext[snp_collateral.OID_FMCSPL] = _der_int(tcb.fmc)
        return ext

    def vcek_certificate(
        self,
        *,
        tcb: TcbVersion | None = None,
        chip_id: bytes | None = None,
        product_name: str | None = None,
        omit: Collection[x509.ObjectIdentifier] = (),
        hwid_wrapped: bool = False,
        ask_of: SnpAuthority | None = None,
    ) -> x509.Certificate:
        """A VCEK for this chip's key, signed by the ASK (of ``ask_of``, to forge one); the
        other knobs make wrong ones for tests."""
        chip_id = self.chip_id if chip_id is None else chip_id
        hwid = chip_id[:8] if self.product == TURIN else chip_id
        if hwid_wrapped:
            hwid = bytes([0x04, len(hwid)]) + hwid
        ext = {
            snp_collateral.OID_STRUCT_VERSION: _der_int(1),
            snp_collateral.OID_PRODUCT_NAME: _ia5(product_name or self.product_name),
            **self._spl_extensions(tcb or self.tcb),
            snp_collateral.OID_HWID: hwid,  # raw bytes, no ASN.1 tag: as AMD's KDS writes it
        }
        ext = {oid: value for oid, value in ext.items() if oid not in omit}
        issuer = ask_of or self
        return self._issue(
            "SEV-VCEK",
            self.vcek_key.public_key(),
            f"SEV-{issuer.product}",
            issuer._ask_key,
            ca=False,
            extensions=ext,
        )

    def vlek_certificate(self, *, tcb: TcbVersion | None = None) -> x509.Certificate:
        """The cloud provider's VLEK (cspID, no hwID), signed by the ASVK."""
        ext = {
            snp_collateral.OID_STRUCT_VERSION: _der_int(1),
            snp_collateral.OID_PRODUCT_NAME: _ia5(self.product),
            **self._spl_extensions(tcb or self.tcb),
            snp_collateral.OID_CSPID: _ia5(self.csp_id),
        }
        issuer = f"SEV-VLEK-{self.product}"
        return self._issue(
            "SEV-VLEK", self.vlek_key.public_key(), issuer, self._asvk_key, ca=False, extensions=ext
        )

    def sign_as(self, role: str, data: bytes) -> bytes:
        """Sign ``data`` as the ARK, ASK or ASVK would sign a TBSCertificate or TBSCertList:
        lets hostile-input tests build validly signed certificates no builder would make."""
        key = {"ark": self._ark_key, "ask": self._ask_key, "asvk": self._asvk_key}[role]
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(data, AMD_PSS, hashes.SHA384())
        return key.sign(data, ec.ECDSA(hashes.SHA384()))

    def issue_leaf(
        self,
        public_key: object,
        extensions: Mapping[x509.ObjectIdentifier, bytes],
        *,
        subject: str = "SEV-VCEK",
    ) -> x509.Certificate:
        """Any leaf the ASK signs: a wrong key type, odd AMD extensions (hostile tests)."""
        issuer = f"SEV-{self.product}"
        return self._issue(
            subject, public_key, issuer, self._ask_key, ca=False, extensions=extensions
        )

    @property
    def ark_sha256(self) -> str:
        return hashlib.sha256(self.ark.public_bytes(_DER)).hexdigest()

    def certificates(self, signer: str = VCEK) -> tuple[bytes, bytes, bytes]:
        """(ARK, ASK, VCEK) DER, or (ARK, ASVK, VLEK) for ``signer="vlek"``."""
        chain = (
            (self.ark, self.ask, self.vcek) if signer == VCEK else (self.ark, self.asvk, self.vlek)
        )
        return tuple(c.public_bytes(_DER) for c in chain)  # type: ignore[return-value]

    # -------------------------------------------------------------------- collateral

    def crl(
        self,
        *,
        signer: str = VCEK,
        mode: str = "valid",
        revoked: Collection[str] = (),
        now: float | None = None,
    ) -> bytes:
        """The ARK's CRL (DER) for the VCEK or VLEK side; ``revoked`` names ask/vcek/asvk/vlek."""
        if mode not in CRL_MODES or mode == "missing":
            raise ValueError(f"CRL mode {mode!r}")
        at = datetime.datetime.fromtimestamp(time.time() if now is None else now, datetime.UTC)
        issued, next_update = {
            "stale": (at - 30 * _DAY, at - _DAY),
            "future": (at + _DAY, at + 31 * _DAY),
        }.get(mode, (at - _DAY, at + 30 * _DAY))
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ark.subject)
            .last_update(issued)
            .next_update(next_update)
        )
        certs = {"ask": self.ask, "vcek": self.vcek, "asvk": self.asvk, "vlek": self.vlek}
        for name in revoked:
            serial = certs[name].serial_number
            entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(issued)
            builder = builder.add_revoked_certificate(entry.build())
        key = self._ca_key() if mode == "mis-signed" else self._ark_key
        crl = builder.sign(key, hashes.SHA384(), rsa_padding=AMD_PSS if self._pss else None)  # type: ignore[arg-type]
        return crl.public_bytes(_DER)

    def collateral(
        self,
        *,
        crl: str = "valid",
        vlek_crl: str = "valid",
        revoked: Collection[str] = (),
        chain: bool = True,
        vcek: bool = True,
        vlek: bool = True,
        now: float | None = None,
    ) -> CollateralBundle:
        """A bundle as ``sealagg attest collateral fetch`` would write it for this chip.

        ``crl``/``vlek_crl``: one of :data:`CRL_MODES`; ``revoked``: ask, vcek, asvk, vlek;
        ``chain``/``vcek``/``vlek``: False leaves that item out."""
        p = self.product
        files: dict[str, bytes] = {}
        if chain:
            files[snp_collateral.chain_path(p, VCEK)] = b"".join(
                c.public_bytes(_PEM) for c in (self.ask, self.ark)
            )
            files[snp_collateral.chain_path(p, VLEK)] = b"".join(
                c.public_bytes(_PEM) for c in (self.asvk, self.ark)
            )
        for signer, mode, names in (
            (VCEK, crl, {"ask", "vcek"}),
            (VLEK, vlek_crl, {"asvk", "vlek"}),
        ):
            if mode != "missing":
                files[snp_collateral.crl_path(p, signer)] = self.crl(
                    signer=signer, mode=mode, revoked=[n for n in revoked if n in names], now=now
                )
        if vcek:
            path = snp_collateral.vcek_path(p, self.chip_id, self.tcb)
            files[path] = self.vcek.public_bytes(_DER)
        if vlek:
            files[snp_collateral.vlek_path(p, self.tcb)] = self.vlek.public_bytes(_DER)
        return CollateralBundle(files)

    # ------------------------------------------------------------------------ reports

    def report(
        self,
        report_data: bytes,
        *,
        measurement: bytes,
        version: int | None = None,
        debug: bool = False,
        guest_svn: int = 1,
        vmpl: int = 0,
        tcb: TcbVersion | None = None,
        committed_tcb: TcbVersion | None = None,
        signer: str = VCEK,
        cpuid: tuple[int, int, int] | None = None,
    ) -> bytes:
        """A signed ATTESTATION_REPORT (0x4A0 bytes) in the ABI layout.

        ``version`` defaults to 2 (3 on Turin, whose firmware never writes 2); from 3 on
        the CPUID family/model/stepping of the product are written (``cpuid`` overrides)."""
        version = (3 if self.product == TURIN else 2) if version is None else version
        tcb = tcb or self.tcb
        raw = bytearray(snp_abi.REPORT_BYTES)
        policy = 0x30000 | (1 << snp_abi.POLICY_DEBUG_BIT if debug else 0)  # SMT + reserved 17
        struct.pack_into("<IIQ", raw, 0x000, version, guest_svn, policy)
        struct.pack_into("<II", raw, 0x030, vmpl, snp_abi.SIG_ALGO_ECDSA_P384_SHA384)
        raw[0x038:0x040] = tcb.pack()  # CURRENT_TCB
        struct.pack_into("<I", raw, 0x048, (1 if signer == VLEK else 0) << 2)  # KEY_INFO
        raw[0x050:0x090] = report_data
        raw[0x090:0x0C0] = measurement
        raw[0x180:0x188] = tcb.pack()  # REPORTED_TCB
        if version >= 3:
            raw[0x188:0x18B] = bytes(cpuid or CPUID[self.product])
        raw[0x1A0:0x1E0] = self.chip_id
        raw[0x1E0:0x1E8] = (committed_tcb or tcb).pack()  # COMMITTED_TCB
        raw[0x1F0:0x1F8] = tcb.pack()  # LAUNCH_TCB
        self.sign(raw, signer=signer)
        return bytes(raw)

    def sign(self, raw: bytearray, *, signer: str = VCEK) -> None:
        """(Re)sign ``raw`` in place with the VCEK (or VLEK)."""
        key = self.vlek_key if signer == VLEK else self.vcek_key
        der = key.sign(bytes(raw[: snp_abi.SIGNED_BYTES]), ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der)
        off = snp_abi.SIGNATURE_OFFSET
        raw[off : off + 72] = r.to_bytes(72, "little")
        raw[off + 72 : off + 144] = s.to_bytes(72, "little")

    def attester(self, measurement: bytes, **kwargs: object) -> SnpTestAttester:
        return SnpTestAttester(self, measurement, kwargs)


class SnpTestAttester:
    """Stands in for the SNP firmware behind the :class:`attest.Attester` interface.

    ``options`` go to :meth:`SnpAuthority.report` (``signer="vlek"`` also switches the
    certificate table to ARK, ASVK, VLEK)."""

    format = SEV_SNP
    insecure = False

    def __init__(self, authority: SnpAuthority, measurement: bytes, options: Mapping) -> None:
        self.authority, self.measurement, self.options = authority, measurement, dict(options)

    def evidence(self, report_data: bytes) -> Evidence:
        raw = self.authority.report(report_data, measurement=self.measurement, **self.options)
        signer = str(self.options.get("signer", VCEK))
        return Evidence(SEV_SNP, raw, self.authority.certificates(signer))

    def collateral(self) -> CollateralBundle:
        """What the appliance would ship beside this evidence."""
        return self.authority.collateral()
