"""Asks from the prior and tells by value, without models: :class:`PriorBook`.

A :class:`~mfask.ticket_book.TicketBook` with the prior and the random stream
of asks: amortized asks (prior draws, reproducible from the seed and across
save/load) and tells that match rows to pending tickets by parameter value.
That is all an amortized ask/tell loop needs;
:class:`~mfask.posterior.MultiFidelityPosterior` extends it with the trained
models and the sequential rounds. It is a layer of its own so that a study
that only asks from the prior (``mfask ask``) imports torch, which the prior's
distributions and its random stream need, but not the flows, the training or
scipy.

Shapes: ``theta`` is ``(n, d)`` float64.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from mfask.errors import (
    InvalidInputError,
    OutsidePriorError,
    StateFormatError,
    UnmatchedParametersError,
)
from mfask.fidelity import Fidelity, FidelitySpec, ask_target
from mfask.priors import Prior, prior_from_spec
from mfask.state_file import generator_from_array
from mfask.state_schema import check_records
from mfask.ticket_book import TicketBook
from mfask.tickets import PENDING, SOURCES, AskBatch
from mfask.user_input import as_theta, positive_int

__all__ = ["MAX_ASK", "PriorBook"]

#: the most rows one ``ask`` hands out (larger asks are refused before any
#: memory is allocated; ask several times for more)
MAX_ASK = 10_000_000


class PriorBook(TicketBook):
    """Tickets whose parameters are drawn from ``prior``.

    Arguments:
        prior: the prior over the ``d`` parameters (:mod:`mfask.priors`).
        fidelities, seed: as for :class:`~mfask.ticket_book.TicketBook`; the
            asks draw from a stream derived from ``seed``.
        match_tolerance: ``tell(theta, x, fidelity)`` matches a row to a pending
            ticket when every parameter differs by at most
            ``match_tolerance * (scale + |value|)``, ``scale`` being the
            prior's typical scale of that parameter.
    """

    def __init__(
        self,
        prior: Prior,
        fidelities: Sequence[FidelitySpec] = ("high",),
        *,
        seed: int | None = None,
        match_tolerance: float = 1e-5,
    ) -> None:
        if not isinstance(prior, Prior):
            raise InvalidInputError(
                f"prior must be an mfask Prior (e.g. mfask.BoxUniform); got {type(prior).__name__}"
            )
        if not (isinstance(match_tolerance, (int, float)) and 0 <= match_tolerance < 1):
            raise InvalidInputError(f"match_tolerance must be in [0, 1); got {match_tolerance!r}")
        super().__init__(prior.names, fidelities, seed=seed)
        self.prior = prior
        self.match_tolerance = float(match_tolerance)
        self._ask_generator = torch.Generator().manual_seed(self._stream_seed(0))

    # =================================================================== ask
    def ask(self, fidelity: str | int | None = None, n: int | None = None, *,
            acquisition: Any = None) -> AskBatch:
        """Open ``n`` new tickets at ``fidelity`` whose parameters are prior
        draws (source ``"prior"``). With a single fidelity the name may be
        left out (``ask(100)``).

        ``acquisition`` applies only to the sequential asks of a
        :class:`~mfask.posterior.MultiFidelityPosterior`; here it must be
        ``None`` or ``False``.

        Raises:
            UnknownFidelityError: ``fidelity`` is not one of :attr:`fidelity_names`.
            InvalidInputError: ``n`` is not a positive integer of at most
                :data:`MAX_ASK`, or ``acquisition`` is given.

        Whatever it raises, a failed ask leaves the object as it was: no
        ticket is opened and the random stream of asks has not moved.
        """
        fidelity, n = ask_target(self.fidelity_names, fidelity, n)
        index = self._fidelity_index(fidelity)
        n = positive_int(n, "n", maximum=MAX_ASK)
        if acquisition is not None and acquisition is not False:
            raise InvalidInputError(
                "acquisition applies to asks at the highest fidelity "
                f"({self.fidelity_names[-1]!r}) after set_observation(x_o)"
            )
        # an ask that fails part-way (out of memory, an interrupt) must not
        # move the stream: the next ask then draws what this one would have
        generator_state = self._ask_generator.get_state()
        try:
            theta = self.prior.sample(n, self._ask_generator).numpy()
            return self._open_batch(index, theta, np.full(n, SOURCES.index("prior"), dtype=np.int8))
        except BaseException:
            self._ask_generator.set_state(generator_state)
            raise

    # ================================================================== tell
    def _match_by_value(
        self, theta_or_tickets: Any, fidelity: str, unasked: str
    ) -> tuple[np.ndarray, np.ndarray | None, int]:
        """Ticket ids for rows told by parameter value (``-1``: an external
        row), the full parameters of the external rows and their fidelity
        index; see :meth:`TicketBook.tell`. Changes nothing."""
        index = self._fidelity_index(fidelity)
        used = self._used_columns[index]
        raw = theta_or_tickets
        width = np.asarray(raw).shape[-1] if np.ndim(raw) >= 1 else 1
        dim = self.prior.dim if width == self.prior.dim or len(used) == self.prior.dim else len(used)
        theta = as_theta(raw, dim, "theta").numpy()
        theta_used = theta[:, used] if dim == self.prior.dim else theta
        scale = self.prior.scale.numpy()[used]
        ids = self._ledger.plan_value_match(theta_used, index, scale, self.match_tolerance)
        unmatched = np.flatnonzero(ids < 0)
        if unmatched.size == 0:
            return ids, None, index
        if unasked != "prior":
            pending = self._ledger.count(index, PENDING)
            first = int(unmatched[0])
            raise UnmatchedParametersError(
                f"{unmatched.size} of {ids.shape[0]} row(s) of theta match no pending ticket "
                f"at fidelity {fidelity!r} ({pending} pending), e.g. row {first}: "
                f"{theta[first].tolist()}. "
                + self._unmatched_hint(theta_used[first], index, scale, ids)
            )
        external = np.empty((unmatched.size, self.prior.dim))
        if dim == self.prior.dim:
            external[:] = theta[unmatched]
        else:
            # dummies for the parameters this fidelity does not use: prior draws
            # from a stream of their own, so a rejected tell changes no state
            dummies = torch.Generator().manual_seed(self._stream_seed(4, self._ledger.size))
            external[:] = self.prior.sample(unmatched.size, dummies).numpy()
            external[:, used] = theta[unmatched]
        outside = ~self.prior.in_support(torch.from_numpy(external)).numpy()
        if outside.any():
            row = int(unmatched[np.flatnonzero(outside)[0]])
            raise OutsidePriorError(
                f"{int(outside.sum())} unasked row(s) lie outside the prior's support, e.g. "
                f"row {row}: {theta[row].tolist()} (bounds {self.prior.bounds[0].tolist()} to "
                f"{self.prior.bounds[1].tolist()})"
            )
        return ids, external, index

    def _unmatched_hint(self, row: np.ndarray, level: int, scale: np.ndarray, matched: np.ndarray) -> str:
        """What to do about a told row ``(k,)`` (used columns) that matches no
        pending ticket, given the tickets ``matched`` ``(n,)`` to the call's rows."""
        nearest = self._ledger.nearest_pending(row, level, scale)
        unasked = ("Pass unasked='prior' only if the rows are prior draws that were never asked "
                   "(they are then added as new tickets and the asked ones stay pending).")
        if nearest is None:
            return "No ticket is pending there. " + unasked
        ticket, values, ratio = nearest
        if ratio <= self.match_tolerance and ticket in matched:
            taken_by = int(np.flatnonzero(matched == ticket)[0])
            return (f"It repeats the value of row {taken_by}, which took its pending ticket {ticket}: "
                    "a row repeated in one call takes one pending ticket of its value per repeat "
                    "(the repeats beyond those count as unasked). " + unasked)
        where = (f"The nearest pending ticket is {ticket}: {values.tolist()} (it would need "
                 f"match_tolerance >= {ratio:.2g}; this posterior's is {self.match_tolerance:g}).")
        decimals = _decimals_written(row)
        if decimals is not None and np.allclose(np.round(values, decimals), row, rtol=1e-13, atol=1e-300):
            return (
                f"{where} The told values look rounded to {decimals} decimals: write theta with "
                "full precision (e.g. '%.17g' or repr), tell by ticket id "
                f"(tell([{ticket}, ...], x)), or build the posterior with a larger "
                "match_tolerance. " + unasked
            )
        return f"{where} Tell by ticket id (tell(batch, x) or tell(ticket_ids, x)). " + unasked

    # =========================================================== persistence
    @staticmethod
    def _prior_of_state(meta: Mapping[str, Any], prior: Prior | None) -> Prior:
        """The prior a saved state describes (``prior``, when given, in its
        place: it must have the saved parameter names); raises
        :class:`StateFormatError`."""
        if prior is None:
            if meta["prior"] is None:
                raise StateFormatError("the saved prior has custom marginals; pass prior=... to load()")
            try:
                prior = prior_from_spec(meta["prior"])
            except InvalidInputError as error:
                raise StateFormatError(f"the saved prior is malformed: {error}") from None
        if list(prior.names) != list(meta["parameter_names"]):
            raise StateFormatError(
                f"the prior's parameters {list(prior.names)} differ from the saved "
                f"{meta['parameter_names']}"
            )
        return prior

    @classmethod
    def _from_records(
        cls, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], *, prior: Prior | None = None
    ) -> "PriorBook":
        """A prior book from a state's header (the records' fields, the prior
        and ``match_tolerance``), its ``tickets/*`` arrays and its ``rng/ask``
        stream, after checking them; raises :class:`StateFormatError`."""
        check_records(meta, arrays)
        try:
            prior = cls._prior_of_state(meta, prior)
            fidelities = [Fidelity(f["name"], tuple(f["parameters"])) for f in meta["fidelities"]]
            book = cls(prior, fidelities, seed=int(meta["seed"]), match_tolerance=float(meta["match_tolerance"]))
            book._restore_records(meta, arrays)
            book._ask_generator = generator_from_array(arrays["rng/ask"])
        except StateFormatError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise StateFormatError(f"malformed mfask state: {type(error).__name__}: {error}") from None
        return book


def _decimals_written(row: np.ndarray, most: int = 8) -> int | None:
    """The fewest decimals (at most ``most``) that write every value of ``row`` exactly, if any."""
    for decimals in range(most + 1):
        if np.allclose(np.round(row, decimals), row, rtol=1e-13, atol=0.0):
            return decimals
    return None
