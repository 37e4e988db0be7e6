"""Compute needed by NPE and MF-NPE to reach a fixed quality on the neuron task.

Issue #6, part 3. For each seed, NPE is trained on several HF budgets and
MF-NPE (pre-trained once on a fixed LF budget, then fine-tuned) on several HF
budgets, all through ask/tell with the helpers of
``examples/neuron_case_study.py``. For every run it records

* quality: NLTP, the mean of ``-log q(theta_true | x)`` over a fixed set of
  held-out HF test pairs ``(theta_true, x)`` (the same pairs for every run);
* compute: LF + HF simulation seconds + training seconds. Training seconds are
  measured around each ``post.fit()``. Simulation seconds are *costed*: the
  number of simulations times the median seconds per simulation from timing
  runs on batches of 200 prior draws (``benchmarks/neuron_cost.py``'s
  ``measure``) at the start and at the end of the run, so that the machine's
  changing load does not favour one method; the in-run simulator seconds are
  recorded too.

Why NLTP: it needs no reference posterior (for this simulator there is no
exact one, and a "reference from a long run" would itself be an NPE with its
own error), it scores the density at the true parameter (a proper scoring
rule), and averaging over many test pairs measures the amortized posterior
over the prior, as NPE and MF-NPE are trained.

Target quality (fixed before looking at any result): per seed, the NLTP that
NPE reaches at its largest HF budget. The compute a method needs is found on
its curve of (compute, NLTP) over budgets: the first budget whose NLTP is at
or below the target, linearly interpolated in log-compute from the budget
before. The reported ratio is NPE compute / MF-NPE compute, per seed, with the
median and range over seeds; a second ratio uses the seed-averaged curves and
the seed-averaged target.

Usage::

    python benchmarks/neuron_compute.py [--seeds 0 1 2] [--npe-budgets 50 100 200 400 800]
        [--mf-low 2000] [--mf-budgets 25 50 100 200 400] [--test-pairs 50]
        [--output docs/benchmarks/neuron_compute.md]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from neuron_case_study import ComputeLedger, fit_timed, simulate_and_tell  # noqa: E402
from neuron_cost import measure  # noqa: E402
from mfask.benchmarks.machine import describe_machine  # noqa: E402

from mfask import MultiFidelityPosterior  # noqa: E402
from mfask.benchmarks.tasks.neuron import NeuronTask  # noqa: E402
from mfask.diagnostics import nltp  # noqa: E402

__all__ = ["RunRecord", "run_npe", "run_mfnpe", "cost_simulations", "compute_to_reach", "ratios", "main"]

PAPER_RATIO = 4.44


@dataclass
class RunRecord:
    """One trained posterior: its budget, quality and compute.

    ``simulation_seconds`` are costed (count x seconds per simulation from the
    timing runs); ``measured_simulation_seconds`` are the simulator calls of
    this run; ``training_seconds`` are measured around ``post.fit()`` and, for
    MF-NPE, include the LF pre-training, whose part is ``pretraining_seconds``.
    """

    method: str
    seed: int
    low: int
    high: int
    nltp: float
    training_seconds: float
    simulation_seconds: float
    measured_simulation_seconds: float
    pretraining_seconds: float = 0.0

    @property
    def total_seconds(self) -> float:
        """Costed simulation seconds + measured training seconds."""
        return self.simulation_seconds + self.training_seconds


def test_pairs(task: NeuronTask, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` HF test pairs ``(theta, x)`` from the prior (failed runs dropped)."""
    rng = np.random.default_rng(seed)
    theta = task.sample_prior(count, rng)
    x = task.simulate(theta, "high", rng)
    ok = np.isfinite(x).all(axis=1)
    return theta[ok], x[ok]


def score(post: MultiFidelityPosterior, pairs: tuple[np.ndarray, np.ndarray]) -> float:
    """NLTP of the highest-fidelity posterior over the test pairs."""
    theta, x = pairs
    return nltp(post.log_prob_batched(theta[:, None, :], x)[:, 0])


def _record(
    method: str, seed: int, post: MultiFidelityPosterior, ledger: ComputeLedger,
    pairs: tuple[np.ndarray, np.ndarray],
) -> RunRecord:
    """A record of a fitted posterior; ``simulation_seconds`` is costed later
    (:func:`cost_simulations`), once the timing runs are done."""
    return RunRecord(
        method=method,
        seed=seed,
        low=ledger.low_simulations,
        high=ledger.high_simulations,
        nltp=score(post, pairs),
        training_seconds=ledger.training_seconds,
        simulation_seconds=math.nan,
        measured_simulation_seconds=ledger.low_simulation_seconds + ledger.high_simulation_seconds,
    )


def run_npe(
    task: NeuronTask, budgets: list[int], seed: int,
    pairs: tuple[np.ndarray, np.ndarray],
) -> list[RunRecord]:
    """NPE (HF only) from scratch at each HF budget."""
    records = []
    for budget in budgets:
        post = MultiFidelityPosterior(task.prior, ["high"], seed=seed)
        ledger = ComputeLedger()
        rng = np.random.default_rng([seed, 1, budget])
        simulate_and_tell(post, task.simulate, "high", budget, rng, ledger)
        fit_timed(post, ledger)
        records.append(_record("NPE", seed, post, ledger, pairs))
        print(f"  NPE seed {seed} HF {budget}: NLTP {records[-1].nltp:.3f}, "
              f"train {ledger.training_seconds:.1f} s", flush=True)
    return records


def run_mfnpe(
    task: NeuronTask, low: int, budgets: list[int], seed: int,
    pairs: tuple[np.ndarray, np.ndarray],
) -> list[RunRecord]:
    """MF-NPE: one LF pre-training per seed, then fine-tuning at each HF budget.

    The LF simulations and LF training happen once; every HF budget starts
    from a copy of the pre-trained posterior and is charged the full LF cost.
    """
    base = MultiFidelityPosterior(task.prior, ["low", "high"], seed=seed)
    base_ledger = ComputeLedger()
    simulate_and_tell(base, task.simulate, "low", low, np.random.default_rng([seed, 2]), base_ledger)
    fit_timed(base, base_ledger, "low")
    print(f"  MF-NPE seed {seed}: LF pre-training on {low}: "
          f"{base_ledger.training_seconds:.1f} s", flush=True)
    records = []
    for budget in budgets:
        post = copy.deepcopy(base)
        ledger = copy.deepcopy(base_ledger)
        rng = np.random.default_rng([seed, 3, budget])
        simulate_and_tell(post, task.simulate, "high", budget, rng, ledger)
        fit_timed(post, ledger)
        records.append(_record("MF-NPE", seed, post, ledger, pairs))
        records[-1].pretraining_seconds = base_ledger.training_seconds
        print(f"  MF-NPE seed {seed} HF {budget}: NLTP {records[-1].nltp:.3f}, "
              f"train {ledger.training_seconds:.1f} s", flush=True)
    return records


def cost_simulations(records: list[RunRecord], per_simulation: dict[str, float]) -> None:
    """Set each record's ``simulation_seconds`` to its counts times the
    seconds per simulation of each fidelity."""
    for r in records:
        r.simulation_seconds = r.low * per_simulation["low"] + r.high * per_simulation["high"]


def compute_to_reach(
    compute: np.ndarray, quality: np.ndarray, target: float
) -> tuple[float, str]:
    """Compute needed to reach NLTP ``<= target`` on a curve ordered by budget.

    Returns ``(seconds, kind)``: ``kind`` is ``"interpolated"`` (between the
    first budget at or below the target and the one before, linear in NLTP
    against log-compute), ``"at most"`` (already at the smallest budget: the
    value is an upper bound) or ``"not reached"`` (``nan``).
    """
    below = np.flatnonzero(quality <= target)
    if below.size == 0:
        return math.nan, "not reached"
    i = int(below[0])
    if i == 0:
        return float(compute[0]), "at most"
    q0, q1 = quality[i - 1], quality[i]
    c0, c1 = math.log(compute[i - 1]), math.log(compute[i])
    fraction = (q0 - target) / (q0 - q1)
    return float(math.exp(c0 + fraction * (c1 - c0))), "interpolated"


def _curve(
    records: list[RunRecord], method: str, seed: int | None, simulation_only: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(total seconds, NLTP) over HF budgets; ``seed=None`` averages seeds;
    ``simulation_only`` counts simulation seconds alone."""
    chosen = [r for r in records if r.method == method and (seed is None or r.seed == seed)]
    budgets = sorted({r.high for r in chosen})
    def seconds(r: RunRecord) -> float:
        return r.simulation_seconds if simulation_only else r.total_seconds

    compute = np.array([np.mean([seconds(r) for r in chosen if r.high == b]) for b in budgets])
    quality = np.array([np.mean([r.nltp for r in chosen if r.high == b]) for b in budgets])
    return compute, quality


def ratios(
    records: list[RunRecord], seeds: list[int], simulation_only: bool = False
) -> list[dict[str, object]]:
    """Per seed (and ``"mean curves"``): target, compute to reach it, ratio."""
    rows = []
    for seed in [*seeds, None]:
        npe_c, npe_q = _curve(records, "NPE", seed, simulation_only)
        mf_c, mf_q = _curve(records, "MF-NPE", seed, simulation_only)
        target = float(npe_q[-1])
        npe_need, npe_kind = compute_to_reach(npe_c, npe_q, target)
        mf_need, mf_kind = compute_to_reach(mf_c, mf_q, target)
        ratio = npe_need / mf_need if mf_kind != "not reached" else math.nan
        rows.append({
            "seed": "mean curves" if seed is None else seed, "target": target,
            "npe_seconds": npe_need, "npe_kind": npe_kind,
            "mf_seconds": mf_need, "mf_kind": mf_kind, "ratio": ratio,
            "ratio_kind": _ratio_kind(npe_kind, mf_kind),
        })
    return rows


def _ratio_kind(npe_kind: str, mf_kind: str) -> str:
    """How to read NPE / MF-NPE given how each compute was found."""
    if mf_kind == "not reached":
        return "MF-NPE did not reach the target"
    if npe_kind == "at most" and mf_kind == "at most":
        return "both at their smallest budget"
    return {"at most": "at least"}.get(mf_kind, {"at most": "at most"}.get(npe_kind, "interpolated"))


def _fmt_ratio(row: dict[str, object]) -> str:
    """The ratio with its bound, e.g. ``1.23``, ``>= 0.50``, ``<= 2.00``."""
    if row["ratio_kind"] == "at least":
        return f">= {row['ratio']:.2f}"
    if row["ratio_kind"] == "at most":
        return f"<= {row['ratio']:.2f}"
    if row["ratio_kind"] == "both at their smallest budget":
        return f"~{row['ratio']:.2f} (both at their smallest budget)"
    if math.isnan(row["ratio"]):
        return "n/a (MF-NPE did not reach the target)"
    return f"{row['ratio']:.2f}"


def write_markdown(
    path: Path, records: list[RunRecord], ratio_rows: list[dict[str, object]],
    per_simulation: dict[str, float], timing: dict[str, list[float]], args: argparse.Namespace,
    command: str, num_pairs: int, elapsed: float, figure: Path | None,
    simulation_rows: list[dict[str, object]],
) -> None:
    """Write the page: budgets table, compute-to-target table, ratio, caveats."""
    table = []
    for method in ("NPE", "MF-NPE"):
        chosen = [r for r in records if r.method == method]
        for budget in sorted({r.high for r in chosen}):
            rs = [r for r in chosen if r.high == budget]
            q = np.array([r.nltp for r in rs])
            table.append(
                f"| {method} | {rs[0].low} | {budget} | {q.mean():.3f} +- {q.std(ddof=1) if q.size > 1 else 0:.3f} | "
                f"{np.mean([r.simulation_seconds for r in rs]):.1f} | "
                f"{np.mean([r.measured_simulation_seconds for r in rs]):.1f} | "
                f"{np.mean([r.training_seconds for r in rs]):.1f} | "
                f"{np.mean([r.total_seconds for r in rs]):.1f} |"
            )
    ratio_table = [
        f"| {row['seed']} | {row['target']:.3f} | {row['npe_seconds']:.1f} ({row['npe_kind']}) | "
        f"{row['mf_seconds']:.1f} ({row['mf_kind']}) | {_fmt_ratio(row)} |"
        for row in ratio_rows
    ]
    per_seed = [row["ratio"] for row in ratio_rows if row["seed"] != "mean curves"]
    finite = [r for r in per_seed if not math.isnan(r)]
    if finite:
        spread = (f"median {np.median(finite):.2f}, range {min(finite):.2f} to {max(finite):.2f} "
                  f"over {len(finite)} of {len(per_seed)} seeds")
    else:
        spread = "no seed gave a ratio"
    mean_row = ratio_rows[-1]
    sim_share = np.mean([r.simulation_seconds / r.total_seconds for r in records])
    mf = [r for r in records if r.method == "MF-NPE"]
    pretrain_share = np.mean([r.pretraining_seconds / r.training_seconds for r in mf])
    pretrain = np.array(sorted({r.seed: r.pretraining_seconds for r in mf}.values()))
    largest = max(args.npe_budgets)
    npe_top = np.array([r.training_seconds for r in records if r.method == "NPE" and r.high == largest])
    sim_ratio = _fmt_ratio(simulation_rows[-1])
    sim_per_seed = ", ".join(_fmt_ratio(row) for row in simulation_rows[:-1])
    costed = np.mean([r.simulation_seconds for r in records])
    measured = np.mean([r.measured_simulation_seconds for r in records])
    timing_lines = ", ".join(
        f"{f} {', '.join(f'{1e3 * s:.2f}' for s in timing[f])} ms" for f in ("low", "high")
    )
    figure_line = (
        f"\n![NLTP against HF budget](../figures/case_study/{figure.name})\n" if figure else ""
    )
    text = f"""# Neuron task: compute NPE and MF-NPE need for the same quality

Generated by `benchmarks/neuron_compute.py` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC
(the run took {elapsed / 60:.1f} minutes).

Command (from the repository root):

```
{command}
```

## Setup

* Task: `NeuronTask()` defaults (Hodgkin-Huxley soma with two dendrites; HF 8
  compartments per branch, LF 1), `theta = (gNa, gK)`, 6 summary statistics.
* Methods, both driven through ask/tell exactly as in
  `examples/neuron_case_study.py` (default `FlowConfig` and `TrainingConfig`):
  NPE on HF budgets {args.npe_budgets}; MF-NPE pre-trained on {args.mf_low} LF
  simulations (once per seed) and fine-tuned on HF budgets {args.mf_budgets}.
  Seeds {args.seeds}; a seed fixes the posterior's seed and the simulator noise.
* Quality: NLTP, mean `-log q(theta_true | x)` over the same {num_pairs} held-out HF
  test pairs for every run (lower is better). NLTP was chosen because it needs
  no reference posterior (there is no exact one for this simulator, and a
  reference from a long NPE run would carry its own error), it is a proper
  scoring rule evaluated at the true parameters, and averaging over test pairs
  from the prior scores the amortized posterior that both methods train.
* Compute = LF + HF simulation seconds + training seconds.
  **Training seconds are measured** (wall clock around `post.fit()`; for
  MF-NPE this includes the LF pre-training, charged in full to every HF
  budget). **Simulation seconds are costed**: number of simulations times
  the median seconds per simulation from timing runs on batches of 200
  prior draws, taken at the start and at the end of the run
  ({timing_lines} per simulation; used: LF {1e3 * per_simulation['low']:.2f} ms,
  HF {1e3 * per_simulation['high']:.2f} ms, HF/LF {per_simulation['high'] / per_simulation['low']:.2f}),
  because the machine is shared and its load changes during the run. The
  in-run simulator seconds are in the table too.
* Target quality, fixed before looking at the results: per seed, the NLTP
  NPE reaches at its largest HF budget. The compute each method needs is read
  off its (compute, NLTP) curve over budgets: the first budget at or below the
  target, interpolated linearly in NLTP against log-compute from the budget
  before. "at most" means the smallest budget already reaches the target
  (an upper bound on the compute, so the ratio is a lower bound).

## Results

Mean over seeds (NLTP: mean +- standard deviation over seeds; seconds: mean):

| method | LF sims | HF sims | NLTP | simulation s (costed) | simulation s (measured in run) | training s | total s |
|---|---|---|---|---|---|---|---|
{chr(10).join(table)}
{figure_line}
Compute to reach the target:

| seed | target NLTP | NPE seconds | MF-NPE seconds | ratio NPE / MF-NPE |
|---|---|---|---|---|
{chr(10).join(ratio_table)}

**Measured compute ratio NPE / MF-NPE: {spread}; on the seed-averaged curves
{_fmt_ratio(mean_row)}.** The paper reports **{PAPER_RATIO}x** less total compute for
MF-NPE on its L5PC task. A ratio above 1 means MF-NPE needed less compute.

Counting simulation seconds alone (the same interpolation on the
(simulation seconds, NLTP) curves, i.e. as if training were free), the ratio
is {sim_ratio} on the seed-averaged curves (per seed: {sim_per_seed}).

## Why the numbers differ from the paper's

* Here the HF simulator is cheap and only about {per_simulation['high'] / per_simulation['low']:.1f}x the cost of
  the LF one in this run's timing (`docs/benchmarks/neuron_cost.md`: 2.2-2.4x
  at batch 200), whereas the paper's HF L5PC model is far more expensive than
  its one-compartment LF model. What MF-NPE saves is HF simulations; when an
  HF simulation costs milliseconds and an LF one about half of that, the
  {args.mf_low} LF simulations cost as much as
  {args.mf_low * per_simulation['low'] / per_simulation['high']:.0f} HF simulations (NPE's largest budget:
  {largest} HF).
* Simulation is only {100 * sim_share:.0f}% of the total compute on average in this run;
  training dominates. MF-NPE's LF pre-training on {args.mf_low} simulations took
  {pretrain.min():.0f}-{pretrain.max():.0f} s per seed ({100 * pretrain_share:.0f}% of its training seconds; fine-tuning on
  the HF data is short), against {npe_top.min():.0f}-{npe_top.max():.0f} s for NPE at its largest budget
  ({largest} HF). So the ratio mostly compares training times. It would grow
  if an HF simulation cost many LF ones (as in the paper): the HF
  simulations MF-NPE saves would then outweigh its LF simulations and
  pre-training.
* Training seconds are wall-clock on a shared, busy machine: the same
  training can take two to three times as long when other jobs run, which moves the
  per-seed ratios. Costed simulation seconds average {costed:.1f} s per run
  against {measured:.1f} s measured inside the runs; the timing batches ran
  at a different load than the runs (and simulations in the runs use batches
  of up to 200 too).
* The budgets, seeds and test pairs are small to keep the run short on a
  shared 2-core machine; NLTP over {num_pairs} pairs and {len(args.seeds)} seeds is
  noisy, and the spread of the ratio over seeds shows how much. The compute
  to reach the target is interpolated between the budgets run.
* The task is a CPU-sized stand-in for the paper's L5PC (soma + 2 dendrites,
  our own Hodgkin-Huxley code), with 6 summary statistics instead of 4, and
  the quality measure is NLTP on held-out pairs rather than the paper's
  metric against a reference.

## Machine

```
{describe_machine()}
```

Raw records: `{args.json}`.
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--npe-budgets", type=int, nargs="+", default=[50, 100, 200, 400, 800])
    parser.add_argument("--mf-low", type=int, default=2000)
    parser.add_argument("--mf-budgets", type=int, nargs="+", default=[25, 50, 100, 200, 400])
    parser.add_argument("--test-pairs", type=int, default=50)
    parser.add_argument("--timing-repeats", type=int, default=3,
                        help="timed batches per fidelity, at the start and at the end")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks/neuron_compute.md"))
    parser.add_argument("--json", type=Path, default=Path("docs/benchmarks/neuron_compute.json"))
    parser.add_argument("--figure", type=Path,
                        default=Path("docs/figures/case_study/neuron_compute_nltp.png"))
    args = parser.parse_args(argv)
    args.npe_budgets = sorted(args.npe_budgets)
    args.mf_budgets = sorted(args.mf_budgets)
    if min(args.npe_budgets + args.mf_budgets) < 2 or args.mf_low < 2 or args.test_pairs < 1:
        parser.error("budgets need at least 2 simulations, --test-pairs at least 1")
    torch.set_num_threads(1)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    started = time.perf_counter()
    task = NeuronTask()

    timing: dict[str, list[float]] = {"low": [], "high": []}
    def time_simulators(seed: int) -> None:
        result = measure(task, 200, args.timing_repeats, seed)
        for fidelity in timing:
            timing[fidelity].append(float(result[fidelity]["median"]))

    time_simulators(1000)
    print(f"timing (s per simulation): {timing}", flush=True)
    pairs = test_pairs(task, args.test_pairs, seed=12345)
    records: list[RunRecord] = []
    for seed in args.seeds:
        records += run_npe(task, args.npe_budgets, seed, pairs)
        records += run_mfnpe(task, args.mf_low, args.mf_budgets, seed, pairs)
    time_simulators(2000)
    per_simulation = {f: float(np.median(v)) for f, v in timing.items()}
    cost_simulations(records, per_simulation)

    ratio_rows = ratios(records, args.seeds)
    simulation_rows = ratios(records, args.seeds, simulation_only=True)
    figure = None
    try:
        from mfask.plot import metric_vs_budget

        fig = metric_vs_budget(
            [{"method": r.method if r.method == "NPE" else f"MF-NPE ({args.mf_low} LF)",
              "budget": r.high, "value": r.nltp} for r in records],
            metric_name=f"NLTP, {pairs[0].shape[0]} HF test pairs", budget_name="HF simulations",
        )
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.figure, dpi=100)
        figure = args.figure
    except ImportError:
        pass
    elapsed = time.perf_counter() - started
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "command": command, "per_simulation_seconds": per_simulation, "timing": timing,
        "records": [{**asdict(r), "total_seconds": r.total_seconds} for r in records],
        "ratios": ratio_rows, "simulation_only_ratios": simulation_rows,
        "elapsed_seconds": elapsed, "test_pairs": int(pairs[0].shape[0]),
    }, indent=2) + "\n")
    write_markdown(args.output, records, ratio_rows, per_simulation, timing, args, command,
                   pairs[0].shape[0], elapsed, figure, simulation_rows)
    for row in ratio_rows:
        print(f"seed {row['seed']}: target {row['target']:.3f}, NPE {row['npe_seconds']:.1f} s "
              f"({row['npe_kind']}), MF-NPE {row['mf_seconds']:.1f} s ({row['mf_kind']}), "
              f"ratio {_fmt_ratio(row)}")
    print(f"wrote {args.output} in {elapsed / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
