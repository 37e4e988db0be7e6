"""Start-up time of the ``mfask`` command, against importing torch.

Every ``mfask`` call is a new process, so a shell loop pays the start-up on
every call. This script times, on one existing study (trained, with pending
and told tickets), each command as a fresh process and, as the yardstick,
``python -c "import torch"`` on the same machine:

* ``mfask status STUDY``, ``status --pending``, ``tell``, ``export -o x.csv``
  (bookkeeping: no torch) and ``ask`` (prior draws: torch, no flows);
* ``python -c "import torch"`` and ``python -c "import numpy"``.

The commands run one at a time, round-robin (so that a change of load on a
shared machine affects all of them alike), ``--runs`` times each; the report
gives the median and the range of the wall-clock times, and the ratio of the
median of ``mfask status`` to that of ``import torch`` (the target: at most
0.3). ``--compare-with DIR`` also times the commands with the mfask package
found in ``DIR`` (e.g. an export of an older commit) on a copy of the study.

``mfask`` is run as ``python -m mfask.cli`` with this checkout first on
``PYTHONPATH``: the ``mfask`` script does the same (its entry point is
``mfask.cli:main``), whichever copy of mfask is installed.

Writes a markdown report (default ``docs/benchmarks/cli_startup.md``).

Run:  python benchmarks/cli_startup.py [--runs 7] [--compare-with DIR [--compare-label TEXT]]

e.g. before/after: ``git archive <commit> mfask | tar -x -C /tmp/before`` and
``--compare-with /tmp/before --compare-label "commit <commit>"``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REPORT = REPO / "docs" / "benchmarks" / "cli_startup.md"
TARGET_RATIO = 0.3

SPEC = """
seed = 0
fidelities = ["low", "high"]

[parameters]
a = {low = 0.5, high = 2.0}
k = {low = 0.1, high = 1.5}
c = {low = -1.0, high = 1.0}

[flow]
hidden_features = 20
num_transforms = 2

[training]
max_epochs = 20
"""


def simulate(theta: np.ndarray) -> np.ndarray:
    """A stand-in simulator: ``(n, 3)`` parameters to ``(n, 4)`` outputs."""
    a, k, c = theta.T
    return np.stack([a + c, a * k, np.exp(-k) + c, a - k], axis=1)


def write_results(path: Path, tickets: np.ndarray, theta: np.ndarray) -> None:
    """A results CSV for ``mfask tell``: ticket and four outputs per row."""
    lines = ["ticket,y1,y2,y3,y4"]
    for ticket, y in zip(tickets, simulate(theta)):
        lines.append(",".join([str(int(ticket)), *map(repr, map(float, y))]))
    path.write_text("\n".join(lines) + "\n")


def build_study(folder: Path, runs: int) -> tuple[Path, list[Path]]:
    """An existing study: 1000 low and 60 high results, trained (so that
    ``status`` reads a checkpoint), 200 pending tickets; plus one results
    file per timed ``tell`` run, each telling pending tickets of its own."""
    from mfask.study import Study
    from mfask.study_spec import posterior_from_spec, read_spec

    (folder / "spec.toml").write_text(SPEC)
    path = folder / "bench.mfask"
    with Study.create(path, posterior_from_spec(read_spec(folder / "spec.toml"))) as study:
        for fidelity, n in (("low", 1000), ("high", 60)):
            batch = study.ask(fidelity, n)
            study.tell(batch, simulate(batch.theta))
        study.fit()
        pending = study.ask("low", 200)
    files = []
    for run in range(runs):
        rows = slice(5 * run, 5 * run + 5)
        files.append(folder / f"results{run}.csv")
        write_results(files[-1], pending.ticket_ids[rows], pending.theta[rows])
    return path, files


def commands(study: Path, results: list[Path], export: Path) -> dict[str, list[list[str]]]:
    """Per timed command, the argument lists of its runs (``tell`` differs
    per run: each tells tickets of its own)."""
    python = [sys.executable]
    cli = [*python, "-m", "mfask.cli"]
    runs = len(results)
    return {
        "mfask status STUDY": [[*cli, "status", str(study)]] * runs,
        "mfask status STUDY --pending": [[*cli, "status", str(study), "--pending"]] * runs,
        "mfask tell STUDY results.csv": [[*cli, "tell", str(study), str(f)] for f in results],
        "mfask export STUDY -o all.csv": [[*cli, "export", str(study), "-o", str(export)]] * runs,
        "mfask ask STUDY -f low -n 10": [[*cli, "ask", str(study), "-f", "low", "-n", "10"]] * runs,
        'python -c "import torch"': [[*python, "-c", "import torch"]] * runs,
        'python -c "import numpy"': [[*python, "-c", "import numpy"]] * runs,
    }


def time_round_robin(
    plans: list[tuple[dict[str, list[list[str]]], dict[str, str]]], runs: int, cwd: Path
) -> list[dict[str, list[float]]]:
    """Wall-clock seconds of every run of every plan (commands and their
    environment), one process at a time, round-robin over all of them.

    The processes run in ``cwd``, a folder without a copy of mfask: Python
    puts the working directory first on the path, before ``PYTHONPATH``."""
    times: list[dict[str, list[float]]] = [{name: [] for name in plan} for plan, _ in plans]
    for run in range(runs):
        for (plan, env), plan_times in zip(plans, times):
            for name, argv in plan.items():
                started = time.perf_counter()
                done = subprocess.run(argv[run], env=env, cwd=cwd, capture_output=True, text=True)
                plan_times[name].append(time.perf_counter() - started)
                if done.returncode != 0:
                    raise RuntimeError(f"{name} failed ({done.returncode}): {done.stderr.strip()}")
    return times


def machine_lines() -> list[str]:
    import torch

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return [
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"- machine: {platform.platform()}, `nproc` = {os.cpu_count()}",
        f"- load average at the start (1, 5, 15 min): {load} (a shared machine)",
        f"- Python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}",
    ]


def summary_table(times: dict[str, list[float]], reference: dict[str, list[float]] | None) -> list[str]:
    header = "| command | median (s) | min - max (s) |"
    rule = "|---|---|---|"
    if reference is not None:
        header += " before: median (s) |"
        rule += "---|"
    lines = [header, rule]
    for name, values in times.items():
        row = f"| `{name}` | {statistics.median(values):.2f} | {min(values):.2f} - {max(values):.2f} |"
        if reference is not None:
            before = reference.get(name)
            row += f" {statistics.median(before):.2f} |" if before else " |"
        lines.append(row)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per command (default 7)")
    parser.add_argument("--compare-with", type=Path, help="a folder holding another mfask package")
    parser.add_argument("--compare-label", help="what that package is, for the report (default: its folder)")
    parser.add_argument("--report", type=Path, default=DEFAULT_REPORT)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mfask-cli-startup-") as tmp:
        folder = Path(tmp)
        machine = machine_lines()
        study, results = build_study(folder, args.runs)
        before_study = folder / "before.mfask"
        for suffix in ("", "-wal"):  # the same study, for --compare-with
            if Path(f"{study}{suffix}").exists():
                shutil.copy(f"{study}{suffix}", f"{before_study}{suffix}")
        plans = [(commands(study, results, folder / "all.csv"), dict(os.environ, PYTHONPATH=str(REPO)))]
        if args.compare_with is not None:
            before_results = [folder / f"before{i}.csv" for i in range(args.runs)]
            for src, dst in zip(results, before_results):
                shutil.copy(src, dst)
            plan = commands(before_study, before_results, folder / "before.csv")
            plan = {name: argv for name, argv in plan.items() if name.startswith("mfask")}
            plans.append((plan, dict(os.environ, PYTHONPATH=str(args.compare_with.resolve()))))
        print(f"timing {args.runs} runs of each command ...", flush=True)
        times, *others = time_round_robin(plans, args.runs, folder)
        reference = others[0] if others else None
        end_load = ", ".join(f"{v:.1f}" for v in os.getloadavg())

    status = statistics.median(times["mfask status STUDY"])
    torch_import = statistics.median(times['python -c "import torch"'])
    ratio = status / torch_import
    command = "python benchmarks/cli_startup.py" + "".join(
        f" {flag} {shlex.quote(str(value))}"
        for flag, value in (
            ("--runs", args.runs), ("--compare-with", args.compare_with), ("--compare-label", args.compare_label)
        )
        if value is not None
    )
    lines = [
        "# `mfask` start-up time",
        "",
        "Generated by `benchmarks/cli_startup.py`.",
        "",
        "Command (from the repository root):",
        "",
        "```",
        command,
        "```",
        "",
        *machine,
        f"- load average at the end: {end_load}",
        "- study: 3 parameters, outputs of 4 numbers, fidelities low/high; 1000 low and 60 high "
        "results, trained (one checkpoint: 2-transform flows, the transfer guard's two candidates "
        "at high), 200 pending tickets",
        f"- every command a fresh process, wall-clock time, {args.runs} runs each, one at a time, "
        "round-robin; `mfask` is `python -m mfask.cli` (what the `mfask` script runs)",
        "",
        "## Result",
        "",
        f"`mfask status STUDY` takes **{ratio:.2f}x** the time of `python -c \"import torch\"` "
        f"({status:.2f} s against {torch_import:.2f} s, medians); the target is at most "
        f"{TARGET_RATIO}x: {'met' if ratio <= TARGET_RATIO else 'NOT met'}.",
        "",
        *summary_table(times, reference),
        "",
    ]
    if reference is not None:
        lines += [
            f"`before`: the same commands with the mfask package of {args.compare_label or args.compare_with} "
            "on a copy of the study, in the same round-robin.",
            "",
        ]
    lines += [
        "Why: `tell`, `status`, `export` (CSV, npz), `abandon` and `retry` open the study lazily "
        "(`open_study(path, lazy=True)`) and work on its records (`TicketBook`), which import "
        "numpy and sqlite but neither torch, nor normflows, nor scipy; `status` reads the "
        "checkpoint's description of the levels instead of building the networks. `ask` draws "
        "from the prior with the study's torch random stream (so that asks stay reproducible "
        "from the seed), which needs torch but not the flows (`PriorBook`). `fit` and `sample` "
        "load everything.",
        "",
    ]
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
