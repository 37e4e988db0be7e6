"""The posterior ``q(theta | x)`` in parameter space.

Composes trained :class:`~mfask.estimator.ConditionalFlow` members (one, or an
ensemble averaged with equal weights) with the prior's bijection, so that
densities and samples are in the prior's parameter space and never outside its
support. Inputs and outputs are float64; the flows compute in float32.

Shapes: ``theta`` is ``(n, d)``; one observation ``x`` is ``(*x_shape)``;
many observations are ``(m, *x_shape)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from mfask.estimator import ConditionalFlow
from mfask.priors import Prior

__all__ = ["PosteriorDensity"]

# Rows per forward pass when evaluating densities, to bound memory.
_CHUNK = 65536


class PosteriorDensity:
    """An equal-weight mixture of conditional flows, mapped into the prior's support.

    Arguments:
        prior: the prior whose support and bijection are used.
        members: one or more trained flows over the prior's unbounded space.
    """

    def __init__(self, prior: Prior, members: Sequence[ConditionalFlow]) -> None:
        if not members:
            raise ValueError("a posterior density needs at least one flow")
        self.prior = prior
        self.members = list(members)

    @property
    def num_members(self) -> int:
        """Ensemble size ``K``."""
        return len(self.members)

    def member_log_probs(self, theta: Tensor, x: Tensor) -> Tensor:
        """Each member's ``log q_k(theta | x)``, shape ``(K, n)``.

        Arguments:
            theta: ``(n, d)`` float64 parameters.
            x: ``(n, *x_shape)`` paired observations.

        Rows outside the prior's support get ``-inf``.
        """
        inside = self.prior.in_support(theta)
        safe_theta = torch.where(inside.unsqueeze(1), theta, self.prior._interior_point())
        z = self.prior.to_unbounded(safe_theta)
        # log q(theta) = log q(z) - log |d theta / d z|
        log_jacobian = self.prior.log_abs_det_jacobian(z)
        z32, x32 = z.to(torch.float32), x.to(torch.float32)
        rows = []
        with torch.no_grad():
            for member in self.members:
                member.eval()
                parts = [
                    member.log_prob(z32[s : s + _CHUNK], x32[s : s + _CHUNK])
                    for s in range(0, z.shape[0], _CHUNK)
                ]
                rows.append(torch.cat(parts).to(torch.float64) - log_jacobian)
        values = torch.stack(rows)
        return torch.where(inside.unsqueeze(0), values, torch.full_like(values, -math.inf))

    def log_prob(self, theta: Tensor, x: Tensor) -> Tensor:
        """Mixture ``log q(theta | x)`` for paired rows, shape ``(n,)``."""
        member_values = self.member_log_probs(theta, x)
        if self.num_members == 1:
            return member_values[0]
        return torch.logsumexp(member_values, dim=0) - math.log(self.num_members)

    def sample(self, num_samples: int, x: Tensor, generator: torch.Generator) -> Tensor:
        """Draw ``num_samples`` per observation: ``x (m, *x_shape)`` -> ``(m, num_samples, d)``.

        Reproducible given the state of ``generator``. For an ensemble each
        draw picks its member uniformly at random.
        """
        num_obs = x.shape[0]
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        x32 = x.to(torch.float32)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            draws = []
            for member in self.members:
                member.eval()
                draws.append(member.sample(num_samples, x32))
            z = torch.stack(draws)  # (K, m, num_samples, d)
            if self.num_members > 1:
                choice = torch.randint(self.num_members, (num_obs, num_samples))
                z = z.gather(0, choice[None, :, :, None].expand(1, -1, -1, z.shape[-1]))
        z = z[0].to(torch.float64).reshape(-1, self.prior.dim)
        theta = self.prior.from_unbounded(z)
        return theta.reshape(num_obs, num_samples, self.prior.dim)
