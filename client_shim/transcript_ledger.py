"""The client's durable record of the round transcripts it took part in.

An append-only file, one line per round taken part in: ``<round id hex> <transcript hash
hex>``. A claim reads the file under an exclusive lock, refuses a transcript hash it has
seen, and a round id it has seen with another transcript (the rule lives in
:func:`sealagg.crypto.ledger.check_claim`), then appends the line and fsyncs the file
before the client uses the transcript. So an appliance cannot replay a round to this
client, or reuse a round id with it, even across a restart of the client.

The file sits beside the client kit by default (:func:`ledger_beside`): the record belongs
to the data owner's installation, not to the appliance.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from sealagg.appliance.kit import ClientKit
from sealagg.crypto.errors import MalformedMessageError
from sealagg.crypto.ledger import check_claim

_SUFFIX = ".transcripts"


class FileTranscriptLedger:
    """A :class:`~sealagg.crypto.ledger.TranscriptLedger` kept in one append-only file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def claim(self, round_id: bytes, transcript_hash: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # one claim at a time, across processes too
            by_round, hashes = _read(fd, self.path)
            check_claim(by_round, hashes, bytes(round_id), bytes(transcript_hash))
            line = f"{bytes(round_id).hex()} {bytes(transcript_hash).hex()}\n".encode("ascii")
            if os.write(fd, line) != len(line):
                raise OSError(f"short write to {self.path}")
            os.fsync(fd)
        finally:
            os.close(fd)  # closing releases the lock
        _fsync_folder(self.path.parent)


def ledger_beside(kit: ClientKit) -> FileTranscriptLedger:
    """The ledger file of ``kit``: ``<kit path>.transcripts`` next to the kit."""
    return FileTranscriptLedger(kit.source.with_name(kit.source.name + _SUFFIX))


def _read(fd: int, path: Path) -> tuple[dict[bytes, bytes], set[bytes]]:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    by_round: dict[bytes, bytes] = {}
    for number, line in enumerate(b"".join(chunks).splitlines(), 1):
        try:
            round_hex, hash_hex = line.decode("ascii").split(" ")
            by_round[bytes.fromhex(round_hex)] = bytes.fromhex(hash_hex)
        except ValueError:
            # A damaged record must not silently forget rounds: refuse until it is repaired.
            raise MalformedMessageError(f"{path}, line {number}: not a transcript record") from None
    return by_round, set(by_round.values())


def _fsync_folder(folder: Path) -> None:
    """Make the file's creation durable too (its directory entry)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
