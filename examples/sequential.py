"""Sequential MF-TSNPE and A-MF-TSNPE through ask/tell on the OU task.

Both runs pre-train on the same number of cheap low-fidelity simulations,
fix one observation, and then spend the high-fidelity budget in rounds: the
first round's parameters are prior draws (the posterior fitted on them is
MF-NPE), each later round's come from the prior truncated to the current
posterior's highest-density region at the observation. The A-MF-TSNPE run
replaces 20 % of every batch by the parameters where a 5-member ensemble
disagrees most. Both are compared with the exact posterior (C2ST, 0.5 is
perfect).

Run:  python examples/sequential.py  [--low 2000] [--rounds 3] [--per-round 50] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import mfask
from mfask.acquisition import AcquisitionConfig
from mfask.benchmarks.tasks import OrnsteinUhlenbeck


def run(task: OrnsteinUhlenbeck, x_o: np.ndarray, args: argparse.Namespace,
        acquisition: AcquisitionConfig | None) -> np.ndarray:
    """One sequential run; returns 2000 posterior samples at ``x_o``."""
    rng = np.random.default_rng(args.seed)
    posterior = mfask.MultiFidelityPosterior(task.prior, ["low", "high"], seed=args.seed)

    # cheap simulations, amortized: prior draws
    batch = posterior.ask("low", args.low)
    posterior.tell(batch, task.simulate(batch.theta, "low", rng))

    # from here on, high-fidelity asks are rounds at x_o
    posterior.set_observation(x_o, acquisition=acquisition)
    for _ in range(args.rounds):
        batch = posterior.ask("high", args.per_round)
        # ... run the expensive simulator, possibly on a cluster; tells may
        # come back late or in parts, the next ask never waits for them
        posterior.tell(batch, task.simulate(batch.theta, "high", rng))
        info = posterior.round_info
        sources = {s: batch.source.count(s) for s in sorted(set(batch.source))}
        threshold = "-" if info.threshold is None else f"{info.threshold:.2f}"
        mass = "-" if info.region_prior_mass is None else f"{info.region_prior_mass:.3f}"
        print(f"  round {batch.round}: {sources}, threshold {threshold}, "
              f"region prior mass {mass}")
    return posterior.sample(2000, x_o)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--low", type=int, default=2000, help="low-fidelity simulations")
    parser.add_argument("--rounds", type=int, default=3, help="high-fidelity rounds")
    parser.add_argument("--per-round", type=int, default=50, help="high-fidelity simulations per round")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    task = OrnsteinUhlenbeck()
    theta_true, x_observed = task.observations(1, seed=args.seed + 100)
    x_o = x_observed[0]
    print(f"true parameters {dict(zip(task.prior.names, theta_true[0].round(3)))}")
    reference = task.reference_posterior(x_o, 2000, seed=args.seed)
    try:
        from mfask.diagnostics import c2st
    except ImportError:
        c2st = None

    for name, acquisition in [("MF-TSNPE", None), ("A-MF-TSNPE", AcquisitionConfig())]:
        print(name)
        started = time.perf_counter()
        samples = run(task, x_o, args, acquisition)
        seconds = time.perf_counter() - started
        score = "" if c2st is None else f"C2ST {c2st(reference, samples, seed=args.seed):.3f}, "
        print(f"  {score}posterior mean {samples.mean(axis=0).round(3)} "
              f"(exact {reference.mean(axis=0).round(3)}), {seconds:.0f} s")


if __name__ == "__main__":
    main()
