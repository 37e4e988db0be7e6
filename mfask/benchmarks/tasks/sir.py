"""The SIR epidemic task.

``theta = (beta, gamma)`` with ``beta ~ LogNormal(log 0.4, 0.5)`` and
``gamma ~ LogNormal(log 0.125, 0.2)``. The deterministic SIR model with
population ``N = 10^6``, ``I(0) = 1``, ``R(0) = 0``::

    dS/dt = -beta S I / N,   dI/dt = beta S I / N - gamma I,   dR/dt = gamma I

is solved with scipy's ``solve_ivp`` (DOP853, relative tolerance 1e-8; see
:func:`solve_sir`).

High fidelity (``"high"``): ``x_k ~ Binomial(1000, I(t_k) / N)`` at
``t_k = 0, 17, ..., 153`` (10 points).

Low fidelity (``"low"``): the same model observed coarsely, ``Binomial(1000,
I(t) / N)`` at ``t = 0, 32, ..., 160`` (6 points), then mapped to the 10 HF
times by linear interpolation of the 6 noisy counts (all HF times lie inside
[0, 160]). Why interpolation and not zero padding: mfask transfers the LF
network's weights to the HF network, so input ``k`` should mean the same thing
at both fidelities. After interpolation, input ``k`` is (an estimate of) the
infected count at HF time ``t_k`` for both; with padding, inputs 1-5 would be
the counts at days 32-160 for LF but 17-85 for HF, and inputs 6-9 would be
constant zeros whose weights are never trained before the transfer. The LF
observation is a linear function of the 6 coarse counts, so it carries exactly
their information.

Speed: for 1000 parameter vectors on this project's 2-core machine, one
stacked ODE system (all ``theta`` at once, 0.05 s) was about 70x faster than a
loop of per-``theta`` ``solve_ivp`` calls (LSODA 3.6 s, DOP853 7.4 s, RK45
16.5 s) and about 250x faster than that loop spread over 2 joblib workers
(13 s, the process overhead dominates); so :func:`solve_sir` stacks.

Reference posterior: exact up to grid resolution, by a 500 x 500 grid over
``(log R0, log gamma)`` with ``R0 = beta / gamma``
(:func:`~mfask.benchmarks.tasks.reference_samplers.tabulate_on_grid`, zoomed
onto the posterior mass from a box of +-7 prior standard deviations in
``log beta`` and ``log gamma``; the prior mass outside it is below 1e-11). The
grid needs only one ODE solve per ``R0`` value: in the time ``tau = gamma t``
the model depends on ``R0`` alone, so ``I(t; beta, gamma) = J(gamma t; R0)``
where ``J`` solves the system with ``(beta, gamma) = (R0, 1)``. The tests
check this identity against direct solves.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import numpy as np
import torch
from scipy.integrate import solve_ivp
from scipy.special import xlog1py, xlogy

from mfask.benchmarks.tasks.base import Task
from mfask.benchmarks.tasks.checks import (
    check_fidelity,
    check_observation,
    check_rng,
    check_theta,
)
from mfask.benchmarks.tasks.reference_samplers import tabulate_on_grid
from mfask.errors import InvalidInputError
from mfask.priors import IndependentPrior, Prior

__all__ = ["SIR", "solve_sir", "POPULATION", "TRIALS", "HF_TIMES", "LF_TIMES"]

#: population size N
POPULATION = 1e6
#: initial number of infected, I(0); S(0) = N - I(0), R(0) = 0
INITIAL_INFECTED = 1.0
#: binomial trials per observation
TRIALS = 1000
#: high-fidelity observation times 0, 17, ..., 153, shape (10,)
HF_TIMES = 17.0 * np.arange(10)
#: low-fidelity observation times 0, 32, ..., 160, shape (6,)
LF_TIMES = 32.0 * np.arange(6)

_PRIOR_LOC = (math.log(0.4), math.log(0.125))
_PRIOR_SCALE = (0.5, 0.2)
_PRIOR_BOX_SDS = 7.0
_REFERENCE_VERSION = 1
_GRID_RESOLUTION = 500

# Linear interpolation from the LF times onto the HF times, as a matrix (10, 6):
# column j is the interpolation of the j-th unit vector.
_LF_TO_HF = np.stack(
    [np.interp(HF_TIMES, LF_TIMES, unit) for unit in np.eye(LF_TIMES.size)], axis=1
)


def _stacked_rhs(_: float, y: np.ndarray, beta: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    """Right-hand side of ``n`` stacked SIR systems, ``y = (S_1..S_n, I_1..I_n, R_1..R_n)``."""
    susceptible, infected, _recovered = y.reshape(3, -1)
    infections = beta * susceptible * infected / POPULATION
    recoveries = gamma * infected
    return np.concatenate([-infections, infections - recoveries, recoveries])


def solve_sir(
    beta: np.ndarray,
    gamma: np.ndarray,
    times: np.ndarray,
    rtol: float = 1e-8,
    atol: float = 1e-6,
    batch_size: int = 1000,
) -> np.ndarray:
    """Solve the SIR ODE for every ``(beta_i, gamma_i)``.

    Arguments:
        beta, gamma: rates ``(n,)``; rows with a non-positive or non-finite
            value give NaN.
        times: increasing, non-negative observation times ``(T,)``.
        rtol, atol: per-component tolerances (``atol`` in people).
        batch_size: systems solved together as one stacked ODE.

    Returns:
        ``(n, 3, T)``: ``S, I, R`` at each time, in people.

    ``solve_ivp`` controls the root-mean-square of the scaled error over all
    ``m = 3 * batch`` components, which lets one component's error be
    ``sqrt(m)`` times the tolerance; the tolerances are divided by ``sqrt(m)``
    so that every component meets ``rtol``/``atol``.
    """
    beta = np.asarray(beta, dtype=np.float64).reshape(-1)
    gamma = np.asarray(gamma, dtype=np.float64).reshape(-1)
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    if np.any(np.diff(times) <= 0) or times[0] < 0:
        raise InvalidInputError("times must be increasing and non-negative")
    result = np.full((beta.size, 3, times.size), np.nan)
    valid = np.flatnonzero(
        np.isfinite(beta) & np.isfinite(gamma) & (beta > 0) & (gamma > 0)
    )
    for start in range(0, valid.size, batch_size):
        rows = valid[start : start + batch_size]
        n = rows.size
        y0 = np.concatenate(
            [np.full(n, POPULATION - INITIAL_INFECTED), np.full(n, INITIAL_INFECTED), np.zeros(n)]
        )
        shrink = 1.0 / math.sqrt(3 * n)
        solution = solve_ivp(
            _stacked_rhs,
            (0.0, float(times[-1])),
            y0,
            method="DOP853",
            t_eval=times,
            rtol=rtol * shrink,
            atol=atol * shrink,
            args=(beta[rows], gamma[rows]),
        )
        if solution.success:
            result[rows] = solution.y.reshape(3, n, times.size).transpose(1, 0, 2)
    return result


def _binomial_log_likelihood(probability: np.ndarray, x_o: np.ndarray) -> np.ndarray:
    """Sum over the last axis of ``log Binomial(x_o; TRIALS, p)``; ``probability``
    ``(..., T)``, ``x_o`` ``(T,)`` integer counts; returns ``(...)``."""
    log_choose = (
        math.lgamma(TRIALS + 1)
        - np.array([math.lgamma(k + 1) + math.lgamma(TRIALS - k + 1) for k in x_o])
    )
    p = np.clip(probability, 0.0, 1.0)
    terms = log_choose + xlogy(x_o, p) + xlog1py(TRIALS - x_o, -p)
    return np.where(np.isnan(probability), np.nan, terms).sum(axis=-1)


class SIR(Task):
    """SIR epidemic observed through binomial samples of the infected fraction.

    Shapes: ``theta`` ``(n, 2)`` = ``(beta, gamma)``; ``x`` ``(n, 10)`` counts
    (the LF counts interpolated onto the HF times, see the module docstring).
    """

    name = "sir"
    fidelities = ("low", "high")

    def __init__(self) -> None:
        self._prior = IndependentPrior(
            [
                torch.distributions.LogNormal(
                    torch.tensor(loc, dtype=torch.float64),
                    torch.tensor(scale, dtype=torch.float64),
                )
                for loc, scale in zip(_PRIOR_LOC, _PRIOR_SCALE)
            ],
            names=["beta", "gamma"],
        )

    @property
    def prior(self) -> Prior:
        """Independent log-normal priors on ``beta`` and ``gamma``."""
        return self._prior

    @property
    def x_shape(self) -> tuple[int, ...]:
        """``(10,)`` for both fidelities."""
        return (HF_TIMES.size,)

    @property
    def settings(self) -> dict[str, Any]:
        """No settings (JSON-compatible, for cache keys)."""
        return {}

    def simulate(
        self, theta: np.ndarray, fidelity: str, rng: np.random.Generator
    ) -> np.ndarray:
        """Simulate counts ``(n, 10)`` for ``theta`` ``(n, 2)`` at ``fidelity``;
        rows whose ODE solve fails (or with non-positive rates) are NaN."""
        theta = check_theta(theta, 2)
        check_fidelity(fidelity, self.fidelities)
        check_rng(rng)
        times = HF_TIMES if fidelity == "high" else LF_TIMES
        infected = solve_sir(theta[:, 0], theta[:, 1], times)[:, 1, :]
        failed = np.isnan(infected).any(axis=1)
        probability = np.clip(np.nan_to_num(infected / POPULATION), 0.0, 1.0)
        counts = rng.binomial(TRIALS, probability).astype(np.float64)
        if fidelity == "low":
            counts = counts @ _LF_TO_HF.T
        counts[failed] = np.nan
        return counts

    def log_likelihood(self, theta: np.ndarray, x_o: np.ndarray) -> np.ndarray:
        """Exact high-fidelity log-likelihood ``(n,)`` of counts ``x_o`` ``(10,)``."""
        theta = check_theta(theta, 2)
        x_o = self._check_counts(x_o)
        infected = solve_sir(theta[:, 0], theta[:, 1], HF_TIMES)[:, 1, :]
        return _binomial_log_likelihood(infected / POPULATION, x_o)

    def _check_counts(self, x_o: np.ndarray) -> np.ndarray:
        """A high-fidelity observation: integers in ``[0, TRIALS]``, shape ``(10,)``."""
        x_o = check_observation(x_o, self.x_shape)
        if np.any(x_o != np.round(x_o)) or np.any(x_o < 0) or np.any(x_o > TRIALS):
            raise InvalidInputError(
                f"an SIR observation is 10 high-fidelity counts, integers in [0, {TRIALS}]"
            )
        return x_o

    # ------------------------------------------------------------ reference
    def reference_posterior(
        self, x_o: np.ndarray, num_samples: int, seed: int = 0, cache: bool = True
    ) -> np.ndarray:
        """Reference samples ``(num_samples, 2)`` from a zoomed grid over
        ``(log R0, log gamma)`` (see the module docstring). Cached on disk
        unless ``cache=False``."""
        sampler = {
            "method": "grid_log_r0_log_gamma",
            "version": _REFERENCE_VERSION,
            "resolution": _GRID_RESOLUTION,
        }
        return self._cached_reference(
            self._check_counts(x_o), num_samples, seed, sampler, self._grid_reference, cache
        )

    def log_posterior_grid(self, axes: list[np.ndarray], x_o: np.ndarray) -> np.ndarray:
        """Unnormalised log posterior density in ``(log R0, log gamma)`` on the
        product of ``axes`` (``(A,)`` log R0 values, ``(C,)`` log gamma values);
        returns ``(A, C)``. One ODE solve per ``R0`` (time rescaling)."""
        log_r0, log_gamma = axes
        taus, inverse = np.unique(
            np.exp(log_gamma)[:, None] * HF_TIMES[None, :], return_inverse=True
        )
        infected = solve_sir(np.exp(log_r0), np.ones_like(log_r0), taus)[:, 1, :]
        infected = infected[:, inverse.reshape(log_gamma.size, HF_TIMES.size)]  # (A, C, 10)
        log_lik = _binomial_log_likelihood(infected / POPULATION, x_o)
        a, c = np.meshgrid(log_r0, log_gamma, indexing="ij")
        theta = torch.from_numpy(np.stack([np.exp(a + c).ravel(), np.exp(c).ravel()], axis=1))
        # density of (log beta, log gamma) = p(beta, gamma) beta gamma; the map
        # (log R0, log gamma) -> (log beta, log gamma) has unit Jacobian
        log_prior = self.prior.log_prob(theta).numpy().reshape(a.shape) + 2.0 * c + a
        return log_lik + log_prior

    def _grid_reference(self, x_o: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
        """Samples ``(num_samples, 2)`` of ``(beta, gamma)`` from the grid."""
        box = _PRIOR_BOX_SDS * np.array(_PRIOR_SCALE)
        log_beta = (_PRIOR_LOC[0] - box[0], _PRIOR_LOC[0] + box[0])
        log_gamma = (_PRIOR_LOC[1] - box[1], _PRIOR_LOC[1] + box[1])
        low = [log_beta[0] - log_gamma[1], log_gamma[0]]
        high = [log_beta[1] - log_gamma[0], log_gamma[1]]
        grid = tabulate_on_grid(
            partial(self.log_posterior_grid, x_o=x_o), low, high, resolution=_GRID_RESOLUTION
        )
        log_r0, log_gamma_samples = grid.sample(num_samples, np.random.default_rng(seed)).T
        return np.stack([np.exp(log_r0 + log_gamma_samples), np.exp(log_gamma_samples)], axis=1)
