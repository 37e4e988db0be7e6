"""The files the ``mfask`` command writes its results to (``-o FILE``).

A command checks its output file before it changes anything
(:func:`check_output_file`), so that a wrong path (a missing folder, a
read-only file, the study file itself) costs no ticket, no training and no
draw from a random stream. It then writes the file through a temporary file
in the same folder that replaces it (:func:`write_output_file`), so that a
failed write (a full disk) leaves no truncated file behind: the target is
either the complete new file or what it was before.

Both raise :class:`~mfask.errors.OutputFileError` with a one-line message.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from mfask.errors import OutputFileError
from mfask.state_file import check_writable, write_file_atomically

__all__ = ["check_output_file", "write_output_file", "reporting_errors"]


def check_output_file(path: str | os.PathLike[str], protected: Sequence[Path] = ()) -> Path:
    """``path`` as a :class:`~pathlib.Path`, once it is known that
    :func:`write_output_file` can write it: its folder exists and takes new
    files, and ``path``, if it exists, is a writable file and none of
    ``protected`` (e.g. the study's own files). Creates and removes a
    temporary file in the folder."""
    target = Path(path)
    try:
        for kept in protected:
            if _same_file(target, kept):
                raise PermissionError(errno.EPERM, f"it is the study's own file {kept}", str(target))
        if target.is_file() and not os.access(target, os.W_OK):
            raise PermissionError(errno.EACCES, "the file is read-only", str(target))
        check_writable(target)
    except OSError as error:
        raise OutputFileError(_message(target, error)) from None
    return target


def write_output_file(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically (see the module doc); a
    replaced file keeps its mode."""
    with reporting_errors(path):
        write_file_atomically(path, payload)


@contextmanager
def reporting_errors(path: Path) -> Iterator[None]:
    """Turn an ``OSError`` raised inside (by a writer of ``path`` that writes
    atomically itself, e.g. :meth:`MultiFidelityPosterior.save`) into
    :class:`~mfask.errors.OutputFileError`."""
    try:
        yield
    except OSError as error:
        raise OutputFileError(_message(path, error)) from None


def _same_file(target: Path, other: Path) -> bool:
    try:
        return target.resolve() == other.resolve() or (
            target.exists() and other.exists() and os.path.samefile(target, other)
        )
    except OSError:
        return False


def _message(target: Path, error: OSError) -> str:
    folder = target.parent
    if isinstance(error, FileNotFoundError) and not folder.is_dir():
        return f"cannot write {target}: there is no folder {folder} (create it first)"
    reason = error.strerror or str(error)
    if error.filename is not None and Path(error.filename).parent == folder and Path(error.filename) != target:
        # (the temporary file next to the target)
        return f"cannot write {target}: the folder {folder} takes no new file ({reason})"
    return f"cannot write {target}: {reason}"
