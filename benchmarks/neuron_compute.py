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

Break-even analysis (a projection derived from the measured components, not a
measurement): keeping every run's measured training seconds, its simulation
counts and the measured LF seconds per simulation, the HF seconds per
simulation ``c_HF`` is varied and the ratio recomputed with the same target
and interpolation (:func:`break_even`). The page reports the ratio against
``c_HF``, the measured ``c_HF`` and the ``c_HF`` at which the ratio reaches 1
and the paper's 4.44, with a plot.

Usage::

    python benchmarks/neuron_compute.py [--morphology {default,l5pc-like}] [--seeds 0 1 2]
        [--npe-budgets 50 100 200 400 800] [--mf-low 2000] [--mf-budgets 25 50 100 200 400]
        [--test-pairs 50] [--output docs/benchmarks/neuron_compute.md]

``--morphology l5pc-like`` (the cell of ``L5PC_LIKE_BRANCHES``) writes
``neuron_compute_l5pc_like.{md,json}`` and ``neuron_compute_l5pc_like_*.png``
unless the output options say otherwise.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
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
from neuron_cost import MORPHOLOGIES, Morphology, measure  # noqa: E402
from mfask.benchmarks.machine import describe_machine  # noqa: E402

from mfask import MultiFidelityPosterior  # noqa: E402
from mfask.benchmarks.tasks.neuron import NeuronTask  # noqa: E402
from mfask.diagnostics import nltp  # noqa: E402

__all__ = [
    "RunRecord", "run_npe", "run_mfnpe", "cost_simulations", "compute_to_reach", "ratios",
    "BreakEven", "break_even", "main",
]

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


#: the ``c_HF`` values (seconds) of the break-even table, besides the measured one
_TABLE_HF_SECONDS = 10.0 ** np.arange(-3, 2)


@dataclass
class BreakEven:
    """The NPE / MF-NPE compute ratio as a function of the HF seconds per simulation.

    A projection derived from the measured components, not a measurement:
    every run keeps its measured training seconds and its simulation counts,
    LF simulations keep the measured seconds per simulation, and only the HF
    seconds per simulation ``c_HF`` change; the target and the interpolation
    are those of :func:`ratios`.

    Attributes:
        hf_seconds: ``(k,)`` grid of ``c_HF`` (log-spaced).
        mean_curves: ``(k,)`` ratio on the seed-averaged curves.
        per_seed: ``(s, k)`` ratio per seed (NaN where MF-NPE misses the target).
        seeds: the seeds of ``per_seed``'s rows.
        measured_hf_seconds: the measured ``c_HF``.
        low_seconds: the measured LF seconds per simulation (held fixed).
        levels: the ratios whose crossings are reported (1 and the paper's).
        crossings: per level, the smallest ``c_HF`` on the grid at which the
            seed-averaged ratio reaches it (interpolated in log ``c_HF``; NaN
            if it does not within the grid; the grid's first point if already
            there).
        seed_crossings: per level, the same per seed.
        limit: the seed-averaged ratio as ``c_HF`` grows without bound
            (evaluated at ``c_HF = 1e9`` s, where training and LF simulation
            are negligible): the ratio of HF simulations needed.
    """

    hf_seconds: np.ndarray
    mean_curves: np.ndarray
    per_seed: np.ndarray
    seeds: list[int]
    measured_hf_seconds: float
    low_seconds: float
    levels: tuple[float, ...]
    crossings: dict[float, float]
    seed_crossings: dict[float, list[float]]
    limit: float


def _ratios_at(
    records: list[RunRecord], seeds: list[int], per_simulation: dict[str, float]
) -> list[dict[str, object]]:
    """:func:`ratios` of copies of ``records`` costed at ``per_simulation``."""
    recosted = [dataclasses.replace(r) for r in records]
    cost_simulations(recosted, per_simulation)
    return ratios(recosted, seeds)


def _first_crossing(grid: np.ndarray, values: np.ndarray, level: float) -> float:
    """Smallest ``grid`` point where ``values`` reaches ``level``, interpolated
    linearly in ``log(grid)`` from the point before; NaN if never."""
    reached = np.flatnonzero(values >= level)
    if reached.size == 0:
        return math.nan
    i = int(reached[0])
    if i == 0:
        return float(grid[0])
    v0, v1 = values[i - 1], values[i]
    fraction = (level - v0) / (v1 - v0) if np.isfinite(v0) else 1.0
    return float(np.exp(np.log(grid[i - 1]) + fraction * np.log(grid[i] / grid[i - 1])))


def break_even(
    records: list[RunRecord], seeds: list[int], per_simulation: dict[str, float],
    grid: np.ndarray | None = None, levels: tuple[float, ...] = (1.0, PAPER_RATIO),
) -> BreakEven:
    """The ratio against ``c_HF`` from the measured components (see :class:`BreakEven`).

    ``grid`` defaults to 400 log-spaced ``c_HF`` from 0.1 ms to 1000 s; the
    measured ``c_HF`` and :data:`_TABLE_HF_SECONDS` are always added.
    """
    if grid is None:
        grid = np.logspace(-4, 3, 400)
    # the measured c_HF and the decades the page's table shows are grid points
    grid = np.unique(np.concatenate([
        np.asarray(grid, dtype=np.float64), [per_simulation["high"]], _TABLE_HF_SECONDS,
    ]))
    low = per_simulation["low"]
    table = np.array([
        [row["ratio"] for row in _ratios_at(records, seeds, {"low": low, "high": float(c)})]
        for c in grid
    ])  # (k, s + 1): seeds, then the mean curves
    limit = _ratios_at(records, seeds, {"low": low, "high": 1e9})[-1]["ratio"]
    return BreakEven(
        hf_seconds=grid,
        mean_curves=table[:, -1],
        per_seed=table[:, :-1].T,
        seeds=list(seeds),
        measured_hf_seconds=per_simulation["high"],
        low_seconds=low,
        levels=tuple(levels),
        crossings={level: _first_crossing(grid, table[:, -1], level) for level in levels},
        seed_crossings={
            level: [_first_crossing(grid, table[:, j], level) for j in range(len(seeds))]
            for level in levels
        },
        limit=float(limit),
    )


def plot_break_even(result: BreakEven, path: Path) -> Path:
    """Draw the ratio against ``c_HF`` (seed-averaged curves bold, seeds thin),
    the levels and the measured ``c_HF``; save it to ``path``."""
    from mfask.plot._figure import target_axes

    ax = target_axes(None, (5.6, 3.8))
    for j, seed in enumerate(result.seeds):
        ax.plot(result.hf_seconds, result.per_seed[j], color="0.6", linewidth=0.8,
                label="per seed" if j == 0 else None)
    ax.plot(result.hf_seconds, result.mean_curves, color="C0", linewidth=1.8,
            label="seed-averaged curves")
    for level, style in zip(result.levels, (":", "--")):
        name = "paper" if level == PAPER_RATIO else "break-even"
        ax.axhline(level, color="black", linestyle=style, linewidth=1.0,
                   label=f"ratio {level:g} ({name})")
        crossing = result.crossings[level]
        if math.isfinite(crossing):
            ax.plot([crossing], [level], marker="o", color="C3", markersize=5)
            ax.annotate(_fmt_seconds(crossing), (crossing, level), textcoords="offset points",
                        xytext=(4, -12), fontsize="small", color="C3")
    ax.axvline(result.measured_hf_seconds, color="C2", linewidth=1.2,
               label=f"measured c_HF = {_fmt_seconds(result.measured_hf_seconds)}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    ticks = [t for t in (0.05, 0.1, 0.2, 0.5, 1, 2, PAPER_RATIO, 10, 20, 50) if low <= t <= high]
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("HF seconds per simulation, c_HF")
    ax.set_ylabel("NPE / MF-NPE total compute")
    ax.set_title("Projection from measured components (not a measurement)", fontsize="medium")
    ax.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    ax.figure.savefig(path, dpi=100)
    return path


def _fmt_seconds(seconds: float) -> str:
    """``seconds`` in ms below one second, else in s."""
    if math.isnan(seconds):
        return "n/a"
    if seconds < 1:
        return f"{1e3 * seconds:.3g} ms"
    return f"{seconds:.3g} s" if seconds < 100 else f"{seconds:,.0f} s"


def _fmt_factor(value: float) -> str:
    """A cost factor with 3 significant digits, without exponent notation."""
    return f"{value:.3g}" if value < 100 else f"{value:,.0f}"


def _break_even_section(result: BreakEven, figure: Path | None, max_grid: float) -> str:
    """The page's break-even section (Markdown)."""
    def crossing_text(level: float) -> str:
        c = result.crossings[level]
        per_seed = result.seed_crossings[level]
        seeds = ", ".join(
            "not below " + _fmt_seconds(max_grid) if math.isnan(v) else _fmt_seconds(v)
            for v in per_seed
        )
        if math.isnan(c):
            head = (f"not reached for c_HF up to {_fmt_seconds(max_grid)} (the ratio tends "
                    f"to {result.limit:.2f} as c_HF grows)")
        elif c == result.hf_seconds[0]:
            head = f"already at c_HF = {_fmt_seconds(c)} or below"
        else:
            head = (f"c_HF = {_fmt_seconds(c)}, {_fmt_factor(c / result.measured_hf_seconds)}x the "
                    f"measured c_HF and {_fmt_factor(c / result.low_seconds)}x the LF cost")
        return f"* ratio {level:g}: {head}; per seed: {seeds}."

    picks = sorted({result.measured_hf_seconds, *_TABLE_HF_SECONDS})
    rows = []
    for c in picks:
        i = int(np.flatnonzero(result.hf_seconds == c)[0])
        value = float(result.mean_curves[i])
        seeds = result.per_seed[:, i]
        finite = seeds[np.isfinite(seeds)]
        spread = f"{np.median(finite):.2f} ({finite.min():.2f}-{finite.max():.2f})" if finite.size else "n/a"
        label = " (measured)" if c == result.measured_hf_seconds else ""
        rows.append(f"| {_fmt_seconds(c)}{label} | {_fmt_factor(c / result.low_seconds)} | "
                    f"{value:.2f} | {spread} |")
    figure_line = (
        f"\n![NPE / MF-NPE ratio against the HF cost, projected](../figures/case_study/{figure.name})\n"
        if figure else ""
    )
    return f"""## Break-even: how the ratio depends on the HF cost (derived, not measured)

**This is a projection computed from the measured components, not a
measurement.** Every run keeps its measured training seconds and its
simulation counts, LF simulations keep the measured
{_fmt_seconds(result.low_seconds)} per simulation, and only the HF seconds per
simulation, c_HF, are varied; the target and the interpolation are the same as
above. It assumes training time does not depend on how expensive the
simulator is (true: training sees only the simulated data) and that nothing
else changes (same budgets, same NLTP per run).

Measured c_HF here: {_fmt_seconds(result.measured_hf_seconds)}
({result.measured_hf_seconds / result.low_seconds:.2f}x LF). The c_HF at which the
ratio on the seed-averaged curves reaches

{crossing_text(result.levels[0])}
{chr(10).join(crossing_text(level) for level in result.levels[1:])}

As c_HF grows without bound the ratio tends to {result.limit:.2f} on the seed-averaged
curves: the ratio of the HF simulations the two methods need, training and LF
simulation then being negligible.

| c_HF | c_HF / c_LF | ratio, seed-averaged curves | ratio per seed: median (range) |
|---|---|---|---|
{chr(10).join(rows)}
{figure_line}"""


def write_markdown(
    path: Path, records: list[RunRecord], ratio_rows: list[dict[str, object]],
    per_simulation: dict[str, float], timing: dict[str, list[float]], args: argparse.Namespace,
    command: str, num_pairs: int, elapsed: float, figure: Path | None,
    simulation_rows: list[dict[str, object]], morphology: Morphology, task: NeuronTask,
    projection: BreakEven, projection_figure: Path | None,
) -> None:
    """Write the page: budgets table, compute-to-target table, ratio, caveats,
    break-even projection."""
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
    title = "" if morphology.branches is None else f" ({morphology.name} cell)"
    hf_over_lf = per_simulation["high"] / per_simulation["low"]
    text = f"""# Neuron task{title}: compute NPE and MF-NPE need for the same quality

Generated by `benchmarks/neuron_compute.py` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC
(the run took {elapsed / 60:.1f} minutes).

Command (from the repository root):

```
{command}
```

## Setup

* Task: `{morphology.task_code}`, other settings at their defaults: a
  Hodgkin-Huxley cell, {morphology.description}; HF {task.compartments}
  compartments per branch, LF 1; `theta = (gNa, gK)`, 6 summary statistics.
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
  HF {1e3 * per_simulation['high']:.2f} ms, HF/LF {hf_over_lf:.2f}),
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

* Here an HF simulation costs {1e3 * per_simulation['high']:.1f} ms, {hf_over_lf:.1f}x an LF one, in this
  run's timing (separate measurement: `docs/benchmarks/neuron_cost{morphology.slug}.md`),
  whereas the paper's HF L5PC model in NEURON is far more expensive, both
  against its one-compartment LF model and against training. What MF-NPE
  saves is HF simulations; here its {args.mf_low} LF simulations cost as much as
  {args.mf_low / hf_over_lf:.0f} HF simulations (NPE's largest budget:
  {largest} HF).
* Simulation is {100 * sim_share:.0f}% of the total compute on average in this run,
  training the rest. MF-NPE's LF pre-training on {args.mf_low} simulations took
  {pretrain.min():.0f}-{pretrain.max():.0f} s per seed ({100 * pretrain_share:.0f}% of its training seconds; fine-tuning on
  the HF data is short), against {npe_top.min():.0f}-{npe_top.max():.0f} s for NPE at its largest budget
  ({largest} HF). The break-even section below shows how the ratio would
  move if an HF simulation cost more, all else as measured.
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
* The task is a CPU-sized stand-in for the paper's L5PC (the cell above, our
  own Hodgkin-Huxley code), with 6 summary statistics instead of 4, and
  the quality measure is NLTP on held-out pairs rather than the paper's
  metric against a reference.

{_break_even_section(projection, projection_figure, float(projection.hf_seconds[-1]))}
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
    parser.add_argument("--morphology", choices=sorted(MORPHOLOGIES), default="default",
                        help="the cell (default: NeuronTask()'s two dendrites)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--npe-budgets", type=int, nargs="+", default=[50, 100, 200, 400, 800])
    parser.add_argument("--mf-low", type=int, default=2000)
    parser.add_argument("--mf-budgets", type=int, nargs="+", default=[25, 50, 100, 200, 400])
    parser.add_argument("--test-pairs", type=int, default=50)
    parser.add_argument("--timing-repeats", type=int, default=3,
                        help="timed batches per fidelity, at the start and at the end")
    parser.add_argument("--output", type=Path, default=None,
                        help="default: docs/benchmarks/neuron_compute<_morphology>.md")
    parser.add_argument("--json", type=Path, default=None,
                        help="default: docs/benchmarks/neuron_compute<_morphology>.json")
    parser.add_argument("--figure", type=Path, default=None,
                        help="default: docs/figures/case_study/neuron_compute<_morphology>_nltp.png")
    parser.add_argument("--break-even-figure", type=Path, default=None,
                        help="default: docs/figures/case_study/neuron_compute<_morphology>_break_even.png")
    args = parser.parse_args(argv)
    morphology = MORPHOLOGIES[args.morphology]
    stem = f"neuron_compute{morphology.slug}"
    args.output = args.output or Path(f"docs/benchmarks/{stem}.md")
    args.json = args.json or Path(f"docs/benchmarks/{stem}.json")
    args.figure = args.figure or Path(f"docs/figures/case_study/{stem}_nltp.png")
    args.break_even_figure = (
        args.break_even_figure or Path(f"docs/figures/case_study/{stem}_break_even.png")
    )
    args.npe_budgets = sorted(args.npe_budgets)
    args.mf_budgets = sorted(args.mf_budgets)
    if min(args.npe_budgets + args.mf_budgets) < 2 or args.mf_low < 2 or args.test_pairs < 1:
        parser.error("budgets need at least 2 simulations, --test-pairs at least 1")
    torch.set_num_threads(1)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    started = time.perf_counter()
    task = morphology.task()

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
    projection = break_even(records, args.seeds, per_simulation)
    figure = projection_figure = None
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
        projection_figure = plot_break_even(projection, args.break_even_figure)
    except ImportError:
        pass
    elapsed = time.perf_counter() - started
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "command": command, "morphology": morphology.name, "task": task.settings,
        "per_simulation_seconds": per_simulation, "timing": timing,
        "records": [{**asdict(r), "total_seconds": r.total_seconds} for r in records],
        "ratios": ratio_rows, "simulation_only_ratios": simulation_rows,
        "elapsed_seconds": elapsed, "test_pairs": int(pairs[0].shape[0]),
        "break_even_projection": {
            "note": "derived from the measured components (training seconds, counts, LF "
                    "seconds per simulation), not measured",
            "measured_hf_seconds": projection.measured_hf_seconds,
            "low_seconds": projection.low_seconds,
            "crossings_mean_curves": {str(k): v for k, v in projection.crossings.items()},
            "crossings_per_seed": {str(k): v for k, v in projection.seed_crossings.items()},
            "limit_mean_curves": projection.limit,
        },
    }, indent=2) + "\n")
    write_markdown(args.output, records, ratio_rows, per_simulation, timing, args, command,
                   pairs[0].shape[0], elapsed, figure, simulation_rows, morphology, task,
                   projection, projection_figure)
    for row in ratio_rows:
        print(f"seed {row['seed']}: target {row['target']:.3f}, NPE {row['npe_seconds']:.1f} s "
              f"({row['npe_kind']}), MF-NPE {row['mf_seconds']:.1f} s ({row['mf_kind']}), "
              f"ratio {_fmt_ratio(row)}")
    print(f"break-even (projected, seed-averaged curves): measured c_HF "
          f"{_fmt_seconds(projection.measured_hf_seconds)}, ratio 1 at "
          f"{_fmt_seconds(projection.crossings[1.0])}, {PAPER_RATIO} at "
          f"{_fmt_seconds(projection.crossings[PAPER_RATIO])}, limit {projection.limit:.2f}")
    print(f"wrote {args.output} in {elapsed / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
