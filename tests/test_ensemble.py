"""Tests of mfask.ensemble: where members train never changes what they learn."""

from __future__ import annotations

import copy

import pytest
import torch

from mfask import ensemble
from mfask.estimator import ConditionalFlow, FlowConfig
from mfask.training import TrainingConfig


def members_and_data(count: int) -> tuple[list[ConditionalFlow], torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(60, 2, generator=generator)
    x = torch.cat([z, z**2], dim=1) + 0.1 * torch.randn(60, 4, generator=generator)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base = ConditionalFlow(2, (4,), FlowConfig(hidden_features=8, num_transforms=2))
    base.set_standardization(z, x)
    return [copy.deepcopy(base) for _ in range(count)], z, x


def test_backends_train_bitwise_identical_members() -> None:
    config = TrainingConfig(max_epochs=3, stop_after_epochs=10, batch_size=20)
    results = {}
    for backend in ("sequential", "threading"):
        members, z, x = members_and_data(2)
        trained, histories = ensemble.train_members(members, z, x, config, [11, 12], backend=backend)
        results[backend] = [m.state_dict() for m in trained]
        assert [h.epochs for h in histories] == [3, 3]
    for a, b in zip(results["sequential"], results["threading"]):
        assert all(torch.equal(a[key], b[key]) for key in a)
    # different seeds give different members
    first, second = results["sequential"]
    assert any(not torch.equal(first[key], second[key]) for key in first)


def test_thread_setting_is_restored() -> None:
    before = torch.get_num_threads()
    with ensemble.one_torch_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_auto_uses_processes_only_for_long_trainings_with_idle_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ensemble, "_usable_cpus", lambda: 4)
    monkeypatch.setattr(ensemble.os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    long = 2 * ensemble.PROCESS_MIN_SECONDS
    assert ensemble.choose_backend(5, long) == "loky"
    assert ensemble.choose_backend(1, long) == "sequential"
    assert ensemble.choose_backend(5, None) == "sequential"
    assert ensemble.choose_backend(5, 1.0) == "sequential"
    monkeypatch.setattr(ensemble.os, "getloadavg", lambda: (8.0, 8.0, 8.0))
    assert ensemble.choose_backend(5, long) == "sequential"
    monkeypatch.setattr(ensemble, "_usable_cpus", lambda: 1)
    monkeypatch.setattr(ensemble.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert ensemble.choose_backend(5, long) == "sequential"
