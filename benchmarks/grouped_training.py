"""Members of a level trained together against one after another (issue 13, item 3).

For each task, size of the ensemble ``K`` and seed: one HF training set, ``K``
freshly initialised default flows (``FlowConfig()``), and the same
``train_members`` call with ``backend="sequential"`` (one ``train_flow``
after another, as before) and ``backend="grouped"`` (one batched loop,
``mfask.grouped_training``), on copies of the same members with the same
seeds, in alternating order. ``K = 2`` is what the transfer guard trains at
every MF level by default (the fine-tuned and the HF-only network), ``K = 5``
the acquisition ensemble of A-MF-TSNPE. Each trained ensemble is scored the
same way: C2ST (random forest) of 1000 posterior samples against the task's
reference samples at ``--observations`` observations.

Writes rows to ``docs/benchmarks/results/grouped_training.jsonl`` and the
table (median time per arm, median of the paired per-seed time ratios,
C2ST mean +- standard error per arm and paired difference) to
``docs/benchmarks/grouped_training.md``.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 python benchmarks/grouped_training.py [--tasks two_moons slcp]
        [--members 2 5] [--simulations 1000] [--seeds 3] [--observations 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mfask.benchmarks.machine import describe_machine
from mfask.benchmarks.tasks import get_task
from mfask.diagnostics import c2st
from mfask.ensemble import train_members
from mfask.estimator import ConditionalFlow, FlowConfig
from mfask.parameter_space import ParameterSpace
from mfask.posterior_density import PosteriorDensity
from mfask.training import TrainingConfig

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "benchmarks" / "results" / "grouped_training.jsonl"
REPORT = ROOT / "docs" / "benchmarks" / "grouped_training.md"
BACKENDS = ("sequential", "grouped")


def run_case(task_name: str, members: int, simulations: int, seed: int, observations: int,
             training: TrainingConfig) -> dict[str, Any]:
    """Both arms on one training set; returns the row written to the results file."""
    task = get_task(task_name)
    rng = np.random.default_rng(seed)
    theta = task.sample_prior(simulations, rng)
    x = task.simulate(theta, task.fidelities[-1], rng)
    keep = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    theta, x = theta[keep], x[keep]
    space = ParameterSpace(task.prior, "support")
    z = space.to_flow(torch.as_tensor(theta, dtype=torch.float64)).to(torch.float32)
    x32 = torch.as_tensor(x, dtype=torch.float32)
    torch.manual_seed(seed)
    fresh = [ConditionalFlow(task.prior.dim, task.x_shape, FlowConfig()) for _ in range(members)]
    for flow in fresh:
        flow.set_standardization(z, x32)
    seeds = [1000 * seed + k for k in range(members)]
    theta_o, x_o = task.observations(observations, seed=10_000 + seed)
    row: dict[str, Any] = {"task": task_name, "members": members, "simulations": int(len(theta)),
                           "seed": seed}
    order = BACKENDS if seed % 2 == 0 else BACKENDS[::-1]
    for backend in order:
        copies = [copy.deepcopy(flow) for flow in fresh]
        started = time.perf_counter()
        trained, histories = train_members(copies, z, x32, training, seeds, backend=backend)
        seconds = time.perf_counter() - started
        density = PosteriorDensity(task.prior, trained, space)
        generator = torch.Generator().manual_seed(seed)
        scores = []
        for i in range(observations):
            samples = density.sample(1000, torch.as_tensor(x_o[i:i + 1], dtype=torch.float64), generator)[0]
            reference = task.reference_posterior(x_o[i], 1000, seed=i)
            scores.append(c2st(reference, samples.numpy(), seed=i))
        row[backend] = {"seconds": seconds, "epochs": [h.epochs for h in histories],
                        "c2st": float(np.mean(scores))}
    return row


def _mean_se(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values) / math.sqrt(len(values)):.3f}"


def write_report(rows: list[dict[str, Any]], command: str, machine: str) -> None:
    """The markdown table of ``rows`` with the command and the machine."""
    lines = [
        "# Grouped training: the members of a level trained together",
        "",
        "Written by `benchmarks/grouped_training.py` (see its docstring for the protocol).",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine}",
        "",
        "Same training set, same initial members and seeds for both arms; time is the whole",
        "`train_members` call (default `TrainingConfig()`: early stopping, patience 20);",
        "ratio = grouped / sequential, the median of the per-seed ratios. In float32 the two arms",
        "round differently, so their members stop at different epochs; the time per member-epoch",
        "(wall time / sum of the members' epochs) compares the cost of the same work. C2ST over the",
        "observations, mean +- standard error over seeds; the difference is paired per seed",
        "(inside two standard errors: a tie).",
        "",
        "| task | K | simulations | seeds | sequential s (median) | grouped s (median) | time ratio | "
        "time per member-epoch ratio | C2ST sequential | C2ST grouped | C2ST grouped - sequential |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["members"], row["simulations"] // 100 * 100), []).append(row)
    for (task, members, simulations), group in sorted(groups.items()):
        sequential = [r["sequential"]["seconds"] for r in group]
        grouped = [r["grouped"]["seconds"] for r in group]
        ratios = [g / s for g, s in zip(grouped, sequential)]
        per_epoch = [(r["grouped"]["seconds"] / sum(r["grouped"]["epochs"]))
                     / (r["sequential"]["seconds"] / sum(r["sequential"]["epochs"])) for r in group]
        c2st_s = [r["sequential"]["c2st"] for r in group]
        c2st_g = [r["grouped"]["c2st"] for r in group]
        lines.append(
            f"| {task} | {members} | {simulations} | {len(group)} | {statistics.median(sequential):.1f} | "
            f"{statistics.median(grouped):.1f} | {statistics.median(ratios):.2f}x | "
            f"{statistics.median(per_epoch):.2f}x | {_mean_se(c2st_s)} | "
            f"{_mean_se(c2st_g)} | {_mean_se([g - s for g, s in zip(c2st_g, c2st_s)])} |"
        )
    REPORT.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["two_moons", "slcp"])
    parser.add_argument("--members", nargs="+", type=int, default=[2, 5])
    parser.add_argument("--simulations", nargs="+", type=int, default=[1000])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--observations", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-epochs", type=int, help="cap on epochs (default: TrainingConfig's)")
    parser.add_argument("--report-only", metavar="COMMAND",
                        help="rewrite the report from the results file, quoting COMMAND as the run's command")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python benchmarks/grouped_training.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    machine = describe_machine()
    if args.report_only:
        rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
        previous = REPORT.read_text().splitlines() if REPORT.exists() else []
        run_machine = next((line[len("Machine: "):] for line in previous if line.startswith("Machine: ")),
                           "unknown (not recorded)")
        write_report(rows, args.report_only, run_machine)
        return 0
    training = TrainingConfig() if args.max_epochs is None else TrainingConfig(max_epochs=args.max_epochs)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with RESULTS.open("w") as out:
        for task in args.tasks:
            for simulations in args.simulations:
                for members in args.members:
                    for seed in range(args.seeds):
                        row = run_case(task, members, simulations, seed, args.observations, training)
                        rows.append(row)
                        out.write(json.dumps(row) + "\n")
                        out.flush()
                        print(json.dumps(row), file=sys.stderr)
    write_report(rows, command, machine)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
