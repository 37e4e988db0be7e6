"""mfask's NPE against sbi's on sbibm's tasks: C2ST to the reference posteriors.

For each sbibm task, simulation budget and seed, one data set is drawn from the
task's prior and simulator (sbibm 1.1.0), and every method trains on exactly
those simulations:

* ``sbi-nsf``: ``sbi.inference.NPE(density_estimator="nsf")`` with sbi's defaults;
* ``sbi-maf``: ``sbi.inference.NPE()``, sbi's default estimator (a MAF);
* ``mfask``: ``MultiFidelityPosterior(prior, seed=seed)`` with mfask's defaults;
* ``mfask-<space>-<standardisation>[-sbi]``: mfask with one setting changed,
  named in ``--methods`` (keyword sets of ``MultiFidelityPosterior`` in
  :data:`VARIANTS`), for the experiments of ``docs/conditional_standardization.md``.

Each posterior is scored at sbibm's observations 1..``--observations`` by C2ST
(random forest, :func:`mfask.diagnostics.c2st`) of ``--num-samples`` of its
samples against as many of sbibm's reference samples. Training wall-clock and
CPU seconds are recorded beside. Rows go to ``docs/benchmarks/results/sbibm.jsonl``
(one per task, budget, seed, method; ``--resume`` skips rows already there) and
the table to ``docs/benchmarks/sbibm.md``.

sbibm is a benchmark extra, never a dependency of mfask::

    pip install sbi && pip install --no-deps sbibm==1.1.0 && pip install pyro-ppl pandas

Tasks: two_moons, gaussian_linear, gaussian_linear_uniform, gaussian_mixture,
slcp, slcp_distractors and bernoulli_glm simulate with sbibm; sir and
lotka_volterra, which sbibm simulates through Julia's diffeqtorch, with
mfask's numpy tasks of the same models (checked against sbibm's stored
observations in ``tests/test_benchmark_tasks.py``), scored against sbibm's
stored references. mfask's priors are independent: bernoulli_glm's
correlated Gaussian prior is given to mfask as ``theta = m + L u`` with
``u ~ N(0, I)`` (``L`` its Cholesky factor), and mfask's samples of ``u`` are
mapped back to ``theta``; sbi trains on ``theta`` with the task's prior.
Simulations that fail (NaN) are left out for every method alike.

Usage (from the repository root)::

    python benchmarks/sbibm_suite.py [--tasks two_moons slcp] [--budgets 1000 10000]
        [--seeds 3] [--observations 10] [--num-samples 2000] [--threads 1]
        [--methods sbi-nsf sbi-maf mfask ...] [--resume] [--report-only]
        [--results rows.jsonl] [--report table.md]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

import mfask
import mfask.benchmarks.tasks
from mfask.benchmarks.machine import describe_machine
from mfask.diagnostics import c2st
from mfask.estimator import FlowConfig

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "benchmarks" / "results" / "sbibm.jsonl"
REPORT = ROOT / "docs" / "benchmarks" / "sbibm.md"
TASKS = ("two_moons", "gaussian_linear", "gaussian_linear_uniform", "gaussian_mixture",
         "slcp", "slcp_distractors", "bernoulli_glm", "sir", "lotka_volterra")
#: sbibm tasks whose simulator needs Julia: simulated by mfask's numpy task of the same model
MFASK_SIMULATED = {"sir": "sir", "lotka_volterra": "lotka_volterra"}
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


@dataclass
class SuiteTask:
    """One task of the suite, as both libraries see it.

    mfask learns over ``u`` with prior :attr:`prior`; ``to_theta`` maps its
    samples ``(n, d)`` to the task's parameters (the identity except for a
    correlated Gaussian prior, which mfask's independent priors express as
    ``theta = L u`` with ``u ~ N(0, I)``). sbi learns over ``theta`` with the
    task's own prior :attr:`sbi_prior`.
    """

    name: str
    prior: mfask.Prior
    sbi_prior: Any
    draw: Callable[[int, int], tuple[np.ndarray, np.ndarray]]  # (budget, seed) -> theta, x
    observation: Callable[[int], np.ndarray]  # number (1..10) -> x_o (p,)
    reference: Callable[[int], np.ndarray]  # number -> reference samples (10000, d)
    to_theta: Callable[[np.ndarray], np.ndarray] = staticmethod(lambda u: u)  # type: ignore[assignment]
    from_theta: Callable[[np.ndarray], np.ndarray] = staticmethod(lambda theta: theta)  # type: ignore[assignment]


@contextlib.contextmanager
def _sbibm_pickles() -> Iterator[None]:
    """slcp_distractors' stored observations and its simulator's mixture are
    pickled objects of sbibm's own package files, which torch >= 2.6 only loads
    with ``weights_only=False``; allowed inside this block only."""
    original = torch.load
    torch.load = lambda *a, **k: original(*a, **{**k, "weights_only": False})  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.load = original  # type: ignore[assignment]


def _load_sbibm(name: str) -> Any:
    """The sbibm task, its stored observations loaded once."""
    import sbibm

    with _sbibm_pickles():
        task = sbibm.get_task(name)
        task.get_observation(1)
    return task


def _drop_failed(theta: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose simulation failed (NaN) are left out for every method alike."""
    kept = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    return theta[kept], x[kept]


def load_task(name: str) -> SuiteTask:
    """The suite's adapter for sbibm task ``name`` (see :data:`TASKS`)."""
    if name in MFASK_SIMULATED:
        return _mfask_simulated_task(name)
    task = _load_sbibm(name)

    def draw(budget: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        torch.manual_seed(10_000 * seed + 7)
        theta = task.get_prior()(num_samples=budget)
        with _sbibm_pickles():
            x = task.get_simulator()(theta)
        return _drop_failed(theta.double().numpy(), x.double().numpy())

    def observation(number: int) -> np.ndarray:
        with _sbibm_pickles():
            return task.get_observation(number).double().numpy().reshape(-1)

    def reference(number: int) -> np.ndarray:
        with _sbibm_pickles():
            return task.get_reference_posterior_samples(number).double().numpy()

    dist = task.get_prior_dist()
    common = {"name": name, "sbi_prior": dist, "draw": draw, "observation": observation,
              "reference": reference}
    if isinstance(dist, torch.distributions.MultivariateNormal):
        cov = dist.covariance_matrix.double()
        loc = dist.loc.double()
        if torch.allclose(cov, torch.diag(torch.diagonal(cov))):
            scale = torch.diagonal(cov).sqrt()
            prior = mfask.IndependentPrior([torch.distributions.Normal(m, s) for m, s in zip(loc, scale)])
            return SuiteTask(prior=prior, **common)
        # correlated: theta = loc + L u with u ~ N(0, I)
        factor = torch.linalg.cholesky(cov).numpy()
        centre = loc.numpy()
        prior = mfask.IndependentPrior([torch.distributions.Normal(0.0, 1.0)] * len(centre))
        return SuiteTask(prior=prior, to_theta=lambda u: centre + u @ factor.T,
                         from_theta=lambda theta: np.linalg.solve(factor, (theta - centre).T).T,
                         **common)
    base = dist.base_dist
    if isinstance(base, torch.distributions.Uniform):
        return SuiteTask(prior=mfask.BoxUniform(low=base.low.double(), high=base.high.double()), **common)
    raise ValueError(f"{name}: prior {type(base).__name__} not mapped")


def _mfask_simulated_task(name: str) -> SuiteTask:
    """sbibm's sir and lotka_volterra simulate through Julia (diffeqtorch);
    mfask's numpy tasks implement the same models (checked against sbibm's
    stored observations in tests/test_benchmark_tasks.py), and sbibm's stored
    observations and reference samples are read from its package files."""
    import pandas
    import sbibm

    task = mfask.benchmarks.tasks.get_task(MFASK_SIMULATED[name])
    files = Path(sbibm.__file__).parent / "tasks" / name / "files"

    def read(number: int, file: str) -> np.ndarray:
        return pandas.read_csv(files / f"num_observation_{number}" / file).to_numpy(dtype=np.float64)

    def draw(budget: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(10_000 * seed + 7)
        theta = task.sample_prior(budget, rng)
        return _drop_failed(theta, task.simulate(theta, "high", rng))

    marginals = [torch.distributions.LogNormal(m.loc.float(), m.scale.float())
                 for m in task.prior.marginals]
    sbi_prior = torch.distributions.Independent(
        torch.distributions.LogNormal(torch.stack([m.loc for m in marginals]),
                                      torch.stack([m.scale for m in marginals])), 1)
    return SuiteTask(name=name, prior=task.prior, sbi_prior=sbi_prior, draw=draw,
                     observation=lambda number: read(number, "observation.csv").reshape(-1),
                     reference=lambda number: read(number, "reference_posterior_samples.csv.bz2"))


def train_mfask(task: SuiteTask, theta: np.ndarray, x: np.ndarray, seed: int,
                options: dict[str, Any]) -> Sampler:
    post = mfask.MultiFidelityPosterior(task.prior, seed=seed, **options)
    post.tell(task.from_theta(theta), x, "high", unasked="prior")
    post.fit()
    return lambda x_o, n: task.to_theta(post.sample(n, x=x_o))


def train_sbi(task: SuiteTask, theta: np.ndarray, x: np.ndarray, seed: int, estimator: str) -> Sampler:
    from sbi.inference import NPE

    torch.manual_seed(seed)
    inference = NPE(prior=task.sbi_prior, density_estimator=estimator, show_progress_bars=False)
    inference.append_simulations(torch.as_tensor(theta, dtype=torch.float32),
                                 torch.as_tensor(x, dtype=torch.float32))
    net = inference.train()
    posterior = inference.build_posterior(net)

    def sample(x_o: np.ndarray, n: int) -> np.ndarray:
        condition = torch.as_tensor(x_o, dtype=torch.float32)
        return posterior.sample((n,), x=condition, show_progress_bars=False).double().numpy()

    return sample


def trainer(method: str) -> Callable[[SuiteTask, np.ndarray, np.ndarray, int], Sampler]:
    if method == "sbi-nsf":
        return lambda t, th, x, s: train_sbi(t, th, x, s, "nsf")
    if method == "sbi-maf":
        return lambda t, th, x, s: train_sbi(t, th, x, s, "maf")
    options = VARIANTS[method]
    return lambda t, th, x, s: train_mfask(t, th, x, s, options)


def run_one(task: SuiteTask, budget: int, seed: int, method: str, data: tuple[np.ndarray, np.ndarray],
            observations: int, num_samples: int) -> dict[str, Any]:
    theta, x = data
    wall, cpu = time.perf_counter(), time.process_time()
    sampler = trainer(method)(task, theta, x, seed)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    scores = []
    for number in range(1, observations + 1):
        reference = task.reference(number)[:num_samples]
        samples = sampler(task.observation(number), num_samples)
        scores.append(c2st(reference, samples, seed=number))
    return {"task": task.name, "budget": budget, "seed": seed, "method": method,
            "c2st": scores, "train_seconds": wall, "train_cpu_seconds": cpu,
            "num_simulations": len(theta)}


def read_rows(path: Path = RESULTS) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def mean_and_se(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=float)
    se = float(array.std(ddof=1) / math.sqrt(array.size)) if array.size > 1 else math.nan
    return float(array.mean()), se


def render(rows: list[dict[str, Any]], command: str) -> str:
    """The table: per task and budget, C2ST mean +- standard error over the
    seeds x observations values, and median training seconds; a cell pooling
    fewer seeds than its row's column names its count."""
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
        seeds = {m: len([r for r in rows if (r["task"], r["budget"], r["method"]) == (task, budget, m)])
                 for m in methods}
        most = max(seeds.values())
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
            shape = f"{most} x {len(found[0]['c2st'])}"
            fewer = f" [{len(found)} seed]" if len(found) < most else ""
            entries.append(f"{mean:.3f} +- {se:.3f} ({seconds:.0f} s){fewer}")
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
    parser.add_argument("--results", type=Path, default=RESULTS, help="rows file (JSON Lines)")
    parser.add_argument("--report", type=Path, default=REPORT, help="markdown table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    command = "python benchmarks/sbibm_suite.py " + " ".join(
        a for a in __import__("sys").argv[1:] if a not in ("--resume", "--report-only"))
    if not args.report_only:
        done = {(r["task"], r["budget"], r["seed"], r["method"]) for r in read_rows(args.results)} if args.resume else set()
        args.results.parent.mkdir(parents=True, exist_ok=True)
        for budget in args.budgets:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                for name in args.tasks:
                    task = load_task(name)
                    todo = [m for m in args.methods if (name, budget, seed, m) not in done]
                    if not todo:
                        continue
                    data = task.draw(budget, seed)
                    for method in todo:
                        row = run_one(task, budget, seed, method, data, args.observations, args.num_samples)
                        with args.results.open("a") as handle:
                            handle.write(json.dumps(row) + "\n")
                        mean, _ = mean_and_se(row["c2st"])
                        print(f"{name} {budget} seed {seed} {method}: c2st {mean:.3f} "
                              f"({row['train_seconds']:.0f} s)", flush=True)
    args.report.write_text(render(read_rows(args.results), command))


if __name__ == "__main__":
    main()
