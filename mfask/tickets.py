"""Tickets: the record of every asked parameter and every told result.

Every row that ``ask`` hands out gets a ticket id, and so does every result told
for parameters that were never asked (an archive of prior draws). A ticket is
``pending`` until its result is told, then ``done`` (finite output) or
``failed`` (NaN/inf output); ``abandoned`` marks tickets the user gave up on.

The :class:`TicketLedger` stores tickets in growable column arrays (ticket id =
row index), keeps an index of pending parameter values per fidelity so that
``tell(theta, x, fidelity)`` can match rows by value in O(rows), and can plan a
match without changing anything, so that a rejected ``tell`` leaves no trace.

Shapes: ``theta`` is ``(n, d)`` float64; ``x`` is ``(n, *x_shape)`` float64.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from mfask.errors import (
    InvalidInputError,
    TicketAlreadyToldError,
    UnknownTicketError,
    UnmatchedParametersError,
)

__all__ = ["SOURCES", "STATUSES", "AskBatch", "TicketLedger"]

#: where a ticket's parameters came from
SOURCES = ("prior", "truncated", "acquisition", "external", "retry")
#: the life cycle of a ticket
STATUSES = ("pending", "done", "failed", "abandoned")
PENDING, DONE, FAILED, ABANDONED = range(4)


def _read_only(array: np.ndarray) -> np.ndarray:
    array = np.array(array, copy=True)
    array.flags.writeable = False
    return array


@dataclass(frozen=True)
class AskBatch:
    """An immutable batch of parameters to simulate, as returned by ``ask``.

    Attributes:
        ticket_ids: ``(n,)`` int64 ticket ids, one per row.
        theta: ``(n, d)`` float64 full parameter vectors (read-only).
        fidelity: the fidelity to simulate them at.
        source: ``(n,)`` where each row came from: ``"prior"``, ``"truncated"``
            or ``"acquisition"``.
        round: the sequential round the batch belongs to (0 when amortized).
        parameter_names: names of the ``d`` columns of ``theta``.
        used_parameters: the parameters this fidelity's simulator uses.
    """

    ticket_ids: np.ndarray
    theta: np.ndarray
    fidelity: str
    source: tuple[str, ...]
    round: int
    parameter_names: tuple[str, ...]
    used_parameters: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "ticket_ids", _read_only(self.ticket_ids))
        object.__setattr__(self, "theta", _read_only(self.theta))

    def __len__(self) -> int:
        return int(self.ticket_ids.shape[0])

    @property
    def theta_used(self) -> np.ndarray:
        """``(n, k)``: only the columns this fidelity's simulator uses."""
        columns = [self.parameter_names.index(name) for name in self.used_parameters]
        return self.theta[:, columns]

    def as_dicts(self) -> list[dict[str, float | int | str]]:
        """One dict per row: ticket id, fidelity, source and named parameters."""
        rows = []
        for i in range(len(self)):
            row: dict[str, float | int | str] = {
                "ticket": int(self.ticket_ids[i]),
                "fidelity": self.fidelity,
                "source": self.source[i],
            }
            row.update(zip(self.parameter_names, map(float, self.theta[i])))
            rows.append(row)
        return rows

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        """Iterate over ``(ticket_id, theta_row)`` pairs."""
        return iter(zip(map(int, self.ticket_ids), self.theta))


class TicketLedger:
    """Column store of all tickets, with a value index of the pending ones.

    Arguments:
        theta_dim: ``d``.
        used_columns: per fidelity index, the parameter columns its simulator
            uses; value matching compares only those.
    """

    _COLUMNS = ("fidelity", "source", "round", "status", "asked_at", "told_at")

    def __init__(self, theta_dim: int, used_columns: list[list[int]]) -> None:
        self.theta_dim = theta_dim
        self.used_columns = [list(c) for c in used_columns]
        self.size = 0
        capacity = 64
        self.theta = np.zeros((capacity, theta_dim))
        self.fidelity = np.zeros(capacity, dtype=np.int16)
        self.source = np.zeros(capacity, dtype=np.int8)
        self.round = np.zeros(capacity, dtype=np.int32)
        self.status = np.zeros(capacity, dtype=np.int8)
        self.asked_at = np.zeros(capacity)
        self.told_at = np.full(capacity, np.nan)
        self.x: np.ndarray | None = None  # allocated at the first told result
        self._pending_by_value: list[dict[bytes, list[int]]] = [{} for _ in used_columns]
        # tickets opened or changed since the last take_changes() (for stores)
        self._changed = np.zeros(capacity, dtype=bool)

    # ------------------------------------------------------------------ growth
    def _reserve(self, extra: int) -> None:
        needed = self.size + extra
        capacity = self.theta.shape[0]
        if needed <= capacity:
            return
        while capacity < needed:
            capacity *= 2
        self.theta = _grow(self.theta, capacity, 0.0)
        for name in self._COLUMNS:
            fill = np.nan if name == "told_at" else 0
            setattr(self, name, _grow(getattr(self, name), capacity, fill))
        self._changed = _grow(self._changed, capacity, False)
        if self.x is not None:
            self.x = _grow(self.x, capacity, np.nan)

    def _key(self, fidelity: int, row: np.ndarray) -> bytes:
        return np.ascontiguousarray(row[self.used_columns[fidelity]]).tobytes()

    # ------------------------------------------------------------------ create
    def open(
        self, theta: np.ndarray, fidelity: int, source: np.ndarray, round_index: int
    ) -> np.ndarray:
        """Open pending tickets for rows of ``theta`` ``(n, d)``; returns ids ``(n,)``."""
        count = theta.shape[0]
        self._reserve(count)
        ids = np.arange(self.size, self.size + count, dtype=np.int64)
        self.theta[ids] = theta
        self.fidelity[ids] = fidelity
        self.source[ids] = source
        self.round[ids] = round_index
        self.status[ids] = PENDING
        self.asked_at[ids] = time.time()
        self._changed[ids] = True
        self.size += count
        index = self._pending_by_value[fidelity]
        for ticket in ids:
            index.setdefault(self._key(fidelity, self.theta[ticket]), []).append(int(ticket))
        return ids

    # ------------------------------------------------------------------- match
    def check_issued(self, ids: np.ndarray) -> None:
        """Raise :class:`UnknownTicketError` unless every id in ``ids`` ``(n,)``
        (int64) is one that was issued: ``0 <= id < size``."""
        unknown = ids[(ids < 0) | (ids >= self.size)]
        if unknown.size:
            issued = (
                f"issued ids are 0..{self.size - 1}" if self.size
                else "no tickets have been issued yet"
            )
            raise UnknownTicketError(f"unknown ticket id(s) {unknown[:5].tolist()}; {issued}")

    def check_told(self, ids: np.ndarray, skip_told: bool = False) -> np.ndarray:
        """Validate ticket ids for a tell; returns a mask of ids to record.

        Raises :class:`UnknownTicketError` for ids never issued and
        :class:`TicketAlreadyToldError` for ids already told (or given twice),
        unless ``skip_told`` (then those rows are masked out).
        """
        self.check_issued(ids)
        not_pending = self.status[ids] != PENDING
        _, first = np.unique(ids, return_index=True)
        repeated = np.ones(ids.shape[0], dtype=bool)
        repeated[first] = False
        rejected = not_pending | repeated
        if rejected.any() and not skip_told:
            bad = ids[rejected][:5].tolist()
            states = [STATUSES[s] for s in self.status[ids[rejected][:5]]]
            raise TicketAlreadyToldError(
                f"ticket(s) {bad} are not pending (status {states}, or repeated in "
                "this call); pass skip_told=True to ignore them"
            )
        return ~rejected

    def plan_value_match(
        self, theta: np.ndarray, fidelity: int, scale: np.ndarray, tolerance: float
    ) -> np.ndarray:
        """Match rows to pending tickets of ``fidelity`` by parameter value.

        A row's value is the pending value it equals exactly, else the one
        pending value within tolerance. Rows of the same value then take that
        value's pending tickets in row order (oldest ticket first), one ticket
        per row: a value given more often than it has pending tickets leaves
        the later rows unmatched (the caller applies its policy for unasked
        rows to them), whether rows were matched exactly or within tolerance.

        Arguments:
            theta: ``(n, k)`` values of the fidelity's used columns.
            scale: ``(k,)`` typical scale per used column.
            tolerance: rows match when every column differs by at most
                ``tolerance * (scale + |value|)``.

        Returns:
            ids ``(n,)``; ``-1`` for rows that match no pending ticket or whose
            value's pending tickets earlier rows already took.

        Raises :class:`UnmatchedParametersError` for a row within tolerance of
        two or more pending tickets with different values. Changes nothing.
        """
        index = self._pending_by_value[fidelity]
        keys: list[bytes | None] = []
        for row in range(theta.shape[0]):
            key = np.ascontiguousarray(theta[row]).tobytes()
            keys.append(key if key in index else None)
        missing = np.array([row for row, key in enumerate(keys) if key is None], dtype=np.int64)
        if missing.size and index:
            near = self._keys_within_tolerance(theta, missing, fidelity, scale, tolerance)
            for row, key in zip(missing, near):
                keys[row] = key
        ids = np.full(theta.shape[0], -1, dtype=np.int64)
        taken: dict[bytes, int] = {}
        for row, key in enumerate(keys):
            if key is None:
                continue
            count = taken.get(key, 0)
            if count < len(index[key]):
                ids[row] = index[key][count]
                taken[key] = count + 1
        return ids

    def _keys_within_tolerance(
        self,
        theta: np.ndarray,
        rows: np.ndarray,
        fidelity: int,
        scale: np.ndarray,
        tolerance: float,
    ) -> list[bytes | None]:
        """The pending value key within tolerance of each of ``theta[rows]``
        (``None`` if none is); raises as :meth:`plan_value_match`."""
        from scipy.spatial import cKDTree  # slow to import; only matching within tolerance needs it

        index = self._pending_by_value[fidelity]
        keys = list(index)
        values = np.stack([np.frombuffer(k, dtype=np.float64) for k in keys])
        tree = cKDTree(values / scale)
        scaled = theta[rows] / scale
        radius = tolerance * (1.0 + np.abs(scaled).max(axis=1))
        found: list[bytes | None] = []
        for row, point, r in zip(rows, scaled, radius):
            candidates = tree.query_ball_point(point, r, p=np.inf)
            close = [
                c for c in candidates
                if np.all(np.abs(values[c] - theta[row]) <= tolerance * (scale + np.abs(theta[row])))
            ]
            if len(close) > 1:
                raise UnmatchedParametersError(
                    f"row {int(row)} of theta ({theta[row].tolist()}) is within the "
                    f"matching tolerance of {len(close)} different pending tickets; "
                    "tell by ticket id (tell(batch, x) or tell(ticket_ids, x)) instead"
                )
            found.append(keys[close[0]] if close else None)
        return found

    def nearest_pending(
        self, theta: np.ndarray, fidelity: int, scale: np.ndarray
    ) -> tuple[int, np.ndarray, float] | None:
        """The pending ticket of ``fidelity`` nearest to one row of values.

        Arguments:
            theta: ``(k,)`` values of the fidelity's used columns.
            scale: ``(k,)`` typical scale per used column.

        Returns ``(ticket id, its (k,) values, ratio)`` where ``ratio`` is the
        tolerance the row would need to match it (the largest column
        difference over ``scale + |value|``), or ``None`` with no pending ticket.
        """
        index = self._pending_by_value[fidelity]
        if not index:
            return None
        keys = list(index)
        values = np.stack([np.frombuffer(k, dtype=np.float64) for k in keys])
        ratios = (np.abs(values - theta) / (scale + np.abs(theta))).max(axis=1)
        best = int(np.argmin(ratios))
        return int(index[keys[best]][0]), values[best].copy(), float(ratios[best])

    # ------------------------------------------------------------------ record
    def record(self, ids: np.ndarray, x: np.ndarray, failed: np.ndarray) -> None:
        """Store results ``x`` ``(n, *x_shape)`` for pending tickets ``ids``."""
        if self.x is None:
            self.x = np.full((self.theta.shape[0], *x.shape[1:]), np.nan)
        self.x[ids] = x
        self.status[ids] = np.where(failed, FAILED, DONE)
        self.told_at[ids] = time.time()
        self._changed[ids] = True
        self._forget_pending(ids)

    def abandon(self, ids: np.ndarray) -> None:
        """Mark pending tickets as abandoned (no result will come)."""
        self.close(ids, ABANDONED)

    def close(self, ids: np.ndarray, status: int) -> None:
        """Close pending tickets without an output: ``FAILED`` (the simulation
        failed, e.g. the simulator raised) or ``ABANDONED``.

        Raises :class:`UnknownTicketError` / :class:`TicketAlreadyToldError`
        (see :meth:`check_told`) and changes nothing then.
        """
        if status not in (FAILED, ABANDONED):
            raise InvalidInputError(f"close() takes FAILED or ABANDONED; got {status!r}")
        self.check_told(ids)
        self.status[ids] = status
        self.told_at[ids] = time.time()
        self._changed[ids] = True
        self._forget_pending(ids)

    def _forget_pending(self, ids: np.ndarray) -> None:
        for ticket in ids:
            fidelity = int(self.fidelity[ticket])
            key = self._key(fidelity, self.theta[ticket])
            queue = self._pending_by_value[fidelity].get(key)
            if queue is not None and int(ticket) in queue:
                queue.remove(int(ticket))
                if not queue:
                    del self._pending_by_value[fidelity][key]

    # ------------------------------------------------------------------- query
    def ids_where(self, fidelity: int | None = None, status: int | None = None) -> np.ndarray:
        """Ticket ids ``(k,)`` with the given fidelity and/or status."""
        mask = np.ones(self.size, dtype=bool)
        if fidelity is not None:
            mask &= self.fidelity[: self.size] == fidelity
        if status is not None:
            mask &= self.status[: self.size] == status
        return np.flatnonzero(mask)

    def count(self, fidelity: int, status: int) -> int:
        """Number of tickets of ``fidelity`` in ``status``."""
        return int(self.ids_where(fidelity, status).shape[0])

    def successful(self, fidelities: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """``theta (k, d)`` and ``x (k, *x_shape)`` of done tickets at these fidelities."""
        mask = np.isin(self.fidelity[: self.size], fidelities) & (
            self.status[: self.size] == DONE
        )
        ids = np.flatnonzero(mask)
        if self.x is None:
            return self.theta[ids], np.zeros((0,))
        return self.theta[ids], self.x[ids]

    # ------------------------------------------------------ incremental sync
    def take_changes(self) -> np.ndarray:
        """Ids of the tickets opened or changed since the previous call, sorted;
        clears the record (a store calls this to persist only what changed)."""
        ids = np.flatnonzero(self._changed[: self.size])
        self._changed[ids] = False
        return ids

    def rows(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """The columns of tickets ``ids``, as :meth:`to_arrays` (``x`` only
        once some result has been told)."""
        arrays = {"theta": self.theta[ids].copy()}
        for name in self._COLUMNS:
            arrays[name] = getattr(self, name)[ids].copy()
        if self.x is not None:
            arrays["x"] = self.x[ids].copy()
        return arrays

    def apply_rows(self, ids: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
        """Overwrite or append tickets with columns from another copy of the
        ledger (:meth:`rows` format; rows without an output hold NaN in ``x``).

        ``ids`` are sorted existing ids and/or the next ids after the last
        one. Applying the same rows twice is harmless. Changes made here are
        not reported by :meth:`take_changes`.
        """
        ids = np.asarray(ids, dtype=np.int64)
        count = ids.shape[0]
        if count and (np.any(np.diff(ids) <= 0) or ids[0] < 0):
            raise InvalidInputError("apply_rows needs sorted, distinct, non-negative ids")
        new = ids[ids >= self.size]
        if new.size and not np.array_equal(new, np.arange(self.size, self.size + new.size)):
            raise InvalidInputError(
                f"apply_rows would leave a gap: the ledger has {self.size} tickets and got "
                f"new ids {new[:5].tolist()}..."
            )
        if arrays["theta"].shape != (count, self.theta_dim):
            raise InvalidInputError(
                f"ticket parameters have shape {arrays['theta'].shape}; expected ({count}, {self.theta_dim})"
            )
        self._reserve(new.size)
        old = ids[ids < self.size]
        self._forget_pending(old[self.status[old] == PENDING])
        self.theta[ids] = arrays["theta"]
        for name in self._COLUMNS:
            getattr(self, name)[ids] = arrays[name]
        if "x" in arrays:
            if self.x is None:
                self.x = np.full((self.theta.shape[0], *arrays["x"].shape[1:]), np.nan)
            self.x[ids] = arrays["x"]
        self.size += new.size
        for ticket in ids[self.status[ids] == PENDING]:
            fidelity = int(self.fidelity[ticket])
            self._pending_by_value[fidelity].setdefault(
                self._key(fidelity, self.theta[ticket]), []
            ).append(int(ticket))

    # ----------------------------------------------------------- persistence
    def to_arrays(self) -> dict[str, np.ndarray]:
        """All columns, trimmed to the issued tickets."""
        arrays = {"theta": self.theta[: self.size].copy()}
        for name in self._COLUMNS:
            arrays[name] = getattr(self, name)[: self.size].copy()
        if self.x is not None:
            arrays["x"] = self.x[: self.size].copy()
        return arrays

    @classmethod
    def from_arrays(
        cls, theta_dim: int, used_columns: list[list[int]], arrays: dict[str, np.ndarray]
    ) -> "TicketLedger":
        """Rebuild a ledger (and its pending index) from :meth:`to_arrays` output."""
        ledger = cls(theta_dim, used_columns)
        size = int(arrays["theta"].shape[0])
        if arrays["theta"].ndim != 2 or arrays["theta"].shape[1] != theta_dim:
            raise InvalidInputError(
                f"ticket parameters have shape {arrays['theta'].shape}; expected (n, {theta_dim})"
            )
        ledger._reserve(size)
        ledger.theta[:size] = arrays["theta"]
        for name in cls._COLUMNS:
            column = np.asarray(arrays[name])
            if column.shape != (size,):
                raise InvalidInputError(f"ticket column {name!r} has shape {column.shape}")
            getattr(ledger, name)[:size] = column
        if "x" in arrays:
            x = np.asarray(arrays["x"], dtype=np.float64)
            ledger.x = np.full((ledger.theta.shape[0], *x.shape[1:]), np.nan)
            ledger.x[:size] = x
        ledger.size = size
        if ledger.fidelity[:size].size and (
            ledger.fidelity[:size].max() >= len(used_columns) or ledger.fidelity[:size].min() < 0
        ):
            raise InvalidInputError("a ticket refers to an unknown fidelity")
        for ticket in np.flatnonzero(ledger.status[:size] == PENDING):
            fidelity = int(ledger.fidelity[ticket])
            key = ledger._key(fidelity, ledger.theta[ticket])
            ledger._pending_by_value[fidelity].setdefault(key, []).append(int(ticket))
        return ledger


def _grow(array: np.ndarray, capacity: int, fill: float) -> np.ndarray:
    grown = np.full((capacity, *array.shape[1:]), fill, dtype=array.dtype)
    grown[: array.shape[0]] = array
    return grown
