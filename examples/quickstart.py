"""Quickstart: the whole ask/tell loop of MF-NPE on the built-in OU simulators.

The loop is written as a user with their own simulators would write it: ask
for parameters, run the simulator, tell the results. Here the simulators are
mfask's Ornstein-Uhlenbeck pair (a cheap i.i.d. Gaussian low fidelity and the
exact OU process as high fidelity), so the answer can be checked against the
exact posterior.

Run:  python examples/quickstart.py  [--low 2000] [--high 100] [--seed 0]
                                     [--parameter-space {unbounded,support}]

``--parameter-space support`` learns the flow on the parameters themselves
and cuts it to the prior's box by rejection (``docs/parameter_space.md``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import mfask
from mfask.benchmarks.tasks import OrnsteinUhlenbeck


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--low", type=int, default=2000, help="low-fidelity simulations")
    parser.add_argument("--high", type=int, default=100, help="high-fidelity simulations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parameter-space", choices=["unbounded", "support"], default="support",
                        help="the space the flow learns in (see docs/parameter_space.md)")
    args = parser.parse_args()

    task = OrnsteinUhlenbeck()
    simulator_rng = np.random.default_rng(args.seed)
    theta_true, x_observed = task.observations(1, seed=args.seed + 100)
    print("true parameters", {n: round(float(v), 3) for n, v in zip(task.prior.names, theta_true[0])})

    started = time.perf_counter()
    posterior = mfask.MultiFidelityPosterior(
        task.prior, fidelities=["low", "high"], seed=args.seed, verbose=True,
        parameter_space=args.parameter_space,
    )

    # 1. many cheap simulations: tell by value, as from a user's own loop
    theta = posterior.ask("low", args.low).theta
    posterior.tell(theta, task.simulate(theta, "low", simulator_rng), "low")

    # 2. few expensive ones: tell by batch (unambiguous)
    batch = posterior.ask("high", args.high)
    posterior.tell(batch, task.simulate(batch.theta, "high", simulator_rng))

    # 3. the posterior: pre-trains on "low", fine-tunes on "high" (lazily, here)
    samples = posterior.sample(2000, x_observed[0])
    seconds = time.perf_counter() - started
    print(posterior)

    # 4. how close is it to the exact posterior? (this simulator has one)
    reference = task.reference_posterior(x_observed[0], 2000, seed=args.seed)
    print("A posterior need not centre on the true parameters: the data carry noise, so the")
    print("exact posterior sits off the truth too. Compare mfask's with the exact one:")
    print(f"  {'':>6}  {'mfask':>15}  {'exact posterior':>15}  {'true':>6}")
    for name, true, ours, exact in zip(task.prior.names, theta_true[0], samples.T, reference.T):
        print(f"  {name:>6}  {ours.mean():7.3f} +- {ours.std():.3f}  "
              f"{exact.mean():7.3f} +- {exact.std():.3f}  {true:6.3f}")
    try:
        from mfask.diagnostics import c2st

        score = c2st(reference, samples, seed=args.seed)
    except ImportError as error:  # scikit-learn is the optional extra "metrics"
        print(f"(C2ST skipped: {error})")
    else:
        print(f"C2ST against the exact posterior: {score:.3f}. A classifier tries to tell mfask's")
        print("samples from exact ones: 0.5 means it cannot (the posteriors agree), 1.0 that")
        print("it always can.")
    print(f"total time {seconds:.1f} s ({args.low} low- and {args.high} high-fidelity simulations)")

if __name__ == "__main__":
    main()
