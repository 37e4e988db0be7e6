"""The training loop for a :class:`~mfask.estimator.ConditionalFlow`.

Maximum likelihood (the NPE loss ``-log q(z | x)``) with the field's defaults:
a random 10% validation split, Adam at 5e-4, batches of 200, gradient norm
clipped at 5, and early stopping after 20 epochs without a better validation
loss, after which the best weights are restored. Warm starts (fine-tuning a
copy of a lower fidelity's model, or continuing from an earlier round) simply
pass a flow that already has weights; a :class:`~mfask.fine_tuning.FineTuningStart`
adds the L2-SP pull towards the pre-trained weights and freezes the
conditioner trunk for the first epochs.

The loop indexes tensors directly instead of going through a ``DataLoader``:
for the small tabular data sets of SBI the loader's per-batch overhead costs
more than the network. The optimiser is :class:`~mfask.flat_adam.FlatAdam`
(Adam on one flat buffer; ``docs/benchmarks/training_profile.md`` measures
why).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import Tensor

from mfask.errors import InvalidInputError, NotEnoughDataError
from mfask.estimator import ConditionalFlow
from mfask.fine_tuning import FineTuningStart
from mfask.flat_adam import FlatAdam

__all__ = [
    "TrainingConfig", "TrainingHistory", "EpochReport", "EarlyStopping", "ValidationSplit", "train_flow",
    "validation_split", "negative_log_probs", "mean_of_losses",
]

# Validation loss is evaluated in chunks of this many rows to bound memory.
_EVAL_CHUNK = 8192


@dataclass(frozen=True)
class TrainingConfig:
    """Settings of the training loop; the defaults are the field's standard ones.

    Arguments:
        learning_rate: Adam step size.
        batch_size: rows per gradient step.
        validation_fraction: share of the data held out for early stopping
            (at least one row is held out).
        stop_after_epochs: stop when the validation loss has not improved for
            this many epochs; the best weights are then restored.
        max_epochs: hard cap on epochs.
        clip_max_norm: gradient norm clipping; ``None`` disables it.
    """

    learning_rate: float = 5e-4
    batch_size: int = 200
    validation_fraction: float = 0.1
    stop_after_epochs: int = 20
    max_epochs: int = 10_000
    clip_max_norm: float | None = 5.0

    def __post_init__(self) -> None:
        if not self.learning_rate > 0:
            raise InvalidInputError(f"learning_rate must be > 0; got {self.learning_rate!r}")
        for name in ("batch_size", "stop_after_epochs", "max_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name} must be a positive integer; got {value!r}")
        if not 0 < self.validation_fraction < 1:
            raise InvalidInputError(
                f"validation_fraction must be in (0, 1); got {self.validation_fraction!r}"
            )
        if self.clip_max_norm is not None and not self.clip_max_norm > 0:
            raise InvalidInputError(
                f"clip_max_norm must be > 0 or None; got {self.clip_max_norm!r}"
            )

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-compatible form."""
        return asdict(self)


@dataclass(frozen=True)
class EpochReport:
    """What a progress callback receives after each epoch."""

    epoch: int
    train_loss: float
    validation_loss: float
    best_validation_loss: float
    epochs_since_improvement: int


@dataclass
class TrainingHistory:
    """Losses per epoch and how training ended."""

    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    num_train: int = 0
    num_validation: int = 0
    seconds: float = 0.0
    stopped_early: bool = False
    #: where the weights started: ``"fresh"`` (a new initialisation),
    #: ``"pre-trained"`` (copied from the level below), ``"warm"`` (this
    #: level's previous weights); empty in histories saved before it existed
    start: str = ""
    #: ``"fine-tuned"`` or ``"hf-only"`` when the transfer guard trained two
    #: candidates (see :mod:`mfask.transfer_guard`), else empty
    candidate: str = ""
    #: whether this network is part of the level's posterior
    selected: bool = True

    @property
    def epochs(self) -> int:
        """Number of epochs run."""
        return len(self.train_loss)

    @property
    def best_validation_loss(self) -> float:
        """Validation loss of the restored weights."""
        return self.validation_loss[self.best_epoch] if self.best_epoch >= 0 else math.nan

    def to_dict(self) -> dict[str, object]:
        """JSON-compatible form."""
        return asdict(self)


@dataclass
class EarlyStopping:
    """The stopping rule of one network's training: patience counted in
    epochs without a better validation loss, not before a frozen trunk is
    released (whose release restarts the count).

    Arguments:
        patience: ``TrainingConfig.stop_after_epochs``.
        freeze_epochs: epochs the trunk stays frozen (0: none).
    """

    patience: int
    freeze_epochs: int = 0
    best_loss: float = math.inf
    since_improvement: int = 0

    def start_epoch(self, epoch: int) -> None:
        """Called before ``epoch`` trains: at the trunk's release patience counts afresh."""
        if epoch == self.freeze_epochs and self.freeze_epochs > 0:
            self.since_improvement = 0

    def record(self, validation_loss: float) -> bool:
        """Count an epoch's validation loss; ``True`` when it is the best so far."""
        if validation_loss < self.best_loss:
            self.best_loss = validation_loss
            self.since_improvement = 0
            return True
        self.since_improvement += 1
        return False

    def should_stop(self, epoch: int) -> bool:
        """Whether training stops after ``epoch`` (patience used up, trunk released)."""
        return self.since_improvement >= self.patience and epoch >= self.freeze_epochs


def train_flow(
    flow: ConditionalFlow,
    z: Tensor,
    x: Tensor,
    config: TrainingConfig = TrainingConfig(),
    *,
    seed: int,
    progress: Callable[[EpochReport], None] | None = None,
    fine_tuning: FineTuningStart | None = None,
) -> TrainingHistory:
    """Fit ``flow`` to pairs ``(z, x)`` by maximum likelihood, in place.

    Arguments:
        flow: the model; its standardisation must already be set.
        z: ``(n, d)`` float32 parameters in unbounded space.
        x: ``(n, *x_shape)`` float32 simulator outputs. Both may stay on the
            CPU whatever the flow's device: batches move one at a time.
        config: the loop's settings.
        seed: seeds the validation split and the batch order (drawn on the
            CPU, so the same on every device).
        progress: called after every epoch with an :class:`EpochReport`.
        fine_tuning: for a flow copied from a lower level, the L2-SP penalty
            (added to every batch's loss; the recorded losses are the NLL
            alone) and the trunk frozen for the first epochs (during which
            early stopping waits; its patience starts at the release).

    Returns:
        The :class:`TrainingHistory`; ``flow`` holds the best weights found.
    """
    num_rows = z.shape[0]
    if num_rows < 2:
        raise NotEnoughDataError(
            f"training needs at least 2 successful simulations; got {num_rows}"
        )
    split = validation_split(num_rows, config.validation_fraction, seed)
    generator = split.generator
    z_train, x_train = z[split.train], x[split.train]
    z_val, x_val = z[split.validation], x[split.validation]
    num_train, num_validation = z_train.shape[0], z_val.shape[0]

    device = flow.device
    named = list(flow.named_parameters())  # collected once: walking the module tree every step costs
    optimizer = FlatAdam(flow, config.learning_rate)
    history = TrainingHistory(num_train=num_train, num_validation=num_validation)
    freeze_epochs = fine_tuning.config.freeze_epochs if fine_tuning is not None else 0
    stopping = EarlyStopping(config.stop_after_epochs, freeze_epochs)
    best_parameters = optimizer.snapshot()
    buffers = list(flow.buffers())  # fixed for mfask's flows; a user's embedding net may update some
    best_buffers = [buffer.clone() for buffer in buffers]
    started = time.perf_counter()
    for epoch in range(config.max_epochs):
        flow.train()
        stopping.start_epoch(epoch)
        frozen_names = set(fine_tuning.frozen(epoch)) if fine_tuning is not None else set()
        frozen = [parameter for name, parameter in named if name in frozen_names]
        active = optimizer.active_except(frozen)
        batches = torch.randperm(num_train, generator=generator).split(config.batch_size)
        total = 0.0
        for batch in batches:
            optimizer.zero_grad()
            # the data stay where they are (the CPU); each batch moves to the flow's device
            loss = -flow.log_prob(z_train[batch].to(device), x_train[batch].to(device)).mean()
            penalty = fine_tuning.penalty(named, num_train) if fine_tuning is not None else None
            (loss if penalty is None else loss + penalty).backward()
            for parameter in frozen:  # no gradient (nor clipping share): Adam leaves it and its moments alone
                parameter.grad.zero_()
            if config.clip_max_norm is not None:
                optimizer.clip_grad_norm(config.clip_max_norm)
            optimizer.step(active)
            total += loss.item() * batch.shape[0]
        history.train_loss.append(total / num_train)

        validation_loss = mean_negative_log_prob(flow, z_val, x_val)
        history.validation_loss.append(validation_loss)
        if stopping.record(validation_loss):
            best_parameters = optimizer.snapshot()
            best_buffers = [buffer.clone() for buffer in buffers]
            history.best_epoch = epoch
        if progress is not None:
            progress(EpochReport(epoch, history.train_loss[-1], validation_loss,
                                 stopping.best_loss, stopping.since_improvement))
        if stopping.should_stop(epoch):
            history.stopped_early = True
            break
    optimizer.restore(best_parameters)
    with torch.no_grad():
        for buffer, best in zip(buffers, best_buffers):
            buffer.copy_(best)
    flow.eval()
    history.seconds = time.perf_counter() - started
    return history


@dataclass(frozen=True)
class ValidationSplit:
    """The rows a training run holds out, and the generator it continues with.

    Attributes:
        validation: ``(m,)`` int64 indices of the held-out rows.
        train: ``(n - m,)`` int64 indices of the training rows.
        generator: the seeded generator after drawing the split (it then
            draws the batch order).
    """

    validation: Tensor
    train: Tensor
    generator: torch.Generator


def validation_split(num_rows: int, fraction: float, seed: int) -> ValidationSplit:
    """The split :func:`train_flow` uses for ``num_rows`` rows and ``seed``:
    a random ``round(fraction * num_rows)`` rows (at least one) held out."""
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(num_rows, generator=generator)
    num_validation = max(1, int(round(fraction * num_rows)))
    return ValidationSplit(order[:num_validation], order[num_validation:], generator)


def negative_log_probs(flow: ConditionalFlow, z: Tensor, x: Tensor) -> Tensor:
    """``-log q(z_i | x_i)`` per row, ``(n,)``, for ``z (n, d)``, ``x (n, *x_shape)``,
    without autograd and in chunks that bound memory."""
    flow.eval()
    with torch.no_grad():
        return torch.cat([
            -flow.log_prob(z[start:start + _EVAL_CHUNK], x[start:start + _EVAL_CHUNK])
            for start in range(0, z.shape[0], _EVAL_CHUNK)
        ])


def mean_negative_log_prob(flow: ConditionalFlow, z: Tensor, x: Tensor) -> float:
    """Mean of ``-log q(z | x)`` over paired rows ``z (n, d)``, ``x (n, *x_shape)``.

    Non-finite values (a diverged model) give ``inf``.
    """
    return mean_of_losses(negative_log_probs(flow, z, x))


def mean_of_losses(losses: Tensor) -> float:
    """The mean of per-row losses ``(n,)`` as the stopping rule reads it: summed
    in chunks in float64, ``inf`` when not finite (a diverged model)."""
    value = sum(float(part.sum()) for part in losses.split(_EVAL_CHUNK)) / losses.shape[0]
    return value if math.isfinite(value) else math.inf
