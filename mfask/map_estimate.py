"""The maximum a posteriori (MAP) estimate of a :class:`PosteriorDensity`.

The search is: draw ``num_samples`` posterior samples at the observation,
keep the ``num_starts`` with the highest ``log q(theta | x)``, and climb from
each with ``num_steps`` Adam steps on ``log q(theta | x)``. The steps are
taken in the prior's unbounded space (:meth:`mfask.priors.Prior.to_unbounded`),
so every iterate stays inside the prior's support, and scaled by the spread
of the samples there, so the same settings suit wide and narrow posteriors;
the step size decays geometrically to a hundredth of its first value. The
answer is the best point seen (starts included), so it is never worse than
the best sample.

The mode is that of the density over ``theta`` itself (no Jacobian of the
unbounded map enters the objective). With an ensemble it is the mode of the
equal-weight mixture.

Shapes: one observation ``x`` is ``(1, *x_shape)``; ``theta`` is ``(d,)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mfask.errors import InvalidInputError
from mfask.posterior_density import PosteriorDensity
from mfask.user_input import positive_int

__all__ = ["MapSettings", "maximum_a_posteriori"]

#: the first step's size in units of the samples' spread (unbounded space)
_FIRST_STEP = 0.1
#: the last step is this fraction of the first
_LAST_STEP_FRACTION = 0.01
# floor of the samples' spread, so a collapsed sample set still moves
_MIN_SCALE = 1e-8


@dataclass(frozen=True)
class MapSettings:
    """How hard the MAP search works.

    Attributes:
        num_samples: posterior samples drawn to find starting points.
        num_starts: the best samples (by ``log q``) that gradient ascent starts from.
        num_steps: Adam steps from each start (``0``: the best sample).
    """

    num_samples: int = 1000
    num_starts: int = 10
    num_steps: int = 50

    def __post_init__(self) -> None:
        positive_int(self.num_samples, "num_samples")
        positive_int(self.num_starts, "num_starts")
        steps = self.num_steps
        if isinstance(steps, (bool, np.bool_)) or not isinstance(steps, (int, np.integer)) or steps < 0:
            raise InvalidInputError(f"num_steps must be a non-negative integer; got {steps!r}")


def maximum_a_posteriori(
    density: PosteriorDensity, x: Tensor, generator: torch.Generator, settings: MapSettings
) -> tuple[Tensor, Tensor]:
    """The MAP estimate of ``density`` at one observation (see the module docstring).

    Arguments:
        density: the posterior.
        x: ``(1, *x_shape)`` float64, one observation.
        generator: the random stream the starting samples are drawn from.
        settings: the search's effort.

    Returns:
        ``theta`` ``(d,)`` float64 and its ``log q(theta | x)`` (a 0-d tensor).
    """
    prior = density.prior
    samples = density.sample(settings.num_samples, x, generator)[0]  # (num_samples, d)
    values = density.log_prob(samples, x.expand(samples.shape[0], *x.shape[1:]))
    order = torch.argsort(values, descending=True)
    best_theta, best_value = samples[order[0]].clone(), values[order[0]].clone()
    unbounded = prior.to_unbounded(samples)
    usable = torch.isfinite(unbounded).all(dim=1)  # a sample on the support's edge maps to inf
    starts = [int(i) for i in order if usable[i]][: settings.num_starts]
    if settings.num_steps == 0 or not starts or usable.sum() < 2:
        return best_theta, best_value
    scale = unbounded[usable].std(dim=0).clamp(min=_MIN_SCALE)
    origin = unbounded[starts]
    paired_x = x.expand(len(starts), *x.shape[1:])
    offset = torch.zeros_like(origin, requires_grad=True)  # in units of ``scale``
    optimizer = torch.optim.Adam([offset], lr=_FIRST_STEP)
    decay = _LAST_STEP_FRACTION ** (1.0 / max(settings.num_steps - 1, 1))
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=decay)
    for step in range(settings.num_steps + 1):
        theta = prior.from_unbounded(origin + scale * offset)
        value = density.log_prob(theta, paired_x, track_gradients=True)
        finite = torch.isfinite(value)
        if finite.any():
            top = int(torch.argmax(torch.where(finite, value, torch.full_like(value, -torch.inf))))
            if value[top] > best_value:
                best_theta, best_value = theta[top].detach().clone(), value[top].detach().clone()
        if step == settings.num_steps or not finite.any():
            break
        # gradients to the offsets only: the flows' weights collect none
        (gradient,) = torch.autograd.grad(-value[finite].sum(), offset)
        offset.grad = gradient
        optimizer.step()
        schedule.step()
    return best_theta, best_value
