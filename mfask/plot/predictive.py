"""Posterior predictive traces against the observed trace."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from mfask.diagnostics._arrays import as_float_array
from mfask.errors import InvalidInputError
from mfask.plot._figure import target_axes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, SubFigure

__all__ = ["predictive_traces"]


def predictive_traces(
    t: Any,
    simulated: Any,
    observed: Any,
    *,
    xlabel: str = "t",
    ylabel: str = "x",
    label: str = "posterior predictive",
    color: str = "C0",
    alpha: float = 0.35,
    ax: Axes | None = None,
) -> Figure | SubFigure:
    """Traces simulated at posterior samples, with the observed trace on top.

    For example, with the neuron task::

        theta = posterior.sample(20, x_o)
        t, v = task.simulate_traces(theta, "high", rng)
        predictive_traces(t, v, v_observed, xlabel="time (ms)", ylabel="V (mV)")

    Arguments:
        t: ``(T,)`` time points (or any x coordinate).
        simulated: ``(k, T)`` traces, one per posterior sample. Rows with
            NaN (failed simulations) are left out and counted in the legend.
        observed: ``(T,)`` the observed trace, drawn in black.
        xlabel, ylabel: axis labels.
        label: legend label of the simulated traces.
        color, alpha: colour and opacity of the simulated traces.
        ax: axes to draw into; default a new figure.

    Returns:
        The figure holding the axes; the axes has one line per finite
        simulated trace, then the observed line.
    """
    times = as_float_array(t, "t", ndim=1)
    traces = as_float_array(simulated, "simulated", ndim=(1, 2), allow_nan=True)
    traces = traces[None, :] if traces.ndim == 1 else traces
    target = as_float_array(observed, "observed", ndim=1)
    if traces.shape[1] != times.size or target.size != times.size:
        raise InvalidInputError(
            f"t has {times.size} points, simulated has shape {traces.shape} and observed "
            f"{target.shape}; they must be (T,), (k, T) and (T,)"
        )
    finite = np.isfinite(traces).all(axis=1)
    if not finite.any():
        raise InvalidInputError(f"all {traces.shape[0]} simulated traces contain NaN or inf")
    ax = target_axes(ax, (6.0, 3.2))
    shown = traces[finite]
    ax.plot(times, shown.T, color=color, alpha=alpha, linewidth=0.8)
    ax.plot(times, target, color="black", linewidth=1.3, label="observed")
    failed = int((~finite).sum())
    note = f", {failed} failed" if failed else ""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=color, alpha=alpha, linewidth=1.5,
               label=f"{label} ({shown.shape[0]} draws{note})"),
        ax.lines[-1],
    ]
    ax.legend(handles=handles, fontsize="small", loc="lower left", bbox_to_anchor=(0.0, 1.0),
              ncols=2, frameon=False, borderaxespad=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(times.min(), times.max())
    return ax.figure
