"""Adam over one flat buffer holding all of a module's parameters.

The training loop's optimiser. It does what ``torch.optim.Adam`` does
(the same update, the same defaults: betas 0.9 and 0.999, eps 1e-8, no
weight decay) with the module's parameters and gradients gathered into one
contiguous vector each, so that a step, gradient clipping and saving the best
weights are a few operations on one tensor instead of a few per parameter
tensor (a flow has about a hundred small ones).

It also avoids a start-up cost: ``torch.optim`` imports ``torch._dynamo`` the
first time an optimiser is built, which takes about 1.8 s on a 2-core
machine; every process that trains (a ``mfask fit`` from a shell loop, each
worker of a process pool) paid it (measured in
``docs/benchmarks/training_profile.md``).

After :func:`FlatAdam` is built, each parameter of the module is a view into
:attr:`FlatAdam.parameters` and its ``.grad`` a view into
:attr:`FlatAdam.gradients` (autograd accumulates into it in place), so
everything that reads the module's parameters (``state_dict``, deep copies,
the lean log-density) works as before.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["FlatAdam"]


class FlatAdam:
    """Adam on all parameters of ``module``.

    A parameter whose gradient autograd does not fill (``requires_grad``
    off, or unused) keeps a zero gradient; its update is then zero as long
    as its moments are (e.g. frozen from the first step on).

    Arguments:
        module: the model; its parameters are moved into one buffer (their
            values are kept).
        learning_rate: the step size.
        betas, eps: as in ``torch.optim.Adam``.

    Shapes: :attr:`parameters` and :attr:`gradients` are ``(p,)`` for the
    ``p`` scalars of the module's parameters, in ``module.parameters()`` order.
    """

    def __init__(
        self,
        module: nn.Module,
        learning_rate: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        trainable = list(module.parameters())
        if not trainable:
            raise ValueError("the module has no parameters")
        dtypes = {p.dtype for p in trainable}
        devices = {p.device for p in trainable}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ValueError(f"parameters must share one dtype and device; got {dtypes}, {devices}")
        with torch.no_grad():
            self.parameters = torch.cat([p.detach().reshape(-1) for p in trainable])
        self.gradients = torch.zeros_like(self.parameters)
        offset = 0
        for parameter in trainable:
            size = parameter.numel()
            parameter.data = self.parameters[offset:offset + size].view_as(parameter)
            parameter.grad = self.gradients[offset:offset + size].view_as(parameter)
            offset += size
        self.learning_rate = float(learning_rate)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.eps = float(eps)
        self._first_moment = torch.zeros_like(self.parameters)
        self._second_moment = torch.zeros_like(self.parameters)
        self._steps = 0

    def zero_grad(self) -> None:
        """Set every gradient to zero (in place: the ``.grad`` views stay)."""
        self.gradients.zero_()

    def clip_grad_norm(self, max_norm: float) -> float:
        """Scale the gradients to a Euclidean norm of at most ``max_norm``, as
        ``torch.nn.utils.clip_grad_norm_`` does; returns the norm before."""
        norm = torch.linalg.vector_norm(self.gradients)
        self.gradients.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))
        return float(norm)

    def step(self) -> None:
        """One Adam update of the parameters from the current gradients."""
        self._steps += 1
        gradient = self.gradients
        self._first_moment.mul_(self.beta1).add_(gradient, alpha=1.0 - self.beta1)
        self._second_moment.mul_(self.beta2).addcmul_(gradient, gradient, value=1.0 - self.beta2)
        correction1 = 1.0 - self.beta1 ** self._steps
        correction2 = 1.0 - self.beta2 ** self._steps
        denominator = self._second_moment.sqrt().div_(math.sqrt(correction2)).add_(self.eps)
        with torch.no_grad():
            self.parameters.addcdiv_(self._first_moment, denominator, value=-self.learning_rate / correction1)

    def snapshot(self) -> Tensor:
        """A copy of the parameters ``(p,)`` (e.g. the best so far)."""
        return self.parameters.clone()

    def restore(self, snapshot: Tensor) -> None:
        """Set the parameters to a :meth:`snapshot`."""
        with torch.no_grad():
            self.parameters.copy_(snapshot)
