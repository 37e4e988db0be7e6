"""Calibration checks of a posterior estimator over many observations.

Both checks use pairs ``(theta_true_i, x_o_i)`` drawn from the joint
distribution (``theta_true_i`` from the prior, ``x_o_i`` simulated from it)
and posterior samples for each ``x_o_i``. If the posterior is exact, the true
parameter is distributed like one more posterior sample, which each check
turns into a uniformity statement:

* simulation-based calibration (SBC; Talts et al. 2018): per dimension, the
  rank of ``theta_true`` among ``n`` posterior samples is uniform on
  ``{0, ..., n}``;
* tests of accuracy with random points (TARP; Lemos et al. 2023): for a
  random reference point ``r_i`` chosen without knowledge of
  ``theta_true_i``, the fraction of posterior samples closer to ``r_i`` than
  ``theta_true_i`` is uniform on ``[0, 1]``. Its empirical CDF, the expected
  coverage probability (ECP) of the credible balls around ``r_i``, should lie
  on the diagonal. Unlike SBC it checks the joint distribution, not only the
  marginals.

Shapes: ``posterior_samples`` is ``(m, n, d)`` (``m`` observations, ``n``
samples each, ``d`` parameters) and ``theta_true`` is ``(m, d)``; numpy or
torch. Results are numpy arrays or Python floats.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from mfask.diagnostics._arrays import as_float_array
from mfask.errors import InvalidInputError

__all__ = [
    "sbc_ranks",
    "sbc_uniformity_pvalues",
    "tarp_fractions",
    "tarp_coverage",
    "tarp_uniformity_pvalue",
    "tarp_area",
]


def sbc_ranks(posterior_samples: Any, theta_true: Any) -> np.ndarray:
    """Rank of each true parameter among its posterior samples, per dimension.

    Arguments:
        posterior_samples: shape ``(m, n, d)``.
        theta_true: shape ``(m, d)``.

    Returns:
        An int64 array ``(m, d)`` with values in ``{0, ..., n}``: the number
        of posterior samples strictly smaller than the true value. (Ties are
        not broken, so for discrete parameters the ranks lean low.)
    """
    samples, truth = _samples_and_truth(posterior_samples, theta_true)
    return np.sum(samples < truth[:, None, :], axis=1).astype(np.int64)


def sbc_uniformity_pvalues(
    ranks: Any, num_posterior_samples: int, *, bins: int | None = None
) -> np.ndarray:
    """Chi-square test that SBC ranks are uniform, one p-value per dimension.

    The ``n + 1`` possible ranks are grouped into ``bins`` contiguous bins
    (rank ``r`` goes to bin ``floor(r * bins / (n + 1))``); the expected
    count of a bin is ``m`` times the fraction of rank values it holds, so
    the test is exact in its null even when ``bins`` does not divide
    ``n + 1``. The statistic is compared with a chi-square distribution with
    ``bins - 1`` degrees of freedom.

    Arguments:
        ranks: output of :func:`sbc_ranks`, shape ``(m, d)`` (or ``(m,)``).
        num_posterior_samples: ``n``, the number of posterior samples the
            ranks were computed from.
        bins: number of bins; by default ``min(20, n + 1, m // 5)`` (at least
            2), so that the expected count per bin is at least 5 when
            ``m >= 10``.

    Returns:
        Float array ``(d,)`` of p-values; small values reject uniformity
        (the posterior is miscalibrated in that dimension).
    """
    rank_array = as_float_array(ranks, "ranks", ndim=(1, 2))
    if rank_array.ndim == 1:
        rank_array = rank_array[:, None]
    n = int(num_posterior_samples)
    if n < 1 or n != num_posterior_samples:
        raise InvalidInputError(
            f"num_posterior_samples must be a positive integer; got {num_posterior_samples!r}"
        )
    if np.any(rank_array != np.round(rank_array)) or rank_array.min() < 0 or rank_array.max() > n:
        raise InvalidInputError(f"ranks must be integers in [0, {n}]")
    m = rank_array.shape[0]
    if bins is None:
        bins = max(2, min(20, n + 1, m // 5))
    if not 2 <= bins <= n + 1:
        raise InvalidInputError(f"bins must be in [2, n + 1 = {n + 1}]; got {bins}")
    bin_of_rank = (np.arange(n + 1) * bins) // (n + 1)
    expected = m * np.bincount(bin_of_rank, minlength=bins) / (n + 1)  # (bins,)
    bin_index = bin_of_rank[rank_array.astype(np.int64)]  # (m, d)
    observed = np.sum(bin_index[:, :, None] == np.arange(bins), axis=0)  # (d, bins)
    statistic = np.sum((observed - expected) ** 2 / expected, axis=1)
    return stats.chi2.sf(statistic, df=bins - 1)


def tarp_fractions(
    posterior_samples: Any,
    theta_true: Any,
    *,
    references: Any = None,
    seed: int = 0,
) -> np.ndarray:
    """TARP's per-observation statistic (Lemos et al. 2023), shape ``(m,)``.

    All points are first mapped to the unit box spanned by the posterior
    samples (per dimension, ``(v - min) / (max - min)`` over all samples of
    all observations), so that every parameter counts on the same scale.
    This map depends only on the observations, not on ``theta_true``, so the
    check stays valid. For observation ``i`` with reference ``r_i``,

        f_i = fraction of samples s with ||s - r_i|| < ||theta_true_i - r_i||.

    For an exact posterior the ``f_i`` are uniform on ``{0, 1/n, ..., 1}``
    (the true parameter is one more draw from it); see
    :func:`tarp_uniformity_pvalue` and :func:`tarp_coverage`.

    Arguments:
        posterior_samples: shape ``(m, n, d)``.
        theta_true: shape ``(m, d)``.
        references: reference points in parameter space, shape ``(m, d)`` or
            ``(d,)`` (one point for all observations). They must not be
            chosen with knowledge of ``theta_true``. ``None`` draws them
            uniformly in the box spanned by the posterior samples.
        seed: seeds the draw of the references.
    """
    samples, truth = _samples_and_truth(posterior_samples, theta_true)
    m, _, d = samples.shape
    low = samples.min(axis=(0, 1))
    width = samples.max(axis=(0, 1)) - low
    width = np.where(width > 0, width, 1.0)
    samples = (samples - low) / width
    truth = (truth - low) / width
    if references is None:
        refs = np.random.default_rng(seed).uniform(size=(m, d))
    else:
        refs = as_float_array(references, "references", ndim=(1, 2))
        refs = np.broadcast_to(refs, (m, d)) if refs.shape in ((d,), (1, d)) else refs
        if refs.shape != (m, d):
            raise InvalidInputError(
                f"references must have shape ({m}, {d}) or ({d},); got {refs.shape}"
            )
        refs = (refs - low) / width
    sample_distance = np.linalg.norm(samples - refs[:, None, :], axis=2)  # (m, n)
    true_distance = np.linalg.norm(truth - refs, axis=1)  # (m,)
    return np.mean(sample_distance < true_distance[:, None], axis=1)


def tarp_coverage(
    posterior_samples: Any,
    theta_true: Any,
    *,
    references: Any = None,
    num_alphas: int = 101,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Expected coverage probability curve of TARP (Lemos et al. 2023):
    ``ECP(alpha) = mean_i [f_i <= alpha]`` with ``f_i`` from
    :func:`tarp_fractions`, the fraction of true parameters inside the ball
    around ``r_i`` that holds a fraction ``alpha`` of the posterior samples.
    For an exact posterior ``ECP(alpha) = alpha`` up to sampling noise (of
    order ``1 / sqrt(m)``) and a ``1 / (n + 1)`` discreteness offset. Any
    systematic departure from the diagonal means miscalibration; with
    references spread over the whole box, over- and under-confidence both
    bend the curve into an S (``f_i`` piles up near 0 and 1, or near 1/2), so
    read the shape with care and use :func:`tarp_area` as the summary.

    Arguments:
        posterior_samples, theta_true, references, seed: as for :func:`tarp_fractions`.
        num_alphas: number of credibility levels, evenly spaced in ``[0, 1]``.

    Returns:
        ``(alphas, coverage)``, two float arrays of shape ``(num_alphas,)``.
    """
    if int(num_alphas) != num_alphas or num_alphas < 2:
        raise InvalidInputError(f"num_alphas must be an integer >= 2; got {num_alphas!r}")
    fraction = tarp_fractions(posterior_samples, theta_true, references=references, seed=seed)
    alphas = np.linspace(0.0, 1.0, int(num_alphas))
    coverage = np.mean(fraction[:, None] <= alphas[None, :], axis=0)
    return alphas, coverage


def tarp_uniformity_pvalue(
    posterior_samples: Any, theta_true: Any, *, references: Any = None, seed: int = 0,
    bins: int | None = None,
) -> float:
    """p-value of the chi-square test that TARP's ``f_i`` are uniform.

    ``f_i * n`` is a rank in ``{0, ..., n}`` (``n`` samples per observation),
    uniform for an exact posterior, so it is tested exactly like an SBC rank
    (:func:`sbc_uniformity_pvalues`, same binning). Small values reject
    calibration: TARP's test of the joint posterior, where SBC tests each
    marginal.
    """
    samples = as_float_array(posterior_samples, "posterior_samples", ndim=3)
    n = samples.shape[1]
    fraction = tarp_fractions(samples, theta_true, references=references, seed=seed)
    ranks = np.rint(fraction * n).astype(np.int64)
    return float(sbc_uniformity_pvalues(ranks, n, bins=bins)[0])


def tarp_area(alphas: Any, coverage: Any) -> float:
    """Area between a TARP coverage curve and the diagonal.

    ``integral_0^1 |ECP(alpha) - alpha| d alpha`` by the trapezoidal rule on
    the given levels. 0 for a perfectly calibrated posterior, at most 0.5.

    Arguments:
        alphas: increasing credibility levels, shape ``(k,)``.
        coverage: ECP at those levels, shape ``(k,)``.

    Returns:
        A Python float.
    """
    levels = as_float_array(alphas, "alphas", ndim=1)
    ecp = as_float_array(coverage, "coverage", ndim=1)
    if levels.shape != ecp.shape or len(levels) < 2 or np.any(np.diff(levels) <= 0):
        raise InvalidInputError(
            "alphas and coverage must have the same length >= 2 and alphas must increase"
        )
    gap = np.abs(ecp - levels)
    return float(np.sum(np.diff(levels) * (gap[1:] + gap[:-1]) / 2.0))


def _samples_and_truth(posterior_samples: Any, theta_true: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``(m, n, d)`` posterior samples against ``(m, d)`` true values."""
    samples = as_float_array(posterior_samples, "posterior_samples", ndim=3)
    truth = as_float_array(theta_true, "theta_true", ndim=2)
    if truth.shape != (samples.shape[0], samples.shape[2]):
        raise InvalidInputError(
            f"theta_true must have shape ({samples.shape[0]}, {samples.shape[2]}) "
            f"to match posterior_samples of shape {samples.shape}; got {truth.shape}"
        )
    return samples, truth
