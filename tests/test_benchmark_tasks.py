"""Tests of the benchmark tasks, their reference samplers and the reference cache.

Statistical checks use fixed seeds, so each is deterministic; their tolerances
are set at 5 standard errors (computed in each test from the stated sample
sizes), so a correct implementation passes with any seed with probability of
about 1 - 6e-7 per comparison, while the mistakes named in each test move the
statistic by many standard errors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from mfask.benchmarks.tasks import OrnsteinUhlenbeck, get_task
from mfask.benchmarks.tasks import reference_cache
from mfask.benchmarks.tasks.reference_samplers import sample_grid
from mfask.errors import InvalidInputError, UnknownFidelityError

# (registry name, constructor kwargs) of every task variant under test
TASK_VARIANTS = [
    ("ou", {}),
    ("ou", {"dim": 3}),
    ("ou4", {}),
]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test caches reference samples in its own temporary directory."""
    monkeypatch.setenv("MFASK_CACHE_DIR", str(tmp_path / "cache"))


def _importance_moments(task, x_o: np.ndarray, num: int, seed: int):
    """Posterior mean, std and effective sample size by self-normalised
    importance sampling with the prior as proposal: independent of both the
    grid and the SMC sampler."""
    rng = np.random.default_rng(seed)
    proposal = task.sample_prior(num, rng)
    log_w = task.log_likelihood(proposal, x_o)
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    mean = w @ proposal
    std = np.sqrt(w @ (proposal - mean) ** 2)
    return mean, std, 1.0 / np.sum(w**2)


def _assert_moments_agree(samples: np.ndarray, mean, std, ess: float) -> None:
    """Sample mean/std of ``samples`` agree with importance-sampling estimates
    within 5 combined standard errors (std error of a std: std / sqrt(2 n),
    the Gaussian value; bounded posteriors have lighter tails, so this is
    conservative)."""
    n = samples.shape[0]
    mean_se = std * np.sqrt(1.0 / n + 1.0 / ess)
    std_se = std * np.sqrt(1.0 / (2 * n) + 1.0 / (2 * ess))
    np.testing.assert_array_less(np.abs(samples.mean(axis=0) - mean), 5 * mean_se)
    np.testing.assert_array_less(np.abs(samples.std(axis=0) - std), 5 * std_se)


# ------------------------------------------------------------------ generic
@pytest.mark.parametrize("name, kwargs", TASK_VARIANTS)
def test_simulators_shapes_and_determinism(name, kwargs):
    task = get_task(name, **kwargs)
    theta = task.sample_prior(6, np.random.default_rng(0))
    assert theta.shape == (6, task.prior.dim) and theta.dtype == np.float64
    for fidelity in task.fidelities:
        x = task.simulate(theta, fidelity, np.random.default_rng(1))
        again = task.simulate(theta, fidelity, np.random.default_rng(1))
        other = task.simulate(theta, fidelity, np.random.default_rng(2))
        assert x.shape == (6, *task.x_shape) and x.dtype == np.float64
        assert np.isfinite(x).all()
        np.testing.assert_array_equal(x, again)
        assert not np.array_equal(x, other)
    theta_o, x_o = task.observations(2, seed=4)
    theta_o2, x_o2 = task.observations(2, seed=4)
    np.testing.assert_array_equal(theta_o, theta_o2)
    np.testing.assert_array_equal(x_o, x_o2)
    assert x_o.shape == (2, *task.x_shape)
    assert task.prior.in_support(torch.from_numpy(theta_o)).all()


@pytest.mark.parametrize("name, kwargs", TASK_VARIANTS)
def test_bad_inputs_raise(name, kwargs):
    task = get_task(name, **kwargs)
    rng = np.random.default_rng(0)
    theta = task.sample_prior(2, rng)
    with pytest.raises(UnknownFidelityError):
        task.simulate(theta, "medium", rng)
    with pytest.raises(InvalidInputError):
        task.simulate(theta[:, :-1], task.fidelities[-1], rng)
    with pytest.raises(InvalidInputError):
        task.simulate(theta, task.fidelities[-1], 0)


def test_get_task_registry():
    assert get_task("ou").prior.dim == 2
    assert get_task("ou4").prior.dim == 4
    assert get_task("ou4").name == "ou4"
    with pytest.raises(InvalidInputError, match="unknown task"):
        get_task("nope")


# ---------------------------------------------------------------------- OU
@pytest.mark.parametrize(
    "dim, theta",
    [(2, [1.5, 0.4]), (4, [0.7, 0.25, 0.8, 1.0])],
)
def test_ou_high_fidelity_matches_exact_moments(dim, theta):
    """Marginal mean/variance at every t and the pooled one-step regression
    slope match the exact OU formulas. An Euler simulation with dt = 0.1 (the
    paper's code) has slope (1 - 0.1 gamma)^10 = 0.5987 instead of
    exp(-0.5) = 0.6065 at gamma = 0.5: 6 standard errors away here."""
    task = OrnsteinUhlenbeck(dim)
    n = 200_000
    x = task.simulate(np.tile(theta, (n, 1)), "high", np.random.default_rng(0))
    mu, sigma = theta[0], theta[1]
    gamma = theta[2] if dim > 2 else 0.5
    offset = theta[3] if dim > 3 else 3.0
    t = np.arange(10)
    mean = mu + offset * np.exp(-gamma * t)
    stationary = sigma**2 / (2 * gamma)
    var = np.exp(-2 * gamma * t) + stationary * (1 - np.exp(-2 * gamma * t))
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), 5 * np.sqrt(var / n))
    np.testing.assert_array_less(
        np.abs(x.var(0, ddof=1) - var), 5 * var * np.sqrt(2 / (n - 1))
    )
    before = (x[:, :-1] - mu).ravel()
    after = (x[:, 1:] - mu).ravel()
    slope = before @ after / (before @ before)
    step_var = stationary * (1 - np.exp(-2 * gamma))
    slope_se = np.sqrt(step_var / (before @ before))
    assert abs(slope - np.exp(-gamma)) < 5 * slope_se


def test_ou_low_fidelity_is_iid_gaussian_and_ignores_gamma_offset():
    task = OrnsteinUhlenbeck(4)
    n = 100_000
    theta = np.tile([2.0, 0.3, 0.5, 1.0], (n, 1))
    x = task.simulate(theta, "low", np.random.default_rng(0))
    assert abs(x.mean() - 2.0) < 5 * 0.3 / math.sqrt(x.size)
    assert abs(x.std() - 0.3) < 5 * 0.3 / math.sqrt(2 * x.size)
    # no autocorrelation between neighbouring times (se of a correlation ~ 1/sqrt(n))
    assert abs(np.corrcoef(x[:, 3], x[:, 4])[0, 1]) < 5 / math.sqrt(n)
    changed = theta.copy()
    changed[:, 2:] = [0.9, 3.5]
    np.testing.assert_array_equal(
        task.simulate(changed, "low", np.random.default_rng(0)), x
    )


def test_ou_log_likelihood_equals_joint_gaussian_density():
    """The transition-product likelihood equals the density of the whole path
    as one 10-D Gaussian, built from the marginal moments independently:
    Cov(X_s, X_t) = exp(-gamma (t - s)) Var(X_s) for s <= t."""
    task = OrnsteinUhlenbeck(4)
    rng = np.random.default_rng(3)
    theta = task.sample_prior(5, rng)
    x_o = task.simulate(theta[:1], "high", rng)[0]
    t = np.arange(10.0)
    expected = []
    for mu, sigma, gamma, offset in theta:
        mean = mu + offset * np.exp(-gamma * t)
        var = np.exp(-2 * gamma * t) + sigma**2 / (2 * gamma) * (1 - np.exp(-2 * gamma * t))
        s, u = np.meshgrid(t, t, indexing="ij")
        cov = np.exp(-gamma * np.abs(u - s)) * var[np.minimum(s, u).astype(int)]
        expected.append(stats.multivariate_normal(mean, cov).logpdf(x_o))
    np.testing.assert_allclose(task.log_likelihood(theta, x_o), expected, rtol=1e-9)


def test_ou_grid_reference_matches_importance_sampling():
    task = OrnsteinUhlenbeck(2)
    theta_o, x_o = task.observations(1, seed=3)
    samples = task.reference_posterior(x_o[0], 4000, seed=1, cache=False)
    assert samples.shape == (4000, 2)
    assert task.prior.in_support(torch.from_numpy(samples)).all()
    # continuous samples (jitter inside cells), not a lattice of cell centres
    assert np.unique(samples[:, 0]).size == 4000
    mean, std, ess = _importance_moments(task, x_o[0], 400_000, seed=2)
    assert ess > 2000  # the comparison below is only informative with enough ESS
    _assert_moments_agree(samples, mean, std, ess)


def test_ou3_smc_reference_matches_importance_sampling():
    """SMC samples (1000 of 4000 particles) vs importance sampling. SMC draws
    are not independent; across 12 seeds the spread of their means was 0.9x
    the i.i.d. standard error, so the i.i.d. formula is the right scale."""
    task = OrnsteinUhlenbeck(3)
    _, x_o = task.observations(1, seed=11)
    samples = task.reference_posterior(x_o[0], 1000, seed=0, cache=False)
    assert samples.shape == (1000, 3)
    mean, std, ess = _importance_moments(task, x_o[0], 400_000, seed=5)
    assert ess > 2000
    _assert_moments_agree(samples, mean, std, ess)


# --------------------------------------------------------- reference sampler
def test_grid_sampler_zooms_onto_narrow_correlated_gaussian():
    """A correlated Gaussian with sd 0.01 inside a box of width 20 (coarse
    search cells 0.2 wide): the zoom must find it and the samples must have
    its moments (se of a mean: sd / sqrt(n); of a correlation: (1 - r^2) / sqrt(n))."""
    centre = np.array([3.31, -2.07])
    sd, rho = np.array([0.01, 0.02]), 0.8
    cov = np.array([[sd[0] ** 2, rho * sd[0] * sd[1]], [rho * sd[0] * sd[1], sd[1] ** 2]])
    precision = np.linalg.inv(cov)

    def log_density(axes):
        a, b = np.meshgrid(axes[0] - centre[0], axes[1] - centre[1], indexing="ij")
        return -0.5 * (precision[0, 0] * a**2 + 2 * precision[0, 1] * a * b + precision[1, 1] * b**2)

    n = 20_000
    samples = sample_grid(log_density, [-10, -10], [10, 10], n, np.random.default_rng(0))
    np.testing.assert_array_less(np.abs(samples.mean(0) - centre), 5 * sd / math.sqrt(n))
    np.testing.assert_array_less(np.abs(samples.std(0) - sd), 5 * sd / math.sqrt(2 * n))
    assert abs(np.corrcoef(samples.T)[0, 1] - rho) < 5 * (1 - rho**2) / math.sqrt(n)


# -------------------------------------------------------------------- cache
def test_reference_cache_round_trip(monkeypatch):
    task = OrnsteinUhlenbeck(2)
    _, x_o = task.observations(1, seed=0)
    first = task.reference_posterior(x_o[0], 300, seed=7)
    files = list(reference_cache.cache_dir().glob("*.npz"))
    assert len(files) == 1

    def must_not_run(*args, **kwargs):
        raise AssertionError("the sampler ran although the result is cached")

    monkeypatch.setattr(task, "_grid_reference", must_not_run)
    second = task.reference_posterior(x_o[0], 300, seed=7)
    np.testing.assert_array_equal(first, second)
    # the key covers the seed, the number of samples and the observation's bytes
    for args in [(x_o[0], 300, 8), (x_o[0], 301, 7), (x_o[0] + 1e-12, 300, 7)]:
        with pytest.raises(AssertionError, match="sampler ran"):
            task.reference_posterior(*args)
    with np.load(files[0], allow_pickle=False) as data:
        np.testing.assert_array_equal(data["samples"], first)


def test_reference_cache_recovers_from_corrupt_file_and_can_be_disabled():
    task = OrnsteinUhlenbeck(2)
    _, x_o = task.observations(1, seed=0)
    first = task.reference_posterior(x_o[0], 200, seed=1)
    (path,) = reference_cache.cache_dir().glob("*.npz")
    path.write_bytes(b"not a zip file")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        again = task.reference_posterior(x_o[0], 200, seed=1)
    np.testing.assert_array_equal(first, again)
    path.unlink()
    task.reference_posterior(x_o[0], 200, seed=1, cache=False)
    assert not path.exists()


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MFASK_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert reference_cache.cache_dir().parent == tmp_path / "elsewhere"
    monkeypatch.delenv("MFASK_CACHE_DIR")
    assert reference_cache.cache_dir().parent.name == "mfask"
