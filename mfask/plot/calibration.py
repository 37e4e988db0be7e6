"""Calibration plots: SBC rank histograms and the TARP coverage curve.

The statistics come from :mod:`mfask.diagnostics` (:func:`sbc_ranks`,
:func:`sbc_uniformity_pvalues`, :func:`tarp_coverage`, :func:`tarp_area`);
this module only draws them, with the band a calibrated posterior would
stay in.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from scipy import stats

from mfask.diagnostics import sbc_uniformity_pvalues, tarp_area
from mfask.diagnostics._arrays import as_float_array
from mfask.errors import InvalidInputError
from mfask.plot._figure import empty_figure, parameter_names, target_axes
from mfask.user_input import positive_int

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, SubFigure

__all__ = ["sbc_histograms", "tarp_plot"]

_BAND_COLOR = "0.6"
_TARP_DIAGONAL = "mfask-tarp-diagonal"


def sbc_histograms(
    ranks: Any,
    num_posterior_samples: int,
    *,
    names: Sequence[str] | None = None,
    bins: int | None = None,
    confidence: float = 0.99,
    columns: int = 4,
    panel_size: tuple[float, float] = (3.0, 2.4),
    figure: Figure | SubFigure | None = None,
) -> Figure | SubFigure:
    """Histograms of SBC ranks, one panel per parameter, with the uniform band.

    Ranks ``0 ... n`` are grouped into ``bins`` contiguous bins (rank ``r``
    in bin ``floor(r * bins / (n + 1))``, the grouping of
    :func:`~mfask.diagnostics.sbc_uniformity_pvalues`, whose p-value for
    the same bins is in each panel's title). For a calibrated posterior the
    count of bin ``b`` is Binomial(``m``, ``p_b``), ``p_b`` the share of rank
    values in the bin; the grey band is its central ``confidence`` interval
    and the dotted line its mean. The band holds per bin, not for all bins
    at once: with 20 bins and 99% a calibrated histogram leaves the band
    somewhere about one time in five. A U shape means an overconfident
    posterior, a hump an underconfident one, a slope a biased one.

    Arguments:
        ranks: ``(m, d)`` ranks from :func:`~mfask.diagnostics.sbc_ranks`
            (``(m,)`` for one parameter).
        num_posterior_samples: ``n``, the number of posterior samples per
            observation the ranks were computed from.
        names: ``d`` panel titles; default ``theta_0 ... theta_{d-1}``.
        bins: number of bins; default ``m // 10`` (about ten ranks per bin),
            between 2 and ``min(20, n + 1)``.
        confidence: probability of the band, in ``(0, 1)``.
        columns: panels per row.
        panel_size: width and height of one panel in inches (for a new figure).
        figure: an empty figure (or subfigure) to draw into; default a new one.

    Returns:
        The figure, with one axes per parameter.
    """
    rank_array = as_float_array(ranks, "ranks", ndim=(1, 2))
    rank_array = rank_array[:, None] if rank_array.ndim == 1 else rank_array
    m, d = rank_array.shape
    n = positive_int(num_posterior_samples, "num_posterior_samples")
    if bins is None:
        bins = int(np.clip(m // 10, 2, min(20, n + 1)))
    pvalues = sbc_uniformity_pvalues(rank_array, n, bins=bins)  # validates ranks and bins
    if not 0 < confidence < 1:
        raise InvalidInputError(f"confidence must be in (0, 1); got {confidence!r}")
    names = parameter_names(names, d)

    bin_of_rank = (np.arange(n + 1) * bins) // (n + 1)
    share = np.bincount(bin_of_rank, minlength=bins) / (n + 1)  # p_b, (bins,)
    edges = np.arange(bins + 1) * (n + 1) / bins  # in rank units
    tail = (1 - confidence) / 2
    lower = stats.binom.ppf(tail, m, share)
    upper = stats.binom.ppf(1 - tail, m, share)

    columns = max(1, min(int(columns), d))
    rows = math.ceil(d / columns)
    fig = empty_figure(figure, (panel_size[0] * columns, panel_size[1] * rows))
    grid = fig.subplots(rows, columns, squeeze=False)
    for index, ax in enumerate(grid.ravel()):
        if index >= d:
            ax.remove()
            continue
        counts = np.bincount(bin_of_rank[rank_array[:, index].astype(np.int64)], minlength=bins)
        ax.stairs(counts, edges, fill=True, color="C0", alpha=0.6, label="ranks")
        ax.stairs(upper, edges, baseline=lower, fill=True, color=_BAND_COLOR, alpha=0.45,
                  label=f"{confidence:.0%} band if calibrated")
        ax.stairs(m * share, edges, color="0.3", linestyle=":", linewidth=1.0, label="expected")
        ax.set_title(f"{names[index]}  (p = {pvalues[index]:.2g})", fontsize="medium")
        ax.set_xlim(0, n + 1)
        ax.set_ylim(0, max(counts.max(), upper.max()) * 1.15)
        ax.set_xlabel(f"rank among {n} samples")
        ax.tick_params(labelsize="small")
        if index % columns == 0:
            ax.set_ylabel("count")
    handles, labels = grid[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize="small")
    return fig


def tarp_plot(
    alphas: Any,
    coverage: Any,
    *,
    label: str = "estimator",
    num_observations: int | None = None,
    confidence: float = 0.99,
    color: str | None = None,
    ax: Axes | None = None,
) -> Figure | SubFigure:
    """The TARP expected-coverage curve against the diagonal of calibration.

    Call it again with the same ``ax`` to overlay several estimators; the
    diagonal and band are drawn once. The legend gives each curve's
    :func:`~mfask.diagnostics.tarp_area` (0 is perfect, 0.5 the worst).

    Arguments:
        alphas: ``(k,)`` increasing credibility levels in ``[0, 1]``, and
        coverage: ``(k,)`` expected coverage at those levels, both from
            :func:`~mfask.diagnostics.tarp_coverage`.
        label: legend label of the curve.
        num_observations: ``m``, the number of observations the coverage was
            computed from; if given, a grey band shows the central
            ``confidence`` interval of ``Binomial(m, alpha) / m``, where the
            curve of a calibrated posterior stays at each level (pointwise).
        confidence: probability of the band, in ``(0, 1)``.
        color: colour of the curve; default the next in the axes' cycle.
        ax: axes to draw into; default a new figure.

    Returns:
        The figure holding the axes.
    """
    area = tarp_area(alphas, coverage)  # validates shapes and increasing alphas
    levels = as_float_array(alphas, "alphas", ndim=1)
    ecp = as_float_array(coverage, "coverage", ndim=1)
    if levels.min() < 0 or levels.max() > 1 or ecp.min() < 0 or ecp.max() > 1:
        raise InvalidInputError("alphas and coverage must lie in [0, 1]")
    if not 0 < confidence < 1:
        raise InvalidInputError(f"confidence must be in (0, 1); got {confidence!r}")
    m = None if num_observations is None else positive_int(num_observations, "num_observations")

    ax = target_axes(ax, (4.0, 4.0))
    if not any(line.get_gid() == _TARP_DIAGONAL for line in ax.lines):
        if m is not None:
            grid = np.linspace(0, 1, 201)
            tail = (1 - confidence) / 2
            lower, upper = stats.binom.ppf([[tail], [1 - tail]], m, grid) / m
            ax.fill_between(grid, lower, upper,
                            color=_BAND_COLOR, alpha=0.4, linewidth=0,
                            label=f"{confidence:.0%} band if calibrated (m = {m})")
        ax.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=1.0, gid=_TARP_DIAGONAL,
                label="calibrated")
    ax.plot(levels, ecp, color=color, linewidth=1.6, label=f"{label} (area {area:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("credibility level α")
    ax.set_ylabel("expected coverage")
    # below the axes: inside, it would cover the band or a curve somewhere
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.14), borderaxespad=0.0)
    return ax.figure
