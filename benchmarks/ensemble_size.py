"""Ensembles as the posterior: what ``ensemble_size=K`` buys at small budgets.

For each task, seed and high-fidelity budget, NPE (high fidelity only) and
MF-NPE (pre-trained on ``--low`` low-fidelity simulations) are trained with
``K`` = 1, 3 and 5 members on the same simulations; the low-fidelity
pre-training of each K is built once per seed and reused for every
high-fidelity budget (saved and loaded, so each fine-tune starts from the
same weights). Scored per posterior:

* C2ST (random forest) against the task's reference samples at
  ``--observations`` observations (``task.observations(m, seed=0)``);
* calibration on ``--tests`` fresh prior pairs: the smallest SBC p-value
  over the parameters and the TARP p-value (:mod:`mfask.diagnostics`);
* training seconds (pre-training and fine-tuning together for MF-NPE).

Rows go to ``docs/benchmarks/results/ensemble.jsonl``; the table (mean +-
standard error over seeds x observations; ``K - 1`` paired per seed and
observation) to ``docs/benchmarks/ensemble.md``.

Usage (from the repository root)::

    python benchmarks/ensemble_size.py [--tasks ou two_moons] [--high 50 200 1000]
        [--low 2000] [--sizes 1 3 5] [--seeds 2] [--observations 5] [--tests 100]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mfask
from mfask.benchmarks.machine import describe_machine
from mfask.benchmarks.tasks import Task, get_task
from mfask.diagnostics import c2st, sbc_ranks, sbc_uniformity_pvalues, tarp_uniformity_pvalue

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sbibm_suite import read_rows  # noqa: E402  (the suite's JSON Lines reader)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "benchmarks" / "results" / "ensemble.jsonl"
REPORT = ROOT / "docs" / "benchmarks" / "ensemble.md"


def score(post: mfask.MultiFidelityPosterior, task: Task, observations: np.ndarray,
          references: list[np.ndarray], tests: tuple[np.ndarray, np.ndarray],
          num_samples: int) -> dict[str, Any]:
    """C2ST per observation, and SBC/TARP p-values on the test pairs."""
    scores = [c2st(reference, post.sample(num_samples, x_o), seed=i)
              for i, (x_o, reference) in enumerate(zip(observations, references))]
    theta_test, x_test = tests
    draws = post.sample_batched(200, x_test)
    sbc = sbc_uniformity_pvalues(sbc_ranks(draws, theta_test), 200)
    return {"c2st": scores, "sbc_min_pvalue": float(sbc.min()),
            "tarp_pvalue": tarp_uniformity_pvalue(draws, theta_test, seed=0)}


def run_seed(task_name: str, seed: int, args: argparse.Namespace, done: set[tuple]) -> None:
    task = get_task(task_name)
    _, observations = task.observations(args.observations, seed=0)
    references = [task.reference_posterior(x_o, args.num_samples) for x_o in observations]
    rng = np.random.default_rng(1000 + seed)
    theta_test = task.sample_prior(args.tests, rng)
    tests = (theta_test, task.simulate(theta_test, "high", rng))
    data_rng = np.random.default_rng(seed)
    theta_low = task.sample_prior(args.low, data_rng)
    x_low = task.simulate(theta_low, "low", data_rng)
    theta_high = task.sample_prior(max(args.high), data_rng)
    x_high = task.simulate(theta_high, "high", data_rng)
    with tempfile.TemporaryDirectory() as folder:
        pretrained: dict[int, tuple[Path, float]] = {}
        for size in args.sizes:
            started = time.perf_counter()
            post = mfask.MultiFidelityPosterior(task.prior, fidelities=["low", "high"],
                                                ensemble_size=size, seed=seed)
            post.tell(theta_low, x_low, "low", unasked="prior")
            post.fit()
            path = Path(folder) / f"pretrained-{size}.npz"
            post.save(path)
            pretrained[size] = (path, time.perf_counter() - started)
        for high in args.high:
            for method in ("npe", "mf-npe"):
                for size in args.sizes:
                    key = (task_name, seed, high, method, size)
                    if key in done:
                        continue
                    started = time.perf_counter()
                    if method == "npe":
                        post = mfask.MultiFidelityPosterior(task.prior, ensemble_size=size, seed=seed)
                        extra = 0.0
                    else:
                        post = mfask.MultiFidelityPosterior.load(pretrained[size][0])
                        extra = pretrained[size][1]
                    post.tell(theta_high[:high], x_high[:high], "high", unasked="prior")
                    post.fit()
                    seconds = time.perf_counter() - started + extra
                    row = {"task": task_name, "seed": seed, "high": high, "low": args.low if method == "mf-npe" else 0,
                           "method": method, "ensemble_size": size, "train_seconds": seconds,
                           **score(post, task, observations, references, tests, args.num_samples)}
                    with RESULTS.open("a") as handle:
                        handle.write(json.dumps(row) + "\n")
                    print(f"{task_name} seed {seed} HF {high} {method} K={size}: c2st "
                          f"{np.mean(row['c2st']):.3f}, SBC p {row['sbc_min_pvalue']:.2g}, "
                          f"TARP p {row['tarp_pvalue']:.2g} ({seconds:.0f} s)", flush=True)


def mean_se(values: list[float]) -> str:
    array = np.asarray(values, dtype=float)
    se = array.std(ddof=1) / math.sqrt(array.size) if array.size > 1 else math.nan
    return f"{array.mean():.3f} +- {se:.3f}"


def render(rows: list[dict[str, Any]], command: str) -> str:
    sizes = sorted({r["ensemble_size"] for r in rows})
    lines = ["# Ensembles as the posterior: K = " + ", ".join(map(str, sizes)), "",
             "C2ST (random forest; lower is better) mean +- standard error over seeds x "
             "observations; `K - 1`: the paired difference to one member on the same "
             "simulations, seed and observation. `calib.`: rejected calibration tests "
             "(SBC per parameter and TARP, p < 0.01 / tests in the table) out of the "
             "cell's runs. Seconds: median training time (MF-NPE includes its "
             "pre-training).", "", f"Command: `{command}`", "",
             f"Machine: {describe_machine()}", ""]
    num_tests = 2 * len(rows)
    level = 0.01 / max(num_tests, 1)
    header = "| task | method | HF | " + " | ".join(
        f"K={k} C2ST | K={k} - 1 | K={k} calib. | K={k} s" for k in sizes) + " |"
    lines += [header, "|---|---|---|" + "---|" * (4 * len(sizes))]
    cells = sorted({(r["task"], r["method"], r["high"]) for r in rows})
    for task, method, high in cells:
        cell = [r for r in rows if (r["task"], r["method"], r["high"]) == (task, method, high)]
        by_key = {(r["seed"], r["ensemble_size"]): r for r in cell}
        entries = []
        for k in sizes:
            runs = [r for r in cell if r["ensemble_size"] == k]
            if not runs:
                entries += ["", "", "", ""]
                continue
            values = [v for r in runs for v in r["c2st"]]
            paired = [a - b for r in runs if (r["seed"], 1) in by_key
                      for a, b in zip(r["c2st"], by_key[(r["seed"], 1)]["c2st"])]
            rejected = sum((r["sbc_min_pvalue"] < level) + (r["tarp_pvalue"] < level) for r in runs)
            entries += [mean_se(values), mean_se(paired) if k != 1 and paired else "",
                        f"{rejected} of {len(runs)}",
                        f"{np.median([r['train_seconds'] for r in runs]):.0f}"]
        lines.append(f"| {task} | {method} | {high} | " + " | ".join(entries) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["ou", "two_moons"])
    parser.add_argument("--high", nargs="+", type=int, default=[50, 200, 1000])
    parser.add_argument("--low", type=int, default=2000)
    parser.add_argument("--sizes", nargs="+", type=int, default=[1, 3, 5])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--observations", type=int, default=5)
    parser.add_argument("--tests", type=int, default=100)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    command = "python benchmarks/ensemble_size.py " + " ".join(
        a for a in sys.argv[1:] if a != "--report-only")
    if not args.report_only:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        done = {(r["task"], r["seed"], r["high"], r["method"], r["ensemble_size"]) for r in read_rows(RESULTS)}
        for task_name in args.tasks:
            for seed in range(args.seeds):
                run_seed(task_name, seed, args, done)
    REPORT.write_text(render(read_rows(RESULTS), command))


if __name__ == "__main__":
    main()
