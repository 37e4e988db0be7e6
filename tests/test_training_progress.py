"""Training shows progress by default and says when it stopped on max_epochs (issue 15, items 3-4)."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest

import mfask
import mfask.training_progress as training_progress
from mfask.cli import main
from mfask.study import create_study, open_study
from mfask.training import EpochReport, TrainingConfig, TrainingHistory
from mfask.training_progress import TrainingProgress

SMALL_FLOW = mfask.FlowConfig(hidden_features=16, num_transforms=1)


def told_posterior(training: TrainingConfig, *, verbose: bool = True, rows: int = 60) -> mfask.MultiFidelityPosterior:
    prior = mfask.BoxUniform([0.0, 0.0], [1.0, 1.0])
    post = mfask.MultiFidelityPosterior(prior, seed=0, flow=SMALL_FLOW, training=training, verbose=verbose)
    theta = post.ask("high", rows).theta
    post.tell(theta, theta + 0.1 * np.random.default_rng(0).normal(size=theta.shape))
    return post


@pytest.fixture
def show_at_once(monkeypatch):
    """Bars from the first epoch (not after a second), so short test fits show them."""
    monkeypatch.setattr(training_progress, "SHOW_AFTER_SECONDS", 0.0)


def test_training_hitting_max_epochs_warns_and_says_so_in_the_history() -> None:
    post = told_posterior(TrainingConfig(max_epochs=3, stop_after_epochs=20), verbose=False)
    with pytest.warns(mfask.MaxEpochsWarning, match=r"max_epochs=3.*under-trained"):
        histories = post.fit()
    (history,) = histories["high"]
    assert history.epochs == 3 and not history.stopped_early and history.seconds > 0


def test_training_that_stops_early_does_not_warn() -> None:
    post = told_posterior(TrainingConfig(max_epochs=2000, stop_after_epochs=2), verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", mfask.MaxEpochsWarning)
        (history,) = post.fit()["high"]
    assert history.stopped_early and history.epochs < 2000


def test_fit_shows_a_progress_bar_by_default_and_none_when_quiet(capsys, show_at_once) -> None:
    post = told_posterior(TrainingConfig(max_epochs=2000, stop_after_epochs=2))
    (history,) = post.fit()["high"]
    err = capsys.readouterr().err
    assert "[mfask] training high (60 simulations)" in err
    assert f"{history.epochs} epochs" in err and "stopped early" in err
    quiet = told_posterior(TrainingConfig(max_epochs=2000, stop_after_epochs=2), verbose=False)
    quiet.fit()
    assert capsys.readouterr().err == ""


def test_load_and_open_study_take_the_verbose_choice(tmp_path, capsys, show_at_once) -> None:
    post = told_posterior(TrainingConfig(max_epochs=2000, stop_after_epochs=2), verbose=False)
    post.save(tmp_path / "state.npz")
    assert mfask.MultiFidelityPosterior.load(tmp_path / "state.npz").verbose is True
    quiet = mfask.MultiFidelityPosterior.load(tmp_path / "state.npz", verbose=False)
    quiet.fit()
    assert capsys.readouterr().err == ""
    mfask.Study.create(tmp_path / "s.db", post).close()
    with open_study(tmp_path / "s.db", verbose=False) as study:
        study.fit()
    assert capsys.readouterr().err == ""
    with open_study(tmp_path / "s.db") as study:
        study.fit(force=True)
    assert "[mfask] training high" in capsys.readouterr().err


def test_progress_postfix_bounds_the_remaining_epochs_both_ways(show_at_once) -> None:
    stream = io.StringIO()
    config = TrainingConfig(max_epochs=100, stop_after_epochs=20)
    progress = TrainingProgress("high", ["member 1", "member 2"], 90, config, stream=stream)
    callback = progress.callback(1)
    assert callback is not None
    callback(EpochReport(epoch=56, train_loss=1.0, validation_loss=1.5, best_validation_loss=1.2,
                         epochs_since_improvement=16))
    progress._bar.refresh()  # noqa: SLF001  (force a draw: the test has no terminal)
    text = stream.getvalue()
    assert "(2 networks, 90 simulations)" in text
    assert "member 2: epoch 57, validation 1.5000 (best 1.2000 at 41), stops in 4 to 43 epochs" in text
    progress.finish([TrainingHistory(train_loss=[0.0] * 57, stopped_early=True),
                     TrainingHistory(train_loss=[0.0] * 100, stopped_early=False)])
    assert "157 epochs" in stream.getvalue() and "1 hit max_epochs=100" in stream.getvalue()


def test_disabled_progress_is_silent_and_gives_no_callbacks() -> None:
    stream = io.StringIO()
    progress = TrainingProgress("high", ["network"], 10, TrainingConfig(), enabled=False, stream=stream)
    assert progress.callback(0) is None
    progress.finish([TrainingHistory()])
    assert stream.getvalue() == ""


def test_cli_fit_reports_epochs_stopped_early_and_seconds(tmp_path, capsys) -> None:
    path = tmp_path / "s.db"
    with create_study(path, mfask.BoxUniform([0.0], [1.0]), seed=0, flow=SMALL_FLOW,
                      training=TrainingConfig(max_epochs=4, stop_after_epochs=20)) as study:
        theta = study.ask("high", 20).theta
        study.tell(theta, theta * 2.0)
    assert main(["fit", str(path)]) == 0
    captured = capsys.readouterr()
    assert "warning: training 'high' stopped at max_epochs=4" in captured.err
    (trained,) = json.loads(captured.out)["trained"]["high"]
    assert trained["epochs"] == 4 and trained["stopped_early"] is False and trained["seconds"] > 0


def test_progress_into_a_log_writes_whole_lines(show_at_once, monkeypatch) -> None:
    monkeypatch.setattr(training_progress, "LOG_INTERVAL_SECONDS", 0.0)
    stream = io.StringIO()  # not a terminal
    config = TrainingConfig(max_epochs=100, stop_after_epochs=20)
    progress = TrainingProgress("low", ["network"], 50, config, stream=stream)
    callback = progress.callback(0)
    for epoch in range(3):
        callback(EpochReport(epoch, 1.0, 1.0, 1.0, 0))
    progress.finish([TrainingHistory(train_loss=[0.0] * 3, stopped_early=True)])
    lines = stream.getvalue().split("\n")
    assert "\r" not in stream.getvalue()
    assert lines[-1] == "" and all(line.startswith("[mfask] training low") for line in lines[:-1])
    assert lines[-2].endswith("stopped early") and "3 epochs" in lines[-2]


def test_cli_fit_and_sample_show_progress_unless_quiet(tmp_path, capsys, show_at_once) -> None:
    path = tmp_path / "s.db"
    with create_study(path, mfask.BoxUniform([0.0], [1.0]), seed=0, flow=SMALL_FLOW,
                      training=TrainingConfig(max_epochs=500, stop_after_epochs=2)) as study:
        theta = study.ask("high", 20).theta
        study.tell(theta, theta * 2.0)
    assert main(["fit", str(path), "--quiet"]) == 0
    assert "[mfask] training" not in capsys.readouterr().err
    assert main(["fit", str(path), "--force"]) == 0
    assert "[mfask] training high (20 simulations)" in capsys.readouterr().err
    assert main(["sample", str(path), "-n", "5", "--x", "1.0", "-q"]) == 0
    assert "[mfask] training" not in capsys.readouterr().err
