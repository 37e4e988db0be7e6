"""What an error of ``sqlite3`` is about: the storage, or the file's content.

SQLite reports a full disk, a failing drive, a file it may not write or
cannot open and a database another process holds locked with the same
exception types as malformed data and programming errors.
:func:`storage_failure` tells the storage failures apart (a file that cannot
be read says nothing about what it holds), and :func:`is_corrupt_content`
recognises damaged pages and text that is not UTF-8. The store
(:mod:`mfask.store`) and the study-file check (:mod:`mfask.store_schema`)
both classify SQLite's errors with these.
"""

from __future__ import annotations

import sqlite3

__all__ = ["STORAGE_FAILURES", "storage_failure", "is_corrupt_content"]

#: kinds of SQLite storage failures: (kind, result code names, message texts)
STORAGE_FAILURES = (
    ("busy", ("SQLITE_BUSY", "SQLITE_LOCKED"), ("locked", "busy")),
    ("full", ("SQLITE_FULL",), ("database or disk is full",)),
    ("read-only", ("SQLITE_READONLY",), ("attempt to write a readonly database",)),
    ("io", ("SQLITE_IOERR",), ("disk I/O error",)),
    ("cannot-open", ("SQLITE_CANTOPEN",), ("unable to open database file",)),
)


def storage_failure(error: BaseException) -> str | None:
    """The kind of storage failure (a first item of :data:`STORAGE_FAILURES`)
    that ``error`` reports, ``None`` for anything else (malformed data, bugs,
    errors that are not SQLite's ``OperationalError``)."""
    if not isinstance(error, sqlite3.OperationalError):
        return None
    name = getattr(error, "sqlite_errorname", None) or ""  # (Python >= 3.11)
    text = str(error)
    return next(
        (kind for kind, names, texts in STORAGE_FAILURES
         if name.startswith(names) or any(t in text for t in texts)),
        None,
    )


def is_corrupt_content(error: BaseException) -> bool:
    """Whether ``error`` says the file's content is damaged: pages
    (``SQLITE_CORRUPT``, ``SQLITE_NOTADB``) or text that is not UTF-8."""
    if type(error) is sqlite3.DatabaseError or isinstance(error, UnicodeDecodeError):
        return True
    return isinstance(error, sqlite3.OperationalError) and str(error).startswith("Could not decode to UTF-8")
