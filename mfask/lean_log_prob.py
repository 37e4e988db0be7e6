"""A lean evaluation of ``log q(u | context)`` for mfask's normflows spline stack.

:class:`~mfask.estimator.ConditionalFlow` keeps normflows as its flow library:
the layers, their parameters (and so the saved state) and sampling are
normflows'. Evaluating the density through normflows' layer methods, however,
costs thousands of small tensor operations per call (boolean-mask indexing of
the spline tails, numpy index arrays converted on every call, scatter of the
coupling halves, seven separate gathers per spline). At the batch sizes of SBI
training (a few hundred rows of a few dimensions) that per-operation overhead,
not arithmetic, is what a training step costs.

:class:`LeanLogProb` computes the same density from the same parameters with
far fewer operations:

* the rational-quadratic spline with linear tails is evaluated on all elements
  at once (inputs clamped to the spline's interval, tails selected with
  ``torch.where``) instead of on a masked subset;
* in a coupling layer, the conditional spline of the transformed features and
  the unconditional spline of the identity features are evaluated in one call;
* widths and heights share one softmax, taken over a leading dimension
  (torch's CPU softmax over a short last dimension is slow);
* the six per-bin quantities are gathered at once from a stacked tensor;
* the LU linear layer's triangular factors are assembled with precomputed
  index tensors.

It is the same mathematics as ``normflows.ConditionalNormalizingFlow.log_prob``:
in float64 the two agree to about 1e-11, values and gradients; in float32 they
differ only by rounding (``tests/test_lean_log_prob.py``). It covers
the layers :func:`mfask.estimator._spline_layers` builds for ``d >= 2``
(``CoupledRationalQuadraticSpline`` with linear tails, ``LULinearPermute``)
and a fixed ``DiagGaussian`` base; :meth:`LeanLogProb.for_flow` returns
``None`` for any other stack, and the caller then uses normflows directly.

Shapes: ``u`` is ``(n, d)``, ``context`` is ``(n, k)``; results are ``(n,)``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import normflows
import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["LeanLogProb", "rational_quadratic_spline"]


def rational_quadratic_spline(
    inputs: Tensor,
    unnormalized: Tensor,
    *,
    tail_bound: float,
    min_bin_size: float,
    min_derivative: float,
) -> tuple[Tensor, Tensor]:
    """Monotonic rational-quadratic spline on ``[-B, B]`` with identity (linear) tails.

    The spline of Durkan et al. (2019), forward direction, in the
    parametrisation normflows uses: ``K`` bin widths and ``K`` bin heights from
    a softmax (each at least ``min_bin_size`` of the interval), ``K - 1``
    interior knot derivatives from a softplus (at least ``min_derivative``);
    the boundary derivatives are 1 so the spline joins the identity tails.

    Arguments:
        inputs: ``(...)`` values to transform.
        unnormalized: ``(..., 3K - 1)`` spline parameters in normflows' order:
            ``K`` width logits, ``K`` height logits, ``K - 1`` derivative
            pre-activations.
        tail_bound: ``B``; outside ``[-B, B]`` the map is the identity.

    Returns:
        ``outputs (...)`` and ``log |d outputs / d inputs| (...)``.
    """
    num_bins = (unnormalized.shape[-1] + 1) // 3
    if min_bin_size * num_bins > 1.0:
        raise ValueError("minimal bin size too large for the number of bins")
    inside = (inputs >= -tail_bound) & (inputs <= tail_bound)
    # Elements in the tails are evaluated at the nearest bound (finite values,
    # so no NaN reaches the gradient) and then replaced by the identity.
    x = inputs.clamp(-tail_bound, tail_bound)

    # Widths and heights together: (..., 2, K) -> knots (..., 2, K + 1).
    sizes = min_bin_size + (1 - min_bin_size * num_bins) * _softmax_last(
        unnormalized[..., : 2 * num_bins].unflatten(-1, (2, num_bins))
    )
    interior = (2 * tail_bound) * torch.cumsum(sizes, dim=-1)[..., :-1] - tail_bound
    # Zero-padding and adding (-B, 0, ..., 0, B) puts the end knots exactly at +-B.
    knots = F.pad(interior, (1, 1)) + _end_knots(num_bins, tail_bound, interior.dtype, interior.device)
    sizes = knots[..., 1:] - knots[..., :-1]
    # The boundary derivatives are 1: softplus of this constant is 1 - min_derivative.
    boundary = math.log(math.exp(1.0 - min_derivative) - 1.0)
    derivatives = min_derivative + F.softplus(
        F.pad(unnormalized[..., 2 * num_bins :], (1, 1), value=boundary)
    )

    # Bin of each input: the number of interior x-knots at or below it.
    bin_index = (x.unsqueeze(-1) >= knots[..., 0, 1:-1]).sum(dim=-1, keepdim=True)
    per_bin = torch.cat(
        (knots[..., :-1], sizes, derivatives[..., None, :-1], derivatives[..., None, 1:]),
        dim=-2,
    )  # (..., 6, K): x-knot, y-knot, width, height, left and right derivative
    gathered = per_bin.gather(-1, bin_index.unsqueeze(-2).expand(*per_bin.shape[:-1], 1))
    x_k, y_k, width, height, d_k, d_k1 = gathered.squeeze(-1).unbind(-1)

    slope = height / width
    theta = (x - x_k) / width
    theta_one_minus_theta = theta * (1 - theta)
    numerator = height * (slope * theta.pow(2) + d_k * theta_one_minus_theta)
    denominator = slope + (d_k + d_k1 - 2 * slope) * theta_one_minus_theta
    outputs = y_k + numerator / denominator
    derivative_numerator = slope.pow(2) * (
        d_k1 * theta.pow(2) + 2 * slope * theta_one_minus_theta + d_k * (1 - theta).pow(2)
    )
    logabsdet = torch.log(derivative_numerator) - 2 * torch.log(denominator)
    return torch.where(inside, outputs, inputs), torch.where(inside, logabsdet, 0.0)


def _softmax_last(values: Tensor) -> Tensor:
    """Softmax over the last dimension, computed over a leading one.

    On CPU, torch's last-dimension softmax kernel costs about 0.4 us per row
    when the dimension is short (10 bins), several times the cost of the same
    softmax taken over the first dimension of the transposed view (measured
    with torch 2.13, one thread); the results agree to float rounding.
    """
    return F.softmax(values.movedim(-1, 0), dim=0).movedim(0, -1)


@functools.lru_cache(maxsize=None)
def _end_knots(num_bins: int, bound: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(K + 1,)`` zeros but ``-bound`` first and ``bound`` last: added to the
    zero-padded interior knots, it puts the end knots exactly at the bounds.
    Cached (read-only)."""
    ends = torch.zeros(num_bins + 1, dtype=dtype, device=device)
    ends[0], ends[-1] = -bound, bound
    return ends


@dataclass
class _Coupling:
    """One ``CoupledRationalQuadraticSpline``, read in its density direction."""

    layer: normflows.flows.CoupledRationalQuadraticSpline
    identity: Tensor  # (n_id,) feature indices passed to the conditioner
    transform: Tensor  # (n_tr,) feature indices the conditional spline transforms
    order: Tensor  # (d,) transformed features, then identity features
    restore: Tensor  # (d,) inverse of ``order``
    divisor: Tensor  # (3K - 1,) float64; scales the conditioner's width/height logits

    def __call__(self, u: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        coupling = self.layer.prqct
        rows = u.shape[0]
        conditional = coupling.transform_net(u.index_select(1, self.identity), context)
        conditional = conditional.view(rows, -1, self.divisor.shape[0]) / self.divisor.to(u.dtype)
        spline = coupling.unconditional_transform

        def transform(values: Tensor, parameters: Tensor) -> tuple[Tensor, Tensor]:
            return rational_quadratic_spline(
                values, parameters, tail_bound=coupling.tail_bound,
                min_bin_size=coupling.min_bin_width, min_derivative=coupling.min_derivative,
            )

        if spline is None:  # the pass-through features stay as they are
            outputs, logabsdet = transform(u.index_select(1, self.transform), conditional)
            return u.index_copy(1, self.transform, outputs), logabsdet.sum(dim=1)
        unconditional = torch.cat(
            (spline.unnormalized_widths, spline.unnormalized_heights, spline.unnormalized_derivatives),
            dim=-1,
        )
        parameters = torch.cat((conditional, unconditional.expand(rows, -1, -1)), dim=1)
        outputs, logabsdet = transform(u.index_select(1, self.order), parameters)
        return outputs.index_select(1, self.restore), logabsdet.sum(dim=1)


@dataclass
class _LUPermute:
    """One ``LULinearPermute``: ``u -> LU (P u) + b`` in the density direction."""

    layer: normflows.flows.LULinearPermute
    lower_index: tuple[Tensor, Tensor]
    upper_index: tuple[Tensor, Tensor]
    permutation: Tensor  # (d,) the layer's fixed permutation

    def __call__(self, u: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        linear = self.layer.linear
        dim = linear.features
        eye = torch.eye(dim, dtype=u.dtype, device=u.device)
        lower = eye.index_put(self.lower_index, linear.lower_entries)
        diagonal = F.softplus(linear.unconstrained_upper_diag) + linear.eps
        upper = torch.diag(diagonal).index_put(self.upper_index, linear.upper_entries)
        outputs = F.linear(F.linear(u.index_select(1, self.permutation), upper), lower, linear.bias)
        return outputs, torch.log(diagonal).sum().expand(u.shape[0])


class LeanLogProb:
    """``log q(u | context)`` of a normflows spline stack, with few operations.

    Build it with :meth:`for_flow`; it reads the flow's parameters on every
    call (it holds no copy), so it stays valid while the flow trains and
    when weights are loaded into it.
    """

    def __init__(self, steps: list[_Coupling | _LUPermute], base: normflows.distributions.DiagGaussian) -> None:
        self._steps = steps  # in the density direction (data -> base)
        self._base = base

    @classmethod
    def for_flow(cls, flow: normflows.ConditionalNormalizingFlow) -> LeanLogProb | None:
        """The lean evaluator of ``flow``, or ``None`` if the stack holds a
        layer (or a layer setting) it does not reproduce."""
        base = flow.q0
        if type(base) is not normflows.distributions.DiagGaussian or len(base.shape) != 1:
            return None
        steps: list[_Coupling | _LUPermute] = []
        for layer in reversed(flow.flows):
            if type(layer) is normflows.flows.CoupledRationalQuadraticSpline:
                step = _coupling_step(layer)
            elif type(layer) is normflows.flows.LULinearPermute:
                step = _lu_step(layer)
            else:
                return None
            if step is None:
                return None
            steps.append(step)
        return cls(steps, base)

    def __call__(self, u: Tensor, context: Tensor) -> Tensor:
        """``log q(u | context)``: ``u (n, d)``, ``context (n, k)`` -> ``(n,)``."""
        if self._base.temperature is not None:
            raise ValueError("the lean evaluator does not support a tempered base distribution")
        log_det = None
        for step in self._steps:
            u, step_log_det = step(u, context)
            log_det = step_log_det if log_det is None else log_det + step_log_det
        base = self._base
        standard = (u - base.loc) / torch.exp(base.log_scale)
        log_base = -0.5 * base.d * math.log(2 * math.pi) - torch.sum(
            base.log_scale + 0.5 * standard.pow(2), dim=1
        )
        return log_base if log_det is None else log_det + log_base


def _coupling_step(layer: normflows.flows.CoupledRationalQuadraticSpline) -> _Coupling | None:
    coupling = layer.prqct
    spline = coupling.unconditional_transform
    net = coupling.transform_net
    if (
        coupling.tails != "linear"
        or torch.is_tensor(coupling.tail_bound)
        or coupling.min_bin_width != coupling.min_bin_height
        or not hasattr(net, "hidden_features")
        or (spline is not None and (
            type(spline) is not normflows.flows.neural_spline.coupling.PiecewiseRationalQuadraticCDF
            or spline.tails != "linear"
            or spline.tail_bound != coupling.tail_bound
            or (spline.min_bin_width, spline.min_bin_height, spline.min_derivative)
            != (coupling.min_bin_width, coupling.min_bin_height, coupling.min_derivative)
        ))
    ):
        return None
    order = torch.cat((coupling.transform_features, coupling.identity_features))
    bins = coupling.num_bins
    device = next(net.parameters()).device  # index tensors live with the layer's weights
    divisor = torch.ones(3 * bins - 1, dtype=torch.float64, device=device)
    divisor[: 2 * bins] = math.sqrt(net.hidden_features)
    return _Coupling(
        layer=layer,
        identity=coupling.identity_features.to(device, copy=True),
        transform=coupling.transform_features.to(device, copy=True),
        order=order.to(device),
        restore=torch.argsort(order).to(device),
        divisor=divisor,
    )


def _lu_step(layer: normflows.flows.LULinearPermute) -> _LUPermute:
    linear = layer.linear
    device = linear.lower_entries.device
    return _LUPermute(
        layer=layer,
        lower_index=tuple(torch.as_tensor(i, dtype=torch.long, device=device) for i in linear.lower_indices),
        upper_index=tuple(torch.as_tensor(i, dtype=torch.long, device=device) for i in linear.upper_indices),
        permutation=layer.permutation._permutation,
    )
