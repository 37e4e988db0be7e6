"""Multi-fidelity ABC (Prescott and Baker), the baseline MF-NPE is compared with.

Rejection ABC with an early decision on a cheap low-fidelity (LF) simulation
and a random continuation to the expensive high-fidelity (HF) one. For each
prior draw ``theta_i``:

1. run LF, distance ``d_L,i``; early decision ``a_L,i = 1[d_L,i < eps_L]``;
2. continue with probability ``eta_i`` (``eta_accept = 0.9`` if ``a_L,i``,
   ``eta_reject = 0.3`` otherwise); if continued, run HF, distance ``d_H,i``,
   ``a_H,i = 1[d_H,i < eps_H]``;
3. weight ``w_i = a_L,i + c_i (a_H,i - a_L,i) / eta_i`` (``c_i`` = continued),
   whose expectation over the continuation coin is the HF acceptance
   ``a_H,i``: the weighted sample targets the HF ABC posterior;
4. clamp negative weights to 0 (this trades a little bias for less variance,
   as in Prescott and Baker), normalise; :meth:`MFABCResult.resample` draws
   posterior samples from the weighted draws.

Choices this module makes (the method leaves them open):

* **Distance.** The root-mean-square difference of z-scored summaries,
  ``d = sqrt(mean_k ((s_k - s_o,k) / sd_k)^2)``, the summaries being the
  flattened simulator outputs. Each fidelity is z-scored with the statistics
  of its own simulations (mean and std per summary; zero-spread summaries are
  only centred): LF with the LF pool, HF with the HF runs each weighted by
  ``1 / eta_i``, the inverse of its probability of being run, so that the HF
  statistics estimate the prior predictive rather than the continued subset.
* **Thresholds.** ``eps_L`` and ``eps_H`` are the ``quantile`` of the
  distances: ``eps_L`` of the LF pool's, ``eps_H`` of the HF runs' weighted
  by ``1 / eta_i`` (again an estimate under the prior predictive). The
  threshold is put halfway between the last distance inside the quantile and
  the next one, so ``d < eps`` accepts exactly the closest draws whose
  (weighted) share reaches ``quantile``.
* **Budget.** ``num_high`` is the exact number of HF runs. A pool of
  ``num_low`` prior draws is run at LF first (it sets ``eps_L`` and the LF
  z-scoring); draws are then processed in order, flipping the continuation
  coin, until ``num_high`` have been continued; if the pool runs out, more
  prior draws are run at LF (with ``eps_L`` and the LF statistics kept). Only
  the processed draws enter the posterior. Stopping at a fixed number of HF
  runs makes the number of draws random (negative-binomial-like); the
  self-normalised estimate then has an ``O(1 / num_high)`` bias, the same
  order as that of any self-normalised importance estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from mfask.errors import InvalidInputError

__all__ = ["MFABCResult", "mf_abc", "weighted_quantile_threshold"]

#: ``simulate(theta (n, d)) -> x (n, *x_shape)``
Simulator = Callable[[np.ndarray], np.ndarray]
#: ``sample_prior(n) -> theta (n, d)``
PriorSampler = Callable[[int], np.ndarray]


@dataclass(frozen=True)
class MFABCResult:
    """The outcome of one MF-ABC run at one observation.

    Attributes:
        theta: ``(N, d)`` the processed prior draws.
        weights: ``(N,)`` normalised non-negative weights.
        continued: ``(N,)`` bool, whether the draw was run at HF.
        distance_low: ``(N,)`` LF distances.
        distance_high: ``(N,)`` HF distances (NaN where not continued).
        eps_low, eps_high: the thresholds.
        num_low: LF simulations run (pool and any extension).
        num_high: HF simulations run.
    """

    theta: np.ndarray
    weights: np.ndarray
    continued: np.ndarray
    distance_low: np.ndarray
    distance_high: np.ndarray
    eps_low: float
    eps_high: float
    num_low: int
    num_high: int

    @property
    def effective_sample_size(self) -> float:
        """Kish's effective sample size ``(sum w)^2 / sum w^2`` of the weights."""
        return float(self.weights.sum() ** 2 / np.sum(self.weights**2))

    def resample(self, num_samples: int, rng: np.random.Generator) -> np.ndarray:
        """``(num_samples, d)`` posterior samples: draws of ``theta`` with
        replacement, with probabilities ``weights``."""
        index = rng.choice(self.theta.shape[0], size=int(num_samples), replace=True, p=self.weights)
        return self.theta[index]


def weighted_quantile_threshold(
    distances: np.ndarray, quantile: float, weights: np.ndarray | None = None
) -> float:
    """Threshold ``eps`` such that ``distances < eps`` selects the closest
    points whose share of the total weight first reaches ``quantile``.

    Arguments:
        distances: ``(n,)`` finite distances.
        quantile: in ``(0, 1]``.
        weights: ``(n,)`` non-negative weights (all ones when ``None``).

    Returns:
        The midpoint between the last selected distance and the next larger
        one (the last selected distance plus a tiny margin if it is the
        largest).
    """
    d = np.asarray(distances, dtype=np.float64)
    w = np.ones_like(d) if weights is None else np.asarray(weights, dtype=np.float64)
    if d.ndim != 1 or d.size == 0 or w.shape != d.shape:
        raise InvalidInputError(
            f"distances must be a non-empty 1-D array with weights of the same shape; "
            f"got {d.shape} and {w.shape}"
        )
    if not 0 < quantile <= 1:
        raise InvalidInputError(f"quantile must be in (0, 1]; got {quantile!r}")
    order = np.argsort(d, kind="stable")
    cumulative = np.cumsum(w[order])
    last = int(np.searchsorted(cumulative, quantile * cumulative[-1] * (1 - 1e-12)))
    last = min(last, d.size - 1)
    inside = d[order[last]]
    if last + 1 < d.size:
        return float(0.5 * (inside + d[order[last + 1]]))
    return float(np.nextafter(inside, np.inf))


def _distances(
    x: np.ndarray, x_o: np.ndarray, weights: np.ndarray | None = None,
    statistics: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """RMSE distances ``(n,)`` between z-scored summaries ``x (n, k)`` and
    ``x_o (k,)``, and the ``(mean, std)`` used (computed from ``x`` with
    ``weights`` unless ``statistics`` is given)."""
    if statistics is None:
        w = np.ones(x.shape[0]) if weights is None else weights
        mean = np.average(x, axis=0, weights=w)
        std = np.sqrt(np.average((x - mean) ** 2, axis=0, weights=w))
        statistics = (mean, np.where(std > 0, std, 1.0))
    mean, std = statistics
    z = (x - mean) / std
    z_o = (x_o - mean) / std
    return np.sqrt(np.mean((z - z_o) ** 2, axis=1)), statistics


def mf_abc(
    simulate_low: Simulator,
    simulate_high: Simulator,
    sample_prior: PriorSampler,
    x_o: np.ndarray,
    *,
    num_low: int,
    num_high: int,
    rng: np.random.Generator,
    quantile: float = 0.1,
    eta_accept: float = 0.9,
    eta_reject: float = 0.3,
) -> MFABCResult:
    """Run MF-ABC at one observation (see the module docstring).

    Arguments:
        simulate_low, simulate_high: ``theta (n, d) -> x (n, *x_shape)``; a
            row with NaN/inf counts as a simulation that never gets accepted.
        sample_prior: ``n -> theta (n, d)``.
        x_o: one observation ``(*x_shape)``.
        num_low: size of the LF pool (LF simulations run up front).
        num_high: exact number of HF simulations.
        rng: drives the continuation coins (the simulators and the prior
            sampler carry their own randomness).
        quantile: acceptance quantile for ``eps_L`` and ``eps_H``.
        eta_accept, eta_reject: continuation probabilities after an LF
            accept / reject.
    """
    for name, value in (("num_low", num_low), ("num_high", num_high)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidInputError(f"{name} must be a positive integer; got {value!r}")
    if not (0 < eta_accept <= 1 and 0 < eta_reject <= 1):
        raise InvalidInputError(
            f"continuation probabilities must be in (0, 1]; got {eta_accept!r}, {eta_reject!r}"
        )
    x_o = np.asarray(x_o, dtype=np.float64).reshape(-1)

    def low_distances(theta: np.ndarray, statistics: tuple[np.ndarray, np.ndarray] | None):
        x = np.asarray(simulate_low(theta), dtype=np.float64).reshape(theta.shape[0], -1)
        bad = ~np.isfinite(x).all(axis=1)
        if bad.all():
            raise InvalidInputError("every low-fidelity simulation failed (NaN/inf)")
        d = np.full(theta.shape[0], np.inf)
        d[~bad], statistics = _distances(x[~bad], x_o, statistics=statistics)
        return d, statistics

    # 1. the LF pool: eps_L and the LF z-scoring
    theta = np.asarray(sample_prior(int(num_low)), dtype=np.float64)
    d_low, low_statistics = low_distances(theta, None)
    finite = np.isfinite(d_low)
    eps_low = weighted_quantile_threshold(d_low[finite], quantile)
    lf_runs = theta.shape[0]

    # 2. continuation coins in draw order, extending the pool if needed
    eta = np.where(d_low < eps_low, eta_accept, eta_reject)
    coins = rng.random(theta.shape[0]) < eta
    while coins.sum() < num_high:
        missing = num_high - int(coins.sum())
        extra = max(16, math.ceil(1.2 * missing / float(np.mean(eta))))
        theta_new = np.asarray(sample_prior(extra), dtype=np.float64)
        d_new, _ = low_distances(theta_new, low_statistics)
        eta_new = np.where(d_new < eps_low, eta_accept, eta_reject)
        theta = np.concatenate([theta, theta_new])
        d_low = np.concatenate([d_low, d_new])
        eta = np.concatenate([eta, eta_new])
        coins = np.concatenate([coins, rng.random(extra) < eta_new])
        lf_runs += extra
    stop = int(np.flatnonzero(np.cumsum(coins) == num_high)[0]) + 1
    theta, d_low, eta, coins = theta[:stop], d_low[:stop], eta[:stop], coins[:stop]

    # 3. HF runs for the continued draws, z-scored and thresholded with 1/eta weights
    x_high = np.asarray(simulate_high(theta[coins]), dtype=np.float64).reshape(int(num_high), -1)
    good = np.isfinite(x_high).all(axis=1)
    if not good.any():
        raise InvalidInputError("every high-fidelity simulation failed (NaN/inf)")
    inverse_eta = 1.0 / eta[coins]
    d_run = np.full(int(num_high), np.inf)
    d_run[good], _ = _distances(x_high[good], x_o, weights=inverse_eta[good])
    eps_high = weighted_quantile_threshold(d_run[good], quantile, inverse_eta[good])
    d_high = np.full(stop, np.nan)
    d_high[coins] = d_run

    # 4. weights, clamp, normalise
    accept_low = (d_low < eps_low).astype(np.float64)
    weights = accept_low.copy()
    weights[coins] += ((d_run < eps_high).astype(np.float64) - accept_low[coins]) / eta[coins]
    weights = np.clip(weights, 0.0, None)
    weights /= weights.sum()  # > 0: the closest HF run is always accepted
    return MFABCResult(
        theta=theta,
        weights=weights,
        continued=coins,
        distance_low=d_low,
        distance_high=d_high,
        eps_low=eps_low,
        eps_high=eps_high,
        num_low=int(lf_runs),
        num_high=int(num_high),
    )
