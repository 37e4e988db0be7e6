"""Tests of mfask.diagnostics against cases with known answers.

Every random input comes from a fixed seed, so each test is deterministic;
the tolerances are chosen from the sampling spread of each statistic (given
in the comments) so that a correct implementation passes with a wide margin
and a wrong one does not.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist
from scipy.stats import norm

from mfask.diagnostics import (
    c2st,
    median_heuristic_bandwidth,
    mmd_squared,
    mutual_information_ksg,
    nltp,
    nrmse,
    sbc_ranks,
    sbc_uniformity_pvalues,
    tarp_area,
    tarp_coverage,
    tarp_fractions,
    tarp_uniformity_pvalue,
    transfer_diagnostic,
)
from mfask.diagnostics import mmd as mmd_module
from mfask.errors import InvalidInputError


def _gaussians(n: int, shift: float, dim: int = 2, seed: int = 0):
    """Two sets of ``n`` standard normal samples; the second moved by ``shift`` along axis 0."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim))
    y = rng.standard_normal((n, dim))
    y[:, 0] += shift
    return x, y


# ---------------------------------------------------------------------- C2ST
def test_c2st_same_distribution_is_chance():
    # Under the null the 5-fold CV accuracy is a mean over 2n = 4000 held-out
    # predictions, binomial std sqrt(0.25 / 4000) = 0.008 (across seeds we
    # measured 0.012 at n = 1000, i.e. the binomial value); 0.05 is > 6 std.
    x, y = _gaussians(2000, shift=0.0)
    assert abs(c2st(x, y) - 0.5) < 0.05


def test_c2st_separated_distributions_is_one():
    # Means 8 apart: the Bayes-optimal accuracy is Phi(4) = 0.99997.
    x, y = _gaussians(500, shift=8.0)
    assert c2st(x, y) > 0.99


def test_c2st_mlp_matches_bayes_optimal_accuracy():
    # Unit Gaussians with means 1 apart: the best classifier thresholds
    # halfway, accuracy Phi(1/2) = 0.691. The MLP nearly attains it (mean
    # 0.690, std 0.009 over 8 seeds); the binomial std over 2000 held-out
    # predictions is 0.010, so 0.04 is about 4 std.
    x, y = _gaussians(1000, shift=1.0)
    optimum = norm.cdf(0.5)
    assert c2st(x, y, classifier="mlp") == pytest.approx(optimum, abs=0.04)


def test_c2st_random_forest_cannot_beat_bayes_optimal():
    # The default forest overfits a little (about 0.65 for optimum 0.691), but
    # no classifier can beat the optimum by more than sampling noise
    # (3 binomial std = 0.031 over 2000 predictions), and it must clearly see
    # the shift.
    x, y = _gaussians(1000, shift=1.0)
    accuracy = c2st(x, y)
    assert 0.6 < accuracy < norm.cdf(0.5) + 0.031


def test_c2st_unequal_sizes_torch_input_and_reproducible():
    x, y = _gaussians(600, shift=8.0, seed=1)
    first = c2st(torch.from_numpy(x), y[:300], seed=3)
    assert first > 0.99
    assert c2st(torch.from_numpy(x), y[:300], seed=3) == first


def test_c2st_rejects_mismatched_dimensions():
    with pytest.raises(InvalidInputError, match="same dimension"):
        c2st(np.zeros((10, 2)), np.zeros((10, 3)))


def test_c2st_without_scikit_learn_says_how_to_install(monkeypatch):
    modules = ("sklearn", "sklearn.ensemble", "sklearn.model_selection", "sklearn.neural_network")
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=r"mfask\[metrics\]"):
        c2st(np.zeros((10, 1)), np.ones((10, 1)))


# ----------------------------------------------------------------------- MMD
def _rbf_mmd2_gaussians(shift: float, bandwidth: float, dim: int) -> float:
    """Population MMD^2 between N(0, I) and N(shift e_0, I) with an RBF kernel.

    E k(x, x') = (h^2 / (h^2 + 2))^(d/2) and E k(x, y) is that times
    exp(-shift^2 / (2 (h^2 + 2))).
    """
    ratio = (bandwidth**2 / (bandwidth**2 + 2)) ** (dim / 2)
    return 2 * ratio * (1 - np.exp(-(shift**2) / (2 * (bandwidth**2 + 2))))


def test_mmd_matches_population_value_for_shifted_gaussians():
    # Population value 0.102; over 20 seeds the n = 1000 estimate had std
    # 0.009 (and a bias of +0.0013, see below), so 0.03 is about 3 std.
    x, y = _gaussians(1000, shift=1.0)
    expected = _rbf_mmd2_gaussians(1.0, bandwidth=1.0, dim=2)
    assert mmd_squared(x, y, bandwidth=1.0) == pytest.approx(expected, abs=0.03)


def test_mmd_same_distribution_is_near_zero_and_below_shifted():
    # With equal distributions the biased estimate has expectation
    # 2 (1 - E k(x, x')) / n = 0.0013 (h = 1, d = 2, n = 1000), measured std
    # 0.0005; it is a squared RKHS norm, so never negative.
    x, y = _gaussians(1000, shift=0.0)
    same = mmd_squared(x, y, bandwidth=1.0)
    assert 0.0 <= same < 0.005
    x, y = _gaussians(1000, shift=0.5)
    assert mmd_squared(x, y, bandwidth=1.0) > 4 * 0.005  # population value 0.027


def test_mmd_blocked_computation_equals_direct_formula(monkeypatch):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((23, 3))
    y = rng.standard_normal((17, 3)) + 0.3

    def mean_kernel(a, b):
        sq = np.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1)
        return np.mean(np.exp(-sq / (2 * 0.7**2)))

    direct = mean_kernel(x, x) + mean_kernel(y, y) - 2 * mean_kernel(x, y)
    monkeypatch.setattr(mmd_module, "_CHUNK_ROWS", 5)  # several ragged blocks
    assert mmd_squared(x, torch.from_numpy(y), bandwidth=0.7) == pytest.approx(direct, rel=1e-10)


def test_median_heuristic_default_and_subsampling():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1500, 2))
    y = 2.0 * rng.standard_normal((1500, 2))
    full_median = np.median(pdist(np.concatenate([x, y])))
    # 3000 pooled points are strided down to 2000: ~2 million pairs, whose
    # median is within a fraction of a percent of the full one.
    assert median_heuristic_bandwidth(x, y) == pytest.approx(full_median, rel=0.02)
    small_x, small_y = x[:40], y[:40]
    small_median = np.median(pdist(np.concatenate([small_x, small_y])))
    assert mmd_squared(small_x, small_y) == pytest.approx(
        mmd_squared(small_x, small_y, bandwidth=small_median), rel=1e-12
    )


# -------------------------------------------------------------------- scores
def test_nrmse_by_hand():
    samples = np.array(
        [
            [[1.0, 2.0], [-1.0, -2.0]],  # truth (0, 0): RMSE (1, 2)
            [[1.0, 1.0], [1.0, 4.0]],  # truth (1, 1): RMSE (0, sqrt(4.5))
        ]
    )
    truth = np.array([[0.0, 0.0], [1.0, 1.0]])
    widths = np.array([2.0, 4.0])
    expected = (1 / 2 + 2 / 4 + 0 / 2 + np.sqrt(4.5) / 4) / 4
    assert nrmse(samples, truth, widths) == pytest.approx(expected, rel=1e-12)
    # A single observation may be given without the leading axis.
    assert nrmse(samples[1], truth[1], widths) == pytest.approx(np.sqrt(4.5) / 4 / 2)
    assert nrmse(torch.from_numpy(samples), truth, widths) == pytest.approx(expected)


def test_nrmse_rejects_bad_shapes_and_ranges():
    with pytest.raises(InvalidInputError, match="theta_true"):
        nrmse(np.zeros((3, 5, 2)), np.zeros((2, 2)), np.ones(2))
    with pytest.raises(InvalidInputError, match="prior_range"):
        nrmse(np.zeros((3, 5, 2)), np.zeros((3, 2)), np.array([1.0, 0.0]))


def test_nltp_is_mean_negative_log_prob():
    assert nltp(np.array([-1.0, -2.0, -3.0])) == pytest.approx(2.0)
    assert nltp(torch.tensor([0.5])) == pytest.approx(-0.5)
    assert nltp(np.array([-1.0, -np.inf])) == np.inf
    with pytest.raises(InvalidInputError, match="NaN"):
        nltp(np.array([-1.0, np.nan]))


# --------------------------------------------------------------- calibration
def _conjugate_normal(m: int, n: int, seed: int, *, scale: float = 1.0, shift: float = 0.0):
    """Posterior samples of the model theta ~ N(0, I_2), x | theta ~ N(theta, 0.5^2 I_2).

    The exact posterior is N(x / (1 + sigma^2), sigma^2 / (1 + sigma^2));
    ``scale`` multiplies its standard deviation and ``shift`` moves its mean
    by that many standard deviations, to make a miscalibrated posterior.
    Returns ``(samples (m, n, 2), theta_true (m, 2))``.
    """
    sigma = 0.5
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal((m, 2))
    x = theta + sigma * rng.standard_normal((m, 2))
    precision = 1 + 1 / sigma**2
    mean = x / sigma**2 / precision
    sd = precision**-0.5
    samples = mean[:, None, :] + shift * sd + scale * sd * rng.standard_normal((m, n, 2))
    return samples, theta


def test_sbc_ranks_by_hand():
    samples = np.array([[[0.0, 5.0], [1.0, 6.0], [2.0, 7.0]]])  # (1, 3, 2)
    truth = np.array([[1.5, 4.0]])
    np.testing.assert_array_equal(sbc_ranks(samples, truth), [[2, 0]])


def test_sbc_exact_posterior_is_uniform_overconfident_is_not():
    # Exact posterior: each p-value is uniform on [0, 1] (smallest of 40 seeded
    # runs was 0.03), so requiring > 0.01 fails a correct implementation only
    # 1% of the time per dimension; this seed is fixed.
    samples, truth = _conjugate_normal(300, 99, seed=0)
    assert np.all(sbc_uniformity_pvalues(sbc_ranks(samples, truth), 99) > 0.01)
    # Posterior twice too narrow: ranks pile up at 0 and 99 (the largest
    # p-value of 20 seeded runs was 1e-32).
    samples, truth = _conjugate_normal(300, 99, seed=0, scale=0.5)
    assert np.all(sbc_uniformity_pvalues(sbc_ranks(samples, truth), 99) < 1e-6)


def test_sbc_uniformity_with_bins_not_dividing_rank_count():
    # Every one of the 100 possible ranks exactly twice: perfectly uniform, so
    # the statistic is 0 even though 7 bins hold unequal numbers of ranks.
    ranks = np.tile(np.arange(100), 2)[:, None]
    assert sbc_uniformity_pvalues(ranks, 99, bins=7) == pytest.approx([1.0])
    # All ranks in the lowest bin: rejected.
    assert sbc_uniformity_pvalues(np.zeros((200, 1)), 99, bins=7)[0] < 1e-10


def test_tarp_exact_posterior_near_diagonal_biased_far():
    # For an exact posterior the ECP curve is the empirical CDF of m uniform
    # values, so its area to the diagonal is about 0.31 / sqrt(m) = 0.014 for
    # m = 500 (measured: mean 0.014, max 0.024 over 50 seeds). A posterior
    # whose mean is off by one standard deviation gave areas >= 0.054 over 20
    # seeds. The threshold 0.04 separates the two.
    samples, truth = _conjugate_normal(500, 99, seed=0)
    alphas, coverage = tarp_coverage(samples, truth, seed=0)
    assert alphas.shape == coverage.shape == (101,)
    assert np.all(np.diff(coverage) >= 0) and coverage[-1] == 1.0
    assert tarp_area(alphas, coverage) < 0.04

    samples, truth = _conjugate_normal(500, 99, seed=0, shift=1.0)
    assert tarp_area(*tarp_coverage(samples, truth, seed=0)) > 0.04


def test_tarp_uniformity_pvalue_accepts_exact_and_rejects_shifted_posteriors():
    # Under an exact posterior the p-value is uniform: over 20 seeds none falls
    # below 1e-3 (chance 2 %); a one-sd shift piles the fractions up (p < 1e-6).
    pvalues = [tarp_uniformity_pvalue(*_conjugate_normal(500, 99, seed=s), seed=s) for s in range(20)]
    assert min(pvalues) > 1e-3
    samples, truth = _conjugate_normal(500, 99, seed=0, shift=1.0)
    assert tarp_uniformity_pvalue(samples, truth, seed=0) < 1e-6
    fractions = tarp_fractions(samples, truth, seed=0)
    assert fractions.shape == (500,) and ((fractions >= 0) & (fractions <= 1)).all()


def test_tarp_accepts_one_reference_point_for_all_observations():
    samples, truth = _conjugate_normal(50, 20, seed=4)
    alphas, coverage = tarp_coverage(samples, truth, references=np.zeros(2), num_alphas=11)
    # The same with the point repeated per observation.
    _, repeated = tarp_coverage(samples, truth, references=np.zeros((50, 2)), num_alphas=11)
    np.testing.assert_array_equal(coverage, repeated)
    assert alphas.shape == (11,)


def test_tarp_area_by_hand():
    alphas = np.array([0.0, 0.5, 1.0])
    # |ECP - alpha| = (0, 0.5, 0): a triangle of area 0.25.
    assert tarp_area(alphas, np.array([0.0, 1.0, 1.0])) == pytest.approx(0.25)


# ------------------------------------------------------------ KSG / transfer
@pytest.mark.parametrize("rho", [0.5, 0.9])
def test_ksg_matches_bivariate_gaussian_mutual_information(rho):
    # I = -log(1 - rho^2) / 2 = 0.144 and 0.830 nats. Over 20 seeds at
    # n = 2000, k = 5 the estimate had bias < 0.01 and std 0.014 / 0.018, so
    # 0.05 nats is about 3 std.
    rng = np.random.default_rng(5)
    z = rng.multivariate_normal([0.0, 0.0], [[1.0, rho], [rho, 1.0]], size=2000)
    expected = -0.5 * np.log(1 - rho**2)
    assert mutual_information_ksg(z[:, 0], z[:, 1], k=5) == pytest.approx(expected, abs=0.05)


def test_ksg_independent_is_near_zero():
    # Std over 20 seeds was 0.010 nats; 0.04 is 4 std.
    rng = np.random.default_rng(6)
    a = rng.standard_normal((2000, 2))
    b = rng.standard_normal((2000, 3))
    assert abs(mutual_information_ksg(a, torch.from_numpy(b))) < 0.04


def test_ksg_rejects_duplicated_points():
    with pytest.raises(InvalidInputError, match="duplicates"):
        mutual_information_ksg(np.zeros((20, 1)), np.zeros((20, 1)), k=3)


def _fidelity_outputs(n: int, noise_low: float, seed: int):
    """Outputs of shape (n, 2, 3): theta repeated plus noise, at two fidelities."""
    rng = np.random.default_rng(seed)
    theta = rng.uniform(size=(n, 2, 1))
    x_low = theta + noise_low * rng.standard_normal((n, 2, 3))
    x_high = theta + 0.1 * rng.standard_normal((n, 2, 3))
    return x_low, x_high


def test_transfer_diagnostic_orders_informative_and_useless_low_fidelities():
    x_low, x_high = _fidelity_outputs(1000, noise_low=0.1, seed=7)
    informative = transfer_diagnostic(x_low, x_high)
    # Same parameters and high-fidelity outputs (same seed), noisier low fidelity.
    x_noisy, same_high = _fidelity_outputs(1000, noise_low=1.0, seed=7)
    np.testing.assert_array_equal(same_high, x_high)
    weak = transfer_diagnostic(x_noisy, x_high)
    useless = transfer_diagnostic(np.random.default_rng(9).standard_normal((1000, 6)), x_high)
    # Over 10 seeds: independent outputs gave mean -0.004, std 0.010, so
    # 0.05 is about 5 std; the noisy low fidelity gave 0.18 +- 0.017, far
    # above 0.1 + the useless value; the informative one is near 2 nats.
    assert abs(useless) < 0.05
    assert informative > weak > useless + 0.1


def test_transfer_diagnostic_drops_failed_runs_and_handles_integers():
    x_low, x_high = _fidelity_outputs(500, noise_low=0.1, seed=10)
    failed_low = x_low.copy()
    failed_low[:25] = np.nan  # failed simulations are rows of NaN
    clean = transfer_diagnostic(x_low[25:], x_high[25:])
    assert transfer_diagnostic(failed_low, x_high) == pytest.approx(clean, rel=1e-6)
    # Integer-valued outputs with many repeated rows do not break the estimator.
    counts = np.random.default_rng(11).poisson(2.0, size=(500, 2))
    assert np.isfinite(transfer_diagnostic(counts, counts + 1))


def test_ksg_per_parameter_information_slcp_low_fidelity_ignores_the_mean():
    # SLCP's low fidelity has mean zero, so it carries no information on
    # theta1 (the HF mean's first coordinate), while the high fidelity does.
    # At N = 1000, k = 5, over 20 seeds: MI(theta1; x_LF) was -0.003 +- 0.011
    # nats, the same as the null MI(shuffled theta1; x_HF) (-0.001 +- 0.012),
    # so 0.05 is about 4 null std; MI(theta1; x_HF) was 0.415 +- 0.027
    # (min 0.363), so 0.25 is about 6 std below its mean.
    from mfask.benchmarks.tasks import get_task

    task = get_task("slcp")
    rng = np.random.default_rng(0)
    theta = task.sample_prior(1000, rng)
    x_low = task.simulate(theta, "low", rng)
    x_high = task.simulate(theta, "high", rng)
    information_low = transfer_diagnostic(theta[:, 0], x_low)
    information_high = transfer_diagnostic(theta[:, 0], x_high)
    assert abs(information_low) < 0.05
    assert information_high > 0.25
