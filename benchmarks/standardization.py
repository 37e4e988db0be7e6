"""Measure: should fine-tuning keep the low fidelity's standardisation or refit it?

When a level starts from the weights of the level below, its input
standardisation (the affine maps of theta and x) can either be kept from the
low-fidelity data ("keep") or recomputed on the high-fidelity data ("refit").
This script compares both, and NPE on the high-fidelity data alone, by the
held-out high-fidelity negative log-likelihood -log q(theta | x) on fresh
(theta, x) pairs, over several seeds, on two tasks whose low fidelity is
informative but differently distributed from the high fidelity:

* the linear-Gaussian task (shifted and rescaled x; exact NLL given as floor),
* the OU task (the high fidelity's x are offset by +3 from the low fidelity's).

The low-fidelity model is trained once per task and seed and shared by both
variants (cloned through save/load), so the variants differ only in the
standardisation. Writes ``docs/standardization.md``.

Run:  python benchmarks/standardization.py [--seeds 5] [--low 2000] [--high 50 200]
"""

from __future__ import annotations

import argparse
import ast
import datetime
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mfask import MultiFidelityPosterior
from mfask.benchmarks.machine import describe_machine
from mfask.benchmarks.tasks import OrnsteinUhlenbeck
from mfask.benchmarks.tasks.linear_gaussian import LinearGaussian

NUM_TEST = 2000


def held_out_nll(post: MultiFidelityPosterior, theta: np.ndarray, x: np.ndarray) -> float:
    """Mean -log q(theta_i | x_i) over paired held-out rows."""
    return float(-post.log_prob_batched(theta[:, None, :], x)[:, 0].mean())


def run(task, seed: int, num_low: int, high_budgets: list[int], folder: Path) -> list[dict]:
    rng = np.random.default_rng(seed)
    test_theta = task.sample_prior(NUM_TEST, np.random.default_rng(10_000 + seed))
    test_x = task.simulate(test_theta, "high", np.random.default_rng(20_000 + seed))
    pre = MultiFidelityPosterior(task.prior, ["low", "high"], seed=seed)
    batch = pre.ask("low", num_low)
    pre.tell(batch, task.simulate(batch.theta, "low", rng))
    pre.fit("low")
    pretrained = folder / f"{task.name}-{seed}.npz"
    pre.save(pretrained)
    high_theta = task.sample_prior(max(high_budgets), rng)
    high_x = task.simulate(high_theta, "high", rng)
    rows = []
    for budget in high_budgets:
        for variant in ("refit", "keep", "npe"):
            started = time.perf_counter()
            if variant == "npe":
                post = MultiFidelityPosterior(task.prior, ["high"], seed=seed)
            else:
                post = MultiFidelityPosterior.load(pretrained)
                post.transfer_standardization = variant
            post.tell(high_theta[:budget], high_x[:budget], "high", unasked="prior")
            post.fit("high")
            rows.append({
                "task": task.name, "seed": seed, "high": budget, "variant": variant,
                "nll": held_out_nll(post, test_theta, test_x),
                "seconds": time.perf_counter() - started,
            })
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--low", type=int, default=2000)
    parser.add_argument("--high", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--output", default="docs/standardization.md")
    parser.add_argument(
        "--rows-from", type=Path, default=None,
        help="re-render the page from the result rows an earlier run printed on stderr "
             "(seeds that did not finish for every variant are left out)",
    )
    args = parser.parse_args()
    tasks = [LinearGaussian(), OrnsteinUhlenbeck()]
    if args.rows_from is not None:
        rows = [ast.literal_eval(line) for line in args.rows_from.read_text().splitlines()
                if line.startswith("{'task'")]
    else:
        rows = []
        with tempfile.TemporaryDirectory() as folder:
            for task in tasks:
                for seed in range(args.seeds):
                    rows.extend(run(task, seed, args.low, args.high, Path(folder)))
    write_page(rows, tasks, args)


def complete_seeds(rows: list[dict], task_name: str, budgets: list[int]) -> list[int]:
    """Seeds of ``task_name`` with a result for every budget and variant."""
    seeds = sorted({r["seed"] for r in rows if r["task"] == task_name})
    wanted = {(b, v) for b in budgets for v in ("refit", "keep", "npe")}
    return [
        seed for seed in seeds
        if wanted <= {(r["high"], r["variant"]) for r in rows
                      if r["task"] == task_name and r["seed"] == seed}
    ]


def write_page(rows: list[dict], tasks: list, args: argparse.Namespace) -> None:
    """Write the markdown page: per task and budget, the three variants' NLL."""
    lines = [
        "# Fine-tuning: keep or refit the input standardisation?",
        "",
        "Held-out high-fidelity NLL, mean -log q(theta | x) over "
        f"{NUM_TEST} fresh (theta, x) pairs per seed (lower is better); mean +- standard "
        f"error over seeds; {args.low} low-fidelity simulations for pre-training.",
        "`refit`: the fine-tuned model recomputes the standardisation of theta and x on the "
        "high-fidelity data; `keep`: it keeps the low fidelity's; `npe`: no pre-training.",
        "`refit - keep`: mean +- standard error of the paired per-seed difference.",
        "",
        "| task | HF sims | seeds | refit | keep | npe | refit - keep |",
        "|---|---|---|---|---|---|---|",
    ]
    for task in tasks:
        seeds = complete_seeds(rows, task.name, args.high)
        if not seeds:
            continue
        for budget in args.high:
            def values(variant: str) -> np.ndarray:
                return np.array([r["nll"] for r in rows if r["task"] == task.name
                                 and r["seed"] in seeds and r["high"] == budget
                                 and r["variant"] == variant])

            def cell(v: np.ndarray) -> str:
                return f"{v.mean():.3f} +- {v.std(ddof=1) / np.sqrt(len(v)):.3f}"

            diff = values("refit") - values("keep")
            lines.append(f"| {task.name} | {budget} | {len(seeds)} | {cell(values('refit'))} | "
                         f"{cell(values('keep'))} | {cell(values('npe'))} | {cell(diff)} |")
    lg = next(t for t in tasks if isinstance(t, LinearGaussian))
    floors = []
    for seed in complete_seeds(rows, lg.name, args.high):
        theta = lg.sample_prior(NUM_TEST, np.random.default_rng(10_000 + seed))
        x = lg.simulate(theta, "high", np.random.default_rng(20_000 + seed))
        floors.append(-lg.posterior_log_prob(theta, x).mean())
    if floors:
        lines += ["", f"Exact posterior NLL on the linear-Gaussian test sets: {np.mean(floors):.3f}."]
    lines += [
        "",
        f"Command: `python benchmarks/standardization.py --seeds {args.seeds} --low {args.low} "
        f"--high {' '.join(map(str, args.high))}`",
        f"Date: {datetime.date.today().isoformat()}; machine: {describe_machine()}.",
        "",
    ]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
