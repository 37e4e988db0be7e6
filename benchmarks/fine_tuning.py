"""Fine-tuning that keeps what pre-training learned: L2-SP and a frozen
conditioner trunk against plain fine-tuning, on the same data.

For each task, high-fidelity budget and seed, one LF pre-training (the
task's own low fidelity) is saved, and every variant starts from it and
fine-tunes on the same HF training set with the same seeds; only
``MultiFidelityPosterior(fine_tuning=...)`` (and, for the ``off`` rows, the
transfer guard) differs. The data are those of ``benchmarks/transfer_guard.py``
(its :func:`seed_data`), scored the same way: NLTP, the mean of
``-log q(theta | x)`` over ``--tests`` held-out prior-predictive HF pairs
(lower is better).

Rows go to ``docs/benchmarks/results/fine_tuning.jsonl`` (``--resume`` skips
(task, HF, seed) rows that are there), the table (mean +- standard error over
seeds of each variant minus plain fine-tuning, paired per seed) to
``docs/benchmarks/fine_tuning.md``.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 python benchmarks/fine_tuning.py [--tasks ou sir] [--high 50]
        [--low 2000] [--seeds 5] [--tests 200] [--resume]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import mfask
from mfask.benchmarks.machine import describe_machine
from mfask.benchmarks.tasks import get_task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sbibm_suite import mean_and_se, read_rows  # noqa: E402  (the suite's JSON Lines helpers)
from transfer_guard import nltp, pretrain, seed_data  # noqa: E402  (the guard benchmark's data and score)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "benchmarks" / "results" / "fine_tuning.jsonl"
REPORT = ROOT / "docs" / "benchmarks" / "fine_tuning.md"

#: variant name -> (fine-tuning settings, transfer guard); "plain" is the baseline of each guard setting
VARIANTS: dict[str, tuple[mfask.FineTuningConfig, bool]] = {
    "plain": (mfask.FineTuningConfig(), True),
    "l2sp=30": (mfask.FineTuningConfig(l2sp=30.0), True),
    "l2sp=300": (mfask.FineTuningConfig(l2sp=300.0), True),
    "freeze=20": (mfask.FineTuningConfig(freeze_epochs=20), True),
    "plain, guard off": (mfask.FineTuningConfig(), False),
    "l2sp=300, guard off": (mfask.FineTuningConfig(l2sp=300.0), False),
    "freeze=20, guard off": (mfask.FineTuningConfig(freeze_epochs=20), False),
}


def run_seed(task_name: str, highs: list[int], low: int, seed: int, tests: int,
             done: set[tuple[Any, ...]], command: str) -> list[dict[str, Any]]:
    """Every missing row of one task and seed (all HF budgets, every variant)."""
    todo = [high for high in highs if (task_name, high, seed) not in done]
    if not todo:
        return []
    task = get_task(task_name)
    (test_theta, test_x), (high_theta, high_x), (low_theta, low_x) = seed_data(
        task, "task", max(highs), low, seed, tests)
    fidelities = [task.fidelities[0], task.fidelities[-1]]
    pretrained, pretrain_seconds = pretrain(task, low_theta, low_x, seed)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "pretrained.npz"
        pretrained.save(path)
        for high in todo:
            theta, x = high_theta[:high], high_x[:high]
            row: dict[str, Any] = {"task": task_name, "high": high, "low": low, "seed": seed,
                                   "tests": int(test_theta.shape[0]), "pretrain_seconds": pretrain_seconds,
                                   "command": command, "nltp": {}, "seconds": {}, "chosen": {},
                                   "fine_tuned_epochs": {}}
            for name, (settings, guard) in VARIANTS.items():
                started = time.perf_counter()
                post = mfask.MultiFidelityPosterior.load(path, verbose=False)
                post.transfer_guard, post.fine_tuning = guard, settings
                post.tell(theta, x, fidelities[-1], unasked="prior")
                row["nltp"][name] = nltp(post, test_theta, test_x)
                row["seconds"][name] = time.perf_counter() - started
                choice = post.transfer_choice(fidelities[-1])
                row["chosen"][name] = None if choice is None else choice.chosen
                row["fine_tuned_epochs"][name] = post.training_histories(fidelities[-1])[-1][0].epochs
            rows.append(row)
            print(json.dumps({"task": task_name, "high": high, "seed": seed}
                             | {k: round(v, 3) for k, v in row["nltp"].items()}), flush=True)
    return rows


def render(rows: list[dict[str, Any]], machine: str) -> str:
    """Per task and budget, each variant's NLTP and its paired difference to
    plain fine-tuning with the same guard setting."""
    lines = [
        "# Fine-tuning that keeps what pre-training learned",
        "",
        "Held-out NLTP (mean of -log q(theta | x) over prior-predictive HF pairs; lower is "
        "better), mean +- standard error over seeds. Every variant of a seed starts from the "
        "same LF pre-training and fine-tunes on the same HF simulations with the same seeds; "
        "`- plain` is the difference to plain fine-tuning with the same transfer-guard "
        "setting, paired per seed (negative: the variant is better; inside two standard "
        "errors: a tie). `l2sp` is `FineTuningConfig.l2sp`, `freeze` its `freeze_epochs`. "
        "Choices: the guard's fine-tuned/HF-only/blend decisions over the seeds.",
        "",
        *(f"Command: `{c}`" for c in dict.fromkeys(r["command"] for r in rows)),
        "",
        f"Machine: {machine}",
        "",
        "| task | HF | variant | NLTP | - plain | choices F/H/B | fine-tuned epochs | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["high"]), []).append(row)

    def cell(values: list[float]) -> str:
        mean, se = mean_and_se(values)
        return f"{mean:.3f} ± {se:.3f}"

    for (task, high), group in sorted(groups.items()):
        for name, (_, guard) in VARIANTS.items():
            baseline = "plain" if guard else "plain, guard off"
            values = [r["nltp"][name] for r in group]
            difference = "" if name == baseline else cell(
                [r["nltp"][name] - r["nltp"][baseline] for r in group])
            chosen = [r["chosen"][name] for r in group]
            choices = "/".join(str(chosen.count(c)) for c in ("fine-tuned", "hf-only", "blend")) if guard else ""
            epochs = sum(r["fine_tuned_epochs"][name] for r in group) / len(group)
            lines.append(f"| {task} | {high} | {name} | {cell(values)} | {difference} | {choices} "
                         f"| {epochs:.0f} | {len(group)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["ou", "sir"])
    parser.add_argument("--high", nargs="+", type=int, default=[50])
    parser.add_argument("--low", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--tests", type=int, default=200)
    parser.add_argument("--resume", action="store_true", help="keep rows already in the results file")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the results file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    command = "OMP_NUM_THREADS=1 python benchmarks/fine_tuning.py " + " ".join(sys.argv[1:])
    machine = describe_machine()
    rows = read_rows(RESULTS) if (args.resume or args.report_only) else []
    if not args.report_only:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        if not args.resume:
            RESULTS.write_text("")
        done = {(r["task"], r["high"], r["seed"]) for r in rows}
        for seed in range(args.seeds):  # seeds outermost: a cut-short run still has every task
            for name in args.tasks:
                new = run_seed(name, args.high, args.low, seed, args.tests, done, command)
                with RESULTS.open("a") as handle:
                    for row in new:
                        handle.write(json.dumps(row) + "\n")
                rows.extend(new)
                REPORT.write_text(render(rows, machine))
    REPORT.write_text(render(rows, machine))
    print(f"wrote {REPORT}")


if __name__ == "__main__":
    main()
