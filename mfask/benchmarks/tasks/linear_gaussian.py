"""A linear-Gaussian task with an analytic posterior at every fidelity.

``theta ~ N(0, I_d)``; fidelity ``f`` simulates ``x = a_f theta + c_f + s_f eps``
with ``eps ~ N(0, I_d)`` (elementwise). The posterior is Gaussian and
independent across dimensions:

    precision = 1 + a^2 / s^2,   mean = (a (x - c) / s^2) / precision.

With the defaults the low fidelity (``a = 1, c = 0, s = 0.5``) is informative
but biased for the high fidelity (``a = 1.3, c = 0.4, s = 0.5``): its posterior
at a given ``x`` is shifted and too wide, so pre-training on it teaches the
shape of the problem but not the answer. That makes it the test bed for
"MF-NPE beats NPE on few high-fidelity simulations" with an exact reference.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from mfask.benchmarks.tasks.base import Task
from mfask.benchmarks.tasks.checks import check_fidelity, check_observation, check_rng, check_theta
from mfask.priors import IndependentPrior, Prior

__all__ = ["LinearGaussian"]


class LinearGaussian(Task):
    """Linear-Gaussian simulators ``x = a theta + c + s eps`` per fidelity.

    Arguments:
        dim: number of parameters ``d`` (and of outputs).
        coefficients: per fidelity name (ordered low to high), ``(a, c, s)``.
    """

    name = "linear_gaussian"

    def __init__(
        self,
        dim: int = 2,
        coefficients: dict[str, tuple[float, float, float]] | None = None,
    ) -> None:
        self.dim = int(dim)
        self.coefficients = dict(
            coefficients or {"low": (1.0, 0.0, 0.5), "high": (1.3, 0.4, 0.5)}
        )
        self.fidelities = tuple(self.coefficients)
        zero, one = torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
        self._prior = IndependentPrior(
            [torch.distributions.Normal(zero, one) for _ in range(self.dim)],
            names=[f"theta_{i}" for i in range(self.dim)],
        )

    @property
    def prior(self) -> Prior:
        return self._prior

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    def simulate(self, theta: Any, fidelity: str, rng: np.random.Generator) -> np.ndarray:
        theta = check_theta(theta, self.dim)
        a, c, s = self.coefficients[check_fidelity(fidelity, self.fidelities)]
        return a * theta + c + s * check_rng(rng).standard_normal(theta.shape)

    def posterior_mean_std(self, x_o: Any, fidelity: str | None = None) -> tuple[np.ndarray, float]:
        """The analytic posterior at ``x_o``: mean ``(d,)`` and the common std."""
        a, c, s = self.coefficients[fidelity or self.fidelities[-1]]
        x_o = check_observation(x_o, self.x_shape)
        precision = 1.0 + a**2 / s**2
        return (a * (x_o - c) / s**2) / precision, 1.0 / math.sqrt(precision)

    def posterior_log_prob(self, theta: Any, x: Any, fidelity: str | None = None) -> np.ndarray:
        """Exact ``log p(theta_i | x_i)`` for paired rows ``(n, d)``, ``(n, d)`` -> ``(n,)``."""
        a, c, s = self.coefficients[fidelity or self.fidelities[-1]]
        theta, x = check_theta(theta, self.dim), check_theta(x, self.dim)
        precision = 1.0 + a**2 / s**2
        mean = (a * (x - c) / s**2) / precision
        return (
            -0.5 * precision * ((theta - mean) ** 2).sum(axis=1)
            + 0.5 * self.dim * math.log(precision / (2 * math.pi))
        )

    def log_likelihood(self, theta: Any, x_o: Any) -> np.ndarray:
        a, c, s = self.coefficients[self.fidelities[-1]]
        theta = check_theta(theta, self.dim)
        x_o = check_observation(x_o, self.x_shape)
        residual = (x_o - a * theta - c) / s
        return -0.5 * (residual**2).sum(axis=1) - self.dim * math.log(s * math.sqrt(2 * math.pi))

    def reference_posterior(self, x_o: Any, num_samples: int, seed: int = 0) -> np.ndarray:
        mean, std = self.posterior_mean_std(x_o)
        return mean + std * np.random.default_rng(seed).standard_normal((num_samples, self.dim))
