"""Tests of sequential (A-)(MF-)TSNPE: the HPD threshold at x_o, the round
rules, set_observation, persistence mid-sequence, and (slow) the accuracy of
sequential MF-TSNPE on a linear-Gaussian task with an analytic posterior.

The test bed: ``theta ~ N(0, I_2)``, high fidelity ``x = A theta + s eps``
(``x`` in R^3), low fidelity ``x = 1.2 A theta + 0.5 + s eps`` (biased). The
posterior at ``x_o`` is Gaussian with covariance ``(I + A^T A / s^2)^-1`` and
mean ``cov A^T x_o / s^2``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from torch import Tensor
from torch.distributions import Normal

import mfask
from mfask import FlowConfig, TrainingConfig
from mfask.acquisition import AcquisitionConfig
from mfask.errors import InvalidInputError
from mfask.priors import BoxUniform, IndependentPrior
from mfask.sequential import (
    ProposalContext,
    SequentialConfig,
    SequentialState,
    SequentialWarning,
    threshold_at_observation,
)

SMALL_FLOW = FlowConfig(hidden_features=20, num_transforms=2)
QUICK_TRAINING = TrainingConfig(max_epochs=8, stop_after_epochs=3)


# ------------------------------------------------------------ test bed
class LinearGaussian:
    """The linear-Gaussian task with a biased low fidelity (see module docstring)."""

    A = np.array([[1.0, 0.5], [0.2, 1.0], [0.7, -0.4]])

    def __init__(self, noise: float = 0.3) -> None:
        self.noise = noise
        self.prior = IndependentPrior([Normal(0.0, 1.0), Normal(0.0, 1.0)], names=["a", "b"])

    def simulate(self, theta: np.ndarray, fidelity: str, rng: np.random.Generator) -> np.ndarray:
        eps = self.noise * rng.standard_normal((theta.shape[0], 3))
        if fidelity == "high":
            return theta @ self.A.T + eps
        return theta @ (1.2 * self.A).T + 0.5 + eps

    def posterior(self, x_o: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        precision = np.eye(2) + self.A.T @ self.A / self.noise**2
        cov = np.linalg.inv(precision)
        return cov @ self.A.T @ x_o / self.noise**2, cov


class Gaussian:
    """An analytic "posterior" ``N(mean, cov)`` with the density interface."""

    def __init__(self, mean: list[float], cov: list[list[float]]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float64)
        self.cov = torch.tensor(cov, dtype=torch.float64)
        self.dist = torch.distributions.MultivariateNormal(self.mean, self.cov)
        self.dim = self.mean.shape[0]
        self.log_norm = float(self.dist.log_prob(self.mean))

    num_members = 1

    def sample(self, num_samples: int, x: Tensor, generator: torch.Generator) -> Tensor:
        noise = torch.randn(num_samples, self.dim, generator=generator, dtype=torch.float64)
        return (self.mean + noise @ torch.linalg.cholesky(self.cov).T)[None]

    def log_prob(self, theta: Tensor, x: Tensor) -> Tensor:
        return self.dist.log_prob(theta)

    def member_log_probs(self, theta: Tensor, x: Tensor) -> Tensor:
        return self.log_prob(theta, x)[None]


# ------------------------------------------------------------ threshold
@pytest.mark.parametrize("quantile, num_samples", [(1e-2, 20_000), (1e-4, 1_000_000)])
def test_threshold_leaves_out_the_quantile_of_a_gaussian(quantile: float, num_samples: int) -> None:
    # under N(mu, Sigma), log q = c - chi2_d / 2, so {log q >= tau} leaves out
    # the mass P(chi2_d > 2 (c - tau)), which the threshold must put at `quantile`
    density = Gaussian([0.5, -1.0, 2.0], [[1.0, 0.6, 0.0], [0.6, 2.0, -0.3], [0.0, -0.3, 0.5]])
    generator = torch.Generator().manual_seed(7)
    tau, samples, log_q = threshold_at_observation(
        density, torch.zeros(1, 1), num_samples, quantile, generator
    )
    assert samples.shape == (num_samples, 3) and log_q.shape == (num_samples,)
    left_out = stats.chi2.sf(2.0 * (density.log_norm - tau), df=3)
    # the empirical quantile's relative error is about 1 / sqrt(m * quantile)
    assert left_out == pytest.approx(quantile, rel=4.0 / math.sqrt(num_samples * quantile))
    exact = density.log_norm - stats.chi2.ppf(1.0 - quantile, df=3) / 2.0
    assert tau == pytest.approx(exact, abs=0.25)


# ---------------------------------------------------------- round rules
class FakeModels:
    """A ProposalContext factory whose data counts and model identity the test sets."""

    def __init__(self) -> None:
        self.prior = BoxUniform([-4.0, -4.0], [4.0, 4.0])
        self.density = Gaussian([0.3, -0.2], [[0.1, 0.02], [0.02, 0.05]])
        self.counts = (50, 0)
        self.fits = (1, 0)
        self.asked_levels: list[int] = []
        self.generator = torch.Generator().manual_seed(0)

    def context(self) -> ProposalContext:
        def posterior_of(level: int) -> tuple[Gaussian, tuple[int, ...]]:
            self.asked_levels.append(level)
            return self.density, self.fits[: level + 1]

        return ProposalContext(self.prior, self.counts, posterior_of, np.zeros((0, 2)),
                               self.generator, lambda *keys: 99 + sum(keys))


def test_rounds_follow_the_proposal_model() -> None:
    models = FakeModels()
    state = SequentialState()
    state.start(np.zeros(3), SequentialConfig(threshold_samples=4000, quantile=1e-3))
    assert state.round == 0 and state.info().rule is None
    _, source = state.propose(5, None, models.context())
    assert state.round == 1 and (source == 0).all() and state.info().rule == "prior"
    models.counts = (80, 1)  # one high-fidelity result: still nothing to fit
    state.propose(5, None, models.context())
    assert state.round == 1 and models.asked_levels == []
    models.counts, models.fits = (80, 3), (2, 1)
    theta, source = state.propose(20, None, models.context())
    info = state.info()
    assert state.round == 2 and (source == 1).all() and info.rule == "truncated"
    assert info.region_level == 1 and info.trained_on == (80, 3) and info.threshold is not None
    # every truncated draw lies in the region
    log_q = models.density.log_prob(torch.from_numpy(theta), None)
    assert (log_q >= info.threshold).all()
    state.propose(5, None, models.context())  # nothing changed: same round
    assert state.round == 2
    models.fits = (2, 2)  # a refit (new data, late tells, fit(force=True))
    state.propose(5, None, models.context())
    assert state.round == 3 and state.info().num_rounds_with_truncation == 2


def test_first_round_from_the_lower_fidelity_when_asked() -> None:
    models = FakeModels()
    state = SequentialState()
    state.start(np.zeros(3), SequentialConfig(threshold_samples=4000, quantile=1e-3, first_round="lower"))
    _, source = state.propose(5, None, models.context())
    assert (source == 1).all() and state.info().region_level == 0 and models.asked_levels == [0]
    models.counts, models.fits = (50, 2), (1, 1)
    state.propose(5, None, models.context())
    assert state.round == 2 and state.info().region_level == 1


def test_sequential_config_validation() -> None:
    with pytest.raises(InvalidInputError):
        SequentialConfig(quantile=0.0)
    with pytest.raises(InvalidInputError):
        SequentialConfig(first_round="low")  # type: ignore[arg-type]
    config = SequentialConfig(acquisition=AcquisitionConfig(fraction=0.4))
    assert SequentialConfig.from_dict(config.to_dict()) == config


# ------------------------------------------------ the ask/tell object
def small_posterior(task: LinearGaussian, fidelities: tuple[str, ...] = ("low", "high"),
                    seed: int = 0) -> mfask.MultiFidelityPosterior:
    return mfask.MultiFidelityPosterior(
        task.prior, fidelities, seed=seed, flow=SMALL_FLOW, training=QUICK_TRAINING
    )


def test_set_observation_validates_against_x_shape() -> None:
    task, rng = LinearGaussian(), np.random.default_rng(0)
    post = small_posterior(task)
    batch = post.ask("low", 5)
    post.tell(batch, task.simulate(batch.theta, "low", rng))
    with pytest.raises(InvalidInputError, match=r"\(3,\)"):
        post.set_observation(np.zeros(4))
    with pytest.raises(InvalidInputError):
        post.set_observation([0.0, math.nan, 1.0])
    assert post.observation is None
    post.set_observation(np.ones((1, 3)))  # a leading batch axis of one is fine
    assert post.observation.shape == (3,) and post.round_info.observation_set
    post.observation[0] = 5.0  # a copy
    assert post.observation[0] == 1.0
    with pytest.raises(InvalidInputError, match="highest fidelity"):
        post.ask("low", 3, acquisition=True)
    post.clear_observation()
    assert post.observation is None and post.round == 0
    with pytest.raises(InvalidInputError, match="set_observation"):
        post.ask("high", 3, acquisition=0.2)


def test_observation_before_any_tell_fixes_x_shape() -> None:
    task = LinearGaussian()
    post = small_posterior(task, ("high",))
    post.set_observation(np.zeros(3))
    assert post.x_shape == (3,)
    batch = post.ask("high", 4)
    assert batch.round == 1 and set(batch.source) == {"prior"}
    with pytest.raises(InvalidInputError):
        post.tell(batch, np.zeros((4, 2)))


def test_new_observation_restarts_rounds_and_warns_about_truncated_data() -> None:
    task, rng = LinearGaussian(), np.random.default_rng(1)
    post = small_posterior(task, ("high",))
    x_o = task.simulate(np.array([[0.3, -0.4]]), "high", rng)[0]
    post.set_observation(x_o, threshold_samples=4000, quantile=1e-3)
    batch = post.ask("high", 30)
    post.tell(batch, task.simulate(batch.theta, "high", rng))
    batch = post.ask("high", 10)  # plain TSNPE: one fidelity
    assert batch.round == 2 and set(batch.source) == {"truncated"}
    post.set_observation(x_o, threshold_samples=4000, quantile=1e-3)  # the same: kept
    assert post.round == 2
    with pytest.warns(SequentialWarning, match="earlier observation"):
        post.set_observation(x_o + 1.0)
    assert post.round == 0 and post.round_info.rule is None


def run_rounds_then_save(tmp_path: Path, acquisition: AcquisitionConfig | None):
    """LF data, round 1 (prior), round 2 partially told, then saved; returns
    the object, the path and the untold tickets of round 2."""
    task, rng = LinearGaussian(), np.random.default_rng(2)
    post = small_posterior(task)
    batch = post.ask("low", 100)
    post.tell(batch, task.simulate(batch.theta, "low", rng))
    x_o = task.simulate(np.array([[0.3, -0.4]]), "high", rng)[0]
    post.set_observation(x_o, threshold_samples=2000, quantile=1e-3, acquisition=acquisition)
    first = post.ask("high", 20)
    assert first.round == 1 and set(first.source) == {"prior"}
    post.tell(first, task.simulate(first.theta, "high", rng))
    second = post.ask("high", 10)
    assert second.round == 2 and post.round_info.rule == "truncated"
    post.tell(second.ticket_ids[:6], task.simulate(second.theta[:6], "high", rng))  # partial
    path = tmp_path / "state.npz"
    post.save(path)
    return post, path, second, task, rng


def test_save_load_mid_sequence_gives_the_same_next_asks(tmp_path: Path) -> None:
    post, path, second, task, rng = run_rounds_then_save(tmp_path, None)
    loaded = mfask.MultiFidelityPosterior.load(path)
    assert loaded.round_info == post.round_info and loaded.round == 2
    np.testing.assert_array_equal(loaded.observation, post.observation)
    for _ in range(2):  # a new round (refit on the partial tell), then the same round
        a, b = post.ask("high", 7), loaded.ask("high", 7)
        np.testing.assert_array_equal(a.theta, b.theta)
        assert a.source == b.source and a.round == b.round == 3
    # the rest of round 2 arrives late; the next ask starts round 4 in both
    for obj in (post, loaded):
        obj.tell(second.ticket_ids[6:], task.simulate(second.theta[6:], "high", np.random.default_rng(5)))
    a, b = post.ask("high", 5), loaded.ask("high", 5)
    np.testing.assert_array_equal(a.theta, b.theta)
    assert a.round == b.round == 4 and post.round_info.trained_on == (100, 30)


def test_acquisition_ensemble_persists_and_avoids_pending_points(tmp_path: Path) -> None:
    config = AcquisitionConfig(fraction=0.5, ensemble_size=2, pool_size=500)
    post, path, second, task, rng = run_rounds_then_save(tmp_path, config)
    # the ensemble was built for round 2: two members at the highest level,
    # one at the lower level
    assert [len(level.members) for level in post._levels] == [1, 2]
    # the transfer guard trained as many HF-only members; a blend keeps both
    choice = post.transfer_choice("high")
    assert post.posterior("high").num_members == (4 if choice.chosen == "blend" else 2)
    assert "acquisition" in second.source
    loaded = mfask.MultiFidelityPosterior.load(path)
    assert loaded.round_info.ensemble_size == 2
    a, b = post.ask("high", 6), loaded.ask("high", 6)
    np.testing.assert_array_equal(a.theta, b.theta)
    assert a.source == b.source and a.source.count("acquisition") == 3
    # no tell in between: the next acquisitions differ from the pending ones
    c = post.ask("high", 6)
    assert c.round == a.round
    picked = c.theta[np.array(c.source) == "acquisition"]
    pending = post._ledger.theta[post.pending("high")]
    pending = pending[~np.isin(post.pending("high"), c.ticket_ids)]
    assert not (picked[:, None, :] == pending[None]).all(axis=2).any()
    off = post.ask("high", 4, acquisition=False)
    assert set(off.source) == {"truncated"}


# ------------------------------------------------------------- accuracy
def run_sequential(task: LinearGaussian, x_o: np.ndarray, fidelities: tuple[str, ...],
                   num_low: int, rounds: list[int], seed: int) -> np.ndarray:
    """(MF-)TSNPE through ask/tell; returns 2000 posterior samples at x_o."""
    rng = np.random.default_rng(seed)
    post = mfask.MultiFidelityPosterior(task.prior, fidelities, seed=seed, flow=SMALL_FLOW)
    if "low" in fidelities:
        batch = post.ask("low", num_low)
        post.tell(batch, task.simulate(batch.theta, "low", rng))
    post.set_observation(x_o)
    for size in rounds:
        batch = post.ask("high", size)
        post.tell(batch, task.simulate(batch.theta, "high", rng))
    return post.sample(2000, x_o)


def c2st_score(reference: np.ndarray, samples: np.ndarray) -> float:
    try:
        from mfask.diagnostics import c2st
    except ImportError:  # fall back to scikit-learn directly
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.model_selection import cross_val_score

        data = np.concatenate([reference, samples])
        labels = np.r_[np.zeros(len(reference)), np.ones(len(samples))]
        mean, std = reference.mean(axis=0), reference.std(axis=0)
        return float(cross_val_score(RandomForestClassifier(random_state=0),
                                     (data - mean) / std, labels, cv=5).mean())
    return float(c2st(reference, samples, seed=0))


@pytest.mark.slow
def test_sequential_mf_tsnpe_matches_the_analytic_posterior() -> None:
    task = LinearGaussian()
    x_o = task.simulate(np.array([[0.6, -0.8]]), "high", np.random.default_rng(123))[0]
    mean, cov = task.posterior(x_o)
    reference = np.random.default_rng(0).multivariate_normal(mean, cov, size=2000)
    rounds = [50, 50, 50]  # 150 high-fidelity simulations in three rounds
    started = time.perf_counter()
    mf = c2st_score(reference, run_sequential(task, x_o, ("low", "high"), 5000, rounds, seed=0))
    mf_seconds = time.perf_counter() - started
    plain = c2st_score(reference, run_sequential(task, x_o, ("high",), 0, rounds, seed=0))
    print(f"\nC2ST with {sum(rounds)} high-fidelity simulations: MF-TSNPE {mf:.3f} "
          f"({mf_seconds:.0f} s), TSNPE {plain:.3f}")
    assert mf <= 0.6
