"""The client's durable record of the newest roster it verified (rollback protection).

The authority removes a client from the federation by signing a new roster version without
it. The old version stays validly signed forever, so an appliance could hand it out again
and bring the removed party (say, a colluder) back into rounds. A client refuses any roster
older than one it accepted (:class:`~sealagg.crypto.roster.RosterVerifier`); this module
makes that memory survive a restart: ``<kit path>.roster`` beside the kit holds one line,
``<version> <SHA-256 of the roster body, hex>``, replaced atomically (written to a temporary
file, fsynced, renamed, folder fsynced) under an exclusive lock, so two processes sharing a
kit never lower each other's record. A damaged record refuses every roster until it is
repaired: forgetting the floor would reopen the rollback.

A freshly enrolled client has no record yet. Its countersigned kit carries the roster the
authority signed when it vouched for the kit (``AUTHORITY.roster.json``); :func:`for_kit`
verifies it under the pinned key and raises the record to its version before the client
meets the appliance, so even its first roster cannot be an older one. A kit countersigned
before kits carried a roster leaves the record as it is (the first roster is then the
appliance's word until the client learns a newer one).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import filelock

from sealagg.appliance.kit import ClientKit
from sealagg.crypto.errors import MalformedRosterError
from sealagg.crypto.roster import Roster, RosterVerifier, verify_roster

__all__ = ["DurableRosterVerifier", "for_kit", "read_record", "record_beside"]

_SUFFIX = ".roster"
_MAX_RECORD_BYTES = 256


def record_beside(kit: ClientKit) -> Path:
    """Where ``kit`` keeps its roster record: ``<kit path>.roster`` next to the kit."""
    return kit.source.with_name(kit.source.name + _SUFFIX)


def read_record(path: Path) -> tuple[int, bytes | None]:
    """(highest version accepted, its roster digest); (0, None) when there is no record."""
    try:
        data = Path(path).read_bytes()[: _MAX_RECORD_BYTES + 1]
    except FileNotFoundError:
        return 0, None
    try:
        if len(data) > _MAX_RECORD_BYTES:
            raise ValueError("too long")
        version_text, digest_hex = data.decode("ascii").split()
        version, digest = int(version_text), bytes.fromhex(digest_hex)
        if version < 1 or len(digest) != 32:
            raise ValueError("out of range")
    except (ValueError, UnicodeDecodeError):
        raise MalformedRosterError(
            f"{path} is damaged: it should hold the newest roster version this client "
            "accepted; repair or restore it (deleting it would let an older roster back in)"
        ) from None
    return version, digest


class DurableRosterVerifier(RosterVerifier):
    """A :class:`RosterVerifier` whose floor (the highest version accepted) lives in a file."""

    def __init__(self, authority_key: bytes, federation: str, path: Path) -> None:
        self.path = Path(path)
        version, digest = read_record(self.path)
        super().__init__(authority_key, federation, minimum_version=version, minimum_digest=digest)

    def accept(self, data: bytes) -> Roster:
        """Verify ``data`` against the floor on record (re-read under the lock: another
        process may have raised it) and raise the record before the roster is used."""
        with _locked(self.path):
            self.remember(*read_record(self.path))
            before = self.version
            roster = super().accept(data)
            if roster.version > before:
                _write_record(self.path, roster.version, roster.digest)
        return roster

    def adopt_kit_roster(self, data: bytes) -> Roster:
        """Raise the floor to the roster the authority put in the kit, once verified under
        the pinned key. An older one is no error (the kit was signed before the roster moved
        on) and lowers nothing; another roster under the recorded version is refused."""
        with _locked(self.path):
            self.remember(*read_record(self.path))
            roster = verify_roster(
                data, authority_key=self.authority_key, federation=self.federation
            )
            if roster.version < self.version:
                return roster
            before = self.version
            super().accept(data)
            if roster.version > before:
                _write_record(self.path, roster.version, roster.digest)
        return roster


def for_kit(kit: ClientKit) -> DurableRosterVerifier:
    """The verifier of a kit that pins the federation authority, its floor at least the
    version of the roster the kit carries (if it carries one)."""
    if kit.authority_public_key is None:
        raise MalformedRosterError(f"kit {kit.name!r} pins no federation authority")
    verifier = DurableRosterVerifier(kit.authority_public_key, kit.federation, record_beside(kit))
    if kit.authority_roster is not None:
        verifier.adopt_kit_roster(kit.authority_roster)
    return verifier


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside the record (the record itself is replaced by rename)."""
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(lock, mode=0o600, thread_local=False):
        yield


def _write_record(path: Path, version: int, digest: bytes) -> None:
    line = f"{version} {digest.hex()}\n".encode("ascii")
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        if os.write(fd, line) != len(line):
            raise OSError(f"short write to {staging}")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(staging, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
