"""The study file: an SQLite database that durably records a study.

:class:`StudyStore` is the storage layer under :class:`mfask.study.Study`. It
knows tables, transactions and encodings, not posteriors. One file holds

* ``study_info``: key/value text: ``format`` (``"mfask-study"``),
  ``schema_version``, creation time and mfask version, plus free entries
  (the CLI keeps the names of the output columns there);
* ``head``: one row: the ``revision`` counter (raised by every write
  transaction) and the posterior's configuration and small state as JSON
  (``meta``: prior, fidelities, seed, settings, ``x_shape``, round);
* ``session_arrays``: the posterior's small state arrays (random generator
  states), one row per array;
* ``tickets``: one row per ticket (ticket id = row id): fidelity, source,
  round, status, parameters ``theta`` and output ``x`` (float64 BLOBs), ask
  and tell times, optional cost, reason and JSON metadata, the ticket it
  retries, and the ``revision`` at which the row last changed;
* ``checkpoints``: every trained model: the levels' JSON description and the
  weights as a pickle-free ``.npz`` BLOB (:func:`mfask.state_file.encode_state`)
  with its SHA-256 digest.

Every change is written inside one ``BEGIN IMMEDIATE`` transaction, so
several processes can share the file (WAL mode; SQLite serialises writers).
Readers bring their copy up to date with the rows whose ``revision`` is newer
than the last one they saw. Nothing read from the file is unpickled or
executed: a crafted file can only fail to load with
:class:`~mfask.errors.StateFormatError`. A file is opened only once
:mod:`mfask.store_schema` has found, on a read-only connection, exactly
mfask's schema in it (no triggers or views, which SQLite would run), and every
transaction starts by checking that the schema has not changed since.

A new file is built complete under a temporary name and then linked into
place (:mod:`mfask.atomic_file`), so the study's name never holds a
half-made study, even if the creating process is killed.

The file's troubles surface as :class:`~mfask.errors.StudyStorageError`
(never a raw ``sqlite3`` or ``OSError``), with the transaction rolled back:
a full disk, an I/O error, a file that cannot be written
(:class:`~mfask.errors.ReadOnlyStudyError`), and a file deleted or replaced
since it was opened (its ``st_dev``/``st_ino`` are checked at the start of
every transaction and before every commit, so a change never goes to a file
that is no longer the study). A study that cannot be written here (a
read-only file, folder or file system) opens read-only: its write
transactions are refused before they start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from mfask.atomic_file import create_temporary, fsync_directory, link_into_place, remove_leftovers
from mfask.errors import (
    IncompleteStudyError,
    InvalidInputError,
    MfaskError,
    ReadOnlyStudyError,
    StateFormatError,
    StudyLockedError,
    StudyStorageError,
)
from mfask.sqlite_failures import is_corrupt_content, storage_failure
from mfask.state_file import decode_state, encode_state
from mfask.store_schema import SCHEMA, SCHEMA_VERSION, STUDY_FORMAT, check_schema, check_study_file, protect_connection
from mfask.study_lock import TrainingLock
from mfask.tickets import SOURCES, STATUSES

__all__ = ["SCHEMA_VERSION", "STUDY_FORMAT", "StudyStore", "TicketRow"]

# the label of the temporary names a study file is built under
_BUILD_LABEL = "creating"

# numpy dtype kinds a stored array may have (no objects, no structured types)
_NUMERIC_KINDS = "biufc"


@dataclass(frozen=True)
class TicketRow:
    """One ticket as stored, for listings and exports.

    Attributes:
        ticket: the ticket id.
        fidelity, source, status: names (see :data:`mfask.tickets.STATUSES`).
        round: the sequential round it was asked in.
        theta: ``(d,)`` parameters.
        x: ``(*x_shape)`` output, ``None`` when none was told (or all NaN).
        asked_at, told_at: Unix times (``told_at`` ``None`` while pending).
        cost: seconds the simulation took, if told.
        reason: why it failed or was abandoned, if told.
        metadata: the JSON metadata told with it.
        retry_of: the ticket this one retries.
    """

    ticket: int
    fidelity: str
    source: str
    round: int
    status: str
    theta: np.ndarray
    x: np.ndarray | None
    asked_at: float
    told_at: float | None
    cost: float | None
    reason: str | None
    metadata: dict[str, Any] | None
    retry_of: int | None

    @property
    def age(self) -> float:
        """Seconds since the ticket was asked."""
        return time.time() - self.asked_at


class StudyStore:
    """An open study file. Use :meth:`create` or :meth:`open`.

    Arguments:
        connection: an SQLite connection in autocommit mode.
        path: the file.
        timeout: seconds to wait for another process's write transaction.
        read_only_reason: why the file can only be read here (``None``: it
            can be written); write transactions are then refused.
        snapshot: the connection reads the file as immutable (a folder where
            SQLite cannot create ``<file>-shm``): it must not be written by
            anyone meanwhile, which is checked at every transaction.
    """

    def __init__(
        self, connection: sqlite3.Connection, path: Path, timeout: float, *,
        read_only_reason: str | None = None, snapshot: bool = False,
    ) -> None:
        self._connection = connection
        self.path = path
        self.timeout = timeout
        self.read_only_reason = read_only_reason
        self._snapshot = snapshot
        self._depth = 0
        self._write_revision: int | None = None
        self._schema_cookie: int | None = None  # SQLite's schema version when last checked
        # the file the connection has open (absolute: a later chdir changes nothing)
        self._file = path.resolve()
        self._identity = _file_identity(self._file)

    @property
    def read_only(self) -> bool:
        """Whether the file can only be read here (see :attr:`read_only_reason`)."""
        return self.read_only_reason is not None

    # ------------------------------------------------------------ open/close
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        meta: dict[str, Any],
        *,
        fill: Callable[["StudyStore"], None] | None = None,
        timeout: float = 60.0,
        synchronous: str = "full",
    ) -> "StudyStore":
        """Create a new study file with the posterior description ``meta``.

        The file is built under a temporary name in the same folder, in one
        transaction that also runs ``fill(store)`` (to write the posterior's
        state, tickets and models; ``store.path`` is then the temporary
        name), and only the complete file is linked to ``path``. So ``path``
        never holds a half-made study, whenever the process dies; leftovers
        of killed creators are removed by the next creation.

        An :class:`~mfask.errors.IncompleteStudyError` file at ``path`` (left
        by an older mfask that was killed while creating) is replaced.

        Raises :class:`FileExistsError` if ``path`` holds anything else (the
        message says whether it is a study), also when another process
        created the study first.
        """
        target = study_file_path(path)
        if target.exists():
            _refuse_unless_incomplete(target, timeout)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StudyStorageError(
                f"cannot create the folder {target.parent} for the study: {error.strerror or error}"
            ) from None
        remove_leftovers(target, _BUILD_LABEL)
        try:
            handle, temporary = create_temporary(target, _BUILD_LABEL)
        except OSError as error:
            raise StudyStorageError(
                f"cannot create {target}: no new file can be made in {target.parent} "
                f"({error.strerror or error}); check that the folder is writable"
            ) from None
        os.close(handle)
        try:
            try:
                cls._build(temporary, meta, fill, timeout, synchronous)
            except sqlite3.OperationalError as error:
                if storage_failure(error) is None:
                    raise
                raise _storage_error(error, target, timeout, "create") from None
            except OSError as error:  # syncing the finished file
                if isinstance(error, MfaskError):
                    raise
                raise StudyStorageError(
                    f"could not create {target}: {error.strerror or error}; nothing was created"
                ) from None
            # the lock serialises creators that replace an incomplete file
            with TrainingLock(str(target) + ".lock").hold(timeout, purpose="creating the study"):
                replacing = target.exists()
                if replacing:
                    _refuse_unless_incomplete(target, timeout)
                # a -wal left by another database of this name would be replayed into this one
                _remove_companions(target)
                if replacing:
                    os.replace(temporary, target)
                else:
                    link_into_place(temporary, target)
            fsync_directory(target.parent)
        finally:
            _remove_companions(temporary)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        return cls.open(target, timeout=timeout, synchronous=synchronous)

    @classmethod
    def _build(
        cls,
        temporary: Path,
        meta: dict[str, Any],
        fill: Callable[["StudyStore"], None] | None,
        timeout: float,
        synchronous: str,
    ) -> None:
        """Write a complete study into the empty file ``temporary`` and close it
        (its write-ahead log checkpointed into it, so the file stands alone),
        synced to disk."""
        connection = _connect(temporary, timeout, synchronous, create=True)
        try:
            # no syncs while building: the finished file is synced once, before it gets its name
            connection.execute("PRAGMA synchronous = OFF")
            connection.executescript(SCHEMA)
            builder = cls(connection, temporary, timeout)
            with builder.transaction():
                from mfask import __version__

                info = {
                    "format": STUDY_FORMAT,
                    "schema_version": str(SCHEMA_VERSION),
                    "created_at": repr(time.time()),
                    "mfask_version": __version__,
                }
                connection.executemany("INSERT INTO study_info VALUES (?, ?)", info.items())
                connection.execute(
                    "INSERT INTO head (id, revision, meta) VALUES (1, 0, ?)", (_dumps(meta),)
                )
                builder.write_revision()  # revision 1: the creation finished
                if fill is not None:
                    fill(builder)
        finally:
            connection.close()
        if os.path.exists(f"{temporary}-wal"):
            raise OSError(f"{temporary}: SQLite could not checkpoint the new study file")
        handle = os.open(temporary, os.O_RDWR)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, timeout: float = 60.0, synchronous: str = "full",
        read_only: bool = False,
    ) -> "StudyStore":
        """Open an existing study file; read-only with ``read_only``, or when
        it cannot be written here (a read-only file, folder or file system).

        The file is checked first on a read-only connection
        (:func:`mfask.store_schema.check_study_file`), so a refused file is
        left exactly as it was.

        Raises :class:`FileNotFoundError`, :class:`IncompleteStudyError` for a
        study whose creation was interrupted, :class:`StateFormatError` when
        the file is not an mfask study, has another schema version or SQL of
        its own (triggers, views, other tables), or :class:`StudyStorageError`
        when it cannot be read.
        """
        target = study_file_path(path)
        if not target.is_file():
            raise FileNotFoundError(f"no study file at {target}")
        _check_existing_file(target, timeout)
        connection, reason, snapshot = _connect_existing(target, timeout, synchronous, read_only)
        return cls(connection, target, timeout, read_only_reason=reason, snapshot=snapshot)

    def close(self) -> None:
        """Close the connection (committed data is already on disk)."""
        self._connection.close()

    # ---------------------------------------------------------- transactions
    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[None]:
        """A transaction: ``write`` takes the database's write lock at once
        (``BEGIN IMMEDIATE``), so what is read inside is not changed by others
        before the commit. Nested uses join the outer transaction.

        Raises :class:`StudyLockedError` when another process held the write
        lock for longer than :attr:`timeout`; :class:`ReadOnlyStudyError` for
        a write to a read-only study (before anything is done);
        :class:`StudyStorageError` when the file was deleted or replaced since
        it was opened, or SQLite failed to read or write it (rolled back).
        """
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        if write and self.read_only_reason is not None:
            raise ReadOnlyStudyError(
                f"{self.path} is open read-only ({self.read_only_reason}); this call would change "
                "it, so nothing was done. Reading works (status, tickets, export, samples from "
                "its trained models). To change the study, make the file and its folder "
                "writable and open it again, or work on a copy"
            )
        action = "write" if write else "read"
        try:
            self._connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.OperationalError as error:
            if storage_failure(error) is None:
                raise
            raise _storage_error(error, self.path, self.timeout, action) from None
        self._depth = 1
        self._write_revision = None
        try:
            self._check_file()
            self._check_schema_unchanged()
            yield
            if write:
                self._check_file()
            self._connection.execute("COMMIT")
        except BaseException as error:
            if self._connection.in_transaction:
                try:
                    self._connection.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the error that stopped the transaction says more
            if storage_failure(error) is not None:
                raise _storage_error(error, self.path, self.timeout, action) from None
            if is_corrupt_content(error):
                raise StateFormatError(f"{self.path} is corrupt ({error}); nothing was changed") from None
            raise
        finally:
            self._depth = 0
            self._write_revision = None

    def _check_file(self) -> None:
        """Raise :class:`StudyStorageError` if the file at :attr:`path` is no
        longer the one this store opened (deleted, or replaced by another),
        or, for a snapshot, if someone started writing it."""
        try:
            identity = _file_identity(self._file)
        except FileNotFoundError:
            identity = None
        except OSError as error:
            raise StudyStorageError(f"cannot check {self.path}: {error.strerror or error}") from None
        if identity != self._identity:
            what = "deleted" if identity is None else "replaced by another file"
            raise StudyStorageError(
                f"{self.path} was {what} after this process opened it, so nothing was read or "
                "written (a change would have gone to the old file and been lost). Close this "
                "study; if the file now at that path is the study to continue, open it again"
            )
        if self._snapshot and _holds_log(self._file):
            raise StudyStorageError(
                f"{self.path} is being written by another process ({self._file.name}-wal "
                "appeared) while this process reads it as a read-only snapshot (SQLite cannot "
                "share its changes in a folder that is not writable here); open it again"
            )

    def _check_schema_unchanged(self) -> None:
        """Check the schema again (:func:`~mfask.store_schema.check_schema`)
        if SQLite's schema cookie changed since the last check: the first
        transaction, or another process changed the schema (added a trigger,
        ran ``VACUUM``)."""
        cookie = int(self._connection.execute("PRAGMA schema_version").fetchone()[0])
        if cookie != self._schema_cookie:
            check_schema(self._connection, self.path)
            self._schema_cookie = cookie

    def _require_transaction(self) -> None:
        if not self._depth:
            raise RuntimeError("StudyStore: this call must run inside transaction()")

    def revision(self) -> int:
        """The revision of the last committed write (read in the transaction)."""
        return int(self._connection.execute("SELECT revision FROM head").fetchone()[0])

    def write_revision(self) -> int:
        """The revision of the current write transaction (raised once per transaction)."""
        self._require_transaction()
        if self._write_revision is None:
            revision = self.revision() + 1
            self._connection.execute("UPDATE head SET revision = ?", (revision,))
            self._write_revision = revision
        return self._write_revision

    # ------------------------------------------------------------ study info
    def info(self) -> dict[str, str]:
        """All ``study_info`` entries."""
        return dict(self._connection.execute("SELECT key, value FROM study_info").fetchall())

    def set_info(self, key: str, value: str) -> None:
        """Set a ``study_info`` entry (inside a write transaction)."""
        self._require_transaction()
        self._connection.execute(
            "INSERT INTO study_info VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # ------------------------------------------------------------ head/session
    def read_meta(self) -> str:
        """The posterior description as stored (JSON text)."""
        return str(self._connection.execute("SELECT meta FROM head").fetchone()[0])

    def write_meta(self, meta_text: str) -> None:
        """Replace the posterior description (JSON text)."""
        self.write_revision()
        self._connection.execute("UPDATE head SET meta = ?", (meta_text,))

    def read_session_arrays(self, since: int = -1) -> dict[str, np.ndarray]:
        """Session arrays changed after revision ``since`` (all by default)."""
        rows = self._connection.execute(
            "SELECT name, dtype, shape, data FROM session_arrays WHERE revision > ?", (since,)
        ).fetchall()
        return {name: _array_from_blob(name, dtype, shape, data) for name, dtype, shape, data in rows}

    def write_session_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Insert or replace session arrays (plain numeric arrays only)."""
        revision = self.write_revision()
        rows = []
        for name, value in arrays.items():
            value = np.ascontiguousarray(value)
            if value.dtype.kind not in _NUMERIC_KINDS:
                raise TypeError(f"session array {name!r} has dtype {value.dtype}; numeric only")
            rows.append((name, value.dtype.str, json.dumps(list(value.shape)), value.tobytes(), revision))
        self._connection.executemany(
            "INSERT INTO session_arrays VALUES (?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
            "dtype = excluded.dtype, shape = excluded.shape, data = excluded.data, "
            "revision = excluded.revision",
            rows,
        )

    # ---------------------------------------------------------------- tickets
    def write_tickets(
        self, ids: np.ndarray, columns: dict[str, np.ndarray], fidelity_names: Sequence[str]
    ) -> None:
        """Insert or update tickets from ledger columns (see
        :meth:`mfask.tickets.TicketLedger.rows`); cost, reason, metadata and
        ``retry_of`` are kept (see :meth:`annotate`)."""
        revision = self.write_revision()
        theta = np.ascontiguousarray(columns["theta"], dtype=np.float64)
        x = columns.get("x")
        rows = []
        for i, ticket in enumerate(ids):
            x_blob = None
            if x is not None and not np.all(np.isnan(x[i])):
                x_blob = np.ascontiguousarray(x[i], dtype=np.float64).tobytes()
            told_at = float(columns["told_at"][i])
            rows.append((
                int(ticket),
                fidelity_names[int(columns["fidelity"][i])],
                SOURCES[int(columns["source"][i])],
                int(columns["round"][i]),
                STATUSES[int(columns["status"][i])],
                theta[i].tobytes(),
                x_blob,
                float(columns["asked_at"][i]),
                None if math.isnan(told_at) else told_at,
                revision,
            ))
        self._connection.executemany(
            "INSERT INTO tickets (id, fidelity, source, round, status, theta, x, asked_at, "
            "told_at, revision) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE "
            "SET fidelity = excluded.fidelity, source = excluded.source, round = excluded.round, "
            "status = excluded.status, theta = excluded.theta, x = excluded.x, "
            "asked_at = excluded.asked_at, told_at = excluded.told_at, revision = excluded.revision",
            rows,
        )

    def annotate(
        self,
        ids: Sequence[int],
        *,
        cost: Sequence[float | None] | None = None,
        reason: Sequence[str | None] | None = None,
        metadata: Sequence[dict[str, Any] | None] | None = None,
        retry_of: Sequence[int | None] | None = None,
    ) -> None:
        """Set the annotation columns of tickets (``None`` arguments are left
        as they are; ``None`` items clear that ticket's value)."""
        revision = self.write_revision()
        for column, values in (("cost", cost), ("reason", reason), ("retry_of", retry_of)):
            if values is not None:
                self._connection.executemany(
                    f"UPDATE tickets SET {column} = ?, revision = ? WHERE id = ?",
                    [(v, revision, int(t)) for t, v in zip(ids, values)],
                )
        if metadata is not None:
            self._connection.executemany(
                "UPDATE tickets SET metadata = ?, revision = ? WHERE id = ?",
                [(None if m is None else _dumps(m), revision, int(t)) for t, m in zip(ids, metadata)],
            )

    def count_tickets(self) -> int:
        """Number of tickets."""
        return int(self._connection.execute("SELECT COUNT(*) FROM tickets").fetchone()[0])

    def read_ticket_columns(
        self,
        since: int,
        theta_dim: int,
        x_shape: Sequence[int] | None,
        fidelity_names: Sequence[str],
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Tickets changed after revision ``since`` as ledger columns (the
        format of :meth:`mfask.tickets.TicketLedger.rows`, ``x`` NaN where no
        output is stored); returns ``(ids, columns)`` sorted by id.

        Raises :class:`StateFormatError` for rows that do not decode.
        """
        rows = self._connection.execute(
            "SELECT id, fidelity, source, round, status, theta, x, asked_at, told_at "
            "FROM tickets WHERE revision > ? ORDER BY id",
            (since,),
        ).fetchall()
        count = len(rows)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=count)
        fidelity_code = {name: i for i, name in enumerate(fidelity_names)}
        source_code = {name: i for i, name in enumerate(SOURCES)}
        status_code = {name: i for i, name in enumerate(STATUSES)}
        try:
            columns = {
                "fidelity": np.array([fidelity_code[r[1]] for r in rows], dtype=np.int16),
                "source": np.array([source_code[r[2]] for r in rows], dtype=np.int8),
                "round": np.array([r[3] for r in rows], dtype=np.int32),
                "status": np.array([status_code[r[4]] for r in rows], dtype=np.int8),
                "asked_at": np.array([r[7] for r in rows], dtype=np.float64),
                "told_at": np.array([np.nan if r[8] is None else r[8] for r in rows], dtype=np.float64),
            }
        except KeyError as error:
            raise StateFormatError(f"{self.path}: a ticket has an unknown name {error}") from None
        except (TypeError, ValueError) as error:
            raise StateFormatError(f"{self.path}: a ticket row is malformed: {error}") from None
        theta_blobs = [r[5] for r in rows]
        if any(not isinstance(b, bytes) or len(b) != 8 * theta_dim for b in theta_blobs):
            raise StateFormatError(f"{self.path}: a ticket's parameters are not {theta_dim} float64")
        columns["theta"] = np.frombuffer(b"".join(theta_blobs), dtype=np.float64).reshape(count, theta_dim).copy()
        if x_shape is not None:
            width = int(np.prod(x_shape))
            x = np.full((count, width), np.nan)
            for i, r in enumerate(rows):
                if r[6] is not None:
                    if not isinstance(r[6], bytes) or len(r[6]) != 8 * width:
                        raise StateFormatError(
                            f"{self.path}: ticket {r[0]}'s output is not {width} float64"
                        )
                    x[i] = np.frombuffer(r[6], dtype=np.float64)
            columns["x"] = x.reshape(count, *x_shape)
        elif any(r[6] is not None for r in rows):
            raise StateFormatError(f"{self.path}: tickets have outputs but the study has no x_shape")
        return ids, columns

    def ticket_rows(
        self,
        *,
        ids: Sequence[int] | None = None,
        status: str | None = None,
        fidelity: str | None = None,
        x_shape: Sequence[int] | None = None,
    ) -> list[TicketRow]:
        """Tickets as :class:`TicketRow` records, sorted by id, optionally
        filtered by ids, status and fidelity name."""
        clauses, params = [], []
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        if fidelity is not None:
            clauses.append("fidelity = ?")
            params.append(fidelity)
        if ids is not None:
            id_list = [int(i) for i in ids]
            clauses.append(f"id IN ({','.join('?' * len(id_list))})" if id_list else "0")
            params.extend(id_list)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        query = (
            "SELECT id, fidelity, source, round, status, theta, x, asked_at, told_at, cost, "
            f"reason, metadata, retry_of FROM tickets {where} ORDER BY id"
        )
        records = []
        for row in self._connection.execute(query, params):
            x = None
            if row[6] is not None:
                x = np.frombuffer(row[6], dtype=np.float64).copy()
                if x_shape is not None and x.size == int(np.prod(x_shape)):
                    x = x.reshape(tuple(x_shape))
            try:
                metadata = None if row[11] is None else json.loads(row[11])
            except json.JSONDecodeError:
                raise StateFormatError(f"{self.path}: ticket {row[0]} has malformed metadata") from None
            records.append(TicketRow(
                ticket=int(row[0]), fidelity=row[1], source=row[2], round=int(row[3]),
                status=row[4], theta=np.frombuffer(row[5], dtype=np.float64).copy(), x=x,
                asked_at=float(row[7]), told_at=row[8], cost=row[9], reason=row[10],
                metadata=metadata, retry_of=row[12],
            ))
        return records

    def oldest_pending_asked_at(self) -> float | None:
        """Ask time of the oldest pending ticket, ``None`` when none is pending."""
        value = self._connection.execute(
            "SELECT MIN(asked_at) FROM tickets WHERE status = 'pending'"
        ).fetchone()[0]
        return None if value is None else float(value)

    def status_counts(self) -> dict[tuple[str, str, str], int]:
        """Number of tickets per ``(fidelity, status, source)``."""
        return {
            (f, s, o): int(n)
            for f, s, o, n in self._connection.execute(
                "SELECT fidelity, status, source, COUNT(*) FROM tickets "
                "GROUP BY fidelity, status, source"
            )
        }

    # ------------------------------------------------------------ checkpoints
    def write_checkpoint(self, levels: list[dict[str, Any]], arrays: dict[str, np.ndarray]) -> int:
        """Store trained models: the levels' description and their weights.
        Returns the checkpoint id."""
        revision = self.write_revision()
        blob = encode_state({"levels": levels}, arrays)
        cursor = self._connection.execute(
            "INSERT INTO checkpoints (created_at, revision, levels, weights, sha256) VALUES (?, ?, ?, ?, ?)",
            (time.time(), revision, _dumps(levels), blob, hashlib.sha256(blob).hexdigest()),
        )
        return int(cursor.lastrowid)

    def latest_checkpoint(self) -> int | None:
        """Id of the newest checkpoint, ``None`` before the first fit."""
        value = self._connection.execute("SELECT MAX(id) FROM checkpoints").fetchone()[0]
        return None if value is None else int(value)

    def count_checkpoints(self) -> int:
        """Number of stored checkpoints."""
        return int(self._connection.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0])

    def read_checkpoint(self, checkpoint: int) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
        """The levels' description and weights of a checkpoint.

        The weights BLOB must match its SHA-256 digest and decode as a
        pickle-free state; else :class:`StateFormatError` (nothing is run).
        """
        blob, _ = self._checked_checkpoint(checkpoint)
        meta, arrays = decode_state(blob, f"{self.path} checkpoint {checkpoint}")
        levels = meta.get("levels")
        if not isinstance(levels, list) or any(not name.startswith("model/") for name in arrays):
            raise StateFormatError(f"{self.path}: checkpoint {checkpoint} is malformed")
        return levels, arrays

    def checkpoint_levels(self, checkpoint: int) -> list[Any]:
        """The levels' description of a checkpoint (its ``levels`` column: fits,
        training histories, transfer decisions), without decoding the weights.

        The weights BLOB must still match its SHA-256 digest, so that a
        tampered checkpoint is reported here too (:class:`StateFormatError`).
        """
        _, levels_text = self._checked_checkpoint(checkpoint)
        try:
            levels = json.loads(levels_text)
        except (TypeError, json.JSONDecodeError):
            levels = None
        if not isinstance(levels, list):
            raise StateFormatError(f"{self.path}: checkpoint {checkpoint} has a malformed description")
        return levels

    def _checked_checkpoint(self, checkpoint: int) -> tuple[bytes, Any]:
        """A checkpoint's weights BLOB, checked against its digest, and its
        ``levels`` text as stored."""
        row = self._connection.execute(
            "SELECT weights, sha256, levels FROM checkpoints WHERE id = ?", (checkpoint,)
        ).fetchone()
        if row is None:
            raise StateFormatError(f"{self.path} has no checkpoint {checkpoint}")
        blob, digest, levels_text = row
        if not isinstance(blob, bytes) or hashlib.sha256(blob).hexdigest() != digest:
            raise StateFormatError(
                f"{self.path}: the weights of checkpoint {checkpoint} do not match their "
                "SHA-256 digest (the file was tampered with or is corrupt); nothing was loaded"
            )
        return blob, levels_text

    # ---------------------------------------------------------------- sizes
    def file_size(self) -> int:
        """Bytes on disk of the database and its write-ahead log."""
        total = 0
        for suffix in ("", "-wal"):
            candidate = Path(str(self.path) + suffix)
            if candidate.exists():
                total += candidate.stat().st_size
        return total


def study_file_path(location: str | os.PathLike[str]) -> Path:
    """The file a study location names: a path, or an ``sqlite:///`` URL.

    URLs follow SQLAlchemy's (and Optuna's) convention: ``sqlite:///study.db``
    is the relative path ``study.db``, ``sqlite:////abs/study.db`` the absolute
    path ``/abs/study.db``. Any other URL scheme is refused, so that a URL is
    never taken for a relative path (which would create a directory named
    after the scheme).
    """
    text = os.fspath(location)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if text.startswith("sqlite:///"):
        file_part = text[len("sqlite:///"):]
        if not file_part or file_part.startswith("?") or ":memory:" in file_part:
            raise InvalidInputError(
                f"{text!r} names no file; a study needs one, e.g. 'sqlite:///study.db'"
            )
        return Path(file_part)
    scheme = _URL_SCHEME.match(text)
    if scheme or text.startswith("sqlite:"):
        what = f"unknown storage URL scheme {scheme.group(1)!r}" if scheme and scheme.group(1) != "sqlite" \
            else "a malformed SQLite URL"
        raise InvalidInputError(
            f"{what} in {text!r}; a study is an SQLite "
            "file: pass a path ('study.db') or an SQLite URL ('sqlite:///study.db' relative, "
            "'sqlite:////abs/path/study.db' absolute)"
        )
    return Path(text)


# Two or more characters before "://" (a one-letter "scheme" is a Windows drive).
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+)://")


def _connect(path: Path, timeout: float, synchronous: str, create: bool) -> sqlite3.Connection:
    """A read-write connection in WAL mode. Raises :class:`StateFormatError`
    for a file that is not a database, and ``sqlite3.OperationalError`` when
    SQLite cannot open the file (see :func:`_storage_error`)."""
    if synchronous not in ("full", "normal"):
        raise ValueError(f"synchronous must be 'full' or 'normal'; got {synchronous!r}")
    uri = f"{path.resolve().as_uri()}?mode={'rwc' if create else 'rw'}"
    connection = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
    try:
        protect_connection(connection)
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        connection.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    except sqlite3.DatabaseError as error:
        connection.close()
        if storage_failure(error) is not None:
            raise
        raise StateFormatError(f"{path} is not an mfask study file ({error})") from None
    if str(mode).lower() != "wal":
        connection.close()
        raise StateFormatError(f"{path}: could not switch the database to WAL mode (got {mode})")
    return connection


def _connect_existing(
    path: Path, timeout: float, synchronous: str, read_only: bool
) -> tuple[sqlite3.Connection, str | None, bool]:
    """Connect to an existing study file: for reading and writing when it
    can be written here, else read-only. Returns the connection, why it is
    read-only (``None``: writable) and whether it reads an immutable snapshot
    (see :func:`_connect_read_only`)."""
    if read_only:
        return _connect_read_only(path, timeout, "opened with read_only=True")
    try:
        connection = _connect(path, timeout, synchronous, create=False)
    except sqlite3.OperationalError as error:
        failure = storage_failure(error)
        if failure == "read-only":
            reason = "its file or file system is not writable here"
        elif failure == "cannot-open":  # e.g. a folder where SQLite cannot create <file>-wal
            reason = "its folder or file system is not writable here"
        else:
            raise _storage_error(error, path, timeout, "open") from None
        return _connect_read_only(path, timeout, reason)
    if _writable(path):
        return connection, None, False
    return connection, "its file or file system is not writable here", False


def _connect_read_only(path: Path, timeout: float, reason: str) -> tuple[sqlite3.Connection, str, bool]:
    """A read-only connection. In a folder where SQLite cannot create the
    WAL index ``<file>-shm`` it falls back to reading the file as immutable (a
    snapshot), provided no write-ahead log ``<file>-wal`` holds changes that
    are not in the file yet. Returns the connection, ``reason`` and whether
    it is a snapshot."""
    base = path.resolve().as_uri()
    try:
        return _probed_connection(f"{base}?mode=ro", path, timeout), reason, False
    except sqlite3.OperationalError as error:
        if storage_failure(error) not in ("cannot-open", "read-only"):
            raise _storage_error(error, path, timeout, "read") from None
    if _holds_log(path):
        raise StudyStorageError(
            f"cannot read {path} ({reason}): SQLite would need to create {path.name}-shm "
            f"to read the changes held in its write-ahead log {path.name}-wal. "
            "Open it once where its folder is writable (closing it folds the log into the "
            "file), or copy the folder (all the study's files) to a writable place"
        )
    try:
        return _probed_connection(f"{base}?mode=ro&immutable=1", path, timeout), reason, True
    except sqlite3.OperationalError as error:
        raise _storage_error(error, path, timeout, "read") from None


def _probed_connection(uri: str, path: Path, timeout: float) -> sqlite3.Connection:
    """A connection to ``uri`` that has read the schema (SQLite opens files
    lazily), with SQLite's protections against stored SQL
    (:func:`~mfask.store_schema.protect_connection`). Raises
    ``sqlite3.OperationalError`` when SQLite cannot read it,
    :class:`StateFormatError` for a file that is not a database."""
    connection = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
    try:
        protect_connection(connection)
        connection.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        connection.close()
        raise
    except sqlite3.DatabaseError as error:
        connection.close()
        raise StateFormatError(f"{path} is not an mfask study file ({error})") from None
    return connection


def _writable(path: Path) -> bool:
    """Whether this process may write the file (by its effective user where
    the platform tells)."""
    if os.access in os.supports_effective_ids:
        return os.access(path, os.W_OK, effective_ids=True)
    return os.access(path, os.W_OK)


def _file_identity(path: Path) -> tuple[int, int]:
    """The device and inode of the file at ``path`` (which file it is)."""
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _holds_log(path: Path) -> bool:
    """Whether the study file has a non-empty write-ahead log beside it."""
    try:
        return os.stat(f"{path}-wal").st_size > 0
    except FileNotFoundError:
        return False


def _check_existing_file(target: Path, timeout: float) -> None:
    """:func:`~mfask.store_schema.check_study_file`, with a file that cannot
    be read (permissions, an I/O error, a folder where SQLite cannot read it)
    as :class:`StudyStorageError` instead of a raw ``OSError`` or ``sqlite3``
    error; :class:`FileNotFoundError` when the file is gone."""
    try:
        check_study_file(target, timeout)
    except sqlite3.OperationalError as error:  # the check re-raises only storage failures
        raise _storage_error(error, target, timeout, "read") from None
    except OSError as error:
        if isinstance(error, (FileNotFoundError, MfaskError)):
            raise
        raise StudyStorageError(f"cannot read {target}: {error.strerror or error}") from None


def _refuse_unless_incomplete(target: Path, timeout: float) -> None:
    """Raise :class:`FileExistsError` unless ``target`` is an
    :class:`IncompleteStudyError` file (which a creation may replace)."""
    if not target.is_file():
        raise FileExistsError(f"{target} already exists and is not a file; choose another path")
    try:
        _check_existing_file(target, timeout)
    except IncompleteStudyError:
        return  # it holds no data: replaceable
    except StateFormatError as error:
        raise FileExistsError(
            f"{target} already exists and is not an mfask study ({error}); it was left as it "
            "is: choose another path, or remove the file if it is not needed"
        ) from None
    raise FileExistsError(
        f"{target} already exists; open it (open_study, or create_study(..., "
        "load_if_exists=True)) or choose another path"
    )


def _remove_companions(database: Path) -> None:
    """Remove SQLite's ``-wal``, ``-shm`` and ``-journal`` files of ``database``."""
    for suffix in ("-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{database}{suffix}")


def _array_from_blob(name: str, dtype: str, shape: str, data: bytes) -> np.ndarray:
    """Decode a stored array; only plain numeric dtypes are accepted."""
    try:
        kind = np.dtype(dtype)
        dims = tuple(int(s) for s in json.loads(shape))
        if kind.kind not in _NUMERIC_KINDS or kind.fields is not None:
            raise ValueError(f"dtype {dtype!r} is not a plain numeric type")
        return np.frombuffer(data, dtype=kind).reshape(dims).copy()
    except (TypeError, ValueError, json.JSONDecodeError) as error:
        raise StateFormatError(f"stored array {name!r} is malformed: {error}") from None


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _storage_error(
    error: sqlite3.Error, path: Path, timeout: float, action: str
) -> StudyLockedError | StudyStorageError:
    """The mfask error for SQLite's failure to ``action`` ("read", "write",
    "open", "create") the file, with what to do."""
    kind = storage_failure(error)
    companions = f"{path.name}-wal and {path.name}-shm"
    if kind == "busy":
        return StudyLockedError(
            f"{path} stayed locked by another process for more than {timeout:g} s "
            f"({error}); retry, or open the study with a longer timeout"
        )
    if kind == "read-only":
        return ReadOnlyStudyError(
            f"cannot {action} {path}: it is read-only here ({error}): the file, its folder "
            f"(SQLite writes {companions} beside the file) or its file system is not writable. "
            "Make them writable and open the study again, or work on a copy; reading it works. "
            "Nothing was changed"
        )
    if kind == "full":
        return StudyStorageError(
            f"could not {action} {path}: the disk is full ({error}). Free space on the disk "
            "that holds the study and retry; nothing was changed"
        )
    if kind == "io":
        return StudyStorageError(
            f"could not {action} {path}: disk I/O error ({error}). Check the disk or file "
            "system (a removed drive, a network file system, the file deleted while open) "
            "and retry; nothing was changed"
        )
    if kind == "cannot-open":
        return StudyStorageError(
            f"could not {action} {path} ({error}): SQLite cannot open the file or create "
            f"{companions} beside it; check the permissions of the file and its folder"
        )
    return StudyStorageError(f"could not {action} {path}: {error}")
