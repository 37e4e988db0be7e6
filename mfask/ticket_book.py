"""Tickets and results without a model: :class:`TicketBook`.

The part of the ask/tell object that needs neither torch nor the prior's
distributions: the fidelities and the parameters each uses, the ticket ledger
(:mod:`mfask.tickets`), the shape of one simulator output, the sequential
round tickets are opened in, and everything done by ticket id: ``tell`` by
ticket, ``fail``, ``abandon``, ``retry``, simulator seeds and counts.

:class:`~mfask.posterior.MultiFidelityPosterior` extends it with the prior
(asks, matching told rows by value), the random streams and the trained
models. A durable study opened for its records only
(``open_study(path, lazy=True)``, as the ``mfask`` command does) holds a
``TicketBook``, so that ``mfask tell``, ``status`` and ``export`` start
without importing torch.

Shapes: ``theta`` is ``(n, d)``; ``x`` is ``(n, *x_shape)``; float64.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from mfask.errors import InvalidInputError, StateFormatError, UnknownFidelityError
from mfask.fidelity import Fidelity, FidelitySpec, resolve_fidelities
from mfask.state_schema import check_records
from mfask.tickets import (
    ABANDONED,
    DONE,
    FAILED,
    PENDING,
    SOURCES,
    STATUSES,
    AskBatch,
    TicketLedger,
)
from mfask.user_input import as_numeric_array, as_ticket_ids

__all__ = ["TicketBook", "TellResult", "SimulationFailedWarning"]


class SimulationFailedWarning(UserWarning):
    """Some told simulator outputs were NaN or inf and were recorded as failed."""


@dataclass(frozen=True)
class TellResult:
    """What a ``tell`` recorded.

    Attributes:
        ticket_ids: ``(n,)`` the ticket of each told row, in row order
            (``-1`` for rows skipped with ``skip_told=True``).
        num_done: rows recorded as successful simulations.
        num_failed: rows recorded as failed (NaN/inf output).
        num_external: rows that were not asked and were added as prior draws.
    """

    ticket_ids: np.ndarray
    num_done: int
    num_failed: int
    num_external: int = 0


class TicketBook:
    """The tickets and results of ``d`` named parameters at several fidelities.

    Arguments:
        parameter_names: the names of the ``d`` parameters, in column order.
        fidelities: fidelity names (or :class:`~mfask.fidelity.Fidelity`
            objects naming the parameters a level uses), ordered low to high.
        seed: the master seed the simulator seeds derive from. ``None`` draws
            one from the OS and records it (see :attr:`seed`).
    """

    def __init__(
        self,
        parameter_names: Sequence[str],
        fidelities: Sequence[FidelitySpec] = ("high",),
        *,
        seed: int | None = None,
    ) -> None:
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1, dtype=np.uint64)[0] >> 2)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise InvalidInputError(f"seed must be a non-negative integer or None; got {seed!r}")
        self.parameter_names = tuple(parameter_names)
        self.fidelities, self._used_columns = resolve_fidelities(fidelities, self.parameter_names)
        self.seed = int(seed)
        self._ledger = TicketLedger(len(self.parameter_names), self._used_columns)
        self._x_shape: tuple[int, ...] | None = None
        self.round = 0  # the sequential round new tickets belong to (see mfask.sequential)

    # ================================================================ basics
    @property
    def fidelity_names(self) -> tuple[str, ...]:
        """Fidelity names, low to high."""
        return tuple(f.name for f in self.fidelities)

    @property
    def x_shape(self) -> tuple[int, ...] | None:
        """Shape of one simulator output, known after the first ``tell``."""
        return self._x_shape

    def _stream_seed(self, *keys: int) -> int:
        """A seed derived from the master seed and ``keys`` (independent streams)."""
        sequence = np.random.SeedSequence([self.seed, *keys])
        return int(sequence.generate_state(1, dtype=np.uint64)[0] >> 2)

    def _fidelity_index(self, fidelity: Any) -> int:
        if isinstance(fidelity, Fidelity):
            fidelity = fidelity.name
        if not isinstance(fidelity, str) or fidelity not in self.fidelity_names:
            raise UnknownFidelityError(
                f"unknown fidelity {fidelity!r}; this posterior has {list(self.fidelity_names)}"
            )
        return self.fidelity_names.index(fidelity)

    def num_simulations(self, fidelity: str | None = None, status: str = "done") -> int:
        """Number of told results (``status`` "done" or "failed") or open tickets
        ("pending"), at one fidelity or at all."""
        if status not in STATUSES:
            raise InvalidInputError(f"status must be one of {STATUSES}; got {status!r}")
        code = STATUSES.index(status)
        if fidelity is None:
            return int(self._ledger.ids_where(status=code).shape[0])
        return self._ledger.count(self._fidelity_index(fidelity), code)

    def data(self, fidelity: str) -> tuple[np.ndarray, np.ndarray]:
        """The successful simulations of a fidelity: ``theta (k, d)``, ``x (k, *x_shape)``."""
        theta, x = self._ledger.successful([self._fidelity_index(fidelity)])
        return theta.copy(), x.copy()

    def pending(self, fidelity: str | None = None) -> np.ndarray:
        """Ids of the tickets still waiting for a result."""
        index = None if fidelity is None else self._fidelity_index(fidelity)
        return self._ledger.ids_where(index, PENDING)

    def simulator_seeds(self, tickets: Any) -> np.ndarray:
        """A reproducible simulator seed ``(n,)`` (int64, non-negative) per
        ticket (an :class:`AskBatch` or ticket ids), derived from :attr:`seed`
        and the ticket id: re-running a ticket with its seed reproduces it."""
        ids, _, _ = self._resolve_rows(tickets, None, "raise")
        return np.array([self._stream_seed(101, int(t)) for t in ids], dtype=np.int64)

    def fail(self, tickets: Any) -> np.ndarray:
        """Record that the simulations of pending tickets failed without an
        output (e.g. the simulator raised); they are left out of training.
        Returns the ticket ids. (NaN/inf outputs passed to :meth:`tell` are
        recorded as failed too.)

        Raises :class:`UnknownTicketError` / :class:`TicketAlreadyToldError`,
        leaving the object unchanged.
        """
        ids, _, _ = self._resolve_rows(tickets, None, "raise")
        self._ledger.close(ids, FAILED)
        return ids

    def abandon(self, tickets: Any) -> np.ndarray:
        """Give up on pending tickets: no result will be told for them.
        Returns the ticket ids. Raises as :meth:`fail`."""
        ids, _, _ = self._resolve_rows(tickets, None, "raise")
        self._ledger.close(ids, ABANDONED)
        return ids

    def retry(self, tickets: Any) -> AskBatch:
        """Ask the same parameters again under new tickets (source ``"retry"``).

        ``tickets`` (an :class:`AskBatch` or ids, all of one fidelity) must be
        failed, abandoned or pending; pending ones are abandoned first.

        Raises :class:`InvalidInputError` for done tickets or mixed
        fidelities, :class:`UnknownTicketError` for unknown ids; the object is
        then unchanged.
        """
        ids, _, _ = self._resolve_rows(tickets, None, "raise")
        if ids.size == 0:
            raise InvalidInputError("retry needs at least one ticket")
        self._ledger.check_told(ids, skip_told=True)  # raises for unknown ids
        if np.unique(ids).size != ids.size:
            raise InvalidInputError(f"retry got a ticket id twice: {ids.tolist()[:10]}")
        status = self._ledger.status[ids]
        if np.any(status == DONE):
            raise InvalidInputError(
                f"ticket(s) {ids[status == DONE][:5].tolist()} are done; only failed, "
                "abandoned or pending tickets can be retried"
            )
        fidelities = np.unique(self._ledger.fidelity[ids])
        if fidelities.size != 1:
            raise InvalidInputError(
                "retry takes tickets of one fidelity at a time; got "
                f"{[self.fidelity_names[f] for f in fidelities]}"
            )
        theta = self._ledger.theta[ids].copy()
        if np.any(status == PENDING):
            self._ledger.close(ids[status == PENDING], ABANDONED)
        source = np.full(ids.size, SOURCES.index("retry"), dtype=np.int8)
        return self._open_batch(int(fidelities[0]), theta, source)

    def __repr__(self) -> str:
        counts = ", ".join(
            f"{f.name}: {self.num_simulations(f.name)} done/{self.num_simulations(f.name, 'pending')} pending"
            for f in self.fidelities
        )
        return f"{type(self).__name__}(d={len(self.parameter_names)}, {counts}, round={self.round})"

    def _open_batch(self, fidelity: int, theta: np.ndarray, source: np.ndarray) -> AskBatch:
        ids = self._ledger.open(theta, fidelity, source, self.round)
        spec = self.fidelities[fidelity]
        return AskBatch(
            ticket_ids=ids,
            theta=theta,
            fidelity=spec.name,
            source=tuple(SOURCES[s] for s in source),
            round=self.round,
            parameter_names=self.parameter_names,
            used_parameters=spec.parameters or self.parameter_names,
        )

    # ================================================================== tell
    def tell(
        self,
        theta_or_tickets: Any,
        x: Any,
        fidelity: str | None = None,
        *,
        unasked: Literal["raise", "prior"] = "raise",
        skip_told: bool = False,
    ) -> TellResult:
        """Record simulator outputs.

        Three forms:

        * ``tell(theta, x, fidelity)``: rows of ``theta`` are matched to pending
          tickets of ``fidelity`` by value (exactly, or within
          ``match_tolerance`` for values that went through text). ``theta`` may
          hold all ``d`` parameters or only those the fidelity uses. Rows
          with the same value take distinct pending tickets of that value, in
          row order; repeats beyond the number of such pending tickets are
          unasked rows (see ``unasked``). This form needs the prior: a plain
          ``TicketBook`` refuses it, a ``MultiFidelityPosterior`` accepts it.
        * ``tell(batch, x)``: by the tickets of an :class:`AskBatch`.
        * ``tell(ticket_ids, x)``: by integer ticket ids.

        Arguments:
            x: ``(n, *x_shape)`` outputs, row ``i`` for row/ticket ``i``
                (numpy, torch or nested lists). Rows with NaN/inf are recorded
                as failed simulations (warned about, left out of training).
            unasked: with ``"prior"``, rows of ``theta`` that match no pending
                ticket (including repeats of a value beyond its pending
                tickets) are recorded as extra prior draws under new tickets
                of source ``"external"`` (e.g. an archive of earlier
                simulations); with ``"raise"`` they are an error.
            skip_told: ignore rows whose ticket already has a result instead
                of raising.

        Raises (leaving the object unchanged): :class:`InvalidInputError`,
        :class:`UnknownFidelityError`, :class:`UnknownTicketError`,
        :class:`TicketAlreadyToldError`, :class:`UnmatchedParametersError`,
        :class:`OutsidePriorError`.
        """
        if unasked not in ("raise", "prior"):
            raise InvalidInputError(f"unasked must be 'raise' or 'prior'; got {unasked!r}")
        ids, external_theta, external_fidelity = self._resolve_rows(
            theta_or_tickets, fidelity, unasked
        )
        count = ids.shape[0]
        x_array = self._check_x(x, count)
        keep = self._ledger.check_told(ids[ids >= 0], skip_told) if count else np.zeros(0, bool)
        record_mask = np.zeros(count, dtype=bool)
        record_mask[np.flatnonzero(ids >= 0)[keep]] = True
        record_mask |= ids < 0
        failed = ~np.isfinite(x_array.reshape(count, -1)).all(axis=1)

        # ---- every check has passed: change state from here on
        if self._x_shape is None:
            self._x_shape = tuple(x_array.shape[1:])
        if external_theta is not None and external_theta.shape[0]:
            source = np.full(external_theta.shape[0], SOURCES.index("external"), dtype=np.int8)
            ids = ids.copy()
            ids[ids < 0] = self._ledger.open(external_theta, external_fidelity, source, self.round)
        self._ledger.record(ids[record_mask], x_array[record_mask], failed[record_mask])
        num_failed = int(failed[record_mask].sum())
        if num_failed:
            fidelities = sorted({self.fidelity_names[f] for f in self._ledger.fidelity[ids[record_mask & failed]]})
            total = sum(self.num_simulations(name, "failed") for name in fidelities)
            warnings.warn(
                f"{num_failed} of {count} told simulation(s) returned NaN or inf and were "
                f"recorded as failed ({total} failed so far at {', '.join(fidelities)}); "
                "they are left out of training",
                SimulationFailedWarning,
                stacklevel=2,
            )
        told_ids = np.where(record_mask, ids, -1)
        return TellResult(
            ticket_ids=told_ids,
            num_done=int(record_mask.sum()) - num_failed,
            num_failed=num_failed,
            num_external=0 if external_theta is None else int(external_theta.shape[0]),
        )

    def _resolve_rows(
        self, theta_or_tickets: Any, fidelity: str | None, unasked: str
    ) -> tuple[np.ndarray, np.ndarray | None, int]:
        """Ticket ids ``(n,)`` for the told rows (``-1`` for external rows), the
        full parameters of the external rows and their fidelity index.

        Ids given by the user (an :class:`AskBatch` or integers) must all have
        been issued (:class:`UnknownTicketError` otherwise), so that ``-1``
        only ever marks an external row matched by value.
        """
        if isinstance(theta_or_tickets, AskBatch):
            batch = theta_or_tickets
            if fidelity is not None and fidelity != batch.fidelity:
                raise InvalidInputError(
                    f"the batch was asked at fidelity {batch.fidelity!r}, not {fidelity!r}"
                )
            ids = as_ticket_ids(batch.ticket_ids)
            if ids is None:
                raise InvalidInputError("the batch's ticket ids are not integers")
            # checked here, before anything filters on the ``-1`` of external rows
            self._ledger.check_issued(ids)
            return ids, None, 0
        if fidelity is None:
            ids = as_ticket_ids(theta_or_tickets)
            if ids is None and len(self.fidelities) > 1:
                raise InvalidInputError(
                    "tell(theta, x) needs the fidelity: tell(theta, x, fidelity); to tell by "
                    "ticket pass an AskBatch or integer ticket ids"
                )
            if ids is not None:
                self._ledger.check_issued(ids)
                return ids, None, 0
            fidelity = self.fidelity_names[0]  # the only one
        return self._match_by_value(theta_or_tickets, fidelity, unasked)

    def _match_by_value(
        self, theta: Any, fidelity: str, unasked: str
    ) -> tuple[np.ndarray, np.ndarray | None, int]:
        """Rows told by parameter value (see :meth:`tell`): compared on the
        prior's scales, which a plain ticket book does not have."""
        self._fidelity_index(fidelity)
        raise InvalidInputError(
            "this TicketBook tells by ticket only (an AskBatch or integer ticket ids); "
            "matching rows by parameter value needs the prior (MultiFidelityPosterior)"
        )

    def _check_x(self, x: Any, count: int) -> np.ndarray:
        """Convert told outputs to float64 ``(count, *x_shape)``."""
        array = as_numeric_array(x, "x")
        if array.ndim == 1:
            array = array.reshape(count, -1) if count == 1 else array.reshape(-1, 1)
        if array.ndim == 0 or array.shape[0] != count:
            raise InvalidInputError(
                f"x must have one row per told parameter set: expected shape ({count}, ...); "
                f"got {tuple(array.shape)}"
            )
        if self._x_shape is not None and tuple(array.shape[1:]) != self._x_shape:
            raise InvalidInputError(
                f"x rows must have shape {self._x_shape} (as earlier results, at every "
                f"fidelity); got {tuple(array.shape[1:])}"
            )
        return array

    # =========================================================== persistence
    def _records_header(self) -> dict[str, Any]:
        """The state header's fields that describe the records (see
        :func:`mfask.state_schema.check_records`)."""
        return {
            "parameter_names": list(self.parameter_names),
            "fidelities": [{"name": f.name, "parameters": list(f.parameters or ())} for f in self.fidelities],
            "seed": self.seed,
            "x_shape": None if self._x_shape is None else list(self._x_shape),
            "round": self.round,
        }

    def _restore_records(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        """Set the output shape, round and tickets from a checked state
        (``arrays`` holds the ``tickets/*`` columns)."""
        self._x_shape = None if meta["x_shape"] is None else tuple(int(s) for s in meta["x_shape"])
        self.round = int(meta["round"])
        tickets = {k[len("tickets/"):]: v for k, v in arrays.items() if k.startswith("tickets/")}
        self._ledger = TicketLedger.from_arrays(len(self.parameter_names), self._used_columns, tickets)

    @classmethod
    def _from_records(cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> "TicketBook":
        """A ticket book from a state's header and ``tickets/*`` arrays, after
        checking them (:func:`mfask.state_schema.check_records`); raises
        :class:`StateFormatError`."""
        check_records(meta, arrays)
        try:
            fidelities = [Fidelity(f["name"], tuple(f["parameters"])) for f in meta["fidelities"]]
            book = cls(meta["parameter_names"], fidelities, seed=int(meta["seed"]))
            book._restore_records(meta, arrays)
        except StateFormatError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise StateFormatError(f"malformed mfask state: {type(error).__name__}: {error}") from None
        return book
