"""Case study: MF-NPE on the Hodgkin-Huxley neuron, driven by ask/tell.

The simulator (:class:`mfask.benchmarks.tasks.neuron.NeuronTask`) stands in
for an external one: the script asks ``MultiFidelityPosterior`` for parameters,
runs the simulator itself (timing every call), and tells the outputs back,
exactly as a user with their own simulator would. Failed runs come back as NaN
rows and are recorded as failed by ``tell``.

It writes into ``--output-dir``:

* ``pairplot.png``: posterior samples at one observation, true parameters marked;
* ``predictive_traces.png``: HF traces simulated at posterior samples against
  the observed trace;
* ``loss_curves.png``: training and validation loss of both fidelity levels;
* ``sbc.png`` and ``tarp.png``: calibration on held-out HF observations;
* ``compute.json``: the compute summary (also printed): LF simulation seconds,
  HF simulation seconds, training seconds and their total, all measured in
  this run.

Usage::

    python examples/neuron_case_study.py --low 2000 --high 200 --seed 0 \\
        --output-dir case_study_output
    python examples/neuron_case_study.py --small --output-dir /tmp/cs   # quick run
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mfask import MultiFidelityPosterior
from mfask.benchmarks.tasks.neuron import NeuronTask
from mfask.diagnostics import sbc_ranks, tarp_area, tarp_coverage
from mfask.estimator import FlowConfig
from mfask.training import TrainingConfig

__all__ = [
    "ComputeLedger",
    "simulate_and_tell",
    "fit_timed",
    "CaseStudyConfig",
    "run_case_study",
    "main",
]

#: the parameters of the default observation: spikes during the stimulus
DEFAULT_THETA_OBSERVED = (0.3, 0.06)

Simulator = Callable[[np.ndarray, str, np.random.Generator], np.ndarray]


@dataclass
class ComputeLedger:
    """Wall-clock seconds spent on inference, by kind.

    Attributes:
        low_simulation_seconds: time inside the LF simulator.
        high_simulation_seconds: time inside the HF simulator.
        training_seconds: time inside ``post.fit()``.
        low_simulations, high_simulations: number of simulations run.
    """

    low_simulation_seconds: float = 0.0
    high_simulation_seconds: float = 0.0
    training_seconds: float = 0.0
    low_simulations: int = 0
    high_simulations: int = 0

    @property
    def total_seconds(self) -> float:
        """LF + HF simulation seconds + training seconds."""
        return self.low_simulation_seconds + self.high_simulation_seconds + self.training_seconds

    def summary(self) -> dict[str, float | int]:
        """The ledger with its total, JSON-compatible."""
        return {**asdict(self), "total_seconds": self.total_seconds}


def simulate_and_tell(
    post: MultiFidelityPosterior,
    simulator: Simulator,
    fidelity: str,
    n: int,
    rng: np.random.Generator,
    ledger: ComputeLedger,
    *,
    batch_size: int = 200,
) -> None:
    """Ask ``n`` parameters at ``fidelity`` in batches, simulate, tell.

    Only the simulator call is timed; its seconds and count go to ``ledger``.
    NaN rows (failed runs) are told as they are: ``tell`` records them as failed.
    """
    remaining = n
    while remaining > 0:
        batch = post.ask(fidelity, min(batch_size, remaining))
        start = time.perf_counter()
        x = simulator(batch.theta, fidelity, rng)
        elapsed = time.perf_counter() - start
        post.tell(batch, x)
        count = batch.theta.shape[0]
        remaining -= count
        if fidelity == "low":
            ledger.low_simulation_seconds += elapsed
            ledger.low_simulations += count
        else:
            ledger.high_simulation_seconds += elapsed
            ledger.high_simulations += count


def fit_timed(post: MultiFidelityPosterior, ledger: ComputeLedger, fidelity: str | None = None) -> None:
    """``post.fit(fidelity)``, its wall-clock seconds added to ``ledger``."""
    start = time.perf_counter()
    post.fit(fidelity)
    ledger.training_seconds += time.perf_counter() - start


@dataclass(frozen=True)
class CaseStudyConfig:
    """Sizes of one case-study run.

    Attributes:
        low, high: LF and HF simulation budgets.
        seed: seeds the posterior and the simulator noise.
        num_samples: posterior samples for the pair plot.
        num_predictive: posterior samples rerun for the predictive traces.
        num_calibration: held-out HF observations for SBC and TARP.
        calibration_samples: posterior samples per held-out observation.
        max_epochs: training cap per fit (``None``: the library default).
        flow: the flow architecture.
    """

    low: int = 2000
    high: int = 200
    seed: int = 0
    num_samples: int = 5000
    num_predictive: int = 20
    num_calibration: int = 100
    calibration_samples: int = 200
    max_epochs: int | None = None
    flow: FlowConfig = FlowConfig()

    @classmethod
    def small(cls, seed: int = 0) -> "CaseStudyConfig":
        """A quick run (well under a minute): tiny budgets, a small flow, few epochs."""
        return cls(
            low=200, high=40, seed=seed, num_samples=500, num_predictive=5,
            num_calibration=10, calibration_samples=50, max_epochs=15,
            flow=FlowConfig(hidden_features=16, num_transforms=2, num_bins=4, num_blocks=1),
        )


def run_case_study(
    config: CaseStudyConfig,
    output_dir: Path,
    theta_observed: tuple[float, float] = DEFAULT_THETA_OBSERVED,
) -> dict[str, object]:
    """Run the whole case study; write the figures and ``compute.json``.

    Returns the compute summary (see :class:`ComputeLedger`) plus the TARP
    area, the paths of the figures and the seconds spent on diagnostics
    (predictive simulations, sampling, plotting), which are not inference
    compute and not in the total.
    """
    from mfask.plot import loss_curves, pairplot, predictive_traces, sbc_histograms, tarp_plot

    output_dir.mkdir(parents=True, exist_ok=True)
    task = NeuronTask()
    rng = np.random.default_rng(config.seed)
    training = TrainingConfig() if config.max_epochs is None else TrainingConfig(max_epochs=config.max_epochs)

    # the "measured" observation: one HF run at known parameters
    theta_o = np.array([theta_observed], dtype=np.float64)
    t, v_observed = task.simulate_traces(theta_o, "high", rng)
    x_o = task.summarise(v_observed)[0]

    # --- inference, as a user with an external simulator would run it
    ledger = ComputeLedger()
    post = MultiFidelityPosterior(
        task.prior, ["low", "high"], seed=config.seed, flow=config.flow, training=training
    )
    simulate_and_tell(post, task.simulate, "low", config.low, rng, ledger)
    simulate_and_tell(post, task.simulate, "high", config.high, rng, ledger)
    fit_timed(post, ledger)  # LF pre-training, then HF fine-tuning

    # --- diagnostics (not counted as inference compute)
    started = time.perf_counter()
    figures: dict[str, Path] = {}
    names = list(task.prior.names)

    samples = post.sample(config.num_samples, x_o)
    fig = pairplot({f"MF-NPE ({config.low} LF + {config.high} HF)": samples},
                   names=names, truth=theta_o[0])  # axes zoom to the samples
    figures["pairplot"] = output_dir / "pairplot.png"
    fig.savefig(figures["pairplot"], dpi=100)

    theta_pred = post.sample(config.num_predictive, x_o)
    _, v_pred = task.simulate_traces(theta_pred, "high", rng)
    fig = predictive_traces(t, v_pred, v_observed[0], xlabel="time (ms)",
                            ylabel="soma voltage (mV)", label="HF at posterior samples")
    fig.axes[0].set_xlim(40, 90)
    figures["predictive_traces"] = output_dir / "predictive_traces.png"
    fig.savefig(figures["predictive_traces"], dpi=100)

    fig = loss_curves(post)
    figures["loss_curves"] = output_dir / "loss_curves.png"
    fig.savefig(figures["loss_curves"], dpi=100)

    # held-out HF observations for calibration (failed runs dropped)
    theta_test = task.sample_prior(config.num_calibration, rng)
    x_test = task.simulate(theta_test, "high", rng)
    ok = np.isfinite(x_test).all(axis=1)
    theta_test, x_test = theta_test[ok], x_test[ok]
    test_samples = post.sample_batched(config.calibration_samples, x_test)
    ranks = sbc_ranks(test_samples, theta_test)
    fig = sbc_histograms(ranks, config.calibration_samples, names=names)
    figures["sbc"] = output_dir / "sbc.png"
    fig.savefig(figures["sbc"], dpi=100)
    alphas, coverage = tarp_coverage(test_samples, theta_test, seed=config.seed)
    fig = tarp_plot(alphas, coverage, label="MF-NPE", num_observations=theta_test.shape[0])
    figures["tarp"] = output_dir / "tarp.png"
    fig.savefig(figures["tarp"], dpi=100)

    summary: dict[str, object] = {
        **ledger.summary(),
        "failed_low": post.num_simulations("low", "failed"),
        "failed_high": post.num_simulations("high", "failed"),
        "tarp_area": tarp_area(alphas, coverage),
        "calibration_observations": int(theta_test.shape[0]),
        "diagnostics_seconds": time.perf_counter() - started,
        "config": {**asdict(config), "flow": config.flow.to_dict()},
        "theta_observed": list(theta_observed),
        "figures": {name: str(path) for name, path in figures.items()},
    }
    (output_dir / "compute.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def format_summary(summary: dict[str, object]) -> str:
    """The compute summary as a few printable lines."""
    return "\n".join([
        "compute spent on inference (wall-clock seconds, measured in this run):",
        f"  LF simulation  {summary['low_simulation_seconds']:9.2f} s  ({summary['low_simulations']} runs)",
        f"  HF simulation  {summary['high_simulation_seconds']:9.2f} s  ({summary['high_simulations']} runs)",
        f"  training       {summary['training_seconds']:9.2f} s",
        f"  total          {summary['total_seconds']:9.2f} s",
        f"(diagnostics and figures, not counted: {summary['diagnostics_seconds']:.2f} s; "
        f"TARP area {summary['tarp_area']:.3f} on {summary['calibration_observations']} held-out "
        "HF observations)",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--low", type=int, default=None, help="LF simulations (default 2000)")
    parser.add_argument("--high", type=int, default=None, help="HF simulations (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=Path("case_study_output"))
    parser.add_argument("--small", action="store_true",
                        help="a quick run: tiny budgets, a small flow, few epochs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = CaseStudyConfig.small(args.seed) if args.small else CaseStudyConfig(seed=args.seed)
    overrides = {k: v for k, v in (("low", args.low), ("high", args.high)) if v is not None}
    if any(v < 2 for v in overrides.values()):
        parser.error("--low and --high need at least 2 simulations each")
    config = replace(config, **overrides)
    summary = run_case_study(config, args.output_dir)
    print(format_summary(summary))
    print(f"figures in {args.output_dir}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
