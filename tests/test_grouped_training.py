"""Members trained together (mfask.grouped_log_prob, mfask.grouped_training):
the same densities, gradients and, in float64, the same training as one by one."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mfask.ensemble import train_members
from mfask.errors import InvalidInputError
from mfask.estimator import ConditionalFlow, FlowConfig
from mfask.fine_tuning import FineTuningConfig, FineTuningStart
from mfask.flat_adam import FlatAdam
from mfask.grouped_log_prob import GroupedLogProb
from mfask.grouped_training import can_train_together, train_flows_together
from mfask.training import TrainingConfig, train_flow

CONFIGS = {
    "mfask": FlowConfig(hidden_features=12, num_transforms=3, num_bins=5),
    "sbi": FlowConfig(hidden_features=12, num_transforms=2, num_bins=5, layout="sbi"),
    "marginal": FlowConfig(hidden_features=12, num_transforms=2, num_bins=5, conditional_standardization=False),
}


def _data(rows: int = 120, dim: int = 3, features: int = 4, dtype: torch.dtype = torch.float32,
          seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, dim, generator=generator, dtype=dtype)
    mixing = torch.randn(dim, features, generator=generator, dtype=dtype)
    return z, z @ mixing + 0.3 * torch.randn(rows, features, generator=generator, dtype=dtype)


def _members(config: FlowConfig, count: int, z: torch.Tensor, x: torch.Tensor) -> list[ConditionalFlow]:
    torch.manual_seed(1)
    members = [ConditionalFlow(z.shape[1], tuple(x.shape[1:]), config).to(z.dtype) for _ in range(count)]
    for k, member in enumerate(members):
        member.set_standardization(z + 0.1 * k, x)
        with torch.no_grad():  # away from the zero-initialised last layers, so every weight matters
            for parameter in member.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
    return members


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grouped_densities_and_gradients_equal_each_members(name: str, dtype: torch.dtype) -> None:
    z, x = _data(dtype=dtype)
    members = _members(CONFIGS[name], 3, z, x)
    evaluator = GroupedLogProb.for_flows(members)
    assert evaluator is not None
    optimizer = FlatAdam(nn.ModuleList(members), 1e-3)
    rows = optimizer.parameters.view(3, -1).detach().requires_grad_(True)
    index = torch.stack([torch.randperm(120, generator=torch.Generator().manual_seed(k))[:50] for k in range(3)])
    grouped = evaluator(rows, torch.arange(3), z[index], x[index])
    alone = torch.stack([m.log_prob(z[index[k]], x[index[k]]) for k, m in enumerate(members)])
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(grouped, alone, **tolerance)
    grouped.sum().backward()
    optimizer.zero_grad()
    alone.sum().backward()
    torch.testing.assert_close(rows.grad, optimizer.gradients.view(3, -1), **tolerance)
    subset = torch.tensor([2, 0])  # a subset, in any order, reads its own buffers
    torch.testing.assert_close(evaluator(rows[subset], subset, z[index][subset], x[index][subset]),
                               alone[subset], **tolerance)


def test_members_that_differ_are_not_grouped() -> None:
    z, x = _data()
    small, wide = _members(CONFIGS["mfask"], 1, z, x), _members(
        FlowConfig(hidden_features=16, num_transforms=3, num_bins=5), 1, z, x)
    assert GroupedLogProb.for_flows([*small, *wide]) is None
    embedded = [ConditionalFlow(3, (4,), CONFIGS["mfask"], nn.Sequential(nn.Linear(4, 4))) for _ in range(2)]
    assert GroupedLogProb.for_flows(embedded) is None
    one_dimensional = [ConditionalFlow(1, (4,), CONFIGS["mfask"]) for _ in range(2)]
    assert GroupedLogProb.for_flows(one_dimensional) is None
    members = _members(CONFIGS["mfask"], 2, z, x)
    assert can_train_together(members, [None, None])
    pulled = FineTuningStart.from_pretrained(FineTuningConfig(l2sp=1.0), members[0])
    assert not can_train_together(members, [pulled, None])
    assert not can_train_together(members[:1], [None])


@pytest.mark.parametrize("name", ["mfask"])
def test_training_together_is_training_one_by_one_in_float64(name: str) -> None:
    """Same splits, batch orders, Adam steps, clipping and stopping per member:
    in float64 the histories and weights agree to rounding, including
    members that stop at different epochs."""
    z, x = _data(rows=150, dtype=torch.float64, seed=3)
    config = TrainingConfig(max_epochs=15, stop_after_epochs=1, batch_size=48, clip_max_norm=0.5,
                            learning_rate=1e-2)
    members = _members(CONFIGS[name], 3, z, x)
    alone = [copy.deepcopy(member) for member in members]
    seeds = [11, 12, 13]
    expected = [train_flow(member, z, x, config, seed=seed) for member, seed in zip(alone, seeds)]
    reports: list[list[int]] = [[], [], []]
    histories = train_flows_together(members, z, x, config, seeds,
                                     progress=[lambda r, k=k: reports[k].append(r.epoch) for k in range(3)])
    assert len({h.epochs for h in expected}) > 1  # the case covers members stopping apart
    for want, got, seen in zip(expected, histories, reports):
        assert (got.epochs, got.best_epoch, got.stopped_early) == (want.epochs, want.best_epoch, want.stopped_early)
        assert (got.num_train, got.num_validation) == (want.num_train, want.num_validation)
        torch.testing.assert_close(torch.tensor(got.validation_loss), torch.tensor(want.validation_loss),
                                   rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(torch.tensor(got.train_loss), torch.tensor(want.train_loss),
                                   rtol=1e-10, atol=1e-10)
        assert seen == list(range(want.epochs))
    for want, got in zip(alone, members):
        for a, b in zip(want.parameters(), got.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
        assert not got.training


def test_train_members_groups_by_default_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    z, x = _data()
    config = TrainingConfig(max_epochs=2, batch_size=40)
    members = _members(CONFIGS["mfask"], 2, z, x)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("train_flow called although the members can train together")

    monkeypatch.setattr("mfask.ensemble.train_flow", refuse)
    trained, histories = train_members(members, z, x, config, [1, 2])
    assert trained == members and [h.epochs for h in histories] == [2, 2]
    monkeypatch.undo()
    pulled = FineTuningStart.from_pretrained(FineTuningConfig(l2sp=1.0), members[0])
    with pytest.raises(InvalidInputError, match="grouped"):
        train_members(members, z, x, config, [1, 2], backend="grouped", fine_tuning=[pulled, None])
    trained, histories = train_members(members, z, x, config, [1, 2], fine_tuning=[pulled, None])
    assert [h.epochs for h in histories] == [2, 2]
