"""The Ornstein-Uhlenbeck task (the paper's main benchmark).

Parameters (``dim`` chooses how many are inferred; the rest are fixed):

======  ==================  =============
name    prior               fixed value
======  ==================  =============
mu      U(0.1, 3.0)         (always inferred)
sigma   U(0.1, 0.6)         (always inferred)
gamma   U(0.1, 1.0)         0.5 (dim 2)
offset  U(0, 4)             3.0 (dim 2, 3)
======  ==================  =============

High fidelity (``"high"``): ``x_0 ~ N(mu + offset, 1)`` and the OU process
``dX = gamma (mu - X) dt + sigma dW`` observed at ``t = 1, ..., 9``, simulated
with the exact Gaussian transition over each unit step::

    X_{t+1} | X_t ~ N(mu + (X_t - mu) a, v),  a = exp(-gamma),
                                               v = sigma^2 (1 - a^2) / (2 gamma)

so :meth:`OrnsteinUhlenbeck.log_likelihood` is the simulator's true likelihood.

Low fidelity (``"low"``): 10 i.i.d. draws of ``N(mu, sigma^2)``; it uses only
``mu`` and ``sigma``.

Reference posterior: for ``dim=2`` a zoomed 500 x 500 grid over the prior box
(:func:`~mfask.benchmarks.tasks.reference_samplers.sample_grid`; exact up to
a piecewise-constant density inside cells far smaller than the posterior);
for ``dim=3, 4`` likelihood-tempered SMC
(:func:`~mfask.benchmarks.tasks.reference_samplers.tempered_smc`) with
``max(4 num_samples, 4000)`` particles, of which ``num_samples`` are returned.
The tests check the SMC against the grid (2-D) and against importance
sampling (3-D).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from mfask.benchmarks.tasks.base import Task
from mfask.benchmarks.tasks.checks import (
    check_fidelity,
    check_observation,
    check_rng,
    check_theta,
)
from mfask.benchmarks.tasks.reference_samplers import sample_grid, tempered_smc
from mfask.errors import InvalidInputError
from mfask.priors import BoxUniform, Prior

__all__ = ["OrnsteinUhlenbeck"]

_NAMES = ("mu", "sigma", "gamma", "offset")
_LOW = (0.1, 0.1, 0.1, 0.0)
_HIGH = (3.0, 0.6, 1.0, 4.0)
_FIXED = {"gamma": 0.5, "offset": 3.0}
_NUM_TIMES = 10
_LOG_2PI = math.log(2.0 * math.pi)
_GRID_VERSION = 1
_SMC_VERSION = 1


class OrnsteinUhlenbeck(Task):
    """Ornstein-Uhlenbeck process vs i.i.d. Gaussian noise.

    Arguments:
        dim: 2 infers ``(mu, sigma)`` as in the paper; 3 adds ``gamma``; 4 adds
            ``gamma`` and ``offset``.

    Shapes: ``theta`` ``(n, dim)``; ``x`` ``(n, 10)``.
    """

    fidelities = ("low", "high")

    def __init__(self, dim: int = 2) -> None:
        if dim not in (2, 3, 4):
            raise InvalidInputError(f"dim must be 2, 3 or 4; got {dim!r}")
        self.dim = dim
        self.name = "ou" if dim == 2 else f"ou{dim}"
        names = _NAMES[:dim]
        self.parameters_used = {"low": ("mu", "sigma"), "high": names}
        self._prior = BoxUniform(_LOW[:dim], _HIGH[:dim], names=names)

    @property
    def prior(self) -> Prior:
        """Box-uniform prior over the ``dim`` inferred parameters."""
        return self._prior

    @property
    def x_shape(self) -> tuple[int, ...]:
        """``(10,)`` for both fidelities."""
        return (_NUM_TIMES,)

    @property
    def settings(self) -> dict[str, Any]:
        """The constructor arguments (JSON-compatible)."""
        return {"dim": self.dim}

    # ---------------------------------------------------------------- model
    def _all_parameters(self, theta: np.ndarray) -> tuple[np.ndarray, ...]:
        """``(mu, sigma, gamma, offset)``, each ``(n,)``, filling in fixed values."""
        columns = [theta[:, i] for i in range(self.dim)]
        for name in _NAMES[self.dim :]:
            columns.append(np.full(theta.shape[0], _FIXED[name]))
        return tuple(columns)

    @staticmethod
    def transition(gamma: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact unit-step transition: the decay ``a = exp(-gamma)`` and the
        variance ``v = sigma^2 (1 - a^2) / (2 gamma)``, each shaped like the inputs.
        Non-positive ``gamma`` gives NaN."""
        with np.errstate(invalid="ignore", divide="ignore"):
            gamma = np.where(gamma > 0, gamma, np.nan)
            decay = np.exp(-gamma)
            variance = sigma**2 * -np.expm1(-2.0 * gamma) / (2.0 * gamma)
        return decay, variance

    def simulate(
        self, theta: np.ndarray, fidelity: str, rng: np.random.Generator
    ) -> np.ndarray:
        """Simulate ``x`` ``(n, 10)`` for ``theta`` ``(n, dim)`` at ``fidelity``."""
        theta = check_theta(theta, self.dim)
        check_fidelity(fidelity, self.fidelities)
        check_rng(rng)
        mu, sigma, gamma, offset = self._all_parameters(theta)
        noise = rng.standard_normal((theta.shape[0], _NUM_TIMES))
        if fidelity == "low":
            return mu[:, None] + sigma[:, None] * noise
        decay, variance = self.transition(gamma, sigma)
        step_sd = np.sqrt(variance)
        x = np.empty((theta.shape[0], _NUM_TIMES))
        x[:, 0] = mu + offset + noise[:, 0]
        for t in range(1, _NUM_TIMES):
            x[:, t] = mu + (x[:, t - 1] - mu) * decay + step_sd * noise[:, t]
        return x

    def log_likelihood(self, theta: np.ndarray, x_o: np.ndarray) -> np.ndarray:
        """Exact high-fidelity log-likelihood ``(n,)`` of ``x_o`` ``(10,)``."""
        theta = check_theta(theta, self.dim)
        x_o = check_observation(x_o, self.x_shape)
        mu, sigma, gamma, offset = self._all_parameters(theta)
        decay, variance = self.transition(gamma, sigma)
        initial = -0.5 * (_LOG_2PI + (x_o[0] - mu - offset) ** 2)
        mean = mu[:, None] + (x_o[None, :-1] - mu[:, None]) * decay[:, None]
        residual = x_o[None, 1:] - mean
        steps = -0.5 * (
            _LOG_2PI + np.log(variance)[:, None] + residual**2 / variance[:, None]
        )
        return initial + steps.sum(axis=1)

    # ------------------------------------------------------------ reference
    def reference_posterior(
        self, x_o: np.ndarray, num_samples: int, seed: int = 0, cache: bool = True
    ) -> np.ndarray:
        """Reference samples ``(num_samples, dim)`` of the posterior at ``x_o``.

        2-D: zoomed 500 x 500 grid; 3-D/4-D: tempered SMC (see the module
        docstring). Cached on disk unless ``cache=False``.
        """
        x_o = check_observation(x_o, self.x_shape)
        if self.dim == 2:
            sampler: dict[str, Any] = {"method": "grid", "version": _GRID_VERSION, "resolution": 500}
            return self._cached_reference(x_o, num_samples, seed, sampler, self._grid_reference, cache)
        num_particles = max(4 * int(num_samples), 4000)
        sampler = {"method": "tempered_smc", "version": _SMC_VERSION, "num_particles": num_particles}

        def compute(x_o: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
            return self._smc_reference(x_o, num_samples, num_particles, seed)

        return self._cached_reference(x_o, num_samples, seed, sampler, compute, cache)

    def _grid_reference(self, x_o: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
        """Grid sampler over the 2-D prior box (the prior is flat inside it)."""

        def log_density(axes: list[np.ndarray]) -> np.ndarray:
            mu, sigma = np.meshgrid(axes[0], axes[1], indexing="ij")
            theta = np.stack([mu.ravel(), sigma.ravel()], axis=1)
            return self.log_likelihood(theta, x_o).reshape(mu.shape)

        rng = np.random.default_rng(seed)
        low, high = (b.numpy() for b in self.prior.bounds)
        return sample_grid(log_density, low, high, num_samples, rng, resolution=500)

    def _smc_reference(
        self, x_o: np.ndarray, num_samples: int, num_particles: int, seed: int
    ) -> np.ndarray:
        """Tempered SMC from prior draws; a random subset of the particles."""
        rng = np.random.default_rng(seed)
        initial = self.sample_prior(num_particles, rng)
        particles = tempered_smc(
            lambda theta: self.log_likelihood(theta, x_o),
            lambda theta: self.prior.log_prob(torch.from_numpy(theta)).numpy(),
            initial,
            rng,
        )
        return particles[rng.permutation(num_particles)[:num_samples]]
