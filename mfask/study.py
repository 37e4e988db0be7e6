"""Durable studies: a :class:`MultiFidelityPosterior` backed by a study file.

A :class:`Study` owns an in-memory posterior and an SQLite study file
(:mod:`mfask.store`). Every call that changes something (``ask``, ``tell``,
``fail``, ``abandon``, ``retry``, ``fit``, ``sample``...) runs inside one
write transaction:

1. take the database's write lock (``BEGIN IMMEDIATE``);
2. bring the in-memory posterior up to date with the file (tickets changed
   by other processes since the last revision seen, random generator states,
   new model checkpoints);
3. make the call on the posterior;
4. write what changed (ticket rows, generator states, a checkpoint if a
   model was trained) and commit, before the call returns.

So the file is the source of truth: several processes may ask and tell into
one study at once without losing or duplicating a ticket, and a study
reopened after a crash (even ``kill -9``) resumes exactly where the last
returned call left it: same tickets and results, same weights, same random
streams.

Training takes minutes, so it does not hold the database lock: a fit takes
the study's training lock (:mod:`mfask.study_lock`, one trainer at a time),
trains on a snapshot of the data while others keep telling, then stores the
weights as a new checkpoint in a short transaction. Other processes load the
newest checkpoint at their next call.

A study opened with ``lazy=True`` loads from the file only what its calls
need: its records (a :class:`~mfask.ticket_book.TicketBook`: tickets,
results, the output shape) for tells by ticket, ``fail``, ``abandon``,
``retry``, ``status`` and ``tickets``, which import no torch; the prior and
the ask stream (a :class:`~mfask.prior_book.PriorBook`, torch but no flows)
for asks from the prior and tells by parameter value; the whole posterior
(trained models, all random streams) for sequential asks, ``fit``,
``sample``, ``save``. That keeps short-lived processes (the ``mfask``
command) quick to start; the file is the same whichever was loaded.

A study that cannot be written here (a read-only file, folder or file
system, or ``read_only=True``) opens read-only: ``status``, ``tickets``,
``pending``, ``count``, ``info``, ``save`` and queries of the trained models
it holds (``sample``, ``log_prob``; their random stream is then not stored)
work; a call that would change the file raises
:class:`~mfask.errors.ReadOnlyStudyError` and changes nothing. Failures of
the file itself (a full disk, an I/O error, the file deleted or replaced
while open) raise :class:`~mfask.errors.StudyStorageError`, with the file and
the in-memory state as before the call (see :mod:`mfask.store`).

Example::

    study = mfask.create_study("run.mfask", prior, ["low", "high"], seed=0)
    batch = study.ask("low", 100)
    study.tell(batch, simulate(batch.theta), cost=12.5)
    ...
    study = mfask.open_study("run.mfask")      # any time later, any process
    samples = study.sample(1000, x_o)
"""

from __future__ import annotations

import enum
import json
import math
import os
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal, Sequence

import numpy as np

from mfask.errors import (
    IncompleteStudyError,
    InvalidInputError,
    MfaskError,
    NotEnoughDataError,
    ReadOnlyStudyError,
    StateFormatError,
)
from mfask.fidelity import Fidelity, FidelitySpec, ask_target
from mfask.state_file import generator_from_array, generator_to_array
from mfask.store import StudyStore, TicketRow
from mfask.study_lock import TrainingLock
from mfask.ticket_book import TellResult, TicketBook
from mfask.tickets import FAILED, STATUSES, AskBatch
from mfask.transfer_choice import TransferChoice
from mfask.user_input import as_sample_shape, as_ticket_ids, positive_int

if TYPE_CHECKING:  # these import torch; a study imports them when it loads what needs them
    import torch
    from torch import nn

    from mfask.posterior import MultiFidelityPosterior
    from mfask.prior_book import PriorBook
    from mfask.priors import Prior
    from mfask.training import TrainingHistory

__all__ = ["Study", "open_study", "create_study", "TicketRow", "NON_FINITE_REASON"]

#: the reason recorded for tickets told with NaN/inf outputs
NON_FINITE_REASON = "non-finite output (NaN or inf)"

# session arrays that are random generator states, and the posterior
# attribute each one restores (any other changed array forces a full reload)
_GENERATORS = {"rng/ask": "_ask_generator", "rng/sample": "_sample_generator"}

Synchronous = Literal["full", "normal"]


class _Holds(enum.IntEnum):
    """What a study holds in memory, each level including the ones below."""

    RECORDS = 0  # a TicketBook: tickets, results (no session arrays)
    PRIOR = 1  # a PriorBook: also the prior and the ask stream (session array rng/ask)
    POSTERIOR = 2  # a MultiFidelityPosterior: everything, models included


# the session arrays each level holds (a changed array held by nobody is ignored)
_HELD_ARRAYS = {_Holds.RECORDS: (), _Holds.PRIOR: ("rng/ask",)}


class Study:
    """A multi-fidelity posterior whose every ask, tell and fit is durable.

    Create one with :meth:`create` (or :func:`create_study`), reopen it with
    :meth:`open` (or :func:`open_study`). The methods mirror
    :class:`~mfask.posterior.MultiFidelityPosterior`; each persists its effect
    before returning. Use the study's methods rather than calling
    ``study.posterior`` directly: changes made on the posterior are not
    persisted (they are discarded, with a warning, at the next call).

    With ``lazy=True`` the study loads from the file only what its calls
    need (see the module doc).

    A ``Study`` object is not thread-safe; use one per thread or process.
    """

    def __init__(
        self,
        store: StudyStore,
        *,
        prior: Prior | None = None,
        embedding_net: nn.Module | None = None,
        verbose: bool = True,
        lazy: bool = False,
        device: str | torch.device = "cpu",
    ) -> None:
        if not lazy or device != "cpu":  # a lazy study imports torch only when it trains
            from mfask.device import resolve_device

            device = resolve_device(device)  # a clear error now rather than at the first fit
        self._store = store
        self._lock = TrainingLock(str(store.path) + ".lock")
        self._prior = prior
        self._embedding_net = embedding_net
        self._verbose = verbose
        self._device = device
        # the in-memory state: a TicketBook, a PriorBook or the whole posterior
        self._book: TicketBook | None = None
        self._holds = _Holds.RECORDS if lazy else _Holds.POSTERIOR
        self._observing = False  # the file's sequential rounds have an observation
        self._stale = True
        self._revision = -1  # tickets are up to date with this revision
        self._session_revision = -1  # session arrays are up to date with this one
        self._meta_text: str | None = None
        self._session_cache: dict[str, tuple[str, tuple[int, ...], bytes]] = {}
        self._checkpoint: int | None = None
        self._fit_counts: tuple[int, ...] = ()
        self._memory_changed = False
        with store.transaction(write=False):
            self._sync()

    # ============================================================ open/create
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        posterior: MultiFidelityPosterior,
        *,
        timeout: float = 60.0,
        synchronous: Synchronous = "full",
    ) -> "Study":
        """Create a study file at ``path`` holding ``posterior``'s complete
        state (its configuration, tickets, results and trained models).

        The study works on its own copy: later changes to ``posterior`` are
        not part of the study.

        Arguments:
            timeout: seconds to wait when another process holds the database.
            synchronous: ``"full"`` (default) makes every committed call
                survive a power loss; ``"normal"`` only a crash of the
                process (faster on slow disks).

        The file appears at ``path`` complete or not at all, also if the
        process is killed while creating it (see :meth:`StudyStore.create`);
        a file left at ``path`` by an interrupted creation of an older mfask
        (:class:`~mfask.errors.IncompleteStudyError`) is replaced.

        Raises :class:`FileExistsError` if ``path`` holds anything else.
        """
        if not isinstance(posterior, _posterior_class()):
            raise InvalidInputError(
                f"posterior must be a MultiFidelityPosterior; got {type(posterior).__name__}"
            )
        meta, arrays = posterior._export_state(tickets=False)
        levels = meta.pop("levels")
        session = {k: v for k, v in arrays.items() if not k.startswith("model/")}
        models = {k: v for k, v in arrays.items() if k.startswith("model/")}
        ledger = posterior._ledger

        def fill(store: StudyStore) -> None:
            """Write the posterior's state into the file being created."""
            store.write_session_arrays(session)
            ids = np.arange(ledger.size)
            if ids.size:
                store.write_tickets(ids, ledger.rows(ids), posterior.fidelity_names)
            if any(level["num_members"] for level in levels):
                store.write_checkpoint(levels, models)

        store = StudyStore.create(
            path, {**meta, "levels": []}, fill=fill, timeout=timeout, synchronous=synchronous
        )
        try:
            return cls(
                store,
                prior=posterior.prior,
                embedding_net=posterior._embedding_template,
                verbose=posterior.verbose,
                device=posterior.device,
            )
        except BaseException:
            store.close()
            raise

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        prior: Prior | None = None,
        embedding_net: nn.Module | None = None,
        verbose: bool = True,
        timeout: float = 60.0,
        synchronous: Synchronous = "full",
        lazy: bool = False,
        read_only: bool = False,
        device: str | torch.device = "cpu",
    ) -> "Study":
        """Open an existing study file.

        Arguments:
            prior: needed when the prior has marginals mfask cannot describe
                as data (else rebuilt from the file).
            embedding_net: a module of the architecture the study was created
                with, if it has one (the weights come from the file).
            verbose: show training progress on standard error (default);
                ``False`` is silent.
            timeout, synchronous: as in :meth:`create`.
            lazy: load only the records (tickets, results) now, the prior
                and the posterior at the first call that needs them (see the
                module doc); the trained weights are then checked at that
                call (their digest also by :meth:`status`).
            read_only: open for reading only, even if the file could be
                written (see the module doc); a study that cannot be
                written here opens read-only anyway (:attr:`read_only`).
            device: where this process trains and queries the networks
                (see :class:`MultiFidelityPosterior`); not stored in the file,
                so every process chooses its own.

        Raises :class:`FileNotFoundError`, :class:`StateFormatError` for a
        file that is not a study, has an unknown schema version or holds
        malformed or tampered data (nothing from the file is executed), or
        :class:`StudyStorageError` when the file cannot be read.
        """
        store = StudyStore.open(path, timeout=timeout, synchronous=synchronous, read_only=read_only)
        try:
            return cls(store, prior=prior, embedding_net=embedding_net, verbose=verbose, lazy=lazy,
                       device=device)
        except BaseException:
            store.close()
            raise

    def close(self) -> None:
        """Close the study file (everything is already committed)."""
        self._store.close()

    def __enter__(self) -> "Study":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> Path:
        """The study file."""
        return self._store.path

    @property
    def read_only(self) -> bool:
        """Whether the study can only be read here (opened with
        ``read_only=True``, or its file, folder or file system is not
        writable); changes raise :class:`ReadOnlyStudyError`."""
        return self._store.read_only

    @property
    def posterior(self) -> MultiFidelityPosterior:
        """The in-memory posterior, brought up to date with the file (loaded
        first if the study is lazy).

        Read from it freely (``data``, ``num_simulations``, ``x_shape``...);
        change the study through the study's methods only.
        """
        self._hold(_Holds.POSTERIOR)
        self.refresh()
        return self._model

    @property
    def fidelity_names(self) -> tuple[str, ...]:
        """Fidelity names, low to high."""
        return self._live.fidelity_names

    @property
    def fidelities(self) -> tuple[Fidelity, ...]:
        """The fidelities, low to high, each naming the parameters it uses."""
        return tuple(self._live.fidelities)

    @property
    def parameter_names(self) -> tuple[str, ...]:
        """Names of the ``d`` parameters."""
        return self._live.parameter_names

    @property
    def x_shape(self) -> tuple[int, ...] | None:
        """Shape of one simulator output (``None`` before the first result),
        as of the last call."""
        return self._live.x_shape

    def refresh(self) -> None:
        """Bring the in-memory state (records, prior or posterior) up to date with the file."""
        with self._store.transaction(write=False):
            self._sync()

    def __repr__(self) -> str:
        return f"Study({str(self.path)!r}, {self._book!r})"

    # ================================================================ ask/tell
    def ask(self, fidelity: str | int | None = None, n: int | None = None, **options: Any) -> AskBatch:
        """Open ``n`` new pending tickets at ``fidelity``; see
        :meth:`MultiFidelityPosterior.ask` (``options`` are passed on; with a
        single fidelity the name may be left out). The tickets are in the
        file when this returns.

        An ask that proposes from the posterior (sequential rounds after
        ``set_observation``) first brings the models up to date under the
        training lock, so that it does not train while holding the database.
        """
        fidelity, n = ask_target(self.fidelity_names, fidelity, n)
        if self._holds < _Holds.POSTERIOR:
            self._hold(_Holds.PRIOR)
            with self._writing():
                # decided on the file as of this transaction (another process
                # may have started sequential rounds): those need the posterior
                if not self._asks_sequentially(fidelity):
                    batch = self._prior_book.ask(fidelity, n, **options)
                    self._memory_changed = True
                    self._persist()
                    return batch
            self._hold(_Holds.POSTERIOR)
        if self._asks_sequentially(fidelity):
            from mfask.prior_book import MAX_ASK

            positive_int(n, "n", maximum=MAX_ASK)  # before training, which changes the study
            try:
                self.fit()
            except NotEnoughDataError:
                pass  # a first round: prior draws
        with self._writing():
            batch = self._model.ask(fidelity, n, **options)
            self._memory_changed = True
            self._persist()
        return batch

    def _asks_sequentially(self, fidelity: str) -> bool:
        """Whether an ask at ``fidelity`` is a sequential round (which
        proposes from the posterior), as of the last sync."""
        if self._holds == _Holds.POSTERIOR:
            observing = self._model.observation is not None
        else:  # (only a posterior changes the rounds: the file's state holds)
            observing = self._observing
        return observing and fidelity == self.fidelity_names[-1]

    def set_observation(self, x_o: Any, **options: Any) -> None:
        """Start sequential rounds at ``x_o``; see
        :meth:`MultiFidelityPosterior.set_observation`. Persisted."""
        self._hold(_Holds.POSTERIOR)
        with self._writing():
            self._model.set_observation(x_o, **options)
            self._memory_changed = True
            self._persist()

    def clear_observation(self) -> None:
        """Back to amortized asks; see
        :meth:`MultiFidelityPosterior.clear_observation`. Persisted."""
        self._hold(_Holds.POSTERIOR)
        with self._writing():
            self._model.clear_observation()
            self._memory_changed = True
            self._persist()

    def tell(
        self,
        theta_or_tickets: Any,
        x: Any,
        fidelity: str | None = None,
        *,
        unasked: Literal["raise", "prior"] = "raise",
        skip_told: bool = False,
        cost: float | Sequence[float] | None = None,
        metadata: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None,
        reason: str | Sequence[str | None] | None = None,
    ) -> TellResult:
        """Record simulator outputs; see :meth:`MultiFidelityPosterior.tell`.

        Rows with NaN/inf outputs become failed tickets. The results are in
        the file when this returns. Telling rows by parameter value (with
        ``fidelity``) loads the prior of a lazy study; telling by ticket
        does not.

        Arguments:
            cost: seconds each simulation took: one number for all rows or
                one per row.
            metadata: a JSON-serialisable dict for all rows, or one per row.
            reason: why the failed rows failed: one text for all or one per
                row (default and for ``None`` items: :data:`NON_FINITE_REASON`);
                ignored for rows that did not fail.
        """
        _check_cost(cost)
        _check_metadata(metadata)
        if reason is not None and not isinstance(reason, str):
            reason = list(reason)
            if any(r is not None and not isinstance(r, str) for r in reason):
                raise InvalidInputError("reason must be a string or one string (or None) per row")
        if fidelity is not None and not isinstance(theta_or_tickets, AskBatch):
            self._hold(_Holds.PRIOR)  # matching by value needs the prior
        with self._writing():
            result = self._live.tell(
                theta_or_tickets, x, fidelity, unasked=unasked, skip_told=skip_told
            )
            self._memory_changed = True
            rows = np.flatnonzero(result.ticket_ids >= 0)
            ids = result.ticket_ids[rows]
            failed = self._live._ledger.status[ids] == FAILED
            self._persist()
            count = result.ticket_ids.shape[0]
            given = [None] * rows.shape[0] if reason is None else _per_row(reason, rows, count, "reason")
            self._store.annotate(
                ids,
                cost=_per_row(cost, rows, count, "cost"),
                metadata=_per_row(metadata, rows, count, "metadata"),
                reason=[(r or NON_FINITE_REASON) if f else None for f, r in zip(failed, given)],
            )
        return result

    def fail(
        self,
        tickets: Any,
        reason: str,
        *,
        cost: float | Sequence[float] | None = None,
        metadata: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None,
        skip_told: bool = False,
    ) -> np.ndarray:
        """Record that the simulations of pending tickets failed (e.g. the
        simulator raised), with ``reason``. Returns the ids recorded.

        With ``skip_told``, tickets that are no longer pending are skipped
        instead of raising :class:`TicketAlreadyToldError`.
        """
        if not isinstance(reason, str) or not reason:
            raise InvalidInputError(f"reason must be a non-empty string; got {reason!r}")
        _check_cost(cost)
        _check_metadata(metadata)
        ids = _ticket_ids(tickets)
        with self._writing():
            keep = self._pending_mask(ids) if skip_told else np.ones(ids.shape[0], dtype=bool)
            recorded = self._live.fail(ids[keep])
            self._memory_changed = True
            self._persist()
            rows = np.flatnonzero(keep)
            self._store.annotate(
                recorded,
                reason=[reason] * recorded.shape[0],
                cost=_per_row(cost, rows, ids.shape[0], "cost"),
                metadata=_per_row(metadata, rows, ids.shape[0], "metadata"),
            )
        return recorded

    def abandon(self, tickets: Any, reason: str | None = None) -> np.ndarray:
        """Give up on pending tickets (no result will come); returns their ids."""
        ids = _ticket_ids(tickets)
        with self._writing():
            recorded = self._live.abandon(ids)
            self._memory_changed = True
            self._persist()
            if reason is not None:
                self._store.annotate(recorded, reason=[str(reason)] * recorded.shape[0])
        return recorded

    def retry(self, tickets: Any) -> AskBatch:
        """Ask the parameters of failed, abandoned or pending tickets again
        under new tickets (pending ones are abandoned); see
        :meth:`MultiFidelityPosterior.retry`. Each new ticket records the
        ticket it retries (``retry_of``)."""
        ids = _ticket_ids(tickets)
        with self._writing():
            was_pending = self._pending_mask(ids)
            batch = self._live.retry(ids)
            self._memory_changed = True
            self._persist()
            self._store.annotate(batch.ticket_ids, retry_of=[int(i) for i in ids])
            self._store.annotate(
                ids[was_pending],
                reason=[f"retried as ticket {int(t)}" for t in batch.ticket_ids[was_pending]],
            )
        return batch

    def simulator_seeds(self, tickets: Any) -> np.ndarray:
        """A reproducible simulator seed per ticket; see
        :meth:`MultiFidelityPosterior.simulator_seeds`."""
        return self._live.simulator_seeds(tickets)

    # ================================================================ queries
    def tickets(
        self,
        ids: Sequence[int] | None = None,
        *,
        status: str | None = None,
        fidelity: str | None = None,
    ) -> list[TicketRow]:
        """Stored tickets (all, or those with the given ids/status/fidelity),
        sorted by id, with their cost, reason and metadata."""
        if status is not None and status not in STATUSES:
            raise InvalidInputError(f"status must be one of {STATUSES}; got {status!r}")
        if fidelity is not None:
            self._live._fidelity_index(fidelity)  # raises UnknownFidelityError
        with self._store.transaction(write=False):
            self._sync(tickets=False)
            return self._store.ticket_rows(
                ids=ids, status=status, fidelity=fidelity, x_shape=self._live.x_shape
            )

    def pending(self, fidelity: str | None = None) -> list[TicketRow]:
        """Open tickets (oldest first); each has an ``age`` in seconds."""
        return self.tickets(status="pending", fidelity=fidelity)

    def status(self) -> dict[str, Any]:
        """A JSON-compatible summary: counts per fidelity and status, oldest
        pending ticket, checkpoints, training lock holder, file size, and per
        fidelity the transfer guard's latest decision (``"transfer"``: a
        :meth:`TransferChoice.to_dict` or ``None``)."""
        with self._store.transaction(write=False):
            self._sync(tickets=False)
            counts: dict[tuple[str, str], int] = {}
            for (name, status, _), count in self._store.status_counts().items():
                counts[name, status] = counts.get((name, status), 0) + count
            revision = self._store.revision()
            checkpoints = self._store.count_checkpoints()
            oldest = self._store.oldest_pending_asked_at()
            latest = self._store.latest_checkpoint()
            levels = [] if latest is None else self._store.checkpoint_levels(latest)
        book = self._live
        per_fidelity = {
            name: {status: counts.get((name, status), 0) for status in STATUSES}
            for name in book.fidelity_names
        }
        totals = {status: sum(c[status] for c in per_fidelity.values()) for status in STATUSES}
        trained, transfer = _level_summaries(levels, book.fidelity_names)
        return {
            "path": str(self.path),
            "parameters": list(book.parameter_names),
            "fidelities": list(book.fidelity_names),
            "seed": book.seed,
            "round": book.round,
            "x_shape": None if book.x_shape is None else list(book.x_shape),
            "tickets": per_fidelity,
            "total": totals,
            "oldest_pending_age_seconds": None if oldest is None else max(0.0, time.time() - oldest),
            "checkpoints": checkpoints,
            "trained": trained,
            "transfer": transfer,
            "training_lock": self._lock.holder(),
            "revision": revision,
            "file_bytes": self._store.file_size(),
        }

    def count(
        self,
        fidelity: str | None = None,
        status: str | Sequence[str] | None = None,
        *,
        source: str | Sequence[str] | None = None,
    ) -> int:
        """Number of stored tickets with the given fidelity, status(es) and
        source(s) (each ``None``: any), read from the file."""
        statuses = {status} if isinstance(status, str) else None if status is None else set(status)
        sources = {source} if isinstance(source, str) else None if source is None else set(source)
        with self._store.transaction(write=False):
            counts = self._store.status_counts()
        return sum(
            n for (f, s, o), n in counts.items()
            if (fidelity is None or f == fidelity)
            and (statuses is None or s in statuses)
            and (sources is None or o in sources)
        )

    def info(self) -> dict[str, str]:
        """The study's key/value notes (format, schema version, creation
        time, and entries set with :meth:`set_info`)."""
        with self._store.transaction(write=False):
            return self._store.info()

    def set_info(self, key: str, value: str) -> None:
        """Set a free key/value note in the study file."""
        if key in ("format", "schema_version", "created_at", "mfask_version"):
            raise InvalidInputError(f"{key!r} is reserved")
        with self._store.transaction():
            self._store.set_info(str(key), str(value))

    # ================================================================ training
    def fit(
        self,
        fidelity: str | None = None,
        *,
        force: bool = False,
        timeout: float | None = None,
    ) -> dict[str, list[TrainingHistory]]:
        """Train what is out of date (see :meth:`MultiFidelityPosterior.fit`)
        under the study's training lock, and store the new weights.

        Trains on the data in the file when training starts; other processes
        may keep telling meanwhile (their results are used by the next fit).
        ``timeout`` bounds the wait for another trainer (``None``: wait);
        :class:`StudyLockedError` when it runs out. Returns the new training
        histories per fidelity (empty if everything was up to date).
        """
        self._hold(_Holds.POSTERIOR)
        if self.read_only:
            self._check_trained(fidelity, force, "fit")
            return {}
        with self._lock.hold(timeout):
            return self._fit_locked(fidelity, force)

    def _check_trained(self, fidelity: str | None, force: bool, call: str) -> None:
        """For a read-only study: raise :class:`ReadOnlyStudyError` unless the
        stored models are current up to ``fidelity`` (so that ``call`` need
        not train and store weights)."""
        self.refresh()
        if force or self._model.needs_fit(fidelity):
            what = "retraining" if force else "its models are not trained on all of its results"
            raise ReadOnlyStudyError(
                f"{self.path} is open read-only ({self._store.read_only_reason}) and {call} "
                f"needs to train ({what}), which stores new weights; nothing was done. Fit the "
                "study where it can be written (or a writable copy of it), then query it here"
            )

    def _fit_locked(self, fidelity: str | None, force: bool) -> dict[str, list[TrainingHistory]]:
        with self._store.transaction(write=False):
            self._sync()
        try:
            histories = self._model.fit(fidelity, force=force)
        except MfaskError:
            raise
        except BaseException:
            self._stale = True  # interrupted mid-training: reload the stored models
            raise
        if histories:
            try:
                with self._store.transaction():
                    # store the new weights before syncing: should the sync
                    # reload the posterior (others changed its state), it
                    # reloads these weights
                    self._write_checkpoint()
                    self._sync()
                    self._persist()
            except BaseException:
                self._stale = True
                raise
        return histories

    def sample(self, n: int, x: Any, *, fidelity: str | None = None, timeout: float | None = None) -> np.ndarray:
        """Posterior samples ``(n, d)`` at one observation; fits first if
        needed (see :meth:`fit`), once ``n`` is known to be valid. The
        sampling random stream is persisted."""
        as_sample_shape(n, "n")
        return self._query("sample", (n, x), fidelity, timeout)

    def sample_batched(
        self, n: int, xs: Any, *, fidelity: str | None = None, timeout: float | None = None
    ) -> np.ndarray:
        """``n`` samples per observation: ``(m, n, d)``; see :meth:`sample`."""
        as_sample_shape(n, "n")
        return self._query("sample_batched", (n, xs), fidelity, timeout)

    def log_prob(self, theta: Any, x: Any, *, fidelity: str | None = None, timeout: float | None = None) -> np.ndarray:
        """``log q(theta | x)`` ``(n,)``; fits first if needed."""
        return self._query("log_prob", (theta, x), fidelity, timeout)

    def _query(self, method: str, args: tuple[Any, ...], fidelity: str | None, timeout: float | None) -> Any:
        self._hold(_Holds.POSTERIOR)
        if self.read_only:  # from the stored models; the sampling stream is not stored
            self._check_trained(fidelity, False, method)
            return getattr(self._model, method)(*args, fidelity=fidelity)
        with self._lock.hold(timeout):
            self._fit_locked(fidelity, False)
            # tickets are not synced here: results told since the fit would
            # only make the models look stale and retrain inside the lock
            with self._writing(tickets=False):
                result = getattr(self._model, method)(*args, fidelity=fidelity)
                self._memory_changed = True
                self._persist(tickets_synced=False)
        return result

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the whole study as a single ``.npz`` posterior state
        (:meth:`MultiFidelityPosterior.save`; loadable with ``load``)."""
        self.posterior.save(path)

    # ============================================================ sync/persist
    @property
    def _live(self) -> TicketBook:
        """The in-memory records (the posterior itself once it is loaded)."""
        assert self._book is not None
        return self._book

    @property
    def _prior_book(self) -> PriorBook:
        """The in-memory prior book (after ``_hold(_Holds.PRIOR)``)."""
        assert self._holds >= _Holds.PRIOR and self._book is not None
        return self._book  # type: ignore[return-value]

    @property
    def _model(self) -> MultiFidelityPosterior:
        """The in-memory posterior (after ``_hold(_Holds.POSTERIOR)``)."""
        assert self._holds == _Holds.POSTERIOR and self._book is not None
        return self._book  # type: ignore[return-value]

    def _hold(self, level: _Holds) -> None:
        """Keep at least ``level`` in memory from now on (loaded from the
        file here if the study held less; the prior and the posterior import
        torch)."""
        if self._holds < level:
            self._holds = level
            self._stale = True
            self.refresh()

    def _pending_mask(self, ids: np.ndarray) -> np.ndarray:
        ledger = self._live._ledger
        valid = (ids >= 0) & (ids < ledger.size)
        mask = np.zeros(ids.shape[0], dtype=bool)
        mask[valid] = ledger.status[ids[valid]] == STATUSES.index("pending")
        return mask | ~valid  # unknown ids are left for fail() to report

    @contextmanager
    def _writing(self, *, tickets: bool = True) -> Iterator[None]:
        """A write transaction that first syncs; if the in-memory posterior
        was changed and the transaction does not commit, it is reloaded at
        the next call."""
        self._memory_changed = False
        try:
            with self._store.transaction():
                self._sync(tickets=tickets)
                yield
        except MfaskError:
            if self._memory_changed:
                self._stale = True
            raise
        except BaseException:
            self._stale = True
            raise

    def _sync(self, *, tickets: bool = True) -> None:
        """Bring the in-memory posterior up to date (inside a transaction)."""
        store = self._store
        meta_text = store.read_meta()
        checkpoint = store.latest_checkpoint()
        models_changed = self._holds == _Holds.POSTERIOR and checkpoint != self._checkpoint
        if self._stale or meta_text != self._meta_text or models_changed:
            self._reload(meta_text, checkpoint)
            return
        post = self._live
        unsaved = post._ledger.take_changes()
        if unsaved.size:
            warnings.warn(
                f"{unsaved.size} ticket change(s) made directly on study.posterior were not "
                "persisted and are discarded; use the Study's methods",
                RuntimeWarning,
                stacklevel=4,
            )
            self._reload(meta_text, checkpoint)
            return
        revision = store.revision()
        if self._holds > _Holds.RECORDS and revision > self._session_revision:
            held = None if self._holds == _Holds.POSTERIOR else _HELD_ARRAYS[self._holds]
            for name, array in store.read_session_arrays(since=self._session_revision).items():
                key = _array_key(array)
                if self._session_cache.get(name) == key or (held is not None and name not in held):
                    continue
                if name not in _GENERATORS:
                    self._reload(meta_text, checkpoint)
                    return
                try:
                    generator = generator_from_array(array)
                except StateFormatError as error:
                    raise StateFormatError(f"{self.path}: {name}: {error}") from None
                setattr(post, _GENERATORS[name], generator)
                self._session_cache[name] = key
            self._session_revision = revision
        if tickets and revision > self._revision:
            ids, columns = store.read_ticket_columns(
                self._revision, len(post.parameter_names), post.x_shape, post.fidelity_names
            )
            try:
                post._ledger.apply_rows(ids, columns)
            except InvalidInputError:
                self._reload(meta_text, checkpoint)  # out of step: start afresh
                return
            self._revision = revision

    def _reload(self, meta_text: str, checkpoint: int | None) -> None:
        """Rebuild the in-memory records (lazy) or posterior from the file
        (inside a transaction)."""
        self._stale = True
        store = self._store
        try:
            meta = json.loads(meta_text)
            names = [str(f["name"]) for f in meta["fidelities"]]
            dim = len(meta["parameter_names"])
            x_shape = meta["x_shape"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise StateFormatError(f"{self.path}: malformed study description: {error}") from None
        revision = store.revision()
        ids, columns = store.read_ticket_columns(-1, dim, x_shape, names)
        if not np.array_equal(ids, np.arange(ids.shape[0])):
            raise StateFormatError(f"{self.path}: ticket ids are not 0..n-1")
        tickets = {f"tickets/{k}": v for k, v in columns.items()}
        session = store.read_session_arrays() if self._holds > _Holds.RECORDS else {}
        if self._holds == _Holds.RECORDS:
            book = TicketBook._from_records(meta, tickets)
        elif self._holds == _Holds.PRIOR:
            from mfask.prior_book import PriorBook  # imports torch

            session = {name: session[name] for name in _HELD_ARRAYS[_Holds.PRIOR] if name in session}
            book = PriorBook._from_records(meta, {**session, **tickets}, prior=self._prior)
        else:
            levels, models = store.read_checkpoint(checkpoint) if checkpoint is not None else ([], {})
            book = _posterior_class()._from_state(
                {**meta, "levels": levels}, {**session, **models, **tickets},
                prior=self._prior, embedding_net=self._embedding_net, device=self._device,
            )
            book.verbose = self._verbose
        book._ledger.take_changes()
        self._book = book
        sequential = meta.get("sequential")
        self._observing = isinstance(sequential, dict) and sequential.get("has_observation") is True
        self._meta_text = meta_text
        self._session_cache = {name: _array_key(a) for name, a in session.items()}
        self._checkpoint = checkpoint
        self._fit_counts = self._current_fit_counts()
        self._revision = self._session_revision = revision
        self._stale = False

    def _persist(self, *, tickets_synced: bool = True) -> None:
        """Write what changed in memory (inside the write transaction)."""
        store = self._store
        book = self._live
        revision = store.write_revision()
        ids = book._ledger.take_changes()
        if ids.size:
            store.write_tickets(ids, book._ledger.rows(ids), book.fidelity_names)
        if self._holds < _Holds.POSTERIOR:
            # the part of the description and the session arrays held here
            assert self._meta_text is not None
            meta = {**json.loads(self._meta_text), **book._records_header()}
            arrays = {
                name: generator_to_array(getattr(book, _GENERATORS[name]))
                for name in _HELD_ARRAYS[self._holds]
            }
        else:
            meta, arrays = self._model._export_state(tickets=False, models=False)
        meta_text = _dumps(meta)
        if meta_text != self._meta_text:
            store.write_meta(meta_text)
            self._meta_text = meta_text
        changed = {k: v for k, v in arrays.items() if self._session_cache.get(k) != _array_key(v)}
        if changed:
            store.write_session_arrays(changed)
            self._session_cache.update({k: _array_key(v) for k, v in changed.items()})
        if self._current_fit_counts() != self._fit_counts:
            self._write_checkpoint()
        if tickets_synced:
            self._revision = revision
        self._session_revision = revision

    def _write_checkpoint(self) -> None:
        meta, arrays = self._model._export_state(tickets=False)
        models = {k: v for k, v in arrays.items() if k.startswith("model/")}
        self._checkpoint = self._store.write_checkpoint(meta["levels"], models)
        self._fit_counts = self._current_fit_counts()

    def _current_fit_counts(self) -> tuple[int, ...]:
        """Fits per level of the in-memory posterior (empty while it holds
        less: no models are in memory)."""
        if self._holds < _Holds.POSTERIOR:
            return ()
        post = self._model
        return tuple(len(post.training_histories(name)) for name in post.fidelity_names)


# ======================================================================== API
def open_study(
    path: str | os.PathLike[str],
    *,
    prior: Prior | None = None,
    embedding_net: nn.Module | None = None,
    verbose: bool = True,
    timeout: float = 60.0,
    synchronous: Synchronous = "full",
    lazy: bool = False,
    read_only: bool = False,
    device: str | torch.device = "cpu",
) -> Study:
    """Open an existing study file; see :meth:`Study.open`."""
    return Study.open(
        path, prior=prior, embedding_net=embedding_net, verbose=verbose,
        timeout=timeout, synchronous=synchronous, lazy=lazy, read_only=read_only, device=device,
    )


def create_study(
    path: str | os.PathLike[str],
    prior: Prior,
    fidelities: Sequence[FidelitySpec] = ("high",),
    *,
    load_if_exists: bool = False,
    timeout: float = 60.0,
    synchronous: Synchronous = "full",
    **posterior_options: Any,
) -> Study:
    """Create a study file for a new posterior; ``posterior_options`` are
    those of :class:`MultiFidelityPosterior` (``seed``, ``flow``,
    ``training``...). See :meth:`Study.create`.

    ``path`` is a file path or an SQLite URL (``sqlite:///study.db``).
    With ``load_if_exists=True`` an existing study at ``path`` is opened
    instead (so the same script can start and resume a study, on one machine
    or many at once), provided it was created with the same prior,
    fidelities and options; else :class:`InvalidInputError` names what
    differs. Without it an existing file raises :class:`FileExistsError`.
    Either way a file left by an interrupted creation
    (:class:`~mfask.errors.IncompleteStudyError`) is replaced.
    """
    posterior = _posterior_class()(prior, fidelities, **posterior_options)
    if not load_if_exists:
        return Study.create(path, posterior, timeout=timeout, synchronous=synchronous)
    try:
        return _open_same_study(path, prior, posterior, posterior_options, timeout, synchronous)
    except (FileNotFoundError, IncompleteStudyError):
        pass  # no study yet, or an interrupted creation: create it
    try:
        return Study.create(path, posterior, timeout=timeout, synchronous=synchronous)
    except FileExistsError:  # another process created it first: open theirs
        return _open_same_study(path, prior, posterior, posterior_options, timeout, synchronous)


def _open_same_study(
    path: str | os.PathLike[str],
    prior: Prior,
    posterior: MultiFidelityPosterior,
    posterior_options: dict[str, Any],
    timeout: float,
    synchronous: Synchronous,
) -> Study:
    """Open the study at ``path``, which must have the configuration of
    ``posterior`` (built from ``prior`` and ``posterior_options``), else
    :class:`InvalidInputError` names what differs."""
    requested = posterior.configuration()
    study = Study.open(  # the file's own prior where it is data, so that a different one shows
        path, prior=prior if requested["prior"] is None else None,
        embedding_net=posterior_options.get("embedding_net"),
        verbose=posterior.verbose, timeout=timeout, synchronous=synchronous, device=posterior.device,
    )
    try:
        _check_same_configuration(study, requested)
    except BaseException:
        study.close()
        raise
    return study


def _check_same_configuration(study: Study, requested: dict[str, Any]) -> None:
    """Raise :class:`InvalidInputError` if ``study`` was built otherwise than ``requested``."""
    stored = study.posterior.configuration()
    differing = sorted(key for key in requested if requested[key] != stored.get(key))
    if differing:
        details = "; ".join(f"{key}: file {stored.get(key)!r}, requested {requested[key]!r}" for key in differing)
        raise InvalidInputError(
            f"{study.path} already holds a study with other settings ({details}). Open it with "
            "open_study() to continue it as it is, or create the new study at another path"
        )


# ================================================================== helpers
def _posterior_class() -> type[MultiFidelityPosterior]:
    """:class:`MultiFidelityPosterior`, imported when first needed (it imports
    torch, which a lazy study's bookkeeping does without)."""
    from mfask.posterior import MultiFidelityPosterior

    return MultiFidelityPosterior


def _level_summaries(
    levels: list[Any], fidelity_names: Sequence[str]
) -> tuple[dict[str, bool], dict[str, dict[str, object] | None]]:
    """Per fidelity, whether it was ever trained and the transfer guard's
    latest decision (:meth:`TransferChoice.to_dict`), from a checkpoint's
    description of the levels (:meth:`StudyStore.checkpoint_levels`)."""
    if len(levels) > len(fidelity_names):
        raise StateFormatError(f"the checkpoint has {len(levels)} levels for {len(fidelity_names)} fidelities")
    trained: dict[str, bool] = {}
    transfer: dict[str, dict[str, object] | None] = {}
    for index, name in enumerate(fidelity_names):
        level = levels[index] if index < len(levels) else {}
        histories = level.get("histories", []) if isinstance(level, dict) else None
        if not isinstance(histories, list):
            raise StateFormatError(f"the checkpoint's description of level {name!r} is malformed")
        choice = level.get("choice")
        trained[name] = len(histories) > 0
        transfer[name] = None if choice is None else TransferChoice.from_dict(choice).to_dict()
    return trained, transfer


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _array_key(array: np.ndarray) -> tuple[str, tuple[int, ...], bytes]:
    array = np.ascontiguousarray(array)
    return array.dtype.str, tuple(array.shape), array.tobytes()


def _ticket_ids(tickets: Any) -> np.ndarray:
    if isinstance(tickets, AskBatch):
        return np.asarray(tickets.ticket_ids, dtype=np.int64)
    ids = as_ticket_ids(tickets)
    if ids is None:
        raise InvalidInputError(
            f"tickets must be an AskBatch or integer ticket ids; got {type(tickets).__name__}"
        )
    return ids


def _check_cost(cost: Any) -> None:
    if cost is None:
        return
    values = np.atleast_1d(np.asarray(cost, dtype=object))
    for value in values:
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not math.isfinite(float(value)) or float(value) < 0:
            raise InvalidInputError(f"cost must be finite, non-negative seconds; got {value!r}")


def _check_metadata(metadata: Any) -> None:
    if metadata is None:
        return
    items = [metadata] if isinstance(metadata, dict) else list(metadata)
    for item in items:
        if item is not None and not isinstance(item, dict):
            raise InvalidInputError(f"metadata must be a dict (or one per row); got {type(item).__name__}")
        try:
            json.dumps(item)
        except (TypeError, ValueError) as error:
            raise InvalidInputError(f"metadata must be JSON-serialisable: {error}") from None


def _per_row(value: Any, rows: np.ndarray, count: int, name: str) -> list[Any] | None:
    """One value per recorded row from a scalar/dict or a per-row sequence."""
    if value is None:
        return None
    convert = float if name == "cost" else (lambda v: v)
    if isinstance(value, (dict, str)) or np.ndim(value) == 0:
        return [convert(value)] * rows.shape[0]
    values = list(value)
    if len(values) != count:
        raise InvalidInputError(f"{name} has {len(values)} entries for {count} told rows")
    return [None if values[r] is None else convert(values[r]) for r in rows]
