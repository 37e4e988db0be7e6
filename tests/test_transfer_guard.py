"""The transfer guard (mfask.transfer_guard): its rule, how a level records and
uses its decision, persistence, and that it keeps MF-NPE within noise of NPE
when the low fidelity carries no information."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mfask
import mfask.posterior
from mfask import BoxUniform, FlowConfig, MultiFidelityPosterior, StateFormatError, TrainingConfig, TransferChoice
from mfask.state_file import decode_state, encode_state
from mfask.study import create_study, open_study
from mfask.training import negative_log_probs
from mfask.transfer_guard import ALPHA, MIN_ROWS, choose, critical_value, guard_share, mixture_negative_log_probs

TINY_FLOW = FlowConfig(hidden_features=16, num_transforms=2, num_bins=4)
QUICK_TRAINING = TrainingConfig(max_epochs=20)
PRIOR = BoxUniform([-1.0, -1.0], [1.0, 1.0], names=["a", "b"])
NUM_LOW, NUM_HIGH = 200, 60


def simulate_high(theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Informative HF: ``x = theta + N(0, 0.1^2)``, ``(n, 2) -> (n, 2)``."""
    return theta + 0.1 * rng.standard_normal(theta.shape)


def simulate_noise(theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A useless LF: output independent of the parameters, ``(n, 2) -> (n, 2)``."""
    return rng.standard_normal(theta.shape)


def guarded_posterior(seed: int = 0, **options) -> MultiFidelityPosterior:
    """Pre-trained on pure-noise LF output, fine-tuned on informative HF data."""
    options.setdefault("flow", TINY_FLOW)
    options.setdefault("training", QUICK_TRAINING)
    rng = np.random.default_rng(seed)
    post = MultiFidelityPosterior(PRIOR, ["low", "high"], seed=seed, **options)
    low = post.ask("low", NUM_LOW)
    post.tell(low, simulate_noise(low.theta, rng))
    high = post.ask("high", NUM_HIGH)
    post.tell(high, simulate_high(high.theta, rng))
    post.fit()
    return post


@pytest.fixture(scope="module")
def trained() -> MultiFidelityPosterior:
    return guarded_posterior()


def probe_points() -> tuple[np.ndarray, np.ndarray]:
    """Three parameter rows ``(3, 2)`` and one observation ``(2,)``."""
    theta = np.array([[0.2, -0.3], [0.0, 0.5], [-0.7, 0.1]])
    return theta, np.array([0.25, -0.3])


# ------------------------------------------------------------------ the rule
def test_critical_value_is_the_paired_t_quantile():
    assert critical_value(1) == math.inf
    assert critical_value(5) == pytest.approx(2.776, abs=1e-3)
    assert critical_value(10) == pytest.approx(2.262, abs=1e-3)
    assert critical_value(10**6) == pytest.approx(1.960, abs=1e-3)
    values = [critical_value(n) for n in (2, 3, 5, 10, 40, 1000)]
    assert values == sorted(values, reverse=True)


def test_clearly_better_candidates_are_chosen_alone():
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(30, generator=generator)
    jitter = 0.1 * torch.randn(30, generator=generator)
    better = choose(base - 1.0 + jitter, base)
    assert better.chosen == "fine-tuned" and better.num_rows == 30
    assert better.difference == pytest.approx(float((jitter - 1.0).mean()), abs=1e-6)
    assert better.fine_tuned_loss < better.hf_only_loss
    assert choose(base + 1.0 + jitter, base).chosen == "hf-only"


def test_ties_and_tiny_budgets_blend():
    generator = torch.Generator().manual_seed(1)
    base = torch.randn(30, generator=generator)
    noise = torch.randn(30, generator=generator)
    assert choose(base + (noise - noise.mean()), base).chosen == "blend"  # mean difference 0
    # a huge difference on fewer than MIN_ROWS rows is not evidence
    rows = MIN_ROWS - 1
    few = choose(torch.zeros(rows), torch.tensor([10.0, 11.0][:rows]))
    assert few.chosen == "blend" and few.num_rows == rows


def test_a_diverged_candidate_loses():
    finite = torch.tensor([1.0, 2.0, 3.0, 4.0])
    broken = torch.tensor([1.0, math.inf, 3.0, 4.0])
    assert choose(broken, finite).chosen == "hf-only"
    assert choose(finite, broken.clone().fill_(math.nan)).chosen == "fine-tuned"
    both = choose(broken, broken)
    assert both.chosen == "blend" and math.isnan(both.difference)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(-50, 50), st.floats(-50, 50)), min_size=1, max_size=40))
def test_swapping_the_candidates_swaps_the_decision(rows):
    a = torch.tensor([r[0] for r in rows], dtype=torch.float64)
    b = torch.tensor([r[1] for r in rows], dtype=torch.float64)
    forward, backward = choose(a, b), choose(b, a)
    mirror = {"fine-tuned": "hf-only", "hf-only": "fine-tuned", "blend": "blend"}
    assert backward.chosen == mirror[forward.chosen]
    assert backward.difference == -forward.difference
    assert backward.standard_error == forward.standard_error or math.isinf(forward.standard_error)


@pytest.mark.parametrize("rows", [5, 10, 40])
def test_equally_good_candidates_are_split_at_the_test_level(rows):
    """Under the null (paired differences N(0, 1)) the t-test separates the
    candidates with probability ALPHA; 4000 trials give a binomial standard
    error of 0.0034, so [0.035, 0.065] is 4.4 of them either side. The normal
    quantile 1.96 would reject 12% of the time at 5 rows."""
    generator = torch.Generator().manual_seed(rows)
    trials = 4000
    hf = torch.randn(trials, rows, generator=generator, dtype=torch.float64)
    fine = hf + torch.randn(trials, rows, generator=generator, dtype=torch.float64)
    separated = sum(choose(fine[i], hf[i]).chosen != "blend" for i in range(trials)) / trials
    assert 0.035 <= separated <= 0.065
    assert ALPHA == 0.05


@pytest.mark.parametrize("rows", [2, 3, 4, 10, 57, 200])
def test_the_guard_share_is_a_disjoint_split_leaving_rows_to_train(rows):
    guard, fit = guard_share(rows, 0.1, seed=7)
    assert sorted([*guard.tolist(), *fit.tolist()]) == list(range(rows))
    assert fit.shape[0] >= 2
    assert guard.shape[0] == (0 if rows < 3 else max(1, round(0.1 * rows)))
    again, _ = guard_share(rows, 0.1, seed=7)
    assert torch.equal(guard, again)


def test_a_candidate_is_scored_as_the_mixture_of_its_members(trained):
    level = trained._levels[1]
    z = torch.randn(5, 2)
    x = torch.randn(5, 2)
    single = mixture_negative_log_probs(level.members, z, x)
    assert torch.equal(single, negative_log_probs(level.members[0], z, x))
    pair = mixture_negative_log_probs([*level.members, *level.hf_only], z, x)
    expected = -(torch.logaddexp(-negative_log_probs(level.members[0], z, x),
                                 -negative_log_probs(level.hf_only[0], z, x)) - math.log(2))
    torch.testing.assert_close(pair, expected)


def test_choice_round_trips_through_json_and_refuses_junk():
    choice = TransferChoice("blend", 1.5, math.inf, math.nan, 0.25, 6)
    loaded = TransferChoice.from_dict(json.loads(json.dumps(choice.to_dict())))
    assert loaded.chosen == "blend" and loaded.num_rows == 6 and loaded.standard_error == 0.25
    assert math.isnan(loaded.hf_only_loss) and math.isnan(loaded.difference)  # non-finite -> None -> nan
    good = choice.to_dict()
    for junk in (None, [], {**good, "chosen": "best"}, {**good, "num_rows": -1},
                 {**good, "num_rows": True}, {**good, "difference": "small"},
                 {k: v for k, v in good.items() if k != "num_rows"}):
        with pytest.raises(StateFormatError):
            TransferChoice.from_dict(junk)


# ------------------------------------------------------- a level's decision
def test_a_guarded_level_trains_both_candidates_and_records_the_choice(trained):
    assert trained.transfer_guard is True
    assert trained.transfer_choice("low") is None  # the lowest level has nothing to transfer
    choice = trained.transfer_choice("high")
    assert isinstance(choice, TransferChoice)
    assert choice.num_rows == round(0.1 * NUM_HIGH)  # the guard share
    # neither candidate trained or early-stopped on the guard share
    assert {h.num_train + h.num_validation for h in trained.training_histories("high")[0]} == {
        NUM_HIGH - choice.num_rows
    }
    assert trained.training_histories("low")[0][0].num_train + trained.training_histories("low")[0][0].num_validation == NUM_LOW
    assert math.isfinite(choice.fine_tuned_loss) and math.isfinite(choice.hf_only_loss)
    [low_fit] = trained.training_histories("low")
    assert [(h.start, h.candidate) for h in low_fit] == [("fresh", "")]
    [high_fit] = trained.training_histories("high")
    assert [(h.start, h.candidate) for h in high_fit] == [("pre-trained", "fine-tuned"), ("fresh", "hf-only")]
    assert [h.selected for h in high_fit] == [
        choice.chosen in ("blend", "fine-tuned"), choice.chosen in ("blend", "hf-only")
    ]


@pytest.mark.parametrize("chosen", ["fine-tuned", "hf-only", "blend"])
def test_the_posterior_is_made_of_the_chosen_candidates(monkeypatch, chosen):
    def decide(fine_tuned, hf_only, z_guard, x_guard):
        return TransferChoice(chosen, 1.0, 1.0, 0.0, 0.1, 6)

    monkeypatch.setattr(mfask.posterior, "compare_candidates", decide)
    post = guarded_posterior()
    level = post._levels[1]
    expected = {"fine-tuned": level.members, "hf-only": level.hf_only,
                "blend": [*level.members, *level.hf_only]}[chosen]
    density = post.posterior("high")
    assert [id(m) for m in density.members] == [id(m) for m in expected]
    assert [h.selected for h in post.training_histories("high")[0]] == [
        chosen != "hf-only", chosen != "fine-tuned"
    ]
    theta, x_o = probe_points()
    log_q = post.log_prob(theta, x_o)
    members = density.member_log_probs(torch.tensor(theta), torch.tensor(x_o).expand(3, 2)).numpy()
    np.testing.assert_allclose(log_q, np.logaddexp.reduce(members, axis=0) - math.log(len(expected)), rtol=1e-6)
    if chosen == "blend":  # within log 2 of the better candidate on every row
        assert np.all(log_q >= members.max(axis=0) - math.log(2) - 1e-9)


@pytest.mark.parametrize("chosen, fine_loss, hf_loss, source", [
    ("fine-tuned", 2.0, 1.0, "fine"), ("hf-only", 1.0, 2.0, "hf"),
    ("blend", 1.0, 2.0, "fine"), ("blend", 2.0, 1.0, "hf"),
])
def test_the_level_above_starts_from_the_kept_or_better_candidate(chosen, fine_loss, hf_loss, source):
    fine, hf = [object()], [object()]  # stand-ins: only identity matters here
    level = mfask.posterior._Level(members=fine, hf_only=hf,
                                   choice=TransferChoice(chosen, fine_loss, hf_loss, 0.0, 1.0, 6))
    assert level.transfer_sources() == {"fine": fine, "hf": hf}[source]
    unguarded = mfask.posterior._Level(members=fine)
    assert unguarded.transfer_sources() == fine == unguarded.posterior_members()


def test_an_ensemble_pools_its_members_held_out_rows():
    post = guarded_posterior(ensemble_size=2, training=TrainingConfig(max_epochs=3))
    [high_fit] = post.training_histories("high")
    assert [h.candidate for h in high_fit] == ["fine-tuned"] * 2 + ["hf-only"] * 2
    # the guard scores each candidate's two members as one mixture on the guard rows
    assert post.transfer_choice("high").num_rows == round(0.1 * NUM_HIGH)


def test_three_levels_guard_every_transferred_level():
    rng = np.random.default_rng(3)
    post = MultiFidelityPosterior(PRIOR, ["low", "mid", "high"], seed=0, flow=TINY_FLOW,
                                  training=TrainingConfig(max_epochs=3))
    for name, count, simulate in (("low", NUM_LOW, simulate_noise), ("mid", 40, simulate_high),
                                  ("high", 30, simulate_high)):
        batch = post.ask(name, count)
        post.tell(batch, simulate(batch.theta, rng))
    post.fit()
    assert post.transfer_choice("low") is None
    assert post.transfer_choice("mid") is not None and post.transfer_choice("high") is not None
    assert [h.start for h in post.training_histories("high")[0]] == ["pre-trained", "fresh"]


def test_refits_continue_both_candidates():
    post = guarded_posterior()
    rng = np.random.default_rng(5)
    more = post.ask("high", 10)
    post.tell(more, simulate_high(more.theta, rng))
    assert list(post.fit()) == ["high"]
    second = post.training_histories("high")[-1]
    assert [(h.start, h.candidate) for h in second] == [("warm", "fine-tuned"), ("warm", "hf-only")]
    assert post.transfer_choice("high").num_rows == round(0.1 * (NUM_HIGH + 10))


def test_without_the_guard_a_level_only_fine_tunes():
    post = guarded_posterior(transfer_guard=False)
    assert post.transfer_choice("high") is None
    [high_fit] = post.training_histories("high")
    assert [(h.start, h.candidate, h.selected) for h in high_fit] == [("pre-trained", "", True)]
    assert post._levels[1].hf_only is None


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_the_option_must_be_a_bool(value):
    with pytest.raises(mfask.InvalidInputError, match="transfer_guard"):
        MultiFidelityPosterior(PRIOR, ["low", "high"], transfer_guard=value)


def test_progress_names_the_hf_only_candidate(capsys, monkeypatch):
    import mfask.training_progress as training_progress

    monkeypatch.setattr(training_progress, "SHOW_AFTER_SECONDS", 0.0)
    monkeypatch.setattr(training_progress, "LOG_INTERVAL_SECONDS", 0.0)
    guarded_posterior(verbose=True, training=TrainingConfig(max_epochs=2))
    err = capsys.readouterr().err
    # both candidates train on the 60 rows less the guard share of 6
    assert "[mfask] training high (2 networks, 54 simulations)" in err
    assert "HF-only network: epoch 2" in err


# --------------------------------------------------------------- persistence
def test_save_load_keeps_both_candidates_and_the_choice(trained, tmp_path):
    path = tmp_path / "guarded.npz"
    trained.save(path)
    loaded = MultiFidelityPosterior.load(path)
    assert loaded.transfer_guard is True
    assert loaded.transfer_choice("high").to_dict() == trained.transfer_choice("high").to_dict()
    theta, x_o = probe_points()
    np.testing.assert_array_equal(loaded.log_prob(theta, x_o), trained.log_prob(theta, x_o))
    assert [[h.to_dict() for h in fit] for fit in loaded.training_histories("high")] == [
        [h.to_dict() for h in fit] for fit in trained.training_histories("high")
    ]
    assert len(loaded._levels[1].hf_only) == 1


def _edit_state(post: MultiFidelityPosterior, change) -> bytes:
    meta, arrays = decode_state(encode_state(*post._export_state()))
    meta = json.loads(json.dumps(meta))
    for key in ("format", "version"):
        meta.pop(key, None)
    change(meta)
    return encode_state(meta, arrays)


def test_a_state_saved_before_the_guard_loads_unguarded(tmp_path):
    post = guarded_posterior(transfer_guard=False)

    def make_legacy(meta):
        del meta["transfer_guard"]
        for level in meta["levels"]:
            del level["num_hf_only"], level["choice"]

    path = tmp_path / "legacy.npz"
    path.write_bytes(_edit_state(post, make_legacy))
    loaded = MultiFidelityPosterior.load(path)
    assert loaded.transfer_guard is False and loaded.transfer_choice("high") is None
    theta, x_o = probe_points()
    np.testing.assert_array_equal(loaded.log_prob(theta, x_o), post.log_prob(theta, x_o))


@pytest.mark.parametrize("edit", ["num_hf_only", "choice"])
def test_inconsistent_guard_state_is_refused(trained, tmp_path, edit):
    def tamper(meta):
        level = meta["levels"][1]
        if edit == "num_hf_only":
            level["num_hf_only"] = level["num_members"]  # all HF-only, no members
        else:
            level["choice"] = {"chosen": "the best one"}

    path = tmp_path / "tampered.npz"
    path.write_bytes(_edit_state(trained, tamper))
    with pytest.raises(StateFormatError):
        MultiFidelityPosterior.load(path)


def test_a_study_reports_and_keeps_the_choice(tmp_path):
    path = tmp_path / "guard.mfask"
    study = create_study(path, PRIOR, ["low", "high"], seed=0, flow=TINY_FLOW, training=QUICK_TRAINING)
    rng = np.random.default_rng(0)
    low = study.ask("low", NUM_LOW)
    study.tell(low, simulate_noise(low.theta, rng))
    high = study.ask("high", NUM_HIGH)
    study.tell(high, simulate_high(high.theta, rng))
    study.fit()
    status = study.status()
    assert status["transfer"]["low"] is None
    assert status["transfer"]["high"]["num_rows"] == round(0.1 * NUM_HIGH)
    study.close()
    reopened = open_study(path)
    try:
        assert reopened.status()["transfer"] == status["transfer"]
    finally:
        reopened.close()


# ------------------------------------------------------------- the promise
@pytest.mark.slow
def test_with_a_useless_low_fidelity_the_guard_stays_within_noise_of_npe():
    """Pure-noise LF, 100 informative HF simulations, 6 seeds: the guarded
    MF-NPE's held-out NLL minus NPE's (same HF data, paired per seed) is at
    most two standard errors over seeds above zero (a tie or better). The
    check has power: unguarded MF-NPE on the same data fails it."""
    flow, training = TINY_FLOW, TrainingConfig(max_epochs=200)
    guarded_gap, unguarded_gap = [], []
    for seed in range(6):
        rng = np.random.default_rng(100 + seed)
        theta_test = PRIOR.sample(100, torch.Generator().manual_seed(999 + seed)).numpy()
        x_test = simulate_high(theta_test, rng)

        def nll(post: MultiFidelityPosterior) -> float:
            return -float(np.mean(post.log_prob_batched(theta_test[:, None, :], x_test)))

        npe = MultiFidelityPosterior(PRIOR, ["high"], seed=seed, flow=flow, training=training)
        high = npe.ask("high", 100)
        x_high = simulate_high(high.theta, rng)
        npe.tell(high, x_high)
        npe.fit()
        scores = {}
        for guard in (False, True):
            mf = MultiFidelityPosterior(PRIOR, ["low", "high"], seed=seed, flow=flow, training=training,
                                        transfer_guard=guard)
            low = mf.ask("low", 1000)
            mf.tell(low, simulate_noise(low.theta, np.random.default_rng(seed)))
            mf.tell(high.theta, x_high, "high", unasked="prior")
            mf.fit()
            scores[guard] = nll(mf)
        guarded_gap.append(scores[True] - nll(npe))
        unguarded_gap.append(scores[False] - nll(npe))

    def within_noise(gaps: list[float]) -> bool:
        gaps_array = np.array(gaps)
        return gaps_array.mean() <= 2 * gaps_array.std(ddof=1) / math.sqrt(len(gaps))

    print(f"guarded - NPE per seed: {np.round(guarded_gap, 3).tolist()}; "
          f"unguarded - NPE: {np.round(unguarded_gap, 3).tolist()}")  # shown with pytest -s
    assert within_noise(guarded_gap), guarded_gap
    assert not within_noise(unguarded_gap), unguarded_gap


def test_the_example_runs():
    script = Path(__file__).resolve().parents[1] / "examples" / "transfer_guard.py"
    done = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "guard's decision at 'high'" in done.stdout and "MF-NPE, transfer_guard=True" in done.stdout
