"""The flow's conditional standardisation of z: a linear regression on x.

Fast checks of the mechanism; the statistical effect (posteriors much narrower
than the prior) is checked by the slow tests in ``test_informative.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import mfask
from mfask.estimator import ConditionalFlow, FlowConfig, linear_conditional_standardization


def _linear_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    slope = torch.tensor([[1.0, -2.0, 0.0, 0.5], [0.0, 0.3, 3.0, 0.0]], dtype=torch.float64)
    noise = torch.tensor([0.1, 0.02], dtype=torch.float64)
    z = 2.0 + features @ slope.T + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return z, features, slope


def test_regression_recovers_the_slope_and_the_residual_spread():
    z, features, slope = _linear_data(4000)
    features = features - features.mean(dim=0)
    shift, fitted_slope, scale = linear_conditional_standardization(z, features)
    torch.testing.assert_close(fitted_slope, slope, atol=0.01, rtol=0)
    torch.testing.assert_close(shift, z.mean(dim=0))
    # the residual sd to within 5% (its relative standard error at n=4000 is ~1.1%)
    torch.testing.assert_close(scale, torch.tensor([0.1, 0.02], dtype=torch.float64), rtol=0.05, atol=0)


def test_too_few_rows_per_coefficient_fall_back_to_marginal_statistics():
    z, features, _ = _linear_data(9)  # 9 < 2 * (4 + 1)
    shift, slope, scale = linear_conditional_standardization(z, features)
    assert torch.count_nonzero(slope) == 0
    torch.testing.assert_close(scale, z.std(dim=0))
    torch.testing.assert_close(shift, z.mean(dim=0))


def _fitted_flow(conditional: bool) -> tuple[ConditionalFlow, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    z, features, _ = _linear_data(500)
    flow = ConditionalFlow(2, (4,), FlowConfig(conditional_standardization=conditional,
                                                hidden_features=16, num_transforms=2))
    flow.set_standardization(z.float(), features.float())
    return flow, z.float(), features.float()


def test_density_with_a_conditional_shift_integrates_to_one():
    flow, z, x = _fitted_flow(True)
    x_o = x[:1]
    # a grid covering +-8 residual sds around the conditional location
    location = flow.push_forward(torch.zeros(1, 2), x_o)[0]
    half = 8 * flow.z_scale
    axes = [torch.linspace(float(location[i] - half[i]), float(location[i] + half[i]), 301) for i in range(2)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 2)
    with torch.no_grad():
        density = flow.log_prob(grid, x_o.expand(grid.shape[0], -1)).exp()
    cell = math.prod(float(a[1] - a[0]) for a in axes)
    assert float(density.sum()) * cell == pytest.approx(1.0, abs=0.02)


def test_sampling_and_push_forward_agree_with_the_conditional_shift():
    flow, _, x = _fitted_flow(True)
    torch.manual_seed(3)
    with torch.no_grad():
        drawn = flow.sample(4, x[:2])
    torch.manual_seed(3)
    noise = torch.randn(8, 2)  # the base draw flow.sample makes (normflows: torch.randn)
    with torch.no_grad():
        pushed = flow.push_forward(noise, x[:2].repeat_interleave(4, dim=0)).reshape(2, 4, 2)
    torch.testing.assert_close(drawn, pushed, atol=1e-5, rtol=1e-5)


def test_marginal_standardization_has_no_slope_buffer():
    flow, _, _ = _fitted_flow(False)
    assert "z_slope" not in flow.state_dict()


def test_flow_config_dict_omits_legacy_values_and_reads_them_back():
    legacy = FlowConfig(layout="mfask", conditional_standardization=False)
    assert "conditional_standardization" not in legacy.to_dict()
    assert FlowConfig.from_dict(legacy.to_dict()) == legacy
    current = FlowConfig(conditional_standardization=True, layout="sbi")
    assert FlowConfig.from_dict(current.to_dict()) == current


@pytest.mark.parametrize("conditional", [False, True])
def test_posterior_with_either_standardization_survives_save_and_load(tmp_path, conditional):
    prior = mfask.BoxUniform(low=[-1.0, -1.0], high=[1.0, 1.0])
    post = mfask.MultiFidelityPosterior(
        prior, seed=1, flow=FlowConfig(hidden_features=8, num_transforms=1,
                                       conditional_standardization=conditional),
        training=mfask.TrainingConfig(max_epochs=3))
    theta = post.ask("high", 60).theta
    post.tell(theta, theta + 0.1, "high")
    x_o = np.array([0.2, -0.1])
    before = post.log_prob(theta[:5], x_o)
    post.save(tmp_path / "state.npz")
    loaded = mfask.MultiFidelityPosterior.load(tmp_path / "state.npz")
    assert loaded.flow_config == post.flow_config
    np.testing.assert_allclose(loaded.log_prob(theta[:5], x_o), before, rtol=1e-6)


def test_location_does_not_extrapolate_beyond_the_training_features():
    """Outside the training range of a feature, the regression's location is the
    one at the range's edge; inside it, the plain regression."""
    flow, _, x = _fitted_flow(True)
    features = (x - flow.x_shift) / flow.x_scale
    edge, beyond = x[:1].clone(), x[:1].clone()
    edge[0, 0] = x[:, 0].max()
    beyond[0, 0] = x[:, 0].max() + 50 * flow.x_scale[0]
    with torch.no_grad():
        location = {name: flow._z_location(rows) for name, rows in
                    (("edge", edge), ("beyond", beyond), ("inside", x[:5]))}
    torch.testing.assert_close(location["beyond"], location["edge"])
    torch.testing.assert_close(location["inside"], flow.z_shift + features[:5] @ flow.z_slope.T)
    assert float(flow.z_slope[0, 0].abs()) > 0.5  # the clamped feature does move the location
    torch.testing.assert_close(flow.feature_high, features.max(dim=0).values)


def test_states_saved_before_the_feature_range_load_without_clamping(tmp_path):
    """Files written with conditional standardisation before the clamp existed
    lack its two buffers; they load, with the range unset (no clamping)."""
    from mfask.state_file import load_module_arrays, module_to_arrays

    flow, _, x = _fitted_flow(True)
    arrays = {k: v for k, v in module_to_arrays(flow, "flow/").items()
              if not k.endswith(("feature_low", "feature_high"))}
    fresh = ConditionalFlow(flow.theta_dim, flow.x_shape, flow.config)
    load_module_arrays(fresh, arrays, "flow/")
    assert bool((fresh.feature_high == torch.finfo(torch.float32).max).all())
    torch.testing.assert_close(fresh.z_slope, flow.z_slope)
