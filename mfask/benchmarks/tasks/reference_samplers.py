"""Samplers that draw reference posterior samples from a tractable likelihood.

Two generic samplers, used by the tasks' ``reference_posterior``:

* :func:`tabulate_on_grid` / :func:`sample_grid` for low-dimensional densities
  (OU 2-D, SIR, SLCP's collapsed 3-D density): evaluates the unnormalised log
  density at the cell centres of a regular grid, zooms the grid onto the region
  that holds the mass, then draws cells with probability proportional to their
  density and a uniform point inside each drawn cell. The final grid spans the
  region within 25 nats of the maximum, i.e. about +-7 posterior standard
  deviations, with 500 (2-D) or 160 (3-D) cells per axis: 10 or more cells per
  standard deviation, which the tests find below Monte-Carlo error.
* :func:`tempered_smc` for smooth posteriors in a few more dimensions (OU
  3-D/4-D): sequential Monte Carlo from the prior to the posterior through
  adaptively chosen tempered targets ``prior * likelihood^beta``, with
  random-walk Metropolis moves using the particles' covariance.

Warning: random-walk SMC is not reliable for posteriors with very narrow,
curved directions. On SLCP it gave means that varied 10-35 standard errors
between seeds, which is why SLCP collapses its mean parameters analytically and
grids the rest. The OU use is checked against importance sampling in the tests.

Both are vectorised over points/particles and draw randomness only from the
``numpy.random.Generator`` they are given.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from mfask.errors import InvalidInputError

__all__ = [
    "GridDensity",
    "tabulate_on_grid",
    "sample_grid",
    "tempered_smc",
    "systematic_resample",
]

#: log density on a grid: receives one 1-D array of cell centres per dimension
#: (lengths G_1, ..., G_d) and returns the values on their product, shape (G_1, ..., G_d)
GridLogDensity = Callable[[Sequence[np.ndarray]], np.ndarray]
#: log density of a batch of points (n, d) -> (n,)
BatchLogDensity = Callable[[np.ndarray], np.ndarray]


# ---------------------------------------------------------------------- grid
def _cell_centres(low: np.ndarray, high: np.ndarray, resolution: int) -> list[np.ndarray]:
    """Centres of ``resolution`` equal cells per dimension of the box."""
    width = (high - low) / resolution
    return [lo + (np.arange(resolution) + 0.5) * w for lo, w in zip(low, width)]


def _evaluate_grid(log_density: GridLogDensity, axes: Sequence[np.ndarray]) -> np.ndarray:
    """Evaluate ``log_density`` on the grid; NaN becomes ``-inf``."""
    expected = tuple(len(axis) for axis in axes)
    values = np.asarray(log_density(axes), dtype=np.float64)
    if values.shape != expected:
        raise InvalidInputError(
            f"grid log density returned shape {values.shape}; expected {expected}"
        )
    values = np.where(np.isnan(values), -np.inf, values)
    if not np.isfinite(values.max()):
        raise InvalidInputError("the log density is -inf (or NaN) on the whole grid")
    return values


def _mass_box(
    values: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    bounds: tuple[np.ndarray, np.ndarray],
    threshold: float,
    margin: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box of the cells within ``threshold`` nats of the maximum,
    widened by ``margin`` cells on each side and clipped to ``bounds``."""
    resolution = values.shape[0]
    width = (high - low) / resolution
    keep = values >= values.max() - threshold
    new_low, new_high = np.empty_like(low), np.empty_like(high)
    for axis in range(values.ndim):
        other = tuple(a for a in range(values.ndim) if a != axis)
        indices = np.flatnonzero(keep.any(axis=other))
        new_low[axis] = low[axis] + (indices[0] - margin) * width[axis]
        new_high[axis] = low[axis] + (indices[-1] + 1 + margin) * width[axis]
    return np.maximum(new_low, bounds[0]), np.minimum(new_high, bounds[1])


@dataclass(frozen=True)
class GridDensity:
    """A density tabulated at the cell centres of a regular grid on a box.

    Attributes:
        low, high: the box ``(d,)``.
        log_values: unnormalised log density per cell ``(G, ..., G)``.
    """

    low: np.ndarray
    high: np.ndarray
    log_values: np.ndarray

    def sample(self, num_samples: int, rng: np.random.Generator) -> np.ndarray:
        """Draw cells with probability proportional to their density and a
        uniform point inside each drawn cell; returns ``(num_samples, d)``."""
        weights = np.exp(self.log_values - self.log_values.max()).ravel()
        cells = rng.choice(weights.size, size=num_samples, p=weights / weights.sum())
        index = np.stack(np.unravel_index(cells, self.log_values.shape), axis=1)
        width = (self.high - self.low) / np.array(self.log_values.shape)
        return self.low + (index + rng.uniform(size=index.shape)) * width


def tabulate_on_grid(
    log_density: GridLogDensity,
    low: Sequence[float],
    high: Sequence[float],
    resolution: int = 500,
    search_resolution: int = 100,
    threshold: float = 25.0,
    max_zoom: int = 10,
) -> GridDensity:
    """Tabulate a low-dimensional density on a grid zoomed onto its mass.

    Arguments:
        log_density: unnormalised log density on a grid (see ``GridLogDensity``);
            the coordinates are those of ``low``/``high`` and the density must be
            with respect to Lebesgue measure in them.
        low, high: the box ``(d,)`` that holds (essentially) all the mass.
        resolution: cells per dimension of the final grid.
        search_resolution: cells per dimension while zooming.
        threshold: cells more than this many nats below the maximum count as
            empty (``exp(-25)`` is about ``1e-11``).
        max_zoom: at most this many zoom steps.

    The zoom: evaluate a ``search_resolution`` grid, shrink the box to the
    cells within ``threshold`` of the maximum plus two cells each side (never
    beyond ``low``/``high``), repeat until no side shrinks by half; then
    evaluate the final grid on that box. Warns if the final box cuts off
    non-negligible mass.
    """
    low_a = np.asarray(low, dtype=np.float64).reshape(-1)
    high_a = np.asarray(high, dtype=np.float64).reshape(-1)
    bounds = (low_a.copy(), high_a.copy())
    box_low, box_high = low_a.copy(), high_a.copy()
    for _ in range(max_zoom):
        values = _evaluate_grid(log_density, _cell_centres(box_low, box_high, search_resolution))
        new_low, new_high = _mass_box(values, box_low, box_high, bounds, threshold, margin=2)
        shrunk = (new_high - new_low) < 0.5 * (box_high - box_low)
        box_low, box_high = new_low, new_high
        if not shrunk.any():
            break
    values = _evaluate_grid(log_density, _cell_centres(box_low, box_high, resolution))
    _warn_if_mass_on_edge(values, box_low, box_high, bounds, threshold)
    return GridDensity(box_low, box_high, values)


def sample_grid(
    log_density: GridLogDensity,
    low: Sequence[float],
    high: Sequence[float],
    num_samples: int,
    rng: np.random.Generator,
    resolution: int = 500,
    search_resolution: int = 100,
    threshold: float = 25.0,
    max_zoom: int = 10,
) -> np.ndarray:
    """Samples ``(num_samples, d)`` of a density tabulated by
    :func:`tabulate_on_grid` (same arguments)."""
    grid = tabulate_on_grid(
        log_density, low, high, resolution, search_resolution, threshold, max_zoom
    )
    return grid.sample(num_samples, rng)


def _warn_if_mass_on_edge(
    values: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    bounds: tuple[np.ndarray, np.ndarray],
    threshold: float,
) -> None:
    """Warn if an edge of the box that is not a bound carries non-negligible mass."""
    level = values.max() - threshold / 2
    for axis in range(values.ndim):
        edges = (
            (0, low[axis] > bounds[0][axis]),
            (values.shape[axis] - 1, high[axis] < bounds[1][axis]),
        )
        for position, is_cut in edges:
            if is_cut and np.take(values, position, axis=axis).max() > level:
                warnings.warn(
                    "grid sampler: the zoomed box cuts off non-negligible mass on "
                    f"axis {axis}; increase search_resolution",
                    RuntimeWarning,
                    stacklevel=3,
                )


# ----------------------------------------------------------------------- SMC
def systematic_resample(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices ``(n,)`` of a systematic resample of normalised ``weights`` ``(n,)``."""
    n = weights.size
    positions = (rng.uniform() + np.arange(n)) / n
    cumulative = np.cumsum(weights)
    cumulative[-1] = 1.0
    return np.searchsorted(cumulative, positions, side="right").clip(0, n - 1)


def _ess(log_weights: np.ndarray) -> float:
    """Effective sample size of unnormalised log weights."""
    finite = np.isfinite(log_weights)
    if not finite.any():
        return 0.0
    w = np.exp(log_weights[finite] - log_weights[finite].max())
    return float(w.sum() ** 2 / (w**2).sum())


def _next_temperature(
    log_likelihood: np.ndarray, beta: float, target_ess: float
) -> float:
    """The largest ``beta' <= 1`` whose incremental weights keep the ESS at
    ``target_ess`` (bisection)."""
    if _ess((1.0 - beta) * log_likelihood) >= target_ess:
        return 1.0
    lower, upper = 0.0, 1.0 - beta
    for _ in range(60):
        middle = 0.5 * (lower + upper)
        if _ess(middle * log_likelihood) >= target_ess:
            lower = middle
        else:
            upper = middle
    # keep moving even if one step of the smallest size already halves the ESS
    return beta + max(lower, 1e-12 * (1.0 - beta))


def tempered_smc(
    log_likelihood: BatchLogDensity,
    log_prior: BatchLogDensity,
    initial: np.ndarray,
    rng: np.random.Generator,
    ess_fraction: float = 0.5,
    mcmc_steps: int = 10,
    final_mcmc_steps: int = 40,
    max_stages: int = 1000,
) -> np.ndarray:
    """Sample ``prior * likelihood`` by likelihood-tempered SMC.

    Arguments:
        log_likelihood: ``(n, d) -> (n,)``; evaluated only inside the prior's
            support.
        log_prior: ``(n, d) -> (n,)``, ``-inf`` outside the support.
        initial: prior draws ``(N, d)``, the initial particles.
        rng: randomness for resampling and the Metropolis moves.
        ess_fraction: each new temperature is chosen so that the effective
            sample size of the incremental weights is this fraction of ``N``.
        mcmc_steps: random-walk Metropolis steps after each resampling.
        final_mcmc_steps: steps at the posterior (temperature 1), to spread out
            the copies made by the last resampling.
        max_stages: safety limit on the number of temperatures.

    Returns:
        ``N`` equally weighted particles ``(N, d)`` approximately from the posterior.

    The Metropolis proposal is Gaussian with the particles' covariance, scaled
    by a factor adapted after every step towards an acceptance rate of 0.25.
    """
    particles = np.array(initial, dtype=np.float64)
    if particles.ndim != 2 or particles.shape[0] < 2:
        raise InvalidInputError(f"initial particles must be (N >= 2, d); got {particles.shape}")
    num, dim = particles.shape
    log_prior_values = np.asarray(log_prior(particles), dtype=np.float64)
    if not np.isfinite(log_prior_values).all():
        raise InvalidInputError("initial particles must lie inside the prior's support")
    log_lik = _finite_or_minus_inf(log_likelihood(particles))
    beta = 0.0
    scale = 2.38 / math.sqrt(dim)
    for _ in range(max_stages):
        new_beta = _next_temperature(log_lik, beta, ess_fraction * num)
        log_w = (new_beta - beta) * log_lik
        weights = np.exp(log_w - log_w.max())
        index = systematic_resample(weights / weights.sum(), rng)
        particles, log_lik, log_prior_values = (
            particles[index],
            log_lik[index],
            log_prior_values[index],
        )
        beta = new_beta
        steps = final_mcmc_steps if beta >= 1.0 else mcmc_steps
        particles, log_lik, log_prior_values, scale = _metropolis_moves(
            particles, log_lik, log_prior_values, beta, scale, steps,
            log_likelihood, log_prior, rng,
        )
        if beta >= 1.0:
            return particles
    raise RuntimeError(f"tempered SMC did not reach the posterior in {max_stages} stages")


def _finite_or_minus_inf(values: np.ndarray) -> np.ndarray:
    """float64 array with NaN replaced by ``-inf``."""
    values = np.asarray(values, dtype=np.float64)
    return np.where(np.isnan(values), -np.inf, values)


def _metropolis_moves(
    particles: np.ndarray,
    log_lik: np.ndarray,
    log_prior_values: np.ndarray,
    beta: float,
    scale: float,
    steps: int,
    log_likelihood: BatchLogDensity,
    log_prior: BatchLogDensity,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """``steps`` random-walk Metropolis moves of every particle, targeting
    ``prior * likelihood^beta``; returns the moved particles, their log
    likelihood and log prior, and the adapted proposal scale."""
    num, dim = particles.shape
    covariance = np.atleast_2d(np.cov(particles, rowvar=False))
    covariance += (1e-12 * np.diag(covariance).max() + 1e-300) * np.eye(dim)
    cholesky = np.linalg.cholesky(covariance)
    for _ in range(steps):
        proposal = particles + scale * rng.standard_normal((num, dim)) @ cholesky.T
        proposal_prior = _finite_or_minus_inf(log_prior(proposal))
        inside = np.isfinite(proposal_prior)
        proposal_lik = np.full(num, -np.inf)
        if inside.any():
            proposal_lik[inside] = _finite_or_minus_inf(log_likelihood(proposal[inside]))
        with np.errstate(invalid="ignore"):
            log_ratio = proposal_prior + beta * proposal_lik - log_prior_values - beta * log_lik
        accept = np.log(rng.uniform(size=num)) < np.where(np.isnan(log_ratio), -np.inf, log_ratio)
        particles = np.where(accept[:, None], proposal, particles)
        log_lik = np.where(accept, proposal_lik, log_lik)
        log_prior_values = np.where(accept, proposal_prior, log_prior_values)
        scale *= math.exp(float(accept.mean()) - 0.25)
    return particles, log_lik, log_prior_values, scale
