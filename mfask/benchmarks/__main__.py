"""Command line of the benchmark runner.

    python -m mfask.benchmarks --task ou --methods npe mf-npe --low 1000 \\
        --high 50 100 --seeds 0 1 --observations 3 --output results/ou.jsonl

runs every (task, method, LF budget, HF budget, seed) job that is not yet in
the results file, in parallel (``--n-jobs``), then writes the markdown tables
and plots to ``--report-dir``. ``--preset quick`` is a tiny end-to-end run
(CI); ``--preset paper`` the paper's OU grid. Explicit options override the
preset's values.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from mfask.benchmarks.methods import METHODS, MethodConfig
from mfask.benchmarks.report import write_report
from mfask.benchmarks.runner import default_pretraining_cache, plan_jobs, run_benchmark
from mfask.benchmarks.tasks import TASK_NAMES
from mfask.device import resolve_device
from mfask.estimator import FLOW_LAYOUTS, FlowConfig
from mfask.parameter_space import PARAMETER_SPACES
from mfask.training import TrainingConfig

__all__ = ["PRESETS", "DEFAULTS", "build_parser", "main"]

#: values used when neither the command line nor a preset sets them
DEFAULTS: dict[str, Any] = {
    "task": ["ou"], "methods": ["npe", "mf-npe"], "low": [1000], "high": [50, 100],
    "seeds": [0], "observations": 10, "observation_seed": 0, "num_samples": 1000,
    "output": "results/benchmarks.jsonl", "n_jobs": 1, "threads_per_job": 1,
    "rounds": MethodConfig.num_rounds, "ensemble_size": MethodConfig.ensemble_size,
    "abc_quantile": MethodConfig.abc_quantile, "parameter_space": MethodConfig.parameter_space,
    "flow_layout": FlowConfig.layout, "transfer_guard": MethodConfig.transfer_guard,
    "standardization": "linear" if FlowConfig.conditional_standardization else "marginal",
    "hidden_features": FlowConfig.hidden_features, "num_transforms": FlowConfig.num_transforms,
    "max_epochs": TrainingConfig.max_epochs, "report_dir": "docs/benchmarks/results",
    "device": MethodConfig.device,
}

#: named sets of values; ``quick`` checks the pipeline, not the science
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "task": ["ou"], "methods": ["npe", "mf-npe", "tsnpe", "mf-tsnpe", "a-mf-tsnpe", "mf-abc"],
        "low": [200], "high": [50], "seeds": [0], "observations": 1, "num_samples": 200,
        "n_jobs": 2, "hidden_features": 16, "num_transforms": 2, "max_epochs": 20,
        "rounds": 2, "ensemble_size": 2,
        "output": "results/quick.jsonl", "report_dir": "results/quick-report",
    },
    "paper": {
        "task": ["ou"], "methods": ["npe", "mf-npe", "tsnpe", "mf-tsnpe", "a-mf-tsnpe", "mf-abc"],
        "low": [1000, 10_000, 100_000], "high": [50, 100, 1000, 10_000],
        "seeds": list(range(10)), "observations": 10, "num_samples": 1000,
        "output": "results/ou-paper.jsonl",
    },
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every option defaults to ``None``: unset)."""
    parser = argparse.ArgumentParser(
        prog="python -m mfask.benchmarks",
        description="Run mfask benchmark jobs (resumable), then write tables and plots.",
    )
    add = parser.add_argument
    add("--preset", choices=sorted(PRESETS), help="a named set of defaults")
    add("--task", nargs="+", choices=TASK_NAMES, help="task name(s)")
    add("--methods", nargs="+", choices=sorted(METHODS), help="method name(s)")
    add("--low", nargs="+", type=int, help="low-fidelity budget(s) (multi-fidelity methods)")
    add("--high", nargs="+", type=int, help="high-fidelity budget(s)")
    add("--seeds", nargs="+", type=int, help="method seeds (one job each)")
    add("--observations", type=int, help="observations scored per job")
    add("--observation-seed", type=int, help="seed of the observations (shared by all jobs)")
    add("--num-samples", type=int, help="posterior and reference samples per observation")
    add("--output", help="results file (JSON Lines); finished jobs in it are skipped")
    add("--n-jobs", type=int, help="parallel worker processes (-1: all cores)")
    add("--threads-per-job", type=int, help="torch threads per job")
    add("--rounds", type=int, help="rounds of the sequential methods")
    add("--ensemble-size", type=int, help="acquisition ensemble size (a-mf-tsnpe)")
    add("--abc-quantile", type=float, help="MF-ABC acceptance quantile")
    add("--parameter-space", choices=PARAMETER_SPACES,
        help=f"space the neural methods' flows learn in (default: {MethodConfig.parameter_space})")
    add("--transfer-guard", choices=("on", "off"), type=str,
        help="MF methods choose between the fine-tuned and an HF-only network "
        f"(MultiFidelityPosterior(transfer_guard=...); default: {'on' if MethodConfig.transfer_guard else 'off'})")
    add("--flow-layout", choices=FLOW_LAYOUTS,
        help=f"layout of the flow's stack (default: {FlowConfig.layout})")
    add("--standardization", choices=("marginal", "linear"),
        help="how the flows standardise theta: by its marginal statistics or by a linear "
        f"regression on x (FlowConfig.conditional_standardization; default: {DEFAULTS['standardization']})")
    add("--hidden-features", type=int, help="flow width")
    add("--num-transforms", type=int, help="flow depth")
    add("--max-epochs", type=int, help="training epochs cap")
    add("--device", help="where the neural methods train: cpu (default), cuda, cuda:N, mps or auto "
        "(part of a job's identity)")
    add("--pretraining-cache", help="directory of shared LF pre-trainings "
        "(default: <output>.pretrained)")
    add("--no-pretraining-cache", action="store_true",
        help="every MF job pre-trains for itself (nothing shared or kept)")
    add("--report-dir", help="where the markdown tables and plots go")
    add("--no-report", action="store_true", help="do not write the report")
    add("--quiet", action="store_true", help="no progress lines")
    return parser


def resolve(args: argparse.Namespace) -> dict[str, Any]:
    """Command line over preset over :data:`DEFAULTS`."""
    values = dict(DEFAULTS)
    if args.preset:
        values.update(PRESETS[args.preset])
    values.update({k: v for k, v in vars(args).items() if v is not None and k in DEFAULTS})
    return values


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark described by ``argv``; returns the exit code
    (1 if any job failed)."""
    args = build_parser().parse_args(argv)
    v = resolve(args)
    config = MethodConfig(
        flow=FlowConfig(hidden_features=v["hidden_features"], num_transforms=v["num_transforms"],
                        layout=v["flow_layout"],
                        conditional_standardization=v["standardization"] == "linear"),
        training=TrainingConfig(max_epochs=v["max_epochs"]),
        num_rounds=v["rounds"],
        ensemble_size=v["ensemble_size"],
        abc_quantile=v["abc_quantile"],
        parameter_space=v["parameter_space"],
        transfer_guard=v["transfer_guard"] in (True, "on"),
        device=str(resolve_device(v["device"])),  # "auto" recorded as the device it chose
    )
    jobs = plan_jobs(
        v["task"], v["methods"], v["low"], v["high"], v["seeds"],
        num_observations=v["observations"], observation_seed=v["observation_seed"],
        num_samples=v["num_samples"], config=config,
    )
    progress = None if args.quiet else sys.stderr
    try:
        cache = (None if args.no_pretraining_cache
                 else args.pretraining_cache or default_pretraining_cache(v["output"]))
        summary = run_benchmark(jobs, v["output"], n_jobs=v["n_jobs"],
                                threads_per_job=v["threads_per_job"], progress=progress,
                                pretraining_cache=cache)
    except KeyboardInterrupt:
        print(f"\n[benchmarks] interrupted; finished jobs are in {v['output']}: run the same "
              "command again to resume", file=sys.stderr, flush=True)
        return 130
    if progress is not None:
        print(f"[benchmarks] {summary.succeeded} succeeded, {summary.failed} failed, "
              f"{summary.skipped} skipped, in {summary.seconds:.0f}s; results in {v['output']}",
              file=progress, flush=True)
    if not args.no_report:
        for path in write_report(v["output"], v["report_dir"]):
            if progress is not None:
                print(f"[benchmarks] wrote {path}", file=progress, flush=True)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
