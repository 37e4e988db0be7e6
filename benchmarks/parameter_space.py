"""The two parameter spaces side by side, paired on the same data, with sbi's NPE.

Reads benchmark results files (JSON Lines of ``python -m mfask.benchmarks``)
holding the same jobs run with ``--parameter-space unbounded`` (the default)
and ``--parameter-space support``, and, where present, ``sbi-npe`` rows on
the same HF simulations. For every task, method and HF budget it writes:

* each arm's metric (mean ± std over seeds × observations, and runs), from
  :func:`mfask.benchmarks.report.summarise`, the function the report uses;
* the paired difference ``support - unbounded`` per seed (each seed's mean
  over its observations; the two arms share the seed, hence the HF
  simulations): mean ± standard error over seeds, and how many seeds
  improved;
* for NPE, the same paired difference of each arm against ``sbi-npe``.

The metric is C2ST where the task has a reference posterior, else NLTP
(both: lower is better).

With ``--timing`` it also measures what the support space costs at query
time: one NPE per space trained on the same OU simulations, then the median
over repeats of ``sample(10_000)`` and of ``log_prob`` of 10_000 rows at an
observation (after a first call, which for the support space includes the
one-off estimate of the mass inside the support), in the same process.

Usage::

    python benchmarks/parameter_space.py results/ou.jsonl results/ou_support.jsonl \\
        results/slcp_sir.jsonl results/slcp_sir_support.jsonl \\
        --output docs/benchmarks/parameter_space.md
"""

from __future__ import annotations

import argparse
import datetime
import math
import shlex
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from mfask.benchmarks.machine import describe_machine
from mfask.benchmarks.report import summarise, variant
from mfask.benchmarks.results import read_rows

Arm = str  # "unbounded", a report.variant tag, or "sbi"


def _arm(row: dict[str, Any]) -> Arm:
    if row["method"] == "sbi-npe":
        return "sbi"
    return variant(row) or "unbounded"


def _method(row: dict[str, Any]) -> str:
    return "npe" if row["method"] == "sbi-npe" else row["method"]


def _metric(rows: list[dict[str, Any]], task: str) -> str:
    has_c2st = any(r["task"] == task and r["metrics"].get("c2st") is not None for r in rows)
    return "c2st" if has_c2st else "nltp"


def per_seed_means(rows: list[dict[str, Any]]) -> dict[tuple[str, str, int, int, str, str], dict[int, float]]:
    """``(task, method, low, high, metric, arm) -> {seed: mean over observations}``
    for successful 10-observation rows of ``npe`` / ``mf-npe`` / ``sbi-npe``."""
    means: dict[tuple[str, str, int, int, str, str], dict[int, float]] = defaultdict(dict)
    metrics = {task: _metric(rows, task) for task in {row["task"] for row in rows}}
    for row in rows:
        if row.get("status") != "ok" or row["method"] not in ("npe", "mf-npe", "sbi-npe"):
            continue
        metric = metrics[row["task"]]
        values = row["metrics"].get(metric)
        if values is None:
            continue
        key = (row["task"], _method(row), int(row["low"]), int(row["high"]), metric, _arm(row))
        means[key][int(row["seed"])] = float(np.mean(values))
    return means


def paired(a: dict[int, float], b: dict[int, float]) -> str:
    """``mean ± SE (k of n better)`` of ``a - b`` over the seeds both have."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return ""
    diff = np.array([a[s] - b[s] for s in seeds])
    se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else math.nan
    return f"{diff.mean():+.3f} ± {se:.3f} ({int((diff < 0).sum())} of {len(diff)} lower)"


ARMS = ("unbounded", "support", "support, sbi layout")


def _cell_label(method: str, low: int, arm: str) -> str:
    tagged = method if arm == "unbounded" else f"{method} [{arm}]"
    return f"{tagged} (LF {low})" if low else tagged


def tables(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: one table per task, one row per method and HF budget,
    the arms' metric then the paired differences."""
    means = per_seed_means(rows)
    cells = summarise(rows)
    lines: list[str] = []
    for task in sorted({key[0] for key in means}):
        metric = _metric(rows, task)
        combos = sorted({(k[1], k[2], k[3]) for k in means if k[0] == task})
        present = [arm for arm in ARMS if any(means.get((task, m, lo, hi, metric, arm)) for m, lo, hi in combos)]
        variants = [arm for arm in present if arm != "unbounded"]
        header = (["method", "HF"] + present + [f"{arm} - unbounded" for arm in variants]
                  + [f"{arm} - sbi" for arm in present])
        lines += [f"### {task} ({metric.upper()}, lower is better)", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method, low, high in combos:
            arms = {arm: means.get((task, method, low, high, metric, arm), {}) for arm in (*present, "sbi")}
            if not any(arms[arm] for arm in variants):
                continue
            entries = [_cell_label(method, low, "unbounded"), str(high)]
            for arm in present:
                cell = cells.get((task, metric, _cell_label(method, low, arm), high))
                entries.append(cell.format() if cell else "")
            entries += [paired(arms[arm], arms["unbounded"]) for arm in variants]
            entries += [paired(arms[arm], arms["sbi"]) for arm in present]
            lines.append("| " + " | ".join(entries) + " |")
        lines.append("")
    return lines


def timing(num_simulations: int = 1000, repeats: int = 7, seed: int = 0) -> list[str]:
    """Markdown lines: query-time cost of the two spaces on one OU posterior each."""
    import time

    import torch

    from mfask import MultiFidelityPosterior
    from mfask.benchmarks.tasks import get_task

    torch.set_num_threads(1)
    task = get_task("ou")
    _, x_o = task.observations(1, seed=0)
    rng = np.random.default_rng(seed)
    theta = task.prior.sample(num_simulations, torch.Generator().manual_seed(seed)).numpy()
    x = task.simulate(theta, "high", rng)
    results: dict[str, dict[str, float]] = {}
    for space in ("unbounded", "support"):
        post = MultiFidelityPosterior(task.prior, ["high"], seed=seed, parameter_space=space)
        post.tell(theta, x, "high", unasked="prior")
        started = time.perf_counter()
        post.fit()
        fit_seconds = time.perf_counter() - started
        started = time.perf_counter()
        points = post.sample(10_000, x_o[0])
        post.log_prob(points, x_o[0])
        first = time.perf_counter() - started
        sample_times, log_prob_times = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            points = post.sample(10_000, x_o[0])
            sample_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            post.log_prob(points, x_o[0])
            log_prob_times.append(time.perf_counter() - started)
        mass = float(post.posterior().log_support_mass(torch.as_tensor(x_o[:1]))[0, 0])
        results[space] = {"fit": fit_seconds, "first": first, "sample": float(np.median(sample_times)),
                          "log_prob": float(np.median(log_prob_times)), "mass": math.exp(mass)}
    u, s = results["unbounded"], results["support"]
    return [
        f"### Query-time cost (OU NPE on {num_simulations} HF simulations, one torch thread, "
        f"median of {repeats})", "",
        "| | unbounded | support | support / unbounded |", "|---|---|---|---|",
        f"| training (s) | {u['fit']:.1f} | {s['fit']:.1f} | {s['fit'] / u['fit']:.2f} |",
        f"| first sample + log_prob (s) | {u['first']:.3f} | {s['first']:.3f} | {s['first'] / u['first']:.2f} |",
        f"| `sample(10_000)` (s) | {u['sample']:.3f} | {s['sample']:.3f} | {s['sample'] / u['sample']:.2f} |",
        f"| `log_prob` of 10_000 rows (s) | {u['log_prob']:.3f} | {s['log_prob']:.3f} "
        f"| {s['log_prob'] / u['log_prob']:.2f} |",
        f"| flow mass inside the prior's box at x_o | 1 | {s['mass']:.3f} | |",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="benchmark results files (JSON Lines)")
    parser.add_argument("--output", default="docs/benchmarks/parameter_space.md")
    parser.add_argument("--timing", action="store_true", help="also measure the query-time cost")
    args = parser.parse_args(argv)
    rows = [row for row in read_rows(args.results) if row.get("num_observations") == 10]
    command = "python benchmarks/parameter_space.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    text = [
        "# Parameter space: unbounded (default) vs support, paired on the same data",
        "",
        f"Generated by `{command}` on {datetime.date.today().isoformat()} from benchmark rows "
        "with 10 observations per seed. Cells: mean ± std over seeds × observations "
        "(runs × observations). Differences: per seed (its mean over the observations), "
        "then mean ± standard error over seeds; \"k of n lower\" counts the seeds where the "
        "first arm is better. sbi: `sbi-npe` on the same HF simulations.",
        "",
        *tables(rows),
        *(timing() if args.timing else []),
        "## Machine", "", "```", describe_machine(), "```", "",
    ]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text("\n".join(text))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
