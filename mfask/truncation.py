"""The prior truncated to a posterior estimate's highest-density region.

Truncated sequential NPE (TSNPE) proposes, in each round after the first, from
the prior restricted to the highest-density region of the current posterior
estimate ``q(theta | x_o)``::

    R = {theta : log q(theta | x_o) >= tau},

where ``tau`` is a low quantile (default ``1e-4``) of ``log q`` over samples
drawn from ``q`` itself, so that ``R`` holds about ``1 - 1e-4`` of ``q``'s mass.
:func:`hpd_threshold` computes ``tau``; :class:`TruncatedPrior` draws from the
prior restricted to ``R`` (density proportional to ``p(theta) 1[theta in R]``).

Drawing from the prior and keeping the draws inside ``R`` costs ``1 / P(R)``
log-density evaluations per draw, which is prohibitive once ``R`` covers a
tiny fraction of the prior mass (``1e4`` evaluations per draw at ``1e-4``).
:class:`TruncatedPrior` instead rejects from the prior restricted to a box
around ``R``, which it draws exactly through the marginal inverse CDFs; see the
class docstring for why the result is exact and what the residual risk is.

Shapes: parameters are float64 tensors of shape ``(n, d)``; log densities are
``(n,)``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch
from torch import Tensor

from mfask.errors import InvalidInputError, MfaskError
from mfask.priors import Prior, as_theta_tensor

__all__ = [
    "hpd_threshold",
    "TruncatedPrior",
    "TruncationStats",
    "TruncationError",
    "TruncationWarning",
]

LogDensity = Callable[[Tensor], Tensor]
"""A log density: float64 parameters ``(n, d)`` to log densities ``(n,)``."""

_MAX_EXTRAPOLATION = 2.0
"""Cap on how far a proposal sample is pushed out when placing the first box."""

_MAX_BOX_MASS = 0.5
"""A box holding at least this prior mass saves at most a factor 1 / 0.5 over
plain rejection, which needs no validation: use plain rejection instead."""

_MIN_CHUNK = 256
"""Fewest proposals drawn at once."""


class TruncationError(MfaskError, RuntimeError):
    """The truncated prior could not produce the requested draws within its
    evaluation budget (typically because the region is empty or far smaller
    than expected).

    Attributes:
        stats: the :class:`TruncationStats` of the failed call.
    """

    def __init__(self, message: str, stats: "TruncationStats") -> None:
        super().__init__(message)
        self.stats = stats


class TruncationWarning(UserWarning):
    """A truncation result that is usable but should be treated with care."""


# ----------------------------------------------------------------- threshold
def hpd_threshold(log_prob_of_own_samples: Tensor, quantile: float = 1e-4) -> float:
    """The log-density level ``tau`` of the highest-density region of ``q``.

    ``tau`` is the ``quantile`` quantile of ``log q(theta_j)`` over samples
    ``theta_j ~ q``, so that ``R = {log q >= tau}`` holds about ``1 - quantile``
    of ``q``'s mass. The estimate is the empirical quantile with linear
    interpolation between order statistics (numpy's default). The fraction of
    ``q``'s mass below the estimated ``tau`` is Beta-distributed around
    ``quantile`` with relative standard deviation about ``1 / sqrt(m * quantile)``,
    so a threshold at ``1e-4`` needs ``m`` of order ``1e6`` for a 10 % error.

    Arguments:
        log_prob_of_own_samples: ``log q`` at ``m`` samples drawn from ``q``,
            shape ``(m,)`` (or ``(m, 1)``); all finite.
        quantile: in ``(0, 1)``.

    Returns:
        ``tau`` as a Python float.

    Raises:
        InvalidInputError: ``quantile`` outside ``(0, 1)``, fewer than two
            values, a wrong shape, or non-finite values.

    Warns:
        TruncationWarning: when ``m * quantile < 1``: fewer than one sample is
            expected below the quantile, so the estimate is set by the lowest
            one or two values and the mass of ``q`` outside ``R`` can differ
            from ``quantile`` by a large factor.
    """
    if isinstance(quantile, bool) or not isinstance(quantile, (int, float)):
        raise InvalidInputError(f"quantile must be a float in (0, 1); got {quantile!r}")
    if not 0.0 < float(quantile) < 1.0:
        raise InvalidInputError(
            f"quantile must lie strictly between 0 and 1; got {quantile}"
        )
    try:
        values = torch.as_tensor(log_prob_of_own_samples).detach()
        values = values.to(device="cpu", dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as error:
        raise InvalidInputError(
            f"log_prob_of_own_samples must be a numeric tensor of shape (m,); {error}"
        ) from None
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise InvalidInputError(
            "log_prob_of_own_samples must have shape (m,); got shape "
            f"{tuple(values.shape)}"
        )
    m = values.shape[0]
    if m < 2:
        raise InvalidInputError(
            f"need at least 2 log-density values to estimate a quantile; got {m}"
        )
    if not torch.isfinite(values).all():
        bad = int((~torch.isfinite(values)).sum())
        raise InvalidInputError(
            f"log_prob_of_own_samples has {bad} non-finite value(s); log q at "
            "samples drawn from q must be finite"
        )
    if m * quantile < 1.0:
        warnings.warn(
            f"hpd_threshold: {m} samples for quantile {quantile} means m * quantile "
            f"= {m * quantile:.3g} < 1 sample is expected below the quantile, so the "
            "threshold is set by the lowest one or two values and the q-mass outside "
            "the region can differ from the quantile by a large factor; draw at "
            f"least {math.ceil(10 / quantile)} samples for a threshold within about "
            "30 %",
            TruncationWarning,
            stacklevel=2,
        )
    return float(np.quantile(values.numpy(), float(quantile)))


# --------------------------------------------------------------------- stats
@dataclass(frozen=True)
class TruncationStats:
    """What one :meth:`TruncatedPrior.sample` call cost.

    Attributes:
        method: ``"box"`` (prior restricted to a box around the region, drawn
            through marginal inverse CDFs) or ``"rejection"`` (plain prior).
        requested: draws asked for.
        returned: draws returned.
        evaluations: rows passed to the log density in this call, including
            draws discarded by box restarts and surplus draws.
        proposals: parameter vectors drawn in this call (a few more than
            ``evaluations`` when rounding put some outside the support).
        accepted: proposals with ``log_density >= threshold`` in this call,
            including discarded and surplus ones.
        restarts: times the box was found too small and rebuilt in this call.
        box_prior_mass: prior mass of the current box (its volume fraction
            for a uniform prior); 1.0 for rejection.
        region_prior_mass: estimate of the prior mass of the region,
            ``box_prior_mass`` times the acceptance rate of all draws from
            the current box (over all calls since it was built).
        region_prior_mass_stderr: binomial standard error of that estimate.
        validated: whether the current box has produced at least
            ``min_validation_draws`` accepted draws with none in its guard band
            (always True for rejection).
    """

    method: Literal["box", "rejection"]
    requested: int
    returned: int
    evaluations: int
    proposals: int
    accepted: int
    restarts: int
    box_prior_mass: float
    region_prior_mass: float
    region_prior_mass_stderr: float
    validated: bool

    @property
    def acceptance_rate(self) -> float:
        """Accepted proposals per log-density evaluation in this call."""
        return self.accepted / self.evaluations if self.evaluations else float("nan")

    @property
    def evaluations_per_draw(self) -> float:
        """Log-density evaluations per returned draw in this call."""
        return self.evaluations / self.returned if self.returned else float("inf")


# ------------------------------------------------------------------- sampler
class TruncatedPrior:
    """The prior restricted to ``R = {theta : log_density(theta) >= threshold}``.

    Arguments:
        prior: the prior ``p``.
        log_density: ``log q``; float64 ``(n, d)`` to ``(n,)``. Called without
            gradients, on batches of at most ``max_chunk`` rows, only on points
            in the prior's support.
        threshold: ``tau``, e.g. from :func:`hpd_threshold`.
        proposal_samples: draws from ``q``, shape ``(m, d)``, used only to
            place the first box (they need not all lie in ``R``). Without them,
            or if the prior lacks marginal inverse CDFs, sampling falls back to
            plain rejection from the prior.
        proposal_log_prob: ``log q`` at ``proposal_samples``, shape ``(m,)``
            (the values given to :func:`hpd_threshold`). If given, samples below
            the threshold are ignored when placing the box, so outliers of
            ``q`` do not inflate it, and the others are extrapolated to the
            region's edge (see below); no extra evaluations are spent.
        max_evaluations: default budget of log-density evaluations per
            :meth:`sample` call.
        margin: the box is the bounding box of the points known to lie in
            ``R`` widened on each side by ``margin`` times its width; the outer
            half of that margin is the guard band.
        min_validation_draws: accepted draws a box must produce, without one
            in its guard band, before it is trusted; a call that needs fewer
            draws keeps drawing until the box has this many.
        max_chunk: most proposals drawn and evaluated at once.

    **Algorithm.** Let ``K`` be the points known or expected to lie in ``R``
    (proposal samples, filtered by ``proposal_log_prob`` and pushed out to
    where a Gaussian ``q`` would reach the threshold if it is given, and every
    accepted draw so far) and ``[a, b]`` their per-coordinate bounding box,
    clipped to the support, with width ``w = b - a`` (floored at ``1e-3`` of
    the prior's scale). The box is
    ``B = [a - margin w, b + margin w]`` clipped to the prior's support; the
    guard band ``G`` is the slab of thickness ``margin w / 2`` inside each face
    of ``B`` that is not a support bound. Proposals are drawn in batches from
    the prior restricted to ``B``: ``u_i ~ U(F_i(B_lo,i), F_i(B_hi,i))``,
    ``theta_i = F_i^{-1}(u_i)`` with the marginal CDFs ``F_i``; each batch is
    evaluated at once and the draws with ``log_density >= threshold`` kept.
    If any accepted draw lies in ``G``, ``R`` may reach beyond ``B``: the box
    is rebuilt from the enlarged ``K`` and everything drawn from the old box
    in this call is discarded. Batch sizes follow the measured acceptance
    rate; the loop stops at the evaluation budget. A box holding half the
    prior mass or more would save at most a factor two, so plain rejection
    (exact without further assumptions) is used instead.

    **Why it is exact.** The prior is a product of independent marginals, so
    the prior restricted to a box is the product of the marginals restricted
    to intervals, and the inverse-CDF map of a uniform on
    ``[F_i(lo), F_i(hi)]`` draws exactly from the marginal restricted to
    ``[lo, hi]``. Rejection then keeps a draw with probability
    ``1[theta in R]``, so accepted draws are i.i.d. from the prior restricted
    to ``B ∩ R``, which is the prior restricted to ``R`` whenever ``R ⊆ B``.
    Taking the first ``n`` accepted draws in order, with batch sizes that
    depend only on counts, does not change their distribution. Discarding on a
    guard-band hit conditions the returned draws on "no accepted draw in
    ``G``", an event of probability one when ``R ∩ G`` is empty, so it biases
    nothing in that case; restarts only grow the box (``K`` only grows), so
    after a false alarm the face moves out by at least ``margin w / 2``
    beyond a point of ``R``.

    **Residual risk.** No finite procedure can prove ``R ⊆ B`` for a black-box
    ``log_density``. The draws are biased only if ``R`` leaves ``B``: (a)
    through a part of ``G`` so small that none of the at least
    ``min_validation_draws`` accepted draws landed in it (if that part holds a
    fraction ``eps`` of ``R``'s prior mass, this goes unnoticed with
    probability ``(1 - eps)^N`` for ``N`` checked draws: below 5 % once
    ``eps > 3 / N``); or (b) through a component of ``R`` disconnected from
    ``K`` that neither ``q``'s samples nor the accepted draws visited, e.g. a
    spurious far mode of ``q`` that holds almost none of its own mass. Pass
    more (or more spread) ``proposal_samples`` or a larger ``margin`` to
    shrink both. For a convex ``R`` (a unimodal, roughly Gaussian ``q``) case
    (b) cannot occur, and a piece of ``R`` beyond a face must cross ``G``.
    Floating point is the other limit: in a marginal's far tail (CDF within
    ``1e-16`` of 0 or 1) the inverse CDF is inaccurate; non-finite results
    are dropped.

    The box, the known extent of ``R`` and the acceptance counts persist
    between calls, so later calls reuse a validated box.
    """

    def __init__(
        self,
        prior: Prior,
        log_density: LogDensity,
        threshold: float,
        proposal_samples: Tensor | None = None,
        *,
        proposal_log_prob: Tensor | None = None,
        max_evaluations: int = 10_000_000,
        margin: float = 0.2,
        min_validation_draws: int = 1000,
        max_chunk: int = 2**18,
    ) -> None:
        if not isinstance(prior, Prior):
            raise InvalidInputError(f"prior must be a mfask Prior; got {type(prior).__name__}")
        if not callable(log_density):
            raise InvalidInputError("log_density must be callable: (n, d) -> (n,)")
        threshold = float(threshold)
        if math.isnan(threshold) or threshold == math.inf:
            raise InvalidInputError(
                f"threshold must be a number below +inf; got {threshold}"
            )
        _check_positive_int(max_evaluations, "max_evaluations")
        _check_positive_int(max_chunk, "max_chunk")
        _check_positive_int(min_validation_draws, "min_validation_draws", allow_zero=True)
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not (
            0.0 < margin < math.inf
        ):
            raise InvalidInputError(f"margin must be a positive number; got {margin!r}")

        self.prior = prior
        self.log_density = log_density
        self.threshold = threshold
        self.max_evaluations = int(max_evaluations)
        self.margin = float(margin)
        self.min_validation_draws = int(min_validation_draws)
        self.max_chunk = int(max_chunk)
        self.stats: TruncationStats | None = None
        """Statistics of the latest :meth:`sample` call."""

        self._support_lo, self._support_hi = prior.bounds
        self._width_floor = 1e-3 * prior.scale
        # Per-box state, reset when the box is rebuilt.
        self._box_mass = 1.0
        self._box_draws = 0
        self._box_accepted = 0
        self._rate_guess: float | None = None

        core = self._initial_core(proposal_samples, proposal_log_prob)
        self.method: Literal["box", "rejection"] = "rejection"
        if core is not None and prior.has_marginal_icdf:
            self._core_lo, self._core_hi = core
            self.method = "box"
            self._build_box()

    # -------------------------------------------------------------- setup
    def _initial_core(
        self, samples: Tensor | None, log_prob: Tensor | None
    ) -> tuple[Tensor, Tensor] | None:
        """Estimated extent ``(lo, hi)``, each ``(d,)``, of ``R`` from the proposals.

        Without ``log_prob``: the bounding box of the samples in the support.
        With it: samples below the threshold are dropped, and each remaining
        sample ``theta_j`` is also pushed out along the ray from the highest-
        density sample ``c`` to where a Gaussian would reach the threshold,
        ``c + s_j (theta_j - c)`` with ``s_j = sqrt((l_c - tau) / (l_c - l_j))``
        (``l`` = log q), capped at :data:`_MAX_EXTRAPOLATION`. For a Gaussian
        ``q`` these points lie on the boundary of ``R``, so the first box
        already covers ``R`` although ``q``'s samples rarely reach its edge
        (in 5-D, 1e4 samples reach about 3.8 standard deviations, ``R`` at
        quantile 1e-4 extends to 5.1). It is only a placement heuristic: the
        guard band decides whether the box is big enough.
        """
        if samples is None:
            if log_prob is not None:
                raise InvalidInputError("proposal_log_prob given without proposal_samples")
            return None
        samples = as_theta_tensor(samples, self.prior.dim, "proposal_samples")
        points = samples
        if log_prob is not None:
            log_prob = torch.as_tensor(log_prob).detach().to("cpu", torch.float64).reshape(-1)
            if log_prob.shape[0] != samples.shape[0]:
                raise InvalidInputError(
                    f"proposal_log_prob has {log_prob.shape[0]} values for "
                    f"{samples.shape[0]} proposal samples"
                )
            inside = (log_prob >= self.threshold) & self.prior.in_support(samples)
            samples, log_prob = samples[inside], log_prob[inside]
            if samples.shape[0]:
                best = int(log_prob.argmax())
                centre, top = samples[best], log_prob[best]
                stretch = ((top - self.threshold) / (top - log_prob)).sqrt()
                stretch = stretch.nan_to_num(nan=1.0).clamp(1.0, _MAX_EXTRAPOLATION)
                pushed = centre + stretch[:, None] * (samples - centre)
                points = torch.cat([samples, pushed])
        else:
            points = samples = samples[self.prior.in_support(samples)]
        if samples.shape[0] == 0:
            warnings.warn(
                "no proposal sample lies in the region and the prior's support; "
                "falling back to plain rejection from the prior",
                TruncationWarning,
                stacklevel=3,
            )
            return None
        lo = torch.maximum(points.min(dim=0).values, self._support_lo)
        hi = torch.minimum(points.max(dim=0).values, self._support_hi)
        return lo, hi

    def _build_box(self) -> None:
        """(Re)build the box and guard band from the known extent of ``R``."""
        width = torch.maximum(self._core_hi - self._core_lo, self._width_floor)
        lo = self._core_lo - self.margin * width
        hi = self._core_hi + self.margin * width
        clipped_lo = lo <= self._support_lo
        clipped_hi = hi >= self._support_hi
        lo = torch.where(clipped_lo, self._support_lo, lo)
        hi = torch.where(clipped_hi, self._support_hi, hi)
        guard = 0.5 * self.margin * width
        self._guard_lo = torch.where(clipped_lo, -math.inf, lo + guard)
        self._guard_hi = torch.where(clipped_hi, math.inf, hi - guard)
        u = self.prior.marginal_cdf(torch.stack([lo, hi]))
        self._u_lo, self._u_span = u[0], u[1] - u[0]
        old_mass = self._box_mass
        new_mass = float(self._u_span.prod())
        if not (torch.isfinite(u).all() and (self._u_span > 0).all()):
            warnings.warn(
                "the box around the region has no prior mass in floating point (it "
                "lies in a marginal's far tail); falling back to plain rejection",
                TruncationWarning,
                stacklevel=4,
            )
        if not (new_mass < _MAX_BOX_MASS and (self._u_span > 0).all()):
            self.method = "rejection"
            self._box_mass = new_mass = 1.0
        else:
            self._box_lo, self._box_hi = lo, hi
            self._box_mass = new_mass
        if self._box_accepted > 0:
            # Were R inside both boxes, the acceptance rate would scale so.
            self._rate_guess = self._box_accepted / self._box_draws * old_mass / new_mass
        self._box_draws = 0
        self._box_accepted = 0

    # ----------------------------------------------------------- density
    def _evaluate(self, theta: Tensor) -> Tensor:
        """``log_density`` at ``theta`` ``(k, d)`` as float64 ``(k,)``."""
        if theta.shape[0] == 0:
            return torch.empty(0, dtype=torch.float64)
        with torch.no_grad():
            values = self.log_density(theta)
        values = torch.as_tensor(values).detach().to("cpu", torch.float64)
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        if values.shape != (theta.shape[0],):
            raise InvalidInputError(
                f"log_density must map ({theta.shape[0]}, {theta.shape[1]}) parameters "
                f"to shape ({theta.shape[0]},); got {tuple(values.shape)}"
            )
        return values

    def log_prob(self, theta: Tensor) -> Tensor:
        """Unnormalised log density of the truncated prior, shape ``(n,)``.

        The prior's log density where ``log_density(theta) >= threshold`` and
        ``-inf`` elsewhere (outside ``R`` or the support). Subtract
        ``log(stats.region_prior_mass)`` for an estimate of the normalised one.
        """
        theta = as_theta_tensor(theta, self.prior.dim)
        log_p = self.prior.log_prob(theta)
        inside = torch.isfinite(log_p)
        inside[inside.clone()] = self._evaluate(theta[inside]) >= self.threshold
        return torch.where(inside, log_p, torch.full_like(log_p, -math.inf))

    # ---------------------------------------------------------- sampling
    def _propose(self, size: int, generator: torch.Generator) -> Tensor:
        """``size`` i.i.d. draws ``(size, d)`` from the prior restricted to the box
        (or from the prior itself in rejection mode)."""
        if self.method == "rejection":
            return self.prior.sample(size, generator)
        u = torch.rand(size, self.prior.dim, generator=generator, dtype=torch.float64)
        return self.prior.marginal_icdf(self._u_lo + self._u_span * u)

    def _chunk_size(self, needed: int, remaining_budget: int) -> int:
        """Proposals to draw next so as to get ``needed`` accepted ones.

        Aims slightly short, using an optimistic acceptance rate (two binomial
        standard errors above the estimate), so that surplus draws are rare;
        a shortfall costs only another, small batch. Until a few draws are
        accepted the batch grows at most eightfold per step.
        """
        if self._box_accepted > 0:
            k = self._box_accepted
            rate = (k + 2.0 * math.sqrt(k) + 2.0) / self._box_draws
            size = min(math.ceil(needed / rate), 8 * self._box_draws)
        elif self._rate_guess is not None and self._rate_guess > 0.0:
            size = math.ceil(needed / self._rate_guess)
        else:
            size = 4 * self._box_draws
        return int(min(max(size, _MIN_CHUNK), self.max_chunk, remaining_budget))

    def sample(
        self,
        n: int,
        generator: torch.Generator,
        *,
        max_evaluations: int | None = None,
        allow_fewer: bool = False,
    ) -> Tensor:
        """Draw ``n`` parameter vectors ``(n, d)`` from the prior restricted to ``R``.

        Arguments:
            n: number of draws (``>= 0``).
            generator: source of all randomness.
            max_evaluations: budget of log-density evaluations for this call
                (default: the constructor's). It caps the proposals drawn, each
                of which is evaluated at most once.
            allow_fewer: when the budget runs out, warn and return the draws
                found so far (possibly none) instead of raising.

        Returns:
            float64 tensor ``(n, d)`` (fewer rows only with ``allow_fewer``).
            :attr:`stats` describes the call.

        Raises:
            TruncationError: the budget ran out before ``n`` draws were found
                (unless ``allow_fewer``); ``error.stats`` has the counts.
        """
        _check_positive_int(n, "n", allow_zero=True)
        if not isinstance(generator, torch.Generator):
            raise InvalidInputError(
                f"generator must be a torch.Generator; got {type(generator).__name__}"
            )
        budget = self.max_evaluations if max_evaluations is None else max_evaluations
        _check_positive_int(budget, "max_evaluations")

        kept: list[Tensor] = []
        n_kept = evaluations = proposals = accepted = restarts = 0
        highest = -math.inf
        while True:
            needed = n - n_kept
            if self.method == "box":
                needed = max(needed, self.min_validation_draws - self._box_accepted)
            # The budget caps proposals, each of which costs at most one
            # evaluation, so it also ends loops whose proposals are all unusable.
            if needed <= 0 or proposals >= budget:
                break
            size = self._chunk_size(needed, budget - proposals)
            theta = self._propose(size, generator)
            proposals += size
            self._box_draws += size
            usable = self.prior.in_support(theta) & torch.isfinite(theta).all(dim=1)
            theta = theta[usable]
            values = self._evaluate(theta)
            evaluations += theta.shape[0]
            if values.numel():
                highest = max(highest, float(values.nan_to_num(nan=-math.inf).max()))
            hits = theta[values >= self.threshold]
            accepted += hits.shape[0]
            self._box_accepted += hits.shape[0]
            if self.method == "box" and hits.shape[0]:
                self._core_lo = torch.minimum(self._core_lo, hits.min(dim=0).values)
                self._core_hi = torch.maximum(self._core_hi, hits.max(dim=0).values)
                in_guard = (hits < self._guard_lo) | (hits > self._guard_hi)
                if in_guard.any():
                    restarts += 1
                    self._build_box()
                    kept, n_kept = [], 0
                    continue
            kept.append(hits)
            n_kept += hits.shape[0]

        draws = torch.cat(kept)[:n] if kept else torch.empty(0, self.prior.dim, dtype=torch.float64)
        validated = self.method == "rejection" or self._box_accepted >= self.min_validation_draws
        self.stats = self._make_stats(
            n, draws.shape[0], evaluations, proposals, accepted, restarts, validated
        )
        if draws.shape[0] < n:
            message = (
                f"found {draws.shape[0]} of {n} draws in the region after {evaluations} "
                f"log-density evaluations (budget {budget}, method {self.method!r}, "
                f"{restarts} box restart(s)); the highest log density seen was "
                f"{highest:.6g} against the threshold {self.threshold:.6g}"
            )
            if accepted == 0:
                message += (
                    "; no draw reached the threshold, so the region is empty or probably "
                    f"covers less than {3.0 / max(proposals, 1):.2g} of the "
                    f"{'box' if self.method == 'box' else 'prior'} mass"
                )
            message += ". Lower the threshold, check log_density, or raise max_evaluations"
            if not allow_fewer:
                raise TruncationError(message, self.stats)
            warnings.warn(message, TruncationWarning, stacklevel=2)
        elif not validated:
            warnings.warn(
                f"the evaluation budget ran out after {self._box_accepted} of "
                f"{self.min_validation_draws} validation draws: the box around the "
                "region is less checked than usual (see TruncatedPrior's residual risk)",
                TruncationWarning,
                stacklevel=2,
            )
        return draws

    def _make_stats(
        self,
        requested: int,
        returned: int,
        evaluations: int,
        proposals: int,
        accepted: int,
        restarts: int,
        validated: bool,
    ) -> TruncationStats:
        if self._box_draws:
            rate = self._box_accepted / self._box_draws
            stderr = math.sqrt(rate * (1.0 - rate) / self._box_draws)
        else:
            rate = stderr = float("nan")
        return TruncationStats(
            method=self.method,
            requested=requested,
            returned=returned,
            evaluations=evaluations,
            proposals=proposals,
            accepted=accepted,
            restarts=restarts,
            box_prior_mass=self._box_mass,
            region_prior_mass=self._box_mass * rate,
            region_prior_mass_stderr=self._box_mass * stderr,
            validated=validated,
        )

    def __repr__(self) -> str:
        return (
            f"TruncatedPrior({self.prior!r}, threshold={self.threshold:.6g}, "
            f"method={self.method!r}, box_prior_mass={self._box_mass:.3g})"
        )


def _check_positive_int(value: object, name: str, allow_zero: bool = False) -> None:
    """Raise :class:`InvalidInputError` unless ``value`` is an int ``> 0`` (``>= 0``)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidInputError(f"{name} must be an integer; got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidInputError(f"{name} must be {bound}; got {value}")
