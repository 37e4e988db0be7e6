"""Fine-tuning that keeps what pre-training learned: L2-SP and a frozen trunk
(mfask/fine_tuning.py, its use in mfask/training.py and mfask/posterior.py)."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import mfask.posterior
from mfask import (
    BoxUniform, FineTuningConfig, FlowConfig, InvalidInputError, MultiFidelityPosterior, StateFormatError,
    TrainingConfig,
)
from mfask.estimator import ConditionalFlow
from mfask.fine_tuning import FineTuningStart, trunk_parameter_names
from mfask.state_file import read_state, write_state
from mfask.study import create_study, open_study
from mfask.study_spec import posterior_from_spec
from mfask.training import EpochReport, train_flow

# the tiny budgets here train for a few epochs on purpose
pytestmark = pytest.mark.filterwarnings("ignore::mfask.errors.MaxEpochsWarning")

TINY_FLOW = FlowConfig(hidden_features=16, num_transforms=2, num_bins=4)
PRIOR = BoxUniform([-1.0, -1.0], [1.0, 1.0], names=["a", "b"])


def regression_data(num_rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``z (n, 2)`` uniform and ``x = z + N(0, 0.1^2)`` ``(n, 2)``, float32."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.rand(num_rows, 2, generator=generator) * 2 - 1
    return z, z + 0.1 * torch.randn(num_rows, 2, generator=generator)


def tiny_flow(seed: int = 0, data_seed: int = 0) -> ConditionalFlow:
    torch.manual_seed(seed)
    flow = ConditionalFlow(2, (2,), TINY_FLOW)
    flow.set_standardization(*regression_data(100, data_seed))
    return flow


def two_level_posterior(fine_tuning: FineTuningConfig, **options) -> MultiFidelityPosterior:
    """LF ``x = theta + N(0, 0.3^2)`` (200 rows), HF ``x = theta + N(0, 0.1^2)`` (40 rows), fitted."""
    options.setdefault("training", TrainingConfig(max_epochs=15, stop_after_epochs=3))
    post = MultiFidelityPosterior(PRIOR, ["low", "high"], seed=0, flow=TINY_FLOW, fine_tuning=fine_tuning,
                                  verbose=False, **options)
    rng = np.random.default_rng(0)
    low = post.ask("low", 200)
    post.tell(low, low.theta + 0.3 * rng.standard_normal(low.theta.shape))
    high = post.ask("high", 40)
    post.tell(high, high.theta + 0.1 * rng.standard_normal(high.theta.shape))
    post.fit()
    return post


# ------------------------------------------------------------- the settings
@pytest.mark.parametrize("options, message", [
    ({"l2sp": -1.0}, "l2sp"), ({"l2sp": float("nan")}, "l2sp"), ({"l2sp": float("inf")}, "l2sp"),
    ({"l2sp": True}, "l2sp"), ({"l2sp": "1"}, "l2sp"),
    ({"freeze_epochs": -1}, "freeze_epochs"), ({"freeze_epochs": 2.5}, "freeze_epochs"),
    ({"freeze_epochs": True}, "freeze_epochs"),
])
def test_bad_settings_are_refused_clearly(options, message):
    with pytest.raises(InvalidInputError, match=message):
        FineTuningConfig(**options)


def test_the_posterior_refuses_anything_but_a_fine_tuning_config():
    with pytest.raises(InvalidInputError, match="fine_tuning must be a FineTuningConfig"):
        MultiFidelityPosterior(PRIOR, ["low", "high"], fine_tuning={"l2sp": 1.0})


def test_settings_round_trip_and_malformed_stored_settings_are_state_errors():
    settings = FineTuningConfig(l2sp=2, freeze_epochs=3)
    assert settings.l2sp == 2.0 and isinstance(settings.l2sp, float)
    assert FineTuningConfig.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    assert FineTuningConfig().is_plain and not settings.is_plain
    for bad in ({"l2sp": -1}, {"alpha": 1}, [1, 2]):
        with pytest.raises(StateFormatError):
            FineTuningConfig.from_dict(bad)


# ------------------------------------------------------------------ L2-SP
def test_the_penalty_and_its_gradient_are_the_l2sp_term():
    flow = tiny_flow()
    start = FineTuningStart.from_pretrained(FineTuningConfig(l2sp=3.0), flow)
    named = list(flow.named_parameters())
    assert start.penalty(named, 50).item() == 0.0  # at the anchor
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, parameter in named:
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    penalty = start.penalty(named, 50)
    squared = sum(((p - start.anchor[n]) ** 2).sum() for n, p in named)
    assert penalty.item() == pytest.approx(3.0 / 50 * squared.item(), rel=1e-5)
    penalty.backward()
    for name, parameter in named:  # d/dw (alpha / n) ||w - w0||^2 = 2 alpha / n (w - w0)
        torch.testing.assert_close(parameter.grad, 2 * 3.0 / 50 * (parameter.detach() - start.anchor[name]))
    assert FineTuningStart.from_pretrained(FineTuningConfig(), flow).penalty(named, 50) is None


def test_a_strong_pull_keeps_the_weights_near_the_pretrained_ones():
    z, x = regression_data(60, seed=2)
    distances = {}
    for l2sp in (0.0, 1e4):
        flow = tiny_flow()
        anchor = copy.deepcopy(flow)
        train_flow(flow, z, x, TrainingConfig(max_epochs=15, stop_after_epochs=100), seed=0,
                   fine_tuning=FineTuningStart.from_pretrained(FineTuningConfig(l2sp=l2sp), anchor))
        distances[l2sp] = sum(float(((p - q) ** 2).sum().detach())
                              for p, q in zip(flow.parameters(), anchor.parameters()))
    assert distances[1e4] < 0.05 * distances[0.0]


def test_plain_settings_train_exactly_as_without_them():
    z, x = regression_data(60, seed=2)
    flows = [tiny_flow(), tiny_flow()]
    config = TrainingConfig(max_epochs=5)
    train_flow(flows[0], z, x, config, seed=0)
    train_flow(flows[1], z, x, config, seed=0,
               fine_tuning=FineTuningStart.from_pretrained(FineTuningConfig(), flows[1]))
    for p, q in zip(flows[0].parameters(), flows[1].parameters()):
        assert torch.equal(p, q)


# ------------------------------------------------------------------ freezing
def test_the_trunk_is_the_conditioners_hidden_layers_and_the_embedding_net():
    flow = ConditionalFlow(2, (3,), TINY_FLOW, embedding_net=torch.nn.Linear(3, 4))
    trunk = set(trunk_parameter_names(flow))
    names = [name for name, _ in flow.named_parameters()]
    assert {"embedding_net.weight", "embedding_net.bias"} <= trunk
    assert any(".transform_net.initial_layer." in name for name in trunk)
    assert not any(".final_layer." in name or ".linear." in name or "unconditional" in name for name in trunk)
    assert 0 < len(trunk) < len(names)
    one_dimensional = trunk_parameter_names(ConditionalFlow(1, (3,), TINY_FLOW))
    assert one_dimensional and all(".autoregressive_net." in name for name in one_dimensional)


def test_frozen_parameters_do_not_move_for_k_epochs_and_move_after():
    z, x = regression_data(60, seed=3)
    flow = tiny_flow()
    start = FineTuningStart.from_pretrained(FineTuningConfig(freeze_epochs=3), flow)
    trunk = set(start.trunk)
    snapshots: list[dict[str, torch.Tensor]] = []

    def record(report: EpochReport) -> None:
        snapshots.append({n: p.detach().clone() for n, p in flow.named_parameters()})

    train_flow(flow, z, x, TrainingConfig(max_epochs=5, stop_after_epochs=100), seed=0,
               progress=record, fine_tuning=start)
    assert len(snapshots) == 5
    for epoch in range(3):  # the trunk is where it started, the heads have moved
        assert all(torch.equal(snapshots[epoch][n], start.anchor[n]) for n in trunk)
        assert any(not torch.equal(snapshots[epoch][n], start.anchor[n]) for n in start.anchor if n not in trunk)
    assert all(not torch.equal(snapshots[3][n], start.anchor[n]) for n in trunk if n.endswith("weight"))


def test_early_stopping_waits_for_the_release_of_the_trunk():
    z, x = regression_data(60, seed=3)
    flow = tiny_flow()
    start = FineTuningStart.from_pretrained(FineTuningConfig(freeze_epochs=6), flow)
    history = train_flow(flow, z, x, TrainingConfig(max_epochs=50, stop_after_epochs=1), seed=0,
                         fine_tuning=start)
    assert history.epochs >= 7  # six frozen epochs, then at least one with everything training


# ----------------------------------------------------------- in the posterior
def test_only_the_fine_tuned_networks_of_a_transferred_level_use_it(monkeypatch):
    calls = []
    real = mfask.posterior.train_members

    trained = []

    def recording(members, *args, **kwargs):
        calls.append(kwargs.get("fine_tuning"))
        result = real(members, *args, **kwargs)
        trained.append(result[0])
        return result

    monkeypatch.setattr(mfask.posterior, "train_members", recording)
    post = two_level_posterior(FineTuningConfig(l2sp=1.0, freeze_epochs=2))
    assert len(calls) == 2
    assert calls[0] == [None]  # the lowest level trains fresh
    fine_tuned, hf_only = calls[1]  # with the guard: the fine-tuned network, then the HF-only one
    assert isinstance(fine_tuned, FineTuningStart) and fine_tuned.config == post.fine_tuning
    assert hf_only is None
    lower = trained[0][0]  # the lowest level's trained network
    for name, parameter in lower.named_parameters():  # anchored at the lower level's weights
        assert torch.equal(fine_tuned.anchor[name], parameter.detach())

    calls.clear()
    two_level_posterior(FineTuningConfig())  # the default: plain fine-tuning everywhere
    assert calls == [[None], [None, None]]


def test_save_load_a_study_and_a_spec_keep_the_option(tmp_path):
    settings = FineTuningConfig(l2sp=0.5, freeze_epochs=4)
    post = two_level_posterior(settings)
    post.save(tmp_path / "post.npz")
    loaded = MultiFidelityPosterior.load(tmp_path / "post.npz", verbose=False)
    assert loaded.fine_tuning == settings
    assert loaded.configuration()["fine_tuning"] == {"l2sp": 0.5, "freeze_epochs": 4}

    path = tmp_path / "study.mfask"
    study = create_study(path, PRIOR, ["low", "high"], seed=0, flow=TINY_FLOW, fine_tuning=settings,
                         verbose=False)
    study.close()
    reopened = open_study(path)
    assert reopened.posterior.fine_tuning == settings
    reopened.close()
    with pytest.raises(InvalidInputError, match="fine_tuning"):  # a different setting shows
        create_study(path, PRIOR, ["low", "high"], seed=0, flow=TINY_FLOW, load_if_exists=True,
                     fine_tuning=FineTuningConfig(l2sp=2.0), verbose=False)

    spec = {"fidelities": ["low", "high"], "parameters": {"a": {"low": 0, "high": 1}},
            "fine_tuning": {"l2sp": 0.5, "freeze_epochs": 4}}
    assert posterior_from_spec(spec).fine_tuning == settings
    with pytest.raises(InvalidInputError, match="did you mean"):
        posterior_from_spec({**spec, "fine_tuning": {"l2_sp": 1.0}})


def test_a_state_saved_before_the_option_loads_as_plain_fine_tuning(tmp_path):
    post = two_level_posterior(FineTuningConfig(l2sp=1.0))
    post.save(tmp_path / "new.npz")
    meta, arrays = read_state(tmp_path / "new.npz")
    del meta["fine_tuning"]
    write_state(tmp_path / "old.npz", meta, arrays)
    assert MultiFidelityPosterior.load(tmp_path / "old.npz", verbose=False).fine_tuning == FineTuningConfig()


def test_a_warm_refit_is_still_anchored_at_the_lower_levels_weights(monkeypatch):
    post = two_level_posterior(FineTuningConfig(l2sp=1.0))
    calls = []
    real = mfask.posterior.train_members

    def recording(members, *args, **kwargs):
        calls.append(kwargs.get("fine_tuning"))
        return real(members, *args, **kwargs)

    monkeypatch.setattr(mfask.posterior, "train_members", recording)
    before = {name: value.copy() for name, value in read_arrays_of(post, "model/0/0/").items()}
    rng = np.random.default_rng(1)
    more = post.ask("high", 10)
    post.tell(more, more.theta + 0.1 * rng.standard_normal(more.theta.shape))
    post.fit()
    assert len(calls) == 1  # only the high level is out of date
    assert post.training_histories("high")[-1][0].start == "warm"
    anchor = calls[0][0].anchor
    assert anchor and all(np.array_equal(value.numpy(), before[f"model/0/0/{name}"])
                          for name, value in anchor.items())  # the lower level's weights


def read_arrays_of(post: MultiFidelityPosterior, prefix: str) -> dict[str, np.ndarray]:
    """The saved arrays (weights and buffers) of one network, ``model/<level>/<k>/<name>``."""
    with tempfile.TemporaryDirectory() as folder:
        post.save(Path(folder) / "state.npz")
        _, arrays = read_state(Path(folder) / "state.npz")
    return {name: value for name, value in arrays.items() if name.startswith(prefix)}
