"""sbi's diagnostics, plots and simulation helper on mfask posteriors (mfask.sbi_interop)."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sbi")
matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from sbi.analysis import conditional_pairplot, pairplot  # noqa: E402
from sbi.diagnostics import run_sbc, run_tarp  # noqa: E402
from sbi.inference import simulate_for_sbi  # noqa: E402
from sbi.utils import BoxUniform as SbiBoxUniform  # noqa: E402
from scipy.stats import kstest  # noqa: E402

import mfask  # noqa: E402
from mfask.diagnostics import sbc_ranks  # noqa: E402
from mfask.sbi_interop import AskingProposal, SbiPosterior  # noqa: E402

NOISE = 0.3
X_O = np.array([0.5, -0.5])


def make_prior() -> mfask.BoxUniform:
    return mfask.BoxUniform([-2.0, -2.0], [2.0, 2.0], names=["a", "b"])


def simulate(theta, seed: int) -> torch.Tensor:
    """The toy: x = theta + N(0, 0.3^2) per coordinate, (n, 2) -> (n, 2) float32."""
    theta = torch.as_tensor(theta, dtype=torch.float64)
    noise = torch.randn(theta.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (theta + NOISE * noise).to(torch.float32)


@pytest.fixture(scope="module")
def trained_file(tmp_path_factory) -> str:
    """A quickly trained 2-parameter posterior, saved once; tests load copies."""
    post = mfask.MultiFidelityPosterior(
        make_prior(), ["low", "high"], seed=0,
        flow=mfask.FlowConfig(hidden_features=16, num_transforms=2, num_bins=4),
        training=mfask.TrainingConfig(max_epochs=20),
    )
    batch = post.ask("high", 300)
    post.tell(batch, simulate(batch.theta, seed=1))
    post.fit()
    path = tmp_path_factory.mktemp("sbi") / "trained.npz"
    post.save(path)
    return str(path)


def twins(path: str) -> tuple[mfask.MultiFidelityPosterior, mfask.MultiFidelityPosterior]:
    """Two identical copies (same weights and sample stream): one behind the
    adapter, one to compute what the adapter should answer."""
    return mfask.MultiFidelityPosterior.load(path), mfask.MultiFidelityPosterior.load(path)


def sbc_pairs(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    theta = make_prior().sample(count, torch.Generator().manual_seed(11)).to(torch.float32)
    return theta, simulate(theta, seed=12)


# ------------------------------------------------------------------ shapes
def test_adapter_answers_in_sbi_shapes_and_equals_mfask(trained_file):
    post, twin = twins(trained_file)
    adapter = SbiPosterior(post, "high")
    xs = torch.tensor([[0.0, 0.0], [1.0, -1.0], [-0.5, 0.5]])

    samples = adapter.sample((40,), x=X_O, show_progress_bars=False)
    assert samples.shape == (40, 2) and samples.dtype == torch.float32
    np.testing.assert_array_equal(samples.numpy(), twin.sample(40, X_O, fidelity="high").astype(np.float32))
    assert adapter.sample((2, 3), x=torch.tensor(X_O)).shape == (2, 3, 2)
    twin.sample((2, 3), X_O)
    # sbi's batched layout: (*sample_shape, B, d)
    batched = adapter.sample_batched((5,), x=xs)
    assert batched.shape == (5, 3, 2)
    expected = twin.sample_batched(5, xs, fidelity="high")  # (B, n, d)
    np.testing.assert_array_equal(batched.numpy(), np.swapaxes(expected, 0, 1).astype(np.float32))

    theta = samples[:7]
    log_q = adapter.log_prob(theta, x=X_O)
    assert log_q.shape == (7,)
    np.testing.assert_allclose(log_q.numpy(), twin.log_prob(theta, X_O, fidelity="high"), rtol=1e-6)
    assert adapter.log_prob(theta[0], x=X_O).shape == (1,)  # one row as (d,)
    assert torch.isinf(adapter.log_prob(torch.tensor([[3.0, 0.0]]), x=X_O)).all()  # outside the box
    np.testing.assert_array_equal(adapter.potential(theta, x=X_O).numpy(), log_q.numpy())
    # log_prob_batched: theta (*sample_shape, B, d) against x (B, *x_shape)
    paired = batched[:4]
    values = adapter.log_prob_batched(paired, xs)
    assert values.shape == (4, 3)
    for i in range(3):
        single = adapter.log_prob(paired[:, i], x=xs[i]).numpy()
        np.testing.assert_allclose(values[:, i].numpy(), single, rtol=1e-5, atol=1e-5)  # float32 flows


def test_default_x_is_used_and_required(trained_file):
    post, twin = twins(trained_file)
    adapter = SbiPosterior(post)  # the default level: "high"
    with pytest.raises(mfask.InvalidInputError, match="set_default_x"):
        adapter.sample((3,))
    with pytest.raises(mfask.InvalidInputError, match="set_default_x"):
        adapter.log_prob(torch.zeros(1, 2))
    assert adapter.default_x is None
    assert adapter.set_default_x(torch.tensor([X_O])) is adapter  # chainable, (1, *x_shape) accepted
    np.testing.assert_array_equal(adapter.default_x.numpy(), [X_O])
    np.testing.assert_array_equal(adapter.sample((6,)).numpy(), twin.sample(6, X_O).astype(np.float32))
    with pytest.raises(mfask.InvalidInputError, match=r"shape \(2,\)"):
        adapter.set_default_x([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(adapter.default_x.numpy(), [X_O])  # unchanged
    with pytest.raises(mfask.UnknownFidelityError, match="unknown fidelity"):
        SbiPosterior(post, "medium")
    low = SbiPosterior(post, mfask.Fidelity("low"), default_x=X_O)  # a Fidelity works as its name
    assert low.fidelity == "low"
    with pytest.raises(mfask.NotEnoughDataError, match="'low' has 0"):
        low.sample((2,))


def test_map_has_sbi_shape_and_is_cached_per_default_x(trained_file):
    post, _ = twins(trained_file)
    adapter = SbiPosterior(post, default_x=X_O)
    estimate = adapter.map(num_iter=20)
    assert estimate.shape == (1, 2)
    samples = adapter.sample((500,))
    assert adapter.log_prob(estimate) >= adapter.log_prob(samples).max() - 1e-5
    np.testing.assert_array_equal(adapter.map().numpy(), estimate.numpy())  # cached
    adapter.set_default_x([-1.0, 1.0])
    moved = adapter.map(num_iter=20)
    assert float(torch.linalg.norm(moved - estimate)) > 0.5  # the mode follows x (about 2.1 apart)


# -------------------------------------------------------------- diagnostics
def test_run_sbc_ranks_the_adapters_samples_and_log_probs(trained_file):
    post, twin = twins(trained_file)
    adapter = SbiPosterior(post, "high")
    theta, x = sbc_pairs(60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sbi: "should be on the order of 100s"
        ranks, dap = run_sbc(theta, x, adapter, num_posterior_samples=100, show_progress_bar=False)
    assert ranks.shape == (60, 2) and dap.shape == (60, 2)
    expected_samples = twin.sample_batched(100, x, fidelity="high").astype(np.float32)  # (60, 100, 2)
    np.testing.assert_array_equal(ranks.numpy(), sbc_ranks(expected_samples, theta.numpy()))
    np.testing.assert_array_equal(dap.numpy(), expected_samples[:, 0])
    # the ranks are near uniform; against shuffled observations (what a
    # mixed-up batch axis gives) they are far from it (KS statistics
    # measured over 4 training seeds: at most 0.22 against at least 0.33)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        shuffled, _ = run_sbc(theta, x.flip(0), adapter, num_posterior_samples=100, show_progress_bar=False)
        # expected coverage: ranks by log_prob (10 observations: each new x
        # costs a support-mass estimate)
        coverage, _ = run_sbc(theta[:10], x[:10], adapter, num_posterior_samples=50,
                              reduce_fns=adapter.log_prob, show_progress_bar=False)
    for column in range(2):
        right = kstest(ranks[:, column].numpy() / 100, "uniform").statistic
        wrong = kstest(shuffled[:, column].numpy() / 100, "uniform").statistic
        assert right < 0.3 < wrong
    assert coverage.shape == (10, 1)
    twin.sample_batched(100, x.flip(0))  # the shuffled run's draws
    draws = twin.sample_batched(50, x[:10]).astype(np.float32)
    for i in range(10):
        below = twin.log_prob(draws[i], x[i]) < twin.log_prob(theta[i], x[i])
        assert coverage[i, 0] == below.sum()


def test_run_tarp_on_the_adapter(trained_file):
    post, _ = twins(trained_file)
    adapter = SbiPosterior(post, "high")
    theta, x = sbc_pairs(60)
    centre = torch.zeros_like(theta)  # one fixed reference: sensitive to a wrong posterior
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ecp, alpha = run_tarp(theta, x, adapter, references=centre, num_posterior_samples=100,
                              show_progress_bar=False)
        ecp_wrong, alpha_wrong = run_tarp(theta, x.flip(0), adapter, references=centre,
                                          num_posterior_samples=100, show_progress_bar=False)
    assert ecp.shape == alpha.shape == (7,)  # 60 // 10 bins, and the 0 in front
    assert ecp[0] == 0 and torch.isclose(ecp[-1], torch.tensor(1.0)) and (ecp.diff() >= 0).all()
    # the largest gap to the diagonal, measured over 4 training seeds: at
    # most 0.13, and at least 0.20 against shuffled observations
    gap, gap_wrong = float((ecp - alpha).abs().max()), float((ecp_wrong - alpha_wrong).abs().max())
    assert gap < 0.2 and gap < gap_wrong


# -------------------------------------------------------------------- plots
def test_pairplot_of_samples_and_conditional_pairplot_of_the_adapter(trained_file):
    post, _ = twins(trained_file)
    adapter = SbiPosterior(post, default_x=X_O)
    _, axes = pairplot(adapter.sample((300,)), labels=adapter.parameter_names, limits=[[-2, 2], [-2, 2]])
    assert axes.shape == (2, 2)
    assert [axes[0, 0].get_xlabel(), axes[1, 1].get_xlabel()] == ["a", "b"]
    assert len(axes[0, 1].images) == 1  # the 2-d histogram
    condition = torch.tensor([[0.5, -0.5]])
    _, axes = conditional_pairplot(adapter, condition=condition, limits=[[-2, 2], [-2, 2]], resolution=20)
    # the diagonal is the conditional density of `a` at b = -0.5 and the default x
    grid, shown = axes[0, 0].lines[0].get_xydata().T
    theta = torch.stack([torch.from_numpy(grid), torch.full((20,), -0.5, dtype=torch.float64)], dim=1)
    log_q = post.log_prob(theta, X_O)
    np.testing.assert_allclose(shown, np.exp(log_q - log_q.max()), rtol=0.02, atol=1e-6)
    assert axes[0, 1].images[0].get_array().shape == (20, 20)


# ------------------------------------------------------------- simulations
def sbi_simulator(theta: torch.Tensor) -> torch.Tensor:
    return 2.0 * theta + 1.0


def test_simulate_for_sbi_outputs_from_an_sbi_prior_are_told_as_prior_draws():
    post = mfask.MultiFidelityPosterior(make_prior(), ["low", "high"], seed=0)
    sbi_prior = SbiBoxUniform(low=-2 * torch.ones(2), high=2 * torch.ones(2))
    theta, x = simulate_for_sbi(sbi_simulator, sbi_prior, 30, simulation_batch_size=None, seed=0,
                                show_progress_bar=False)
    assert theta.dtype == x.dtype == torch.float32
    with pytest.raises(mfask.UnmatchedParametersError, match="unasked='prior'"):
        post.tell(theta, x, "low")
    result = post.tell(theta, x, "low", unasked="prior")
    assert result.num_done == 30 and result.num_external == 30
    told_theta, told_x = post.data("low")
    np.testing.assert_array_equal(told_theta, theta.numpy().astype(np.float64))
    np.testing.assert_array_equal(told_x, x.numpy().astype(np.float64))


def test_asking_proposal_makes_simulate_for_sbi_fill_mfask_tickets():
    post = mfask.MultiFidelityPosterior(make_prior(), ["low", "high"], seed=0)
    proposal = AskingProposal(post, "high")
    theta, x = simulate_for_sbi(sbi_simulator, proposal, 25, simulation_batch_size=10, seed=0,
                                show_progress_bar=False)
    assert post.num_simulations("high", "pending") == 25 and len(proposal.batches) == 1
    result = post.tell(theta, x, "high")  # float32 values matched to the float64 asks
    assert result.num_external == 0 and result.num_done == 25
    assert result.ticket_ids.tolist() == proposal.batches[0].ticket_ids.tolist()
    assert post.num_simulations("high", "pending") == 0
    told_theta, _ = post.data("high")
    np.testing.assert_array_equal(told_theta, proposal.batches[0].theta)  # the asked values, not float32 ones
    with pytest.raises(mfask.UnknownFidelityError, match="unknown fidelity"):
        AskingProposal(post, "medium")


# ------------------------------------------------------------------ example
def test_interop_example_runs_at_small_size(tmp_path, capsys):
    pytest.importorskip("arviz")
    path = Path(__file__).resolve().parents[1] / "examples" / "interop.py"
    spec = importlib.util.spec_from_file_location("interop_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.main(["--low", "200", "--high", "40", "--plot", str(tmp_path / "pairplot.png")])
    output = capsys.readouterr().out
    assert "told 200 low-fidelity simulations" in output and "told 40 high-fidelity" in output
    assert output.count("SBC ranks of") == 2 and "MAP at x_o:" in output
    assert "b[high, 2]" in output  # the ArviZ summary: per parameter, fidelity and observation
    assert (tmp_path / "pairplot.png").stat().st_size > 1000
