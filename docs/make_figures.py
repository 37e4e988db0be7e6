"""Make the example figures of ``docs/plots.md`` from small real runs.

* Linear-Gaussian task (3 parameters, exact posterior): MF-NPE on 2000
  low-fidelity and 100 high-fidelity simulations and NPE on the same 100
  high-fidelity ones; pairplot of both against the exact posterior at one
  observation, the loss curves of MF-NPE per fidelity, SBC and TARP over
  200 test observations.
* The same task over high-fidelity budgets and seeds: held-out negative log
  probability of the true parameters, NPE vs MF-NPE, against the exact
  posterior's.
* Neuron task: posterior predictive voltage traces of MF-NPE (1000 low- and
  200 high-fidelity simulations of summary statistics) at one observation.

Run (from the repository root; about 4 minutes on 2 cores):

    python docs/make_figures.py [--output docs/figures] [--seeds 3] [--only budget ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from mfask import MultiFidelityPosterior
from mfask.benchmarks.tasks.linear_gaussian import LinearGaussian
from mfask.benchmarks.tasks.neuron import NeuronTask
from mfask.diagnostics import nltp, sbc_ranks, sbc_uniformity_pvalues, tarp_coverage
from mfask.plot import (
    loss_curves,
    metric_vs_budget,
    pairplot,
    predictive_traces,
    sbc_histograms,
    tarp_plot,
)

DPI = 100
#: groups of figures that --only can select; each group is reproducible on its own
GROUPS = ("linear_gaussian", "budget", "neuron")


def linear_gaussian_figures(output: Path) -> None:
    """Pairplot, loss curves, SBC and TARP from one MF-NPE and one NPE run."""
    task = LinearGaussian(dim=3)
    rng = np.random.default_rng(0)
    low_theta = task.sample_prior(2000, rng)
    low_x = task.simulate(low_theta, "low", rng)
    high_theta = task.sample_prior(100, rng)
    high_x = task.simulate(high_theta, "high", rng)

    mf = MultiFidelityPosterior(task.prior, ["low", "high"], seed=0)
    mf.tell(low_theta, low_x, "low", unasked="prior")
    mf.tell(high_theta, high_x, "high", unasked="prior")
    npe = MultiFidelityPosterior(task.prior, ["high"], seed=0)
    npe.tell(high_theta, high_x, "high", unasked="prior")

    theta_o, x_o = task.observations(1, seed=7)
    samples = {
        "exact posterior": task.reference_posterior(x_o[0], 5000, seed=1),
        "MF-NPE (2000 LF + 100 HF)": mf.sample(5000, x_o[0]),
        "NPE (100 HF)": npe.sample(5000, x_o[0]),
    }
    fig = pairplot(samples, truth=theta_o[0], names=task.prior.names)
    fig.savefig(output / "pairplot.png", dpi=DPI)

    mf.fit()
    loss_curves(mf).savefig(output / "loss_curves.png", dpi=DPI)

    theta_test, x_test = task.observations(200, seed=3)
    num_samples = 100
    mf_samples = mf.sample_batched(num_samples, x_test)  # (200, 100, 3)
    ranks = sbc_ranks(mf_samples, theta_test)  # (200, 3)
    print("SBC p-values (20 bins):", sbc_uniformity_pvalues(ranks, num_samples, bins=20).round(3))
    fig = sbc_histograms(ranks, num_samples, names=task.prior.names)
    fig.savefig(output / "sbc.png", dpi=DPI)

    alphas, coverage = tarp_coverage(mf_samples, theta_test, seed=0)
    fig = tarp_plot(alphas, coverage, label="MF-NPE", num_observations=len(theta_test))
    npe_samples = npe.sample_batched(num_samples, x_test)
    alphas, coverage = tarp_coverage(npe_samples, theta_test, seed=0)
    tarp_plot(alphas, coverage, label="NPE", ax=fig.axes[0])
    print("TARP:", [text.get_text() for text in fig.axes[0].get_legend().get_texts()][2:])
    fig.savefig(output / "tarp.png", dpi=DPI)


def budget_figure(output: Path, seeds: int, budgets: tuple[int, ...]) -> None:
    """Held-out -log q(theta_true | x) of NPE and MF-NPE per high-fidelity budget."""
    task = LinearGaussian(dim=3)
    theta_test, x_test = task.observations(500, seed=11)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(seeds):
            rng = np.random.default_rng(100 + seed)
            pretrained = MultiFidelityPosterior(task.prior, ["low", "high"], seed=seed)
            theta = task.sample_prior(2000, rng)
            pretrained.tell(theta, task.simulate(theta, "low", rng), "low", unasked="prior")
            pretrained.fit("low")
            path = Path(folder) / f"low-{seed}.npz"
            pretrained.save(path)
            high_theta = task.sample_prior(max(budgets), rng)
            high_x = task.simulate(high_theta, "high", rng)
            for budget in budgets:
                for method in ("NPE", "MF-NPE"):
                    if method == "NPE":
                        post = MultiFidelityPosterior(task.prior, ["high"], seed=seed)
                    else:
                        post = MultiFidelityPosterior.load(path)
                    post.tell(high_theta[:budget], high_x[:budget], "high", unasked="prior")
                    log_q = post.log_prob_batched(theta_test[:, None, :], x_test)[:, 0]
                    rows.append({"method": method, "budget": budget, "value": nltp(log_q)})
                    print(rows[-1], flush=True)
    exact = nltp(task.posterior_log_prob(theta_test, x_test))
    fig = metric_vs_budget(
        rows,
        metric_name="-log q(theta_true | x), 500 test pairs",
        reference=exact,
        reference_label="exact posterior",
    )
    fig.savefig(output / "metric_vs_budget.png", dpi=DPI)


def neuron_figure(output: Path) -> None:
    """Posterior predictive soma voltage of MF-NPE at one observation."""
    task = NeuronTask()
    rng = np.random.default_rng(0)
    theta_o = np.array([[0.3, 0.06]])  # spikes during the stimulus
    t, v_observed = task.simulate_traces(theta_o, "high", rng)
    x_o = task.summarise(v_observed)[0]

    post = MultiFidelityPosterior(task.prior, ["low", "high"], seed=0)
    for fidelity, count in (("low", 1000), ("high", 200)):
        batch = post.ask(fidelity, count)
        post.tell(batch, task.simulate(batch.theta, fidelity, rng))
    theta = post.sample(20, x_o)
    _, v = task.simulate_traces(theta, "high", rng)
    fig = predictive_traces(t, v, v_observed[0], xlabel="time (ms)", ylabel="soma voltage (mV)",
                            label="MF-NPE posterior predictive")
    fig.axes[0].set_xlim(40, 90)
    fig.savefig(output / "predictive_traces.png", dpi=DPI)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "figures")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the budget figure")
    parser.add_argument("--budgets", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--only", nargs="+", choices=GROUPS, default=list(GROUPS))
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    wanted = set(args.only)
    started = time.perf_counter()
    if "linear_gaussian" in wanted:
        linear_gaussian_figures(args.output)
        print(f"linear-Gaussian figures done at {time.perf_counter() - started:.0f} s", flush=True)
    if "budget" in wanted:
        budget_figure(args.output, args.seeds, tuple(args.budgets))
        print(f"budget figure done at {time.perf_counter() - started:.0f} s", flush=True)
    if "neuron" in wanted:
        neuron_figure(args.output)
        print(f"neuron figure done at {time.perf_counter() - started:.0f} s", flush=True)
    print(f"figures in {args.output}")


if __name__ == "__main__":
    main()
