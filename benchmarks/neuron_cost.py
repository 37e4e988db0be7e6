"""Measure the cost of the neuron task's low- and high-fidelity simulators.

Times ``NeuronTask.simulate`` on one batch of prior draws for each fidelity,
repeats that a few times (alternating fidelities, so machine load affects both
alike) and writes the medians, the HF/LF cost ratio, the machine and the
command to a Markdown file.

Usage::

    python benchmarks/neuron_cost.py [--morphology {default,l5pc-like}] [--batch 200]
        [--repeats 3] [--seed 0] [--output docs/benchmarks/neuron_cost.md]

``--morphology l5pc-like`` uses ``L5PC_LIKE_BRANCHES`` and writes
``docs/benchmarks/neuron_cost_l5pc_like.md`` unless ``--output`` says otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mfask.benchmarks.machine import describe_machine
from mfask.benchmarks.tasks.neuron import L5PC_LIKE_BRANCHES, Branch, NeuronTask

__all__ = ["Morphology", "MORPHOLOGIES", "measure", "main"]


@dataclass(frozen=True)
class Morphology:
    """A named cell for the neuron benchmarks.

    Attributes:
        name: the command-line name.
        description: how the pages describe the cell (Markdown).
        task_code: the Python expression that builds the task.
        slug: suffix of the output file names (``""`` for the default cell).
        branches: the ``branches`` argument, or ``None`` for the task's default.
    """

    name: str
    description: str
    task_code: str
    slug: str
    branches: tuple[Branch, ...] | None = None

    def task(self) -> NeuronTask:
        """The :class:`NeuronTask` of this cell (other settings at their defaults)."""
        return NeuronTask() if self.branches is None else NeuronTask(branches=self.branches)


#: the cells the neuron benchmarks can measure, by command-line name
MORPHOLOGIES: dict[str, Morphology] = {
    "default": Morphology(
        name="default",
        description="soma + 2 dendritic branches (apical 700 x 2.5 um, basal 250 x 1.5 um)",
        task_code="NeuronTask()",
        slug="",
    ),
    "l5pc-like": Morphology(
        name="l5pc-like",
        description=(
            "soma + the 11 branches of `L5PC_LIKE_BRANCHES` (a stylised pyramidal-cell "
            "tree: apical trunk, 3 obliques, 2 tuft and 5 basal dendrites; not a "
            "reconstruction)"
        ),
        task_code="NeuronTask(branches=L5PC_LIKE_BRANCHES)",
        slug="_l5pc_like",
        branches=L5PC_LIKE_BRANCHES,
    ),
}


def measure(
    task: NeuronTask, batch: int, repeats: int, seed: int
) -> dict[str, dict[str, object]]:
    """Seconds per simulation for each fidelity over ``repeats`` timed runs.

    Returns, per fidelity, ``seconds`` (list of per-simulation times, one per
    repeat), ``median`` and ``spiking`` (fraction of the batch with at least one
    spike, from the last repeat).
    """
    theta = task.sample_prior(batch, np.random.default_rng(seed))
    results: dict[str, dict[str, object]] = {
        fidelity: {"seconds": []} for fidelity in task.fidelities
    }
    for repeat in range(repeats):
        for fidelity in task.fidelities:
            rng = np.random.default_rng(seed + 1 + repeat)
            start = time.perf_counter()
            x = task.simulate(theta, fidelity, rng)
            elapsed = time.perf_counter() - start
            results[fidelity]["seconds"].append(elapsed / batch)
            results[fidelity]["spiking"] = float(np.mean(x[:, 0] > 0))
            results[fidelity]["nan_rows"] = int(np.isnan(x).any(axis=1).sum())
    for fidelity in task.fidelities:
        results[fidelity]["median"] = float(np.median(results[fidelity]["seconds"]))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=200, help="prior draws per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per fidelity")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--morphology", choices=sorted(MORPHOLOGIES), default="default",
                        help="the cell to time (default: NeuronTask()'s two dendrites)")
    parser.add_argument("--output", type=Path, default=None,
                        help="default: docs/benchmarks/neuron_cost<_morphology>.md")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        parser.error("--batch and --repeats must be positive")
    morphology = MORPHOLOGIES[args.morphology]
    if args.output is None:
        args.output = Path(f"docs/benchmarks/neuron_cost{morphology.slug}.md")

    task = morphology.task()
    results = measure(task, args.batch, args.repeats, args.seed)
    low, high = results["low"]["median"], results["high"]["median"]
    ratio = high / low
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])

    rows = []
    for fidelity in task.fidelities:
        r = results[fidelity]
        per_repeat = ", ".join(f"{1e3 * s:.2f}" for s in r["seconds"])
        compartments = 1 if fidelity == "low" else task.compartments
        rows.append(
            f"| {fidelity} | {compartments} | {1e3 * r['median']:.2f} | {per_repeat} | "
            f"{r['spiking']:.2f} | {r['nan_rows']} |"
        )
    title = "" if morphology.branches is None else f" ({morphology.name} cell)"
    text = f"""# Neuron task{title}: cost of the low- and high-fidelity simulators

Generated by `benchmarks/neuron_cost.py` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.

Command (from the repository root):

```
{command}
```

Setup: `{morphology.task_code}`: {morphology.description}. HF
{task.compartments} compartments per branch, LF 1 ({1 + len(task.branches) * task.compartments}
and {1 + len(task.branches)} compartments with the soma); dt = {task.dt} ms,
t_max = {task.t_max} ms, {task.num_steps} steps; one batch of {args.batch} prior
draws simulated at once (vectorised over the batch), {args.repeats} timed runs per
fidelity, alternating low and high. Times are wall-clock seconds of
`simulate` divided by the batch size.

| fidelity | compartments per branch | median ms / simulation | each repeat (ms) | fraction spiking | NaN rows |
|---|---|---|---|---|---|
{chr(10).join(rows)}

**HF/LF cost ratio (median / median): {ratio:.2f}**

Both simulators loop over time steps in Python with numpy calls on
`(batch, compartments)` arrays; at this batch size a good part of the time is
per-call overhead rather than arithmetic, which is why the ratio stays well
below the ratio of compartment counts
({1 + len(task.branches) * task.compartments} / {1 + len(task.branches)}). It depends on the batch size
and on the machine's load, so re-measure for a different setting.

Machine:

```
{describe_machine()}
```
"""
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
