"""The space the posterior's flow learns in, and how it maps to the prior's support.

A flow is a density on R^d; a prior may have a bounded support (a box, the
positive reals). Two ways to reconcile them, both offered:

``"unbounded"``
    The flow learns ``z = b^{-1}(theta)``, the prior's elementwise bijection
    from the support onto R^d (logit for a box, log for the positive reals;
    :meth:`mfask.priors.Prior.to_unbounded`). Every flow sample maps into the
    support and the density is exactly normalised there, so sampling needs no
    rejection and ``log_prob`` no correction. The price: a box posterior that
    is close to Gaussian in ``theta`` is squeezed and stretched by the logit,
    which can take more data to learn.

``"support"`` (default)
    The flow learns ``theta`` itself (standardised by the flow, as in
    ``sbi``'s default), with a bounded prior's support cut out afterwards:
    samples outside it are rejected, and the density is renormalised by the
    flow's mass inside the support, ``q(theta | x) / P_q(support | x)``
    (estimated by Monte Carlo; see :mod:`mfask.posterior_density`). Measured
    on the OU task (``docs/parameter_space.md``) and sbibm's tasks
    (``docs/conditional_standardization.md``), it is the better choice at
    small simulation budgets, hence the default; it costs the rejection, and it fails loudly when
    the flow puts almost no mass inside the support.

For a prior whose support is all of R^d (e.g. normal marginals) the two
coincide: the bijection is the identity and nothing is rejected.

Shapes: ``theta`` and ``z`` are ``(n, d)``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from mfask.errors import InvalidInputError
from mfask.priors import Prior

__all__ = ["ParameterSpaceName", "PARAMETER_SPACES", "ParameterSpace"]

ParameterSpaceName = Literal["unbounded", "support"]

#: the names :func:`parameter_space` accepts
PARAMETER_SPACES: tuple[str, ...] = ("unbounded", "support")


class ParameterSpace:
    """A map between the prior's support and the flow's space.

    Arguments:
        prior: the prior whose support is mapped.
        name: ``"unbounded"`` or ``"support"`` (see the module docstring).

    Attributes:
        covers_support: ``True`` when every point of the flow's space maps
            into the support (so no rejection and no renormalisation are
            needed): always for ``"unbounded"``, and for ``"support"`` when the
            prior's support is all of R^d.
    """

    def __init__(self, prior: Prior, name: ParameterSpaceName) -> None:
        if name not in PARAMETER_SPACES:
            raise InvalidInputError(
                f"parameter_space must be one of {', '.join(map(repr, PARAMETER_SPACES))}; "
                f"got {name!r}"
            )
        self.prior = prior
        self.name: ParameterSpaceName = name
        self.covers_support = name == "unbounded" or _support_is_everything(prior)

    def to_flow(self, theta: Tensor) -> Tensor:
        """Parameters ``(n, d)`` in the support -> the flow's space ``(n, d)``."""
        return self.prior.to_unbounded(theta) if self.name == "unbounded" else theta

    def from_flow(self, z: Tensor) -> Tensor:
        """Flow points ``(n, d)`` -> parameters ``(n, d)`` (outside the support
        for ``"support"`` when the flow leaks; see :attr:`covers_support`)."""
        return self.prior.from_unbounded(z) if self.name == "unbounded" else z

    def log_abs_det_jacobian(self, z: Tensor) -> Tensor:
        """``log |d theta / d z|`` of :meth:`from_flow` at ``z``, shape ``(n,)``."""
        if self.name == "unbounded":
            return self.prior.log_abs_det_jacobian(z)
        return torch.zeros(z.shape[0], dtype=z.dtype)

    def __repr__(self) -> str:
        return f"ParameterSpace({self.name!r})"


def _support_is_everything(prior: Prior) -> bool:
    """Whether every marginal's support is the whole real line."""
    probe = torch.tensor([[-1e300] * prior.dim, [1e300] * prior.dim], dtype=torch.float64)
    return bool(prior.in_support(probe).all())
