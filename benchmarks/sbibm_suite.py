"""mfask's NPE against sbi's on sbibm's tasks: C2ST to the reference posteriors.

For each sbibm task, simulation budget and seed, one data set is drawn from the
task's prior and simulator (sbibm 1.1.0), and every method trains on exactly
those simulations:

* ``sbi-nsf``: ``sbi.inference.NPE(density_estimator="nsf")`` with sbi's defaults;
* ``sbi-maf``: ``sbi.inference.NPE()``, sbi's default estimator (a MAF);
* ``mfask``: ``MultiFidelityPosterior(prior, seed=seed)`` with mfask's defaults;
* further mfask variants named on the command line (``--variants``), each a
  keyword set of ``MultiFidelityPosterior`` (see ``VARIANTS``).

Each posterior is scored at sbibm's observations 1..``--observations`` by C2ST
(random forest, :func:`mfask.diagnostics.c2st`) of ``--num-samples`` of its
samples against as many of sbibm's reference samples. Training wall-clock and
CPU seconds are recorded beside. Rows go to ``docs/benchmarks/results/sbibm.jsonl``
(one per task, budget, seed, method; ``--resume`` skips rows already there) and
the table to ``docs/benchmarks/sbibm.md``.

sbibm is a benchmark extra, never a dependency of mfask::

    pip install sbi && pip install --no-deps sbibm==1.1.0 && pip install pyro-ppl pandas

Tasks: those whose simulator runs without Julia and whose prior is a product
of independent marginals (mfask's priors are independent): two_moons,
gaussian_linear (its prior covariance is diagonal), gaussian_linear_uniform,
gaussian_mixture, slcp, slcp_distractors. bernoulli_glm (correlated Gaussian
prior), sir and lotka_volterra (sbibm simulates them through Julia's
diffeqtorch) are not run here.

Usage (from the repository root)::

    python benchmarks/sbibm_suite.py [--tasks two_moons slcp] [--budgets 1000 10000]
        [--seeds 3] [--observations 10] [--num-samples 2000] [--threads 1]
        [--methods sbi-nsf sbi-maf mfask] [--variants ...] [--resume] [--report-only]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import mfask
from mfask.benchmarks.machine import describe_machine
from mfask.diagnostics import c2st
from mfask.estimator import FlowConfig

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "benchmarks" / "results" / "sbibm.jsonl"
REPORT = ROOT / "docs" / "benchmarks" / "sbibm.md"
TASKS = ("two_moons", "gaussian_linear", "gaussian_linear_uniform", "gaussian_mixture",
         "slcp", "slcp_distractors")
#: mfask variants by name: keyword arguments of MultiFidelityPosterior
VARIANTS: dict[str, dict[str, Any]] = {
    "mfask": {},
    "mfask-unbounded-marginal": {"parameter_space": "unbounded",
                                 "flow": FlowConfig(conditional_standardization=False)},
    "mfask-support-marginal": {"parameter_space": "support",
                               "flow": FlowConfig(conditional_standardization=False)},
    "mfask-support-linear": {"parameter_space": "support",
                             "flow": FlowConfig(conditional_standardization=True)},
    "mfask-support-linear-sbi": {"parameter_space": "support",
                                 "flow": FlowConfig(conditional_standardization=True, layout="sbi")},
    "mfask-unbounded-linear": {"parameter_space": "unbounded",
                               "flow": FlowConfig(conditional_standardization=True)},
}
Sampler = Callable[[np.ndarray, int], np.ndarray]


def load_task(name: str) -> Any:
    """The sbibm task; slcp_distractors' stored observations are pickled
    tensors that torch >= 2.6 only loads with ``weights_only=False``."""
    import sbibm

    original = torch.load
    torch.load = lambda *a, **k: original(*a, **{**k, "weights_only": False})  # type: ignore[assignment]
    try:
        task = sbibm.get_task(name)
        task.get_observation(1)
    finally:
        torch.load = original  # type: ignore[assignment]
    return task


def mfask_prior(task: Any) -> mfask.Prior:
    """The task's prior as independent mfask marginals."""
    dist = task.get_prior_dist()
    if isinstance(dist, torch.distributions.MultivariateNormal):
        cov = dist.covariance_matrix.double()
        if not torch.allclose(cov, torch.diag(torch.diagonal(cov))):
            raise ValueError(f"{task.name}: correlated Gaussian prior; mfask priors are independent")
        scale = torch.diagonal(cov).sqrt()
        marginals = [torch.distributions.Normal(m, s) for m, s in zip(dist.loc.double(), scale)]
        return mfask.IndependentPrior(marginals)
    base = dist.base_dist
    if isinstance(base, torch.distributions.Uniform):
        return mfask.BoxUniform(low=base.low.double(), high=base.high.double())
    raise ValueError(f"{task.name}: prior {type(base).__name__} not mapped")


def train_mfask(task: Any, theta: np.ndarray, x: np.ndarray, seed: int,
                options: dict[str, Any]) -> Sampler:
    post = mfask.MultiFidelityPosterior(mfask_prior(task), seed=seed, **options)
    post.tell(theta, x, "high", unasked="prior")
    post.fit()
    return lambda x_o, n: post.sample(n, x=x_o)


def train_sbi(task: Any, theta: np.ndarray, x: np.ndarray, seed: int, estimator: str) -> Sampler:
    from sbi.inference import NPE

    torch.manual_seed(seed)
    inference = NPE(prior=task.get_prior_dist(), density_estimator=estimator,
                    show_progress_bars=False)
    inference.append_simulations(torch.as_tensor(theta, dtype=torch.float32),
                                 torch.as_tensor(x, dtype=torch.float32))
    net = inference.train()
    posterior = inference.build_posterior(net)

    def sample(x_o: np.ndarray, n: int) -> np.ndarray:
        condition = torch.as_tensor(x_o, dtype=torch.float32)
        return posterior.sample((n,), x=condition, show_progress_bars=False).double().numpy()

    return sample


def trainer(method: str) -> Callable[[Any, np.ndarray, np.ndarray, int], Sampler]:
    if method == "sbi-nsf":
        return lambda t, th, x, s: train_sbi(t, th, x, s, "nsf")
    if method == "sbi-maf":
        return lambda t, th, x, s: train_sbi(t, th, x, s, "maf")
    options = VARIANTS[method]
    return lambda t, th, x, s: train_mfask(t, th, x, s, options)


def simulate(task: Any, budget: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``budget`` prior draws and their simulations, reproducible per (task, seed)."""
    torch.manual_seed(10_000 * seed + 7)
    theta = task.get_prior()(num_samples=budget)
    x = task.get_simulator()(theta)
    return theta.double().numpy(), x.double().numpy()


def run_one(task: Any, budget: int, seed: int, method: str, data: tuple[np.ndarray, np.ndarray],
            observations: int, num_samples: int) -> dict[str, Any]:
    theta, x = data
    wall, cpu = time.perf_counter(), time.process_time()
    sampler = trainer(method)(task, theta, x, seed)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    scores = []
    for number in range(1, observations + 1):
        x_o = task.get_observation(number).double().numpy().reshape(-1)
        reference = task.get_reference_posterior_samples(number).double().numpy()[:num_samples]
        samples = sampler(x_o, num_samples)
        scores.append(c2st(reference, samples, seed=number))
    return {"task": task.name, "budget": budget, "seed": seed, "method": method,
            "c2st": scores, "train_seconds": wall, "train_cpu_seconds": cpu}


def read_rows() -> list[dict[str, Any]]:
    if not RESULTS.exists():
        return []
    return [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]


def mean_and_se(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=float)
    se = float(array.std(ddof=1) / math.sqrt(array.size)) if array.size > 1 else math.nan
    return float(array.mean()), se


def render(rows: list[dict[str, Any]], command: str) -> str:
    """The table: per task and budget, C2ST mean +- standard error over seeds x
    observations (per-seed means enter the SE over seeds when there are >= 2
    seeds; otherwise the SE is over observations), and median training seconds."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cells = sorted({(r["task"], r["budget"]) for r in rows}, key=lambda c: (TASKS.index(c[0]) if c[0] in TASKS else 99, c[1]))
    lines = ["# sbibm: mfask NPE vs sbi NPE", "",
             "C2ST (random forest, 5 folds; 0.5 is indistinguishable from the reference "
             "posterior) against sbibm's reference samples: mean +- standard error over "
             "seeds x observations, with median training seconds in brackets. Every method "
             "of a row trained on the same simulations.", "",
             f"Command: `{command}`", "", f"Machine: {describe_machine()}", "",
             "| task | sims | seeds x obs | " + " | ".join(methods) + " |",
             "|---|---|---|" + "---|" * len(methods)]
    for task, budget in cells:
        row = [task, str(budget)]
        shape = ""
        entries = []
        for method in methods:
            found = [r for r in rows if (r["task"], r["budget"], r["method"]) == (task, budget, method)]
            if not found:
                entries.append("")
                continue
            values = [v for r in found for v in r["c2st"]]
            mean, se = mean_and_se(values)
            seconds = float(np.median([r["train_seconds"] for r in found]))
            shape = f"{len(found)} x {len(found[0]['c2st'])}"
            entries.append(f"{mean:.3f} +- {se:.3f} ({seconds:.0f} s)")
        lines.append("| " + " | ".join(row + [shape] + entries) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--budgets", nargs="+", type=int, default=[1000, 10_000])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--observations", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=["sbi-nsf", "sbi-maf", "mfask"])
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    command = "python benchmarks/sbibm_suite.py " + " ".join(
        a for a in __import__("sys").argv[1:] if a not in ("--resume", "--report-only"))
    if not args.report_only:
        done = {(r["task"], r["budget"], r["seed"], r["method"]) for r in read_rows()} if args.resume else set()
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        for budget in args.budgets:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                for name in args.tasks:
                    task = load_task(name)
                    todo = [m for m in args.methods if (name, budget, seed, m) not in done]
                    if not todo:
                        continue
                    data = simulate(task, budget, seed)
                    for method in todo:
                        row = run_one(task, budget, seed, method, data, args.observations, args.num_samples)
                        with RESULTS.open("a") as handle:
                            handle.write(json.dumps(row) + "\n")
                        mean, _ = mean_and_se(row["c2st"])
                        print(f"{name} {budget} seed {seed} {method}: c2st {mean:.3f} "
                              f"({row['train_seconds']:.0f} s)", flush=True)
    REPORT.write_text(render(read_rows(), command))


if __name__ == "__main__":
    main()
