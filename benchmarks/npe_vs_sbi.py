"""Compare mfask's NPE with sbi's NPE: training time and C2ST on the same data.

For each task (2-D linear-Gaussian, 2-D Ornstein-Uhlenbeck), simulation budget
and seed, one data set is simulated and both libraries train a neural spline
flow of the same size on it:

* mfask: ``MultiFidelityPosterior(prior, ["high"], seed=seed)``, the data told
  with ``unasked="prior"``, then ``fit()`` (plain NPE);
* sbi: ``sbi.inference.NPE`` with ``posterior_nn("nsf", hidden_features=50,
  num_transforms=5, num_bins=10)`` and sbi's training defaults, which are
  mfask's (batch 200, Adam 5e-4, 10 % validation, patience 20, clip 5).

The training wall-clock of each (handing over the data plus training) is
timed, the two methods alternating which goes first. Each posterior is then
scored by C2ST (random forest, :func:`mfask.diagnostics.c2st`) of its samples
against exact reference samples at a few fixed observations.

A second part times single training steps (batch 200, ``d = 2`` and ``d = 5``)
of mfask before the optimisation (its ``estimator.py`` read from git at
``--before-rev``), of mfask now with torch's default Adam (the lean log-density
alone), of mfask now, and of sbi, alternating, and counts the tensor
operations one step runs (torch.profiler).

Both parts run with ``torch.set_num_threads(--threads)`` (default 1, to keep
the noise of a shared machine out of the comparison). Results go to
``docs/benchmarks/npe_vs_sbi.md`` and, as JSON, next to it.

Usage (from the repository root)::

    python benchmarks/npe_vs_sbi.py [--budgets 1000 5000] [--seeds 3]
        [--observations 3] [--num-samples 5000] [--step-repeats 15]
        [--before-rev 5e70ae2^] [--output docs/benchmarks/npe_vs_sbi.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shlex
import statistics
import subprocess
import sys
import time
import types
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mfask import MultiFidelityPosterior
from mfask.benchmarks.methods import _NoTracker, _sbi_prior
from mfask.benchmarks.tasks.base import Task
from mfask.benchmarks.tasks.linear_gaussian import LinearGaussian
from mfask.benchmarks.tasks.ou import OrnsteinUhlenbeck
from mfask.diagnostics import c2st
from mfask.estimator import ConditionalFlow, FlowConfig
from mfask.training import TrainingConfig, adam
from neuron_cost import machine_description  # benchmarks/ is on sys.path when run as a script

__all__ = ["RunResult", "simulate_data", "train_mfask", "train_sbi", "step_times", "main"]

FLOW = FlowConfig()  # hidden 50, 5 transforms, 10 bins: the sizes given to sbi below
TRAINING = TrainingConfig()
OBSERVATION_SEED = 2024  # the observations are the same for every budget and seed


def make_tasks() -> dict[str, Task]:
    """The tasks compared, by name."""
    return {"linear_gaussian": LinearGaussian(dim=2), "ou": OrnsteinUhlenbeck(dim=2)}


@dataclass
class RunResult:
    """One (task, budget, seed, method) run."""

    task: str
    budget: int
    seed: int
    method: str
    seconds: float
    epochs: int
    steps: int  # gradient steps
    c2st: list[float]  # one per observation

    @property
    def mean_c2st(self) -> float:
        return float(np.mean(self.c2st))


# ---------------------------------------------------------------- the runs
def simulate_data(task: Task, budget: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Prior draws ``theta (budget, d)`` and their high-fidelity outputs ``x``."""
    rng = np.random.default_rng([seed, budget, 7])
    theta = task.sample_prior(budget, rng)
    return theta, task.simulate(theta, task.fidelities[-1], rng)


def train_mfask(
    task: Task, theta: np.ndarray, x: np.ndarray, seed: int
) -> tuple[Callable[[np.ndarray, int], np.ndarray], float, int, int]:
    """Train mfask's NPE on the data. Returns a sampler ``(x_o, n) -> (n, d)``,
    the seconds for ``tell`` + ``fit``, the number of epochs and of gradient
    steps (every epoch uses all training rows, the last batch may be smaller)."""
    posterior = MultiFidelityPosterior(task.prior, ["high"], seed=seed, flow=FLOW, training=TRAINING)
    started = time.perf_counter()
    posterior.tell(theta, x, "high", unasked="prior")
    history = posterior.fit()["high"][0]
    seconds = time.perf_counter() - started
    steps = history.epochs * math.ceil(history.num_train / TRAINING.batch_size)
    return (lambda x_o, n: posterior.sample(n, x_o)), seconds, history.epochs, steps


def train_sbi(
    task: Task, theta: np.ndarray, x: np.ndarray, seed: int
) -> tuple[Callable[[np.ndarray, int], np.ndarray], float, int, int]:
    """Train sbi's NPE (same flow size, same training settings) on the data.
    Returns a sampler, the seconds for ``append_simulations`` + ``train``, the
    number of epochs and of gradient steps (sbi's loader drops the last
    incomplete batch of each epoch)."""
    from sbi.inference import NPE
    from sbi.neural_nets import posterior_nn

    torch.manual_seed(seed)
    builder = posterior_nn(
        "nsf",
        hidden_features=FLOW.hidden_features,
        num_transforms=FLOW.num_transforms,
        num_bins=FLOW.num_bins,
    )
    inference = NPE(prior=_sbi_prior(task), density_estimator=builder, tracker=_NoTracker(),
                    show_progress_bars=False)
    theta32 = torch.as_tensor(theta, dtype=torch.float32)
    x32 = torch.as_tensor(x, dtype=torch.float32)
    started = time.perf_counter()
    inference.append_simulations(theta32, x32)
    estimator = inference.train(
        training_batch_size=TRAINING.batch_size,
        learning_rate=TRAINING.learning_rate,
        validation_fraction=TRAINING.validation_fraction,
        stop_after_epochs=TRAINING.stop_after_epochs,
        clip_max_norm=TRAINING.clip_max_norm,
    )
    seconds = time.perf_counter() - started
    posterior = inference.build_posterior(estimator)

    def sample(x_o: np.ndarray, n: int) -> np.ndarray:
        condition = torch.as_tensor(x_o, dtype=torch.float32)
        return posterior.sample((n,), x=condition, show_progress_bars=False).double().numpy()

    epochs = int(inference.summary["epochs_trained"][-1])
    num_train = len(inference.train_indices)
    steps = epochs * max(1, num_train // TRAINING.batch_size)
    return sample, seconds, epochs, steps


def score(
    sample: Callable[[np.ndarray, int], np.ndarray],
    task: Task,
    observations: np.ndarray,
    references: list[np.ndarray],
) -> list[float]:
    """C2ST (random forest) of the posterior's samples against each reference."""
    scores = []
    for index, (x_o, reference) in enumerate(zip(observations, references)):
        torch.manual_seed(index)
        scores.append(c2st(reference, sample(x_o, reference.shape[0]), seed=index))
    return scores


def run_benchmark(
    budgets: list[int], seeds: list[int], num_observations: int, num_samples: int,
    log: Callable[[str], None],
) -> list[RunResult]:
    """Every (task, budget, seed) with both methods; see the module docstring."""
    results: list[RunResult] = []
    trainers = {"mfask": train_mfask, "sbi": train_sbi}
    for name, task in make_tasks().items():
        _, observations = task.observations(num_observations, seed=OBSERVATION_SEED)
        references = [
            task.reference_posterior(x_o, num_samples, seed=index)
            for index, x_o in enumerate(observations)
        ]
        for budget in budgets:
            for seed in seeds:
                theta, x = simulate_data(task, budget, seed)
                order = ["mfask", "sbi"] if seed % 2 == 0 else ["sbi", "mfask"]
                for method in order:
                    sample, seconds, epochs, steps = trainers[method](task, theta, x, seed)
                    scores = score(sample, task, observations, references)
                    results.append(RunResult(name, budget, seed, method, seconds, epochs, steps, scores))
                    log(f"{name} budget={budget} seed={seed} {method}: {seconds:.1f} s, "
                        f"{epochs} epochs, {steps} steps, C2ST {np.mean(scores):.3f}")
    return results


# -------------------------------------------------------------- step times
def load_old_estimator(revision: str) -> types.ModuleType:
    """``mfask/estimator.py`` as it was at ``revision``, as a module."""
    source = subprocess.run(
        ["git", "show", f"{revision}:mfask/estimator.py"],
        capture_output=True, text=True, check=True,
    ).stdout
    module = types.ModuleType("mfask_estimator_before")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{revision}:mfask/estimator.py", "exec"), module.__dict__)
    return module


def _training_step(
    log_prob: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    parameters: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    z: torch.Tensor,
    x: torch.Tensor,
) -> Callable[[int], None]:
    """One step of the training loop (``mfask.training.train_flow`` and sbi's
    alike): loss, backward, clip at 5, Adam; batch ``i`` of the data."""
    batch_size = TRAINING.batch_size
    num_batches = z.shape[0] // batch_size

    def step(i: int) -> None:
        rows = slice((i % num_batches) * batch_size, (i % num_batches + 1) * batch_size)
        optimizer.zero_grad(set_to_none=True)
        loss = -log_prob(z[rows], x[rows]).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, TRAINING.clip_max_norm)
        optimizer.step()

    return step


def step_variants(dim: int, old: types.ModuleType) -> dict[str, Callable[[int], None]]:
    """Training steps at ``d = dim`` (``x`` of ``d`` dimensions, linear-Gaussian
    data), by variant name."""
    from sbi.neural_nets import posterior_nn

    task = LinearGaussian(dim=dim)
    theta, x_np = simulate_data(task, 2000, 0)
    z = torch.as_tensor(theta, dtype=torch.float32)
    x = torch.as_tensor(x_np, dtype=torch.float32)
    variants: dict[str, Callable[[int], None]] = {}
    for name, flow_class, optimizer_factory in (
        ("mfask before", old.ConditionalFlow, lambda p: torch.optim.Adam(p, lr=TRAINING.learning_rate)),
        ("mfask lean log-prob, default Adam", ConditionalFlow,
         lambda p: torch.optim.Adam(p, lr=TRAINING.learning_rate)),
        ("mfask now", ConditionalFlow, lambda p: adam(p, TRAINING.learning_rate)),
    ):
        torch.manual_seed(0)
        flow = flow_class(dim, (dim,), FLOW)
        flow.set_standardization(z, x)
        flow.train()
        parameters = list(flow.parameters())
        variants[name] = _training_step(flow.log_prob, parameters, optimizer_factory(parameters), z, x)
    torch.manual_seed(0)
    net = posterior_nn("nsf", hidden_features=FLOW.hidden_features,
                       num_transforms=FLOW.num_transforms, num_bins=FLOW.num_bins)(z, x)
    net.train()
    parameters = list(net.parameters())
    variants["sbi"] = _training_step(
        lambda a, b: -net.loss(a, b), parameters,
        torch.optim.Adam(parameters, lr=TRAINING.learning_rate), z, x,
    )
    return variants


def count_operations(step: Callable[[int], None]) -> int:
    """Number of aten operator calls (nested ones included) in one step."""
    from torch.profiler import ProfilerActivity, profile

    step(0)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step(1)
    return sum(event.count for event in profiler.key_averages() if event.key.startswith("aten::"))


def step_times(dims: list[int], repeats: int, steps_per_repeat: int, revision: str,
               log: Callable[[str], None]) -> dict[int, dict[str, dict[str, Any]]]:
    """Per ``d`` and variant: ``ms`` (each repeat's mean ms per step), ``median``
    and ``operations`` per step. Variants alternate within each repeat."""
    old = load_old_estimator(revision)
    results: dict[int, dict[str, dict[str, Any]]] = {}
    for dim in dims:
        variants = step_variants(dim, old)
        timings: dict[str, list[float]] = {name: [] for name in variants}
        for step in variants.values():  # warm-up
            for i in range(5):
                step(i)
        for repeat in range(repeats):
            names = list(variants) if repeat % 2 == 0 else list(reversed(variants))
            for name in names:
                started = time.perf_counter()
                for i in range(steps_per_repeat):
                    variants[name](i)
                timings[name].append(1e3 * (time.perf_counter() - started) / steps_per_repeat)
        results[dim] = {
            name: {"ms": timings[name], "median": statistics.median(timings[name]),
                   "operations": count_operations(variants[name])}
            for name in variants
        }
        log(f"step times d={dim}: " + ", ".join(
            f"{name} {values['median']:.1f} ms" for name, values in results[dim].items()))
    return results


# ----------------------------------------------------------------- report
def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def summarise(results: list[RunResult]) -> list[dict[str, Any]]:
    """Per (task, budget): medians, paired time ratios and C2ST mean and std."""
    rows = []
    keys = sorted({(r.task, r.budget) for r in results}, key=lambda k: (k[0], k[1]))
    for task, budget in keys:
        runs = {m: {r.seed: r for r in results if (r.task, r.budget, r.method) == (task, budget, m)}
                for m in ("mfask", "sbi")}
        seeds = sorted(set(runs["mfask"]) & set(runs["sbi"]))
        ratios = [runs["mfask"][s].seconds / runs["sbi"][s].seconds for s in seeds]
        per_step = {m: [runs[m][s].seconds / runs[m][s].steps for s in seeds] for m in runs}
        row: dict[str, Any] = {
            "task": task, "budget": budget, "seeds": len(seeds),
            "ratio": _median(ratios), "ratios": ratios,
            "step_ratio": _median([a / b for a, b in zip(per_step["mfask"], per_step["sbi"])]),
        }
        for method in runs:
            chosen = [runs[method][s] for s in seeds]
            scores = [r.mean_c2st for r in chosen]
            row[method] = {
                "seconds": _median([r.seconds for r in chosen]),
                "epochs": _median([r.epochs for r in chosen]),
                "steps": _median([r.steps for r in chosen]),
                "ms_per_step": 1e3 * _median(per_step[method]),
                "c2st_mean": float(np.mean(scores)),
                "c2st_std": float(np.std(scores, ddof=1)) if len(scores) > 1 else math.nan,
            }
        rows.append(row)
    return rows


def render(args: argparse.Namespace, command: str, results: list[RunResult],
           steps: dict[int, dict[str, dict[str, Any]]], started: datetime.datetime,
           elapsed: float) -> str:
    """The Markdown page."""
    summary = summarise(results)
    lines = [
        "# mfask NPE vs sbi NPE: training time and accuracy on the same data",
        "",
        "Generated by `benchmarks/npe_vs_sbi.py` (issue #2). Command, from the repository root:",
        "",
        "```",
        command,
        "```",
        "",
        f"Run started {started:%Y-%m-%d %H:%M} UTC and took {elapsed / 60:.0f} min. "
        f"torch {torch.__version__} with `torch.set_num_threads({args.threads})` for "
        f"both libraries (the machine is shared and busy; one thread each keeps the "
        f"comparison fair), sbi {_version('sbi')}, normflows {_version('normflows')}.",
        "",
        "## Setup",
        "",
        "Per task, budget and seed one data set of prior draws and high-fidelity "
        "simulations; both libraries train on exactly these rows.",
        "",
        "* **mfask**: `MultiFidelityPosterior(prior, [\"high\"], seed=seed)`, "
        "`tell(theta, x, \"high\", unasked=\"prior\")`, `fit()`: plain NPE with the "
        "default flow (5 rational-quadratic coupling transforms, 10 bins, "
        "conditioners of 2 residual blocks of 50 units) in the prior's unbounded space.",
        "* **sbi**: `NPE(prior, posterior_nn(\"nsf\", hidden_features=50, num_transforms=5, "
        "num_bins=10))`, `append_simulations`, `train(...)` with the same settings "
        "(batch 200, Adam 5e-4, 10 % validation, stop after 20 epochs without "
        "improvement, gradient norm clipped at 5); sbi's default z-scoring.",
        "* **Time**: wall-clock of handing over the data and training (`tell` + `fit`; "
        "`append_simulations` + `train`); the two alternate which runs first. "
        "The ratio is mfask/sbi per seed (same data), then the median over seeds.",
        f"* **Accuracy**: C2ST (random forest, 5 folds, "
        f"`mfask.diagnostics.c2st`) of {args.num_samples} posterior samples against "
        f"{args.num_samples} exact reference samples, at {args.observations} fixed "
        f"observations per task (drawn with seed {OBSERVATION_SEED}); a run's score "
        "is the mean over the observations; the table gives mean +- std over seeds. "
        "0.5 is indistinguishable from the reference.",
        "",
        "## Results",
        "",
        "| task | simulations | seeds | mfask s (median) | sbi s (median) | time ratio mfask/sbi "
        "(median of paired) | epochs mfask / sbi (median) | gradient steps mfask / sbi (median) | "
        "ms per step mfask / sbi (median) | per-step ratio (median of paired) | C2ST mfask | C2ST sbi |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        mf, sb = row["mfask"], row["sbi"]
        lines.append(
            f"| {row['task']} | {row['budget']} | {row['seeds']} | {mf['seconds']:.1f} | "
            f"{sb['seconds']:.1f} | **{row['ratio']:.2f}** | {mf['epochs']:.0f} / {sb['epochs']:.0f} | "
            f"{mf['steps']:.0f} / {sb['steps']:.0f} | {mf['ms_per_step']:.1f} / {sb['ms_per_step']:.1f} | "
            f"{row['step_ratio']:.2f} | {mf['c2st_mean']:.3f} +- {mf['c2st_std']:.3f} | "
            f"{sb['c2st_mean']:.3f} +- {sb['c2st_std']:.3f} |"
        )
    lines += [
        "",
        "Every run (seconds, epochs, gradient steps, C2ST per observation):",
        "",
        "| task | simulations | seed | method | seconds | epochs | steps | C2ST per observation |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: (r.task, r.budget, r.seed, r.method)):
        lines.append(f"| {r.task} | {r.budget} | {r.seed} | {r.method} | {r.seconds:.1f} | {r.epochs} | {r.steps} | "
                     + ", ".join(f"{s:.3f}" for s in r.c2st) + " |")
    lines += [
        "",
        "## Training step: before and after the optimisation",
        "",
        f"One training step (batch {TRAINING.batch_size}, loss, backward, clip, Adam) "
        f"on linear-Gaussian data with `d` parameters and `d` data dimensions; "
        f"{args.step_repeats} repeats of {args.steps_per_repeat} steps, the variants "
        f"alternating within each repeat; median over repeats of the mean ms per step. "
        f"\"before\" is `mfask/estimator.py` at `{args.before_rev}` with torch's default "
        "Adam (as `train_flow` used then). Operations are aten operator calls per step "
        "(torch.profiler, nested calls included).",
        "",
        "| d | variant | median ms per step | vs mfask before | vs sbi | aten calls per step |",
        "|---|---|---|---|---|---|",
    ]
    for dim, variants in steps.items():
        before, sbi_ms = variants["mfask before"]["median"], variants["sbi"]["median"]
        for name, values in variants.items():
            lines.append(f"| {dim} | {name} | {values['median']:.1f} | {values['median'] / before:.2f} | "
                         f"{values['median'] / sbi_ms:.2f} | {values['operations']} |")
    lines += [
        "",
        "## Machine",
        "",
        "```",
        machine_description(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _version(package: str) -> str:
    try:
        return __import__(package).__version__
    except ImportError:
        return "not installed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. n-1")
    parser.add_argument("--observations", type=int, default=3)
    parser.add_argument("--num-samples", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--step-dims", type=int, nargs="*", default=[2, 5])
    parser.add_argument("--step-repeats", type=int, default=15)
    parser.add_argument("--steps-per-repeat", type=int, default=10)
    parser.add_argument("--before-rev", default="5e70ae2^",
                        help="git revision whose mfask/estimator.py is 'before'")
    parser.add_argument("--skip-training", action="store_true", help="step times only (no doc written)")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks/npe_vs_sbi.md"))
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.observations < 1 or args.num_samples < 10 or args.step_repeats < 1:
        parser.error("--seeds, --observations, --step-repeats must be >= 1 and --num-samples >= 10")

    torch.set_num_threads(args.threads)
    for module in ("sbi", "nflows"):  # notes on priors, deprecated torch calls
        warnings.filterwarnings("ignore", module=module)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    started = datetime.datetime.now(datetime.timezone.utc)
    clock = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - clock:7.0f} s] {message}", flush=True)

    # The first optimizer a process builds imports torch._dynamo (seconds);
    # pay that before anything is timed, so neither library is charged for it.
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    steps = step_times(args.step_dims, args.step_repeats, args.steps_per_repeat, args.before_rev, log)
    if args.skip_training:
        return 0
    results = run_benchmark(args.budgets, list(range(args.seeds)), args.observations, args.num_samples, log)
    elapsed = time.perf_counter() - clock
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(args, command, results, steps, started, elapsed))
    args.output.with_suffix(".json").write_text(json.dumps(
        {"command": command, "started": started.isoformat(), "runs": [asdict(r) for r in results],
         "summary": summarise(results), "steps": {str(d): v for d, v in steps.items()}},
        indent=1,
    ))
    log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
