"""One appliance per federation folder: an exclusive lock taken before anything is read.

A second ``sealagg serve`` on a live folder used to run crash recovery on the running
appliance's database (aborting its rounds, writing into its audit chain, rejecting its pending
candidate) and only then fail to bind its port. The lock is therefore the very first thing an
appliance does with its folder: before the configuration, the keys or the store are opened.

The lock is an ``flock`` on ``<folder>/.sealagg.lock`` (the ``filelock`` library, native
backend only): the kernel drops it when the holder exits for any reason, ``kill -9``
included, so a stale file never blocks the next start. The holder's pid is written beside it
(``.sealagg.lock.pid``) only to name it in the refusal; the pid file is never trusted for
the decision itself.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import filelock

from sealagg.appliance.errors import StoreError

__all__ = ["LOCK_NAME", "PID_NAME", "FolderInUseError", "InstanceLock"]

LOCK_NAME = ".sealagg.lock"
PID_NAME = ".sealagg.lock.pid"


class FolderInUseError(StoreError):
    """Another appliance holds the federation folder."""

    def __init__(self, folder: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid is not None else "a process whose pid is not known yet"
        super().__init__(
            f"the federation folder {folder} is in use by another appliance ({holder}); "
            "stop it first (nothing was read or changed)"
        )
        self.pid = pid


class InstanceLock:
    """The exclusive hold of one federation folder by one appliance (this process)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.pid_path = self.folder / PID_NAME
        # Not thread-local: the appliance may be closed from another thread than it started on.
        # No soft fallback: a marker file would outlive a kill -9 and block the next start.
        self._lock = filelock.FileLock(
            self.path, timeout=0, mode=0o600, thread_local=False, fallback_to_soft=False
        )

    @property
    def held(self) -> bool:
        return self._lock.is_locked

    def acquire(self) -> None:
        """Take the lock or raise :class:`FolderInUseError` naming the holder's pid.

        A folder that does not exist is left alone (the federation loader says what is
        missing); a folder that cannot be written is refused as such.
        """
        if not self.folder.is_dir():
            return
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise FolderInUseError(self.folder, holder_pid(self.folder)) from None
        except OSError as error:
            raise StoreError(
                f"the federation folder {self.folder} is not writable: cannot create its "
                f"instance lock ({error.strerror or error})"
            ) from None
        try:
            _write_pid(self.pid_path, os.getpid())
        except OSError:
            self._lock.release()
            raise

    def release(self) -> None:
        if not self._lock.is_locked:
            return
        with contextlib.suppress(OSError):
            if holder_pid(self.folder) == os.getpid():
                self.pid_path.unlink()
        self._lock.release(force=True)

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder_pid(folder: Path) -> int | None:
    """The pid the current (or last) holder wrote, if readable: for messages only."""
    try:
        text = (Path(folder) / PID_NAME).read_text(encoding="ascii").strip()
        return int(text) if text.isdigit() else None
    except (OSError, UnicodeDecodeError):
        return None


def _write_pid(path: Path, pid: int) -> None:
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(f"{pid}\n")
    os.replace(temporary, path)
