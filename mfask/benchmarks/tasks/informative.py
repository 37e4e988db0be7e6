"""Informative data on a wide box prior, with exact posteriors.

``theta ~ U(-1, 1)^d`` and, per fidelity, ``x_i = g(theta_i) + s_f eps_i``
(``eps ~ N(0, I_d)``), independently per axis. The noise of the high fidelity
is set from the share of the prior box the posterior covers:
``s = fraction^(1/d) / 2``, so that the box of +-2 noise sds around the truth
is ``fraction`` of the prior's volume. ``fraction`` from 1e-2 down to 1e-6 in
2 to 10 dimensions spans posteriors 4 to 1000 times narrower per axis than
the prior: the normal case of informative data in science.

Two links: ``"linear"`` (``g(t) = t``, a posterior that is a normal cut by the
box) and ``"cubic"`` (``g(t) = t + t^3``, monotone, so the posterior's width
changes fourfold across the box and it is skewed near the edges). The low
fidelity doubles the noise (an informative but wider posterior).

The posterior factorises over axes; each axis is computed on a fine grid over
+-12 noise sds around the truth's estimate, so references, means and standard
deviations are exact up to the grid (1e-4 of the posterior's width).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from mfask.benchmarks.tasks.base import Task
from mfask.benchmarks.tasks.checks import check_fidelity, check_observation, check_rng, check_theta
from mfask.errors import InvalidInputError
from mfask.priors import BoxUniform, Prior

__all__ = ["InformativeBox", "Link"]

Link = Literal["linear", "cubic"]
_GRID_POINTS = 8001
_GRID_HALF_WIDTH = 12.0  # in noise sds (g' >= 1, so also >= 12 posterior sds)


def _link(theta: np.ndarray, link: Link) -> np.ndarray:
    return theta if link == "linear" else theta + theta**3


class InformativeBox(Task):
    """Informative likelihood ``x = g(theta) + s eps`` on the box ``[-1, 1]^d``.

    Arguments:
        dim: parameters ``d`` (2 to 10 in the benchmarks).
        fraction: share of the prior's volume the high-fidelity posterior
            covers (see the module docstring), in (0, 1).
        link: ``"linear"`` or ``"cubic"``.
    """

    fidelities = ("low", "high")

    def __init__(self, dim: int = 3, fraction: float = 1e-4, link: Link = "linear") -> None:
        if not (isinstance(dim, int) and dim >= 1):
            raise InvalidInputError(f"dim must be a positive integer; got {dim!r}")
        if not 0 < fraction < 1:
            raise InvalidInputError(f"fraction must be in (0, 1); got {fraction!r}")
        if link not in ("linear", "cubic"):
            raise InvalidInputError(f"link must be 'linear' or 'cubic'; got {link!r}")
        self.dim, self.fraction, self.link = dim, float(fraction), link
        self.noise = {"high": fraction ** (1.0 / dim) / 2.0}
        self.noise["low"] = 2.0 * self.noise["high"]
        self.name = f"informative_{link}_{dim}d_{fraction:.0e}"
        self._prior = BoxUniform(low=[-1.0] * dim, high=[1.0] * dim,
                                 names=[f"theta_{i}" for i in range(dim)])

    @property
    def prior(self) -> Prior:
        return self._prior

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    def simulate(self, theta: Any, fidelity: str, rng: np.random.Generator) -> np.ndarray:
        theta = check_theta(theta, self.dim)
        noise = self.noise[check_fidelity(fidelity, self.fidelities)]
        return _link(theta, self.link) + noise * check_rng(rng).standard_normal(theta.shape)

    def log_likelihood(self, theta: Any, x_o: Any) -> np.ndarray:
        theta = check_theta(theta, self.dim)
        x_o = check_observation(x_o, self.x_shape)
        s = self.noise["high"]
        residual = (x_o - _link(theta, self.link)) / s
        return -0.5 * (residual**2).sum(axis=1) - self.dim * math.log(s * math.sqrt(2 * math.pi))

    def _axis_grids(self, x_o: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per axis, a grid ``(d, G)`` over the posterior's support and its
        normalised density on that grid ``(d, G)`` (trapezoid rule)."""
        s = self.noise["high"]
        estimate = np.clip(self._inverse_link(x_o), -1.0, 1.0)
        low = np.maximum(-1.0, estimate - _GRID_HALF_WIDTH * s)
        high = np.minimum(1.0, estimate + _GRID_HALF_WIDTH * s)
        unit = np.linspace(0.0, 1.0, _GRID_POINTS)
        grid = low[:, None] + (high - low)[:, None] * unit[None, :]
        log_density = -0.5 * ((x_o[:, None] - _link(grid, self.link)) / s) ** 2
        density = np.exp(log_density - log_density.max(axis=1, keepdims=True))
        step = (high - low)[:, None] / (_GRID_POINTS - 1)
        mass = (0.5 * (density[:, 1:] + density[:, :-1]) * step).sum(axis=1, keepdims=True)
        return grid, density / mass

    def _inverse_link(self, x: np.ndarray) -> np.ndarray:
        if self.link == "linear":
            return x
        # the real root of t^3 + t - x = 0 (Cardano; one real root since g' > 0)
        root = np.sqrt(x**2 / 4 + 1 / 27)
        return np.cbrt(x / 2 + root) + np.cbrt(x / 2 - root)

    def posterior_moments(self, x_o: Any) -> tuple[np.ndarray, np.ndarray]:
        """Exact posterior mean and standard deviation per axis, each ``(d,)``."""
        x_o = check_observation(x_o, self.x_shape)
        grid, density = self._axis_grids(x_o)
        weights = np.full(grid.shape[1], 1.0)
        weights[[0, -1]] = 0.5  # trapezoid rule: the edges of a cut posterior carry density
        weights = weights[None, :] * (grid[:, 1:2] - grid[:, 0:1]) * density
        mean = (weights * grid).sum(axis=1)
        variance = (weights * (grid - mean[:, None]) ** 2).sum(axis=1)
        return mean, np.sqrt(variance)

    def reference_posterior(self, x_o: Any, num_samples: int, seed: int = 0) -> np.ndarray:
        """Exact samples ``(num_samples, d)`` by the inverse CDF of each axis."""
        x_o = check_observation(x_o, self.x_shape)
        grid, density = self._axis_grids(x_o)
        step = grid[:, 1] - grid[:, 0]
        cdf = np.concatenate([np.zeros((self.dim, 1)),
                              np.cumsum(0.5 * (density[:, 1:] + density[:, :-1]), axis=1)
                              * step[:, None]], axis=1)
        cdf /= cdf[:, -1:]
        uniforms = np.random.default_rng(seed).uniform(size=(num_samples, self.dim))
        return np.stack([np.interp(uniforms[:, i], cdf[i], grid[i]) for i in range(self.dim)], axis=1)

    def share_within(self, samples: np.ndarray, x_o: Any, num_sds: float = 5.0) -> float:
        """Share of ``samples (n, d)`` within ``num_sds`` exact posterior sds of
        the exact posterior mean on every axis."""
        mean, sd = self.posterior_moments(x_o)
        inside = np.abs(np.asarray(samples) - mean) <= num_sds * sd
        return float(inside.all(axis=1).mean())

