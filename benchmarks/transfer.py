"""The transfer diagnostic on every benchmark task, with a null reference and
per-parameter information.

For each task and each repeat (seed), the script draws ``N`` parameters from
the prior, simulates the low and the high fidelity at the same ``theta`` with
independent noise, and estimates with the KSG k-NN estimator (through
:func:`mfask.diagnostics.transfer_diagnostic`: non-finite rows dropped, every
coordinate z-scored):

1. ``MI(x_LF; x_HF)``, the paper's transfer diagnostic;
2. the same with the LF rows randomly permuted (independent pairs, true MI 0):
   what "zero" looks like for the estimator at this ``N`` and dimension;
3. ``MI(theta_j; x_LF)`` and ``MI(theta_j; x_HF)`` for every parameter ``j``,
   and ``MI(permuted theta_j; x_HF)`` as their null reference: which
   parameters each simulator informs.

Blob images (``size x size`` pixels) are too high-dimensional for a k-NN
estimator, so both fidelities are first reduced by :func:`blob_summaries` to
the darkness-weighted centroid and width (3 numbers per image).

Prints one markdown table per task (mean +- standard deviation over the
repeats); ``--json`` also writes every repeat's numbers.

Run:  python benchmarks/transfer.py [--tasks ou slcp ...] [--num 2000] [--k 5]
      [--seeds 0 1 2] [--json results.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mfask.benchmarks.machine import describe_machine
from mfask.benchmarks.tasks import TASK_NAMES, Task, get_task
from mfask.diagnostics import transfer_diagnostic

#: Darkness (``0.9 - pixel``) below this is treated as background by
#: :func:`blob_summaries`. The background pixel is Binomial(trials, 0.9) /
#: trials, with standard deviation 0.067 (LF, 20 trials) and 0.019 (HF, 255
#: trials); without a threshold its positive noise, summed over the ~1000
#: background pixels, pulls the centroid towards the image centre.
BLOB_DARKNESS_THRESHOLD = 0.1


def blob_summaries(
    images: np.ndarray, threshold: float = BLOB_DARKNESS_THRESHOLD
) -> np.ndarray:
    """Darkness-weighted centroid and width of blob images.

    Arguments:
        images: ``(n, size, size)`` pixel values in ``[0, 1]``, rows along y
            (the blob task's ``x``; its LF images are already upsampled to
            ``(size, size)``, so both fidelities get the same reduction).
        threshold: darkness below which a pixel counts as background.

    With weights ``w = max(0.9 - pixel - threshold, 0)`` and pixel centres
    ``(col + 0.5, row + 0.5)``, returns ``(n, 3)``: the weighted mean ``x``
    and ``y`` of the pixel centres, and the width
    ``sqrt(sum w r^2 / sum w)`` with ``r`` the distance to that centroid (all
    in pixels). Images with no pixel above the threshold give a NaN row.
    """
    images = np.asarray(images, dtype=np.float64)
    centres = np.arange(images.shape[-1]) + 0.5
    weights = np.clip(0.9 - images - threshold, 0.0, None)
    mass = weights.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        x_mean = (weights * centres[None, None, :]).sum(axis=(1, 2)) / mass
        y_mean = (weights * centres[None, :, None]).sum(axis=(1, 2)) / mass
        squared = (centres[None, None, :] - x_mean[:, None, None]) ** 2 + (
            centres[None, :, None] - y_mean[:, None, None]
        ) ** 2
        width = np.sqrt((weights * squared).sum(axis=(1, 2)) / mass)
    return np.stack([x_mean, y_mean, width], axis=1)


def estimator_inputs(task: Task, x: np.ndarray) -> np.ndarray:
    """What the estimator sees of outputs ``x`` ``(n, *x_shape)``: the blob
    summaries ``(n, 3)`` for the blob task, ``x`` unchanged otherwise."""
    return blob_summaries(x) if task.name == "blob" else x


def mutual_information(a: np.ndarray, b: np.ndarray, k: int, seed: int) -> float:
    """KSG estimate of ``I(a; b)`` in nats for paired rows ``a`` ``(n, ...)``
    and ``b`` ``(n, ...)``, via :func:`transfer_diagnostic` (which flattens,
    drops non-finite rows, z-scores every coordinate and breaks ties)."""
    return transfer_diagnostic(a, b, k=k, seed=seed)


def measure(task: Task, num: int, k: int, seed: int) -> dict[str, Any]:
    """One repeat of every estimate on ``num`` fresh prior draws.

    Returns a dict with the scalars ``lf_hf``, ``null``, ``dropped`` (rows
    with a non-finite estimator input at either fidelity), ``seconds``, and
    the per-parameter lists (length ``d``) ``theta_lf``, ``theta_hf``,
    ``theta_null``.
    """
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    low, high = task.fidelities[0], task.fidelities[-1]
    theta = task.sample_prior(num, rng)  # (num, d)
    x_low = estimator_inputs(task, task.simulate(theta, low, rng))
    x_high = estimator_inputs(task, task.simulate(theta, high, rng))
    finite_low = np.isfinite(x_low.reshape(num, -1)).all(axis=1)
    finite_high = np.isfinite(x_high.reshape(num, -1)).all(axis=1)
    result: dict[str, Any] = {
        "seed": seed,
        "lf_hf": mutual_information(x_low, x_high, k, seed),
        "null": mutual_information(x_low[rng.permutation(num)], x_high, k, seed),
        "dropped": int(num - np.sum(finite_low & finite_high)),
        "theta_lf": [], "theta_hf": [], "theta_null": [],
    }
    for j in range(theta.shape[1]):
        result["theta_lf"].append(mutual_information(theta[:, j], x_low, k, seed))
        result["theta_hf"].append(mutual_information(theta[:, j], x_high, k, seed))
        shuffled = theta[rng.permutation(num), j]
        result["theta_null"].append(mutual_information(shuffled, x_high, k, seed))
    result["seconds"] = time.perf_counter() - start
    return result


def _cell(values: list[float]) -> str:
    """``mean +- std`` (sample std over repeats) of ``values``, in nats."""
    array = np.asarray(values, dtype=np.float64)
    spread = array.std(ddof=1) if array.size > 1 else float("nan")
    return f"{array.mean():.3f} ± {spread:.3f}"


def markdown_table(task: Task, repeats: list[dict[str, Any]]) -> str:
    """A markdown table of one task's ``repeats`` (outputs of :func:`measure`)."""
    names = tuple(task.prior.names)
    low, high = task.fidelities[0], task.fidelities[-1]
    used_low = task.parameters_used.get(low, names)
    used_high = task.parameters_used.get(high, names)
    lines = [
        "| quantity | uses | MI (nats) | null (nats) |",
        "|---|---|---|---|",
        f"| MI(x_LF; x_HF) | | {_cell([r['lf_hf'] for r in repeats])} "
        f"| {_cell([r['null'] for r in repeats])} |",
    ]
    for j, name in enumerate(names):
        null = _cell([r["theta_null"][j] for r in repeats])
        for label, key, used in (("LF", "theta_lf", used_low), ("HF", "theta_hf", used_high)):
            lines.append(
                f"| MI({name}; x_{label}) | {'yes' if name in used else 'no'} "
                f"| {_cell([r[key][j] for r in repeats])} | {null} |"
            )
    dropped = sum(r["dropped"] for r in repeats)
    seconds = sum(r["seconds"] for r in repeats)
    lines.append("")
    lines.append(
        f"{len(repeats)} repeats (seeds {', '.join(str(r['seed']) for r in repeats)}); "
        f"{dropped} rows with non-finite outputs dropped in total; {seconds:.1f} s."
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(
        description="Mutual information between fidelities (the transfer diagnostic), "
        "its null reference and per-parameter information, per benchmark task."
    )
    parser.add_argument("--tasks", nargs="+", default=list(TASK_NAMES), choices=TASK_NAMES,
                        help="tasks to measure (default: all)")
    parser.add_argument("--num", type=int, default=2000,
                        help="prior draws N per repeat (default 2000)")
    parser.add_argument("--k", type=int, default=5,
                        help="neighbours of the KSG estimator (default 5)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="one repeat per seed (default 0 1 2)")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write every repeat's numbers to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run every task and seed; print the tables (and write ``--json``)."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    print(f"Command: python benchmarks/transfer.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"Machine: {describe_machine()}")
    print(f"N = {args.num}, k = {args.k}\n")
    everything: dict[str, list[dict[str, Any]]] = {}
    for name in args.tasks:
        task = get_task(name)
        repeats = [measure(task, args.num, args.k, seed) for seed in args.seeds]
        everything[name] = repeats
        print(f"### {name}\n\n{markdown_table(task, repeats)}\n", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(
            {"num": args.num, "k": args.k, "results": everything}, indent=1))


if __name__ == "__main__":
    main()
