"""The client's durable record of the round transcripts it took part in.

An append-only file, one line per round taken part in: ``<round id hex> <transcript hash
hex> <unix time>`` (older lines lack the time), and ``<round id hex> finished`` once the
client answered that round's unmask request (the reveal budget of
:func:`sealagg.crypto.ledger.check_reveal_budget` counts claims since the last one).
A claim reads the file under an exclusive lock, refuses a transcript hash it has seen,
and a round id it has seen with another transcript (the rule lives in
:func:`sealagg.crypto.ledger.check_claim`), then appends the line and fsyncs the file
before the client uses the transcript. So an appliance cannot replay a round to this
client, or reuse a round id with it, even across a restart of the client.

The file sits beside the client kit by default (:func:`ledger_beside`): the record belongs
to the data owner's installation, not to the appliance.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

from sealagg.appliance.kit import ClientKit
from sealagg.crypto.errors import MalformedMessageError
from sealagg.crypto.ledger import check_claim, check_reveal_budget

_SUFFIX = ".transcripts"


class FileTranscriptLedger:
    """A :class:`~sealagg.crypto.ledger.TranscriptLedger` kept in one append-only file."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock

    def claim(self, round_id: bytes, transcript_hash: bytes) -> None:
        def check(record: _Record) -> str:
            check_claim(record.by_round, record.hashes, bytes(round_id), bytes(transcript_hash))
            now = self._clock()
            check_reveal_budget(record.unfinished, record.last_claim, now)
            return f"{bytes(round_id).hex()} {bytes(transcript_hash).hex()} {now:.3f}\n"

        self._append(check)

    def finish(self, round_id: bytes) -> None:
        self._append(lambda record: f"{bytes(round_id).hex()} finished\n")

    def _append(self, line_for: Callable[[_Record], str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # one claim at a time, across processes too
            line = line_for(_read(fd, self.path)).encode("ascii")
            if os.write(fd, line) != len(line):
                raise OSError(f"short write to {self.path}")
            os.fsync(fd)
        finally:
            os.close(fd)  # closing releases the lock
        _fsync_folder(self.path.parent)


def ledger_beside(kit: ClientKit) -> FileTranscriptLedger:
    """The ledger file of ``kit``: ``<kit path>.transcripts`` next to the kit."""
    return FileTranscriptLedger(kit.source.with_name(kit.source.name + _SUFFIX))


class _Record:
    """What the file says: claimed rounds, and the claims since the last finished round."""

    def __init__(self) -> None:
        self.by_round: dict[bytes, bytes] = {}
        self.hashes: set[bytes] = set()
        self.unfinished = 0
        self.last_claim = 0.0


def _read(fd: int, path: Path) -> _Record:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    record = _Record()
    for number, line in enumerate(b"".join(chunks).splitlines(), 1):
        try:
            fields = line.decode("ascii").split(" ")
            if len(fields) == 2 and fields[1] == "finished":
                bytes.fromhex(fields[0])
                record.unfinished = 0
                continue
            if len(fields) not in (2, 3):
                raise ValueError(line)
            record.by_round[bytes.fromhex(fields[0])] = bytes.fromhex(fields[1])
            record.hashes.add(bytes.fromhex(fields[1]))
            record.unfinished += 1
            record.last_claim = float(fields[2]) if len(fields) == 3 else 0.0
        except ValueError:
            # A damaged record must not silently forget rounds: refuse until it is repaired.
            raise MalformedMessageError(f"{path}, line {number}: not a transcript record") from None
    return record


def _fsync_folder(folder: Path) -> None:
    """Make the file's creation durable too (its directory entry)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
