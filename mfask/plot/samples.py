"""Pairplot (corner plot) of posterior samples."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

from mfask.diagnostics._arrays import as_float_array, as_samples
from mfask.errors import InvalidInputError
from mfask.plot._figure import empty_figure, parameter_names
from mfask.user_input import positive_int

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, SubFigure

__all__ = ["pairplot"]

#: colour of the true parameters' markers
TRUTH_COLOR = "black"


def pairplot(
    samples: Any,
    *,
    names: Sequence[str] | None = None,
    truth: Any = None,
    limits: Any = None,
    bins: int = 40,
    levels: Sequence[float] = (0.5, 0.9),
    smooth: float = 1.0,
    colors: Sequence[str] | None = None,
    panel_size: float = 2.0,
    figure: Figure | SubFigure | None = None,
) -> Figure | SubFigure:
    """Marginals and pairwise joints of one or several sets of samples.

    The diagonal shows the 1-D histogram of each parameter (as a density),
    the lower triangle the 2-D joint of each pair as filled contours of the
    highest-density regions holding ``levels`` of the samples (of those
    within the limits); the upper triangle is left empty and the legend
    sits there, right of the first marginal (for two parameters, beside the
    grid, which leaves room for long labels). Several sample sets (for example an exact reference and an
    estimate) are overlaid in different colours, and the true parameters
    are marked with black lines (and a square in the joints).

    Arguments:
        samples: ``(n, d)`` samples, or a mapping ``label -> (n_k, d)`` of
            sample sets with the same ``d`` (drawn in that order, each with
            its label in the legend). A 1-D array is ``n`` samples of one
            parameter.
        names: ``d`` axis labels; default ``theta_0 ... theta_{d-1}``.
        truth: ``(d,)`` true parameters to mark, or ``None``.
        limits: ``(d, 2)`` axis ranges ``[low, high]`` per parameter (e.g.
            the prior's bounds). By default, per parameter, the range from
            the 0.5% to the 99.5% quantile of each set (but at most five
            robust standard deviations, IQR / 1.349, from its median, so a
            thin long tail does not squeeze the bulk into a few bins), joined
            over sets and with ``truth``, widened by 10% of its width on each side; samples
            outside the limits are not drawn (the 1-D densities are
            normalised by the total number of samples, so they then
            integrate to less than one).
        bins: histogram bins per parameter over its range.
        levels: fractions of the samples enclosed by the contours of the
            joints, each in ``(0, 1)``.
        smooth: standard deviation, in bins, of the Gaussian filter applied
            to the 2-D histograms before contouring (0 for none).
        colors: one matplotlib colour per sample set; default ``C0, C1, ...``.
        panel_size: width and height of one panel in inches (for a new figure).
        figure: an empty figure (or subfigure) to draw into; default a new one.

    Returns:
        The figure; its axes are the ``d (d + 1) / 2`` panels of the lower
        triangle, row by row.
    """
    sets = _sample_sets(samples)
    d = next(iter(sets.values())).shape[1]
    names = parameter_names(names, d)
    truth_array = None if truth is None else _vector(truth, "truth", d)
    ranges = _limits(sets, truth_array, limits, d)
    if positive_int(bins, "bins") < 2:
        raise InvalidInputError(f"bins must be at least 2; got {bins!r}")
    fractions = sorted(float(level) for level in levels)
    if not fractions or fractions[0] <= 0 or fractions[-1] >= 1:
        raise InvalidInputError(f"levels must be fractions in (0, 1); got {levels!r}")
    if smooth < 0:
        raise InvalidInputError(f"smooth must be >= 0; got {smooth!r}")
    palette = list(colors) if colors is not None else [f"C{k % 10}" for k in range(len(sets))]
    if len(palette) != len(sets):
        raise InvalidInputError(f"got {len(palette)} colors for {len(sets)} sample sets")

    # two parameters leave one empty panel, too small for a legend: a new
    # figure gets a column of room for it beside the grid
    legend_room = panel_size * 1.5 if d == 2 else 0.0
    fig = empty_figure(figure, (panel_size * d + legend_room, panel_size * d))
    grid = fig.add_gridspec(d, d)
    edges = [np.linspace(low, high, int(bins) + 1) for low, high in ranges]
    panels: dict[tuple[int, int], Axes] = {}
    for row in range(d):
        for column in range(row + 1):
            share_x = panels[(column, column)] if row > column else None
            share_y = panels[(row, 0)] if column > 0 and row > column else None
            panels[(row, column)] = fig.add_subplot(grid[row, column], sharex=share_x, sharey=share_y)

    for (label, values), color in zip(sets.items(), palette):
        for row in range(d):
            _draw_marginal(panels[(row, row)], values[:, row], edges[row], color, label)
            for column in range(row):
                _draw_joint(panels[(row, column)], values[:, column], values[:, row],
                            edges[column], edges[row], fractions, smooth, color)

    for (row, column), ax in panels.items():
        ax.set_xlim(ranges[column])
        if row != column:
            ax.set_ylim(ranges[row])
        if truth_array is not None:
            ax.axvline(truth_array[column], color=TRUTH_COLOR, linewidth=1.0)
            if row != column:
                ax.axhline(truth_array[row], color=TRUTH_COLOR, linewidth=1.0)
                ax.plot(truth_array[column], truth_array[row], "s", color=TRUTH_COLOR, markersize=4)
        _label_panel(ax, row, column, d, names)

    handles, labels = panels[(0, 0)].get_legend_handles_labels()
    if truth_array is not None:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color=TRUTH_COLOR, linewidth=1.0))
        labels.append("true parameters")
    if d == 1:
        if len(sets) > 1 or truth_array is not None:
            panels[(0, 0)].legend(handles, labels, fontsize="small")
    else:
        title = "contours hold " + ", ".join(f"{f:.0%}" for f in fractions)
        style = dict(fontsize="small", title=title, title_fontsize="small")
        if d == 2:  # one empty panel is too small for long labels: beside the grid
            fig.legend(handles, labels, loc="outside right upper", **style)
        else:  # in the empty upper triangle, anchored right of the first marginal
            fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.1, 1.0),
                       bbox_transform=panels[(0, 0)].transAxes, borderaxespad=0.0, **style)
    return fig


def _sample_sets(samples: Any) -> dict[str, np.ndarray]:
    """Samples as an ordered ``label -> (n, d)`` dict of arrays of one ``d``."""
    if isinstance(samples, Mapping):
        if not samples:
            raise InvalidInputError("samples is an empty mapping")
        sets = {str(label): as_samples(value, f"samples[{label!r}]") for label, value in samples.items()}
    else:
        sets = {"samples": as_samples(samples, "samples")}
    dims = {label: value.shape[1] for label, value in sets.items()}
    if len(set(dims.values())) != 1:
        raise InvalidInputError(f"all sample sets must have the same number of parameters; got {dims}")
    return sets


def _vector(value: Any, name: str, d: int) -> np.ndarray:
    """A ``(d,)`` float vector (a ``(1, d)`` row is accepted)."""
    array = as_float_array(value, name, ndim=(1, 2))
    if array.size != d:
        raise InvalidInputError(f"{name} must have {d} values; got shape {array.shape}")
    return array.reshape(d)


def _limits(
    sets: dict[str, np.ndarray], truth: np.ndarray | None, limits: Any, d: int
) -> np.ndarray:
    """Axis ranges ``(d, 2)``: given, or from the samples' central 99% (see :func:`pairplot`)."""
    if limits is not None:
        ranges = as_float_array(limits, "limits", ndim=2)
        if ranges.shape != (d, 2) or np.any(ranges[:, 1] <= ranges[:, 0]):
            raise InvalidInputError(
                f"limits must have shape ({d}, 2) with low < high per row; got {ranges.tolist()}"
            )
        return ranges
    lows, highs = zip(*(_central_range(values) for values in sets.values()))
    low, high = np.min(lows, axis=0), np.max(highs, axis=0)
    if truth is not None:
        low, high = np.minimum(low, truth), np.maximum(high, truth)
    width = high - low
    width = np.where(width > 0, width, np.maximum(np.abs(low), 1.0))  # a constant parameter
    return np.stack([low - 0.1 * width, high + 0.1 * width], axis=1)


#: a default axis range reaches at most this many robust standard deviations
#: (IQR / 1.349) from the median, so that a thin long tail does not squeeze
#: the bulk of a marginal into a few bins (a Gaussian's central 99% lies
#: within 2.6 of them, so it is never cut)
TAIL_CUT_SIGMAS = 5.0


def _central_range(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per parameter of ``values`` ``(n, d)``: the 0.5% and 99.5% quantiles,
    each no further than :data:`TAIL_CUT_SIGMAS` robust standard deviations
    from the median. Returns two ``(d,)`` arrays."""
    q_low, q25, median, q75, q_high = np.quantile(values, [0.005, 0.25, 0.5, 0.75, 0.995], axis=0)
    sigma = (q75 - q25) / 1.349
    reach = np.where(sigma > 0, TAIL_CUT_SIGMAS * sigma, np.inf)
    return np.maximum(q_low, median - reach), np.minimum(q_high, median + reach)


def _draw_marginal(ax: Axes, values: np.ndarray, edges: np.ndarray, color: str, label: str) -> None:
    counts, _ = np.histogram(values, bins=edges)
    ax.stairs(counts / (values.size * np.diff(edges)), edges, color=color, linewidth=1.3, label=label)


def _draw_joint(
    ax: Axes,
    x: np.ndarray,
    y: np.ndarray,
    x_edges: np.ndarray,
    y_edges: np.ndarray,
    fractions: list[float],
    smooth: float,
    color: str,
) -> None:
    """Filled highest-density contours of the pair ``(x, y)``, darker inside."""
    counts, _, _ = np.histogram2d(x, y, bins=(x_edges, y_edges))
    if smooth > 0:
        counts = gaussian_filter(counts, smooth, mode="constant")
    thresholds = _density_thresholds(counts, fractions)
    if thresholds is None:
        return
    centres_x = (x_edges[:-1] + x_edges[1:]) / 2
    centres_y = (y_edges[:-1] + y_edges[1:]) / 2
    bounds = [*thresholds, counts.max() * (1 + 1e-9)]
    alphas = np.linspace(0.2, 0.5, len(thresholds))
    for (low, high), alpha in zip(zip(bounds[:-1], bounds[1:]), alphas):
        ax.contourf(centres_x, centres_y, counts.T, levels=[low, high], colors=[color], alpha=alpha)
    ax.contour(centres_x, centres_y, counts.T, levels=thresholds, colors=[color], linewidths=1.0)


def _density_thresholds(counts: np.ndarray, fractions: list[float]) -> list[float] | None:
    """Increasing histogram heights whose upper level sets hold ``fractions`` of the mass.

    For fraction ``f`` the threshold is the height ``h`` such that the bins
    with ``counts >= h`` hold at least ``f`` of the total. ``None`` when the
    histogram is empty or the thresholds are not distinct (too few samples
    in range to draw separate contours).
    """
    total = counts.sum()
    if total <= 0:
        return None
    heights = np.sort(counts.ravel())[::-1]
    cumulative = np.cumsum(heights) / total
    indices = np.minimum(np.searchsorted(cumulative, fractions), heights.size - 1)
    thresholds = sorted(float(heights[i]) for i in indices)  # wider region -> lower height
    if thresholds[0] <= 0 or len(set(thresholds)) != len(thresholds):
        return None
    return thresholds


def _label_panel(ax: Axes, row: int, column: int, d: int, names: list[str]) -> None:
    """Axis labels on the outer panels only; no density ticks on the diagonal."""
    ax.tick_params(labelsize="small")
    ax.locator_params(nbins=4)
    if row == d - 1:
        ax.set_xlabel(names[column])
    else:
        ax.tick_params(labelbottom=False)
    if row == column:
        ax.set_yticks([])
        ax.set_ylim(bottom=0)
    elif column == 0:
        ax.set_ylabel(names[row])
    else:
        ax.tick_params(labelleft=False)
