"""SLCP: simple likelihood, complex posterior.

``theta ~ U(-3, 3)^5``. High fidelity (``"high"``): with ``m = (theta1, theta2)``,
``s1 = theta3^2``, ``s2 = theta4^2``, ``rho = tanh(theta5)`` and::

    Sigma = [[s1^2,        rho s1 s2],
             [rho s1 s2,   s2^2     ]]

``x`` is 4 i.i.d. draws of ``N(m, Sigma)`` flattened to ``(8,)`` as
``(x_11, x_12, x_21, x_22, ...)`` (draw-major). Low fidelity (``"low"``): the
same with ``m = (0, 0)``, so it carries no information on ``theta1, theta2``.

The likelihood depends on ``theta3`` and ``theta4`` only through their squares,
so the posterior is exactly symmetric under ``theta3 -> -theta3`` and
``theta4 -> -theta4``: four mirror-image modes of equal mass.
:meth:`SLCP.mode_balance` measures the sample fraction in each.

Reference posterior (exact up to grid resolution), by collapsing the mean.
Given ``phi = (theta3, theta4, theta5)``, the likelihood of the 4 points is
Gaussian in ``m = (theta1, theta2)``, so with ``xbar`` the points' mean and
``S`` their scatter matrix::

    p(m, phi | x) ∝ 1_box(m) 1_box(phi) c(phi) N(m; xbar, Sigma / 4),
    log c(phi) = -3/2 log|Sigma| - 1/2 tr(Sigma^-1 S) + const.

The sampler (1) tabulates ``c`` on a zoomed grid over the folded box
``(|theta3|, |theta4|, theta5) in [0, 3]^2 x [-3, 3]``
(:func:`~mfask.benchmarks.tasks.reference_samplers.tabulate_on_grid`),
(2) draws ``phi`` from the grid and gives ``theta3`` and ``theta4`` each an
independent random sign, which is exact because ``c`` depends on them only
through their squares, (3) draws ``m ~ N(xbar, Sigma / 4)`` and keeps the pair
only if ``m`` lies in the prior box. Rejecting the *pair* makes the kept pairs
exact draws of the truncated joint: the acceptance probability is the factor
``P(m in box | phi)`` that step (1) leaves out.

Why not plain MCMC/SMC over all five parameters: ``theta2``'s posterior width
is ``theta4^2 / 2`` and can be 1000x smaller than its prior range, and the
modes in ``theta4`` sit close to 0; a likelihood-tempered SMC run here gave
folded-marginal means that varied 10-35 i.i.d. standard errors between seeds
and mode masses off by up to 0.3. Collapsing ``m`` removes the narrow
directions and leaves a smooth 3-D density that a grid handles exactly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mfask.benchmarks.tasks.base import Task
from mfask.benchmarks.tasks.checks import (
    check_fidelity,
    check_observation,
    check_rng,
    check_theta,
)
from mfask.benchmarks.tasks.reference_samplers import tabulate_on_grid
from mfask.priors import BoxUniform, Prior

__all__ = ["SLCP"]

_NAMES = ("theta1", "theta2", "theta3", "theta4", "theta5")
_NUM_DRAWS = 4
_LOG_2PI = math.log(2.0 * math.pi)
_REFERENCE_VERSION = 1
_GRID_RESOLUTION = 160
_MAX_REJECTION_ROUNDS = 200


class SLCP(Task):
    """Simple likelihood, complex posterior; LF drops the mean.

    Shapes: ``theta`` ``(n, 5)``; ``x`` ``(n, 8)``.
    """

    name = "slcp"
    fidelities = ("low", "high")
    parameters_used = {"low": ("theta3", "theta4", "theta5"), "high": _NAMES}

    def __init__(self) -> None:
        self._prior = BoxUniform([-3.0] * 5, [3.0] * 5, names=_NAMES)

    @property
    def prior(self) -> Prior:
        """``U(-3, 3)^5``."""
        return self._prior

    @property
    def x_shape(self) -> tuple[int, ...]:
        """``(8,)``: four 2-D draws, flattened."""
        return (2 * _NUM_DRAWS,)

    @property
    def settings(self) -> dict[str, Any]:
        """No settings (JSON-compatible, for cache keys)."""
        return {}

    def simulate(
        self, theta: np.ndarray, fidelity: str, rng: np.random.Generator
    ) -> np.ndarray:
        """Simulate ``x`` ``(n, 8)`` for ``theta`` ``(n, 5)`` at ``fidelity``."""
        theta = check_theta(theta, 5)
        check_fidelity(fidelity, self.fidelities)
        check_rng(rng)
        terms = _covariance_terms(theta[:, 2:3], theta[:, 3:4], theta[:, 4:5])
        z = rng.standard_normal((theta.shape[0], _NUM_DRAWS, 2))
        first, second = _correlate(terms, z[..., 0], z[..., 1])
        if fidelity == "high":
            first = first + theta[:, 0:1]
            second = second + theta[:, 1:2]
        return np.stack([first, second], axis=2).reshape(theta.shape[0], -1)

    def log_likelihood(self, theta: np.ndarray, x_o: np.ndarray) -> np.ndarray:
        """Exact high-fidelity log-likelihood ``(n,)`` of ``x_o`` ``(8,)``."""
        theta = check_theta(theta, 5)
        points = check_observation(x_o, self.x_shape).reshape(_NUM_DRAWS, 2)
        s1, s2, rho, log_1mr2 = _covariance_terms(theta[:, 2], theta[:, 3], theta[:, 4])
        with np.errstate(divide="ignore", invalid="ignore"):
            z1 = (points[None, :, 0] - theta[:, 0:1]) / s1[:, None]
            z2 = (points[None, :, 1] - theta[:, 1:2]) / s2[:, None]
            quadratic = (z1**2 - 2.0 * rho[:, None] * z1 * z2 + z2**2).sum(axis=1)
            log_norm = _LOG_2PI + np.log(s1) + np.log(s2) + 0.5 * log_1mr2
            return -_NUM_DRAWS * log_norm - 0.5 * quadratic / np.exp(log_1mr2)

    @staticmethod
    def mode_balance(samples: np.ndarray) -> np.ndarray:
        """Fraction of ``samples`` ``(n, 5)`` in each sign quadrant of
        ``(theta3, theta4)``: ``(+,+), (+,-), (-,+), (-,-)``, shape ``(4,)``
        (zero counts as positive). Exactly 1/4 each for the true posterior."""
        samples = check_theta(samples, 5)
        negative3 = samples[:, 2] < 0
        negative4 = samples[:, 3] < 0
        quadrant = 2 * negative3.astype(int) + negative4.astype(int)
        return np.bincount(quadrant, minlength=4) / samples.shape[0]

    def reference_posterior(
        self, x_o: np.ndarray, num_samples: int, seed: int = 0, cache: bool = True
    ) -> np.ndarray:
        """Reference samples ``(num_samples, 5)`` by the collapsed grid sampler
        (see the module docstring). Cached on disk unless ``cache=False``."""
        sampler = {
            "method": "collapsed_grid",
            "version": _REFERENCE_VERSION,
            "resolution": _GRID_RESOLUTION,
        }
        return self._cached_reference(
            check_observation(x_o, self.x_shape), num_samples, seed, sampler,
            self._collapsed_grid_reference, cache,
        )

    def _collapsed_grid_reference(
        self, x_o: np.ndarray, num_samples: int, seed: int
    ) -> np.ndarray:
        """Exact sampler of the module docstring; returns ``(num_samples, 5)``."""
        points = x_o.reshape(_NUM_DRAWS, 2)
        mean = points.mean(axis=0)
        centred = points - mean
        scatter = centred.T @ centred

        def log_c(axes: list[np.ndarray]) -> np.ndarray:
            s1, s2, rho, log_1mr2 = _covariance_terms(*np.meshgrid(*axes, indexing="ij"))
            with np.errstate(divide="ignore"):
                log_det = 2.0 * np.log(s1) + 2.0 * np.log(s2) + log_1mr2
            trace = (
                scatter[0, 0] / s1**2
                - 2.0 * rho * scatter[0, 1] / (s1 * s2)
                + scatter[1, 1] / s2**2
            ) / np.exp(log_1mr2)
            return -1.5 * log_det - 0.5 * trace

        grid = tabulate_on_grid(
            log_c, [0.0, 0.0, -3.0], [3.0, 3.0, 3.0], resolution=_GRID_RESOLUTION
        )
        rng = np.random.default_rng(seed)
        kept: list[np.ndarray] = []
        remaining, acceptance = num_samples, 1.0
        for _ in range(_MAX_REJECTION_ROUNDS):
            batch = int(math.ceil(1.2 * remaining / acceptance)) + 10
            phi = grid.sample(batch, rng)
            phi[:, :2] *= rng.choice([-1.0, 1.0], size=(batch, 2))
            terms = _covariance_terms(phi[:, 0], phi[:, 1], phi[:, 2])
            z = rng.standard_normal((batch, 2))
            # m ~ N(xbar, Sigma / 4): the draw for Sigma, halved
            first, second = _correlate(terms, z[:, 0], z[:, 1])
            theta = np.column_stack([mean[0] + 0.5 * first, mean[1] + 0.5 * second, phi])
            inside = (np.abs(theta[:, :2]) < 3.0).all(axis=1)
            acceptance = max(float(inside.mean()), 1e-3)
            kept.append(theta[inside][:remaining])
            remaining -= kept[-1].shape[0]
            if remaining == 0:
                return np.concatenate(kept)
        raise RuntimeError(
            "SLCP reference: the posterior mean (theta1, theta2) lies almost entirely "
            "outside the prior box; rejection of the truncation did not finish"
        )


_Terms = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _covariance_terms(theta3: np.ndarray, theta4: np.ndarray, theta5: np.ndarray) -> _Terms:
    """``s1 = theta3^2``, ``s2 = theta4^2``, ``rho = tanh(theta5)`` and
    ``log(1 - rho^2)``, elementwise for arrays of one common shape."""
    a = np.abs(theta5)
    # log(1 - tanh(a)^2) = -2 log cosh(a), written to stay finite for large |a|
    log_one_minus_rho2 = -2.0 * (a + np.log1p(np.exp(-2.0 * a)) - math.log(2.0))
    return theta3**2, theta4**2, np.tanh(theta5), log_one_minus_rho2


def _correlate(terms: _Terms, z1: np.ndarray, z2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Turn independent standard normals into a zero-mean ``N(0, Sigma)`` draw
    (the Cholesky factor of ``Sigma``); shapes broadcast."""
    s1, s2, rho, log_one_minus_rho2 = terms
    return s1 * z1, s2 * (rho * z1 + np.exp(0.5 * log_one_minus_rho2) * z2)
