"""Run a study's simulations on a dask.distributed cluster with mfask.run.

The simulators are ordinary Python functions ``simulator(theta, seed) -> x``.
``mfask.run`` asks the study for parameters, sends one task per simulation to
the cluster, and tells each result to the study file as it arrives, so an
interrupted run (Ctrl-C, a lost scheduler, a pre-empted job) loses nothing
that finished: run the script again and it continues (each ticket has its own
seed, so the data are those of an uninterrupted run).

Without ``--scheduler`` a LocalCluster on this machine stands in for a real
cluster; with ``--scheduler tcp://host:8786`` the tasks go to that cluster
(the workers need mfask and numpy, and this file's module importable, or
cloudpickle does the rest). The same run works on joblib's loky processes by
passing ``backend="loky"`` and no executor.

Run:  python examples/dask_runner.py [--study oscillator.mfask] [--low 400]
      [--high 40] [--scheduler ADDRESS] [--joblib]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import mfask


def oscillator(theta: np.ndarray, seed: int, noise: float, steps: int) -> np.ndarray:
    """A damped oscillator x'' = -omega^2 x - gamma x' + noise, summarised."""
    omega, gamma = theta
    rng = np.random.default_rng(seed)
    dt = 10.0 / steps
    x, v = 1.0, 0.0
    trace = np.empty(steps)
    for i in range(steps):
        v += (-(omega**2) * x - gamma * v) * dt + noise * np.sqrt(dt) * rng.normal()
        x += v * dt
        trace[i] = x
    if not np.isfinite(trace).all():
        raise FloatingPointError("the integration diverged")
    quarter = steps // 4
    return np.array([trace[quarter], trace[2 * quarter], trace[3 * quarter], trace[-1],
                     trace.std(), np.abs(trace).max()])


def low_fidelity(theta: np.ndarray, seed: int) -> np.ndarray:
    return oscillator(theta, seed, noise=0.1, steps=200)  # coarse time steps


def high_fidelity(theta: np.ndarray, seed: int) -> np.ndarray:
    return oscillator(theta, seed, noise=0.1, steps=5000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="oscillator.mfask")
    parser.add_argument("--low", type=int, default=400)
    parser.add_argument("--high", type=int, default=40)
    parser.add_argument("--scheduler", help="address of a running dask scheduler")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster workers")
    parser.add_argument("--joblib", action="store_true",
                        help="go through joblib's dask backend instead of client.get_executor()")
    args = parser.parse_args()

    from dask.distributed import Client, LocalCluster

    if Path(args.study).exists():
        study = mfask.open_study(args.study)
        print(f"resuming {args.study}: {study.status()['total']}")
    else:
        prior = mfask.BoxUniform([0.5, 0.05], [3.0, 1.0], names=["omega", "gamma"])
        study = mfask.create_study(
            args.study, prior, ["low", "high"], seed=0,
            training=mfask.TrainingConfig(max_epochs=200),
        )

    cluster = None if args.scheduler else LocalCluster(
        n_workers=args.workers, threads_per_worker=1, dashboard_address=None
    )
    with Client(args.scheduler or cluster) as client:
        print(f"dask client: {client}")
        options = {"backend": "dask"} if args.joblib else {"executor": client.get_executor()}
        report = mfask.run(
            study,
            {"low": low_fidelity, "high": high_fidelity},
            {"low": args.low, "high": args.high},
            retries=1,
            progress_interval=2.0,
            **options,
        )
    if cluster is not None:
        cluster.close()
    for name, fidelity in report.fidelities.items():
        print(f"{name}: {fidelity.done} done, {fidelity.failed} failed by this run "
              f"({fidelity.before} before), {fidelity.seconds:.1f} s")

    theta_true = np.array([1.7, 0.3])
    x_observed = high_fidelity(theta_true, seed=12345)
    samples = study.sample(2000, x_observed)  # trains low, then fine-tunes on high
    print(f"true parameters {theta_true}; posterior mean {samples.mean(axis=0).round(3)}, "
          f"sd {samples.std(axis=0).round(3)}")
    study.close()


if __name__ == "__main__":
    main()
