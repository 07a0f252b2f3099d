"""Verify the appliance's TEE before any update leaves this client (attested mode).

Flow (the relay defence is in steps 2-3):

1. Ask the appliance (over the kit's CA-trusted channel) which TLS certificate C it will
   attest, and check C was issued by the federation CA for serving.
2. Pin C: reopen the channel with C as its only trust anchor. From now on every handshake
   must present exactly C, i.e. the live TLS session's key is C's key.
3. Over the pinned channel, send a fresh verifier nonce and appraise *all* the evidence
   (the CPU TEE's and any ``additional`` item, e.g. a GPU's) against the kit's policy with
   C's SubjectPublicKeyInfo as the bound key, using the kit's collateral bundle plus the one
   the appliance sends (vendor-signed: its carrier adds no trust; a malformed one is a
   refusal).
4. Report the result to the appliance (audited there) and raise on refusal: nothing is sent.

Why a relay fails: the appliance's TLS key is born in memory inside the TEE at every start
(appliance/tee_identity.py). A relay holding a copy of the federation folder (every key on
disk, the CA's too) can present the folder's ``server.key`` or a CA-signed certificate of
its own, but not C's key. If it passes C through, the pinned handshake fails; if it names
its own certificate, the genuine evidence is bound to another key. Both are refused as
``Reason.WRONG_TLS_KEY`` before any update byte is sent.

Verification runs before the first upload and again every round (or every
``interval_seconds``, and always after the pinned certificate stopped answering). A result
from the INSECURE software attester is accepted only if *this client's own* configuration
allows it (``Connection(allow_insecure_attester=True)`` or
``SEALAGG_ALLOW_INSECURE_ATTESTER=1``; default refuse), never because the kit's policy or
the appliance says so, and then with a loud warning.
"""

from __future__ import annotations

import datetime
import logging
import os
import secrets
import sys
import time
from collections.abc import Callable

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID

from sealagg.appliance.kit import ClientKit
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire import sealagg_pb2_grpc as pb_grpc
from sealagg.attest import (
    INSECURE_WARNING,
    AttestationError,
    AttestationRefusedError,
    AttestationResult,
    Evidence,
    Policy,
    PolicyError,
    Reason,
    Verifier,
    VerifierLike,
    parse_policy,
)
from sealagg.attest.collateral import CollateralBundle
from sealagg.attest.errors import AppraisalFailure
from sealagg.client_shim.connection import MAX_MESSAGE_BYTES, Connection

_log = logging.getLogger("sealagg.client.attestation")

CALL_TIMEOUT = 15.0
POLICY_SOURCE = "attestation_policy.toml in the client kit"
#: The data owner's switch for the INSECURE software attester ("1" accepts it).
ALLOW_INSECURE_ENV = "SEALAGG_ALLOW_INSECURE_ATTESTER"


def policy_from_kit(kit: ClientKit) -> Policy | None:
    """The kit's policy, None if the kit has none; :class:`PolicyError` if it is malformed."""
    if kit.attestation_policy is None:
        return None
    try:
        text = kit.attestation_policy.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError(f"{POLICY_SOURCE}: not UTF-8; nothing will be sent") from None
    try:
        return parse_policy(text, source=POLICY_SOURCE)
    except PolicyError as error:
        raise PolicyError(f"{error}; nothing will be sent") from None


def collateral_from_kit(kit: ClientKit) -> CollateralBundle:
    """The collateral bundle shipped in the kit (empty if none); PolicyError if malformed."""
    try:
        return CollateralBundle.from_bytes(kit.attestation_collateral or b"")
    except AppraisalFailure as failure:
        raise PolicyError(
            f"the kit's attestation collateral is unreadable ({failure.detail}); nothing will "
            "be sent"
        ) from None


def insecure_attester_allowed(choice: bool | None) -> bool:
    """The client's own decision on the software attester: ``choice`` if given, else
    ``SEALAGG_ALLOW_INSECURE_ATTESTER=1`` in this process's environment; default refuse.

    Only the booleans count: ``bool("false")`` is True, so a string read from some file
    would otherwise switch the insecure attester on."""
    if choice is not None and not isinstance(choice, bool):
        raise TypeError(
            f"allow_insecure_attester is True, False or None, not {type(choice).__name__}"
        )
    if choice is not None:
        return choice
    return os.environ.get(ALLOW_INSECURE_ENV, "").strip() == "1"


class AttestationGuard:
    """Keeps one connection pinned to an attested appliance; refuses to go on otherwise."""

    def __init__(
        self,
        connection: Connection,
        policy: Policy,
        *,
        verifier: VerifierLike | None = None,
        interval_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        allow_insecure: bool | None = None,
    ) -> None:
        """``allow_insecure``: this client accepts the software attester (None: the
        connection's ``allow_insecure_attester``, then the environment; default refuse)."""
        self.connection = connection
        if allow_insecure is None:
            allow_insecure = getattr(connection, "allow_insecure_attester", None)
        self.allow_insecure = insecure_attester_allowed(allow_insecure)
        self.verifier = verifier or Verifier(
            policy,
            allow_insecure=self.allow_insecure,
            collateral=collateral_from_kit(connection.kit),
        )
        self.interval_seconds = interval_seconds
        self._clock = clock
        self._pinned: bytes | None = None
        self._verified_at: float | None = None
        self.last_result: AttestationResult | None = None

    @classmethod
    def from_kit(cls, connection: Connection, **kwargs: object) -> AttestationGuard | None:
        policy = policy_from_kit(connection.kit)
        return None if policy is None else cls(connection, policy, **kwargs)  # type: ignore[arg-type]

    def due(self) -> bool:
        if self._verified_at is None or self.interval_seconds <= 0 or not self._still_pinned():
            return True
        return self._clock() - self._verified_at >= self.interval_seconds

    def _still_pinned(self) -> bool:
        return self._pinned is not None and self.connection.pinned_certificate is not None

    def before_upload(self) -> AttestationResult:
        """Verify now if due (always before the first upload); raise if refused."""
        if self.due():
            return self.verify()
        assert self.last_result is not None
        return self.last_result

    def verify(self) -> AttestationResult:
        self._verified_at = None
        try:
            result = self._appraise()
        except AttestationRefusedError as refused:  # refused before any evidence was read
            result = refused.result  # type: ignore[assignment]
        except BaseException as error:
            # A certificate may already be pinned (_pin runs before the appraisal): unverified,
            # it must not carry an upload, so drop it before anything else can run.
            self._drop_pin()
            if not isinstance(error, grpc.RpcError):
                raise
            raise AttestationError(
                f"could not obtain attestation evidence from {self.connection.address}: "
                f"{error.code().name}: {error.details()}. Nothing was sent."
            ) from None
        self.last_result = result
        self._report(result)
        if not result.accepted:
            self._drop_pin()
            _log.error("attestation refused (%s): %s", result.reason.value, result.detail)  # type: ignore[union-attr]
            raise AttestationRefusedError(result)
        if result.insecure:
            print(INSECURE_WARNING, file=sys.stderr)
            _log.warning(INSECURE_WARNING)
        self._verified_at = self._clock()
        return result

    def _appraise(self) -> AttestationResult:
        if not self._still_pinned():
            self._pin(self._probe())
        nonce = self.verifier.challenge()
        try:
            reply = self._attest(nonce)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            named = self._probe()  # a restarted appliance names its new certificate
            if named == self._pinned:
                return _refused(
                    Reason.WRONG_TLS_KEY,
                    f"the appliance at {self.connection.address} names the attested "
                    "certificate but did not complete a TLS handshake with it pinned: the "
                    "server there does not hold the key its evidence is bound to (a relay?)",
                )
            self._pin(named)
            try:
                reply = self._attest(nonce)
            except grpc.RpcError as again:
                if again.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                return _refused(
                    Reason.WRONG_TLS_KEY,
                    f"the appliance at {self.connection.address} did not complete a TLS "
                    "handshake with the certificate it names: it does not hold that key (a relay?)",
                )
        if reply.tls_certificate_der != self._pinned:
            return _refused(Reason.WRONG_TLS_KEY, "the appliance now names another TLS certificate")
        evidence = [Evidence(reply.format, bytes(reply.evidence), tuple(reply.certificates))]
        evidence += [
            Evidence(item.format, bytes(item.evidence), tuple(item.certificates))
            for item in reply.additional
        ]
        try:
            collateral = CollateralBundle.from_bytes(bytes(reply.collateral))
        except AppraisalFailure as failure:
            return _refused(failure.reason, f"the appliance's collateral: {failure.detail}")
        assert self._pinned is not None
        return self.verifier.appraise(
            evidence,
            nonce=nonce,
            tls_spki_der=_spki(x509.load_der_x509_certificate(self._pinned)),
            collateral=collateral,
        )

    def _attest(self, nonce: bytes) -> pb.AttestReply:
        return self._stub().Attest(pb.AttestRequest(nonce=nonce), timeout=CALL_TIMEOUT)

    def _probe(self) -> bytes:
        """The certificate the appliance names, asked over a fresh CA-trusted channel."""
        channel = _ca_channel(self.connection.kit, self.connection.address)
        try:
            probe = pb_grpc.AggregatorStub(channel).Attest(
                pb.AttestRequest(nonce=secrets.token_bytes(32)), timeout=CALL_TIMEOUT
            )
        finally:
            channel.close()
        return bytes(probe.tls_certificate_der)

    def _pin(self, der: bytes) -> None:
        """Check the federation CA issued ``der`` for serving, and pin it."""
        cert = _federation_server_certificate(der, self.connection.kit)
        self.connection.pin_server_certificate(cert.public_bytes(Encoding.PEM))
        self._pinned = der

    def _drop_pin(self) -> None:
        """Forget a certificate that was pinned but not accepted: the connection goes back to
        the kit's CA for polls and refuses uploads (it has been pinned once) until a
        certificate is pinned *and* its evidence accepted. Without this, a refused appraisal
        left the relay's certificate pinned and ``Connection.submit`` sent to it."""
        self._pinned = None
        self.connection.unpin()

    def _stub(self) -> pb_grpc.AggregatorStub:
        return self.connection.stub

    def _report(self, result: AttestationResult) -> None:
        """Tell the appliance (its audit log) how the appraisal ended; best effort."""
        report = pb.AttestationReport(
            accepted=result.accepted,
            format=result.format,
            reason=result.reason.value if result.reason else "",
            detail=result.detail[:300],
        )
        try:
            self._stub().ReportAttestation(report, timeout=5.0)
            return
        except grpc.RpcError:
            pass
        channel = _ca_channel(self.connection.kit, self.connection.address)
        try:  # the pinned channel is down (e.g. a relay): report over the CA-trusted one
            pb_grpc.AggregatorStub(channel).ReportAttestation(report, timeout=5.0)
        except grpc.RpcError as error:
            _log.warning("could not report the attestation result: %s", error.code().name)
        finally:
            channel.close()


def require_attestation(guard: AttestationGuard | None, start: pb.RoundStart) -> None:
    """The shim's hook before a round's first upload: verify, or refuse an unverifiable round."""
    if guard is not None:
        guard.before_upload()
    elif start.mode == "attested":
        raise PolicyError(
            "the appliance runs an attested round but this client kit carries no attestation "
            "policy, so the appliance cannot be verified; nothing was sent"
        )


def _refused(reason: Reason, detail: str) -> AttestationResult:
    return AttestationResult.refused("", reason, detail)


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _issued_by_a_trusted_ca(cert: x509.Certificate, kit: ClientKit) -> None:
    """Raise InvalidSignature unless one of the kit's trusted CAs issued ``cert``."""
    for ca in kit.ca_certificates:
        try:
            cert.verify_directly_issued_by(ca)
            return
        except (ValueError, TypeError, InvalidSignature):
            continue
    raise InvalidSignature("not issued by a CA this kit trusts")


def _federation_server_certificate(der: bytes, kit: ClientKit) -> x509.Certificate:
    """The appliance certificate to pin, if the federation CA issued it for server use now."""
    try:
        cert = x509.load_der_x509_certificate(der)
        _issued_by_a_trusted_ca(cert, kit)  # during a CA rotation: the old or the new CA
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        raise AttestationRefusedError(
            _refused(
                Reason.BROKEN_CHAIN, "the appliance's TLS certificate is not from this federation"
            )
        ) from None
    now = datetime.datetime.now(datetime.UTC)
    if ExtendedKeyUsageOID.SERVER_AUTH not in usage or not (
        cert.not_valid_before_utc <= now <= cert.not_valid_after_utc
    ):
        raise AttestationRefusedError(
            _refused(
                Reason.BROKEN_CHAIN, "the appliance's TLS certificate is not valid for serving"
            )
        )
    return cert


def _ca_channel(kit: ClientKit, address: str) -> grpc.Channel:
    ca, key, cert = kit.channel_credentials_material()
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.ssl_target_name_override", kit.server_name),
    ]
    return grpc.secure_channel(
        address, grpc.ssl_channel_credentials(ca, key, cert), options=options
    )
