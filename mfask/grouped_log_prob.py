"""``log q_k(z | x)`` of ``K`` flows of one architecture, evaluated together.

An ensemble's members (and the transfer guard's two candidates) are flows of
the same architecture trained on the same data with different seeds. Trained
one after another, each step of each member pays the per-operation overhead
of a few hundred small tensor operations, which at SBI's batch sizes is most
of a step's cost (``docs/benchmarks/training_profile.md``). Here the same
computation as :class:`~mfask.lean_log_prob.LeanLogProb` runs for all
members at once: every linear layer is one batched matrix product over the
member dimension, the splines and the LU layers take a leading member
dimension, so a step of ``K`` members costs about as many operations as a
step of one.

The members' weights are read from one ``(K, p)`` tensor whose rows are the
members' parameters in ``module.parameters()`` order (the layout of
:class:`~mfask.flat_adam.FlatAdam` over ``nn.ModuleList(members)``), so
gradients with respect to it are every member's gradient at once. Buffers
(standardisation, permutations) are stacked once when the evaluator is
built; they do not change during training.

It covers what the lean evaluator covers (spline couplings with linear
tails and LU layers, ``d >= 2``), with the default flattening embedding and
normflows' residual conditioner without batch norm or dropout;
:meth:`GroupedLogProb.for_flows` returns ``None`` for anything else, and the
caller trains the members one by one.

Shapes: ``rows`` is ``(k, p)`` (the members selected by ``members``), ``z``
``(k, n, d)``, ``x`` ``(k, n, *x_shape)``; results are ``(k, n)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import normflows
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mfask.estimator import ConditionalFlow
from mfask.lean_log_prob import LeanLogProb, rational_quadratic_spline

__all__ = ["GroupedLogProb"]


@dataclass(frozen=True)
class _Slot:
    """One parameter tensor: its place in ``module.parameters()`` order and its shape."""

    index: int
    shape: tuple[int, ...]

    def of(self, parts: Sequence[Tensor]) -> Tensor:
        """This parameter for every selected member, ``(k, *shape)``, from the
        rows split into one ``(k, size)`` part per parameter (one split, whose
        backward is one concatenation, instead of a slice per parameter)."""
        part = parts[self.index]
        return part.reshape(part.shape[0], *self.shape)


def _linear(inputs: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Per-member ``inputs @ weight.T + bias``: ``(k, n, i)``, ``(k, o, i)``, ``(k, o)`` -> ``(k, n, o)``."""
    return torch.baddbmm(bias.unsqueeze(1), inputs, weight.transpose(1, 2))


@dataclass(frozen=True)
class _GroupedCoupling:
    """One spline coupling of every member (density direction)."""

    identity: Tensor  # (n_id,) features given to the conditioner (the same in every member)
    transform: Tensor  # (n_tr,) features the conditional spline transforms
    order: Tensor  # (d,) transformed then identity features
    restore: Tensor  # (d,) inverse of order
    divisor: Tensor  # (3K - 1,)
    initial: tuple[_Slot, _Slot]
    blocks: tuple[tuple[_Slot, _Slot, _Slot, _Slot, _Slot, _Slot], ...]  # context, linear 0, linear 1
    final: tuple[_Slot, _Slot]
    unconditional: tuple[_Slot, _Slot, _Slot] | None  # widths, heights, derivatives
    tail_bound: float
    min_bin_size: float
    min_derivative: float

    def __call__(self, rows: Sequence[Tensor], u: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        count, num = u.shape[0], u.shape[1]
        hidden = _linear(torch.cat((u.index_select(2, self.identity), context), dim=2),
                         self.initial[0].of(rows), self.initial[1].of(rows))
        for context_w, context_b, first_w, first_b, second_w, second_b in self.blocks:
            update = _linear(F.relu(hidden), first_w.of(rows), first_b.of(rows))
            update = _linear(F.relu(update), second_w.of(rows), second_b.of(rows))
            gate = _linear(context, context_w.of(rows), context_b.of(rows))
            hidden = hidden + F.glu(torch.cat((update, gate), dim=2), dim=2)
        conditional = _linear(hidden, self.final[0].of(rows), self.final[1].of(rows))
        conditional = conditional.view(count, num, -1, self.divisor.shape[0]) / self.divisor.to(u.dtype)

        def transform(values: Tensor, parameters: Tensor) -> tuple[Tensor, Tensor]:
            return rational_quadratic_spline(values, parameters, tail_bound=self.tail_bound,
                                             min_bin_size=self.min_bin_size,
                                             min_derivative=self.min_derivative)

        if self.unconditional is None:
            outputs, logabsdet = transform(u.index_select(2, self.transform), conditional)
            return u.index_copy(2, self.transform, outputs), logabsdet.sum(dim=2)
        unconditional = torch.cat([slot.of(rows) for slot in self.unconditional], dim=-1)  # (k, n_id, 3K-1)
        parameters = torch.cat((conditional, unconditional.unsqueeze(1).expand(-1, num, -1, -1)), dim=2)
        outputs, logabsdet = transform(u.index_select(2, self.order), parameters)
        return outputs.index_select(2, self.restore), logabsdet.sum(dim=2)


@dataclass(frozen=True)
class _GroupedLU:
    """One ``LULinearPermute`` of every member: ``u -> L U (P_k u) + b``."""

    permutation: Tensor  # (K, d) each member's fixed permutation
    lower_index: tuple[Tensor, Tensor]
    upper_index: tuple[Tensor, Tensor]
    bias: _Slot
    lower_entries: _Slot
    upper_entries: _Slot
    upper_diagonal: _Slot
    eps: float

    def __call__(self, rows: Sequence[Tensor], members: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        count, num, dim = u.shape
        eye = torch.eye(dim, dtype=u.dtype, device=u.device).expand(count, dim, dim)
        member_axis = torch.arange(count, device=u.device).unsqueeze(1)
        lower = eye.index_put((member_axis, *(i.unsqueeze(0) for i in self.lower_index)),
                              self.lower_entries.of(rows))
        diagonal = F.softplus(self.upper_diagonal.of(rows)) + self.eps  # (k, d)
        upper = torch.diag_embed(diagonal).index_put(
            (member_axis, *(i.unsqueeze(0) for i in self.upper_index)), self.upper_entries.of(rows))
        permutation = self.permutation.index_select(0, members).unsqueeze(1).expand(-1, num, -1)
        permuted = u.gather(2, permutation)
        outputs = torch.baddbmm(self.bias.of(rows).unsqueeze(1),
                                torch.bmm(permuted, upper.transpose(1, 2)), lower.transpose(1, 2))
        return outputs, torch.log(diagonal).sum(dim=1, keepdim=True).expand(count, num)


class GroupedLogProb:
    """``log q_k(z | x)`` for ``K`` flows of one architecture (see the module doc).

    Build it with :meth:`for_flows`. Call it with the members' parameter rows
    (all ``K``, or a subset named by ``members``).
    """

    def __init__(self, steps: list[_GroupedCoupling | _GroupedLU], buffers: dict[str, Tensor],
                 sizes: list[int], conditional_standardization: bool) -> None:
        self._steps = steps  # density direction (data -> base)
        self._buffers = buffers  # name -> (K, ...)
        self._sizes = sizes  # scalars per parameter tensor, in module.parameters() order
        self.num_parameters = sum(sizes)
        self._conditional = conditional_standardization

    @classmethod
    def for_flows(cls, flows: Sequence[ConditionalFlow]) -> GroupedLogProb | None:
        """The grouped evaluator of ``flows``, or ``None`` when they differ in
        architecture or use a layer (or an embedding net) it does not cover."""
        first = flows[0]
        if not all(isinstance(f, ConditionalFlow) for f in flows):
            return None
        if any(f.config != first.config or f.x_shape != first.x_shape or f.theta_dim != first.theta_dim
               or type(f.embedding_net) is not nn.Flatten or f.device != first.device
               or LeanLogProb.for_flow(f.flow) is None for f in flows):
            return None
        names = [name for name, _ in first.named_parameters()]
        if any([name for name, _ in f.named_parameters()] != names for f in flows):
            return None
        slots = {name: _Slot(index, tuple(parameter.shape))
                 for index, (name, parameter) in enumerate(first.named_parameters())}
        sizes = [parameter.numel() for parameter in first.parameters()]
        steps: list[_GroupedCoupling | _GroupedLU] = []
        for index in reversed(range(len(first.flow.flows))):
            layers = [f.flow.flows[index] for f in flows]
            prefix = f"flow.flows.{index}."
            if type(layers[0]) is normflows.flows.CoupledRationalQuadraticSpline:
                step = _grouped_coupling(layers, prefix, slots)
            else:
                step = _grouped_lu(layers, prefix, slots)
            if step is None:
                return None
            steps.append(step)
        base = [f.flow.q0 for f in flows]
        if any(not torch.equal(q.loc, base[0].loc) or not torch.equal(q.log_scale, base[0].log_scale)
               or any(p.requires_grad for p in q.parameters()) for q in base):
            return None
        buffer_names = ["z_shift", "z_scale", "x_shift", "x_scale"]
        if first.config.conditional_standardization:
            buffer_names += ["z_slope", "feature_low", "feature_high"]
        buffers = {name: torch.stack([getattr(f, name) for f in flows]) for name in buffer_names}
        buffers["base_loc"] = base[0].loc.reshape(-1)
        buffers["base_log_scale"] = base[0].log_scale.reshape(-1)
        return cls(steps, buffers, sizes, first.config.conditional_standardization)

    def __call__(self, rows: Tensor, members: Tensor, z: Tensor, x: Tensor) -> Tensor:
        """``log q_k(z_ki | x_ki)`` ``(k, n)`` for the members ``members (k,)``
        (indices into the ``K`` flows) with parameters ``rows (k, p)``."""
        buffers = {name: value.index_select(0, members) for name, value in self._buffers.items()
                   if not name.startswith("base_")}
        count, num = z.shape[0], z.shape[1]
        parts = rows.split(self._sizes, dim=1)
        standardized = (x - buffers["x_shift"].unsqueeze(1)) / buffers["x_scale"].unsqueeze(1)
        context = standardized.reshape(count, num, -1)
        if self._conditional:
            features = torch.maximum(torch.minimum(context, buffers["feature_high"].unsqueeze(1)),
                                     buffers["feature_low"].unsqueeze(1))
            location = buffers["z_shift"].unsqueeze(1) + torch.bmm(features, buffers["z_slope"].transpose(1, 2))
        else:
            location = buffers["z_shift"].unsqueeze(1)
        scale = buffers["z_scale"].unsqueeze(1)
        u = (z - location) / scale
        log_det = torch.zeros(count, num, dtype=u.dtype, device=u.device)
        for step in self._steps:
            if isinstance(step, _GroupedLU):
                u, step_log_det = step(parts, members, u)
            else:
                u, step_log_det = step(parts, u, context)
            log_det = log_det + step_log_det
        loc, log_scale = self._buffers["base_loc"], self._buffers["base_log_scale"]
        standard = (u - loc) / torch.exp(log_scale)
        log_base = -0.5 * u.shape[2] * math.log(2 * math.pi) - torch.sum(
            log_scale + 0.5 * standard.pow(2), dim=2)
        return log_det + log_base - torch.log(buffers["z_scale"]).sum(dim=1, keepdim=True)


def _grouped_coupling(layers: list[nn.Module], prefix: str, slots: dict[str, _Slot]) -> _GroupedCoupling | None:
    first = layers[0].prqct
    for layer in layers:
        coupling = layer.prqct
        if not (torch.equal(coupling.identity_features, first.identity_features)
                and torch.equal(coupling.transform_features, first.transform_features)):
            return None
    net = first.transform_net
    if net.preprocessing is not None or any(
        block.use_batch_norm or block.dropout.p != 0.0 or not isinstance(block.activation, nn.ReLU)
        or not hasattr(block, "context_layer") for block in net.blocks
    ):
        return None
    device = first.identity_features.device
    order = torch.cat((first.transform_features, first.identity_features))
    bins = first.num_bins
    divisor = torch.ones(3 * bins - 1, dtype=torch.float64, device=device)
    divisor[: 2 * bins] = math.sqrt(net.hidden_features)
    net_prefix = prefix + "prqct.transform_net."

    def pair(name: str) -> tuple[_Slot, _Slot]:
        return slots[net_prefix + name + ".weight"], slots[net_prefix + name + ".bias"]

    blocks = tuple(
        (*pair(f"blocks.{b}.context_layer"), *pair(f"blocks.{b}.linear_layers.0"),
         *pair(f"blocks.{b}.linear_layers.1"))
        for b in range(len(net.blocks))
    )
    unconditional = None
    if first.unconditional_transform is not None:
        spline_prefix = prefix + "prqct.unconditional_transform.unnormalized_"
        unconditional = (slots[spline_prefix + "widths"], slots[spline_prefix + "heights"],
                         slots[spline_prefix + "derivatives"])
    return _GroupedCoupling(
        identity=first.identity_features.clone(), transform=first.transform_features.clone(),
        order=order, restore=torch.argsort(order), divisor=divisor,
        initial=pair("initial_layer"), blocks=blocks, final=pair("final_layer"),  # type: ignore[arg-type]
        unconditional=unconditional, tail_bound=float(first.tail_bound),
        min_bin_size=float(first.min_bin_width), min_derivative=float(first.min_derivative),
    )


def _grouped_lu(layers: list[nn.Module], prefix: str, slots: dict[str, _Slot]) -> _GroupedLU | None:
    if any(type(layer) is not normflows.flows.LULinearPermute for layer in layers):
        return None
    linear = layers[0].linear
    device = linear.lower_entries.device
    return _GroupedLU(
        permutation=torch.stack([layer.permutation._permutation for layer in layers]),
        lower_index=tuple(torch.as_tensor(i, dtype=torch.long, device=device)  # type: ignore[arg-type]
                          for i in linear.lower_indices),
        upper_index=tuple(torch.as_tensor(i, dtype=torch.long, device=device)  # type: ignore[arg-type]
                          for i in linear.upper_indices),
        bias=slots[prefix + "linear.bias"], lower_entries=slots[prefix + "linear.lower_entries"],
        upper_entries=slots[prefix + "linear.upper_entries"],
        upper_diagonal=slots[prefix + "linear.unconstrained_upper_diag"], eps=float(linear.eps),
    )
