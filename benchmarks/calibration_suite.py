"""Calibration of mfask's default NPE: SBC and TARP on every task of the suite.

For each task, one data set of ``--budget`` prior simulations trains a
posterior (mfask's defaults, or a variant of ``sbibm_suite.VARIANTS``); then
``--tests`` fresh pairs ``(theta, x)`` from the prior and the simulator are
each answered with ``--samples`` posterior draws. Per task: the SBC
chi-square p-value of every parameter's rank and the TARP p-value (the joint
test, :func:`mfask.diagnostics.tarp_uniformity_pvalue`). A rank histogram is
rejected when its p-value is below 0.01 divided by the number of tests in
the run (Bonferroni).

Tasks: sbibm's (through ``sbibm_suite``: two_moons, gaussian_linear,
gaussian_linear_uniform, gaussian_mixture, slcp, slcp_distractors,
bernoulli_glm, sir, lotka_volterra) and
mfask's own with exact references (``informative`` 3-D at 1e-4 of the prior,
``informative-cubic`` 5-D at 1e-6, ``mfask-two-moons``).

Rows go to ``docs/benchmarks/results/calibration.jsonl`` and the table to
``docs/benchmarks/calibration.md``.

Usage (from the repository root)::

    python benchmarks/calibration_suite.py [--tasks ...] [--budget 1000] [--tests 300]
        [--samples 500] [--variant mfask] [--seed 0] [--threads 1] [--report-only]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import mfask
from mfask.benchmarks.machine import describe_machine
from mfask.benchmarks.tasks import InformativeBox, Task, TwoMoons
from mfask.errors import LeakageError
from mfask.diagnostics import sbc_ranks, sbc_uniformity_pvalues, tarp_uniformity_pvalue

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sbibm_suite  # noqa: E402  (a sibling script: the sbibm adapters and variants)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "benchmarks" / "results" / "calibration.jsonl"
REPORT = ROOT / "docs" / "benchmarks" / "calibration.md"
OWN_TASKS: dict[str, Callable[[], Task]] = {
    "informative": lambda: InformativeBox(dim=3, fraction=1e-4),
    "informative-cubic": lambda: InformativeBox(dim=5, fraction=1e-6, link="cubic"),
    "mfask-two-moons": TwoMoons,
}
TASKS = (*sbibm_suite.TASKS, *OWN_TASKS)
Draw = Callable[[int, int], tuple[np.ndarray, np.ndarray]]


def task_parts(name: str) -> tuple[mfask.Prior, Draw, Callable[[np.ndarray], np.ndarray],
                                   Callable[[np.ndarray], np.ndarray]]:
    """The task's mfask prior, ``draw(n, seed) -> (theta (n, d), x (n, p))``,
    and the maps between mfask's coordinates and ``theta`` (see
    ``sbibm_suite.SuiteTask``)."""
    if name in OWN_TASKS:
        task = OWN_TASKS[name]()

        def draw_own(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
            rng = np.random.default_rng(seed)
            theta = task.sample_prior(n, rng)
            return theta, task.simulate(theta, "high", rng)

        return task.prior, draw_own, (lambda u: u), (lambda theta: theta)
    suite_task = sbibm_suite.load_task(name)
    return suite_task.prior, suite_task.draw, suite_task.to_theta, suite_task.from_theta


def run_task(name: str, args: argparse.Namespace) -> dict[str, Any]:
    prior, draw, to_theta, from_theta = task_parts(name)
    theta, x = draw(args.budget, args.seed)
    started = time.perf_counter()
    post = mfask.MultiFidelityPosterior(prior, seed=args.seed, **sbibm_suite.VARIANTS[args.variant])
    post.tell(from_theta(theta), x, "high", unasked="prior")
    post.fit()
    seconds = time.perf_counter() - started
    theta_test, x_test = draw(args.tests, 1_000_003 + args.seed)
    samples = to_theta(post.sample_batched(args.samples, x_test))  # (m, n, d)
    sbc = sbc_uniformity_pvalues(sbc_ranks(samples, theta_test), args.samples)
    tarp = tarp_uniformity_pvalue(samples, theta_test, seed=args.seed)
    return {"task": name, "budget": args.budget, "seed": args.seed, "method": args.variant,
            "tests": len(theta_test), "samples": args.samples, "sbc_pvalues": sbc.tolist(),
            "tarp_pvalue": tarp, "train_seconds": seconds}


def render(rows: list[dict[str, Any]], command: str) -> str:
    """One line per row; the Bonferroni level counts every test of the table.
    A task whose posterior could not be sampled at some test observation
    (``LeakageError`` of the support space) is listed as failed."""
    num_tests = sum(len(r["sbc_pvalues"]) + 1 for r in rows if "error" not in r)
    level = 0.01 / max(num_tests, 1)
    lines = ["# Calibration: SBC and TARP", "",
             "Per task: a posterior trained on the simulations of one seed, then "
             "fresh prior pairs (theta, x), each answered with posterior draws. "
             "Smallest SBC chi-square p-value over the parameters, and the TARP "
             f"p-value; a test is rejected below 0.01 / {num_tests} tests = {level:.1e} "
             "(Bonferroni over the table).", "",
             f"Command: `{command}`", "", f"Machine: {describe_machine()}", "",
             "| task | method | sims | tests x draws | min SBC p (of d) | TARP p | rejected | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['task']} | {r['method']} | {r['budget']} | failed: {r['error']} | | | | |")
            continue
        smallest = min(r["sbc_pvalues"])
        rejected = sum(p < level for p in r["sbc_pvalues"]) + (r["tarp_pvalue"] < level)
        lines.append(f"| {r['task']} | {r['method']} | {r['budget']} | {r['tests']} x {r['samples']} "
                     f"| {smallest:.3g} (of {len(r['sbc_pvalues'])}) | {r['tarp_pvalue']:.3g} "
                     f"| {'**' + str(rejected) + '**' if rejected else 0} | {r['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--tests", type=int, default=300)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--variant", default="mfask", choices=sorted(sbibm_suite.VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    command = "python benchmarks/calibration_suite.py " + " ".join(
        a for a in sys.argv[1:] if a != "--report-only")
    if not args.report_only:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        for name in args.tasks:
            try:
                row = run_task(name, args)
            except LeakageError as error:  # recorded as a failure of the default, not skipped
                row = {"task": name, "budget": args.budget, "seed": args.seed, "method": args.variant,
                       "error": str(error)}
            with RESULTS.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            if "error" in row:
                print(f"{name}: {row['error']}", flush=True)
                continue
            print(f"{name}: min SBC p {min(row['sbc_pvalues']):.3g}, TARP p {row['tarp_pvalue']:.3g} "
                  f"({row['train_seconds']:.0f} s)", flush=True)
    REPORT.write_text(render(sbibm_suite.read_rows(RESULTS), command))


if __name__ == "__main__":
    main()
