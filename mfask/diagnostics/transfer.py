"""Mutual information between fidelities, a predictor of transfer.

Pre-training a posterior estimator on a cheap low-fidelity simulator helps
only if low-fidelity outputs carry information about the high-fidelity ones.
:func:`transfer_diagnostic` measures that as the mutual information between
the low- and high-fidelity outputs simulated at the same parameters; a value
near zero predicts that pre-training will not help.

The estimator is the first algorithm of Kraskov, Stoegbauer and Grassberger
(2004), "Estimating mutual information", Phys. Rev. E 69, 066138. With the
max-norm in every space, ``eps_i`` the distance from point ``i`` to its
``k``-th nearest neighbour in the joint space ``(a, b)``, and ``n_a(i)``,
``n_b(i)`` the numbers of other points strictly closer than ``eps_i`` in the
marginal spaces,

    I(a; b) = psi(k) + psi(N) - mean_i [psi(n_a(i) + 1) + psi(n_b(i) + 1)],

with ``psi`` the digamma function. It assumes continuous data (no repeated
points).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.spatial import cKDTree
from scipy.special import digamma

from mfask.diagnostics._arrays import as_float_array, as_samples, z_score
from mfask.errors import InvalidInputError

__all__ = ["mutual_information_ksg", "transfer_diagnostic"]

# Standard deviation, in z-scored units, of the noise transfer_diagnostic adds
# to break ties between identical outputs (e.g. integer counts).
_TIE_BREAKING_NOISE = 1e-10


def mutual_information_ksg(a: Any, b: Any, *, k: int = 5) -> float:
    """Kraskov-Stoegbauer-Grassberger estimate of ``I(a; b)`` in nats.

    Arguments:
        a: samples of the first variable, shape ``(N, p)`` (or ``(N,)``),
            numpy or torch.
        b: paired samples of the second variable, shape ``(N, q)``.
        k: number of nearest neighbours (``1 <= k < N``). Larger ``k`` lowers
            the variance and raises the bias; 3 to 10 is usual.

    The variables are used as given: the max-norm mixes their coordinates, so
    z-score coordinates of different scales first (as
    :func:`transfer_diagnostic` does).

    Returns:
        The estimate as a Python float. It is not clipped, so it can be
        slightly negative for independent variables.
    """
    a_array = as_samples(a, "a")
    b_array = as_samples(b, "b")
    count = a_array.shape[0]
    if b_array.shape[0] != count:
        raise InvalidInputError(
            f"a and b must have the same number of rows; got {count} and {b_array.shape[0]}"
        )
    if int(k) != k or not 1 <= k < count:
        raise InvalidInputError(f"k must be an integer in [1, N - 1 = {count - 1}]; got {k!r}")
    k = int(k)
    joint = np.concatenate([a_array, b_array], axis=1)
    # Column k of the query is the k-th neighbour (column 0 is the point itself).
    distances, _ = cKDTree(joint).query(joint, k=k + 1, p=np.inf)
    radius = distances[:, k]
    if np.any(radius == 0):
        raise InvalidInputError(
            f"{int(np.sum(radius == 0))} point(s) have at least k={k} exact duplicates "
            "in the joint space; the KSG estimator needs continuous data (add a tiny "
            "noise to break ties)"
        )
    # "Strictly closer than eps": query closed balls of the next smaller float.
    strict = np.nextafter(radius, 0.0)
    n_a = _neighbours_within(a_array, strict)
    n_b = _neighbours_within(b_array, strict)
    estimate = (
        digamma(k) + digamma(count) - np.mean(digamma(n_a + 1) + digamma(n_b + 1))
    )
    return float(estimate)


def transfer_diagnostic(x_low: Any, x_high: Any, k: int = 5, *, seed: int = 0) -> float:
    """Mutual information between low- and high-fidelity outputs, in nats.

    Arguments:
        x_low: low-fidelity outputs, shape ``(N, ...)``, numpy or torch.
        x_high: high-fidelity outputs at the same parameters (row ``i`` of
            both was simulated from the same ``theta_i``), shape ``(N, ...)``.
        k: number of neighbours of the KSG estimator.
        seed: seeds the tie-breaking noise (see below).

    Each output is flattened to a vector; rows where either output has a
    non-finite value (failed simulations) are dropped; every coordinate is
    z-scored with its own mean and standard deviation (constant coordinates
    become 0); and Gaussian noise with standard deviation 1e-10 is added so
    that identical outputs, e.g. of integer-valued simulators, do not break
    the estimator. (That only breaks ties: outputs with few distinct values
    remain outside the estimator's assumption of continuous data, and their
    estimate should be read with care.) Then :func:`mutual_information_ksg`
    is applied.

    Returns:
        The estimated mutual information as a Python float. Values near zero
        predict that pre-training on the low fidelity will not help.
    """
    low = _flatten_rows(x_low, "x_low")
    high = _flatten_rows(x_high, "x_high")
    if low.shape[0] != high.shape[0]:
        raise InvalidInputError(
            f"x_low and x_high must have the same number of rows; got "
            f"{low.shape[0]} and {high.shape[0]}"
        )
    finite = np.isfinite(low).all(axis=1) & np.isfinite(high).all(axis=1)
    if int(finite.sum()) <= k:
        raise InvalidInputError(
            f"only {int(finite.sum())} row(s) have finite outputs at both fidelities; "
            f"the estimator needs more than k={k}"
        )
    low, high = z_score(low[finite]), z_score(high[finite])
    rng = np.random.default_rng(seed)
    low = low + _TIE_BREAKING_NOISE * rng.standard_normal(low.shape)
    high = high + _TIE_BREAKING_NOISE * rng.standard_normal(high.shape)
    return mutual_information_ksg(low, high, k=k)


def _flatten_rows(values: Any, name: str) -> np.ndarray:
    """``(N, ...)`` outputs as an ``(N, prod(...))`` array; non-finite values kept."""
    array = as_float_array(values, name, ndim=None, allow_inf=True, allow_nan=True)
    return array.reshape(array.shape[0], -1)


def _neighbours_within(points: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Number of other points within max-norm ``radius[i]`` of each point ``i``."""
    counts = cKDTree(points).query_ball_point(points, r=radius, p=np.inf, return_length=True)
    return np.asarray(counts) - 1
