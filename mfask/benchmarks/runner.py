"""Run benchmark jobs in parallel, score them, append each result to a file.

A *job* is one method on one task at one budget and seed: it draws the task's
observations (the same for every job with the same ``observation_seed``),
builds the method's posterior (:mod:`mfask.benchmarks.methods`), and scores it
at each observation with :mod:`mfask.diagnostics`:

* ``c2st``: classifier two-sample test against reference posterior samples
  (tasks with a reference; 0.5 is perfect);
* ``nltp``: ``-log q(theta_true | x_o)`` (methods with a density);
* ``nrmse``: RMSE of posterior samples around ``theta_true`` over the prior
  scale (width of a bounded prior, else its standard deviation).

Each metric is stored per observation; the report pools them over seeds and
observations (as the paper does). A job also records its inference time
(simulation, training and posterior sampling, not scoring), its peak memory,
and the simulator runs it made.

:func:`run_benchmark` runs jobs with joblib (processes), appends each finished
job as one JSON line (:mod:`mfask.benchmarks.results`) as soon as it returns,
skips jobs whose key is already in the file (resume after an interruption),
and prints ``done/total, rate, ETA`` lines on standard error.

Peak memory: on Linux the worker resets its peak resident set size
(``/proc/self/clear_refs``) when a job starts and reads ``VmHWM`` after
inference, so ``peak_rss_mb`` is the job's own peak (it includes the Python
process with torch loaded, a few hundred MB). Elsewhere it falls back to
``resource.getrusage`` (the worker process's lifetime peak;
``peak_rss_scope`` says which).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence, TextIO

import numpy as np

from mfask.benchmarks.memory import peak_memory_mb, reset_peak_memory
from mfask.benchmarks.methods import Budget, MethodConfig, PosteriorEstimate, get_method, pretrained_state
from mfask.benchmarks.pretraining import PretrainingCache
from mfask.benchmarks.results import append_row, completed_keys
from mfask.benchmarks.tasks import Task, get_task
from mfask.diagnostics import c2st, nltp, nrmse
from mfask.progress import format_duration

__all__ = ["Job", "RunSummary", "plan_jobs", "run_job", "run_benchmark", "score_estimate",
           "default_pretraining_cache"]


@dataclass(frozen=True)
class Job:
    """One benchmark run: ``method`` on ``task`` at budget ``(low, high)``.

    Attributes:
        task: task name (:func:`~mfask.benchmarks.tasks.get_task`).
        method: method name (:data:`~mfask.benchmarks.methods.METHODS`).
        low, high: the budget (``low`` is 0 for single-fidelity methods).
        seed: seeds the method (its asks, simulations and training).
        num_observations: observations ``m`` scored.
        observation_seed: seeds the observations (shared by all jobs).
        num_samples: posterior (and reference) samples per observation.
        config: the methods' settings.
    """

    task: str
    method: str
    low: int
    high: int
    seed: int
    num_observations: int = 10
    observation_seed: int = 0
    num_samples: int = 1000
    config: MethodConfig = field(default_factory=MethodConfig)

    def identity(self) -> dict[str, Any]:
        """The JSON-compatible fields that define the job."""
        return {
            "task": self.task, "method": self.method, "low": self.low, "high": self.high,
            "seed": self.seed, "num_observations": self.num_observations,
            "observation_seed": self.observation_seed, "num_samples": self.num_samples,
            "config": self.config.to_dict(),
        }

    @property
    def key(self) -> str:
        """A readable unique key; the settings enter through a short hash."""
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:10]
        return (f"{self.task}/{self.method}/low={self.low}/high={self.high}/seed={self.seed}"
                f"/obs={self.num_observations}@{self.observation_seed}/{digest}")

    def describe(self) -> str:
        """Short label for progress lines."""
        low = f" low={self.low}" if self.low else ""
        return f"{self.task} {self.method}{low} high={self.high} seed={self.seed}"


def plan_jobs(
    tasks: Sequence[str],
    methods: Sequence[str],
    lows: Sequence[int],
    highs: Sequence[int],
    seeds: Sequence[int],
    *,
    num_observations: int = 10,
    observation_seed: int = 0,
    num_samples: int = 1000,
    config: MethodConfig = MethodConfig(),
) -> list[Job]:
    """The job grid: every task x method x LF budget x HF budget x seed.

    Methods that do not use the low fidelity get one job per HF budget and
    seed, with ``low = 0``; methods without a transferred level record
    ``transfer_guard=False`` (it cannot act there), so their jobs are the same
    whichever guard setting the MF methods use. Raises :class:`InvalidInputError` for unknown
    tasks or methods (before anything runs).
    """
    for task in tasks:
        get_task(task)
    entries = {name: get_method(name) for name in methods}
    jobs: list[Job] = []
    for task in tasks:
        for method, entry in entries.items():
            for low in (sorted(set(lows)) if entry.uses_low else [0]):
                for high in sorted(set(highs)):
                    for seed in seeds:
                        jobs.append(Job(task, method, int(low), int(high), int(seed),
                                        num_observations, observation_seed, num_samples,
                                        config if entry.pretrains else replace(config, transfer_guard=False)))
    return jobs


# ---------------------------------------------------------------- scoring
def score_estimate(
    task: Task,
    estimate: PosteriorEstimate,
    theta_true: np.ndarray,
    x_o: np.ndarray,
    num_samples: int,
    samples: np.ndarray | None = None,
) -> dict[str, list[float] | None]:
    """Per-observation metrics of ``estimate``: ``{"c2st", "nltp", "nrmse"}``,
    each a list of ``m`` floats, or ``None`` when it does not apply (no
    reference posterior, no density).

    Arguments:
        theta_true: ``(m, d)``; x_o: ``(m, *x_shape)``.
        samples: ``(m, num_samples, d)`` posterior samples if already drawn.
    """
    if samples is None:
        samples = estimate.sample(num_samples)
    scale = task.prior.scale.numpy()
    metrics: dict[str, list[float] | None] = {
        "nrmse": [nrmse(samples[i], theta_true[i], scale) for i in range(len(x_o))],
    }
    log_prob = estimate.log_prob(theta_true)
    metrics["nltp"] = None if log_prob is None else [nltp(value) for value in log_prob]
    try:
        references = [task.reference_posterior(x_o[i], num_samples, seed=i) for i in range(len(x_o))]
    except NotImplementedError:
        metrics["c2st"] = None
    else:
        metrics["c2st"] = [c2st(references[i], samples[i], seed=i) for i in range(len(x_o))]
    return metrics


# ---------------------------------------------------------------- one job
def run_job(job: Job, threads: int | None = 1,
            pretraining_cache: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Run and score one job; returns its result row (never raises for a
    failure of the method: the row then has ``status="error"``).

    ``threads`` caps torch's intra-op threads for the job (restored after);
    ``None`` leaves them alone. One thread per job is fastest when jobs run
    in parallel on a busy machine. ``pretraining_cache`` is the directory of
    the shared LF pre-trainings (:mod:`mfask.benchmarks.pretraining`); without
    it each MF job pre-trains for itself.

    Cost fields: ``inference_seconds`` is this job's own wall clock
    (simulate, train, sample; not scoring); ``method_seconds`` adds the
    recorded cost of a reused pre-training, i.e. what the method costs on its
    own; ``peak_rss_mb`` likewise covers the pre-training's peak.
    ``inference_cpu_seconds`` is the CPU time of this process over the same
    span as ``inference_seconds`` (all its threads): unlike the wall clock it
    does not grow when other processes share the cores, so rows measured
    under different loads stay comparable. Each job runs alone in its
    process (or worker), so the reading is the job's own.
    """
    import torch

    import mfask

    row: dict[str, Any] = {"key": job.key, **job.identity(), "mfask_version": mfask.__version__}
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    started = time.perf_counter()
    started_cpu = time.process_time()
    try:
        task = get_task(job.task)
        theta_true, x_o = task.observations(job.num_observations, seed=job.observation_seed)
        method = get_method(job.method)
        scope = reset_peak_memory()
        cache = None if pretraining_cache is None else PretrainingCache(pretraining_cache)
        estimate = method.run(task, x_o, Budget(job.low, job.high), job.seed, job.config, cache=cache)
        samples = estimate.sample(job.num_samples)
        inference_seconds = time.perf_counter() - started
        inference_cpu_seconds = time.process_time() - started_cpu
        peak = peak_memory_mb(scope)
        method_seconds = inference_seconds
        pretraining = estimate.info.get("pretraining")
        if pretraining is not None and pretraining["reused"]:
            method_seconds += pretraining["seconds"]
            if pretraining["peak_rss_mb"] is not None:
                peak = max(peak, pretraining["peak_rss_mb"])
        metrics = score_estimate(task, estimate, theta_true, x_o, job.num_samples, samples)
        row.update(
            status="ok",
            metrics=metrics,
            simulations=estimate.simulations,
            info=estimate.info,
            inference_seconds=inference_seconds,
            inference_cpu_seconds=inference_cpu_seconds,
            method_seconds=method_seconds,
            scoring_seconds=time.perf_counter() - started - inference_seconds,
            peak_rss_mb=peak,
            peak_rss_scope=scope,
        )
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:  # recorded, and retried on the next run
        row.update(status="error", error=f"{type(error).__name__}: {error}",
                   traceback=traceback.format_exc(limit=20))
    finally:
        torch.set_num_threads(previous_threads)
    row.update(total_seconds=time.perf_counter() - started, threads=threads,
               finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return row


# ---------------------------------------------------------------- progress
class _Progress:
    """``[benchmarks] done/total`` lines with rate and ETA on a stream."""

    def __init__(self, total: int, skipped: int, stream: TextIO | None) -> None:
        self.total, self.done, self.stream = total, skipped, stream
        self.started = time.monotonic()
        self.new = 0
        if stream is not None and skipped:
            print(f"[benchmarks] {skipped}/{total} jobs already in the results file; skipping them",
                  file=stream, flush=True)

    def update(self, row: dict[str, Any], label: str) -> None:
        self.done += 1
        self.new += 1
        if self.stream is None:
            return
        elapsed = time.monotonic() - self.started
        rate = self.new / elapsed if elapsed > 0 else float("inf")
        remaining = self.total - self.done
        eta = format_duration(remaining / rate) if rate > 0 else "?"
        if row["status"] == "ok":
            values = [f"{name} {np.mean(v):.3f}" for name, v in row["metrics"].items() if v is not None]
            outcome = f"{row['inference_seconds']:.1f}s, " + ", ".join(values)
        else:
            outcome = f"FAILED ({row['error']})"
        print(f"[benchmarks] {self.done}/{self.total} done, {60 * rate:.2f} jobs/min, "
              f"ETA {eta} | {label}: {outcome}", file=self.stream, flush=True)


# ---------------------------------------------------------------- many jobs
@dataclass(frozen=True)
class RunSummary:
    """What :func:`run_benchmark` did.

    Attributes:
        total: jobs planned.
        skipped: jobs already done in the results file.
        succeeded, failed: jobs run now, by outcome.
        seconds: wall-clock time of the run.
    """

    total: int
    skipped: int
    succeeded: int
    failed: int
    seconds: float


def _pretrain(task: str, low: int, seed: int, config: MethodConfig, directory: str,
              threads: int | None) -> tuple[str, float, bool]:
    """Build one shared LF pre-training (worker side); returns a label, its
    seconds and whether it already existed."""
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        _, record = pretrained_state(get_task(task), low, seed, config, PretrainingCache(directory))
    finally:
        torch.set_num_threads(previous)
    return f"{task} pre-training low={low} seed={seed}", record.seconds, record.reused


def default_pretraining_cache(output: str | os.PathLike[str]) -> str:
    """The pre-training cache next to a results file: ``<output>.pretrained/``."""
    return f"{os.fspath(output)}.pretrained"


def run_benchmark(
    jobs: Iterable[Job],
    output: str | os.PathLike[str],
    *,
    n_jobs: int = 1,
    threads_per_job: int | None = 1,
    progress: TextIO | None = sys.stderr,
    pretraining_cache: str | os.PathLike[str] | None = "next-to-output",
) -> RunSummary:
    """Run the jobs not yet done in ``output``; append each result as it finishes.

    First builds, in parallel, the LF pre-trainings the pending MF jobs
    share (kept in ``pretraining_cache``, by default
    :func:`default_pretraining_cache`; ``None`` makes every job pre-train
    for itself), then runs the jobs.

    Arguments:
        jobs: from :func:`plan_jobs` (duplicates are run once).
        output: the JSON Lines results file (created if missing).
        n_jobs: joblib worker processes (``1`` runs in this process, ``-1``
            uses every core).
        threads_per_job: torch threads per job (:func:`run_job`).
        progress: stream for progress lines; ``None`` for silence.
        pretraining_cache: directory of shared LF pre-trainings.
    """
    from joblib import Parallel, delayed

    if pretraining_cache == "next-to-output":
        pretraining_cache = default_pretraining_cache(output)
    unique = list({job.key: job for job in jobs}.values())
    done = completed_keys(output)
    pending = [job for job in unique if job.key not in done]
    started = time.monotonic()
    if pretraining_cache is not None:
        needed = {(job.task, job.low, job.seed, job.config) for job in pending
                  if get_method(job.method).pretrains}
        if needed:
            parallel = Parallel(n_jobs=n_jobs, return_as="generator_unordered")
            directory = os.fspath(pretraining_cache)
            for count, (label, seconds, reused) in enumerate(parallel(
                    delayed(_pretrain)(task, low, seed, config, directory, threads_per_job)
                    for task, low, seed, config in sorted(needed, key=lambda k: (k[0], -k[1], k[2]))), 1):
                if progress is not None:
                    state = "already built" if reused else f"{seconds:.1f}s"
                    print(f"[benchmarks] pre-training {count}/{len(needed)} | {label}: {state}",
                          file=progress, flush=True)
    tracker = _Progress(len(unique), len(unique) - len(pending), progress)
    counts = {"ok": 0, "error": 0}
    if pending:
        labels = {job.key: job.describe() for job in pending}
        parallel = Parallel(n_jobs=n_jobs, return_as="generator_unordered")
        for row in parallel(delayed(run_job)(job, threads_per_job, pretraining_cache) for job in pending):
            append_row(output, row)
            counts[row["status"]] += 1
            tracker.update(row, labels[row["key"]])
    return RunSummary(len(unique), len(unique) - len(pending), counts["ok"], counts["error"],
                      time.monotonic() - started)
