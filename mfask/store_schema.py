"""What a file must be before mfask uses it as a study file.

SQLite runs SQL that is stored in a database: triggers fire on writes, views
run when they are read, and expressions in the schema (defaults, checks,
generated columns, index expressions) are evaluated. A study file is data
only, so mfask accepts a file only if its schema is exactly the one mfask
creates (:data:`SCHEMA`): the same tables and indexes, each with the same SQL
text, and nothing else (no triggers, views, virtual or extra tables, no
statistics tables). Anything else is refused with
:class:`~mfask.errors.StateFormatError` naming what is foreign, before any
table is read.

:func:`check_study_file` inspects a file on a read-only connection, so a
refused file (another program's database, a file that is not SQLite at all) is
left exactly as it was: same bytes, same journal mode, no ``-wal``/``-shm``
files. :func:`check_schema` repeats the schema check on a study's own
connection (the store runs it whenever SQLite's schema cookie changes, so a
trigger added while the study is open is refused too), and
:func:`protect_connection` switches on what SQLite offers against stored SQL
(``trusted_schema`` off; defensive mode and no triggers or views where the
Python version has ``Connection.setconfig``, Python 3.12 and later).
"""

from __future__ import annotations

import functools
import os
import sqlite3
from pathlib import Path
from typing import NamedTuple

from mfask.errors import IncompleteStudyError, StateFormatError, StudyLockedError
from mfask.sqlite_failures import storage_failure

__all__ = [
    "STUDY_FORMAT",
    "SCHEMA_VERSION",
    "SCHEMA",
    "SchemaEntry",
    "expected_schema",
    "schema_differences",
    "check_schema",
    "check_study_file",
    "protect_connection",
]

STUDY_FORMAT = "mfask-study"
#: version of the table layout; files of other versions are refused
SCHEMA_VERSION = 1

#: The tables and indexes of a study file. The SQL text is part of the
#: format: a file's ``sqlite_master`` must hold these statements verbatim, so
#: any change here (even of white space) needs a new :data:`SCHEMA_VERSION`.
SCHEMA = """
CREATE TABLE study_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL,
    meta TEXT NOT NULL
);
CREATE TABLE session_arrays (
    name TEXT PRIMARY KEY,
    dtype TEXT NOT NULL,
    shape TEXT NOT NULL,
    data BLOB NOT NULL,
    revision INTEGER NOT NULL
);
CREATE TABLE tickets (
    id INTEGER PRIMARY KEY,
    fidelity TEXT NOT NULL,
    source TEXT NOT NULL,
    round INTEGER NOT NULL,
    status TEXT NOT NULL,
    theta BLOB NOT NULL,
    x BLOB,
    asked_at REAL NOT NULL,
    told_at REAL,
    cost REAL,
    reason TEXT,
    metadata TEXT,
    retry_of INTEGER,
    revision INTEGER NOT NULL
);
CREATE INDEX tickets_by_revision ON tickets (revision);
CREATE INDEX tickets_by_status ON tickets (status, fidelity);
CREATE TABLE checkpoints (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    revision INTEGER NOT NULL,
    levels TEXT NOT NULL,
    weights BLOB NOT NULL,
    sha256 TEXT NOT NULL
);
"""

#: the first 16 bytes of every SQLite database file
SQLITE_MAGIC = b"SQLite format 3\x00"
_HEADER_SIZE = 100
# byte of the header that is 2 in WAL mode (1 in rollback-journal mode)
_READ_VERSION_OFFSET = 19

# (config constant name, value) applied where Connection.setconfig exists
_CONNECTION_CONFIG = (
    ("SQLITE_DBCONFIG_DEFENSIVE", True),
    ("SQLITE_DBCONFIG_TRUSTED_SCHEMA", False),
    ("SQLITE_DBCONFIG_ENABLE_TRIGGER", False),
    ("SQLITE_DBCONFIG_ENABLE_VIEW", False),
)


class SchemaEntry(NamedTuple):
    """One row of ``sqlite_master``: ``type`` (``"table"``, ``"index"``,
    ``"trigger"``, ``"view"``), ``name``, the table it belongs to, its SQL
    (``None`` for the indexes SQLite makes for primary keys)."""

    type: str
    name: str
    table: str
    sql: str | None


def protect_connection(connection: sqlite3.Connection) -> None:
    """Switch on SQLite's protections against SQL stored in a database file.

    ``PRAGMA trusted_schema = OFF`` (SQLite 3.31+; ignored by older ones)
    stops the schema from calling functions with side effects. Where the
    Python version has ``Connection.setconfig`` (3.12+), also defensive
    mode (no writes to the schema or to SQLite's internal tables) and
    triggers and views disabled outright. Options the SQLite library does not
    know are skipped: the schema check (:func:`check_schema`) is what keeps
    stored SQL out; these are a second line.
    """
    connection.execute("PRAGMA trusted_schema = OFF")
    setconfig = getattr(connection, "setconfig", None)
    if setconfig is None:
        return
    for name, value in _CONNECTION_CONFIG:
        option = getattr(sqlite3, name, None)
        if option is None:
            continue
        try:
            setconfig(option, value)
        except sqlite3.Error:  # an older SQLite library than Python was built for
            continue


@functools.lru_cache(maxsize=1)
def expected_schema() -> tuple[SchemaEntry, ...]:
    """The ``sqlite_master`` rows of a study file (of :data:`SCHEMA` as this
    SQLite stores it, with its automatic indexes and ``sqlite_sequence``),
    sorted."""
    connection = sqlite3.connect(":memory:")
    try:
        connection.executescript(SCHEMA)
        return _read_schema(connection)
    finally:
        connection.close()


def schema_differences(connection: sqlite3.Connection) -> list[str]:
    """What in ``connection``'s database is not :data:`SCHEMA`, in words
    (e.g. ``"a foreign trigger 'reset' on table 'tickets'"``, ``"table
    'tickets' differs from mfask's (altered)"``, ``"no index 'tickets_by_status'"``);
    empty when the schema is exactly mfask's."""
    return _differences(_read_schema(connection))


def _differences(entries: tuple[SchemaEntry, ...]) -> list[str]:
    actual = {(entry.type, entry.name): entry for entry in entries}
    expected = {(entry.type, entry.name): entry for entry in expected_schema()}
    differences = []
    if len(actual) < len(entries):  # only a crafted sqlite_master repeats a name
        differences.append("entries of the same name twice")
    for key, entry in sorted(actual.items(), key=lambda item: str(item[0])):
        if key not in expected:
            where = f" on table {entry.table!r}" if entry.type in ("trigger", "index") else ""
            differences.append(f"a foreign {entry.type} {entry.name!r}{where}")
        elif entry != expected[key]:
            differences.append(f"{entry.type} {entry.name!r} differs from mfask's (altered)")
    for key in sorted(set(expected) - set(actual)):
        differences.append(f"no {key[0]} {key[1]!r}")
    return differences


def check_schema(connection: sqlite3.Connection, path: Path) -> None:
    """Raise unless the schema of ``connection``'s database is exactly :data:`SCHEMA`.

    Reads ``sqlite_master`` only (no table, view or trigger is run).

    Raises:
        IncompleteStudyError: the database has no schema at all (an empty
            database: a creation by an older mfask that was interrupted).
        StateFormatError: anything else than mfask's schema, naming what.
    """
    actual = _read_schema(connection)
    if not actual:
        raise IncompleteStudyError(
            f"{path} is an SQLite database without tables, not a complete study "
            "(its creation was interrupted?); it holds no data"
        )
    expected_names = {(entry.type, entry.name) for entry in expected_schema()}
    if not any((entry.type, entry.name) in expected_names for entry in actual):
        names = ", ".join(f"{entry.type} {entry.name!r}" for entry in actual[:5])
        raise StateFormatError(
            f"{path} is not an mfask study file (an SQLite database of something else: {names}"
            f"{', ...' if len(actual) > 5 else ''})"
        )
    differences = _differences(actual)
    if differences:
        raise StateFormatError(
            f"{path} is not an mfask study file: its schema has {'; '.join(differences)}. mfask "
            "refuses files with SQL of their own (triggers, views, other tables), which SQLite "
            "would run; nothing was read or run"
        )


def check_study_file(path: Path, timeout: float = 60.0) -> None:
    """Check, without changing anything, that ``path`` is a complete study
    file mfask can read: an SQLite database, of exactly :data:`SCHEMA`, with
    the format tag, this :data:`SCHEMA_VERSION`, and the head row of a
    creation that finished.

    The file is read through a read-only connection (``immutable`` when it
    is in WAL mode with no write-ahead log, i.e. no process has it open), so
    nothing is written: not the file, not its journal mode, no ``-wal`` or
    ``-shm`` files. ``timeout``: seconds to wait while another process
    holds the database locked.

    Raises:
        IncompleteStudyError: an empty file, an empty SQLite database, or a
            study whose creation by an older mfask was interrupted (no data).
        StateFormatError: any other file that is not such a study (the
            message says why).
        StudyLockedError: the database stayed locked for ``timeout`` seconds.
        sqlite3.OperationalError: SQLite could not read the file (a storage
            failure, see :func:`mfask.sqlite_failures.storage_failure`: an
            I/O error, a folder where it cannot create ``-shm``, ...).
        OSError: the file could not be opened to read its header.
    """
    with open(path, "rb") as stream:
        header = stream.read(_HEADER_SIZE)
    if not header:
        raise IncompleteStudyError(
            f"{path} is empty, not a complete study (its creation was interrupted?); "
            "it holds no data"
        )
    if not header.startswith(SQLITE_MAGIC) or len(header) < _HEADER_SIZE:
        raise StateFormatError(f"{path} is not an mfask study file (not an SQLite database)")
    in_wal_mode = header[_READ_VERSION_OFFSET] == 2
    immutable = in_wal_mode and not os.path.exists(f"{path}-wal")
    uri = f"{path.resolve().as_uri()}?mode=ro{'&immutable=1' if immutable else ''}"
    try:
        connection = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
    except sqlite3.Error as error:
        raise StateFormatError(f"{path} could not be read as an SQLite database ({error})") from None
    try:
        protect_connection(connection)
        connection.execute("PRAGMA query_only = ON")
        check_schema(connection, path)
        _check_contents(connection, path)
    except sqlite3.DatabaseError as error:
        failure = storage_failure(error)
        if failure == "busy":
            raise StudyLockedError(
                f"{path} stayed locked by another process for more than {timeout:g} s ({error})"
            ) from None
        if failure is not None:
            raise  # the file could not be read, which says nothing about its contents
        raise StateFormatError(f"{path} is not an mfask study file or is corrupt ({error})") from None
    except UnicodeDecodeError as error:  # text in the file that is not UTF-8
        raise StateFormatError(f"{path} is not an mfask study file or is corrupt ({error})") from None
    finally:
        connection.close()


def _check_contents(connection: sqlite3.Connection, path: Path) -> None:
    """The format tag, the schema version and a finished creation (schema already checked)."""
    info = dict(connection.execute("SELECT key, value FROM study_info").fetchall())
    if info.get("format") != STUDY_FORMAT:
        raise StateFormatError(f"{path} is not an mfask study file (no format tag)")
    if info.get("schema_version") != str(SCHEMA_VERSION):
        raise StateFormatError(
            f"{path} has study schema version {info.get('schema_version')!r}; this mfask "
            f"reads version {SCHEMA_VERSION} (was it written by another mfask version?)"
        )
    head = connection.execute("SELECT revision FROM head").fetchall()
    if len(head) != 1 or not isinstance(head[0][0], int) or head[0][0] < 0:
        raise StateFormatError(f"{path} is not a valid study file (malformed head row)")
    if head[0][0] == 0:
        # every creation ends by raising the revision to 1; older versions of
        # mfask wrote the posterior's state in a second transaction
        written = sum(
            connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("session_arrays", "tickets", "checkpoints")
        )
        if written:
            raise StateFormatError(f"{path} is not a valid study file (data at revision 0)")
        raise IncompleteStudyError(
            f"{path} is a study file whose creation was interrupted before the posterior's "
            "state was written; it holds no data"
        )


def _read_schema(connection: sqlite3.Connection) -> tuple[SchemaEntry, ...]:
    rows = connection.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    # str() keys: a crafted sqlite_master may hold other types than text
    return tuple(sorted((SchemaEntry(*row) for row in rows), key=lambda e: (str(e.type), str(e.name))))
