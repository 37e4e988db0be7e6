"""The Lotka-Volterra predator-prey task of the SBI benchmark, in numpy.

``theta = (alpha, beta, gamma, delta)`` with log-normal priors
(``LogNormal(-0.125, 0.5)`` for ``alpha`` and ``gamma``, ``LogNormal(-3,
0.5)`` for ``beta`` and ``delta``), prey ``u`` and predators ``v`` from
``(u, v)(0) = (30, 1)``::

    du/dt = alpha u - beta u v,   dv/dt = -gamma v + delta u v

The model, priors, observation times and noise are those of sbibm's
``lotka_volterra`` task (Lueckmann et al. 2021), so sbibm's stored
observations and reference posteriors apply to data simulated here: the
high fidelity observes both species at ``t = 0, 2.1, ..., 18.9`` (10 points
each) with log-normal noise, ``x ~ LogNormal(log clip(u, 1e-10, 1e4), 0.1)``,
prey first. The ODE is solved with scipy's DOP853 at a relative tolerance of
1e-8, all parameter rows stacked into one system (see
:func:`~mfask.benchmarks.tasks.sir.solve_sir` for why stacking).

The low fidelity solves the same model by 1000 explicit Euler steps of 0.02
(about 10x cheaper, and biased: the cycles drift outward; a median error of
0.25 in log counts against the high fidelity's noise of 0.1, measured on
2000 prior draws), observed the same way.
Failed solves give NaN rows. No reference posterior of its own: the sbibm
suite (``benchmarks/sbibm_suite.py``) scores against sbibm's.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.integrate import solve_ivp
from torch.distributions import LogNormal

from mfask.benchmarks.tasks.base import Task
from mfask.benchmarks.tasks.checks import check_fidelity, check_rng, check_theta
from mfask.priors import IndependentPrior, Prior

__all__ = ["LotkaVolterra", "solve_lotka_volterra"]

INITIAL_STATE = (30.0, 1.0)
OBSERVATION_TIMES = np.arange(10) * 2.1
_EULER_STEP = 0.02
_NOISE = 0.1


def _stacked_rhs(_: float, y: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Right-hand side of ``n`` stacked systems, ``y = (u_1..u_n, v_1..v_n)``;
    ``theta`` ``(n, 4)``."""
    prey, predators = y.reshape(2, -1)
    alpha, beta, gamma, delta = theta.T
    return np.concatenate([alpha * prey - beta * prey * predators,
                           -gamma * predators + delta * prey * predators])


def solve_lotka_volterra(theta: np.ndarray, times: np.ndarray, method: str = "ode",
                         batch_size: int = 500) -> np.ndarray:
    """Prey and predators ``(n, 2, T)`` at ``times`` ``(T,)`` for ``theta`` ``(n, 4)``.

    ``method="ode"``: DOP853, relative tolerance 1e-8 per component (the
    stacked tolerance divided by ``sqrt(2 batch)``, as in ``solve_sir``);
    ``"euler"``: explicit Euler steps of 0.02. Rows with a non-positive or
    non-finite rate, or whose solve fails, are NaN.
    """
    n = len(theta)
    result = np.full((n, 2, times.size), np.nan)
    valid = np.flatnonzero(np.isfinite(theta).all(axis=1) & (theta > 0).all(axis=1))
    for start in range(0, valid.size, batch_size):
        rows = valid[start:start + batch_size]
        y0 = np.repeat(np.asarray(INITIAL_STATE), rows.size)
        if method == "euler":
            result[rows] = _euler(y0, theta[rows], times)
            continue
        shrink = 1.0 / math.sqrt(2 * rows.size)
        solution = solve_ivp(_stacked_rhs, (0.0, float(times[-1])), y0, method="DOP853",
                             t_eval=times, rtol=1e-8 * shrink, atol=1e-8 * shrink,
                             args=(theta[rows],))
        if solution.success:
            result[rows] = solution.y.reshape(2, rows.size, times.size).transpose(1, 0, 2)
    with np.errstate(invalid="ignore"):
        result[~np.isfinite(result).all(axis=(1, 2))] = np.nan
    return result


def _euler(y0: np.ndarray, theta: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Explicit Euler from 0 to ``times[-1]``, read at ``times`` (multiples of the step)."""
    steps = np.rint(times / _EULER_STEP).astype(np.int64)
    out = np.empty((len(theta), 2, times.size))
    y = y0.copy()
    with np.errstate(over="ignore", invalid="ignore"):
        for step in range(int(steps[-1]) + 1):
            for column in np.flatnonzero(steps == step):
                out[:, :, column] = y.reshape(2, -1).T
            y = y + _EULER_STEP * _stacked_rhs(0.0, y, theta)
    return out


class LotkaVolterra(Task):
    """sbibm's Lotka-Volterra model (high fidelity) and an Euler low fidelity."""

    name = "lotka_volterra"
    fidelities = ("low", "high")

    def __init__(self) -> None:
        self._prior = IndependentPrior(
            [LogNormal(-0.125, 0.5), LogNormal(-3.0, 0.5), LogNormal(-0.125, 0.5), LogNormal(-3.0, 0.5)],
            names=["alpha", "beta", "gamma", "delta"],
        )

    @property
    def prior(self) -> Prior:
        return self._prior

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (20,)

    @property
    def settings(self) -> dict[str, Any]:
        return {}

    def simulate(self, theta: Any, fidelity: str, rng: np.random.Generator) -> np.ndarray:
        """Noisy counts ``(n, 20)`` (prey at the 10 times, then predators)."""
        theta = check_theta(theta, 4)
        fidelity = check_fidelity(fidelity, self.fidelities)
        rng = check_rng(rng)
        states = solve_lotka_volterra(theta, OBSERVATION_TIMES,
                                      method="ode" if fidelity == "high" else "euler")
        flat = states.reshape(len(theta), -1)
        failed = np.isnan(flat).any(axis=1)
        log_mean = np.log(np.clip(np.nan_to_num(flat, nan=1.0), 1e-10, 1e4))
        x = np.exp(log_mean + _NOISE * rng.standard_normal(flat.shape))
        x[failed] = np.nan
        return x
