"""Metrics for posterior estimators and for the value of a low fidelity.

Comparing an approximate posterior with a reference:

* :func:`c2st`: classifier two-sample test accuracy (0.5 = indistinguishable);
  needs scikit-learn (``pip install mfask[metrics]``);
* :func:`mmd_squared`: squared maximum mean discrepancy, RBF kernel.

Scoring a posterior against the true parameters of simulated observations:

* :func:`nltp`: negative log probability of the true parameter;
* :func:`nrmse`: posterior RMSE around the true parameter over the prior range.

Calibration over many observations:

* :func:`sbc_ranks`, :func:`sbc_uniformity_pvalues`: simulation-based
  calibration;
* :func:`tarp_fractions`, :func:`tarp_coverage`, :func:`tarp_area`,
  :func:`tarp_uniformity_pvalue`: tests of accuracy with random points.

Whether a low fidelity can help:

* :func:`mutual_information_ksg`: KSG mutual information estimator;
* :func:`transfer_diagnostic`: mutual information between low- and
  high-fidelity outputs at the same parameters.

Inputs may be numpy arrays, torch tensors or nested lists; results are Python
floats or numpy arrays. Invalid input raises
:class:`mfask.errors.InvalidInputError`.
"""

from mfask.diagnostics.c2st import c2st
from mfask.diagnostics.calibration import (
    sbc_ranks,
    sbc_uniformity_pvalues,
    tarp_area,
    tarp_coverage,
    tarp_fractions,
    tarp_uniformity_pvalue,
)
from mfask.diagnostics.mmd import median_heuristic_bandwidth, mmd_squared
from mfask.diagnostics.scores import nltp, nrmse
from mfask.diagnostics.transfer import mutual_information_ksg, transfer_diagnostic

__all__ = [
    "c2st",
    "mmd_squared",
    "median_heuristic_bandwidth",
    "nltp",
    "nrmse",
    "sbc_ranks",
    "sbc_uniformity_pvalues",
    "tarp_fractions",
    "tarp_coverage",
    "tarp_uniformity_pvalue",
    "tarp_area",
    "mutual_information_ksg",
    "transfer_diagnostic",
]
