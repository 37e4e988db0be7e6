"""A metric against the simulation budget, one line per method."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

import numpy as np

from mfask.diagnostics._arrays import as_float_array
from mfask.errors import InvalidInputError
from mfask.plot._figure import target_axes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, SubFigure

__all__ = ["metric_vs_budget"]

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def metric_vs_budget(
    results: Sequence[Mapping[str, Any]] | Mapping[str, tuple[Any, Any]],
    *,
    metric_name: str,
    budget_name: str = "high-fidelity simulations",
    method_key: str = "method",
    budget_key: str = "budget",
    value_key: str = "value",
    error: Literal["std", "sem"] = "std",
    log_x: bool = True,
    log_y: bool = False,
    reference: float | None = None,
    reference_label: str = "reference",
    ax: Axes | None = None,
) -> Figure | SubFigure:
    """Mean and spread over seeds of a metric at each budget, one line per method.

    Arguments:
        results: either records, one mapping per result with the method's
            name under ``method_key``, the budget under ``budget_key`` and the
            metric under ``value_key`` (a number, e.g. one seed per record as
            a benchmark script writes them, or an array of per-seed values);
            records of the same method and budget are pooled. Or a mapping
            ``method -> (budgets (k,), values (k,) or (k, s))`` with ``s``
            seeds per budget.
        metric_name: label of the metric axis.
        budget_name: label of the budget axis.
        method_key, budget_key, value_key: the record keys (e.g.
            ``method_key="variant", budget_key="high", value_key="nll"``).
        error: error bars of one standard deviation over seeds (``"std"``,
            ``ddof=1``) or the standard error of the mean (``"sem"``); none
            where a point has a single value.
        log_x, log_y: logarithmic axes (budgets, or values, must then be > 0).
        reference: a value to draw as a horizontal dotted line (e.g. 0.5 for
            C2ST, or the exact posterior's score), labelled ``reference_label``.
        ax: axes to draw into; default a new figure.

    Returns:
        The figure holding the axes; the axes has one error-bar line per
        method, in the order the methods first appear.
    """
    if error not in ("std", "sem"):
        raise InvalidInputError(f"error must be 'std' or 'sem'; got {error!r}")
    table = _collect(results, method_key, budget_key, value_key)
    all_budgets = sorted({budget for cells in table.values() for budget in cells})
    if log_x and all_budgets[0] <= 0:
        raise InvalidInputError(f"log_x needs positive budgets; got {all_budgets}")
    ax = target_axes(ax, (5.0, 3.6))
    handles = []
    for index, (method, cells) in enumerate(table.items()):
        budgets = np.array(sorted(cells))
        means = np.array([cells[b].mean() for b in budgets])
        spread = np.array([_spread(cells[b], error) for b in budgets])
        handles.append(ax.errorbar(
            budgets, means, yerr=spread, marker=_MARKERS[index % len(_MARKERS)],
            capsize=3, linewidth=1.3, markersize=5, label=method,
        ))
    if reference is not None:
        handles.append(ax.axhline(float(reference), color="grey", linestyle=":", linewidth=1.2,
                                  label=reference_label))
    if log_x:
        ax.set_xscale("log")
        _label_budgets(ax, all_budgets)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(budget_name)
    ax.set_ylabel(metric_name)
    seeds = sorted({len(values) for cells in table.values() for values in cells.values()})
    if seeds == [1]:
        title = "one seed (no error bars)"
    else:
        counts = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
        title = f"mean ± {error} over {counts} seeds"
    ax.legend(handles=handles, fontsize="small", title=title, title_fontsize="small")
    return ax.figure


def _label_budgets(ax: Axes, budgets: list[float]) -> None:
    """Ticks at the budgets, in plain numbers, instead of powers of ten."""
    if len(budgets) <= 12:
        from matplotlib.ticker import NullLocator

        ax.set_xticks(budgets, labels=[f"{b:g}" for b in budgets])
        ax.xaxis.set_minor_locator(NullLocator())


def _spread(values: np.ndarray, error: str) -> float:
    if values.size < 2:
        return 0.0
    std = float(values.std(ddof=1))
    return std if error == "std" else std / np.sqrt(values.size)


def _collect(
    results: Sequence[Mapping[str, Any]] | Mapping[str, tuple[Any, Any]],
    method_key: str,
    budget_key: str,
    value_key: str,
) -> dict[str, dict[float, np.ndarray]]:
    """``method -> budget -> values (s,)`` from records or from arrays per method."""
    pooled: dict[str, dict[float, list[np.ndarray]]] = {}
    if isinstance(results, Mapping):
        for method, pair in results.items():
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise InvalidInputError(
                    f"results[{method!r}] must be a pair (budgets (k,), values (k,) or (k, s))"
                )
            budgets = as_float_array(pair[0], f"budgets of {method!r}", ndim=1)
            values = as_float_array(pair[1], f"values of {method!r}", ndim=(1, 2))
            if values.shape[0] != budgets.shape[0]:
                raise InvalidInputError(
                    f"{method!r}: {budgets.shape[0]} budgets but values of shape {values.shape}"
                )
            cells = pooled.setdefault(str(method), {})
            for budget, row in zip(budgets, values.reshape(budgets.shape[0], -1)):
                cells.setdefault(float(budget), []).append(row)
    else:
        for position, record in enumerate(results):
            where = f"results[{position}]"
            if not isinstance(record, Mapping):
                raise InvalidInputError(f"{where} must be a mapping; got {type(record).__name__}")
            missing = [key for key in (method_key, budget_key, value_key) if key not in record]
            if missing:
                raise InvalidInputError(f"{where} has no key {missing}; its keys are {sorted(record)}")
            budget = as_float_array(np.atleast_1d(record[budget_key]), f"{where}[{budget_key!r}]",
                                    ndim=1)
            values = as_float_array(np.atleast_1d(record[value_key]), f"{where}[{value_key!r}]",
                                    ndim=None)
            if budget.size != 1:
                raise InvalidInputError(
                    f"{where}[{budget_key!r}] must be one number; got {budget.tolist()}"
                )
            cells = pooled.setdefault(str(record[method_key]), {})
            cells.setdefault(float(budget[0]), []).append(values.ravel())
    if not pooled:
        raise InvalidInputError("results is empty")
    return {
        method: {budget: np.concatenate(parts) for budget, parts in cells.items()}
        for method, cells in pooled.items()
    }
