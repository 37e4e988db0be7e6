"""Property-based tests of the ask/tell bookkeeping (no training involved)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import mfask
from mfask import BoxUniform, MultiFidelityPosterior

FIDELITIES = ("low", "mid", "high")


def new_posterior() -> MultiFidelityPosterior:
    prior = BoxUniform([0.0, -1.0, 5.0], [1.0, 1.0, 6.0], names=["a", "b", "c"])
    return MultiFidelityPosterior(prior, list(FIDELITIES), seed=0)


def outputs(theta: np.ndarray) -> np.ndarray:
    return np.stack([theta.sum(axis=1), theta[:, 0] * theta[:, 2]], axis=1)


# one step: ask n at a fidelity, or tell a random subset of the pending tickets
# of a fidelity in a random order through one of the three tell forms
step = st.one_of(
    st.tuples(st.just("ask"), st.sampled_from(FIDELITIES), st.integers(1, 6)),
    st.tuples(
        st.just("tell"),
        st.sampled_from(FIDELITIES),
        st.sampled_from(["value", "ids", "value-text"]),
        st.randoms(use_true_random=False),
    ),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(step, min_size=1, max_size=12))
def test_every_result_lands_on_its_ticket(steps):
    post = new_posterior()
    asked: dict[int, np.ndarray] = {}
    told: set[int] = set()
    for action in steps:
        if action[0] == "ask":
            _, fidelity, n = action
            batch = post.ask(fidelity, n)
            assert batch.theta.shape == (n, 3)
            for ticket, theta in batch:
                assert ticket not in asked
                asked[ticket] = theta
            continue
        _, fidelity, form, rng = action
        pending = [int(t) for t in post.pending(fidelity)]
        if not pending:
            continue
        chosen = rng.sample(pending, rng.randint(1, len(pending)))
        theta = np.array([asked[t] for t in chosen])
        if form == "ids":
            result = post.tell(np.array(chosen), outputs(theta))
        elif form == "value":
            result = post.tell(theta, outputs(theta), fidelity)
        else:  # through a text file with 9 significant digits
            rounded = np.array([[float(f"{v:.9g}") for v in row] for row in theta])
            result = post.tell(rounded, outputs(rounded), fidelity)
        assert sorted(result.ticket_ids.tolist()) == sorted(chosen)
        told.update(chosen)

    assert set(post.pending().tolist()) == set(asked) - told
    assert post.num_simulations() == len(told)
    for fidelity in FIDELITIES:
        theta, x = post.data(fidelity)
        # each stored result is the simulator output of its own stored parameters
        if len(theta):
            np.testing.assert_allclose(x, outputs(theta), rtol=1e-7, atol=1e-7)


bad_values = st.one_of(
    st.just("text"),
    st.just(None),
    st.lists(st.text(max_size=2), min_size=1, max_size=3),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda v: [[v, 0.0, 5.5]]),
    st.integers(-3, 3).map(lambda k: np.ones((2, 3 + k)) * 0.5),
)


@settings(max_examples=60, deadline=None)
@given(theta=bad_values, fidelity=st.sampled_from(["low", "nope", None]))
def test_bad_tells_raise_mfask_errors_and_change_nothing(theta, fidelity):
    post = new_posterior()
    batch = post.ask("low", 2)
    before = post._ledger.to_arrays()
    try:
        post.tell(theta, np.ones((2, 2)), fidelity)
    except mfask.MfaskError:
        pass  # the documented failure mode
    else:
        raise AssertionError(f"tell accepted theta={theta!r} at fidelity {fidelity!r}")
    after = post._ledger.to_arrays()
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])
    assert post.pending().tolist() == batch.ticket_ids.tolist()


@settings(max_examples=40, deadline=None)
@given(n=st.one_of(st.integers(-5, 0), st.floats(allow_nan=True), st.text(max_size=3), st.booleans()))
def test_bad_ask_sizes_are_rejected(n):
    post = new_posterior()
    try:
        post.ask("low", n)
    except mfask.InvalidInputError as error:
        assert "positive integer" in str(error)
    else:
        raise AssertionError(f"ask accepted n={n!r}")
    assert post.pending().size == 0
