"""Maximum mean discrepancy with a Gaussian (RBF) kernel.

With ``k(a, b) = exp(-||a - b||^2 / (2 h^2))`` the biased (V-statistic)
estimate of the squared MMD between samples ``x`` and ``y`` is

    MMD^2 = mean_ij k(x_i, x_j) + mean_ij k(y_i, y_j) - 2 mean_ij k(x_i, y_j),

the squared RKHS distance between the two empirical mean embeddings, so it is
never negative, and it is zero in expectation only up to an ``O(1/n)`` bias
when the distributions agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from mfask.diagnostics._arrays import as_samples
from mfask.errors import InvalidInputError

__all__ = ["mmd_squared", "median_heuristic_bandwidth"]

# Rows of the left operand per block of the kernel matrix: a block holds
# _CHUNK_ROWS * n float64 values (80 MB for n = 10_000).
_CHUNK_ROWS = 1024
# At most this many pooled points enter the median heuristic, so the pairwise
# distances it sorts stay below ~2 million.
_MEDIAN_MAX_POINTS = 2000


def median_heuristic_bandwidth(x: Any, y: Any) -> float:
    """Median pairwise Euclidean distance of the pooled sample ``x`` and ``y``.

    Arguments:
        x: shape ``(n, d)`` (or ``(n,)``), numpy or torch.
        y: shape ``(m, d)``.

    When the pooled sample has more than 2000 points, the median is taken
    over an evenly strided, deterministic subset of 2000 of them (which keeps
    the proportions of ``x`` and ``y``). Returns a Python float.
    """
    pooled = torch.from_numpy(np.concatenate(_pair(x, y)))
    return _median_distance(pooled)


def mmd_squared(x: Any, y: Any, *, bandwidth: float | None = None) -> float:
    """Biased estimate of the squared MMD between two samples, RBF kernel.

    Arguments:
        x: samples of the first distribution, shape ``(n, d)`` (or ``(n,)``
            for ``d = 1``), numpy or torch.
        y: samples of the second distribution, shape ``(m, d)``.
        bandwidth: kernel length scale ``h`` (> 0). ``None`` uses the median
            heuristic, :func:`median_heuristic_bandwidth` of ``x`` and ``y``.

    The kernel matrices are computed in blocks of 1024 rows, so memory is
    ``O(1024 * max(n, m))`` and 10 000 samples per set are fine.

    Returns:
        The estimate as a Python float (>= 0 up to rounding).
    """
    x_array, y_array = _pair(x, y)
    x_tensor = torch.from_numpy(x_array)
    y_tensor = torch.from_numpy(y_array)
    if bandwidth is None:
        bandwidth = _median_distance(torch.cat([x_tensor, y_tensor]))
        if bandwidth == 0.0:
            raise InvalidInputError(
                "the median pairwise distance of the pooled sample is 0 (most "
                "points coincide); pass a bandwidth explicitly"
            )
    else:
        bandwidth = float(bandwidth)
        if not (np.isfinite(bandwidth) and bandwidth > 0):
            raise InvalidInputError(f"bandwidth must be finite and > 0; got {bandwidth}")
    value = (
        _mean_kernel(x_tensor, x_tensor, bandwidth)
        + _mean_kernel(y_tensor, y_tensor, bandwidth)
        - 2.0 * _mean_kernel(x_tensor, y_tensor, bandwidth)
    )
    return float(value)


def _pair(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate two sample sets of equal dimension, as ``(n, d)`` arrays."""
    x_array = as_samples(x, "x")
    y_array = as_samples(y, "y")
    if x_array.shape[1] != y_array.shape[1]:
        raise InvalidInputError(
            f"x and y must have the same dimension; got {x_array.shape[1]} and "
            f"{y_array.shape[1]}"
        )
    return x_array, y_array


def _median_distance(pooled: Tensor) -> float:
    """Median of the distinct-pair Euclidean distances of ``pooled`` ``(N, d)``."""
    if len(pooled) < 2:
        raise InvalidInputError("the median heuristic needs at least 2 points")
    if len(pooled) > _MEDIAN_MAX_POINTS:
        index = torch.linspace(0, len(pooled) - 1, _MEDIAN_MAX_POINTS).round().long()
        pooled = pooled[index]
    distances = torch.cdist(pooled, pooled)
    upper = torch.triu_indices(len(pooled), len(pooled), offset=1)
    return float(torch.quantile(distances[upper[0], upper[1]], 0.5))


def _mean_kernel(a: Tensor, b: Tensor, bandwidth: float) -> Tensor:
    """Mean of the RBF kernel matrix between ``a`` ``(n, d)`` and ``b`` ``(m, d)``."""
    total = torch.zeros((), dtype=torch.float64)
    scale = -0.5 / bandwidth**2
    for start in range(0, len(a), _CHUNK_ROWS):
        block = torch.cdist(a[start : start + _CHUNK_ROWS], b)
        total = total + block.square_().mul_(scale).exp_().sum()
    return total / (len(a) * len(b))
