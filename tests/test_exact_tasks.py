"""The benchmark tasks with exact references (the informative box family and
two moons): their reference samples are draws from the true posterior.

Checked by simulation-based calibration against the task's own simulator
(the rank of the true parameter among reference draws is uniform when, and
only when, the references are the posterior on average over the prior), and
by the closed-form likelihood and moments the tasks expose.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mfask.benchmarks.tasks import InformativeBox, TwoMoons, get_task
from mfask.errors import InvalidInputError

TASKS = [
    pytest.param(lambda: InformativeBox(dim=2, fraction=1e-2), id="informative-linear-2d"),
    pytest.param(lambda: InformativeBox(dim=3, fraction=1e-4, link="cubic"), id="informative-cubic-3d"),
    pytest.param(lambda: InformativeBox(dim=10, fraction=1e-6), id="informative-linear-10d"),
    pytest.param(TwoMoons, id="two-moons"),
]


@pytest.mark.parametrize("make_task", TASKS)
def test_reference_ranks_of_the_truth_are_uniform(make_task) -> None:
    """300 truths, 99 reference draws each: the rank of the truth is uniform on
    0..99 per axis and for the log-likelihood at x (which the axes miss when
    only a crescent's width is wrong); chi-square on 10 bins, Bonferroni at 1e-3."""
    task = make_task()
    truths, observations = task.observations(300, seed=1)
    rows = []
    for i, (truth, x) in enumerate(zip(truths, observations)):
        draws = task.reference_posterior(x, 99, seed=i)
        below_likelihood = task.log_likelihood(draws, x) < task.log_likelihood(truth[None], x)[0]
        rows.append(np.r_[(draws < truth).sum(axis=0), below_likelihood.sum()])
    ranks = np.stack(rows)
    for axis in range(ranks.shape[1]):
        counts = np.bincount(ranks[:, axis] // 10, minlength=10)
        assert stats.chisquare(counts).pvalue > 1e-3 / ranks.shape[1], (axis, counts)


@pytest.mark.parametrize("make_task", TASKS)
def test_references_have_finite_likelihood_and_stay_in_the_prior(make_task) -> None:
    task = make_task()
    _, observations = task.observations(3, seed=2)
    for x_o in observations:
        samples = task.reference_posterior(x_o, 2000, seed=3)
        assert samples.shape == (2000, len(task.prior.names))
        assert np.isfinite(task.log_likelihood(samples, x_o)).all()
        assert (np.abs(samples) <= 1).all()


def test_informative_moments_match_its_references() -> None:
    """The grid moments agree with 20000 exact draws within 4 Monte Carlo
    standard errors (mean: sd/sqrt(n); sd: sd/sqrt(2n))."""
    task = InformativeBox(dim=3, fraction=1e-3, link="cubic")
    _, observations = task.observations(4, seed=4)
    n = 20_000
    for x_o in observations:
        mean, sd = task.posterior_moments(x_o)
        samples = task.reference_posterior(x_o, n, seed=5)
        assert np.all(np.abs(samples.mean(axis=0) - mean) < 4 * sd / np.sqrt(n))
        assert np.all(np.abs(samples.std(axis=0) - sd) < 4 * sd / np.sqrt(2 * n) + 1e-3 * sd)
        assert task.share_within(samples, x_o, num_sds=5) > 0.999


def test_informative_noise_follows_the_requested_fraction() -> None:
    for dim, fraction in [(2, 1e-2), (5, 1e-4), (10, 1e-6)]:
        task = InformativeBox(dim=dim, fraction=fraction)
        # the box of +-2 noise sds per axis is `fraction` of the prior's volume (2^d)
        assert np.isclose((4 * task.noise["high"]) ** dim / 2**dim, fraction)
        assert task.noise["low"] == 2 * task.noise["high"]


def test_two_moons_has_two_mirror_modes_of_equal_mass() -> None:
    """Away from the box's edge both mirror images of the truth lie in the
    prior, so each crescent holds half the mass (4 binomial sds)."""
    task = TwoMoons()
    x_o = task.simulate(np.array([[0.3, 0.2]]), "high", np.random.default_rng(6))[0]
    samples = task.reference_posterior(x_o, 10_000, seed=7)
    share = float((samples.sum(axis=1) > 0).mean())
    assert abs(share - 0.5) < 4 * 0.5 / np.sqrt(10_000)
    # the mirror map (t1, t2) -> (-t2, -t1) sends one crescent onto the other
    mirrored = -samples[:, ::-1]
    assert np.isfinite(task.log_likelihood(mirrored, x_o)).all()


def test_tasks_are_registered_and_validate_input() -> None:
    assert isinstance(get_task("two_moons"), TwoMoons)
    assert isinstance(get_task("informative", dim=2, fraction=1e-2), InformativeBox)
    with pytest.raises(InvalidInputError):
        TwoMoons().reference_posterior(np.array([50.0, 50.0]), 10)
    with pytest.raises(InvalidInputError):
        InformativeBox(dim=0)
    with pytest.raises(InvalidInputError):
        InformativeBox(fraction=1.5)
