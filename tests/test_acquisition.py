"""Tests of mfask.acquisition (ensemble-variance scores, greedy selection with
exclusion of pending points) and of the acquisition rule of a sequential ask,
on constructed ensembles whose variance is known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from mfask.acquisition import (
    AcquisitionConfig,
    log_ensemble_variance,
    resolve_acquisition,
    select_acquisitions,
)
from mfask.errors import InvalidInputError
from mfask.priors import BoxUniform
from mfask.sequential import ProposalContext, SequentialConfig, SequentialState


# --------------------------------------------------------------- scores
def test_log_variance_matches_direct_variance() -> None:
    rng = np.random.default_rng(0)
    log_q = torch.from_numpy(rng.normal(-2.0, 1.0, size=(5, 400)))
    expected = np.log(np.exp(log_q.numpy()).var(axis=0, ddof=1))
    np.testing.assert_allclose(log_ensemble_variance(log_q).numpy(), expected, rtol=1e-10)


def test_log_variance_is_stable_far_outside_float_range() -> None:
    log_q = torch.tensor([[-2000.0, 800.0], [-2001.0, 801.0]], dtype=torch.float64)
    values = log_ensemble_variance(log_q)
    # Var of (e^a, e^(a-1)) = (e^a - e^(a-1))^2 / 2 -> 2a + log((1 - e^-1)^2 / 2)
    offset = math.log((1 - math.exp(-1)) ** 2 / 2)
    np.testing.assert_allclose(values.numpy(), [2 * -2000 + offset, 2 * 801 + offset], rtol=1e-12)


def test_log_variance_is_minus_inf_where_members_agree_or_vanish() -> None:
    log_q = torch.tensor([[-1.0, -math.inf, 0.0], [-1.0, -math.inf, -math.inf]], dtype=torch.float64)
    values = log_ensemble_variance(log_q)
    assert values[0] == -math.inf and values[1] == -math.inf
    assert values[2] == pytest.approx(math.log(0.5))  # Var(1, 0) = 1/2


@pytest.mark.parametrize("bad", [torch.zeros(1, 3), torch.zeros(3), torch.full((2, 2), math.nan)])
def test_log_variance_rejects_bad_input(bad: Tensor) -> None:
    with pytest.raises(InvalidInputError):
        log_ensemble_variance(bad)


# ------------------------------------------------------------- selection
def test_selection_without_exclusion_is_the_top_b() -> None:
    rng = np.random.default_rng(1)
    candidates = torch.from_numpy(rng.uniform(size=(300, 2)))
    scores = torch.from_numpy(rng.normal(size=300))
    picks = select_acquisitions(candidates, scores, 7, pending=None, scale=torch.ones(2), radius=0.0)
    assert picks.tolist() == np.argsort(-scores.numpy())[:7].tolist()


def test_selection_excludes_pending_neighbourhoods_and_earlier_picks() -> None:
    candidates = torch.tensor([[0.0, 0.0], [0.05, 0.0], [1.0, 0.0], [1.05, 0.0], [3.0, 3.0]],
                              dtype=torch.float64)
    scores = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    # the best candidate sits next to a pending point; the third's neighbour is
    # within the radius of the third once it is picked
    pending = torch.tensor([[0.01, 0.0]], dtype=torch.float64)
    picks = select_acquisitions(candidates, scores, 3, pending=pending, scale=torch.ones(2), radius=0.1)
    assert picks.tolist() == [2, 4]  # only two eligible candidates remain
    # the scale turns distances into units: radius 0.1 at scale 0.1 is 0.01
    picks = select_acquisitions(candidates, scores, 2, pending=pending,
                                scale=torch.full((2,), 0.1), radius=0.1)
    assert picks.tolist() == [1, 2]


def test_radius_zero_still_excludes_exact_pending_duplicates() -> None:
    candidates = torch.tensor([[0.5, 0.5], [0.2, 0.2]], dtype=torch.float64)
    scores = torch.tensor([2.0, 1.0], dtype=torch.float64)
    picks = select_acquisitions(candidates, scores, 1, pending=candidates[:1],
                                scale=torch.ones(2), radius=0.0)
    assert picks.tolist() == [1]


# ---------------------------------------------------------------- config
def test_config_validation_and_counts() -> None:
    with pytest.raises(InvalidInputError, match="at least 2 members"):
        AcquisitionConfig(ensemble_size=1)
    with pytest.raises(InvalidInputError):
        AcquisitionConfig(fraction=0.0)
    with pytest.raises(InvalidInputError):
        AcquisitionConfig(pool="everywhere")  # type: ignore[arg-type]
    config = AcquisitionConfig()
    assert [config.count(n) for n in (1, 2, 3, 10, 50)] == [0, 0, 1, 2, 10]
    assert AcquisitionConfig.from_dict(config.to_dict()) == config


def test_resolve_acquisition() -> None:
    default = AcquisitionConfig(fraction=0.3, ensemble_size=3)
    assert resolve_acquisition(None, default) is default
    assert resolve_acquisition(None, None) is None
    assert resolve_acquisition(False, default) is None
    assert resolve_acquisition(True, None) == AcquisitionConfig()
    assert resolve_acquisition(0.5, default) == AcquisitionConfig(fraction=0.5, ensemble_size=3)
    with pytest.raises(InvalidInputError):
        resolve_acquisition("yes", None)


# ------------------------------------------- the rule of a sequential ask
class GaussianEnsemble:
    """Members ``N(mean, (width_k)^2 I)`` in 2-D: known densities and samples."""

    def __init__(self, mean: list[float], widths: list[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float64)
        self.widths = torch.tensor(widths, dtype=torch.float64)

    @property
    def num_members(self) -> int:
        return int(self.widths.shape[0])

    def member_log_probs(self, theta: Tensor, x: Tensor) -> Tensor:
        r2 = ((theta - self.mean) ** 2).sum(dim=1)  # (n,)
        w = self.widths[:, None]
        return -0.5 * r2[None, :] / w**2 - 2 * torch.log(w) - math.log(2 * math.pi)

    def log_prob(self, theta: Tensor, x: Tensor) -> Tensor:
        return torch.logsumexp(self.member_log_probs(theta, x), dim=0) - math.log(self.num_members)

    def sample(self, num_samples: int, x: Tensor, generator: torch.Generator) -> Tensor:
        member = torch.randint(self.num_members, (num_samples,), generator=generator)
        noise = torch.randn(num_samples, 2, generator=generator, dtype=torch.float64)
        return (self.mean + noise * self.widths[member, None])[None]


def context_for(density: GaussianEnsemble, pending: np.ndarray, generator: torch.Generator,
                prior: BoxUniform) -> ProposalContext:
    return ProposalContext(
        prior=prior,
        counts=(100, 10),
        posterior_of=lambda level: (density, (1, 1)),
        pending=pending,
        generator=generator,
        stream_seed=lambda *keys: 1234 + sum(keys),
    )


def test_acquisitions_are_where_the_constructed_ensemble_disagrees_most() -> None:
    # Two members with the same mean and widths s and 2s: the variance of the
    # density, (q1 - q2)^2 / 2, is largest at the common mean.
    prior = BoxUniform([-3.0, -3.0], [3.0, 3.0])
    density = GaussianEnsemble([0.4, -0.2], [0.3, 0.6])
    state = SequentialState()
    state.start(np.zeros(1), SequentialConfig(threshold_samples=5000, quantile=1e-3))
    generator = torch.Generator().manual_seed(0)
    config = AcquisitionConfig(fraction=0.25, ensemble_size=2, pool_size=4000, exclusion_radius=0.0)
    theta, source = state.propose(40, config, context_for(density, np.zeros((0, 2)), generator, prior))
    chosen = source == 2
    assert chosen.sum() == 10 and (source[~chosen] == 1).all()
    scores = log_ensemble_variance(density.member_log_probs(torch.from_numpy(theta), None)).numpy()
    # every acquisition beats every truncated-prior draw of the same batch
    assert scores[chosen].min() > scores[~chosen].max()
    distance = np.linalg.norm(theta[chosen] - density.mean.numpy(), axis=1)
    assert distance.max() < 0.1  # close to the mean, the analytic maximiser
    assert np.median(np.linalg.norm(theta[~chosen] - density.mean.numpy(), axis=1)) > 0.3


def test_pending_acquisitions_are_not_asked_again() -> None:
    prior = BoxUniform([-3.0, -3.0], [3.0, 3.0])
    density = GaussianEnsemble([0.4, -0.2], [0.3, 0.6])
    state = SequentialState()
    state.start(np.zeros(1), SequentialConfig(threshold_samples=5000, quantile=1e-3))
    generator = torch.Generator().manual_seed(0)
    config = AcquisitionConfig(fraction=0.5, ensemble_size=2, pool_size=2000, exclusion_radius=0.25)
    first, source = state.propose(10, config, context_for(density, np.zeros((0, 2)), generator, prior))
    pending = first.copy()  # nothing told: all of the first batch is pending
    second, source2 = state.propose(10, config, context_for(density, pending, generator, prior))
    assert state.round == 1  # same model: the same round
    picked_first, picked_second = first[source == 2], second[source2 == 2]
    assert len(picked_second) == 5
    scale = state.current.scale.numpy()
    gaps = np.linalg.norm((picked_second[:, None, :] - pending[None, :, :]) / scale, axis=2)
    assert gaps.min() > 0.25
    within = np.linalg.norm((picked_second[:, None] - picked_second[None]) / scale, axis=2)
    assert within[~np.eye(5, dtype=bool)].min() > 0.25
    assert not np.isin(picked_second, picked_first).any()


def test_prior_pool_is_available() -> None:
    prior = BoxUniform([-3.0, -3.0], [3.0, 3.0])
    density = GaussianEnsemble([0.4, -0.2], [0.3, 0.6])
    state = SequentialState()
    state.start(np.zeros(1), SequentialConfig(threshold_samples=5000, quantile=1e-3))
    config = AcquisitionConfig(fraction=0.5, ensemble_size=2, pool="prior", pool_size=20000,
                               exclusion_radius=0.0)
    theta, source = state.propose(
        8, config, context_for(density, np.zeros((0, 2)), torch.Generator().manual_seed(3), prior)
    )
    assert (source == 2).sum() == 4
    assert np.linalg.norm(theta[source == 2] - density.mean.numpy(), axis=1).max() < 0.15
