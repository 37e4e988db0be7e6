"""The lean log-density reproduces normflows' density and gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from mfask.estimator import ConditionalFlow, FlowConfig
from mfask.lean_log_prob import LeanLogProb, rational_quadratic_spline


def perturbed_flow(dim: int, x_dim: int, scale: float, dtype: torch.dtype, seed: int = 0,
                   config: FlowConfig = FlowConfig()) -> ConditionalFlow:
    """A flow whose every parameter is moved away from its (near-identity) initial value."""
    torch.manual_seed(seed)
    flow = ConditionalFlow(dim, (x_dim,), config).to(dtype)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(scale * torch.randn_like(parameter))
    return flow


def inputs(dim: int, x_dim: int, dtype: torch.dtype, flow: ConditionalFlow) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``(300, dim)`` inside and outside the spline interval [-3, 3],
    including points exactly on its bounds, and their contexts."""
    generator = torch.Generator().manual_seed(1)
    u = 2.5 * torch.randn(300, dim, generator=generator, dtype=dtype)
    u[:4] = torch.tensor([-3.0, 3.0, -7.5, 9.0], dtype=dtype)[:, None]
    context = flow.embed(torch.randn(300, x_dim, generator=generator, dtype=dtype))
    return u, context


def gradients(value: torch.Tensor, flow: ConditionalFlow) -> list[torch.Tensor]:
    return list(torch.autograd.grad(value.mean(), list(flow.parameters())))


@pytest.mark.parametrize("dim", [2, 3, 5])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("layout", ["mfask", "sbi"])
def test_matches_normflows_in_float64(dim: int, mode: str, layout: str) -> None:
    """Same mathematics: in float64 the two agree to rounding, values and
    gradients, for both layouts (``"sbi"``: couplings without unconditional
    splines, an LU after each)."""
    flow = perturbed_flow(dim, 4, scale=0.1, dtype=torch.float64, config=FlowConfig(layout=layout))
    getattr(flow, mode)()
    lean = LeanLogProb.for_flow(flow.flow)
    assert lean is not None
    u, context = inputs(dim, 4, torch.float64, flow)
    expected = flow.flow.log_prob(u, context)
    found = lean(u, context)
    torch.testing.assert_close(found, expected, rtol=1e-11, atol=1e-11)
    for got, want in zip(gradients(found, flow), gradients(expected, flow)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("dim", [2, 5])
def test_as_accurate_as_normflows_in_float32(dim: int) -> None:
    """In float32 both routes round differently; measured against the exact
    (float64) density of the same weights, the lean one is as accurate."""
    flow = perturbed_flow(dim, 6, scale=0.05, dtype=torch.float32, seed=3)
    exact_flow = copy.deepcopy(flow).to(torch.float64)
    u, context = inputs(dim, 6, torch.float32, flow)
    exact = exact_flow.flow.log_prob(u.double(), context.double())
    normflows_value = flow.flow.log_prob(u, context)
    lean_value = flow._lean_log_prob(u, context)
    normflows_error = float((normflows_value.double() - exact).abs().max().detach())
    lean_error = float((lean_value.double() - exact).abs().max().detach())
    assert lean_error <= 4 * normflows_error + 1e-5
    exact_gradients = gradients(exact, exact_flow)
    for lean_grad, normflows_grad, truth in zip(
        gradients(lean_value, flow), gradients(normflows_value, flow), exact_gradients
    ):
        lean_grad_error = float((lean_grad.double() - truth).abs().max())
        normflows_grad_error = float((normflows_grad.double() - truth).abs().max())
        # float32 rounding of a mean over n = 300 rows, each through ~20
        # rounded operations: about sqrt(n) * 20 * 2^-24 ~ 2e-5 of the scale
        rounding = 2e-5 * float(truth.abs().max()) + 1e-7
        assert lean_grad_error <= 4 * normflows_grad_error + rounding


@pytest.mark.parametrize("conditional", [False, True])
def test_conditional_flow_uses_it_and_keeps_the_density(conditional: bool) -> None:
    """``ConditionalFlow.log_prob`` (standardisation included, marginal or
    conditional on x) equals the normflows route, and 1-D stacks
    (autoregressive) fall back to normflows."""
    config = FlowConfig(conditional_standardization=conditional)
    flow = perturbed_flow(2, 3, scale=0.05, dtype=torch.float64, config=config)
    x = torch.randn(50, 3, dtype=torch.float64)
    z = torch.randn(50, 2, dtype=torch.float64) * 3 + 1 + x[:, :2]
    flow.set_standardization(z, x)
    location = flow.z_shift
    if conditional:
        location = location + ((x - flow.x_shift) / flow.x_scale) @ flow.z_slope.T
        assert flow.z_slope.abs().sum() > 0
    u = (z - location) / flow.z_scale
    expected = flow.flow.log_prob(u, flow.embed(x)) - torch.log(flow.z_scale).sum()
    torch.testing.assert_close(flow.log_prob(z, x), expected, rtol=1e-11, atol=1e-11)
    assert ConditionalFlow(1, (3,))._lean_log_prob is None


def test_spline_is_identity_in_the_tails_and_continuous_at_the_bounds() -> None:
    torch.manual_seed(0)
    parameters = torch.randn(6, 3 * 8 - 1, dtype=torch.float64)
    bound = 2.0
    x = torch.tensor([-5.0, -bound, -bound + 1e-9, bound - 1e-9, bound, 4.0], dtype=torch.float64)
    y, log_det = rational_quadratic_spline(
        x, parameters, tail_bound=bound, min_bin_size=1e-3, min_derivative=1e-3
    )
    assert y[0] == -5.0 and y[-1] == 4.0 and log_det[0] == 0 and log_det[-1] == 0
    torch.testing.assert_close(y[1:5], torch.tensor([-bound, -bound, bound, bound], dtype=torch.float64),
                               atol=1e-7, rtol=0)
    # the slope at the bounds is 1, so log|dy/dx| is 0 there
    torch.testing.assert_close(log_det[1:5], torch.zeros(4, dtype=torch.float64), atol=1e-5, rtol=0)


def test_a_deep_copy_evaluates_its_own_weights() -> None:
    """Copies (as MF-NPE makes when a level starts from the one below) have
    an evaluator bound to the copy's layers, not the original's."""
    # float64, where the two routes agree to rounding (test_matches_normflows_in_float64):
    # in float32 they round differently, by amounts that depend on the CPU's kernels
    original = perturbed_flow(2, 3, scale=0.1, dtype=torch.float64, seed=7)
    clone = copy.deepcopy(original)
    with torch.no_grad():
        for parameter in clone.parameters():
            parameter.add_(0.05)
    z, x = torch.randn(20, 2, dtype=torch.float64), torch.randn(20, 3, dtype=torch.float64)
    u = (z - clone.z_shift) / clone.z_scale
    torch.testing.assert_close(
        clone.log_prob(z, x), clone.flow.log_prob(u, clone.embed(x)) - torch.log(clone.z_scale).sum(),
        rtol=1e-11, atol=1e-11,
    )
    assert not torch.allclose(clone.log_prob(z, x), original.log_prob(z, x))


def test_reads_current_weights_after_loading() -> None:
    """The evaluator holds no copy of the parameters: loading weights into the
    flow changes its result."""
    source = perturbed_flow(2, 3, scale=0.1, dtype=torch.float32, seed=5)
    target = perturbed_flow(2, 3, scale=0.1, dtype=torch.float32, seed=6)
    z, x = torch.randn(20, 2), torch.randn(20, 3)
    target.load_state_dict(source.state_dict())
    torch.testing.assert_close(target.log_prob(z, x), source.log_prob(z, x))


def test_sbi_layout_is_sbis_stack() -> None:
    """Density direction: coupling, LU (identity permutation), repeated; no
    unconditional spline; masks alternate."""
    import normflows

    flow = ConditionalFlow(3, (2,), FlowConfig(num_transforms=3, layout="sbi"))
    density_order = list(reversed(flow.flow.flows))
    kinds = [type(layer) for layer in density_order]
    assert kinds == [normflows.flows.CoupledRationalQuadraticSpline, normflows.flows.LULinearPermute] * 3
    couplings = density_order[0::2]
    assert all(c.prqct.unconditional_transform is None for c in couplings)
    assert all(torch.equal(lu.permutation._permutation, torch.arange(3)) for lu in density_order[1::2])
    masks = [c.prqct.identity_features.tolist() for c in couplings]
    assert masks[0] != masks[1] and masks[0] == masks[2]
    with pytest.raises(Exception, match="layout"):
        FlowConfig(layout="nflows")
