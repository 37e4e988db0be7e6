"""Tests of mfask.truncation: the HPD threshold and the truncated-prior sampler.

The "posterior" is an analytic Gaussian ``q = N(mu, Sigma)`` in ``d`` dimensions,
so everything about its highest-density region is known:

* under ``q``, ``chi2 = (theta - mu)^T Sigma^-1 (theta - mu)`` is chi-square with
  ``d`` degrees of freedom and ``log q = c - chi2 / 2``, so the ``p`` quantile of
  ``log q`` over samples from ``q`` is ``c - chi2_d.ppf(1 - p) / 2``;
* ``R = {log q >= tau}`` is the ellipsoid ``chi2 <= r^2``; its volume is
  ``V_d r^d sqrt(det Sigma)``, so under a BoxUniform prior containing it its
  prior mass is that volume over the box volume;
* under a uniform prior, a draw from the prior restricted to ``R``, whitened
  (``z = L^-1 (theta - mu)``, ``Sigma = L L^T``), is uniform in the ball of
  radius ``r``: ``(|z| / r)^d`` is U(0, 1) and ``z / |z|`` is uniform on the
  sphere.

All randomness comes from fixed seeds. Statistical assertions use p-value
thresholds (0.01, Bonferroni-corrected where several tests are combined), so a
correct sampler fails one with probability about 1 % for a random seed; with
the fixed seeds the outcome is deterministic. A negative control shows that
at 3000 draws the checks reject a sample with 5 % of the region cut away (a
cap beyond a box face, or the outer shell); the checks at 1000 to 2000 draws
resolve displacements of roughly 10 % of the mass.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from mfask.errors import InvalidInputError, MfaskError
from mfask.priors import BoxUniform, IndependentPrior, Prior
from mfask.truncation import (
    TruncatedPrior,
    TruncationError,
    TruncationWarning,
    hpd_threshold,
)

QUANTILE = 1e-4
ALPHA = 0.01  # significance level of each statistical check


# -------------------------------------------------------------------- helpers
@dataclass
class Gaussian:
    """An analytic Gaussian "posterior" ``N(mean, cov)``; tensors float64."""

    mean: torch.Tensor  # (d,)
    cov: torch.Tensor  # (d, d)

    def __post_init__(self) -> None:
        self.dim = self.mean.shape[0]
        self.chol = torch.linalg.cholesky(self.cov)
        self.log_norm = float(
            -0.5 * self.dim * math.log(2 * math.pi) - torch.log(torch.diag(self.chol)).sum()
        )

    @classmethod
    def with_region_mass(
        cls, mean: list[float], corr: float, scales: list[float], box_volume: float, mass: float
    ) -> "Gaussian":
        """Gaussian with correlation ``corr`` between neighbours and relative scales
        ``scales``, scaled so that its HPD region at QUANTILE has prior mass ``mass``
        under a uniform prior on a box of volume ``box_volume`` (R inside the box)."""
        d = len(mean)
        shape = torch.eye(d, dtype=torch.float64)
        for i in range(d - 1):
            shape[i, i + 1] = shape[i + 1, i] = corr
        s = torch.tensor(scales, dtype=torch.float64)
        shape = shape * s[:, None] * s[None, :]
        unit = cls(torch.tensor(mean, dtype=torch.float64), shape)
        factor = (mass / unit.region_prior_mass(box_volume)) ** (1.0 / d)
        return cls(unit.mean, shape * factor**2)

    def log_prob(self, theta: torch.Tensor) -> torch.Tensor:
        """``log q`` ``(n,)`` at ``theta`` ``(n, d)``."""
        return self.log_norm - 0.5 * (self.whiten(theta) ** 2).sum(dim=1)

    def whiten(self, theta: torch.Tensor) -> torch.Tensor:
        """``L^-1 (theta - mean)``, ``(n, d)``."""
        diff = (theta - self.mean).T
        return torch.linalg.solve_triangular(self.chol, diff, upper=False).T

    def sample(self, m: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        eps = torch.randn(m, self.dim, generator=g, dtype=torch.float64)
        return self.mean + eps @ self.chol.T

    def radius2(self, quantile: float = QUANTILE) -> float:
        """``r^2`` of the HPD region that holds ``1 - quantile`` of q's mass."""
        return float(stats.chi2.ppf(1.0 - quantile, self.dim))

    def level(self, quantile: float = QUANTILE) -> float:
        """Exact HPD threshold: the ``quantile`` quantile of ``log q`` under ``q``."""
        return self.log_norm - 0.5 * self.radius2(quantile)

    def region_prior_mass(self, box_volume: float, quantile: float = QUANTILE) -> float:
        d = self.dim
        unit_ball = math.pi ** (d / 2) / math.gamma(d / 2 + 1)
        volume = unit_ball * self.radius2(quantile) ** (d / 2) * float(torch.diag(self.chol).prod())
        return volume / box_volume


def brute_force(
    prior: Prior, log_density, threshold: float, n: int, seed: int, chunk: int = 1_000_000
) -> tuple[torch.Tensor, float]:
    """Reference draws by plain rejection from the prior (independent of the code
    under test). Returns ``n`` draws ``(n, d)`` and the acceptance fraction."""
    g = torch.Generator().manual_seed(seed)
    kept, drawn, found = [], 0, 0
    while found < n:
        theta = prior.sample(chunk, g)
        drawn += chunk
        accept = theta[log_density(theta) >= threshold]
        kept.append(accept)
        found += accept.shape[0]
    return torch.cat(kept)[:n], found / drawn


def energy_pvalue(x: torch.Tensor, y: torch.Tensor, permutations: int = 300, seed: int = 0) -> float:
    """Permutation p-value of the energy distance between samples ``x`` and ``y``
    (columns standardised by the pooled standard deviation)."""
    z = torch.cat([x, y])
    z = (z - z.mean(0)) / z.std(0)
    n, total = x.shape[0], z.shape[0]
    dist = torch.cdist(z, z)
    g = torch.Generator().manual_seed(seed)
    order = torch.rand(permutations, total, generator=g).argsort(dim=1)
    labels = torch.zeros(permutations + 1, total, dtype=torch.float64)
    labels[0, :n] = 1.0  # the observed split first
    labels[1:].scatter_(1, order[:, :n], 1.0)
    a, b = labels.T, 1.0 - labels.T  # (total, P + 1)
    da, db = dist @ a, dist @ b
    m = total - n
    energy = 2 * (b * da).sum(0) / (n * m) - (a * da).sum(0) / n**2 - (b * db).sum(0) / m**2
    return float((1 + (energy[1:] >= energy[0]).sum()) / (permutations + 1))


def two_sample_pvalues(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Per-dimension KS p-values (Bonferroni-adjusted) and the energy p-value."""
    d = x.shape[1]
    out = {
        f"ks_{i}": min(1.0, d * stats.ks_2samp(x[:, i].numpy(), y[:, i].numpy()).pvalue)
        for i in range(d)
    }
    out["energy"] = energy_pvalue(x, y)
    return out


def uniform_in_region_pvalues(
    draws: torch.Tensor, q: Gaussian, radius2: float | None = None
) -> dict[str, float]:
    """One-sample KS p-values that whitened draws are uniform in the ball of
    radius r (exact null for a uniform prior containing R), Bonferroni-adjusted.
    Checks the radial law ``(|z|/r)^d ~ U(0,1)`` and each coordinate of the
    direction ``z/|z|`` (for d = 2 the angle, uniform on (-pi, pi]). ``radius2``
    is ``r^2`` (default: that of the exact threshold at QUANTILE)."""
    z = q.whiten(draws)
    radius = z.norm(dim=1)
    radius2 = q.radius2() if radius2 is None else radius2
    u_radial = (radius**2 / radius2) ** (q.dim / 2)
    tests = {"radial": stats.kstest(u_radial.numpy(), "uniform").pvalue}
    if q.dim == 2:
        angle = torch.atan2(z[:, 1], z[:, 0])
        tests["angle"] = stats.kstest(((angle + math.pi) / (2 * math.pi)).numpy(), "uniform").pvalue
    else:
        # A coordinate of a uniform direction on S^{d-1}: (c + 1) / 2 ~ Beta((d-1)/2, (d-1)/2).
        c = (z[:, 0] / radius + 1) / 2
        k = (q.dim - 1) / 2
        tests["direction"] = stats.kstest(c.numpy(), stats.beta(k, k).cdf).pvalue
    return {key: min(1.0, len(tests) * p) for key, p in tests.items()}


def assert_pvalues(pvalues: dict[str, float]) -> None:
    assert min(pvalues.values()) > ALPHA, pvalues


BOX_LOW, BOX_HIGH = [-2.0, -1.0], [3.0, 1.0]  # volume 10


def box_case(mass: float, proposals: int = 10_000, seed: int = 0):
    """BoxUniform prior, Gaussian q whose HPD region has prior mass ``mass``."""
    prior = BoxUniform(BOX_LOW, BOX_HIGH)
    q = Gaussian.with_region_mass([0.7, -0.2], 0.6, [1.0, 0.7], 10.0, mass)
    samples = q.sample(proposals, seed)
    return prior, q, samples


# ---------------------------------------------------------------- threshold
@pytest.mark.parametrize(
    "dim, quantile, m",
    [(2, 1e-4, 1_000_000), (5, 1e-2, 200_000), (3, 0.5, 10_001)],
)
def test_threshold_matches_analytic_quantile(dim: int, quantile: float, m: int) -> None:
    q = Gaussian(torch.linspace(-1, 1, dim, dtype=torch.float64), torch.diag(torch.linspace(0.5, 2, dim, dtype=torch.float64)))
    log_q = q.log_prob(q.sample(m, seed=dim))
    tau = hpd_threshold(log_q, quantile)

    # Sampling error of the estimate, exactly: with G the CDF of log q under q,
    # G(k-th smallest of m) ~ Beta(k, m + 1 - k). The estimate interpolates
    # between order statistics k+1 and k+2 (k = floor((m - 1) p), numpy's
    # linear rule), so G(tau) lies in [G(x_(k+1)), G(x_(k+2))]. The central
    # 99.99 % ranges of those two Beta laws bound G(tau); a correct estimator
    # falls outside with probability < 1e-4. Map the bound through the
    # chi-square law: G(t) = P(chi2 > 2 (c - t)).
    k = math.floor((m - 1) * quantile)
    p_low = stats.beta.ppf(5e-5, k + 1, m - k)
    p_high = stats.beta.ppf(1 - 5e-5, k + 2, m - k - 1)
    tau_low = q.log_norm - 0.5 * stats.chi2.ppf(1 - p_low, dim)
    tau_high = q.log_norm - 0.5 * stats.chi2.ppf(1 - p_high, dim)
    assert tau_low <= tau <= tau_high, (tau_low, tau, tau_high, q.level(quantile))
    # The interval is informative: it excludes the levels of quantile/2 and 2*quantile.
    assert tau_low > q.level(quantile / 2) and tau_high < q.level(min(2 * quantile, 0.99))


def test_threshold_rejects_bad_input() -> None:
    values = torch.randn(100, dtype=torch.float64)
    for bad in (0.0, 1.0, -0.1, 1.5, float("nan"), True, "0.1"):
        with pytest.raises(InvalidInputError, match="quantile"):
            hpd_threshold(values, bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="at least 2"):
        hpd_threshold(values[:1], 0.1)
    with pytest.raises(InvalidInputError, match="non-finite"):
        hpd_threshold(torch.tensor([0.0, float("nan"), 1.0]), 0.1)
    with pytest.raises(InvalidInputError, match="shape"):
        hpd_threshold(torch.zeros(10, 3), 0.1)
    # (m, 1) is accepted as (m,).
    assert hpd_threshold(values[:, None], 0.3) == hpd_threshold(values, 0.3)


def test_threshold_warns_when_too_few_samples_for_the_quantile() -> None:
    values = torch.randn(1000, dtype=torch.float64)
    with pytest.warns(TruncationWarning, match="m \\* quantile = 0.1 < 1"):
        tau = hpd_threshold(values, 1e-4)
    assert values.min() <= tau <= values.sort().values[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hpd_threshold(values, 1e-3)  # m * quantile = 1: no warning


# ----------------------------------------------------------- exactness, 2-D
def test_sampler_matches_brute_force_and_analytic_law() -> None:
    mass, n = 1e-3, 3000
    prior, q, samples = box_case(mass)
    assert q.region_prior_mass(10.0) == pytest.approx(mass)
    tau = q.level()
    sampler = TruncatedPrior(prior, q.log_prob, tau, samples, proposal_log_prob=q.log_prob(samples))
    draws = sampler.sample(n, torch.Generator().manual_seed(1))
    info = sampler.stats

    assert draws.shape == (n, 2) and draws.dtype == torch.float64
    assert (q.log_prob(draws) >= tau).all() and prior.in_support(draws).all()
    assert info.method == "box" and info.returned == n and info.validated
    # With log q at the proposals, the first box is placed from samples pushed
    # out to the Gaussian's HPD boundary, so it covers R and its guard band
    # (0.1 widths beyond R's extent) holds no part of R: no restart can occur.
    assert info.restarts == 0

    reference, _ = brute_force(prior, q.log_prob, tau, n, seed=2)
    assert_pvalues(two_sample_pvalues(draws, reference))
    assert_pvalues(uniform_in_region_pvalues(draws, q))
    # The reference itself obeys the analytic law (checks the helpers).
    assert_pvalues(uniform_in_region_pvalues(reference, q))

    # Region mass estimate: 4 standard errors (false failure ~6e-5).
    assert abs(info.region_prior_mass - mass) < 4 * info.region_prior_mass_stderr
    # Speed: plain rejection needs n / mass = 3e6 evaluations; demand >= 100x fewer.
    assert info.evaluations < 1e-2 * n / mass, info


def test_statistical_checks_reject_a_biased_sample() -> None:
    """Negative controls at the sample size used above (3000): the checks must
    notice (a) a cap beyond a box face holding 5 % of the region's mass cut off,
    the failure a too small box would cause, and (b) the region's outer shell
    holding 5 % of its mass cut off."""
    prior, q, _ = box_case(1e-3)
    tau = q.level()
    reference, _ = brute_force(prior, q.log_prob, tau, 9000, seed=3)
    pool, other = reference[:6000], reference[6000:]
    cap = pool[pool[:, 0] <= torch.quantile(pool[:, 0], 0.95)][:3000]
    assert min(two_sample_pvalues(cap, other).values()) < ALPHA
    radius2 = (q.whiten(pool) ** 2).sum(1)
    shell = pool[radius2 <= 0.95 * q.radius2()][:3000]  # (r_cut / r)^2 = 0.95
    assert shell.shape[0] == 3000
    assert min(uniform_in_region_pvalues(shell, q).values()) < ALPHA


def test_draws_are_reproducible_and_the_box_is_reused() -> None:
    prior, q, samples = box_case(1e-3)
    make = lambda: TruncatedPrior(prior, q.log_prob, q.level(), samples)  # noqa: E731
    first = make().sample(300, torch.Generator().manual_seed(5))
    second = make().sample(300, torch.Generator().manual_seed(5))
    assert torch.equal(first, second)
    sampler = make()
    sampler.sample(10, torch.Generator().manual_seed(6))
    # A call for few draws still validates the box with min_validation_draws...
    assert sampler.stats.validated and sampler.stats.accepted >= sampler.min_validation_draws
    sampler.sample(10, torch.Generator().manual_seed(7))
    # ...so the next call only pays for its own draws (one minimum-size batch).
    assert sampler.stats.restarts == 0 and sampler.stats.evaluations <= 256


# ----------------------------------------------------------- box edge cases
def test_box_grows_when_proposals_cover_only_the_centre() -> None:
    """Proposal samples from a 5x too narrow q reach about 0.2 r: the first box
    misses most of R, the guard band must see it, and the final draws must still
    be exact."""
    mass = 1e-3
    prior, q, _ = box_case(mass)
    narrow = Gaussian(q.mean, q.cov / 25).sample(1000, seed=8)
    sampler = TruncatedPrior(prior, q.log_prob, q.level(), narrow)
    draws = sampler.sample(1000, torch.Generator().manual_seed(9))
    assert sampler.stats.restarts >= 1
    assert (q.log_prob(draws) >= q.level()).all()
    assert_pvalues(uniform_in_region_pvalues(draws, q))
    assert abs(sampler.stats.region_prior_mass - mass) < 4 * sampler.stats.region_prior_mass_stderr


def test_single_proposal_sample_grows_from_a_point() -> None:
    prior, q, _ = box_case(1e-3)
    sampler = TruncatedPrior(prior, q.log_prob, q.level(), q.mean[None, :])
    draws = sampler.sample(1000, torch.Generator().manual_seed(10))
    assert sampler.stats.restarts >= 1
    assert_pvalues(uniform_in_region_pvalues(draws, q))


def test_region_cut_by_the_support_matches_brute_force() -> None:
    """R pokes out of the prior's upper-right corner: the box is clipped there
    (no guard band on a support bound) and the draws are the prior restricted to
    R within the support."""
    prior = BoxUniform(BOX_LOW, BOX_HIGH)
    q = Gaussian(torch.tensor([2.95, 0.9], dtype=torch.float64), torch.tensor([[0.01, 0.004], [0.004, 0.01]], dtype=torch.float64))
    tau = q.level()
    samples = q.sample(10_000, seed=11)
    sampler = TruncatedPrior(prior, q.log_prob, tau, samples)
    draws = sampler.sample(1000, torch.Generator().manual_seed(12))
    assert prior.in_support(draws).all() and (q.log_prob(draws) >= tau).all()
    reference, rate = brute_force(prior, q.log_prob, tau, 1000, seed=13)
    assert_pvalues(two_sample_pvalues(draws, reference))
    # Mass estimates of the sampler and the brute force agree within 4 combined
    # standard errors (brute force: 1e6 draws per chunk, at least one chunk).
    info = sampler.stats
    brute_se = math.sqrt(rate * (1 - rate) / 1e6)
    assert abs(info.region_prior_mass - rate) < 4 * math.hypot(info.region_prior_mass_stderr, brute_se)


def test_non_uniform_prior_matches_brute_force() -> None:
    """A log-normal x normal prior: the prior density varies across R, so the
    draws must follow it (the inverse-CDF box draw, not a uniform box)."""
    prior = IndependentPrior(
        [torch.distributions.LogNormal(0.0, 0.5), torch.distributions.Normal(1.0, 2.0)]
    )
    assert prior.has_marginal_icdf
    q = Gaussian(torch.tensor([1.4, 2.5], dtype=torch.float64), torch.tensor([[0.04, -0.03], [-0.03, 0.09]], dtype=torch.float64))
    tau = q.level()
    samples = q.sample(10_000, seed=14)
    sampler = TruncatedPrior(prior, q.log_prob, tau, samples, proposal_log_prob=q.log_prob(samples))
    draws = sampler.sample(1000, torch.Generator().manual_seed(15))
    assert sampler.stats.method == "box"
    reference, _ = brute_force(prior, q.log_prob, tau, 1000, seed=16, chunk=200_000)
    assert_pvalues(two_sample_pvalues(draws, reference))
    # Negative control: the prior's density varies across R enough that draws
    # uniform in R (ignoring the prior) are told apart from the reference.
    g = torch.Generator().manual_seed(17)
    direction = torch.randn(1000, 2, generator=g, dtype=torch.float64)
    direction = direction / direction.norm(dim=1, keepdim=True)
    radius = math.sqrt(q.radius2()) * torch.rand(1000, 1, generator=g, dtype=torch.float64).sqrt()
    uniform_in_region = q.mean + (radius * direction) @ q.chol.T
    assert min(two_sample_pvalues(uniform_in_region, reference).values()) < ALPHA


def test_two_component_region_matches_brute_force() -> None:
    """A bimodal q (equal mixture of two Gaussians): R has two components and is
    not convex, and the Gaussian extrapolation of the first box is off."""
    prior = BoxUniform(BOX_LOW, BOX_HIGH)
    _, a, _ = box_case(5e-4)
    b = Gaussian(torch.tensor([-1.0, 0.5], dtype=torch.float64), a.cov * torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64))

    def log_q(theta: torch.Tensor) -> torch.Tensor:
        return torch.logaddexp(a.log_prob(theta), b.log_prob(theta)) - math.log(2.0)

    samples = torch.cat([a.sample(5000, seed=40), b.sample(5000, seed=41)])
    tau = hpd_threshold(log_q(samples), 1e-3)
    sampler = TruncatedPrior(prior, log_q, tau, samples, proposal_log_prob=log_q(samples))
    draws = sampler.sample(2000, torch.Generator().manual_seed(42))
    assert sampler.stats.method == "box" and (log_q(draws) >= tau).all()
    reference, _ = brute_force(prior, log_q, tau, 2000, seed=43)
    assert_pvalues(two_sample_pvalues(draws, reference))
    # Both components get their share (each holds half of R's prior mass).
    share = (draws[:, 0] > 0).double().mean()
    assert abs(share - 0.5) < 4 * math.sqrt(0.25 / 2000)


# ------------------------------------------------------------- fallbacks
def test_fallback_to_rejection_without_marginal_icdf() -> None:
    prior = IndependentPrior(
        [torch.distributions.Gamma(2.0, 1.0), torch.distributions.Normal(0.0, 1.0)]
    )
    assert not prior.has_marginal_icdf
    q = Gaussian(torch.tensor([1.5, 0.3], dtype=torch.float64), torch.tensor([[0.02, 0.0], [0.0, 0.02]], dtype=torch.float64))
    tau = q.level()
    sampler = TruncatedPrior(prior, q.log_prob, tau, q.sample(1000, seed=17))
    draws = sampler.sample(1000, torch.Generator().manual_seed(18))
    info = sampler.stats
    assert info.method == "rejection" and info.box_prior_mass == 1.0 and info.restarts == 0
    assert prior.in_support(draws).all() and (q.log_prob(draws) >= tau).all()
    reference, rate = brute_force(prior, q.log_prob, tau, 1000, seed=19, chunk=200_000)
    assert_pvalues(two_sample_pvalues(draws, reference))
    # Plain rejection spends about 1 / P(R) evaluations per draw.
    assert info.evaluations_per_draw == pytest.approx(1 / rate, rel=0.25)


def test_fallback_to_rejection_without_proposal_samples() -> None:
    prior, q, _ = box_case(1e-2)
    sampler = TruncatedPrior(prior, q.log_prob, q.level())
    draws = sampler.sample(500, torch.Generator().manual_seed(20))
    assert sampler.stats.method == "rejection"
    assert_pvalues(uniform_in_region_pvalues(draws, q))


def test_fallback_when_no_proposal_sample_is_in_the_region() -> None:
    prior, q, samples = box_case(1e-2)
    with pytest.warns(TruncationWarning, match="falling back to plain rejection"):
        sampler = TruncatedPrior(
            prior, q.log_prob, q.level(), samples, proposal_log_prob=torch.full((samples.shape[0],), -1e9)
        )
    assert sampler.method == "rejection"


# ------------------------------------------------------- termination guard
@pytest.mark.parametrize("with_proposals", [True, False])
def test_empty_region_raises_within_the_budget(with_proposals: bool) -> None:
    prior, q, samples = box_case(1e-3)
    tau = q.log_norm + 1.0  # above the density's maximum: R is empty
    sampler = TruncatedPrior(prior, q.log_prob, tau, samples if with_proposals else None, max_evaluations=100_000)
    start = time.perf_counter()
    with pytest.raises(TruncationError, match="no draw reached the threshold") as caught:
        sampler.sample(10, torch.Generator().manual_seed(21))
    assert time.perf_counter() - start < 20  # generous bound on a shared machine
    assert isinstance(caught.value, MfaskError) and isinstance(caught.value, RuntimeError)
    info = caught.value.stats
    assert info.returned == 0 and 0 < info.evaluations <= 100_000
    # The budget is used up rather than abandoned early (within a minimum batch).
    assert info.evaluations > 100_000 - 256


def test_budget_can_warn_and_return_what_it_has() -> None:
    prior, q, samples = box_case(1e-3)
    sampler = TruncatedPrior(prior, q.log_prob, q.level())  # rejection: ~1e3 evals per draw
    with pytest.warns(TruncationWarning, match="found"):
        draws = sampler.sample(1000, torch.Generator().manual_seed(22), max_evaluations=50_000, allow_fewer=True)
    assert 0 < draws.shape[0] < 1000 and sampler.stats.evaluations <= 50_000
    assert (q.log_prob(draws) >= q.level()).all()


def test_sampler_rejects_bad_arguments() -> None:
    prior, q, samples = box_case(1e-3)
    with pytest.raises(InvalidInputError):
        TruncatedPrior(prior, q.log_prob, float("nan"))
    with pytest.raises(InvalidInputError):
        TruncatedPrior(prior, q.log_prob, 0.0, samples[:, :1])
    with pytest.raises(InvalidInputError):
        TruncatedPrior(prior, q.log_prob, 0.0, max_evaluations=0)
    sampler = TruncatedPrior(prior, q.log_prob, q.level(), samples)
    with pytest.raises(InvalidInputError):
        sampler.sample(-1, torch.Generator())
    with pytest.raises(InvalidInputError):
        sampler.sample(5, 0)  # type: ignore[arg-type]
    bad_shape = TruncatedPrior(prior, lambda t: torch.zeros(t.shape[0], 2), -1.0)
    with pytest.raises(InvalidInputError, match="log_density must map"):
        bad_shape.sample(5, torch.Generator().manual_seed(0))
    assert sampler.sample(0, torch.Generator()).shape == (0, 2)


def test_log_prob_is_the_prior_inside_the_region_only() -> None:
    prior, q, samples = box_case(1e-3)
    sampler = TruncatedPrior(prior, q.log_prob, q.level(), samples)
    theta = torch.cat([
        q.mean[None, :],  # inside R
        (q.mean + 10 * q.chol[:, 0])[None, :],  # in the support, outside R
        torch.tensor([[5.0, 0.0]], dtype=torch.float64),  # outside the support
    ])
    expected = torch.tensor([-math.log(10.0), -math.inf, -math.inf], dtype=torch.float64)
    torch.testing.assert_close(sampler.log_prob(theta), expected, rtol=1e-12, atol=0.0)


# ---------------------------------------------------------------- property
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dim=st.integers(1, 3),
    data=st.data(),
    relative_scale=st.floats(1e-3, 1.0),
    radius2=st.floats(0.05, 30.0),
    proposals=st.sampled_from([0, 1, 50]),
    seed=st.integers(0, 2**31 - 1),
)
def test_every_draw_is_in_the_region_and_the_support(
    dim: int, data, relative_scale: float, radius2: float, proposals: int, seed: int
) -> None:
    low = data.draw(st.lists(st.floats(-5, 5), min_size=dim, max_size=dim))
    width = data.draw(st.lists(st.floats(0.1, 10), min_size=dim, max_size=dim))
    where = data.draw(st.lists(st.floats(-0.2, 1.2), min_size=dim, max_size=dim))
    low_t, width_t = torch.tensor(low, dtype=torch.float64), torch.tensor(width, dtype=torch.float64)
    prior = BoxUniform(low_t, low_t + width_t)
    q = Gaussian(low_t + width_t * torch.tensor(where, dtype=torch.float64), torch.diag((relative_scale * width_t) ** 2))
    tau = q.log_norm - 0.5 * radius2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        sampler = TruncatedPrior(
            prior, q.log_prob, tau, q.sample(proposals, seed) if proposals else None,
            max_evaluations=30_000, min_validation_draws=50,
        )
        draws = sampler.sample(20, torch.Generator().manual_seed(seed), allow_fewer=True)
    assert draws.shape[0] <= 20 and draws.shape[1] == dim
    assert sampler.stats.evaluations <= 30_000
    assert prior.in_support(draws).all()
    assert (q.log_prob(draws) >= tau).all()


# -------------------------------------------------------------------- slow
@pytest.mark.slow
@pytest.mark.parametrize("dim", [2, 5])
def test_sampler_matches_brute_force_at_1e4_mass(dim: int) -> None:
    """R covers 1e-4 of the prior: 3000 reference draws need ~3e7 prior draws."""
    mass, n = 1e-4, 3000
    prior = BoxUniform([0.0] * dim, [1.0] * dim)
    q = Gaussian.with_region_mass(
        [0.45 + 0.02 * i for i in range(dim)], 0.5, [1.0 + 0.2 * i for i in range(dim)], 1.0, mass
    )
    samples = q.sample(100_000, seed=30)
    log_q = q.log_prob(samples)
    tau = hpd_threshold(log_q, QUANTILE)  # the estimated threshold, as in TSNPE
    sampler = TruncatedPrior(prior, q.log_prob, tau, samples, proposal_log_prob=log_q)
    draws = sampler.sample(n, torch.Generator().manual_seed(31))
    reference, rate = brute_force(prior, q.log_prob, tau, n, seed=32)
    assert (q.log_prob(draws) >= tau).all()
    assert_pvalues(two_sample_pvalues(draws, reference))
    assert_pvalues(uniform_in_region_pvalues(draws, q, radius2=2 * (q.log_norm - tau)))
    assert sampler.stats.evaluations < 1e-2 * n / rate, sampler.stats


@pytest.mark.slow
def test_box_grows_in_5d_from_narrow_proposals() -> None:
    """5-D, proposals from a 3x too narrow q and no log q: the box must grow
    (several restarts) and the draws must still be uniform in R."""
    dim = 5
    prior = BoxUniform([0.0] * dim, [1.0] * dim)
    q = Gaussian.with_region_mass([0.5] * dim, 0.3, [1.0] * dim, 1.0, 1e-4)
    narrow = Gaussian(q.mean, q.cov / 9).sample(1000, seed=33)
    sampler = TruncatedPrior(prior, q.log_prob, q.level(), narrow)
    draws = sampler.sample(3000, torch.Generator().manual_seed(34))
    assert sampler.stats.restarts >= 1
    assert_pvalues(uniform_in_region_pvalues(draws, q))
    assert abs(sampler.stats.region_prior_mass - 1e-4) < 4 * sampler.stats.region_prior_mass_stderr
