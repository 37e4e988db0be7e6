"""Training ``K`` flows of one architecture together, one batched step for all.

The same loop as :func:`mfask.training.train_flow`, run for every member at
once: member ``k`` keeps its own validation split, batch order, Adam state,
gradient clipping, early stopping and best weights (all from its own seed,
exactly as when trained alone), but each step evaluates and differentiates
all members' losses in one pass of :class:`~mfask.grouped_log_prob.GroupedLogProb`
and updates them with one :class:`~mfask.flat_adam.FlatAdam` over
``nn.ModuleList(members)``. A member that has stopped leaves the batch; the
others go on (the last one through its own evaluation, which is cheaper for
one network than the grouped one). In exact arithmetic the result is the one-at-a-time result;
in floating point it differs by rounding (the per-member losses are
bitwise equal, their gradients are summed in another order).

Only plain training is grouped: a member with an L2-SP pull or a frozen
trunk (:class:`~mfask.fine_tuning.FineTuningStart` with non-zero settings)
is trained alone, see :func:`can_train_together`.

Shapes: ``z`` is ``(n, d)`` float32 in unbounded space; ``x`` is
``(n, *x_shape)`` float32; both stay where they are (batches move to the
flows' device).
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from mfask.errors import InvalidInputError, NotEnoughDataError
from mfask.estimator import ConditionalFlow
from mfask.fine_tuning import FineTuningStart
from mfask.flat_adam import FlatAdam
from mfask.grouped_log_prob import GroupedLogProb
from mfask.training import (
    EarlyStopping,
    EpochReport,
    TrainingConfig,
    TrainingHistory,
    mean_of_losses,
    validation_split,
)

__all__ = ["can_train_together", "train_flows_together"]

Progress = Callable[[EpochReport], None] | None

# rows of the validation pass per member and chunk (bounds memory as train_flow's chunks do)
_EVAL_ROWS = 8192


def can_train_together(members: Sequence[ConditionalFlow],
                       fine_tuning: Sequence[FineTuningStart | None]) -> bool:
    """Whether :func:`train_flows_together` covers these members: at least
    two, one architecture the grouped evaluator covers, plain training."""
    plain = all(start is None or (start.config.l2sp == 0.0 and start.config.freeze_epochs == 0)
                for start in fine_tuning)
    return (len(members) >= 2 and plain
            and all(p.requires_grad for member in members for p in member.parameters())
            and GroupedLogProb.for_flows(members) is not None)


def train_flows_together(
    members: Sequence[ConditionalFlow],
    z: Tensor,
    x: Tensor,
    config: TrainingConfig,
    seeds: Sequence[int],
    progress: Sequence[Progress] | None = None,
) -> list[TrainingHistory]:
    """Train ``members`` in place, member ``k`` as ``train_flow(members[k], z,
    x, config, seed=seeds[k])`` would (see the module doc).

    Arguments:
        members: ``K >= 2`` flows accepted by :func:`can_train_together`,
            standardisation set.
        z, x: the training pairs, ``(n, d)`` and ``(n, *x_shape)``.
        config: the loop's settings.
        seeds: ``K`` seeds (validation split and batch order of each member).
        progress: per member, an optional per-epoch callback.

    Returns:
        The members' :class:`TrainingHistory` objects; ``seconds`` is each
        member's share of the wall time (the time until it stopped, divided
        by the number of members trained with it), so the shares add up to
        the wall time.
    """
    count = len(members)
    evaluator = GroupedLogProb.for_flows(members)
    if evaluator is None or count < 2:
        raise InvalidInputError("these members cannot be trained together (see can_train_together)")
    if len(seeds) != count:
        raise InvalidInputError(f"need one seed per member: {count} members, {len(seeds)} seeds")
    callbacks: list[Progress] = list(progress) if progress is not None else [None] * count
    num_rows = z.shape[0]
    if num_rows < 2:
        raise NotEnoughDataError(f"training needs at least 2 successful simulations; got {num_rows}")
    device = members[0].device
    splits = [validation_split(num_rows, config.validation_fraction, int(seed)) for seed in seeds]
    train_rows = torch.stack([split.train for split in splits])  # (K, n_train)
    validation_rows = torch.stack([split.validation for split in splits])  # (K, n_val)
    num_train, num_validation = train_rows.shape[1], validation_rows.shape[1]

    optimizer = FlatAdam(nn.ModuleList(members), config.learning_rate)
    parameters = optimizer.parameters.view(count, -1)
    leaf = parameters.detach().requires_grad_(True)  # shares the optimiser's storage
    leaf.grad = optimizer.gradients.view(count, -1)  # autograd accumulates into it in place
    best = parameters.clone()
    histories = [TrainingHistory(num_train=num_train, num_validation=num_validation) for _ in members]
    stopping = [EarlyStopping(config.stop_after_epochs) for _ in members]
    active = list(range(count))
    stopped_at = [0.0] * count
    started = time.perf_counter()
    for member in members:
        member.train()
    for epoch in range(config.max_epochs):
        selected = torch.tensor(active, device=device)
        orders = torch.stack([torch.randperm(num_train, generator=splits[k].generator)  # on the CPU
                              for k in active])
        batch_rows = train_rows[active].gather(1, orders)  # (a, n_train): each member's epoch order
        totals = [0.0] * len(active)
        element_mask = None
        if len(active) < count:  # the stopped members' weights, moments and step counts stay
            element_mask = torch.zeros(count, parameters.shape[1], dtype=torch.bool, device=device)
            element_mask[selected] = True
            element_mask = element_mask.view(-1)
        for start in range(0, num_train, config.batch_size):
            rows = batch_rows[:, start:start + config.batch_size]  # (a, b)
            optimizer.zero_grad()
            if len(active) == 1:  # the last one on its own: its own (lean) evaluation is cheaper
                alone = members[active[0]]
                losses = -alone.log_prob(z[rows[0]].to(device), x[rows[0]].to(device)).mean().reshape(1)
            else:
                weights = leaf if len(active) == count else leaf.index_select(0, selected)
                losses = -evaluator(weights, selected, z[rows].to(device), x[rows].to(device)).mean(dim=1)
            losses.sum().backward()  # into the optimiser's gradient buffer (the members' .grad are views of it)
            if config.clip_max_norm is not None:
                optimizer.clip_grad_norms(config.clip_max_norm, groups=count)
            optimizer.step(element_mask)
            size = rows.shape[1]
            for slot, value in enumerate(losses.tolist()):
                totals[slot] += value * size
        validation = _validation_losses(evaluator, leaf, selected, validation_rows[active], z, x, device)
        still: list[int] = []
        for slot, k in enumerate(active):
            history, rule = histories[k], stopping[k]
            history.train_loss.append(totals[slot] / num_train)
            history.validation_loss.append(validation[slot])
            if rule.record(validation[slot]):
                best[k] = parameters[k]
                history.best_epoch = epoch
            if callbacks[k] is not None:
                callbacks[k](EpochReport(epoch, history.train_loss[-1], validation[slot],
                                         rule.best_loss, rule.since_improvement))
            if rule.should_stop(epoch):
                history.stopped_early = True
                stopped_at[k] = time.perf_counter()
            else:
                still.append(k)
        active = still
        if not active:
            break
    finished = time.perf_counter()
    optimizer.restore(best.view(-1))
    for k, member in enumerate(members):
        member.eval()
        until = stopped_at[k] if histories[k].stopped_early else finished
        histories[k].seconds = (until - started) / count
    return histories


def _validation_losses(evaluator: GroupedLogProb, leaf: Tensor, selected: Tensor, rows: Tensor,
                       z: Tensor, x: Tensor, device: torch.device) -> list[float]:
    """Each selected member's mean held-out loss (as ``mean_negative_log_prob``
    gives it) for its validation ``rows (a, m)``."""
    with torch.no_grad():
        weights = leaf.index_select(0, selected)
        chunks = [
            -evaluator(weights, selected, z[part].to(device), x[part].to(device))
            for part in rows.split(_EVAL_ROWS, dim=1)
        ]
        losses = torch.cat(chunks, dim=1)
    return [mean_of_losses(member_losses) for member_losses in losses]
