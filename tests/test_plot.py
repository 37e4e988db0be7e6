"""Tests of mfask.plot: each function renders once to a PNG (headless), and
the drawn data say what the docstrings promise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure  # noqa: E402

from mfask import MultiFidelityPosterior, TrainingConfig, TrainingHistory  # noqa: E402
from mfask.benchmarks.tasks.linear_gaussian import LinearGaussian  # noqa: E402
from mfask.diagnostics import sbc_ranks, sbc_uniformity_pvalues, tarp_area, tarp_coverage  # noqa: E402
from mfask.errors import InvalidInputError  # noqa: E402
from mfask.plot import (  # noqa: E402
    loss_curves,
    metric_vs_budget,
    pairplot,
    predictive_traces,
    sbc_histograms,
    tarp_plot,
)


def render(fig: Figure, folder: Path, name: str) -> Path:
    """Save ``fig`` as a PNG and check a non-empty image file was written."""
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=40)
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return path


def step_patches(ax) -> list:
    from matplotlib.patches import StepPatch

    return [patch for patch in ax.patches if isinstance(patch, StepPatch)]


# ------------------------------------------------------------------ pairplot
def test_pairplot_overlays_sample_sets_and_marks_the_truth(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    truth = np.array([0.3, -1.0, 2.0])
    sets = {"reference": rng.normal(size=(2000, 3)), "estimate": rng.normal(0.5, 1.5, size=(1500, 3))}
    fig = pairplot(sets, truth=truth, names=["a", "b", "c"])
    render(fig, tmp_path, "pairplot")

    assert len(fig.axes) == 6  # lower triangle of 3 x 3
    diagonals = [fig.axes[0], fig.axes[2], fig.axes[5]]  # row by row: (0,0) (1,0) (1,1) (2,0) ...
    for column, ax in enumerate(diagonals):
        marginals = step_patches(ax)
        assert [patch.get_label() for patch in marginals] == ["reference", "estimate"]
        # a density: integrates to the fraction of samples inside the limits (at most 1)
        values, edges, _ = marginals[0].get_data()
        assert 0.95 < np.sum(values * np.diff(edges)) <= 1.0 + 1e-12
        vertical = [line.get_xdata()[0] for line in ax.lines]
        assert vertical == pytest.approx([truth[column]])
    joint = fig.axes[3]  # row 2 (c), column 0 (a)
    assert joint.get_xlabel() == "a" and joint.get_ylabel() == "c"
    vertical, horizontal, marker = joint.lines
    assert vertical.get_xdata()[0] == truth[0] and horizontal.get_ydata()[0] == truth[2]
    assert (marker.get_xdata()[0], marker.get_ydata()[0]) == (truth[0], truth[2])
    legend_texts = [text.get_text() for text in fig.legends[0].get_texts()]
    assert legend_texts == ["reference", "estimate", "true parameters"]


def test_pairplot_uses_given_limits_and_accepts_one_array(tmp_path: Path) -> None:
    samples = np.random.default_rng(1).uniform(size=(500, 2))
    fig = pairplot(samples, limits=[[0, 1], [-1, 2]])
    render(fig, tmp_path, "pairplot_limits")
    assert fig.axes[1].get_xlim() == (0, 1) and fig.axes[1].get_ylim() == (-1, 2)
    assert fig.axes[2].get_xlabel() == "theta_1"
    assert fig.legends[0].get_title().get_text() == "contours hold 50%, 90%"


def test_pairplot_rejects_inconsistent_input() -> None:
    with pytest.raises(InvalidInputError, match="same number of parameters"):
        pairplot({"a": np.zeros((5, 2)), "b": np.zeros((5, 3))})
    with pytest.raises(InvalidInputError, match="truth"):
        pairplot(np.zeros((5, 2)), truth=[1.0, 2.0, 3.0])
    with pytest.raises(InvalidInputError, match="empty figure"):
        figure = Figure()
        figure.add_subplot()
        pairplot(np.zeros((5, 2)), figure=figure)


# --------------------------------------------------------------- loss curves
def history(train: list[float], validation: list[float]) -> TrainingHistory:
    return TrainingHistory(train_loss=train, validation_loss=validation,
                           best_epoch=int(np.argmin(validation)))


def test_loss_curves_from_histories_mark_the_best_epoch(tmp_path: Path) -> None:
    low = history([3.0, 2.0, 1.5, 1.2], [3.1, 2.2, 2.0, 2.1])
    high_fit_1 = [history([2.0, 1.0, 0.5], [2.0, 1.5, 1.6]), history([2.1, 1.1], [1.9, 1.4])]
    high_fit_2 = [history([1.0, 0.8, 0.6, 0.4, 0.3], [1.2, 1.1, 0.9, 1.0, 1.3])]
    fig = loss_curves({"low": low, "high": [high_fit_1, high_fit_2]})
    render(fig, tmp_path, "loss_curves")

    low_ax, high_ax = fig.axes
    assert low_ax.get_title() == "fidelity 'low'"
    # per history: train line, validation line, best-epoch marker
    assert len(low_ax.lines) == 3 and len(high_ax.lines) == 9
    best = [line for line in low_ax.lines if line.get_marker() == "o"][0]
    assert (best.get_xdata()[0], best.get_ydata()[0]) == (2, 2.0)
    high_best = [(line.get_xdata()[0], line.get_color()) for line in high_ax.lines if line.get_marker() == "o"]
    assert high_best == [(1, "C0"), (1, "C0"), (2, "C1")]  # colour per fit
    assert "fit 2" in [text.get_text() for text in high_ax.get_legend().get_texts()]


def test_loss_curves_of_a_trained_posterior(tmp_path: Path) -> None:
    task = LinearGaussian(dim=2)
    rng = np.random.default_rng(0)
    post = MultiFidelityPosterior(task.prior, ["low", "high"], seed=0,
                                  training=TrainingConfig(max_epochs=3))
    with pytest.raises(InvalidInputError, match="nothing has been fitted"):
        loss_curves(post)
    for fidelity, count in (("low", 200), ("high", 50)):
        batch = post.ask(fidelity, count)
        post.tell(batch, task.simulate(batch.theta, fidelity, rng))
    post.fit()
    fig = loss_curves(post)
    render(fig, tmp_path, "loss_curves_posterior")
    assert [ax.get_title() for ax in fig.axes] == ["fidelity 'low'", "fidelity 'high'"]
    for ax, name in zip(fig.axes, ["low", "high"]):
        recorded = post.training_histories(name)[0][0]
        train, validation = ax.lines[0], ax.lines[1]
        assert list(train.get_ydata()) == recorded.train_loss
        assert list(validation.get_ydata()) == recorded.validation_loss
        assert len(train.get_xdata()) == 3
    assert len(loss_curves(post, fidelities=["high"]).axes) == 1


# ---------------------------------------------------------- metric vs budget
def test_metric_vs_budget_one_line_per_method_with_std_over_seeds(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    values = {(method, budget): rng.normal(1.0 / budget, 0.01, size=4)
              for method in ("NPE", "MF-NPE", "TSNPE") for budget in (50, 100, 200)}
    records = [{"variant": method, "high": budget, "nll": float(value)}
               for (method, budget), seeds in values.items() for value in seeds]
    fig = metric_vs_budget(records, metric_name="NLL", method_key="variant",
                           budget_key="high", value_key="nll", reference=0.0)
    render(fig, tmp_path, "metric_vs_budget")

    ax = fig.axes[0]
    assert len(ax.containers) == 3  # one error-bar line per method
    assert ax.get_xscale() == "log" and ax.get_ylabel() == "NLL"
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels == ["NPE", "MF-NPE", "TSNPE", "reference"]
    line, caps, bars = ax.containers[1]  # MF-NPE
    assert list(line.get_xdata()) == [50, 100, 200]
    expected_means = [values[("MF-NPE", b)].mean() for b in (50, 100, 200)]
    assert line.get_ydata() == pytest.approx(expected_means)
    segments = bars[0].get_segments()
    half_widths = [(segment[1, 1] - segment[0, 1]) / 2 for segment in segments]
    assert half_widths == pytest.approx([values[("MF-NPE", b)].std(ddof=1) for b in (50, 100, 200)])

    # the same table given as arrays per method draws the same means
    arrays = {method: ([50, 100, 200], np.stack([values[(method, b)] for b in (50, 100, 200)]))
              for method in ("NPE", "MF-NPE", "TSNPE")}
    again = metric_vs_budget(arrays, metric_name="NLL", error="sem").axes[0]
    assert again.containers[1][0].get_ydata() == pytest.approx(expected_means)


def test_metric_vs_budget_reports_missing_keys() -> None:
    with pytest.raises(InvalidInputError, match="no key"):
        metric_vs_budget([{"method": "NPE", "budget": 10}], metric_name="C2ST")


# -------------------------------------------------------- predictive traces
def test_predictive_traces_draw_finite_traces_and_the_observation(tmp_path: Path) -> None:
    t = np.linspace(0.0, 10.0, 200)
    simulated = np.sin(t)[None, :] + np.random.default_rng(3).normal(0, 0.1, size=(8, 1))
    simulated[2] = np.nan  # a failed simulation
    observed = np.sin(t)
    fig = predictive_traces(t, simulated, observed, xlabel="time (ms)", ylabel="V (mV)")
    render(fig, tmp_path, "predictive_traces")

    ax = fig.axes[0]
    assert len(ax.lines) == 7 + 1
    assert ax.lines[-1].get_ydata() == pytest.approx(observed)
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["posterior predictive (7 draws, 1 failed)", "observed"]
    with pytest.raises(InvalidInputError, match="must be"):
        predictive_traces(t, simulated[:, :-1], observed)


# --------------------------------------------------------------- calibration
def test_sbc_histograms_counts_band_and_pvalues(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    m, n, d = 300, 49, 3
    theta = rng.normal(size=(m, d))
    samples = rng.normal(size=(m, n, d)) * np.array([1.0, 0.5, 1.0])  # theta_1 overconfident
    ranks = sbc_ranks(samples, theta)
    fig = sbc_histograms(ranks, n, names=["a", "b", "c"])
    render(fig, tmp_path, "sbc")

    assert len(fig.axes) == d
    bins = 20  # m // 10 = 30, capped at 20
    pvalues = sbc_uniformity_pvalues(ranks, n, bins=bins)
    for ax, name, pvalue in zip(fig.axes, "abc", pvalues):
        assert ax.get_title() == f"{name}  (p = {pvalue:.2g})"
        counts = [p for p in step_patches(ax) if p.get_label() == "ranks"][0].get_data()[0]
        assert len(counts) == bins and counts.sum() == m
        upper, _, lower = [p for p in step_patches(ax) if "band" in p.get_label()][0].get_data()
        share = np.bincount(np.arange(n + 1) * bins // (n + 1), minlength=bins) / (n + 1)
        assert lower == pytest.approx(stats.binom.ppf(0.005, m, share))
        assert upper == pytest.approx(stats.binom.ppf(0.995, m, share))
    assert pvalues[1] < 1e-3  # the overconfident dimension is flagged in its title


def test_tarp_plot_overlays_curves_on_one_diagonal(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    theta = rng.normal(size=(200, 2))
    alphas, coverage = tarp_coverage(rng.normal(size=(200, 100, 2)), theta)
    fig = tarp_plot(alphas, coverage, label="exact", num_observations=200)
    narrow_alphas, narrow_coverage = tarp_coverage(0.3 * rng.normal(size=(200, 100, 2)), theta)
    tarp_plot(narrow_alphas, narrow_coverage, label="overconfident", ax=fig.axes[0])
    render(fig, tmp_path, "tarp")

    ax = fig.axes[0]
    diagonal = [line for line in ax.lines if line.get_label() == "calibrated"]
    assert len(diagonal) == 1 and list(diagonal[0].get_xydata().ravel()) == [0, 0, 1, 1]
    assert ax.lines[-1].get_ydata() == pytest.approx(narrow_coverage)
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert f"exact (area {tarp_area(alphas, coverage):.3f})" in legend
    assert f"overconfident (area {tarp_area(narrow_alphas, narrow_coverage):.3f})" in legend


def test_plots_leave_pyplot_alone() -> None:
    """New figures are not registered with pyplot (no global state to leak)."""
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    pairplot(np.random.default_rng(6).normal(size=(100, 2)))
    tarp_plot([0.0, 0.5, 1.0], [0.0, 0.5, 1.0])
    assert plt.get_fignums() == before


# --------------------------------------------- legends and ranges (issue 15, cosmetic)
def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("d", [2, 3])
def test_pairplot_legend_with_long_labels_covers_no_panel(d) -> None:
    rng = np.random.default_rng(0)
    fig = pairplot({"reference": rng.normal(size=(500, d)),
                    "MF-NPE posterior, HF 100 + LF 2000": rng.normal(size=(500, d))}, truth=[0.0] * d)
    renderer = _renderer(fig)
    legend = fig.legends[0].get_window_extent(renderer)
    for ax in fig.axes:
        assert not _overlaps(legend, ax.get_window_extent(renderer))
    assert fig.bbox.x0 <= legend.x0 and legend.x1 <= fig.bbox.x1  # not cut off either


def test_pairplot_range_is_not_stretched_by_a_thin_long_tail() -> None:
    rng = np.random.default_rng(1)
    bulk = rng.normal(size=(2000, 2))
    tail = np.column_stack([rng.uniform(20.0, 100.0, 40), rng.normal(size=40)])  # 2% far out
    fig = pairplot(np.vstack([bulk, tail]))
    low, high = fig.axes[0].get_xlim()
    assert -7.0 < low < -3.0 and 3.0 < high < 9.0
    gaussian = pairplot(bulk).axes[0].get_xlim()  # no tail: the central 99% as before
    expected = np.quantile(bulk[:, 0], [0.005, 0.995])
    width = expected[1] - expected[0]
    assert gaussian == pytest.approx((expected[0] - 0.1 * width, expected[1] + 0.1 * width))


def test_tarp_legend_stays_off_the_axes() -> None:
    alphas = np.linspace(0, 1, 21)
    fig = tarp_plot(alphas, alphas, num_observations=100)
    renderer = _renderer(fig)
    ax = fig.axes[0]
    assert not _overlaps(ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer))


def test_metric_vs_budget_says_one_seed() -> None:
    fig = metric_vs_budget({"NPE": ([50, 100], np.array([[1.0], [0.5]]))}, metric_name="NLL")
    assert fig.axes[0].get_legend().get_title().get_text() == "one seed (no error bars)"


def _renderer(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()
