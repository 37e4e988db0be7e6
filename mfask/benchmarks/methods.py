"""The methods a benchmark compares, each run exactly as a user would run it.

Every neural method drives :class:`~mfask.posterior.MultiFidelityPosterior`
only through its public API: ``ask`` a batch, simulate what it returned with
the task's simulator, ``tell`` the outputs back, then ``fit``/``sample``/
``log_prob``. Nothing reaches into the object's internals.

A method is called as ``method(task, x_o, budget, seed, config)`` and returns
a :class:`PosteriorEstimate` for the ``m`` observations ``x_o (m, *x_shape)``;
the runner scores it. The methods never see the true parameters.

Methods (:data:`METHODS`):

* ``npe``: amortized NPE on ``budget.high`` high-fidelity (HF) simulations.
* ``mf-npe``: amortized MF-NPE: ``budget.low`` simulations at every lower
  fidelity (pre-training, low to high), then ``budget.high`` HF simulations
  (fine-tuning).
* ``tsnpe``: truncated sequential NPE at each observation: ``budget.high``
  HF simulations split evenly over ``config.num_rounds`` rounds, the first
  from the prior, later ones from the prior truncated to the current
  posterior's highest-density region (``set_observation`` + asks).
* ``mf-tsnpe``: the same, fine-tuned from an LF pre-training on
  ``budget.low`` simulations per lower fidelity (one per seed, shared by the
  observations: pre-training sees no observation); round one is MF-NPE.
* ``a-mf-tsnpe``: ``mf-tsnpe`` with 20 % of each truncated round chosen by
  acquisition (variance across an ensemble of ``config.ensemble_size`` flows).
* ``mf-abc``: multi-fidelity ABC (:mod:`mfask.benchmarks.mf_abc`), run per
  observation: an LF pool of ``budget.low`` and exactly ``budget.high`` HF runs.
* ``sbi-npe``: the ``sbi`` package's NPE (neural spline flow of the same size,
  same training settings) trained on the very HF simulations ``npe`` uses;
  an outside reference, available when ``sbi`` is installed.

Budgets: amortized methods spend their budget once for all observations;
per-observation methods (the sequential ones and ``mf-abc``) spend the HF
budget at each observation, as in the paper. The LF pre-training of the MF
neural methods (``mf-npe``, ``mf-tsnpe``, ``a-mf-tsnpe``) is done once per
(task, LF budget, seed, settings) and reused through a
:class:`~mfask.benchmarks.pretraining.PretrainingCache` (save and load, as a
user would); a job that reuses it still reports its full cost in
``info["pretraining"]``. :attr:`PosteriorEstimate.simulations` records the
simulator runs the estimate rests on, summed over observations (the shared
LF runs counted once).

Same data across methods: the HF simulations of ``npe``, ``mf-npe`` and
``sbi-npe`` at the same ``seed`` are identical. The posterior is seeded with
``seed`` and asked for the HF batch first (so the parameters are the first
draws of the same stream), and each fidelity is simulated with a generator
derived from ``(seed, fidelity index)`` only.
"""

from __future__ import annotations

import abc
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

from mfask.benchmarks.mf_abc import MFABCResult, mf_abc
from mfask.benchmarks.pretraining import PretrainingCache, PretrainingRecord, pretraining_key
from mfask.benchmarks.tasks.base import Task
from mfask.errors import InvalidInputError
from mfask.estimator import FlowConfig
from mfask.fidelity import Fidelity
from mfask.parameter_space import PARAMETER_SPACES, ParameterSpaceName
from mfask.posterior import MultiFidelityPosterior
from mfask.training import TrainingConfig

__all__ = [
    "Budget",
    "MethodConfig",
    "PosteriorEstimate",
    "AmortizedEstimate",
    "WeightedSampleEstimate",
    "Method",
    "METHODS",
    "get_method",
    "simulation_rng",
    "embedding_for",
    "npe",
    "mf_npe",
    "tsnpe",
    "mf_tsnpe",
    "a_mf_tsnpe",
    "round_sizes",
    "pretrain_low_fidelities",
    "pretrained_state",
    "PerObservationEstimate",
    "mf_abc_method",
    "sbi_npe",
]

# stream keys for numpy generators derived from a job seed
_SIMULATION_STREAM = 1
_ABC_STREAM = 2
_RESAMPLE_STREAM = 3
_PRETRAIN_PRIOR_STREAM = 4


@dataclass(frozen=True)
class Budget:
    """Simulator runs a method may make.

    Attributes:
        low: runs at each lower fidelity (0 for single-fidelity methods).
        high: runs at the high fidelity.
    """

    low: int
    high: int

    def __post_init__(self) -> None:
        if not (isinstance(self.low, int) and self.low >= 0):
            raise InvalidInputError(f"the low-fidelity budget must be an integer >= 0; got {self.low!r}")
        if not (isinstance(self.high, int) and self.high >= 2):
            raise InvalidInputError(f"the high-fidelity budget must be an integer >= 2; got {self.high!r}")


@dataclass(frozen=True)
class MethodConfig:
    """Settings shared by the methods (part of a benchmark job's identity).

    Attributes:
        flow: the flow architecture of the neural methods.
        training: their training loop.
        num_rounds: rounds of the sequential methods (the HF budget is split
            evenly across them).
        ensemble_size: flows in the acquisition ensemble of A-MF-TSNPE.
        abc_quantile: acceptance quantile of MF-ABC for both thresholds.
        parameter_space: the space the neural methods' flows learn in
            (``MultiFidelityPosterior(parameter_space=...)``).
        transfer_guard: whether transferred levels choose between the
            fine-tuned and an HF-only network
            (``MultiFidelityPosterior(transfer_guard=...)``; it has no effect
            on single-level methods, whose jobs record it off).
        device: where the neural methods' networks train (``"cpu"``,
            ``"cuda"``, ``"cuda:N"``, ``"mps"``; see :mod:`mfask.device`).
            Part of a job's identity, since results differ between devices
            by floating-point rounding.
    """

    flow: FlowConfig = FlowConfig()
    training: TrainingConfig = TrainingConfig()
    num_rounds: int = 4
    ensemble_size: int = 5
    abc_quantile: float = 0.1
    parameter_space: ParameterSpaceName = "support"
    transfer_guard: bool = True
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.parameter_space not in PARAMETER_SPACES:
            raise InvalidInputError(
                f"parameter_space must be one of {', '.join(PARAMETER_SPACES)}; "
                f"got {self.parameter_space!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form. Settings added after results were first
        published appear only when they differ from the behaviour before them
        (``parameter_space="unbounded"``, ``transfer_guard=False``), so the keys of jobs (and
        pre-trainings) recorded before them stay valid; :meth:`from_dict`
        reads an absent setting as that behaviour."""
        values = asdict(self)
        values["flow"] = self.flow.to_dict()
        if values["parameter_space"] == "unbounded":
            del values["parameter_space"]
        if not values["transfer_guard"]:
            del values["transfer_guard"]
        if values["device"] == "cpu":
            del values["device"]
        return values

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MethodConfig":
        """Inverse of :meth:`to_dict`."""
        values = dict(data)
        values["flow"] = FlowConfig.from_dict(values.get("flow", {}))
        values.setdefault("parameter_space", "unbounded")  # absent: recorded before the option
        values.setdefault("transfer_guard", False)  # likewise
        values["training"] = TrainingConfig(**values.get("training", {}))
        return cls(**values)


class PosteriorEstimate(abc.ABC):
    """A fitted posterior for ``m`` observations, as the runner scores it.

    Attributes:
        simulations: simulator runs made per fidelity name (all
            observations together).
        info: method-specific extras (JSON-compatible), e.g. ABC thresholds.
    """

    def __init__(self, simulations: dict[str, int], info: dict[str, Any] | None = None) -> None:
        self.simulations = dict(simulations)
        self.info = dict(info or {})

    @abc.abstractmethod
    def sample(self, num_samples: int) -> np.ndarray:
        """Posterior samples ``(m, num_samples, d)``, one set per observation."""

    def log_prob(self, theta: np.ndarray) -> np.ndarray | None:
        """``log q(theta_i | x_o_i)`` ``(m,)`` for ``theta (m, d)``; ``None``
        when the method has no density (e.g. ABC)."""
        return None


class AmortizedEstimate(PosteriorEstimate):
    """One :class:`MultiFidelityPosterior` evaluated at every observation."""

    def __init__(self, posterior: MultiFidelityPosterior, x_o: np.ndarray, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.posterior = posterior
        self.x_o = x_o

    def sample(self, num_samples: int) -> np.ndarray:
        return self.posterior.sample_batched(num_samples, self.x_o)

    def log_prob(self, theta: np.ndarray) -> np.ndarray:
        return self.posterior.log_prob_batched(np.asarray(theta)[:, None, :], self.x_o)[:, 0]


class PerObservationEstimate(PosteriorEstimate):
    """One :class:`MultiFidelityPosterior` per observation (sequential methods)."""

    def __init__(self, posteriors: Sequence[MultiFidelityPosterior], x_o: np.ndarray, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.posteriors = list(posteriors)
        self.x_o = x_o

    def sample(self, num_samples: int) -> np.ndarray:
        return np.stack([post.sample(num_samples, x) for post, x in zip(self.posteriors, self.x_o)])

    def log_prob(self, theta: np.ndarray) -> np.ndarray:
        theta = np.asarray(theta)
        return np.array([float(post.log_prob(theta[i:i + 1], x)[0])
                         for i, (post, x) in enumerate(zip(self.posteriors, self.x_o))])


class WeightedSampleEstimate(PosteriorEstimate):
    """Weighted particles per observation (no density), e.g. from ABC;
    ``sample(n)`` resamples each observation's particles by weight.

    Arguments:
        results: one :class:`~mfask.benchmarks.mf_abc.MFABCResult` per observation.
        rng: drives the resampling.
    """

    def __init__(self, results: Sequence[MFABCResult], rng: np.random.Generator, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.results = list(results)
        self.rng = rng

    def sample(self, num_samples: int) -> np.ndarray:
        return np.stack([result.resample(num_samples, self.rng) for result in self.results])


class Method(Protocol):
    """``method(task, x_o (m, *x_shape), budget, seed, config, cache=None) -> PosteriorEstimate``.

    ``cache`` (a :class:`~mfask.benchmarks.pretraining.PretrainingCache`)
    lets the MF neural methods reuse one LF pre-training per (task, LF budget,
    seed, settings); others ignore it."""

    def __call__(
        self, task: Task, x_o: np.ndarray, budget: Budget, seed: int, config: MethodConfig,
        cache: PretrainingCache | None = None,
    ) -> PosteriorEstimate: ...


def simulation_rng(seed: int, task: Task, fidelity: str, *keys: int) -> np.random.Generator:
    """The generator that simulates ``fidelity`` in job ``seed`` (``keys``
    tell apart e.g. observations of a per-observation method)."""
    return np.random.default_rng([int(seed), _SIMULATION_STREAM, task.fidelities.index(fidelity), *keys])


def _fidelity(task: Task, name: str) -> Fidelity:
    used = task.parameters_used.get(name)
    return Fidelity(name, tuple(used) if used is not None else None)


def embedding_for(task: Task) -> torch.nn.Module | None:
    """The embedding net a user would pick for the task's outputs: the task's
    own ``embedding_net()`` if it has one, an
    :class:`~mfask.embedding_nets.ImageEmbedding` for image outputs
    ``(H, W)``, else none (vectors go to the flow directly)."""
    factory: Callable[[], torch.nn.Module] | None = getattr(task, "embedding_net", None)
    if factory is not None:
        return factory()
    if len(task.x_shape) == 2:
        from mfask.embedding_nets import ImageEmbedding

        return ImageEmbedding(task.x_shape)
    return None


def _new_posterior(task: Task, fidelities: Sequence[str], seed: int, config: MethodConfig,
                   **kwargs: Any) -> MultiFidelityPosterior:
    """A posterior over ``fidelities`` (low to high) as a user would build it."""
    return MultiFidelityPosterior(
        task.prior,
        [_fidelity(task, name) for name in fidelities],
        seed=int(seed),
        flow=config.flow,
        training=config.training,
        embedding_net=embedding_for(task),
        parameter_space=config.parameter_space,
        transfer_guard=config.transfer_guard,
        verbose=False,  # the benchmark runner reports progress per job
        device=config.device,
        **kwargs,
    )


def _ask_simulate_tell(
    posterior: MultiFidelityPosterior, task: Task, fidelity: str, n: int, rng: np.random.Generator
) -> int:
    """Ask ``n`` parameters at ``fidelity``, simulate them, tell the outputs;
    returns ``n`` (the runs made)."""
    batch = posterior.ask(fidelity, n)
    posterior.tell(batch, task.simulate(np.array(batch.theta), fidelity, rng))
    return n


def pretrain_low_fidelities(task: Task, low: int, seed: int,
                            config: MethodConfig) -> tuple[MultiFidelityPosterior, PretrainingRecord]:
    """A posterior over all of ``task``'s fidelities, trained on ``low``
    simulations at each lower fidelity and nothing else.

    The LF parameters are prior draws from a generator of their own (derived
    from ``seed`` and the fidelity), told with ``unasked="prior"`` as a user
    tells an archive of earlier runs: the posterior's own ask stream stays
    untouched, so its first HF asks are the same draws as a fresh one-fidelity
    posterior's (the HF data of ``npe`` and ``mf-npe`` coincide). Returns the
    posterior and what it cost (:class:`PretrainingRecord`).
    """
    posterior = _new_posterior(task, task.fidelities, seed, config)
    simulations: dict[str, int] = {}
    simulation_seconds = 0.0
    for name in task.fidelities[:-1]:
        started = time.perf_counter()
        theta = task.sample_prior(low, np.random.default_rng(
            [int(seed), _PRETRAIN_PRIOR_STREAM, task.fidelities.index(name)]))
        x = task.simulate(theta, name, simulation_rng(seed, task, name))
        simulation_seconds += time.perf_counter() - started
        posterior.tell(theta, x, name, unasked="prior")
        simulations[name] = int(low)
    started = time.perf_counter()
    posterior.fit(task.fidelities[-2])
    training_seconds = time.perf_counter() - started
    return posterior, PretrainingRecord(simulation_seconds, training_seconds, simulations)


def pretrained_state(task: Task, low: int, seed: int, config: MethodConfig,
                     cache: PretrainingCache) -> tuple[str, PretrainingRecord]:
    """The saved state of :func:`pretrain_low_fidelities` in ``cache``
    (built there on first use) and its cost record."""
    # the settings pre-training depends on, in MethodConfig's key-stable form
    settings = {name: value for name, value in config.to_dict().items()
                if name in ("flow", "training", "parameter_space", "device")}
    key = pretraining_key(task.name, task.settings, low, seed, settings)

    def build() -> tuple[MultiFidelityPosterior, PretrainingRecord]:
        from mfask.benchmarks.memory import peak_memory_mb, reset_peak_memory

        scope = reset_peak_memory()
        posterior, record = pretrain_low_fidelities(task, low, seed, config)
        return posterior, replace(record, peak_rss_mb=peak_memory_mb(scope))

    path, record = cache.get_or_build(key, build)
    return str(path), record


def _load_pretrained(task: Task, path: str, device: str) -> MultiFidelityPosterior:
    """A fresh copy of a pre-trained posterior, as saved in the cache."""
    return MultiFidelityPosterior.load(path, prior=task.prior, embedding_net=embedding_for(task),
                                       device=device)


class _JobCache:
    """The cache a method uses: the runner's, or a temporary one for the call."""

    def __init__(self, cache: PretrainingCache | None) -> None:
        self._temporary = None if cache is not None else tempfile.TemporaryDirectory(prefix="mfask-pretrain-")
        self.cache = cache if cache is not None else PretrainingCache(self._temporary.name)

    def __enter__(self) -> PretrainingCache:
        return self.cache

    def __exit__(self, *exc: Any) -> None:
        if self._temporary is not None:
            self._temporary.cleanup()


def _pretraining_info(record: PretrainingRecord) -> dict[str, Any]:
    return {"pretraining": record.to_dict()}


def _amortized(task: Task, x_o: np.ndarray, budget: Budget, seed: int, config: MethodConfig,
               multi_fidelity: bool, cache: PretrainingCache | None) -> AmortizedEstimate:
    """Shared body of NPE (HF only) and MF-NPE (LF pre-training first)."""
    high = task.fidelities[-1]
    info: dict[str, Any] = {}
    simulations: dict[str, int] = {}
    if multi_fidelity:
        with _JobCache(cache) as job_cache:
            path, record = pretrained_state(task, budget.low, seed, config, job_cache)
            posterior = _load_pretrained(task, path, config.device)
        simulations.update(record.simulations)
        info.update(_pretraining_info(record))
    else:
        posterior = _new_posterior(task, [high], seed, config)
    simulations[high] = _ask_simulate_tell(posterior, task, high, budget.high,
                                           simulation_rng(seed, task, high))
    posterior.fit()
    return AmortizedEstimate(posterior, x_o, simulations=simulations, info=info)


def npe(task: Task, x_o: np.ndarray, budget: Budget, seed: int, config: MethodConfig,
        cache: PretrainingCache | None = None) -> AmortizedEstimate:
    """Amortized NPE on ``budget.high`` HF simulations (``budget.low`` unused)."""
    return _amortized(task, x_o, budget, seed, config, False, None)


def mf_npe(task: Task, x_o: np.ndarray, budget: Budget, seed: int, config: MethodConfig,
           cache: PretrainingCache | None = None) -> AmortizedEstimate:
    """Amortized MF-NPE: ``budget.low`` runs at each lower fidelity
    (pre-training, through ``cache`` if given), then ``budget.high`` HF runs;
    each level starts from the weights below."""
    if budget.low < 2:
        raise InvalidInputError(f"mf-npe needs a low-fidelity budget >= 2; got {budget.low}")
    return _amortized(task, x_o, budget, seed, config, True, cache)


def round_sizes(total: int, rounds: int) -> list[int]:
    """Split an HF budget ``total`` over ``rounds`` as evenly as possible
    (earlier rounds take the remainder); every round needs 2 simulations."""
    if not isinstance(rounds, int) or rounds < 1:
        raise InvalidInputError(f"the number of rounds must be a positive integer; got {rounds!r}")
    if total < 2 * rounds:
        raise InvalidInputError(
            f"{rounds} rounds need a high-fidelity budget of at least {2 * rounds}; got {total}"
        )
    base, extra = divmod(total, rounds)
    return [base + (1 if r < extra else 0) for r in range(rounds)]


def _sequential(task: Task, x_o: np.ndarray, budget: Budget, seed: int, config: MethodConfig,
                multi_fidelity: bool, acquisition: bool,
                cache: PretrainingCache | None) -> PerObservationEstimate:
    """Shared body of TSNPE, MF-TSNPE and A-MF-TSNPE: for each observation a
    posterior (fresh for TSNPE; for the MF methods a copy of the one LF
    pre-training of this seed, :func:`pretrained_state`, since pre-training
    sees no observation), then ``set_observation`` and ``config.num_rounds``
    HF rounds of ask, simulate, tell (the first from the prior, the rest from
    the truncated prior, plus acquisitions if ``acquisition``).

    The MF methods' copies share the posterior's seed, so their first-round
    HF parameters coincide across the observations of a seed (the outputs do
    not: each observation simulates with its own generator)."""
    high = task.fidelities[-1]
    sizes = round_sizes(budget.high, config.num_rounds)
    choice: Any = None
    if acquisition:
        from mfask.acquisition import AcquisitionConfig

        choice = AcquisitionConfig(ensemble_size=config.ensemble_size)
    posteriors, simulations = [], {high: 0}
    info: dict[str, Any] = {"rounds": [], "region_prior_mass": []}
    with _JobCache(cache if multi_fidelity else None) as job_cache:
        if multi_fidelity:
            path, record = pretrained_state(task, budget.low, seed, config, job_cache)
            simulations.update(record.simulations)
            info.update(_pretraining_info(record))
        for i, observation in enumerate(np.asarray(x_o)):
            if multi_fidelity:
                posterior = _load_pretrained(task, path, config.device)
            else:
                sub_seed = int(np.random.SeedSequence([int(seed), i]).generate_state(1)[0])
                posterior = _new_posterior(task, [high], sub_seed, config)
            posterior.set_observation(observation, acquisition=choice)
            rng = simulation_rng(seed, task, high, i)
            for size in sizes:
                simulations[high] += _ask_simulate_tell(posterior, task, high, size, rng)
            posterior.fit()
            state = posterior.round_info
            info["rounds"].append(state.round)
            info["region_prior_mass"].append(state.region_prior_mass)
            posteriors.append(posterior)
    return PerObservationEstimate(posteriors, x_o, simulations=simulations, info=info)


def tsnpe(task: Task, x_o: np.ndarray, budget: Budget, seed: int, config: MethodConfig,
          cache: PretrainingCache | None = None) -> PerObservationEstimate:
    """TSNPE per observation: ``budget.high`` HF runs split over
    ``config.num_rounds`` rounds (``budget.low`` unused)."""
    return _sequential(task, x_o, budget, seed, config, False, False, None)


def mf_tsnpe(task: Task, x_o: np.ndarray, budget: Budget, seed: int, config: MethodConfig,
             cache: PretrainingCache | None = None) -> PerObservationEstimate:
    """MF-TSNPE per observation: the LF pre-training of ``budget.low`` runs
    at each lower fidelity (once, shared), then the HF rounds of
    :func:`tsnpe` fine-tuned from the LF network."""
    if budget.low < 2:
        raise InvalidInputError(f"mf-tsnpe needs a low-fidelity budget >= 2; got {budget.low}")
    return _sequential(task, x_o, budget, seed, config, True, False, cache)


def a_mf_tsnpe(task: Task, x_o: np.ndarray, budget: Budget, seed: int, config: MethodConfig,
               cache: PretrainingCache | None = None) -> PerObservationEstimate:
    """A-MF-TSNPE: :func:`mf_tsnpe` with 20 % of each truncated round chosen
    by the variance of a ``config.ensemble_size``-member ensemble."""
    if budget.low < 2:
        raise InvalidInputError(f"a-mf-tsnpe needs a low-fidelity budget >= 2; got {budget.low}")
    return _sequential(task, x_o, budget, seed, config, True, True, cache)


def mf_abc_method(task: Task, x_o: np.ndarray, budget: Budget, seed: int,
                  config: MethodConfig, cache: PretrainingCache | None = None) -> WeightedSampleEstimate:
    """MF-ABC at each observation with the task's lowest and highest fidelity.

    ``budget.low`` is the LF pool per observation (more LF runs are made if
    the pool runs out before ``budget.high`` HF runs); ``budget.high`` is the
    exact number of HF runs per observation.
    """
    if budget.low < 1:
        raise InvalidInputError(f"mf-abc needs a low-fidelity budget >= 1; got {budget.low}")
    low, high = task.fidelities[0], task.fidelities[-1]
    results, info = [], {"eps_low": [], "eps_high": [], "effective_sample_size": []}
    simulations = {low: 0, high: 0}
    for i, observation in enumerate(np.asarray(x_o)):
        rng_low = simulation_rng(seed, task, low, i)
        rng_high = simulation_rng(seed, task, high, i)
        rng_prior = np.random.default_rng([int(seed), _ABC_STREAM, i, 0])
        result = mf_abc(
            lambda theta: task.simulate(theta, low, rng_low),
            lambda theta: task.simulate(theta, high, rng_high),
            lambda n: task.sample_prior(n, rng_prior),
            observation,
            num_low=budget.low,
            num_high=budget.high,
            rng=np.random.default_rng([int(seed), _ABC_STREAM, i, 1]),
            quantile=config.abc_quantile,
        )
        results.append(result)
        simulations[low] += result.num_low
        simulations[high] += result.num_high
        info["eps_low"].append(result.eps_low)
        info["eps_high"].append(result.eps_high)
        info["effective_sample_size"].append(result.effective_sample_size)
    rng = np.random.default_rng([int(seed), _RESAMPLE_STREAM])
    return WeightedSampleEstimate(results, rng, simulations=simulations, info=info)


# ----------------------------------------------------------------- sbi (optional)
class _SbiEstimate(PosteriorEstimate):
    """An ``sbi`` posterior evaluated at each observation in turn."""

    def __init__(self, posterior: Any, x_o: np.ndarray, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.posterior = posterior
        self.x_o = torch.as_tensor(np.asarray(x_o), dtype=torch.float32)

    def sample(self, num_samples: int) -> np.ndarray:
        return np.stack([
            self.posterior.sample((num_samples,), x=x, show_progress_bars=False).double().numpy()
            for x in self.x_o
        ])

    def log_prob(self, theta: np.ndarray) -> np.ndarray:
        theta_t = torch.as_tensor(np.asarray(theta), dtype=torch.float32)
        return np.array([
            float(self.posterior.log_prob(theta_t[i:i + 1], x=x)[0]) for i, x in enumerate(self.x_o)
        ])


class _NoTracker:
    """An ``sbi`` tracker that records nothing (the default one writes
    TensorBoard logs into ``./sbi-logs``)."""

    log_dir = None

    def log_metric(self, name: str, value: float, step: int | None = None) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def add_figure(self, name: str, figure: Any, step: int | None = None) -> None:
        pass

    def flush(self) -> None:
        pass


def _sbi_prior(task: Task) -> torch.distributions.Distribution:
    """The task's prior as a torch distribution ``sbi`` accepts (float32)."""
    from sbi.utils import BoxUniform, MultipleIndependent

    marginals = task.prior.marginals
    if all(isinstance(m, torch.distributions.Uniform) for m in marginals):
        low, high = task.prior.bounds
        return BoxUniform(low.float(), high.float())
    cast = []
    for marginal in marginals:
        parameters = {name: torch.as_tensor(getattr(marginal, name), dtype=torch.float32).reshape(1)
                      for name in marginal.arg_constraints}
        cast.append(type(marginal)(**parameters))
    return MultipleIndependent(cast, validate_args=False)


def sbi_npe(task: Task, x_o: np.ndarray, budget: Budget, seed: int, config: MethodConfig,
            cache: PretrainingCache | None = None) -> PosteriorEstimate:
    """``sbi``'s NPE trained on the HF simulations ``npe`` uses at this seed.

    The data are produced through a one-fidelity :class:`MultiFidelityPosterior`
    exactly as in :func:`npe` and read back with ``data()``; ``sbi`` then
    trains a neural spline flow with the same width, number of transforms and
    bins and the same training settings (its own z-scoring and prior handling).
    """
    try:
        from sbi.inference import NPE
        from sbi.neural_nets import posterior_nn
    except ImportError as error:
        raise ImportError("the sbi-npe method needs the optional package sbi") from error
    high = task.fidelities[-1]
    producer = _new_posterior(task, [high], seed, config)
    simulations = {high: _ask_simulate_tell(producer, task, high, budget.high,
                                            simulation_rng(seed, task, high))}
    theta, x = producer.data(high)
    torch.manual_seed(int(seed))
    embedding = embedding_for(task)
    builder = posterior_nn(
        model="nsf",
        hidden_features=config.flow.hidden_features,
        num_transforms=config.flow.num_transforms,
        num_bins=config.flow.num_bins,
        **({"embedding_net": embedding} if embedding is not None else {}),
    )
    inference = NPE(prior=_sbi_prior(task), density_estimator=builder, tracker=_NoTracker(),
                    show_progress_bars=False)
    inference.append_simulations(
        torch.as_tensor(theta, dtype=torch.float32), torch.as_tensor(x, dtype=torch.float32)
    )
    training = config.training
    estimator = inference.train(
        training_batch_size=training.batch_size,
        learning_rate=training.learning_rate,
        validation_fraction=training.validation_fraction,
        stop_after_epochs=training.stop_after_epochs,
        max_num_epochs=training.max_epochs,
        clip_max_norm=training.clip_max_norm,
    )
    posterior = inference.build_posterior(estimator)
    return _SbiEstimate(posterior, x_o, simulations=simulations)


@dataclass(frozen=True)
class _Entry:
    """A registered method: the callable and what its budget means."""

    run: Method
    uses_low: bool
    per_observation: bool
    pretrains: bool = False
    description: str = field(default="")


#: the methods by name; ``uses_low`` says whether ``Budget.low`` matters and
#: ``per_observation`` whether the budget is spent per observation;
#: ``pretrains`` whether it uses the shared LF pre-training.
METHODS: dict[str, _Entry] = {
    "npe": _Entry(npe, uses_low=False, per_observation=False,
                  description="amortized NPE on the HF budget"),
    "mf-npe": _Entry(mf_npe, uses_low=True, per_observation=False, pretrains=True,
                     description="LF pre-training, HF fine-tuning, amortized"),
    "tsnpe": _Entry(tsnpe, uses_low=False, per_observation=True,
                    description="truncated sequential NPE, HF budget split over rounds"),
    "mf-tsnpe": _Entry(mf_tsnpe, uses_low=True, per_observation=True, pretrains=True,
                       description="LF pre-training, then TSNPE rounds at HF"),
    "a-mf-tsnpe": _Entry(a_mf_tsnpe, uses_low=True, per_observation=True, pretrains=True,
                         description="MF-TSNPE with ensemble-variance acquisition"),
    "mf-abc": _Entry(mf_abc_method, uses_low=True, per_observation=True,
                     description="multi-fidelity rejection ABC (Prescott and Baker)"),
    "sbi-npe": _Entry(sbi_npe, uses_low=False, per_observation=False,
                      description="sbi's NPE on the same HF data as npe (outside reference)"),
}


def get_method(name: str) -> _Entry:
    """The registered method ``name`` (a key of :data:`METHODS`)."""
    try:
        return METHODS[name]
    except KeyError:
        raise InvalidInputError(f"unknown method {name!r}; available: {', '.join(METHODS)}") from None
