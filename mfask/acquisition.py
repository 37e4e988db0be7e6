"""Active acquisition of high-fidelity parameters (A-MF-TSNPE).

An ensemble of ``K`` posterior estimators ``q_1, ..., q_K`` (fine-tuned from
the same pre-trained weights with different seeds) stands in for the
epistemic uncertainty of the estimator. A parameter is worth simulating where
the members disagree most about the posterior density at the observation::

    score(theta) = Var_k[ q_k(theta | x_o) ]
                 = 1/(K-1) sum_k (q_k(theta | x_o) - mean_j q_j(theta | x_o))^2,

the variance of the *density* (not of the log density), so the score is large
only where the posterior has mass and the members disagree about how much;
far tails, where every member is close to zero, score close to zero even when
the members' log densities differ wildly there.

Each ask with acquisitions scores a pool of candidates and keeps the top
``B`` of them, greedily, subject to an exclusion rule: a candidate closer than
``exclusion_radius`` (in units of the posterior's standard deviation per
parameter) to a pending high-fidelity parameter (asked, not yet told) or to a
candidate already picked for this batch is not eligible. Without it every ask
before the next ``tell`` would return the same maximisers, since the scores
only change when the ensemble is retrained; batch Bayesian optimisers handle
pending evaluations the same way (by penalising or excluding their
neighbourhood).

**Candidate pool.** By default the pool is drawn from the prior truncated to
the current highest-density region (``pool="truncated"``), the distribution
the rest of the batch is drawn from. Compared with a pool drawn from the
full prior (``pool="prior"``, also available):

* every candidate lies in the region that carries the posterior mass, so none
  of the pool is spent where all members are near zero: with the region
  holding a fraction ``P(R)`` of the prior mass, a prior pool of size ``N``
  has only about ``N P(R)`` useful candidates (``P(R)`` is often ``1e-2`` or
  less after a few rounds);
* acquisitions stay inside the support that the truncated proposal and the
  next round's threshold assume, so they cannot put high-fidelity budget on a
  member's spurious far-away mode (leakage of one member), which a prior pool
  can pick because that member's density alone makes the variance large
  there.

A prior pool is the better choice when the region may be too small (e.g. the
posterior estimate is still poor and one wants the ensemble to probe outside
it): it explores where members disagree anywhere under the prior.

Shapes: parameters ``(n, d)`` float64; member log densities ``(K, n)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from mfask.errors import InvalidInputError

__all__ = [
    "AcquisitionConfig",
    "resolve_acquisition",
    "log_ensemble_variance",
    "select_acquisitions",
]

PoolSource = Literal["truncated", "prior"]


@dataclass(frozen=True)
class AcquisitionConfig:
    """How a high-fidelity ask mixes in acquisitions.

    Arguments:
        fraction: share of each batch chosen by acquisition (``round(fraction
            * n)`` rows; the paper uses 20 %); the rest come from the
            truncated prior.
        ensemble_size: ``K``, members of the ensemble at the highest fidelity
            (at least 2: the variance of one member is zero). The level is
            retrained with ``K`` members the first time acquisition is used.
        pool: ``"truncated"`` (candidates from the truncated prior, default)
            or ``"prior"`` (from the full prior); see the module docstring.
        pool_size: number of candidates scored per ask.
        exclusion_radius: candidates closer than this many posterior standard
            deviations (per parameter, Euclidean in those units) to a pending
            high-fidelity parameter or to an earlier pick are not eligible.
    """

    fraction: float = 0.2
    ensemble_size: int = 5
    pool: PoolSource = "truncated"
    pool_size: int = 10_000
    exclusion_radius: float = 0.25

    def __post_init__(self) -> None:
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float)) or not (
            0.0 < self.fraction <= 1.0
        ):
            raise InvalidInputError(f"fraction must be in (0, 1]; got {self.fraction!r}")
        if isinstance(self.ensemble_size, bool) or not isinstance(self.ensemble_size, int) or (
            self.ensemble_size < 2
        ):
            raise InvalidInputError(
                "acquisition needs an ensemble of at least 2 members (the variance across "
                f"one member is zero); got ensemble_size={self.ensemble_size!r}"
            )
        if self.pool not in ("truncated", "prior"):
            raise InvalidInputError(f"pool must be 'truncated' or 'prior'; got {self.pool!r}")
        if isinstance(self.pool_size, bool) or not isinstance(self.pool_size, int) or self.pool_size < 1:
            raise InvalidInputError(f"pool_size must be a positive integer; got {self.pool_size!r}")
        radius = self.exclusion_radius
        if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not (
            0.0 <= radius < math.inf
        ):
            raise InvalidInputError(
                f"exclusion_radius must be a finite number >= 0; got {radius!r}"
            )

    def count(self, n: int) -> int:
        """Acquisitions in a batch of ``n`` rows: ``n * fraction`` rounded half up."""
        return min(n, int(math.floor(n * self.fraction + 0.5)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form (:meth:`from_dict` rebuilds it)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "AcquisitionConfig":
        """Inverse of :meth:`to_dict`."""
        return cls(
            fraction=float(values["fraction"]),
            ensemble_size=int(values["ensemble_size"]),
            pool=values["pool"],
            pool_size=int(values["pool_size"]),
            exclusion_radius=float(values["exclusion_radius"]),
        )


def resolve_acquisition(value: Any, default: AcquisitionConfig | None) -> AcquisitionConfig | None:
    """The acquisition settings of one ask.

    ``None`` means the default (set with ``set_observation``), ``False`` none
    for this ask, ``True`` the default settings (or :class:`AcquisitionConfig`
    defaults), a number in ``(0, 1]`` those settings with that fraction, and an
    :class:`AcquisitionConfig` itself.
    """
    if value is None:
        return default
    if value is False:
        return None
    if value is True:
        return default if default is not None else AcquisitionConfig()
    if isinstance(value, AcquisitionConfig):
        return value
    if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
        base = default if default is not None else AcquisitionConfig()
        return AcquisitionConfig(**{**base.to_dict(), "fraction": float(value)})
    raise InvalidInputError(
        "acquisition must be None, True, False, a fraction in (0, 1] or an "
        f"AcquisitionConfig; got {type(value).__name__}"
    )


def log_ensemble_variance(member_log_probs: Tensor) -> Tensor:
    """``log Var_k[q_k]`` per candidate from the members' log densities.

    Arguments:
        member_log_probs: ``(K, n)`` values ``log q_k(theta_i | x_o)``
            (``-inf`` where a member gives zero density), ``K >= 2``.

    Returns:
        ``(n,)`` float64 log of the unbiased sample variance across members of
        ``q_k(theta_i | x_o)``; ``-inf`` where the variance is zero (all
        members agree exactly, or all give zero density). Computed in log
        space, stable for densities far below or above float range.
    """
    values = torch.as_tensor(member_log_probs).to(torch.float64)
    if values.ndim != 2 or values.shape[0] < 2:
        raise InvalidInputError(
            f"member_log_probs must have shape (K, n) with K >= 2; got {tuple(values.shape)}"
        )
    if torch.isnan(values).any() or (values == math.inf).any():
        raise InvalidInputError("member log densities must not be NaN or +inf")
    shift = values.max(dim=0).values  # (n,)
    finite = torch.isfinite(shift)
    safe_shift = torch.where(finite, shift, torch.zeros_like(shift))
    scaled = torch.exp(values - safe_shift)  # (K, n), max 1 per column where finite
    variance = scaled.var(dim=0, unbiased=True)
    log_variance = torch.log(variance) + 2.0 * safe_shift
    return torch.where(finite, log_variance, torch.full_like(log_variance, -math.inf))


def select_acquisitions(
    candidates: Tensor,
    scores: Tensor,
    count: int,
    *,
    pending: Tensor | None,
    scale: Tensor,
    radius: float,
) -> Tensor:
    """Greedy top-``count`` candidates, each at least ``radius`` away from
    pending parameters and from the earlier picks.

    Arguments:
        candidates: ``(P, d)`` parameters.
        scores: ``(P,)``; higher is better; ``-inf`` or NaN is never picked.
        count: ``B``, the number of picks wanted.
        pending: ``(M, d)`` parameters already asked and not yet told (or ``None``).
        scale: ``(d,)`` positive per-parameter scale; distances are Euclidean
            after dividing each parameter by it.
        radius: exclusion radius in those units (``0`` excludes only exact
            duplicates of pending parameters).

    Returns:
        int64 indices into ``candidates``, at most ``count`` of them (fewer
        when too few eligible candidates remain), in order of selection.
    """
    if candidates.ndim != 2 or scores.shape != (candidates.shape[0],):
        raise InvalidInputError(
            f"candidates must be (P, d) and scores (P,); got {tuple(candidates.shape)} and "
            f"{tuple(scores.shape)}"
        )
    if count < 0:
        raise InvalidInputError(f"count must be >= 0; got {count}")
    scale = torch.as_tensor(scale, dtype=torch.float64)
    if not (scale > 0).all():
        raise InvalidInputError("scale must be positive in every parameter")
    points = (candidates.to(torch.float64) / scale).numpy()
    eligible = np.isfinite(scores.to(torch.float64).numpy())
    if pending is not None and pending.shape[0] and eligible.any():
        tree = cKDTree((pending.to(torch.float64) / scale).numpy())
        distance, _ = tree.query(points, k=1)
        eligible &= distance > radius
    work = scores.to(torch.float64).numpy().copy()
    work[~eligible] = -np.inf
    picks: list[int] = []
    # One vectorised pass over all candidates per pick (B passes, B is small).
    for _ in range(count):
        best = int(np.argmax(work))
        if not np.isfinite(work[best]):
            break
        picks.append(best)
        near = np.linalg.norm(points - points[best], axis=1) <= radius
        near[best] = True
        work[near] = -np.inf
    return torch.as_tensor(picks, dtype=torch.int64)
