"""Figure and axes creation shared by the plot functions (private).

Every plot function draws either into a caller's figure/axes or into a new
:class:`matplotlib.figure.Figure` made here. Such a figure is not registered
with ``matplotlib.pyplot``: it needs no GUI backend (``savefig`` renders with
Agg), is not kept alive by pyplot's figure list, and leaves the user's
backend choice alone. Jupyter (inline backend) displays it when it is the value
of a cell.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from mfask.errors import InvalidInputError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, SubFigure

__all__ = ["empty_figure", "target_axes", "parameter_names"]


def empty_figure(
    figure: Figure | SubFigure | None, figsize: tuple[float, float]
) -> Figure | SubFigure:
    """``figure`` if it is given (it must have no axes yet), else a new
    constrained-layout :class:`~matplotlib.figure.Figure` of ``figsize`` inches."""
    from matplotlib.figure import Figure, FigureBase

    if figure is None:
        return Figure(figsize=figsize, layout="constrained")
    if not isinstance(figure, FigureBase):
        raise InvalidInputError(
            f"figure must be a matplotlib Figure or SubFigure; got {type(figure).__name__}"
        )
    if figure.axes:
        raise InvalidInputError(
            f"figure already has {len(figure.axes)} axes; pass an empty figure "
            "(e.g. plt.figure()) or none"
        )
    return figure


def target_axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    """``ax`` if it is given, else the single axes of a new figure of ``figsize``."""
    from matplotlib.axes import Axes

    if ax is None:
        return empty_figure(None, figsize).add_subplot()
    if not isinstance(ax, Axes):
        raise InvalidInputError(f"ax must be a matplotlib Axes; got {type(ax).__name__}")
    return ax


def parameter_names(names: Sequence[str] | None, d: int) -> list[str]:
    """``d`` parameter labels: ``names`` as strings, or ``theta_0 ... theta_{d-1}``."""
    if names is None:
        return [f"theta_{i}" for i in range(d)]
    labels = [str(name) for name in names]
    if len(labels) != d:
        raise InvalidInputError(f"names must have {d} entries; got {len(labels)}")
    return labels
