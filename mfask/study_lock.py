"""The training lock of a study: one trainer at a time, across processes.

Training can take minutes, far too long to hold the database's write lock
(tellers would stall). Trainers therefore take an operating-system file lock
on ``<study file>.lock`` (``flock`` on POSIX, ``msvcrt.locking`` on Windows)
for the whole fit and write the database only briefly at the end. The
operating system releases the lock when its holder exits, also when it is
killed, so a crashed trainer never leaves a study locked. The lock file holds
a line naming the holder (pid, host, since when), for ``mfask status``.

The lock is re-entrant within one :class:`TrainingLock` object, and two
objects on the same file exclude each other even in one process.
"""

from __future__ import annotations

import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from mfask.errors import StudyLockedError

__all__ = ["TrainingLock"]

_POLL_SECONDS = (0.02, 0.5)  # first and longest wait between attempts


class TrainingLock:
    """An exclusive, re-entrant lock on ``path`` (created if missing)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._handle: IO[str] | None = None
        self._depth = 0

    @contextmanager
    def hold(self, timeout: float | None = None, purpose: str = "training") -> Iterator[None]:
        """Hold the lock for the ``with`` block.

        Arguments:
            timeout: seconds to wait for another holder; ``None`` waits for
                ever, ``0`` tries once.
            purpose: written into the lock file for others to see.

        Raises :class:`StudyLockedError` when the lock stays taken.
        """
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._acquire(timeout, purpose)
        self._depth = 1
        try:
            yield
        finally:
            self._depth = 0
            self._release()

    def holder(self) -> str | None:
        """Who holds the lock (the holder's line), or ``None`` when it is free."""
        if self._handle is not None:
            return self._describe("this process")
        probe = TrainingLock(self.path)
        try:
            probe._acquire(0, "probe", write=False)
        except StudyLockedError:
            try:
                return self.path.read_text().strip() or "another process"
            except OSError:
                return "another process"
        probe._release()
        return None

    # ------------------------------------------------------------------ impl
    def _acquire(self, timeout: float | None, purpose: str, write: bool = True) -> None:
        handle = open(self.path, "a+")
        deadline = None if timeout is None else time.monotonic() + timeout
        wait = _POLL_SECONDS[0]
        while True:
            if _try_lock(handle):
                break
            if deadline is not None and time.monotonic() >= deadline:
                handle.close()
                try:
                    holder = self.path.read_text().strip() or "another process"
                except OSError:
                    holder = "another process"
                raise StudyLockedError(
                    f"the training lock {self.path} is held ({holder}); waited {timeout:g} s"
                )
            time.sleep(wait if deadline is None else max(0.0, min(wait, deadline - time.monotonic())))
            wait = min(2 * wait, _POLL_SECONDS[1])
        self._handle = handle
        if write:
            handle.seek(0)
            handle.truncate()
            handle.write(self._describe(purpose) + "\n")
            handle.flush()

    def _release(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                handle.seek(0)
                handle.truncate()
                handle.flush()
            finally:
                _unlock(handle)
                handle.close()

    @staticmethod
    def _describe(purpose: str) -> str:
        since = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        return f"{purpose} by pid {os.getpid()} on {socket.gethostname()} since {since}"


if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(handle: IO[str]) -> bool:
        try:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _unlock(handle: IO[str]) -> None:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(handle: IO[str]) -> bool:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _unlock(handle: IO[str]) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
