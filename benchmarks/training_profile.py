"""Where the training loop spends its time (issue 13, item 1: profile first).

Trains mfask's default flow with ``MultiFidelityPosterior.fit`` on simulations
of an sbibm-style task, under the sampling profiler py-spy (``pip install
py-spy``; it samples the interpreter's stack from outside, so the loop runs
at full speed), at 10^3, 10^4 and 10^5 simulations for a fixed number of
epochs, and attributes every sample inside ``train_flow`` to one part of an
epoch: the forward pass (the flow's log-density), the backward pass, gradient
clipping, the optimiser step, the validation pass, copying the best weights,
drawing the batch order, and the rest of the loop (indexing, loss
bookkeeping: Python overhead per step). A second measurement trains with the
default early stopping and records how many epochs ran after the best one.

Writes ``docs/benchmarks/training_profile.md`` with the command and machine.

Run:  python benchmarks/training_profile.py [--sizes 1000 10000 100000] [--threads 1]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

#: parts of an epoch, in the order a stack is tested against them: the first
#: with a frame ``function (path...)`` whose function and path fragment match
#: gets a sample taken inside ``train_flow``
PARTS = [
    ("optimiser set-up (torch.optim's first use imports torch._dynamo)",
     (("adam", "mfask/training.py"), ("FlatAdam.__init__", "mfask/flat_adam.py"))),
    ("validation pass", (("mean_negative_log_prob", "mfask/training.py"),)),
    ("best-weights copy", (("deepcopy", "copy.py"), ("snapshot", "mfask/flat_adam.py"))),
    ("backward", (("backward", "torch/_tensor.py"), ("backward", "torch/autograd/__init__.py"))),
    ("gradient clipping", (("clip_grad_norm_", "torch/nn/utils/"), ("clip_grad_norm", "mfask/flat_adam.py"))),
    ("optimiser step", (("step", "torch/optim/"), ("wrapper", "torch/optim/"),
                        ("_use_grad", "torch/optim/"), ("step", "mfask/flat_adam.py"))),
    ("zero_grad", (("zero_grad", "torch/optim/"), ("zero_grad", "mfask/flat_adam.py"))),
    ("forward (log-density)", (("log_prob", "mfask/estimator.py"),)),
    ("progress callback", (("report", "mfask/training_progress.py"),)),
]


def _has_frame(frames: list[str], function: str, path: str) -> bool:
    """Whether a py-spy frame ``Class.function (path:line)`` is ``function`` in ``path``."""
    for frame in frames:
        name, _, where = frame.partition(" (")
        if (name == function or name.endswith("." + function)) and path in where:
            return True
    return False
LOOP = "rest of the loop (indexing, batch order, loss bookkeeping)"


def child(args: argparse.Namespace) -> None:
    """Train once (run under py-spy by the parent); prints the fit's epochs and seconds."""
    import torch

    import mfask
    from mfask.benchmarks.tasks import SLCP

    torch.set_num_threads(args.threads)
    task = SLCP()
    rng = np.random.default_rng(0)
    training = mfask.TrainingConfig(max_epochs=args.epochs, stop_after_epochs=args.epochs + 1) \
        if args.epochs else mfask.TrainingConfig()
    post = mfask.MultiFidelityPosterior(task.prior, seed=0, training=training, verbose=False)
    theta = post.ask(args.rows).theta
    post.tell(theta, task.simulate(theta, "high", rng))
    started = time.perf_counter()
    (history,) = post.fit()["high"]
    print(f"RESULT epochs={history.epochs} best={history.best_epoch + 1} "
          f"seconds={time.perf_counter() - started:.3f} steps_per_epoch="
          f"{-(-history.num_train // training.batch_size)}", flush=True)


def profile(rows: int, epochs: int, threads: int, rate: int, root: Path = ROOT) -> dict:
    """Run :func:`child` under py-spy with the mfask of checkout ``root``;
    returns the share of each part and the fit's numbers."""
    with tempfile.TemporaryDirectory() as folder:
        raw = Path(folder) / "stacks.txt"
        command = [
            "py-spy", "record", "--nonblocking", "--format", "raw", "--rate", str(rate), "--output", str(raw), "--",
            sys.executable, __file__, "--child", "--rows", str(rows), "--epochs", str(epochs),
            "--threads", str(threads),
        ]
        done = subprocess.run(command, capture_output=True, text=True, cwd=root,
                              env={**os.environ, "PYTHONPATH": str(root)})
        result = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
        if done.returncode != 0 or not result:
            raise SystemExit(f"profiling failed:\n{done.stdout}\n{done.stderr}")
        counts: collections.Counter[str] = collections.Counter()
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames = stack.split(";")
            start = next((k for k, frame in enumerate(frames)
                          if frame.startswith("train_flow (") and "mfask/training.py" in frame), None)
            if start is None:
                continue
            inner = frames[start + 1:]
            part = next((name for name, markers in PARTS
                         if any(_has_frame(inner, f, p) for f, p in markers)), LOOP)
            counts[part] += int(count)
    fields = dict(item.split("=") for item in result[0].split()[1:])
    total = sum(counts.values())
    return {
        "rows": rows, "epochs": int(fields["epochs"]), "best": int(fields["best"]),
        "seconds": float(fields["seconds"]), "steps_per_epoch": int(fields["steps_per_epoch"]),
        "shares": {name: counts[name] / total for name in [*(p for p, _ in PARTS), LOOP]},
        "samples": total,
    }


def timed_fit(rows: int, epochs: int, threads: int, root: Path) -> float:
    """Seconds of one :func:`child` fit (no profiler) with the mfask of ``root``."""
    command = [sys.executable, __file__, "--child", "--rows", str(rows), "--epochs", str(epochs),
               "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)})
    result = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    if done.returncode != 0 or not result:
        raise SystemExit(f"timing failed:\n{done.stdout}\n{done.stderr}")
    return float(dict(item.split("=") for item in result[0].split()[1:])["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--epochs", type=int, nargs="+", default=[60, 12, 3],
                        help="fixed epochs per size for the profile")
    parser.add_argument("--early-stopping-sizes", type=int, nargs="*", default=[1000, 10_000])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--output", default=str(ROOT / "docs/benchmarks/training_profile.md"))
    parser.add_argument("--baseline", type=Path,
                        help="a checkout of an earlier mfask to profile the same way, side by side")
    parser.add_argument("--baseline-label", default="before")
    parser.add_argument("--timing-repeats", type=int, default=5,
                        help="with --baseline: fits of each, alternating, without the profiler")
    parser.add_argument("--timing-rows", type=int, default=1000)
    parser.add_argument("--timing-epochs", type=int, default=30)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.epochs = args.epochs[0]
        child(args)
        return

    load = os.getloadavg()
    profiles, baseline = [], []
    for rows, epochs in zip(args.sizes, args.epochs):
        print(f"profiling {rows} rows, {epochs} epochs", flush=True)
        profiles.append(profile(rows, epochs, args.threads, args.rate))
        if args.baseline is not None:
            baseline.append(profile(rows, epochs, args.threads, args.rate, args.baseline.resolve()))
    timings: dict[str, list[float]] = {"now": [], "before": []}
    if args.baseline is not None:
        for repeat in range(args.timing_repeats):
            print(f"timing {repeat + 1}/{args.timing_repeats}", flush=True)
            timings["before"].append(timed_fit(args.timing_rows, args.timing_epochs, args.threads,
                                               args.baseline.resolve()))
            timings["now"].append(timed_fit(args.timing_rows, args.timing_epochs, args.threads, ROOT))
    stopping = []
    for rows in args.early_stopping_sizes:
        print(f"early stopping at {rows} rows", flush=True)
        stopping.append(profile(rows, 0, args.threads, 50))

    import torch

    parts = [*(p for p, _ in PARTS), LOOP]
    lines = [
        "# Where training time goes", "",
        "Generated by `benchmarks/training_profile.py` (issue 13, item 1).", "",
        "Command (from the repository root):", "",
        "```", "python " + " ".join(shlex.quote(a) for a in sys.argv), "```", "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"- machine: {platform.platform()}, `nproc` = {os.cpu_count()}, torch threads = {args.threads}",
        f"- load average at the start (1, 5, 15 min): {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f} (a shared machine)",
        f"- Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}",
        "- task: SLCP (5 parameters, x of 8), mfask's default flow and training settings "
        "(batch 200, Adam 5e-4, clipping at 5, 10% validation), one network "
        "(`MultiFidelityPosterior(...).fit()`), a fixed number of epochs",
        f"- py-spy at {args.rate} samples/s; shares are of the samples inside `train_flow`", "",
        "How to read it: the forward and backward passes of the flow are the cost (about 90% "
        "of an epoch); the data pipeline and Python overhead per step are a few percent; the "
        "validation pass, run without autograd, a few percent. With `torch.optim.Adam` (the "
        "baseline, when profiled) the first optimiser of a process imported `torch._dynamo`, and "
        "clipping, stepping and zeroing ~100 parameter tensors one by one cost ~8% more; "
        "`mfask.flat_adam.FlatAdam` removes both. Early stopping's patience of 20 epochs is a "
        "third of a fit at 10^3 rows.", "",
        "## Share of an epoch's time", "",
        "| part | " + " | ".join(f"{p['rows']:,} rows" for p in profiles) + " |",
        "|---|" + "---|" * len(profiles),
    ]
    for part in parts:
        lines.append(f"| {part} | " + " | ".join(f"{100 * p['shares'][part]:.1f}%" for p in profiles) + " |")
    lines += [
        "| **seconds per epoch** | " + " | ".join(f"{p['seconds'] / p['epochs']:.3f}" for p in profiles) + " |",
        "| **ms per step** (all parts) | " + " | ".join(
            f"{1000 * p['seconds'] / (p['epochs'] * p['steps_per_epoch']):.2f}" for p in profiles) + " |",
        "| epochs profiled | " + " | ".join(str(p["epochs"]) for p in profiles) + " |",
        "| samples | " + " | ".join(str(p["samples"]) for p in profiles) + " |",
    ]
    if baseline:
        lines += ["", f"## {args.baseline_label} (`{args.baseline}`), the same way", "",
                  "| part | " + " | ".join(f"{p['rows']:,} rows" for p in baseline) + " |",
                  "|---|" + "---|" * len(baseline)]
        for part in parts:
            lines.append(f"| {part} | " + " | ".join(f"{100 * p['shares'][part]:.1f}%" for p in baseline) + " |")
        lines += [
            "| **seconds per epoch** | " + " | ".join(f"{p['seconds'] / p['epochs']:.3f}" for p in baseline) + " |",
            "", "Time of the whole fit, now against " + args.baseline_label + " (same data, epochs, threads; "
            "profiled one after the other, so load may differ):", "",
            "| rows | " + args.baseline_label + " (s) | now (s) | ratio |", "|---|---|---|---|",
        ]
        for now, before in zip(profiles, baseline):
            lines.append(f"| {now['rows']:,} | {before['seconds']:.2f} | {now['seconds']:.2f} | "
                         f"{now['seconds'] / before['seconds']:.2f} |")
        import statistics

        median_now, median_before = statistics.median(timings["now"]), statistics.median(timings["before"])
        ratios = [n / b for n, b in zip(timings["now"], timings["before"])]
        lines += [
            "", f"Without the profiler, {args.timing_repeats} fits each of {args.timing_rows:,} rows and "
            f"{args.timing_epochs} epochs, alternating {args.baseline_label} and now (each a fresh "
            "process: what a `mfask fit` or a worker pays): median "
            f"{median_before:.2f} s {args.baseline_label}, {median_now:.2f} s now, ratio of medians "
            f"**{median_now / median_before:.2f}** (pairwise ratios "
            + ", ".join(f"{r:.2f}" for r in ratios) + ").",
        ]
    lines += [
        "", "## Epochs after the best one (default early stopping: patience 20)", "",
        "| rows | epochs run | best epoch | epochs after the best | share of the fit | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for s in stopping:
        after = s["epochs"] - s["best"]
        lines.append(f"| {s['rows']:,} | {s['epochs']} | {s['best']} | {after} | "
                     f"{100 * after / s['epochs']:.0f}% | {s['seconds']:.1f} |")
    Path(args.output).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
