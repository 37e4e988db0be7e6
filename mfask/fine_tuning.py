"""How a level fine-tunes the weights it starts from: L2-SP and a frozen trunk.

MF-NPE starts a higher fidelity level from a copy of the lower level's
trained flow. :class:`FineTuningConfig` says how much of that pre-training
the fine-tuning keeps:

* ``l2sp`` (L2 towards the starting point): the fine-tuning loss becomes
  ``mean_i -log q(z_i | x_i) + (l2sp / n) * ||w - w_pre||^2``, summed over
  every trainable weight of the flow (and its embedding net), ``n`` being
  the rows the network trains on and ``w_pre`` the lower level's weights.
  Read ``l2sp`` as the precision of a Gaussian prior ``N(w_pre, 1 / (2 l2sp))``
  on each weight: the training loss is a mean over rows, so the prior's
  term is divided by ``n`` to keep the posterior over weights the same
  however the loss is scaled. The pull therefore fades as the level's data
  grow (as it should: with many HF simulations the pre-training matters
  less), and ``l2sp`` means the same at every budget. It is not divided by
  the number of weights: a per-weight prior precision does not depend on
  how many weights there are.
* ``freeze_epochs``: the conditioner **trunk** (the embedding net and every
  coupling conditioner's residual network except its output layer, i.e. the
  part that turns ``x`` into features) keeps its pre-trained weights for the
  first ``freeze_epochs`` epochs; only the heads (the conditioners' output
  layers, the unconditional splines, the LU mixing layers) move. Then
  everything trains. Early stopping does not end training while the trunk
  is frozen, and its patience counts afresh from the release (the best
  weights seen, frozen phase included, are still the ones restored).

Both apply only to the fine-tuned networks of a level that starts from a
lower level's weights (also at its warm refits, with the lower level's
weights as ``w_pre``); a fresh network, the lowest level and the transfer
guard's HF-only candidate train as before. The default (``0``, ``0``) is
plain fine-tuning; ``docs/fine_tuning.md`` has the measurement behind it.

Shapes: the anchor is one tensor per trainable parameter, each of that
parameter's shape.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from torch import Tensor, nn

from mfask.errors import InvalidInputError, StateFormatError

__all__ = ["FineTuningConfig", "FineTuningStart", "trunk_parameter_names"]

# Names of the normflows conditioner networks (coupling and 1-D autoregressive
# stacks) and of their output layer, which maps features to spline parameters.
_CONDITIONER_NETS = (".transform_net.", ".autoregressive_net.")
_OUTPUT_LAYER = ".final_layer."


@dataclass(frozen=True)
class FineTuningConfig:
    """How the fine-tuned networks of a transferred level train (see the module doc).

    Arguments:
        l2sp: precision of the pull towards the pre-trained weights, ``>= 0``;
            ``0`` turns it off.
        freeze_epochs: epochs for which the conditioner trunk stays at its
            pre-trained weights, a non-negative integer; ``0`` turns it off.
    """

    l2sp: float = 0.0
    freeze_epochs: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.l2sp, bool) or not isinstance(self.l2sp, (int, float)) \
                or not math.isfinite(self.l2sp) or self.l2sp < 0:
            raise InvalidInputError(f"l2sp must be a finite number >= 0; got {self.l2sp!r}")
        if isinstance(self.freeze_epochs, bool) or not isinstance(self.freeze_epochs, int) \
                or self.freeze_epochs < 0:
            raise InvalidInputError(
                f"freeze_epochs must be a non-negative integer; got {self.freeze_epochs!r}"
            )
        object.__setattr__(self, "l2sp", float(self.l2sp))

    @property
    def is_plain(self) -> bool:
        """Whether this is plain fine-tuning (neither option on)."""
        return self.l2sp == 0.0 and self.freeze_epochs == 0

    def to_dict(self) -> dict[str, float | int]:
        """JSON-compatible form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Any) -> "FineTuningConfig":
        """Inverse of :meth:`to_dict`; raises :class:`StateFormatError` on bad input."""
        if not isinstance(values, dict) or not set(values) <= {"l2sp", "freeze_epochs"}:
            raise StateFormatError(f"malformed fine-tuning settings: {values!r}")
        try:
            return cls(**values)
        except InvalidInputError as error:
            raise StateFormatError(f"malformed fine-tuning settings: {error}") from None


def trunk_parameter_names(flow: nn.Module) -> list[str]:
    """Names of the trunk's parameters in ``flow`` (a
    :class:`~mfask.estimator.ConditionalFlow`): the embedding net's and the
    conditioner networks' except their output layers."""
    names = []
    for name, parameter in flow.named_parameters():
        if not parameter.requires_grad:
            continue
        in_conditioner = any(part in name for part in _CONDITIONER_NETS) and _OUTPUT_LAYER not in name
        if in_conditioner or name.startswith("embedding_net."):
            names.append(name)
    return names


class FineTuningStart:
    """One network's fine-tuning: the settings and the weights it started from.

    Built before training from the network as copied from the lower level
    (:meth:`from_pretrained`); the training loop (:func:`mfask.training.train_flow`)
    adds :meth:`penalty` to each batch's loss and drops the gradients of
    :meth:`frozen` parameters.

    Arguments:
        config: the settings.
        anchor: ``{name: tensor}`` the pre-trained value of every trainable parameter.
        trunk: names of the parameters frozen during the first ``config.freeze_epochs`` epochs.
    """

    def __init__(self, config: FineTuningConfig, anchor: dict[str, Tensor], trunk: Sequence[str]) -> None:
        self.config = config
        self.anchor = anchor
        self.trunk = tuple(trunk)

    @classmethod
    def from_pretrained(cls, config: FineTuningConfig, flow: nn.Module) -> "FineTuningStart":
        """Record ``flow``'s current weights as the anchor (a detached copy)."""
        anchor = {name: parameter.detach().clone()
                  for name, parameter in flow.named_parameters() if parameter.requires_grad}
        return cls(config, anchor, trunk_parameter_names(flow))

    def penalty(self, named_parameters: Sequence[tuple[str, Tensor]], num_rows: int) -> Tensor | None:
        """``(l2sp / num_rows) * sum ||w - w_pre||^2`` over the anchored
        parameters (a scalar with gradient), or ``None`` when ``l2sp`` is 0."""
        if self.config.l2sp == 0.0:
            return None
        total = sum(((parameter - self.anchor[name]) ** 2).sum()
                    for name, parameter in named_parameters if name in self.anchor)
        return total * (self.config.l2sp / max(int(num_rows), 1))

    def frozen(self, epoch: int) -> tuple[str, ...]:
        """Names of the parameters that must not move at (0-based) ``epoch``."""
        return self.trunk if epoch < self.config.freeze_epochs else ()
