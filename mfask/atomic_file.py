"""New files that appear under their name complete or not at all.

A file written in several steps (a study file: its schema, then its rows) is
built under a temporary name in the folder of its final name and then given
the final name in one step (:func:`link_into_place`), so that a crash at any
moment leaves at the final name either nothing or the complete file.
Temporary names carry their creator's host and process id, so that the
leftovers of a creator that was killed can be told from the files of one
still at work, and removed (:func:`remove_leftovers`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import socket
from pathlib import Path

__all__ = ["create_temporary", "remove_leftovers", "link_into_place", "fsync_directory"]

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# suffixes of the files SQLite keeps next to a database
_COMPANION_SUFFIXES = ("-wal", "-shm", "-journal")
# errors of os.link on file systems without hard links
_NO_LINKS = {errno.EPERM, errno.ENOSYS, errno.EMLINK, getattr(errno, "ENOTSUP", -1),
             getattr(errno, "EOPNOTSUPP", -1)}


def _host_tag() -> str:
    """Eight hex digits standing for this host (names may hold any characters)."""
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def create_temporary(target: Path, label: str) -> tuple[int, Path]:
    """A new empty file next to ``target``, opened for writing, with the mode
    a new file gets (0666 less the umask; ``tempfile.mkstemp`` would make it
    0600). Its name is ``.<target name>.<label>.<host>-<pid>.<random>``.

    Returns the open file descriptor and the path.
    """
    owner = f"{_host_tag()}-{os.getpid()}"
    for _ in range(100):
        name = target.parent / f".{target.name}.{label}.{owner}.{secrets.token_hex(6)}"
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o666), name
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(target.parent))


def remove_leftovers(target: Path, label: str) -> list[Path]:
    """Remove the temporary files of ``target`` (with ``label``, made by
    :func:`create_temporary`, and their SQLite ``-wal``/``-shm``/``-journal``
    files) whose creator was a process of this host that no longer runs.

    Files of running processes, of other hosts or of unknown owners are left
    alone. Does nothing where the liveness of a process cannot be asked
    without signalling it (Windows). Returns the removed paths.
    """
    if os.name != "posix":
        return []
    pattern = re.compile(
        rf"^\.{re.escape(target.name)}\.{re.escape(label)}\.([0-9a-f]{{8}})-([0-9]+)\.[0-9a-f]+"
        rf"({'|'.join(_COMPANION_SUFFIXES)})?$"
    )
    host = _host_tag()
    removed = []
    try:
        entries = list(os.scandir(target.parent))
    except FileNotFoundError:
        return []
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or match.group(1) != host or _is_running(int(match.group(2))):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def _is_running(pid: int) -> bool:
    """Whether process ``pid`` exists (POSIX: signal 0 checks without sending)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def link_into_place(temporary: Path, target: Path) -> None:
    """Give the complete file ``temporary`` the name ``target`` in one step.

    With a hard link (the temporary name stays; remove it after), which
    fails with :class:`FileExistsError` if ``target`` exists, so that of
    several processes publishing the same name exactly one succeeds. On file
    systems without hard links, ``temporary`` is renamed over ``target``
    instead, which is exclusive only among callers that hold a common lock
    and checked that ``target`` does not exist.
    """
    try:
        os.link(temporary, target)
    except FileExistsError:
        raise
    except OSError as error:
        if error.errno not in _NO_LINKS:
            raise
        os.replace(temporary, target)


def fsync_directory(folder: Path) -> None:
    """Make the names in ``folder`` durable (after a link or rename into it).

    A no-op on Windows, which cannot open folders (NTFS journals its names),
    and on file systems that cannot sync a folder.
    """
    if os.name != "posix":
        return
    handle = os.open(folder, os.O_RDONLY | _O_CLOEXEC)
    try:
        os.fsync(handle)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(handle)
