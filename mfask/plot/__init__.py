"""Figures for multi-fidelity SBI: samples, training, budgets, predictions, calibration.

Needs matplotlib (``pip install mfask[plot]``). Every function takes plain
arrays (and, where natural, a :class:`~mfask.MultiFidelityPosterior`) and
returns a matplotlib figure; none calls ``plt.show()`` or changes global
matplotlib state. New figures are :class:`matplotlib.figure.Figure` objects
not registered with pyplot: save them with ``fig.savefig(path)`` (no display
or backend needed), or let Jupyter (inline backend) show them. To draw into a pyplot window
instead, pass ``figure=plt.figure()`` (multi-panel plots) or ``ax=`` (single
axes plots) and call ``plt.show()`` yourself.

* :func:`pairplot`: marginals and pairwise joints of one or several sample
  sets, true parameters marked;
* :func:`loss_curves`: training and validation loss per epoch, per fidelity;
* :func:`metric_vs_budget`: a metric against the simulation budget, one line
  per method, mean and spread over seeds;
* :func:`predictive_traces`: posterior predictive traces against the
  observed one;
* :func:`sbc_histograms`, :func:`tarp_plot`: calibration, drawn from the
  statistics of :mod:`mfask.diagnostics`.

``docs/plots.md`` shows each figure and the code that makes it.
"""

try:
    import matplotlib  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "mfask.plot needs matplotlib, an optional dependency: pip install mfask[plot]"
    ) from error

from mfask.plot.budget import metric_vs_budget
from mfask.plot.calibration import sbc_histograms, tarp_plot
from mfask.plot.losses import loss_curves
from mfask.plot.predictive import predictive_traces
from mfask.plot.samples import pairplot

__all__ = [
    "pairplot",
    "loss_curves",
    "metric_vs_budget",
    "predictive_traces",
    "sbc_histograms",
    "tarp_plot",
]
