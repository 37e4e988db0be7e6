"""Training and validation loss curves per fidelity level."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from mfask.errors import InvalidInputError
from mfask.posterior import MultiFidelityPosterior
from mfask.plot._figure import empty_figure
from mfask.training import TrainingHistory

if TYPE_CHECKING:
    from matplotlib.figure import Figure, SubFigure

__all__ = ["loss_curves"]

#: what ``loss_curves`` accepts per fidelity: one history, the members of one
#: fit, or the fits (each a list of members) of a level
HistoryLike = TrainingHistory | Sequence[TrainingHistory] | Sequence[Sequence[TrainingHistory]]


def loss_curves(
    source: MultiFidelityPosterior | Mapping[str, HistoryLike],
    *,
    fidelities: Sequence[str] | None = None,
    log_y: bool = False,
    panel_size: tuple[float, float] = (4.0, 3.2),
    figure: Figure | SubFigure | None = None,
) -> Figure | SubFigure:
    """Training and validation loss per epoch, one panel per fidelity level.

    In each panel every fit of the level (a round of training) has its own
    colour; training loss is solid, validation loss dashed, and a dot marks
    the best validation epoch, whose weights were kept. Ensemble members of a
    fit share its colour. Epochs count from 0 within each fit.

    Arguments:
        source: a :class:`~mfask.MultiFidelityPosterior` (its
            :meth:`~mfask.MultiFidelityPosterior.training_histories`), or a
            mapping ``fidelity -> histories`` where the histories are one
            :class:`~mfask.TrainingHistory`, a list of them (the ensemble
            members of one fit, as returned by ``fit()``), or a list of such
            lists (one per fit).
        fidelities: the levels to show, in panel order; default all levels
            that have been trained, low to high.
        log_y: logarithmic loss axis (only for positive losses).
        panel_size: width and height of one panel in inches (for a new figure).
        figure: an empty figure (or subfigure) to draw into; default a new one.

    Returns:
        The figure, with one axes per fidelity shown.

    Raises:
        InvalidInputError: nothing has been trained, or an unknown fidelity
            or a malformed history was given.
    """
    fits_per_level = _histories_by_fidelity(source)
    if fidelities is None:
        names = [name for name, fits in fits_per_level.items() if fits]
    else:
        names = [str(name) for name in fidelities]
        unknown = [name for name in names if not fits_per_level.get(name)]
        if unknown:
            raise InvalidInputError(
                f"no training history for fidelity {unknown}; trained: "
                f"{[name for name, fits in fits_per_level.items() if fits]}"
            )
    if not names:
        raise InvalidInputError("no training history to plot: nothing has been fitted yet")

    fig = empty_figure(figure, (panel_size[0] * len(names), panel_size[1]))
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names):
        fits = fits_per_level[name]
        for index, members in enumerate(fits):
            color = f"C{index % 10}"
            for history in members:
                epochs = range(history.epochs)
                ax.plot(epochs, history.train_loss, color=color, linewidth=1.2)
                ax.plot(epochs, history.validation_loss, color=color, linewidth=1.2, linestyle="--")
                best = history.best_epoch
                if 0 <= best < history.epochs and math.isfinite(history.validation_loss[best]):
                    ax.plot(best, history.validation_loss[best], "o", color=color, markersize=5)
        ax.set_title(f"fidelity {name!r}")
        ax.set_xlabel("epoch")
        if log_y:
            ax.set_yscale("log")
        _legend(ax, len(fits))
    axes[0].set_ylabel("loss: mean -log q")
    return fig


def _legend(ax: Any, num_fits: int) -> None:
    """Line styles (train/validation/best) and, for several fits, their colours."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color="grey", linewidth=1.2, label="train"),
        Line2D([], [], color="grey", linewidth=1.2, linestyle="--", label="validation"),
        Line2D([], [], color="grey", marker="o", linestyle="", label="best epoch"),
    ]
    if num_fits > 1:
        handles += [
            Line2D([], [], color=f"C{index % 10}", linewidth=3, label=f"fit {index + 1}")
            for index in range(num_fits)
        ]
    ax.legend(handles=handles, fontsize="small")


def _histories_by_fidelity(
    source: MultiFidelityPosterior | Mapping[str, HistoryLike],
) -> dict[str, list[list[TrainingHistory]]]:
    """``fidelity -> fits -> members`` from a posterior or a mapping."""
    if isinstance(source, MultiFidelityPosterior):
        return {name: source.training_histories(name) for name in source.fidelity_names}
    if not isinstance(source, Mapping):
        raise InvalidInputError(
            "loss_curves takes a MultiFidelityPosterior or a mapping fidelity -> training "
            f"histories; got {type(source).__name__}"
        )
    return {str(name): _as_fits(value, str(name)) for name, value in source.items()}


def _as_fits(value: HistoryLike, name: str) -> list[list[TrainingHistory]]:
    """One history, a fit's members or a list of fits, as a list of fits."""
    if isinstance(value, TrainingHistory):
        return [[value]]
    items = list(value) if isinstance(value, Sequence) else None
    if items is not None and all(isinstance(item, TrainingHistory) for item in items):
        return [items] if items else []
    if items is not None and all(
        isinstance(fit, Sequence) and all(isinstance(h, TrainingHistory) for h in fit) for fit in items
    ):
        return [list(fit) for fit in items if len(fit)]
    raise InvalidInputError(
        f"histories of fidelity {name!r} must be a TrainingHistory, a list of them, or a list "
        f"of such lists; got {type(value).__name__}"
    )
