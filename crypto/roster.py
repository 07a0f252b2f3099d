"""The federation roster: who may take part, signed by the federation authority.

Secure aggregation hides an honest client's input only among *other honest clients*. If the
appliance could name the other members of a round, it would fill a round with ghosts whose
keys it holds and read the victim's input from the "sum" (n=3 with two ghosts: exact
recovery). So the appliance's word on identities is never enough: a federation authority,
held by the security team off the appliance, signs the roster (client name -> Ed25519
identity key, TLS key fingerprint, role, validity, version, federation policy), every client
pins the authority's public key from its kit, and :func:`members_from_roster` refuses a
round that lists anyone the roster does not.

Format: the signed roster is a small JSON document ``{"format", "body", "signature"}`` whose
``body`` is the canonical JSON (sorted keys, no spaces, ASCII) of the roster and whose
``signature`` is Ed25519 over ``SIGNATURE_CONTEXT || body``. The context keeps a roster
signature from ever verifying as another kind of message, and the exact signed bytes travel
with it, so no verifier re-serialises before checking.

Rollback: a roster's ``version`` only grows. :class:`RosterVerifier` remembers the highest
version it accepted and refuses anything older (an appliance replaying the roster from
before a client was removed), and a second, different roster with the same version.
Time is passed in (``now``), never read here.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from sealagg.crypto._primitives.signing import IdentityKey, verify_signature
from sealagg.crypto.errors import (
    MalformedRosterError,
    RosterMembershipError,
    RosterRollbackError,
    RosterSignatureError,
    RosterValidityError,
)

if TYPE_CHECKING:
    from sealagg.crypto.policy import FederationPolicy

__all__ = [
    "CONTRIBUTING_ROLES",
    "ENROLMENT_CONTEXT",
    "FORMAT",
    "SIGNATURE_CONTEXT",
    "SIGNED_FORMAT",
    "IdentityKeySigner",
    "Role",
    "Roster",
    "RosterEntry",
    "RosterVerifier",
    "Signer",
    "make_enrolment_request",
    "members_from_roster",
    "parse_signed_roster",
    "sign_roster",
    "verify_enrolment_request",
    "verify_roster",
]

FORMAT = "sealagg-roster/1"
SIGNED_FORMAT = "sealagg-signed-roster/1"
SIGNATURE_CONTEXT = b"sealagg federation roster v1\x00"
MAX_ROSTER_BYTES = 8 * 1024 * 1024
ENROLMENT_FORMAT = "sealagg-enrolment/1"
#: A client's identity key signs its enrolment request under this context (proof that the
#: requester holds the key it asks the authority to admit), never valid as a protocol message.
ENROLMENT_CONTEXT = b"sealagg enrolment request v1\x00"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: The fields of :class:`sealagg.crypto.policy.FederationPolicy`; absent ones take its defaults.
_POLICY_FIELDS = {
    "colluders",
    "minimum_sum",
    "allowed_modes",
    "security_bits",
    "min_noise_multiplier",  # the DP floor (absent: 0, no floor)
    "required_privacy",  # DP modes a round must use (absent: none required)
}


class Role(enum.Enum):
    """What a roster entry may do in a round."""

    DATA_OWNER = "data_owner"  # trains locally and contributes an update
    VENDOR = "vendor"  # the model owner's own party; contributes (and may evaluate)
    KEY_HOLDER = "key_holder"  # CKKS: holds the secret key, contributes nothing


#: Roles whose holder sends an update. A separate key holder never does: a round listing it as
#: a contributor would count a party that adds nothing towards the "sum over m clients".
CONTRIBUTING_ROLES = frozenset({Role.DATA_OWNER, Role.VENDOR})


class Signer(Protocol):
    """The federation authority's signing key: a passphrase-protected file today
    (``sealagg.appliance.authority``), an HSM or KMS later. Only these two calls are needed."""

    def sign(self, data: bytes) -> bytes: ...

    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key clients pin."""
        ...


class IdentityKeySigner:
    """A :class:`Signer` over an in-memory :class:`IdentityKey` (tests, development)."""

    def __init__(self, key: IdentityKey) -> None:
        self._key = key

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def public_key(self) -> bytes:
        return self._key.verify_key_bytes

    def __reduce__(self) -> object:
        raise TypeError("IdentityKeySigner holds a secret and cannot be pickled")


@dataclasses.dataclass(frozen=True)
class RosterEntry:
    """One participant the authority admitted."""

    name: str
    identity_key: bytes  # raw Ed25519 verify key; the client made the pair, the authority signs it
    tls_key_sha256: bytes  # SHA-256 of the DER SubjectPublicKeyInfo of the client's TLS key
    role: Role
    not_before: datetime
    not_after: datetime

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise MalformedRosterError(f"roster entry name {self.name!r} is invalid")
        if not isinstance(self.identity_key, bytes) or len(self.identity_key) != 32:
            raise MalformedRosterError(f"roster entry {self.name!r}: identity key is not 32 bytes")
        if not isinstance(self.tls_key_sha256, bytes) or len(self.tls_key_sha256) != 32:
            raise MalformedRosterError(f"roster entry {self.name!r}: TLS key digest not 32 bytes")
        if not isinstance(self.role, Role):
            raise MalformedRosterError(f"roster entry {self.name!r}: unknown role {self.role!r}")
        _aware(self.not_before, "not_before")
        _aware(self.not_after, "not_after")
        if self.not_after <= self.not_before:
            raise MalformedRosterError(f"roster entry {self.name!r} is valid for no time at all")

    def check_valid_at(self, now: datetime) -> None:
        """Raise :class:`RosterValidityError` unless this entry is valid at ``now``."""
        now = _aware(now, "now")
        if now < self.not_before:
            raise RosterValidityError(
                f"{self.name!r} is on the roster only from {_iso(self.not_before)}"
            )
        if now >= self.not_after:
            raise RosterValidityError(
                f"{self.name!r}'s roster entry expired at {_iso(self.not_after)}"
            )

    def _to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "identity_key": self.identity_key.hex(),
            "tls_key_sha256": self.tls_key_sha256.hex(),
            "role": self.role.value,
            "not_before": _iso(self.not_before),
            "not_after": _iso(self.not_after),
        }

    @classmethod
    def _from_json(cls, item: Any) -> RosterEntry:
        if not isinstance(item, dict) or set(item) != {
            "name",
            "identity_key",
            "tls_key_sha256",
            "role",
            "not_before",
            "not_after",
        }:
            raise MalformedRosterError("a roster entry has missing or unknown fields")
        try:
            return cls(
                name=item["name"],
                identity_key=bytes.fromhex(item["identity_key"]),
                tls_key_sha256=bytes.fromhex(item["tls_key_sha256"]),
                role=Role(item["role"]),
                not_before=_parse_time(item["not_before"]),
                not_after=_parse_time(item["not_after"]),
            )
        except (ValueError, TypeError) as exc:
            raise MalformedRosterError(f"a roster entry is malformed: {exc}") from None


@dataclasses.dataclass(frozen=True)
class Roster:
    """The authority's list of participants and the federation's policy, at one version.

    ``policy`` carries the fields of the federation policy (``colluders`` c, ``minimum_sum``
    m, ``allowed_modes``, ``security_bits``, the DP floor ``min_noise_multiplier`` and
    ``required_privacy``) as a plain mapping, so the authority signs
    exactly what clients enforce; :meth:`federation_policy` turns it into the
    :class:`~sealagg.crypto.policy.FederationPolicy` (absent fields: its defaults).
    """

    federation: str
    version: int
    issued_at: datetime
    entries: tuple[RosterEntry, ...]
    policy: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.federation, str) or not _NAME.fullmatch(self.federation):
            raise MalformedRosterError(f"roster federation name {self.federation!r} is invalid")
        if isinstance(self.version, bool) or not isinstance(self.version, int):
            raise MalformedRosterError("roster version is not an integer")
        if self.version < 1:
            raise MalformedRosterError("roster versions start at 1")
        _aware(self.issued_at, "issued_at")
        names = [e.name for e in self.entries]
        if len(set(names)) != len(names):
            raise MalformedRosterError("the roster names a client twice")
        keys = [e.identity_key for e in self.entries]
        if len(set(keys)) != len(keys):  # one key, two names: one party counted twice
            raise MalformedRosterError("two roster entries share an identity key")
        _check_policy(self.policy)
        self.federation_policy()  # a policy no client could enforce makes the roster malformed

    def federation_policy(self) -> FederationPolicy:
        """The signed policy, as the one check every client and the appliance run takes it."""
        from sealagg.crypto.policy import FederationPolicy

        fields = dict(self.policy)
        for name in ("allowed_modes", "required_privacy"):
            if name in fields:
                fields[name] = frozenset(fields[name])
        try:
            return FederationPolicy(**fields)
        except (TypeError, ValueError) as exc:
            raise MalformedRosterError(f"the roster's policy is invalid: {exc}") from None

    def entry(self, name: str) -> RosterEntry:
        """The entry for ``name``; :class:`RosterMembershipError` if the roster has none."""
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise RosterMembershipError(f"{name!r} is not on the federation roster")

    def by_identity_key(self, key: bytes) -> RosterEntry:
        """The entry whose identity key is ``key``; :class:`RosterMembershipError` if none."""
        for entry in self.entries:
            if hmac.compare_digest(entry.identity_key, bytes(key)):
                return entry
        raise RosterMembershipError("that identity key is not on the federation roster")

    def with_entry(self, entry: RosterEntry, *, issued_at: datetime) -> Roster:
        """The next version, with ``entry`` added (or replacing the entry of the same name)."""
        kept = tuple(e for e in self.entries if e.name != entry.name)
        return dataclasses.replace(
            self, version=self.version + 1, issued_at=issued_at, entries=(*kept, entry)
        )

    def without(self, name: str, *, issued_at: datetime) -> Roster:
        """The next version, without ``name`` (raises if it was not on the roster)."""
        self.entry(name)
        kept = tuple(e for e in self.entries if e.name != name)
        return dataclasses.replace(
            self, version=self.version + 1, issued_at=issued_at, entries=kept
        )

    def encode(self) -> bytes:
        """The canonical body the authority signs (sorted keys, no whitespace, ASCII)."""
        body = {
            "format": FORMAT,
            "federation": self.federation,
            "version": self.version,
            "issued_at": _iso(self.issued_at),
            "policy": dict(self.policy),
            "entries": [e._to_json() for e in sorted(self.entries, key=lambda e: e.name)],
        }
        return _canonical(body)

    @classmethod
    def decode(cls, body: bytes) -> Roster:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedRosterError(f"the roster body is not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise MalformedRosterError(f"the roster body is not {FORMAT}")
        if set(data) != {"format", "federation", "version", "issued_at", "policy", "entries"}:
            raise MalformedRosterError("the roster body has missing or unknown fields")
        if not isinstance(data["entries"], list) or not isinstance(data["policy"], dict):
            raise MalformedRosterError("the roster's entries or policy are malformed")
        try:
            issued_at = _parse_time(data["issued_at"])
        except (ValueError, TypeError) as exc:
            raise MalformedRosterError(f"the roster's issued_at is malformed: {exc}") from None
        return cls(
            federation=data["federation"],
            version=data["version"],
            issued_at=issued_at,
            entries=tuple(RosterEntry._from_json(item) for item in data["entries"]),
            policy=data["policy"],
        )

    @property
    def digest(self) -> bytes:
        """SHA-256 of the canonical body: names this exact roster (e.g. in a round transcript)."""
        return hashlib.sha256(self.encode()).digest()


def sign_roster(roster: Roster, signer: Signer) -> bytes:
    """The signed roster file: canonical body and the authority's signature over it."""
    body = roster.encode()
    signature = signer.sign(SIGNATURE_CONTEXT + body)
    verify_signature(signer.public_key(), SIGNATURE_CONTEXT + body, signature, signer="authority")
    document = {"format": SIGNED_FORMAT, "body": body.decode("ascii"), "signature": signature.hex()}
    return _canonical(document) + b"\n"


def parse_signed_roster(data: bytes) -> tuple[bytes, bytes]:
    """(body, signature) of a signed roster file, unverified: verify with :func:`verify_roster`."""
    if not isinstance(data, bytes | bytearray) or len(data) > MAX_ROSTER_BYTES:
        raise MalformedRosterError("the signed roster is missing or too large")
    if not data:
        raise MalformedRosterError("no roster was supplied")
    try:
        document = json.loads(bytes(data))
        if not isinstance(document, dict) or document.get("format") != SIGNED_FORMAT:
            raise ValueError(f"not a {SIGNED_FORMAT} document")
        if set(document) != {"format", "body", "signature"}:
            raise ValueError("missing or unknown fields")
        body = document["body"].encode("ascii")
        signature = bytes.fromhex(document["signature"])
    except (ValueError, TypeError, AttributeError, UnicodeError) as exc:
        raise MalformedRosterError(f"the signed roster is malformed: {exc}") from None
    return body, signature


def verify_roster(data: bytes, *, authority_key: bytes, federation: str) -> Roster:
    """The roster in ``data`` if the authority whose raw Ed25519 key is ``authority_key``
    signed it for ``federation``. Raises :class:`RosterSignatureError` otherwise.

    Checks only signature and federation: versions are :class:`RosterVerifier`'s job, entry
    validity :func:`members_from_roster`'s (both depend on state or time the caller holds).
    """
    body, signature = parse_signed_roster(data)
    try:
        verify_signature(authority_key, SIGNATURE_CONTEXT + body, signature, signer="authority")
    except Exception as exc:  # BadSignatureError or MalformedMessageError (key/sig length)
        raise RosterSignatureError(
            f"the roster is not signed by the federation authority pinned in this kit ({exc})"
        ) from None
    roster = Roster.decode(body)
    if roster.federation != federation:
        raise RosterSignatureError(
            f"the roster is for federation {roster.federation!r}, not {federation!r}"
        )
    return roster


class RosterVerifier:
    """A client's view of the roster: pinned authority key, highest version accepted so far.

    ``minimum_version`` (and ``minimum_digest``, the digest of the roster accepted at that
    version) restore the durable record of a previous run (the highest version this client
    ever accepted), so a restart does not reopen the door to a rollback;
    ``client_shim/roster_record.py`` keeps that record beside the kit.
    """

    def __init__(
        self,
        authority_key: bytes,
        federation: str,
        *,
        minimum_version: int = 0,
        minimum_digest: bytes | None = None,
    ):
        if not isinstance(authority_key, bytes) or len(authority_key) != 32:
            raise MalformedRosterError("the pinned authority key must be 32 raw bytes")
        self.authority_key = authority_key
        self.federation = federation
        self.version = minimum_version
        self._digest: bytes | None = minimum_digest if minimum_version else None

    @property
    def digest(self) -> bytes | None:
        """The digest of the roster accepted at :attr:`version` (None: none yet)."""
        return self._digest

    def remember(self, version: int, digest: bytes | None) -> None:
        """Raise the floor to a version accepted elsewhere (another process sharing the kit,
        an earlier run); never lowers it."""
        if version > self.version:
            self.version, self._digest = version, digest
        elif version == self.version and self._digest is None:
            self._digest = digest

    def accept(self, data: bytes) -> Roster:
        """Verify ``data`` and refuse a roster older than one already accepted (rollback)
        or a different roster under an accepted version (the authority never signs two)."""
        roster = verify_roster(data, authority_key=self.authority_key, federation=self.federation)
        if roster.version < self.version:
            raise RosterRollbackError(
                f"roster version {roster.version} is older than version {self.version}, which "
                "this client already accepted (a rollback to a superseded roster)"
            )
        if roster.version == self.version and self._digest not in (None, roster.digest):
            raise RosterRollbackError(
                f"two different rosters claim version {roster.version}; refusing both"
            )
        self.version, self._digest = roster.version, roster.digest
        return roster


class _Member(Protocol):
    """A round member as the appliance announces it (``pb.Participant`` fits)."""

    @property
    def index(self) -> int: ...

    @property
    def name(self) -> str: ...

    @property
    def identity_key(self) -> bytes: ...


def members_from_roster(
    roster: Roster,
    participants: Iterable[_Member],
    *,
    now: datetime,
    key_holder: int | None = None,
    key_holder_contributes: bool = True,
) -> dict[int, RosterEntry]:
    """Every round member's roster entry, by index; raise on the first member that the
    authority did not admit.

    Why each refusal: a member not on the roster, or announced with another identity key
    than the roster's, is a ghost whose key the appliance may hold; with enough ghosts the
    "sum" is the victim's input. An expired or not-yet-valid entry is a participant the
    authority did not admit *now*. A repeated index, name or key counts one party twice.
    Every contributor needs a contributing role: a ``key_holder`` party holds no data, and
    counting it towards the "sum over m clients" would let the sum cover one data owner
    fewer than claimed. Only a CKKS ``key_holder`` that does not contribute may have any
    role.
    """
    entries: dict[int, RosterEntry] = {}
    seen_names: set[str] = set()
    for member in participants:
        index, name, key = int(member.index), str(member.name), bytes(member.identity_key)
        if index in entries or name in seen_names:
            raise RosterMembershipError(f"the round lists member {index} / {name!r} twice")
        entry = roster.entry(name)
        if not hmac.compare_digest(entry.identity_key, key):
            raise RosterMembershipError(
                f"the round announces {name!r} with an identity key that is not the one on "
                f"roster version {roster.version}"
            )
        entry.check_valid_at(now)
        holder = key_holder is not None and index == key_holder
        if holder and not key_holder_contributes:
            pass  # any admitted party may hold the key for a round it does not contribute to
        elif entry.role not in CONTRIBUTING_ROLES:
            raise RosterMembershipError(
                f"{name!r} has role {entry.role.value!r} and may not contribute to a round"
            )
        entries[index] = entry
        seen_names.add(name)
    if key_holder is not None and key_holder not in entries:
        raise RosterMembershipError("the round's key holder is not one of its members")
    return entries


# ------------------------------------------------------------------------------- enrolment


def make_enrolment_request(
    *, name: str, federation: str, identity: IdentityKey, tls_csr_pem: str
) -> bytes:
    """The request a client hands the authority: its name, the public half of the identity key
    it generated itself, and a CSR for the TLS key it generated itself; signed by the identity
    key. Only public keys: neither the authority nor the appliance ever sees a private one."""
    body = {
        "format": ENROLMENT_FORMAT,
        "federation": federation,
        "name": name,
        "identity_key": identity.verify_key_bytes.hex(),
        "tls_csr_pem": tls_csr_pem,
    }
    encoded = _canonical(body)
    signature = identity.sign(ENROLMENT_CONTEXT + encoded)
    document = {
        "format": ENROLMENT_FORMAT,
        "body": encoded.decode("ascii"),
        "signature": signature.hex(),
    }
    return json.dumps(document, indent=2).encode() + b"\n"


def verify_enrolment_request(data: bytes) -> dict[str, str]:
    """The fields of an enrolment request whose identity key signed it (proof of possession).

    The CSR inside is checked by whoever uses it (the authority and the appliance's CA)."""
    try:
        document = json.loads(bytes(data))
        if set(document) != {"format", "body", "signature"}:
            raise ValueError("missing or unknown fields")
        encoded = document["body"].encode("ascii")
        signature = bytes.fromhex(document["signature"])
        body = json.loads(encoded)
        if body.get("format") != ENROLMENT_FORMAT or set(body) != {
            "format",
            "federation",
            "name",
            "identity_key",
            "tls_csr_pem",
        }:
            raise ValueError(f"not a {ENROLMENT_FORMAT} request")
        key = bytes.fromhex(body["identity_key"])
        if not all(isinstance(body[f], str) for f in body) or not _NAME.fullmatch(body["name"]):
            raise ValueError("a field is not a valid string")
    except (ValueError, TypeError, AttributeError, UnicodeError) as exc:
        raise MalformedRosterError(f"the enrolment request is malformed: {exc}") from None
    try:
        verify_signature(key, ENROLMENT_CONTEXT + encoded, signature, signer=body["name"])
    except Exception as exc:
        raise RosterSignatureError(
            f"the enrolment request is not signed by the identity key it names ({exc})"
        ) from None
    return body


# ---------------------------------------------------------------------------------- helpers


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _check_policy(policy: Any) -> None:
    if not isinstance(policy, Mapping):
        raise MalformedRosterError("the roster's policy is not a mapping")
    unknown = set(policy) - _POLICY_FIELDS
    if unknown:
        raise MalformedRosterError(f"the roster's policy has unknown fields {sorted(unknown)}")
    for field in ("colluders", "minimum_sum", "security_bits"):
        value = policy.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise MalformedRosterError(f"policy {field} is not an integer")
        if value is not None and value < 0:
            raise MalformedRosterError(f"policy {field} is negative")
    modes = policy.get("allowed_modes")
    if modes is not None and (
        not isinstance(modes, list | tuple) or not all(isinstance(m, str) for m in modes)
    ):
        raise MalformedRosterError("policy allowed_modes is not a list of mode names")
    floor = policy.get("min_noise_multiplier")
    if floor is not None and (
        isinstance(floor, bool)
        or not isinstance(floor, int | float)
        or not math.isfinite(floor)
        or floor < 0
    ):
        raise MalformedRosterError("policy min_noise_multiplier is not a finite number >= 0")
    required = policy.get("required_privacy")
    if required is not None and (
        not isinstance(required, list | tuple) or not all(isinstance(m, str) for m in required)
    ):
        raise MalformedRosterError("policy required_privacy is not a list of DP mode names")


def _aware(moment: Any, what: str) -> datetime:
    if not isinstance(moment, datetime) or moment.tzinfo is None or moment.utcoffset() is None:
        raise MalformedRosterError(f"{what} must be a timezone-aware datetime")
    return moment.astimezone(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _parse_time(text: Any) -> datetime:
    if not isinstance(text, str):
        raise TypeError("a time must be an RFC 3339 string")
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no timezone")
    return moment.astimezone(UTC)
