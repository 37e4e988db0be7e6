"""The ask/tell contract of MultiFidelityPosterior: shapes, matching, errors, state."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

import mfask
from mfask import (
    BoxUniform,
    Fidelity,
    FlowConfig,
    IndependentPrior,
    MultiFidelityPosterior,
    TrainingConfig,
)

TINY_FLOW = FlowConfig(hidden_features=16, num_transforms=2, num_bins=4)
QUICK_TRAINING = TrainingConfig(max_epochs=3)


def make_posterior(fidelities=("low", "high"), seed=0, **kwargs) -> MultiFidelityPosterior:
    prior = BoxUniform([0.1, 0.1], [3.0, 0.6], names=["mu", "sigma"])
    kwargs.setdefault("flow", TINY_FLOW)
    kwargs.setdefault("training", QUICK_TRAINING)
    return MultiFidelityPosterior(prior, list(fidelities), seed=seed, **kwargs)


def simulate(theta: np.ndarray, shift: float = 0.0) -> np.ndarray:
    """A cheap deterministic stand-in simulator: (n, 2) -> (n, 3)."""
    theta = np.asarray(theta)
    return np.stack([theta[:, 0] + shift, theta[:, 1] * 2, theta.sum(axis=1)], axis=1)


def ledger_snapshot(post: MultiFidelityPosterior) -> dict[str, np.ndarray]:
    """Everything a tell may change, for 'state unchanged' checks."""
    arrays = post._ledger.to_arrays()
    arrays["ask_rng"] = post._ask_generator.get_state().numpy().copy()
    arrays["x_shape"] = np.array(post.x_shape or (), dtype=float)
    return arrays


def assert_same_state(before: dict[str, np.ndarray], post: MultiFidelityPosterior) -> None:
    after = ledger_snapshot(post)
    assert set(before) == set(after)
    for key in before:
        np.testing.assert_array_equal(before[key], after[key], err_msg=key)


# ----------------------------------------------------------------------- ask
def test_ask_returns_immutable_prior_batch():
    post = make_posterior()
    batch = post.ask("low", 5)
    assert batch.theta.shape == (5, 2)
    assert batch.ticket_ids.tolist() == [0, 1, 2, 3, 4]
    assert batch.source == ("prior",) * 5
    assert batch.fidelity == "low" and batch.round == 0
    assert post.prior.in_support(torch.tensor(batch.theta)).all()
    with pytest.raises(ValueError):
        batch.theta[0, 0] = 1.0
    with pytest.raises(AttributeError):
        batch.fidelity = "high"
    second = post.ask("high", 3)
    assert second.ticket_ids.tolist() == [5, 6, 7]
    assert post.num_simulations("low", "pending") == 5
    assert post.pending("high").tolist() == [5, 6, 7]


@pytest.mark.parametrize("n", [0, -1, 2.5, "3", True, None])
def test_ask_rejects_bad_n(n):
    post = make_posterior()
    before = ledger_snapshot(post)
    with pytest.raises(mfask.InvalidInputError, match="positive integer"):
        post.ask("low", n)
    assert_same_state(before, post)


def test_ask_rejects_unknown_fidelity():
    post = make_posterior()
    with pytest.raises(mfask.UnknownFidelityError, match="'medium'.*'low', 'high'"):
        post.ask("medium", 2)
    with pytest.raises(KeyError):  # also a KeyError for users who catch that
        post.ask("medium", 2)


def test_same_seed_same_asks_different_seed_different():
    a, b, c = make_posterior(seed=3), make_posterior(seed=3), make_posterior(seed=4)
    np.testing.assert_array_equal(a.ask("low", 4).theta, b.ask("low", 4).theta)
    assert not np.array_equal(a.ask("low", 4).theta, c.ask("low", 4).theta)


# ---------------------------------------------------------------------- tell
def test_tell_by_value_batch_and_ids_partial_and_out_of_order():
    post = make_posterior()
    batch = post.ask("low", 6)
    theta = batch.theta
    # by value, out of order, partial
    result = post.tell(theta[[4, 1]], simulate(theta[[4, 1]]), "low")
    assert result.ticket_ids.tolist() == [4, 1] and result.num_done == 2
    # by ticket ids (numpy ints, then a plain list)
    post.tell(np.array([0, 5]), simulate(theta[[0, 5]]))
    post.tell([2], simulate(theta[[2]]))
    # the last one by value as a torch tensor
    post.tell(torch.from_numpy(theta[[3]]), torch.from_numpy(simulate(theta[[3]])), "low")
    stored_theta, stored_x = post.data("low")
    assert stored_theta.shape == (6, 2) and stored_x.shape == (6, 3)
    order = np.argsort(stored_theta[:, 0])
    np.testing.assert_allclose(stored_x[order], simulate(theta)[np.argsort(theta[:, 0])])
    assert post.num_simulations("low", "pending") == 0


def test_tell_by_batch_and_lists():
    post = make_posterior()
    batch = post.ask("high", 3)
    post.tell(batch, simulate(batch.theta).tolist())
    assert post.num_simulations("high") == 3


def test_tell_matches_values_that_went_through_a_text_file():
    post = make_posterior()
    batch = post.ask("low", 20)
    text = io.StringIO()
    np.savetxt(text, batch.theta, fmt="%.7g")  # 7 significant digits
    theta_from_text = np.loadtxt(io.StringIO(text.getvalue()))
    assert not np.array_equal(theta_from_text, batch.theta)
    result = post.tell(theta_from_text, simulate(theta_from_text), "low")
    assert sorted(result.ticket_ids.tolist()) == batch.ticket_ids.tolist()


def test_identical_parameters_asked_twice_are_matched_one_each():
    post = make_posterior()
    first = post.ask("low", 1)
    post._ledger.open(first.theta, 0, np.zeros(1, dtype=np.int8), 0)  # same value again
    result = post.tell(np.repeat(first.theta, 2, axis=0), simulate(np.repeat(first.theta, 2, axis=0)), "low")
    assert sorted(result.ticket_ids.tolist()) == [0, 1]


def test_ambiguous_value_match_is_an_error():
    post = make_posterior(match_tolerance=1e-3)
    batch = post.ask("low", 1)
    near = batch.theta + 1e-6  # a second pending ticket within tolerance of the first
    post._ledger.open(near, 0, np.zeros(1, dtype=np.int8), 0)
    between = batch.theta + 5e-7
    before = ledger_snapshot(post)
    with pytest.raises(mfask.UnmatchedParametersError, match="2 different pending tickets"):
        post.tell(between, simulate(between), "low")
    assert_same_state(before, post)


def test_unmatched_rows_raise_unless_declared_prior_draws():
    post = make_posterior()
    post.ask("low", 2)
    archive = np.array([[1.0, 0.3], [2.0, 0.5]])
    before = ledger_snapshot(post)
    with pytest.raises(mfask.UnmatchedParametersError, match="unasked='prior'"):
        post.tell(archive, simulate(archive), "low")
    assert_same_state(before, post)
    result = post.tell(archive, simulate(archive), "low", unasked="prior")
    assert result.num_external == 2 and result.num_done == 2
    assert post.num_simulations("low") == 2 and post.num_simulations("low", "pending") == 2


def test_unasked_rows_outside_the_prior_are_rejected():
    post = make_posterior()
    outside = np.array([[1.0, 0.3], [5.0, 0.3]])
    before = ledger_snapshot(post)
    with pytest.raises(mfask.OutsidePriorError, match=r"row 1: \[5.0, 0.3\]"):
        post.tell(outside, simulate(outside), "low", unasked="prior")
    assert_same_state(before, post)


def test_failed_simulations_are_recorded_warned_and_left_out():
    post = make_posterior()
    batch = post.ask("low", 4)
    x = simulate(batch.theta)
    x[1, 0] = np.nan
    x[3, 2] = np.inf
    with pytest.warns(mfask.SimulationFailedWarning, match="2 of 4"):
        result = post.tell(batch, x)
    assert (result.num_done, result.num_failed) == (2, 2)
    assert post.num_simulations("low", "failed") == 2
    assert post.data("low")[0].shape == (2, 2)


def test_telling_twice_is_an_error_unless_skipped():
    post = make_posterior()
    batch = post.ask("low", 3)
    post.tell(batch.ticket_ids[:2], simulate(batch.theta[:2]))
    before = ledger_snapshot(post)
    with pytest.raises(mfask.TicketAlreadyToldError, match=r"\[0, 1\].*skip_told"):
        post.tell(batch, simulate(batch.theta))
    assert_same_state(before, post)
    result = post.tell(batch, simulate(batch.theta), skip_told=True)
    assert result.ticket_ids.tolist() == [-1, -1, 2]
    with pytest.raises(mfask.TicketAlreadyToldError):
        post.tell([2, 2], simulate(batch.theta[:2]))


def test_unknown_ticket_is_an_error():
    post = make_posterior()
    post.ask("low", 2)
    with pytest.raises(mfask.UnknownTicketError, match=r"\[7\]"):
        post.tell([0, 7], simulate(np.ones((2, 2))))
    assert post.num_simulations("low") == 0


@pytest.mark.parametrize(
    "x, message",
    [
        (np.ones((3, 3)), r"expected shape \(2, \.\.\.\)"),
        ([["a", "b", "c"], ["d", "e", "f"]], "numeric"),
        ("nonsense", "numeric"),
    ],
)
def test_bad_x_is_rejected_with_state_unchanged(x, message):
    post = make_posterior()
    batch = post.ask("low", 2)
    before = ledger_snapshot(post)
    with pytest.raises(mfask.InvalidInputError, match=message):
        post.tell(batch, x)
    assert_same_state(before, post)


def test_x_shape_must_stay_the_same_across_fidelities():
    post = make_posterior()
    low = post.ask("low", 2)
    post.tell(low, simulate(low.theta))
    high = post.ask("high", 2)
    before = ledger_snapshot(post)
    with pytest.raises(mfask.InvalidInputError, match=r"shape \(3,\)"):
        post.tell(high, np.ones((2, 4)))
    assert_same_state(before, post)


@pytest.mark.parametrize(
    "theta, message",
    [
        (np.ones((2, 3)), r"shape \(n, 2\)"),
        ([[1.0, np.nan]], "NaN"),
        ([["x", "y"]], "numeric"),
    ],
)
def test_bad_theta_is_rejected(theta, message):
    post = make_posterior()
    post.ask("low", 2)
    before = ledger_snapshot(post)
    with pytest.raises(mfask.InvalidInputError, match=message):
        post.tell(theta, np.ones((np.shape(theta)[0], 3)), "low")
    assert_same_state(before, post)


def test_tell_without_fidelity_needs_tickets():
    post = make_posterior()
    batch = post.ask("low", 2)
    with pytest.raises(mfask.InvalidInputError, match="needs the fidelity"):
        post.tell(batch.theta, simulate(batch.theta))
    with pytest.raises(mfask.InvalidInputError, match="asked at fidelity 'low'"):
        post.tell(batch, simulate(batch.theta), "high")


# ------------------------------------------------------ parameter subsets
def test_fidelity_with_a_parameter_subset():
    prior = BoxUniform([0, 0, 0], [1, 2, 3], names=["a", "b", "c"])
    post = MultiFidelityPosterior(
        prior, [Fidelity("low", parameters=["a", "c"]), "high"], seed=0,
        flow=TINY_FLOW, training=QUICK_TRAINING,
    )
    batch = post.ask("low", 4)
    assert batch.theta.shape == (4, 3) and batch.used_parameters == ("a", "c")
    np.testing.assert_array_equal(batch.theta_used, batch.theta[:, [0, 2]])
    # tell with only the used columns, matched by value
    result = post.tell(batch.theta_used, batch.theta_used.sum(axis=1, keepdims=True), "low")
    assert sorted(result.ticket_ids.tolist()) == [0, 1, 2, 3]
    # unasked subset rows get prior-drawn dummies for the unused parameter
    extra = np.array([[0.5, 1.5], [0.2, 2.5]])
    post.tell(extra, extra.sum(axis=1, keepdims=True), "low", unasked="prior")
    theta, _ = post.data("low")
    assert theta.shape == (6, 3)
    np.testing.assert_array_equal(theta[4:, [0, 2]], extra)
    assert ((theta[4:, 1] >= 0) & (theta[4:, 1] < 2)).all()
    with pytest.raises(mfask.InvalidInputError, match="unknown parameter"):
        MultiFidelityPosterior(prior, [Fidelity("low", parameters=["z"])])


# -------------------------------------------------------------- training
def test_training_is_lazy_and_incremental():
    post = make_posterior()
    batch = post.ask("low", 40)
    post.tell(batch, simulate(batch.theta))
    assert post.training_histories("low") == []
    first = post.fit()
    assert list(first) == ["low"] and post.training_histories("low")
    assert post.fit() == {}  # nothing new: nothing retrained
    high = post.ask("high", 20)
    post.tell(high, simulate(high.theta, shift=0.5))
    second = post.fit()
    assert list(second) == ["high"]  # low unchanged; high starts from low's weights
    low_more = post.ask("low", 10)
    post.tell(low_more, simulate(low_more.theta))
    third = post.fit()
    assert list(third) == ["low", "high"]  # the chain below changed


def test_transfer_starts_from_the_lower_levels_weights():
    post = make_posterior(training=TrainingConfig(max_epochs=1, learning_rate=1e-12))
    low = post.ask("low", 30)
    post.tell(low, simulate(low.theta))
    high = post.ask("high", 10)
    post.tell(high, simulate(high.theta, shift=0.5))
    post.fit()
    low_flow, high_flow = post._levels[0].members[0], post._levels[1].members[0]
    for (name, a), (_, b) in zip(low_flow.flow.named_parameters(), high_flow.flow.named_parameters()):
        # a learning rate of 1e-12 leaves the transferred weights as they were
        torch.testing.assert_close(a, b, atol=1e-8, rtol=0, msg=name)


def test_same_seed_same_trained_weights():
    def trained(seed):
        post = make_posterior(seed=seed)
        batch = post.ask("low", 30)
        post.tell(batch, simulate(batch.theta))
        post.fit()
        return post._levels[0].members[0].state_dict()

    a, b, c = trained(1), trained(1), trained(2)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_fit_needs_data():
    post = make_posterior()
    with pytest.raises(mfask.NotEnoughDataError, match="at least 2"):
        post.sample(10, [1.0, 2.0, 3.0])


# ------------------------------------------------------------- posterior
@pytest.fixture(scope="module")
def trained_posterior() -> MultiFidelityPosterior:
    post = make_posterior()
    low = post.ask("low", 60)
    post.tell(low, simulate(low.theta))
    high = post.ask("high", 20)
    post.tell(high, simulate(high.theta, shift=0.5))
    post.fit()
    return post


def test_sample_and_log_prob_shapes_and_support(trained_posterior):
    post = trained_posterior
    x_o = simulate(np.array([[1.0, 0.3]]))[0]
    samples = post.sample(500, x_o)
    assert samples.shape == (500, 2)
    assert post.prior.in_support(torch.from_numpy(samples)).all()
    assert post.sample(3, x_o[None, :]).shape == (3, 2)
    log_q = post.log_prob(samples[:7], x_o)
    assert log_q.shape == (7,) and np.isfinite(log_q).all()
    outside = post.log_prob([[5.0, 0.3]], x_o)
    assert outside.shape == (1,) and outside[0] == -math.inf
    xs = simulate(np.array([[1.0, 0.3], [2.0, 0.5], [0.5, 0.2]]))
    batched = post.sample_batched(4, xs)
    assert batched.shape == (3, 4, 2)
    values = post.log_prob_batched(batched, xs)
    assert values.shape == (3, 4) and np.isfinite(values).all()
    # the batched density agrees with the single-observation one
    np.testing.assert_allclose(values[1], post.log_prob(batched[1], xs[1]), rtol=1e-5)
    low = post.sample(5, x_o, fidelity="low")
    assert low.shape == (5, 2)


def test_sample_takes_a_sample_shape(tmp_path, trained_posterior):
    """``n`` may be a sample shape (as in torch.distributions and sbi): the
    same draws as the count, reshaped to ``(*shape, d)``."""
    trained_posterior.save(tmp_path / "post.npz")
    post, twin = (MultiFidelityPosterior.load(tmp_path / "post.npz") for _ in range(2))
    x_o = simulate(np.array([[1.0, 0.3]]))[0]
    xs = simulate(np.array([[1.0, 0.3], [2.0, 0.5], [0.5, 0.2]]))
    np.testing.assert_array_equal(post.sample((6,), x=x_o), twin.sample(6, x_o))
    np.testing.assert_array_equal(post.sample(torch.Size([2, 3]), x_o), twin.sample(6, x_o).reshape(2, 3, 2))
    np.testing.assert_array_equal(post.sample((), x_o), twin.sample(1, x_o)[0])  # one draw, (d,)
    np.testing.assert_array_equal(post.sample([4], x_o, fidelity="low"), twin.sample(4, x_o, fidelity="low"))
    batched = post.sample_batched((2, 2), xs)
    assert batched.shape == (3, 2, 2, 2)
    np.testing.assert_array_equal(batched, twin.sample_batched(4, xs).reshape(3, 2, 2, 2))


@pytest.mark.parametrize("shape", [(0,), (2, -1), (2.5,), (True,), ("3",), [None]])
def test_bad_sample_shape_is_rejected_without_drawing(tmp_path, trained_posterior, shape):
    trained_posterior.save(tmp_path / "post.npz")
    post, twin = (MultiFidelityPosterior.load(tmp_path / "post.npz") for _ in range(2))
    x_o = simulate(np.array([[1.0, 0.3]]))[0]
    with pytest.raises(mfask.InvalidInputError, match="sample shape of positive integers"):
        post.sample(shape, x_o)
    with pytest.raises(mfask.InvalidInputError, match="sample shape of positive integers"):
        post.sample_batched(shape, x_o[None, :])
    np.testing.assert_array_equal(post.sample(5, x_o), twin.sample(5, x_o))  # the stream did not move


def test_log_prob_is_a_normalised_density():
    """Integrating q(theta | x) over the prior box on a grid gives 1.

    The simulator is noisy here: the noise-free stand-in is an exact linear map,
    whose posterior is a point that the conditional standardisation resolves far
    below the grid's spacing."""
    rng = np.random.default_rng(3)
    post = make_posterior()
    for fidelity, shift, n in (("low", 0.0, 60), ("high", 0.5, 20)):
        batch = post.ask(fidelity, n)
        post.tell(batch, simulate(batch.theta, shift=shift) + rng.normal(0.0, 0.5, (n, 3)))
    post.fit()
    x_o = simulate(np.array([[1.5, 0.35]]))[0]
    mu = np.linspace(0.1, 3.0, 401)[:-1] + 2.9 / 800
    sigma = np.linspace(0.1, 0.6, 401)[:-1] + 0.5 / 800
    grid = np.stack(np.meshgrid(mu, sigma, indexing="ij"), axis=-1).reshape(-1, 2)
    mass = np.exp(post.log_prob(grid, x_o)).sum() * (2.9 / 400) * (0.5 / 400)
    # midpoint rule on a 400x400 grid; tolerance covers discretisation error of a
    # smooth density whose support is inside the box
    assert mass == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p: p.sample(0, [1, 2, 3]), "positive integer"),
        (lambda p: p.sample(5, [1, 2]), r"shape \(3,\)"),
        (lambda p: p.sample(5, [1, 2, np.nan]), "finite"),
        (lambda p: p.sample_batched(5, [1, 2, 3]), r"\(m, \*\(3,\)\)"),
        (lambda p: p.log_prob([[1.0, 0.3, 2.0]], [1, 2, 3]), r"\(n, 2\)"),
        (lambda p: p.log_prob_batched(np.ones((2, 4, 2)), np.ones((3, 3))), r"\(3, n, 2\)"),
        (lambda p: p.sample(5, [1, 2, 3], fidelity="medium"), "unknown fidelity"),
    ],
)
def test_query_errors(trained_posterior, call, message):
    with pytest.raises(mfask.MfaskError, match=message):
        call(trained_posterior)


def test_independent_prior_posterior_stays_in_support():
    prior = IndependentPrior(
        [torch.distributions.LogNormal(torch.tensor(-1.0, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64))] * 2,
        names=["beta", "gamma"],
    )
    post = MultiFidelityPosterior(prior, seed=0, flow=TINY_FLOW, training=QUICK_TRAINING)
    batch = post.ask("high", 50)
    post.tell(batch, np.log(batch.theta) + 0.1)
    samples = post.sample(200, [-1.0, -1.0])
    assert (samples > 0).all()


# ------------------------------------------------------------ save / load
def test_save_load_restores_exact_state(tmp_path, trained_posterior):
    post = trained_posterior
    pending = post.ask("high", 3)  # left pending across the save
    path = tmp_path / "study.npz"
    post.save(path)
    loaded = MultiFidelityPosterior.load(path)
    x_o = simulate(np.array([[1.0, 0.3]]))[0]
    theta = post.sample(5, x_o)
    np.testing.assert_array_equal(loaded.sample(5, x_o), theta)  # same sampling stream
    np.testing.assert_array_equal(loaded.log_prob(theta, x_o), post.log_prob(theta, x_o))
    np.testing.assert_array_equal(loaded.pending(), post.pending())
    np.testing.assert_array_equal(loaded.ask("low", 4).theta, post.ask("low", 4).theta)
    # the pending tickets can be told after the reload, by value
    loaded.tell(pending.theta, simulate(pending.theta), "high")
    assert loaded.num_simulations("high") == 23
    # one fit of the top level: the fine-tuned network and the guard's HF-only one
    assert [[h.candidate for h in fit] for fit in loaded.training_histories("high")] == [
        ["fine-tuned", "hf-only"]
    ]
    assert list(loaded.fit()) == ["high"]  # the new results retrain the top level only


def test_load_rejects_tampered_and_foreign_files(tmp_path, trained_posterior):
    path = tmp_path / "state.npz"
    trained_posterior.save(path)
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    weight_key = next(k for k in arrays if k.startswith("model/1/0/") and arrays[k].ndim == 2)
    arrays[weight_key] = arrays[weight_key][:, :-1]
    np.savez(tmp_path / "tampered.npz", **arrays)
    with pytest.raises(mfask.StateFormatError, match="shape"):
        MultiFidelityPosterior.load(tmp_path / "tampered.npz")
    # an object array would need pickle to load: refused
    arrays_obj = dict(arrays)
    arrays_obj["tickets/theta"] = np.array([object()], dtype=object)
    np.savez(tmp_path / "pickled.npz", **arrays_obj)
    with pytest.raises(mfask.StateFormatError):
        MultiFidelityPosterior.load(tmp_path / "pickled.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(mfask.StateFormatError):
        MultiFidelityPosterior.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", a=np.ones(3))
    with pytest.raises(mfask.StateFormatError, match="no mfask header"):
        MultiFidelityPosterior.load(tmp_path / "other.npz")


def test_custom_prior_must_be_passed_to_load(tmp_path):
    prior = IndependentPrior([torch.distributions.StudentT(3.0)], names=["t"])
    post = MultiFidelityPosterior(prior, seed=0, flow=TINY_FLOW, training=QUICK_TRAINING)
    batch = post.ask("high", 4)
    post.tell(batch, batch.theta)
    post.save(tmp_path / "custom.npz")
    with pytest.raises(mfask.StateFormatError, match="pass prior"):
        MultiFidelityPosterior.load(tmp_path / "custom.npz")
    loaded = MultiFidelityPosterior.load(tmp_path / "custom.npz", prior=prior)
    assert loaded.num_simulations("high") == 4


def test_constructor_validation():
    prior = BoxUniform([0], [1])
    with pytest.raises(mfask.InvalidInputError, match="non-empty list"):
        MultiFidelityPosterior(prior, "high")
    with pytest.raises(mfask.InvalidInputError, match="unique"):
        MultiFidelityPosterior(prior, ["a", "a"])
    with pytest.raises(mfask.InvalidInputError, match="Prior"):
        MultiFidelityPosterior("uniform", ["a"])
    with pytest.raises(mfask.InvalidInputError, match="seed"):
        MultiFidelityPosterior(prior, seed=-1)
    with pytest.raises(mfask.InvalidInputError, match="batch_size"):
        TrainingConfig(batch_size=0)
    with pytest.raises(mfask.InvalidInputError, match="num_bins"):
        FlowConfig(num_bins=0)
    assert MultiFidelityPosterior(prior).seed >= 0  # None draws and records a seed


def test_a_single_fidelity_needs_no_name_in_ask_or_tell():
    prior = BoxUniform([0.0, 0.0], [1.0, 1.0])
    post = MultiFidelityPosterior(prior, seed=0)
    named = MultiFidelityPosterior(prior, seed=0).ask("high", 4)
    batch = post.ask(4)
    assert batch.fidelity == "high" and np.array_equal(batch.theta, named.theta)
    assert post.ask(n=2).ticket_ids.tolist() == [4, 5]
    result = post.tell(batch.theta, batch.theta * 2.0)
    assert result.num_done == 4 and list(result.ticket_ids) == [0, 1, 2, 3]
    assert post.tell(np.array([4, 5]), np.ones((2, 2))).num_done == 2  # ids stay ids


def test_several_fidelities_still_need_the_name():
    post = MultiFidelityPosterior(BoxUniform([0.0], [1.0]), ["low", "high"], seed=0)
    with pytest.raises(mfask.InvalidInputError, match="needs the fidelity when there are several"):
        post.ask(3)
    theta = post.ask("low", 3).theta
    with pytest.raises(mfask.InvalidInputError, match="needs the fidelity"):
        post.tell(theta, theta)
    assert post.num_simulations(status="pending") == 3
