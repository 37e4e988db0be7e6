"""The training lock of a study: one trainer at a time, across processes.

Training can take minutes, far too long to hold the database's write lock
(tellers would stall). Trainers therefore take an operating-system file lock
on ``<study file>.lock`` (``flock`` on POSIX, ``msvcrt.locking`` on Windows)
for the whole fit and write the database only briefly at the end. The
operating system releases the lock when its holder exits, also when it is
killed, so a crashed trainer never leaves a study locked. The lock file holds
a line naming the holder (pid, host, since when), for ``mfask status``.

The lock file is mfask's own, and nothing else is ever written through its
name: it is opened without following a symbolic link, and it must be a
regular file with no other name (hard link) that is empty or holds a holder
line; anything else is refused with :class:`StudyStorageError` and left as it
is. :meth:`TrainingLock.holder` (for ``mfask status``) only reads: it neither
creates nor changes the file, so it works in a read-only folder. Whatever
fails while the lock is taken (a full disk when the holder line is written,
an interruption), the lock is released before the error propagates.

The lock is re-entrant within one :class:`TrainingLock` object, and two
objects on the same file exclude each other even in one process.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mfask.errors import StudyLockedError, StudyStorageError

__all__ = ["TrainingLock"]

_POLL_SECONDS = (0.02, 0.5)  # first and longest wait between attempts
#: the most an mfask lock file holds (a holder line is far shorter)
_MAX_LOCK_FILE_BYTES = 4096
# what TrainingLock._describe writes: "<purpose> by pid <n> on <host> since <time>"
_HOLDER_LINE = re.compile(r"[^\n]* by pid \d+ on [^\n]* since [^\n]*\n?")
# never through a symbolic link, never blocking (a FIFO planted at the name)
_OPEN_FLAGS = (
    getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
)


class TrainingLock:
    """An exclusive, re-entrant lock on ``path`` (created when first taken)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._descriptor: int | None = None
        self._depth = 0

    @contextmanager
    def hold(self, timeout: float | None = None, purpose: str = "training") -> Iterator[None]:
        """Hold the lock for the ``with`` block.

        Arguments:
            timeout: seconds to wait for another holder; ``None`` waits for
                ever, ``0`` tries once.
            purpose: written into the lock file for others to see.

        Raises :class:`StudyLockedError` when the lock stays taken, and
        :class:`StudyStorageError` when the lock file cannot be created or
        written, or is not mfask's (see the module doc); the lock is not held
        after either.
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
        """Who holds the lock (the holder's line), or ``None`` when it is free.

        Reads only: a missing lock file is free and is not created. Raises
        :class:`StudyStorageError` for a lock file that is not mfask's.
        """
        if self._descriptor is not None:
            return self._describe("this process")
        try:
            descriptor = self._open(writable=False)
        except FileNotFoundError:
            return None
        try:
            if _try_lock(descriptor):
                try:
                    self._check_is_lock_file(_read_start(descriptor))
                finally:
                    _unlock(descriptor)
                return None
            return _holder_text(_read_start(descriptor))
        finally:
            os.close(descriptor)

    # ------------------------------------------------------------------ impl
    def _acquire(self, timeout: float | None, purpose: str) -> None:
        """Open (or create) the lock file, wait for the lock and write the
        holder line; on any failure the file is unlocked and closed."""
        descriptor = self._open(writable=True)
        locked = False
        try:
            self._wait(descriptor, timeout)
            locked = True
            self._check_is_lock_file(_read_start(descriptor))
            self._write_holder_line(descriptor, self._describe(purpose))
        except BaseException:
            try:
                if locked:
                    _unlock(descriptor)
            finally:
                os.close(descriptor)
            raise
        self._descriptor = descriptor

    def _wait(self, descriptor: int, timeout: float | None) -> None:
        """Take the lock on ``descriptor``, polling until ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        wait = _POLL_SECONDS[0]
        while not _try_lock(descriptor):
            if deadline is not None and time.monotonic() >= deadline:
                holder = _holder_text(_read_start(descriptor))
                raise StudyLockedError(
                    f"the training lock {self.path} is held ({holder}); waited {timeout:g} s"
                )
            time.sleep(wait if deadline is None else max(0.0, min(wait, deadline - time.monotonic())))
            wait = min(2 * wait, _POLL_SECONDS[1])

    def _open(self, writable: bool) -> int:
        """A descriptor of the lock file, checked to be a regular file with a
        single name; never through a symbolic link. ``writable`` opens it for
        writing and creates it if missing; else :class:`FileNotFoundError`
        when it does not exist."""
        if not getattr(os, "O_NOFOLLOW", 0) and self.path.is_symlink():
            raise self._link_error()  # (no O_NOFOLLOW, e.g. Windows: checked first)
        flags = os.O_RDWR | os.O_CREAT if writable else os.O_RDONLY
        try:
            descriptor = os.open(self.path, flags | _OPEN_FLAGS, 0o666)
        except FileNotFoundError:
            if not writable:
                raise
            raise StudyStorageError(
                f"cannot create the training lock {self.path}: its folder does not exist "
                "(was the study moved or deleted?)"
            ) from None
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.EMLINK) or self.path.is_symlink():
                raise self._link_error() from None
            if error.errno == errno.EISDIR:
                raise self._not_regular_error() from None
            action = "create or open" if writable else "read"
            raise StudyStorageError(
                f"cannot {action} the training lock {self.path}: {error.strerror or error}. "
                "Training needs to write this file next to the study: make the study's folder "
                "writable, or train a copy of the study in a writable folder"
            ) from None
        try:
            info = os.fstat(descriptor)
            if not stat.S_ISREG(info.st_mode):
                raise self._not_regular_error()
            if info.st_nlink != 1:
                raise StudyStorageError(
                    f"the training lock {self.path} has {info.st_nlink} names (hard links), so "
                    "writing it would change another file; mfask leaves it alone. Remove it "
                    "(mfask creates its lock file itself) and retry"
                )
        except BaseException:
            os.close(descriptor)
            raise
        return descriptor

    def _not_regular_error(self) -> StudyStorageError:
        return StudyStorageError(
            f"the training lock {self.path} is not a regular file; mfask does not use it. "
            "Remove it (mfask creates its lock file itself) and retry"
        )

    def _link_error(self) -> StudyStorageError:
        try:
            target = f" to {os.readlink(self.path)}"
        except OSError:
            target = ""
        return StudyStorageError(
            f"the training lock {self.path} is a symbolic link{target}; mfask does not follow "
            "links for its lock file, so that it never overwrites another file. Remove the "
            "link (mfask creates its lock file itself) and retry"
        )

    def _check_is_lock_file(self, content: bytes) -> None:
        """Refuse a lock file that holds something other than a holder line
        (mfask empties its lock file when it releases the lock, and a
        killed holder leaves its line)."""
        if not content:
            return
        text = content.decode("utf-8", errors="replace")
        if len(content) > _MAX_LOCK_FILE_BYTES or not _HOLDER_LINE.fullmatch(text):
            raise StudyStorageError(
                f"{self.path} is not an mfask training lock (it holds other data), so mfask "
                "does not overwrite it. Move it away and retry (mfask creates its lock file "
                "itself)"
            )

    def _write_holder_line(self, descriptor: int, line: str) -> None:
        data = (line + "\n").encode("utf-8")
        try:
            os.ftruncate(descriptor, 0)
            os.lseek(descriptor, 0, os.SEEK_SET)
            if os.write(descriptor, data) != len(data):
                raise OSError(errno.ENOSPC, "short write")
        except OSError as error:
            try:  # no part line left behind, which the next trainer would take for another file
                os.ftruncate(descriptor, 0)
            except OSError:
                pass
            raise StudyStorageError(
                f"could not write the training lock {self.path}: {error.strerror or error} "
                "(is the disk full?). Free space and retry; the lock is not held"
            ) from None

    def _release(self) -> None:
        descriptor, self._descriptor = self._descriptor, None
        if descriptor is None:
            return
        try:
            os.ftruncate(descriptor, 0)  # no holder any more
        except OSError:
            pass  # a stale line is harmless: it is read only while the lock is held
        finally:
            try:
                _unlock(descriptor)
            finally:
                os.close(descriptor)

    @staticmethod
    def _describe(purpose: str) -> str:
        since = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        return f"{purpose} by pid {os.getpid()} on {socket.gethostname()} since {since}"


def _read_start(descriptor: int) -> bytes:
    """The first bytes of the lock file (up to one more than an mfask lock
    file may hold)."""
    os.lseek(descriptor, 0, os.SEEK_SET)
    return os.read(descriptor, _MAX_LOCK_FILE_BYTES + 1)


def _holder_text(content: bytes) -> str:
    """The holder line for messages, or ``"another process"`` when the file
    holds none (yet)."""
    text = content.decode("utf-8", errors="replace").strip()
    return text if text and _HOLDER_LINE.fullmatch(text) else "another process"


if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(descriptor: int) -> bool:
        try:
            os.lseek(descriptor, 0, os.SEEK_SET)
            msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _unlock(descriptor: int) -> None:
        os.lseek(descriptor, 0, os.SEEK_SET)
        msvcrt.locking(descriptor, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(descriptor: int) -> bool:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _unlock(descriptor: int) -> None:
        fcntl.flock(descriptor, fcntl.LOCK_UN)
