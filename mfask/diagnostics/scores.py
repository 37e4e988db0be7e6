"""Scores of a posterior against the true parameter of each observation.

Both scores are averaged over a set of observations ``x_o`` whose true
parameters ``theta_true`` are known (simulated benchmark observations):

* :func:`nltp`, the negative log probability of the true parameter, a proper
  scoring rule that needs only posterior densities;
* :func:`nrmse`, the root-mean-square error of posterior samples around the
  true parameter, relative to the prior range, which needs only samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mfask.diagnostics._arrays import as_float_array
from mfask.errors import InvalidInputError

__all__ = ["nltp", "nrmse"]


def nltp(log_prob_at_true: Any) -> float:
    """Negative log probability of the true parameters, averaged.

    Arguments:
        log_prob_at_true: ``log q(theta_true_i | x_o_i)`` for each observation
            ``i``, shape ``(m,)`` (a scalar counts as ``m = 1``), numpy or
            torch. ``-inf`` (true parameter outside the posterior's support)
            is allowed and gives ``inf``.

    Returns:
        ``mean_i(-log q(theta_true_i | x_o_i))`` as a Python float; lower is
        better.
    """
    values = as_float_array(log_prob_at_true, "log_prob_at_true", ndim=(0, 1), allow_inf=True)
    if np.any(values == np.inf):
        raise InvalidInputError("log_prob_at_true contains +inf")
    return float(-np.mean(values))


def nrmse(posterior_samples: Any, theta_true: Any, prior_range: Any) -> float:
    """Root-mean-square error of posterior samples, normalised by the prior range.

    For observation ``i`` and parameter dimension ``j``,

        RMSE_ij = sqrt(mean_s (theta_sij - theta_true_ij)^2) / range_j,

    and the result is the mean of ``RMSE_ij`` over ``j`` and ``i``. It mixes
    bias and spread: an exact posterior scores its own (normalised) spread
    plus the distance of its mean from the truth.

    Arguments:
        posterior_samples: shape ``(m, n, d)`` (``n`` samples for each of
            ``m`` observations) or ``(n, d)`` for a single observation.
        theta_true: shape ``(m, d)``, or ``(d,)`` for a single observation.
        prior_range: positive width of the prior in each dimension, shape
            ``(d,)`` (e.g. ``high - low`` of a box-uniform prior).

    Returns:
        A Python float; 0 when every sample equals the true parameter.
    """
    samples = as_float_array(posterior_samples, "posterior_samples", ndim=(2, 3))
    truth = as_float_array(theta_true, "theta_true", ndim=(1, 2))
    width = as_float_array(prior_range, "prior_range", ndim=1)
    if samples.ndim == 2:
        samples = samples[None]
    if truth.ndim == 1:
        truth = truth[None]
    m, _, d = samples.shape
    if truth.shape != (m, d):
        raise InvalidInputError(
            f"theta_true must have shape ({m}, {d}) to match posterior_samples of "
            f"shape {samples.shape}; got {truth.shape}"
        )
    if width.shape != (d,) or not np.all(width > 0):
        raise InvalidInputError(
            f"prior_range must be {d} positive widths; got {width.tolist()}"
        )
    rmse = np.sqrt(np.mean((samples - truth[:, None, :]) ** 2, axis=1))
    return float(np.mean(rmse / width))
