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
        self._slices: dict[int, slice] = {}
        for parameter in trainable:
            size = parameter.numel()
            self._slices[id(parameter)] = slice(offset, offset + size)
            parameter.data = self.parameters[offset:offset + size].view_as(parameter)
            parameter.grad = self.gradients[offset:offset + size].view_as(parameter)
            offset += size
        self.learning_rate = float(learning_rate)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.eps = float(eps)
        self._first_moment = torch.zeros_like(self.parameters)
        self._second_moment = torch.zeros_like(self.parameters)
        self._steps = 0
        # per-element step counts, once a step has been limited to some elements
        self._element_steps: Tensor | None = None

    def active_except(self, frozen: list[nn.Parameter]) -> Tensor | None:
        """The ``(p,)`` mask for :meth:`step` that leaves out the ``frozen``
        parameters (of this optimiser's module); ``None`` when none is."""
        if not frozen:
            return None
        active = torch.ones_like(self.parameters, dtype=torch.bool)
        for parameter in frozen:
            active[self._slices[id(parameter)]] = False
        return active

    def zero_grad(self) -> None:
        """Set every gradient to zero (in place: the ``.grad`` views stay)."""
        self.gradients.zero_()

    def clip_grad_norm(self, max_norm: float) -> float:
        """Scale the gradients to a Euclidean norm of at most ``max_norm``, as
        ``torch.nn.utils.clip_grad_norm_`` does; returns the norm before."""
        return float(self.clip_grad_norms(max_norm, groups=1)[0])

    def clip_grad_norms(self, max_norm: float, groups: int) -> Tensor:
        """:meth:`clip_grad_norm` for each of ``groups`` equal consecutive
        parts of the buffer on its own (e.g. the members of
        ``nn.ModuleList(members)``, each clipped as if trained alone);
        returns the ``(groups,)`` norms before."""
        per_group = self.gradients.view(groups, -1)
        norms = torch.linalg.vector_norm(per_group, dim=1)
        per_group.mul_(torch.clamp(max_norm / (norms + 1e-6), max=1.0).unsqueeze(1))
        return norms

    def step(self, active: Tensor | None = None) -> None:
        """One Adam update of the parameters from the current gradients.

        ``active`` ``(p,)`` (bool), if given, limits the step to those
        elements: the others (e.g. a frozen part of the network) keep their
        values, moments and step count, as ``torch.optim.Adam`` leaves a
        parameter without a gradient alone, and start counting when they
        first take part.
        """
        if active is None and self._element_steps is None:
            self._steps += 1
            gradient = self.gradients
            self._first_moment.mul_(self.beta1).add_(gradient, alpha=1.0 - self.beta1)
            self._second_moment.mul_(self.beta2).addcmul_(gradient, gradient, value=1.0 - self.beta2)
            correction1 = 1.0 - self.beta1 ** self._steps
            correction2 = 1.0 - self.beta2 ** self._steps
            denominator = self._second_moment.sqrt().div_(math.sqrt(correction2)).add_(self.eps)
            with torch.no_grad():
                self.parameters.addcdiv_(self._first_moment, denominator, value=-self.learning_rate / correction1)
            return
        self._masked_step(torch.ones_like(self.parameters, dtype=torch.bool) if active is None else active)

    def _masked_step(self, active: Tensor) -> None:
        """:meth:`step` on the ``active`` ``(p,)`` elements, with a step count per element."""
        if active.shape != self.parameters.shape or active.dtype != torch.bool:
            raise ValueError(f"active must be a bool mask of shape {tuple(self.parameters.shape)}")
        if self._element_steps is None:
            self._element_steps = torch.full_like(self.parameters, float(self._steps))
        steps = self._element_steps.add_(active.to(self.parameters.dtype))
        gradient = self.gradients
        first = torch.where(active, self.beta1 * self._first_moment + (1.0 - self.beta1) * gradient,
                            self._first_moment)
        second = torch.where(active, self.beta2 * self._second_moment + (1.0 - self.beta2) * gradient * gradient,
                             self._second_moment)
        self._first_moment.copy_(first)
        self._second_moment.copy_(second)
        started = steps > 0
        safe_steps = torch.where(started, steps, torch.ones_like(steps))
        correction1 = 1.0 - self.beta1 ** safe_steps
        correction2 = 1.0 - self.beta2 ** safe_steps
        update = (first / correction1) / (second.sqrt() / correction2.sqrt() + self.eps)
        with torch.no_grad():
            self.parameters.sub_(torch.where(active & started, self.learning_rate * update,
                                             torch.zeros_like(update)))

    def snapshot(self) -> Tensor:
        """A copy of the parameters ``(p,)`` (e.g. the best so far)."""
        return self.parameters.clone()

    def restore(self, snapshot: Tensor) -> None:
        """Set the parameters to a :meth:`snapshot`."""
        with torch.no_grad():
            self.parameters.copy_(snapshot)
