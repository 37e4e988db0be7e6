"""The transfer guard against NPE and unguarded MF-NPE, with useful, useless
and misleading low fidelities, on the same high-fidelity data.

For each task, low-fidelity kind, high-fidelity budget and seed, three
posteriors are trained on one HF training set:

* **NPE**: the HF data alone;
* **MF-NPE**: pre-trained on ``--low`` LF simulations, fine-tuned (``transfer_guard=False``);
* **guarded**: the same pre-training, then the transfer guard (the default).

Both MF posteriors start from one saved pre-training, so they differ only by
the guard. The low fidelity is one of:

* ``task``: the task's own low-fidelity simulator;
* ``useless``: the task's LF outputs, shuffled across parameters (right
  marginal distribution, no information about the parameters);
* ``misleading``: the LF simulator run at the parameters reflected through
  the prior's median (``u -> 1 - u`` on every marginal CDF), so the LF
  posterior at an observation sits at the reflection of the truth.

Score: NLTP, the mean of ``-log q(theta | x)`` over ``--tests`` held-out
prior-predictive HF pairs (lower is better). Rows go to
``docs/benchmarks/results/transfer_guard.jsonl`` (``--resume`` skips rows that
are there), the table (mean +- standard error over seeds; the guarded minus
NPE difference paired per seed) to ``docs/benchmarks/transfer_guard.md``.

Usage (from the repository root)::

    python benchmarks/transfer_guard.py [--tasks ou sir] [--kinds task useless misleading]
        [--high 50 200] [--low 2000] [--seeds 5] [--tests 1000] [--resume]
"""

from __future__ import annotations

import argparse
import json
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
from mfask.transfer_guard import CHOICES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sbibm_suite import mean_and_se, read_rows  # noqa: E402  (the suite's JSON Lines helpers)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "benchmarks" / "results" / "transfer_guard.jsonl"
REPORT = ROOT / "docs" / "benchmarks" / "transfer_guard.md"
KINDS = ("task", "useless", "misleading")


def low_fidelity_data(task: Task, kind: str, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """LF outputs ``(n, *x_shape)`` for parameters ``theta (n, d)`` of the given kind."""
    if kind == "task":
        return task.simulate(theta, task.fidelities[0], rng)
    if kind == "useless":
        return task.simulate(theta, task.fidelities[0], rng)[rng.permutation(theta.shape[0])]
    if kind == "misleading":
        prior = task.prior
        u = prior.marginal_cdf(torch.as_tensor(theta, dtype=torch.float64))
        eps = 1e-6  # keep reflected points strictly inside the support
        reflected = prior.marginal_icdf((1.0 - u).clamp(eps, 1.0 - eps)).numpy()
        return task.simulate(reflected, task.fidelities[0], rng)
    raise ValueError(f"unknown low-fidelity kind {kind!r}")


def nltp(post: mfask.MultiFidelityPosterior, theta: np.ndarray, x: np.ndarray) -> float:
    """Mean of ``-log q(theta_i | x_i)`` over pairs ``theta (n, d)``, ``x (n, *x_shape)``."""
    return float(-post.log_prob_batched(theta[:, None, :], x).mean())


def pretrain(task: Task, low_theta: np.ndarray, low_x: np.ndarray, seed: int
             ) -> tuple[mfask.MultiFidelityPosterior, float]:
    """A posterior over the task's lowest and highest fidelity, trained on the
    LF rows ``low_theta (n, d)``, ``low_x (n, *x_shape)``; and its seconds."""
    fidelities = [task.fidelities[0], task.fidelities[-1]]
    started = time.perf_counter()
    pretrained = mfask.MultiFidelityPosterior(task.prior, fidelities, seed=seed, verbose=False)
    pretrained.tell(low_theta, low_x, fidelities[0], unasked="prior")
    pretrained.fit(fidelities[0])
    return pretrained, time.perf_counter() - started


def seed_data(task: Task, kind: str, high: int, low: int, seed: int, tests: int
              ) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """One seed's data: ``(test, high, low)``, each ``(theta (n, d), x (n, *x_shape))``;
    the test pairs (HF, prior-predictive) lose rows with non-finite outputs, and the
    first ``k`` HF rows are the HF set of every budget ``k <= high``."""
    rng = np.random.default_rng(seed)
    test_theta = task.sample_prior(tests, np.random.default_rng(10_000 + seed))
    test_x = task.simulate(test_theta, task.fidelities[-1], np.random.default_rng(20_000 + seed))
    keep = np.isfinite(test_x.reshape(tests, -1)).all(axis=1)
    high_theta = task.sample_prior(high, rng)
    high_x = task.simulate(high_theta, task.fidelities[-1], rng)
    low_theta = task.sample_prior(low, rng)
    low_x = low_fidelity_data(task, kind, low_theta, rng)
    return (test_theta[keep], test_x[keep]), (high_theta, high_x), (low_theta, low_x)


def run_seed(task: Task, kind: str, highs: list[int], low: int, seed: int, tests: int,
             done: set[tuple[Any, ...]], command: str) -> list[dict[str, Any]]:
    """Every missing row of one task, LF kind and seed (all HF budgets)."""
    todo = [high for high in highs if (task.name, kind, high, seed) not in done]
    if not todo:
        return []
    (test_theta, test_x), (high_theta, high_x), (low_theta, low_x) = seed_data(
        task, kind, max(highs), low, seed, tests)
    fidelities = [task.fidelities[0], task.fidelities[-1]]
    pretrained, pretrain_seconds = pretrain(task, low_theta, low_x, seed)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "pretrained.npz"
        pretrained.save(path)
        for high in todo:
            theta, x = high_theta[:high], high_x[:high]
            row: dict[str, Any] = {"task": task.name, "kind": kind, "high": high, "low": low,
                                   "seed": seed, "tests": int(test_theta.shape[0]),
                                   "pretrain_seconds": pretrain_seconds, "command": command}
            started = time.perf_counter()
            npe = mfask.MultiFidelityPosterior(task.prior, [fidelities[-1]], seed=seed)
            npe.tell(theta, x, fidelities[-1], unasked="prior")
            row["npe"] = nltp(npe, test_theta, test_x)
            row["npe_seconds"] = time.perf_counter() - started
            for name, guard in (("mf", False), ("guarded", True)):
                started = time.perf_counter()
                post = mfask.MultiFidelityPosterior.load(path)
                post.transfer_guard = guard
                post.tell(theta, x, fidelities[-1], unasked="prior")
                row[name] = nltp(post, test_theta, test_x)
                row[f"{name}_seconds"] = time.perf_counter() - started
                if guard:
                    choice = post.transfer_choice(fidelities[-1])
                    row["choice"] = None if choice is None else choice.to_dict()
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("task", "kind", "high", "seed", "npe", "mf", "guarded")}
                             | {"chosen": row["choice"]["chosen"]}), flush=True)
    return rows


def render(rows: list[dict[str, Any]], command: str, machine: str) -> str:
    """The table: per task, LF kind and budget, NLTP mean +- SE over seeds,
    the paired guarded - NPE and guarded - MF differences, and the choices."""
    lines = [
        "# The transfer guard: never worse than NPE",
        "",
        "Held-out NLTP (mean of -log q(theta | x) over prior-predictive HF pairs; lower is "
        "better), mean +- standard error over seeds; differences paired per seed (same HF "
        "data, same pre-training for both MF columns). A difference inside two standard "
        "errors is a tie. Choices: how often the guard kept the fine-tuned (F), the HF-only "
        "(H) networks, or blended both (B).",
        "",
        *(f"Command: `{c}`" for c in dict.fromkeys(r.get("command", command) for r in rows)),
        "",
        f"Machine: {machine}",
        "",
        "| task | LF | HF | NPE | MF-NPE | guarded | MF-NPE - NPE | guarded - NPE | guarded - MF-NPE "
        "| choices F/H/B | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["kind"], row["high"]), []).append(row)
    order = {kind: i for i, kind in enumerate(KINDS)}
    for (task, kind, high), group in sorted(groups.items(), key=lambda g: (g[0][0], order[g[0][1]], g[0][2])):
        def cell(values: list[float]) -> str:
            mean, se = mean_and_se(values)
            return f"{mean:.3f} ± {se:.3f}"
        guarded = [r["guarded"] for r in group]
        counts = {c: sum(r["choice"]["chosen"] == c for r in group) for c in CHOICES}
        lines.append(
            f"| {task} | {kind} | {high} | {cell([r['npe'] for r in group])} | "
            f"{cell([r['mf'] for r in group])} | {cell(guarded)} | "
            f"{cell([r['mf'] - r['npe'] for r in group])} | "
            f"{cell([g - r['npe'] for g, r in zip(guarded, group)])} | "
            f"{cell([g - r['mf'] for g, r in zip(guarded, group)])} | "
            f"{counts['fine-tuned']}/{counts['hf-only']}/{counts['blend']} | {len(group)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["ou", "sir"])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--high", nargs="+", type=int, default=[50, 200])
    parser.add_argument("--low", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--tests", type=int, default=1000)
    parser.add_argument("--resume", action="store_true", help="keep rows already in the results file")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the report from the results file (each row names its command)")
    args = parser.parse_args()
    command = "python benchmarks/transfer_guard.py " + " ".join(sys.argv[1:])
    machine = describe_machine()
    if args.report_only and REPORT.exists():  # keep the machine line of the run
        for line in REPORT.read_text().splitlines():
            if line.startswith("Machine: "):
                machine = line[len("Machine: "):]
    rows = read_rows(RESULTS) if (args.resume or args.report_only) else []
    if not args.report_only:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        if not args.resume:
            RESULTS.write_text("")
        done = {(r["task"], r["kind"], r["high"], r["seed"]) for r in rows}
        for name in args.tasks:
            task = get_task(name)
            for kind in args.kinds:
                for seed in range(args.seeds):
                    new = run_seed(task, kind, args.high, args.low, seed, args.tests, done, command)
                    with RESULTS.open("a") as handle:
                        for row in new:
                            handle.write(json.dumps(row) + "\n")
                    rows.extend(new)
    REPORT.write_text(render(rows, command, machine))
    print(f"wrote {REPORT}")


if __name__ == "__main__":
    main()
