"""The appliance's own check of round members against the authority's installed roster.

Clients refuse every round that lists a party the authority's signed roster does not admit
(``crypto.roster.members_from_roster``), so a round that includes one only wastes everyone's
time: the honest appliance leaves such clients out of round selection and refuses their
uploads, and audits why (``client_not_on_roster``). A client is admitted when the installed
roster, verified against the pinned authority key, lists its name, valid now, with exactly the
identity key the appliance recorded for it and the TLS key its current certificate carries,
in a role that contributes (or as the ckks key holder).

This protects availability, not secrecy: a malicious appliance can skip this check, and the
clients' own check is what stops it. Without a pinned authority (development federations)
the gate admits every registered client, as before.

Everything is read from the federation folder and cached by file stamps, so a roster
installed (or a client issued or revoked) by another process applies at the next round.
"""

from __future__ import annotations

import dataclasses
import hmac
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from sealagg.appliance import kit, pki
from sealagg.appliance.errors import ProvisioningError
from sealagg.appliance.federation import (
    MAX_ROSTER_FILE_BYTES,
    ClientRecord,
    FederationPaths,
)
from sealagg.crypto.errors import RosterError
from sealagg.crypto.roster import CONTRIBUTING_ROLES, Roster, RosterEntry, verify_roster

__all__ = ["RosterGate", "RosterView"]

_Stamp = tuple[tuple[int, int, int] | None, ...]


@dataclasses.dataclass(frozen=True)
class RosterView:
    """The installed roster as the appliance serves and enforces it."""

    #: The signed roster file, exactly as the authority signed it (b"": none installed).
    signed: bytes
    #: The roster, verified against the pinned authority key; None without one.
    roster: Roster | None
    #: An authority is pinned: only what its roster admits takes part.
    pinned: bool
    #: Why no roster can be enforced although an authority is pinned (then nobody is admitted).
    problem: str | None = None
    #: The roster's entries by name (one lookup per upload, whatever the roster's size).
    by_name: Mapping[str, RosterEntry] = dataclasses.field(default_factory=dict)

    @property
    def version(self) -> int:
        """The roster version round transcripts name (0: no roster, a development federation)."""
        return self.roster.version if self.roster is not None else 0


class RosterGate:
    """Which registered clients the installed, authority-signed roster admits now."""

    def __init__(self, folder: Path) -> None:
        self.paths = FederationPaths(Path(folder))
        self._view: tuple[_Stamp, RosterView] | None = None
        self._keys: tuple[_Stamp, dict[str, tuple[bytes, bytes | None]]] | None = None

    def view(self) -> RosterView:
        """The installed roster, re-read and re-verified whenever its files changed."""
        stamp = _stamps(self.paths.roster, self.paths.authority_public_key)
        if self._view is None or self._view[0] != stamp:
            self._view = (stamp, self._load_view())
        return self._view[1]

    def refusal(self, name: str, *, now: datetime, key_holder: str | None = None) -> str | None:
        """Why ``name`` may not take part in a round now; None when the roster admits it.

        ``key_holder`` names the ckks key holder, the one party that may take part in a
        role that contributes nothing."""
        view = self.view()
        if not view.pinned:
            return None
        if view.roster is None:
            return view.problem or "no roster signed by the federation authority is installed"
        roster = view.roster
        entry = view.by_name.get(name)
        if entry is None:
            return f"{name!r} is not on the federation roster (version {roster.version})"
        try:
            entry.check_valid_at(now)
        except RosterError as error:
            return f"{error} (roster version {roster.version})"
        identity, tls_key = self._recorded_keys().get(name, (None, None))
        if identity is None or not hmac.compare_digest(identity, entry.identity_key):
            return (
                f"the identity key this appliance holds for {name!r} is not the one on roster "
                f"version {roster.version}"
            )
        if tls_key is None or not hmac.compare_digest(tls_key, entry.tls_key_sha256):
            return (
                f"the TLS key of {name!r}'s certificate is not the one on roster version "
                f"{roster.version}"
            )
        if entry.role not in CONTRIBUTING_ROLES and name != key_holder:
            return f"{name!r} has roster role {entry.role.value!r}, which does not contribute"
        return None

    # ------------------------------------------------------------------------------ loading

    def _load_view(self) -> RosterView:
        key_path = self.paths.authority_public_key
        if not key_path.exists():
            return RosterView(signed=_read(self.paths.roster), roster=None, pinned=False)
        try:
            authority = kit.parse_authority_key(pki.read_file(key_path, limit=4096))
            signed = _read(self.paths.roster)
        except ProvisioningError as error:
            return RosterView(b"", None, True, f"the pinned authority key is unreadable: {error}")
        if not signed:
            return RosterView(signed, None, True, None)
        try:
            federation = _federation_name(self.paths)
            roster = verify_roster(signed, authority_key=authority, federation=federation)
        except (RosterError, ProvisioningError) as error:
            return RosterView(signed, None, True, f"the installed roster is refused: {error}")
        return RosterView(signed, roster, True, by_name={e.name: e for e in roster.entries})

    def _recorded_keys(self) -> dict[str, tuple[bytes, bytes | None]]:
        """name -> (identity key, SHA-256 of its certificate's TLS key) from the records."""
        stamp = _stamps(self.paths.clients, self.paths.revoked)
        if self._keys is None or self._keys[0] != stamp:
            keys: dict[str, tuple[bytes, bytes | None]] = {}
            for path in sorted(self.paths.clients.glob("*.json")):
                try:
                    record = ClientRecord.from_json(
                        pki.read_file(path, limit=64 * 1024), source=path
                    )
                    tls = (
                        None
                        if record.certificate_pem is None
                        else pki.spki_sha256(
                            pki.load_certificate(record.certificate_pem, what=str(path))
                        )
                    )
                except ProvisioningError:
                    continue  # a corrupt record admits nobody
                keys[record.name] = (record.identity_public_key, tls)
            self._keys = (stamp, keys)
        return self._keys[1]


def _stamps(*paths: Path) -> _Stamp:
    out = []
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            out.append(None)
            continue
        out.append((info.st_ino, info.st_mtime_ns, info.st_size))
    return tuple(out)


def _read(path: Path) -> bytes:
    if not path.exists():
        return b""
    return pki.read_file(path, limit=MAX_ROSTER_FILE_BYTES)


def _federation_name(paths: FederationPaths) -> str:
    import tomllib

    try:
        config = tomllib.loads(pki.read_file(paths.config, limit=1 << 20).decode("utf-8"))
        return pki.validate_federation_name(config["federation"]["name"])
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        raise ProvisioningError(f"{paths.config}: no federation name ({exc})") from None
