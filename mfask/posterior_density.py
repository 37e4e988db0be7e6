"""The posterior ``q(theta | x)`` in parameter space.

Composes trained :class:`~mfask.estimator.ConditionalFlow` members (one, or an
ensemble averaged with equal weights) with the map between the flow's space
and the prior's support (:class:`~mfask.parameter_space.ParameterSpace`), so
that densities and samples are in the prior's parameter space and never
outside its support. Inputs and outputs are float64; the flows compute in
float32.

When the flow's space does not map into the support (``"support"`` space
with a bounded prior), each member is cut to the support and renormalised:

* ``log q_k(theta | x) = log f_k(theta | x) - log P_k(x)`` inside the support
  (``-inf`` outside), where ``P_k(x)`` is member ``k``'s mass inside the
  support at ``x``, estimated from ``SUPPORT_MASS_DRAWS`` draws of fixed base
  noise (common random numbers: the estimate at an ``x`` does not depend on
  which other observations it is computed with, nor on the call). With mass
  ``P`` the standard error of ``log P`` is about
  ``sqrt((1 - P) / (P * SUPPORT_MASS_DRAWS))``: 0.005 at ``P = 0.9``;
* samples are drawn by rejection, member by member, so that an ensemble's
  samples follow the same equal-weight mixture of renormalised members as
  ``log_prob``. When a member's acceptance rate at an observation falls
  below ``WARN_ACCEPTANCE`` the draw goes on with a :class:`LeakageWarning`
  (rejection stays exact, only slower: an observation in the tail of the
  training data is answered, not refused); when it stays below
  ``MIN_ACCEPTANCE`` after ``_DRAWS_BEFORE_GIVING_UP`` draws it stops with
  :class:`~mfask.errors.LeakageError` instead of looping for ever.

Shapes: ``theta`` is ``(n, d)``; one observation ``x`` is ``(*x_shape)``;
many observations are ``(m, *x_shape)``.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import torch
from torch import Tensor

from mfask.errors import LeakageError, LeakageWarning
from mfask.estimator import ConditionalFlow
from mfask.parameter_space import ParameterSpace
from mfask.priors import Prior

__all__ = ["PosteriorDensity", "SUPPORT_MASS_DRAWS", "WARN_ACCEPTANCE", "MIN_ACCEPTANCE"]


# Rows per forward pass when evaluating densities, to bound memory.
_CHUNK = 65536
#: base-noise draws per member and observation estimating the mass inside the support
SUPPORT_MASS_DRAWS = 4096
#: rejection sampling warns below this acceptance rate ...
WARN_ACCEPTANCE = 1e-3
# ... once this many draws were made at an observation,
_DRAWS_BEFORE_WARNING = 20_000
#: and gives up below this one ...
MIN_ACCEPTANCE = 1e-5
# ... once this many were made (a few seconds of a default flow's sampling)
_DRAWS_BEFORE_GIVING_UP = 1_000_000
# Seed of the fixed base noise of the support-mass estimate.
_MASS_NOISE_SEED = 20_241_126


class PosteriorDensity:
    """An equal-weight mixture of conditional flows, mapped into the prior's support.

    Arguments:
        prior: the prior whose support is used.
        members: one or more trained flows over ``space``'s flow space.
        space: how flow points map to parameters; default the prior's
            unbounded space (``ParameterSpace(prior, "unbounded")``).

    A density is a snapshot of trained members: it caches the members' mass
    inside the support per observation, so build a new one after training.
    """

    def __init__(self, prior: Prior, members: Sequence[ConditionalFlow],
                 space: ParameterSpace | None = None) -> None:
        if not members:
            raise ValueError("a posterior density needs at least one flow")
        self.prior = prior
        self.members = list(members)
        self.space = space if space is not None else ParameterSpace(prior, "unbounded")
        self._log_mass_cache: dict[bytes, Tensor] = {}

    @property
    def num_members(self) -> int:
        """Ensemble size ``K``."""
        return len(self.members)

    def member_log_probs(self, theta: Tensor, x: Tensor, *, track_gradients: bool = False) -> Tensor:
        """Each member's ``log q_k(theta | x)``, shape ``(K, n)``.

        Arguments:
            theta: ``(n, d)`` float64 parameters.
            x: ``(n, *x_shape)`` paired observations.
            track_gradients: let gradients flow back to ``theta`` (e.g. to
                climb to the posterior's mode); the support masses are
                constants either way.

        Rows outside the prior's support get ``-inf``.
        """
        inside = self.prior.in_support(theta)
        safe_theta = torch.where(inside.unsqueeze(1), theta, self.prior._interior_point())
        z = self.space.to_flow(safe_theta)
        # log q(theta) = log q(z) - log |d theta / d z|
        log_jacobian = self.space.log_abs_det_jacobian(z)
        z32, x32 = z.to(torch.float32), x.to(torch.float32)
        rows = []
        with torch.set_grad_enabled(track_gradients):
            for member in self.members:
                member.eval()
                parts = [
                    member.log_prob(z32[s : s + _CHUNK], x32[s : s + _CHUNK])
                    for s in range(0, z.shape[0], _CHUNK)
                ]
                rows.append(torch.cat(parts).to(torch.float64) - log_jacobian)
        values = torch.stack(rows)
        if not self.space.covers_support and theta.shape[0]:
            unique_x, inverse = torch.unique(x.reshape(x.shape[0], -1), dim=0, return_inverse=True)
            log_mass = self.log_support_mass(unique_x.reshape(-1, *x.shape[1:]))  # (K, u)
            values = values - log_mass[:, inverse]
        return torch.where(inside.unsqueeze(0), values, torch.full_like(values, -math.inf))

    def log_support_mass(self, x: Tensor) -> Tensor:
        """``log P_k(x)``: each member's log mass inside the prior's support,
        shape ``(K, m)`` for observations ``x (m, *x_shape)``.

        Zero (exactly) when the flow's space maps into the support. Otherwise
        estimated from ``SUPPORT_MASS_DRAWS`` draws of fixed base noise per
        member and observation, with at least one draw counted as inside (so
        the value stays finite), and cached per observation.
        """
        num_obs = x.shape[0]
        if self.space.covers_support:
            return torch.zeros(self.num_members, num_obs, dtype=torch.float64)
        keys = [row.numpy().tobytes() for row in x.to(torch.float64).reshape(num_obs, -1)]
        missing = sorted({i for i, key in enumerate(keys) if key not in self._log_mass_cache})
        if missing:
            noise = torch.randn(SUPPORT_MASS_DRAWS, self.prior.dim,
                                generator=torch.Generator().manual_seed(_MASS_NOISE_SEED))
            per_chunk = max(1, _CHUNK // SUPPORT_MASS_DRAWS)
            x32 = x.to(torch.float32)
            for start in range(0, len(missing), per_chunk):
                chunk = missing[start : start + per_chunk]
                contexts = x32[chunk].repeat_interleave(SUPPORT_MASS_DRAWS, dim=0)
                tiled = noise.repeat(len(chunk), 1)
                columns = []
                with torch.no_grad():
                    for member in self.members:
                        member.eval()
                        z = member.push_forward(tiled, contexts).to(torch.float64)
                        inside = self.prior.in_support(self.space.from_flow(z))
                        counts = inside.reshape(len(chunk), SUPPORT_MASS_DRAWS).sum(dim=1)
                        columns.append(torch.log(counts.clamp(min=1).to(torch.float64))
                                       - math.log(SUPPORT_MASS_DRAWS))
                values = torch.stack(columns)  # (K, len(chunk))
                for j, i in enumerate(chunk):
                    self._log_mass_cache[keys[i]] = values[:, j]
        return torch.stack([self._log_mass_cache[key] for key in keys], dim=1)

    def log_prob(self, theta: Tensor, x: Tensor, *, track_gradients: bool = False) -> Tensor:
        """Mixture ``log q(theta | x)`` for paired rows, shape ``(n,)``
        (``track_gradients``: see :meth:`member_log_probs`)."""
        member_values = self.member_log_probs(theta, x, track_gradients=track_gradients)
        if self.num_members == 1:
            return member_values[0]
        return torch.logsumexp(member_values, dim=0) - math.log(self.num_members)

    def sample(self, num_samples: int, x: Tensor, generator: torch.Generator) -> Tensor:
        """Draw ``num_samples`` per observation: ``x (m, *x_shape)`` -> ``(m, num_samples, d)``.

        Reproducible given the state of ``generator``. For an ensemble each
        draw picks its member uniformly at random. Raises
        :class:`~mfask.errors.LeakageError` when rejection sampling (see the
        module docstring) finds almost no draws inside the support.
        """
        num_obs = x.shape[0]
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        x32 = x.to(torch.float32)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.random.default_generator.manual_seed(seed)  # the CPU stream only: accelerators keep theirs
            if not self.space.covers_support:
                return self._sample_by_rejection(num_samples, x32)
            draws = []
            for member in self.members:
                member.eval()
                draws.append(member.sample(num_samples, x32))
            z = torch.stack(draws)  # (K, m, num_samples, d)
            if self.num_members > 1:
                choice = torch.randint(self.num_members, (num_obs, num_samples))
                z = z.gather(0, choice[None, :, :, None].expand(1, -1, -1, z.shape[-1]))
        z = z[0].to(torch.float64).reshape(-1, self.prior.dim)
        theta = self.space.from_flow(z)
        return theta.reshape(num_obs, num_samples, self.prior.dim)

    def _sample_by_rejection(self, num_samples: int, x32: Tensor) -> Tensor:
        """Rejection sampling of the mixture of renormalised members, using
        torch's global random state: ``(m, num_samples, d)`` float64."""
        num_obs, dim = x32.shape[0], self.prior.dim
        if self.num_members == 1:
            choice = torch.zeros(num_obs, num_samples, dtype=torch.long)
        else:
            choice = torch.randint(self.num_members, (num_obs, num_samples))
        draws = torch.empty(self.num_members, num_obs, num_samples, dim, dtype=torch.float64)
        for k, member in enumerate(self.members):
            member.eval()
            need = (choice == k).sum(dim=1)
            draws[k, :, : int(need.max())] = self._draw_inside(member, need, x32)
        # the j-th slot of observation i assigned to member k takes that
        # member's next inside draw at i
        rank = (torch.nn.functional.one_hot(choice, self.num_members).cumsum(dim=1) - 1)
        rank = rank.gather(2, choice.unsqueeze(2)).squeeze(2)  # (m, num_samples)
        obs = torch.arange(num_obs).unsqueeze(1).expand(-1, num_samples)
        return draws[choice, obs, rank]

    def _draw_inside(self, member: ConditionalFlow, need: Tensor, x32: Tensor) -> Tensor:
        """``need[i]`` draws inside the support from ``member`` at ``x32[i]``,
        returned left-aligned in ``(m, max(need), d)`` float64."""
        num_obs, dim = x32.shape[0], self.prior.dim
        most = int(need.max()) if num_obs else 0
        out = torch.empty(num_obs, most, dim, dtype=torch.float64)
        filled = torch.zeros(num_obs, dtype=torch.long)
        drawn = torch.zeros(num_obs, dtype=torch.long)
        accepted = torch.zeros(num_obs, dtype=torch.long)
        warned = False
        batch = most
        while True:
            missing = need - filled
            active = torch.nonzero(missing > 0).squeeze(1)
            if active.numel() == 0:
                return out
            batch = max(1, min(batch, _CHUNK // active.numel()))
            z = member.sample(batch, x32[active]).to(torch.float64)  # (a, batch, d)
            theta = self.space.from_flow(z.reshape(-1, dim)).reshape(active.numel(), batch, dim)
            inside = self.prior.in_support(theta.reshape(-1, dim)).reshape(active.numel(), batch)
            drawn[active] += batch
            accepted[active] += inside.sum(dim=1)
            take = torch.minimum(inside.sum(dim=1), missing[active])  # (a,)
            order = torch.argsort((~inside).to(torch.int8), dim=1, stable=True)  # inside first
            theta = theta.gather(1, order.unsqueeze(2).expand(-1, -1, dim))
            slot = torch.arange(batch).unsqueeze(0)
            keep = slot < take.unsqueeze(1)
            rows = active.unsqueeze(1).expand(-1, batch)[keep]
            cols = (filled[active].unsqueeze(1) + slot)[keep]
            out[rows, cols] = theta[keep]
            filled[active] += take
            slow = (drawn >= _DRAWS_BEFORE_WARNING) & (accepted < WARN_ACCEPTANCE * drawn) & (filled < need)
            if slow.any() and not warned:
                warned = True
                warnings.warn(
                    f"the posterior puts little mass inside the prior's support at {int(slow.sum())} "
                    f"of {num_obs} observation(s) (acceptance below {WARN_ACCEPTANCE:g}); sampling "
                    "them by rejection is slow, and their posteriors are likely poorly learnt",
                    LeakageWarning, stacklevel=2)
            stuck = (drawn >= _DRAWS_BEFORE_GIVING_UP) & (accepted < MIN_ACCEPTANCE * drawn) & (filled < need)
            if stuck.any():
                rate = float(accepted[stuck].sum()) / float(drawn[stuck].sum())
                raise LeakageError(
                    f"the posterior puts almost no mass inside the prior's support at "
                    f"{int(stuck.sum())} of {num_obs} observation(s) (acceptance "
                    f"{rate:.1e} after {int(drawn[stuck].min())}+ draws each), so it cannot "
                    "be sampled by rejection; train on more simulations, or use "
                    "parameter_space='unbounded', whose samples are always inside the support"
                )
            still = need - filled
            rate = (accepted[active].clamp(min=1).to(torch.float64) / drawn[active].to(torch.float64))
            batch = int(math.ceil(float((still[active] / rate).max()) * 1.2)) + 8
