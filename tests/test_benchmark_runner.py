"""The benchmark pipeline end to end, resuming, and the MF-ABC baseline.

These check that the machinery works (files, resume, budgets, report), not
which method wins; the one statistical check is MF-ABC against the analytic
linear-Gaussian posterior.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mfask import FlowConfig, InvalidInputError, TrainingConfig
from mfask.benchmarks.__main__ import PRESETS, main
from mfask.benchmarks.methods import Budget, MethodConfig, mf_npe, mf_tsnpe, npe, round_sizes
from mfask.benchmarks.pretraining import PretrainingCache
from mfask.benchmarks.mf_abc import mf_abc, weighted_quantile_threshold
from mfask.benchmarks.results import append_row, read_rows
from mfask.benchmarks.runner import Job, plan_jobs, run_benchmark
from mfask.benchmarks.tasks import get_task
from mfask.benchmarks.tasks.linear_gaussian import LinearGaussian


def test_quick_preset_runs_end_to_end_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("MFASK_CACHE_DIR", str(tmp_path / "cache"))
    output, report = tmp_path / "results.jsonl", tmp_path / "report"
    argv = ["--preset", "quick", "--output", str(output), "--report-dir", str(report), "--quiet"]

    assert main(argv) == 0

    rows = read_rows(output)
    preset = PRESETS["quick"]
    assert sorted(row["method"] for row in rows) == sorted(preset["methods"])
    for row in rows:
        assert row["status"] == "ok", row.get("traceback")
        assert row["task"] == "ou" and row["high"] == 50 and row["num_observations"] == 1
        metrics = row["metrics"]
        assert len(metrics["nrmse"]) == 1 and math.isfinite(metrics["nrmse"][0])
        assert 0.0 <= metrics["c2st"][0] <= 1.0  # the OU task has a reference
        assert row["inference_seconds"] > 0 and row["peak_rss_mb"] > 0
        assert 0 < row["inference_cpu_seconds"]
        assert row["method_seconds"] >= row["inference_seconds"]
        runs = row["simulations"]
        assert runs["high"] == 50  # HF runs are exactly the budget, for every method
        if row["method"] in ("npe", "tsnpe"):
            assert row["low"] == 0 and "low" not in runs
            assert math.isfinite(metrics["nltp"][0])
        elif row["method"] in ("mf-npe", "mf-tsnpe", "a-mf-tsnpe"):
            assert runs["low"] == 200 and math.isfinite(metrics["nltp"][0])
        if row["method"].endswith("tsnpe"):
            assert row["info"]["rounds"] == [2]  # HF 50 split as 25 + 25
        elif row["method"] == "mf-abc":
            assert runs["low"] >= 200 and metrics["nltp"] is None  # ABC has no density
    # the three MF neural methods share one LF pre-training, charged to each
    assert len(list((tmp_path / "results.jsonl.pretrained").glob("*.npz"))) == 1
    shared = [row["info"]["pretraining"] for row in rows
              if row["method"] in ("mf-npe", "mf-tsnpe", "a-mf-tsnpe")]
    assert len(shared) == 3 and all(entry["reused"] for entry in shared)
    assert len({entry["seconds"] for entry in shared}) == 1 and shared[0]["seconds"] > 0
    page = (report / "ou.md").read_text()
    # rows carry the tag of the settings that differ from the original ones (the defaults since)
    assert "| method | HF 50 |" in page and "mf-npe [support, linear std, guard] (LF 200)" in page
    assert "| npe [support, linear std] |" in page  # the guard cannot act on one level: not a variant
    assert "(1)" in page
    assert (report / "ou.png").stat().st_size > 1000

    # a second run finds every job in the file and adds nothing
    before = output.read_bytes()
    assert main(argv) == 0
    assert output.read_bytes() == before


def test_failed_jobs_are_recorded_and_run_again(tmp_path):
    output = tmp_path / "results.jsonl"
    job = Job("ou", "mf-npe", low=1, high=10, seed=0, num_observations=1)  # LF budget too small
    summary = run_benchmark([job, job], output, progress=None)
    assert (summary.total, summary.failed, summary.succeeded) == (1, 1, 0)
    (row,) = read_rows(output)
    assert row["status"] == "error" and "low-fidelity budget" in row["error"]
    # an error is not "done": the next run tries it again
    assert run_benchmark([job], output, progress=None).failed == 1
    assert len(read_rows(output)) == 2


def test_results_file_survives_a_torn_line(tmp_path):
    path = tmp_path / "results.jsonl"
    append_row(path, {"key": "a", "status": "ok"})
    with open(path, "a") as handle:
        handle.write('{"key": "b", "sta')  # a write cut short by a crash
    with pytest.warns(UserWarning, match="not a result row"):
        assert [row["key"] for row in read_rows(path)] == ["a"]
    append_row(path, {"key": "c", "status": "ok"})
    with pytest.warns(UserWarning):
        assert [row["key"] for row in read_rows(path)] == ["a", "c"]
    assert json.loads(path.read_text().splitlines()[-1])["key"] == "c"


def test_plan_gives_single_fidelity_methods_one_low_budget():
    jobs = plan_jobs(["ou"], ["npe", "mf-npe"], [100, 1000], [50, 100], [0, 1])
    assert sum(job.method == "npe" for job in jobs) == 2 * 2
    assert {job.low for job in jobs if job.method == "npe"} == {0}
    assert sum(job.method == "mf-npe" for job in jobs) == 2 * 2 * 2
    assert len({job.key for job in jobs}) == len(jobs)
    # the guard acts only where a level is transferred: NPE's jobs record it
    # off, so they are the same jobs whichever guard setting MF-NPE runs with
    assert {job.config.transfer_guard for job in jobs} == {False, True}
    assert all(job.config.transfer_guard == (job.method == "mf-npe") for job in jobs)
    unguarded = plan_jobs(["ou"], ["npe"], [100], [50], [0], config=MethodConfig(transfer_guard=False))
    assert unguarded[0].key == next(job.key for job in jobs if job.method == "npe" and job.high == 50
                                    and job.seed == 0)


def test_npe_and_mf_npe_see_the_same_high_fidelity_data():
    task = get_task("ou")
    _, x_o = task.observations(1, seed=0)
    config = MethodConfig(flow=FlowConfig(hidden_features=8, num_transforms=1),
                          training=TrainingConfig(max_epochs=1))
    single = npe(task, x_o, Budget(0, 12), seed=3, config=config)
    multi = mf_npe(task, x_o, Budget(20, 12), seed=3, config=config)
    theta_single, x_single = single.posterior.data("high")
    theta_multi, x_multi = multi.posterior.data("high")
    np.testing.assert_array_equal(theta_single, theta_multi)
    np.testing.assert_array_equal(x_single, x_multi)
    assert multi.simulations == {"high": 12, "low": 20}


def test_reused_pretraining_equals_pretraining_afresh(tmp_path):
    task = get_task("ou")
    _, x_o = task.observations(2, seed=0)
    config = MethodConfig(flow=FlowConfig(hidden_features=8, num_transforms=1),
                          training=TrainingConfig(max_epochs=3), num_rounds=2)
    cache = PretrainingCache(tmp_path / "cache")
    afresh = mf_npe(task, x_o, Budget(40, 12), seed=5, config=config)
    built = mf_npe(task, x_o, Budget(40, 30), seed=5, config=config, cache=cache)
    reused = mf_npe(task, x_o, Budget(40, 12), seed=5, config=config, cache=cache)
    sequential = mf_tsnpe(task, x_o, Budget(40, 8), seed=5, config=config, cache=cache)
    assert not built.info["pretraining"]["reused"]
    assert reused.info["pretraining"]["reused"] and sequential.info["pretraining"]["reused"]
    assert reused.info["pretraining"]["seconds"] == built.info["pretraining"]["seconds"]
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    # the same LF data, the same LF network, the same HF data and final model
    for posterior in (built.posterior, reused.posterior, *sequential.posteriors):
        for a, b in zip(afresh.posterior.data("low"), posterior.data("low")):
            np.testing.assert_array_equal(a, b)
        theta = task.sample_prior(5, np.random.default_rng(1))
        np.testing.assert_allclose(posterior.log_prob(theta, x_o[0], fidelity="low"),
                                   afresh.posterior.log_prob(theta, x_o[0], fidelity="low"), rtol=1e-6)
    np.testing.assert_array_equal(afresh.posterior.data("high")[0], reused.posterior.data("high")[0])
    theta_true = task.sample_prior(2, np.random.default_rng(2))
    np.testing.assert_allclose(afresh.log_prob(theta_true), reused.log_prob(theta_true), rtol=1e-6)
    # LF runs are counted once however many observations share them
    assert sequential.simulations == {"low": 40, "high": 2 * 8}


def test_round_sizes_split_the_budget_evenly():
    assert round_sizes(50, 4) == [13, 13, 12, 12]
    assert sum(round_sizes(1001, 7)) == 1001
    with pytest.raises(InvalidInputError, match="at least 8"):
        round_sizes(7, 4)


def test_weighted_quantile_threshold_selects_the_closest_share():
    d = np.array([0.5, 0.1, 0.3, 0.2, 0.4])
    eps = weighted_quantile_threshold(d, 0.4)
    assert np.sum(d < eps) == 2 and 0.2 < eps < 0.3
    # weights: the point at 0.1 alone carries half the weight
    assert np.sum(d < weighted_quantile_threshold(d, 0.5, np.array([1, 4, 1, 1, 1]))) == 1


def test_mf_abc_recovers_the_high_fidelity_posterior_mean():
    task = LinearGaussian()  # LF: x = theta + 0.5 eps; HF: x = 1.3 theta + 0.4 + 0.5 eps
    x_o = np.array([1.8, -0.6])
    exact, _ = task.posterior_mean_std(x_o)  # HF posterior mean ~ (0.94, -0.67)
    lf_mean, _ = task.posterior_mean_std(x_o, "low")  # LF posterior mean (1.44, -0.48)
    sim = np.random.default_rng(100)
    result = mf_abc(
        lambda theta: task.simulate(theta, "low", sim),
        lambda theta: task.simulate(theta, "high", sim),
        lambda n: task.sample_prior(n, sim),
        x_o, num_low=60_000, num_high=20_000, rng=np.random.default_rng(0), quantile=0.05,
    )
    assert result.num_high == 20_000 and result.continued.sum() == 20_000
    assert result.num_low >= 60_000 and np.all(result.weights >= 0)
    assert result.weights.sum() == pytest.approx(1.0)
    estimate = result.weights @ result.theta

    # Tolerance per dimension, the sum of three terms:
    # 1. ABC's own bias: accepting z-scored outputs within an RMSE ball of
    #    radius eps (Euclidean radius eps sqrt(k), k = 2) moves the effective
    #    observation towards the predictive mean c by eps^2 k / (k + 2)
    #    (x_o - c) to first order, and the posterior mean by that times its
    #    gain a/s^2 / (1 + a^2/s^2) (~0.05 in dimension 0 here).
    a, c, s = task.coefficients["high"]
    gain = (a / s**2) / (1 + a**2 / s**2)
    eps_bias = gain * result.eps_high**2 * 2 / 4 * np.abs(x_o - c)
    # 2. the clamp of negative weights: a draw that LF accepts and HF would
    #    reject keeps an expected weight 1 - eta_accept = 0.1 instead of 0,
    #    which pulls the estimate towards the LF posterior by at most about
    #    0.1 of the LF-HF difference (~0.05 in dimension 0).
    clamp_bias = 0.1 * np.abs(lf_mean - exact)
    # 3. Monte Carlo error: 4 standard errors, sd ~0.4 (the exact posterior
    #    sd is 0.36, ABC widens it a little) over the effective sample size
    #    (~1200 here, so ~0.045).
    assert result.effective_sample_size > 500
    monte_carlo = 4 * 0.4 / np.sqrt(result.effective_sample_size)
    tolerance = eps_bias + clamp_bias + monte_carlo
    assert np.all(np.abs(estimate - exact) < tolerance), (estimate, exact, tolerance)
    # the test can tell the two fidelities apart: plain LF-ABC would miss
    assert abs(lf_mean[0] - exact[0]) > 2 * tolerance[0]


@pytest.mark.slow
def test_sbi_npe_scores_on_the_data_npe_gets():
    pytest.importorskip("sbi")
    from mfask.benchmarks.methods import sbi_npe

    task = get_task("ou")
    theta_true, x_o = task.observations(2, seed=0)
    config = MethodConfig(flow=FlowConfig(hidden_features=8, num_transforms=1),
                          training=TrainingConfig(max_epochs=5))
    estimate = sbi_npe(task, x_o, Budget(0, 30), seed=3, config=config)
    assert estimate.simulations == {"high": 30}
    assert estimate.sample(20).shape == (2, 20, 2)
    assert np.isfinite(estimate.log_prob(theta_true)).all()


def test_matching_budget_interpolates_in_log_budget_and_reports_bounds():
    from mfask.benchmarks.report import matching_budget

    budgets, values = [1000, 10, 100], [0.6, 0.8, 0.7]  # any order; 0.1 less per decade
    budget, how = matching_budget(budgets, values, 0.65)
    assert how == "interpolated" and budget == pytest.approx(10 ** 2.5)
    assert matching_budget(budgets, values, 0.9) == (10.0, "at most")
    assert matching_budget(budgets, values, 0.5) == (1000.0, "more than")


def test_report_tags_rows_by_the_settings_they_ran_with() -> None:
    """Rows of different flow settings never share a table line: the tag names
    every setting that differs from the original ones, read from the row's
    stored config (so it does not move when a default changes)."""
    from mfask.benchmarks.report import variant

    def row(config: MethodConfig) -> dict:
        return {"config": config.to_dict()}

    legacy = MethodConfig(parameter_space="unbounded", transfer_guard=False,
                          flow=FlowConfig(conditional_standardization=False))
    assert variant(row(legacy)) == ""
    assert variant(row(MethodConfig.from_dict(legacy.to_dict()))) == ""
    linear = MethodConfig(parameter_space="support", flow=FlowConfig(conditional_standardization=True),
                          transfer_guard=False)
    assert variant(row(linear)) == "support, linear std"
    assert variant(row(MethodConfig(parameter_space="support"))) == "support, linear std, guard"
    sbi = MethodConfig(parameter_space="support", transfer_guard=False,
                       flow=FlowConfig(conditional_standardization=True, layout="sbi"))
    assert variant(row(sbi)) == "support, linear std, sbi layout"
    assert variant({"config": {}}) == ""  # rows written before the options existed
