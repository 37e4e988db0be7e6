"""Statistical checks of NPE and MF-NPE against analytic posteriors.

Fixed seeds throughout; the tolerances are the method's, not tuned to pass.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from mfask import FlowConfig, MultiFidelityPosterior
from mfask.benchmarks.tasks.linear_gaussian import LinearGaussian
from mfask.diagnostics import c2st


def test_npe_matches_the_analytic_posterior():
    """NPE with 2000 simulations: C2ST against the exact posterior within 0.5 +- 0.1.

    0.1 is the conventional band for "indistinguishable" in SBI benchmarks; a
    random forest on 2x1000 samples has a null standard deviation of about 0.016,
    so a correct posterior sits far inside it and a mis-scaled one (e.g. twice
    the true variance) far outside.
    """
    task = LinearGaussian(coefficients={"high": (1.0, 0.0, 0.5)})
    rng = np.random.default_rng(0)
    post = MultiFidelityPosterior(task.prior, ["high"], seed=0)
    batch = post.ask("high", 2000)
    post.tell(batch, task.simulate(batch.theta, "high", rng))
    for index, x_o in enumerate(np.array([[0.7, -0.4], [-1.5, 1.0]])):
        samples = post.sample(1000, x_o)
        reference = task.reference_posterior(x_o, 1000, seed=index)
        score = c2st(reference, samples, seed=0)
        assert abs(score - 0.5) <= 0.1, (x_o, score)


def test_mf_npe_beats_npe_on_few_high_fidelity_simulations():
    """Pre-training on a biased but informative low fidelity lowers the held-out
    high-fidelity NLL of a 50-simulation posterior.

    Paired over 5 seeds (same high-fidelity data and test set for both
    methods); the claim must hold by a one-sided paired t-test at p < 0.01.

    Run with the settings of the transfer's original measurement (the
    unbounded space, marginal standardisation). With today's defaults the
    linear conditional standardisation alone recovers this task's exactly
    linear-Gaussian posterior from 50 simulations, so NPE leaves pre-training
    little to add (measured: +0.10 nats on average, 4 of 5 seeds, p = 0.05);
    ``docs/conditional_standardization.md`` records that and the OU case.
    """
    legacy = {"parameter_space": "unbounded", "flow": FlowConfig(conditional_standardization=False)}
    task = LinearGaussian()
    improvements = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        test_theta = task.sample_prior(1000, np.random.default_rng(100 + seed))
        test_x = task.simulate(test_theta, "high", np.random.default_rng(200 + seed))
        high_theta = task.sample_prior(50, rng)
        high_x = task.simulate(high_theta, "high", rng)

        npe = MultiFidelityPosterior(task.prior, ["high"], seed=seed, **legacy)
        npe.tell(high_theta, high_x, "high", unasked="prior")

        mf = MultiFidelityPosterior(task.prior, ["low", "high"], seed=seed, **legacy)
        low = mf.ask("low", 2000)
        mf.tell(low, task.simulate(low.theta, "low", rng))
        mf.tell(high_theta, high_x, "high", unasked="prior")

        nll = {
            name: -post.log_prob_batched(test_theta[:, None, :], test_x).mean()
            for name, post in (("npe", npe), ("mf", mf))
        }
        improvements.append(nll["npe"] - nll["mf"])
    improvements = np.array(improvements)
    result = stats.ttest_1samp(improvements, 0.0, alternative="greater")
    assert result.pvalue < 0.01, improvements
