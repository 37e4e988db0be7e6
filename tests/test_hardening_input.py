"""Input validation that must refuse bad calls and leave the object unchanged
(issue 17): out-of-range or wrapped ticket ids, complex values, oversized or
failing asks, and duplicated rows in one tell by value."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mfask
from mfask import BoxUniform, MultiFidelityPosterior
from mfask.posterior import MAX_ASK
from mfask.tickets import STATUSES, TicketLedger

INT64_MAX = int(np.iinfo(np.int64).max)


def make_posterior() -> MultiFidelityPosterior:
    return MultiFidelityPosterior(BoxUniform([0.0, 0.0], [1.0, 1.0]), ["high"], seed=0)


def history(post: MultiFidelityPosterior) -> mfask.AskBatch:
    """Two asks, the first told: the state the refused calls start from.
    Returns the second (pending) batch."""
    first = post.ask("high", 2)
    post.tell(first, [[0.1], [0.2]])
    return post.ask("high", 3)


def snapshot(post: MultiFidelityPosterior) -> dict[str, Any]:
    """What a user can see of the tickets and results."""
    state: dict[str, Any] = {
        "pending": post.pending().tolist(),
        "x_shape": post.x_shape,
        "round": post.round,
    }
    for status in STATUSES:
        state[status] = post.num_simulations(status=status)
    theta, x = post.data("high")
    state["theta"], state["x"] = theta.tolist(), x.tolist()
    return state


def assert_unchanged_after(
    refused: Callable[[MultiFidelityPosterior], Any], error: type[Exception], match: str
) -> None:
    """``refused`` raises ``error``, changes no visible state, and the next
    ask (and the tell that follows) behaves as on an object that never saw it."""
    post, fresh = make_posterior(), make_posterior()
    history(post)
    history(fresh)
    before = snapshot(post)
    with pytest.raises(error, match=match):
        refused(post)
    assert snapshot(post) == before == snapshot(fresh)
    batch, expected = post.ask("high", 4), fresh.ask("high", 4)
    np.testing.assert_array_equal(batch.ticket_ids, expected.ticket_ids)
    np.testing.assert_array_equal(batch.theta, expected.theta)
    post.tell(batch, np.ones((4, 1)))
    fresh.tell(expected, np.ones((4, 1)))
    assert snapshot(post) == snapshot(fresh)


# ============================================================ 1: ticket ids
@pytest.mark.parametrize(
    "ids",
    [
        np.array([-1]),
        [-1],
        torch.tensor([-3]),
        np.array([5]),  # issued ids are 0..4
        np.array([2, 10**6]),
    ],
)
def test_tell_refuses_ids_never_issued(ids: Any) -> None:
    count = len(ids)
    assert_unchanged_after(
        lambda post: post.tell(ids, np.full((count, 1), 7.0)),
        mfask.UnknownTicketError,
        "unknown ticket id",
    )


@pytest.mark.parametrize(
    "ids",
    [
        np.array([np.iinfo(np.uint64).max], dtype=np.uint64),  # wraps to -1 when cast
        np.array([2**63], dtype=np.uint64),  # wraps to the most negative int64
        [2**64 - 1],
        [2**70],
        [-(2**70)],
    ],
)
def test_tell_refuses_ids_that_would_wrap(ids: Any) -> None:
    assert_unchanged_after(
        lambda post: post.tell(ids, [[7.0]]), mfask.InvalidInputError, "64-bit signed integer"
    )


def test_negative_id_does_not_reach_a_later_ticket() -> None:
    """The reported sequence: a told ``-1`` must not land in a later ticket."""
    post = make_posterior()
    post.ask("high", 3)
    with pytest.raises(mfask.UnknownTicketError):
        post.tell(np.array([-1]), [[7.0]])
    later = post.ask("high", 100)
    post.tell(later, np.zeros((100, 1)))
    assert not np.any(post.data("high")[1] == 7.0)


def test_object_arrays_of_small_ints_are_ticket_ids() -> None:
    post = make_posterior()
    batch = post.ask("high", 2)
    result = post.tell(np.array([1, 0], dtype=object), [[1.0], [0.0]])
    assert result.ticket_ids.tolist() == [1, 0] and post.pending().size == 0
    with pytest.raises(mfask.InvalidInputError, match="64-bit signed integer"):
        post.tell(np.array([1, -(2**63) - 1], dtype=object), [[1.0], [0.0]])
    assert len(batch) == 2


@pytest.mark.parametrize("method", ["fail", "abandon", "retry", "simulator_seeds"])
def test_other_ticket_methods_refuse_negative_ids(method: str) -> None:
    assert_unchanged_after(
        lambda post: getattr(post, method)(np.array([-1])), mfask.UnknownTicketError, "unknown"
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ids=st.lists(
        st.one_of(st.integers(min_value=-INT64_MAX - 1, max_value=-1), st.integers(min_value=5, max_value=INT64_MAX)),
        min_size=1,
        max_size=4,
    ),
    dtype=st.sampled_from([None, np.int64, np.int32, np.uint64]),
)
def test_out_of_range_ids_are_refused(ids: list[int], dtype: Any) -> None:
    """Any id outside ``0..issued-1``, in any integer dtype it fits, is refused
    (an unsigned dtype only holds the non-negative ones)."""
    if dtype is not None:
        info = np.iinfo(dtype)
        ids = [i for i in ids if info.min <= i <= info.max] or [min(int(info.max), INT64_MAX)]
    value = ids if dtype is None else np.array(ids, dtype=dtype)
    assert_unchanged_after(
        lambda post: post.tell(value, np.full((len(ids), 1), 7.0)),
        mfask.UnknownTicketError,
        "unknown ticket id",
    )


# ========================================================= 9: complex values
COMPLEX_VALUES = [
    pytest.param(lambda a: a.astype(np.complex128), id="numpy-complex128"),
    pytest.param(lambda a: a.astype(np.complex64), id="numpy-complex64"),
    pytest.param(lambda a: torch.from_numpy(a.astype(np.complex128)), id="torch-complex"),
    pytest.param(lambda a: [[complex(v) for v in row] for row in a], id="list-of-complex"),
]


@pytest.mark.parametrize("to_complex", COMPLEX_VALUES)
def test_tell_refuses_complex_outputs(to_complex: Callable[[np.ndarray], Any]) -> None:
    def refused(post: MultiFidelityPosterior) -> None:
        pending = post.pending()
        post.tell(pending, to_complex(np.full((pending.size, 1), 0.5)))

    assert_unchanged_after(refused, mfask.InvalidInputError, "x must be real-valued")


@pytest.mark.parametrize("to_complex", COMPLEX_VALUES)
def test_tell_by_value_refuses_complex_theta(to_complex: Callable[[np.ndarray], Any]) -> None:
    def refused(post: MultiFidelityPosterior) -> None:
        post.tell(to_complex(np.array([[0.5, 0.5]])), [[0.5]], "high", unasked="prior")

    assert_unchanged_after(refused, mfask.InvalidInputError, "theta must be real-valued")


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda post: post.set_observation(np.array([0.5 + 1e-3j])), id="set_observation"),
        pytest.param(lambda post: post.sample(3, torch.tensor([0.5 + 0j])), id="sample"),
        pytest.param(
            lambda post: post.log_prob(np.array([[0.5, 0.5j]]), [0.5]), id="log_prob-theta"
        ),
    ],
)
def test_observations_and_queries_refuse_complex(call: Callable[[MultiFidelityPosterior], Any]) -> None:
    assert_unchanged_after(call, mfask.InvalidInputError, "must be real-valued")


def test_first_observation_refuses_complex() -> None:
    post = make_posterior()
    with pytest.raises(mfask.InvalidInputError, match="x_o must be real-valued"):
        post.set_observation(np.array([0.5 + 1e-3j]))
    assert post.observation is None and post.x_shape is None


@pytest.mark.parametrize("to_complex", COMPLEX_VALUES)
def test_conversion_refuses_complex_even_with_zero_imaginary_part(
    to_complex: Callable[[np.ndarray], Any],
) -> None:
    from mfask.user_input import as_numeric_array, as_theta

    with pytest.raises(mfask.InvalidInputError, match="real-valued"):
        as_numeric_array(to_complex(np.zeros((2, 2))), "values")
    with pytest.raises(mfask.InvalidInputError, match="real-valued"):
        as_theta(to_complex(np.zeros((2, 2))), 2)


# ============================================ 12: oversized and failing asks
@pytest.mark.parametrize("n", [MAX_ASK + 1, 10**12, 10**30, np.int64(2**62)])
def test_ask_refuses_too_many_rows_before_allocating(n: Any) -> None:
    assert_unchanged_after(
        lambda post: post.ask("high", n), mfask.InvalidInputError, "n must be at most"
    )


@pytest.mark.parametrize("n", [0, -1, 2.0, 2.5, True, "3", None, np.float64(3)])
def test_ask_refuses_non_positive_or_non_integer_n(n: Any) -> None:
    assert_unchanged_after(
        lambda post: post.ask("high", n), mfask.InvalidInputError, "n must be a positive integer"
    )


def failing_after_drawing(error: BaseException) -> Callable[..., Any]:
    """A stand-in for ``TicketLedger.open`` that fails after the parameters
    were drawn, i.e. after the ask's random stream moved."""

    def open_then_fail(*args: Any, **kwargs: Any) -> Any:
        raise error

    return open_then_fail


@pytest.mark.parametrize("error", [MemoryError("no room"), KeyboardInterrupt(), RuntimeError("x")])
def test_failed_ask_does_not_move_the_ask_stream(
    monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    def refused(post: MultiFidelityPosterior) -> None:
        with monkeypatch.context() as patch:
            patch.setattr(TicketLedger, "open", failing_after_drawing(error))
            post.ask("high", 50)

    assert_unchanged_after(refused, type(error), "")


def test_failed_sequential_ask_keeps_the_round(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failing first sequential ask neither starts a round nor moves the stream
    (no results told, so the round is a prior round and nothing is trained)."""
    post, fresh = make_posterior(), make_posterior()
    for obj in (post, fresh):
        obj.ask("high", 3)
        obj.set_observation([0.5])
    with monkeypatch.context() as patch:
        patch.setattr(TicketLedger, "open", failing_after_drawing(MemoryError("no room")))
        with pytest.raises(MemoryError):
            post.ask("high", 5)
    assert post.round == fresh.round == 0
    assert post.round_info == fresh.round_info
    assert snapshot(post) == snapshot(fresh)
    batch, expected = post.ask("high", 5), fresh.ask("high", 5)
    assert batch.round == expected.round == post.round == 1
    np.testing.assert_array_equal(batch.theta, expected.theta)
    assert post.round_info == fresh.round_info


# ================================ 18: duplicated rows in one tell by value
def text_rounded(theta: np.ndarray) -> np.ndarray:
    """Values as they come back from a text file (within match tolerance)."""
    return np.array([[float(f"{v:.9g}") for v in row] for row in np.atleast_2d(theta)])


def posterior_with_repeated_pending(copies: int) -> tuple[MultiFidelityPosterior, np.ndarray, list[int]]:
    """A posterior with ``copies`` pending tickets of one value (by retrying a
    failed ticket) and one pending ticket of another value."""
    post = make_posterior()
    first = post.ask("high", 1)
    post.fail(first)
    tickets = [int(post.retry(first).ticket_ids[0]) for _ in range(copies)]
    post.ask("high", 1)
    return post, first.theta[0], tickets


@pytest.mark.parametrize("rounded", [False, True], ids=["exact", "within-tolerance"])
def test_repeated_rows_take_distinct_pending_tickets(rounded: bool) -> None:
    post, value, tickets = posterior_with_repeated_pending(2)
    row = text_rounded(value)[0] if rounded else value
    result = post.tell(np.stack([row, row]), [[1.0], [2.0]], "high")
    assert result.ticket_ids.tolist() == tickets and result.num_external == 0
    assert post.num_simulations("high") == 2 and post.pending().size == 1


@pytest.mark.parametrize("first_rounded", [False, True], ids=["exact-first", "rounded-first"])
def test_repeats_beyond_pending_tickets_are_unasked_rows_in_row_order(first_rounded: bool) -> None:
    """Which row takes the one pending ticket does not depend on whether it
    was matched exactly or within tolerance: the first row does."""
    post, value, tickets = posterior_with_repeated_pending(1)
    rounded = text_rounded(value)[0]
    rows = np.stack([rounded, value] if first_rounded else [value, rounded])
    size = post.num_simulations(status="pending") + post.num_simulations(status="failed")
    result = post.tell(rows, [[1.0], [2.0]], "high", unasked="prior")
    assert result.ticket_ids[0] == tickets[0]
    assert result.ticket_ids[1] == size  # a new external ticket
    assert result.num_external == 1 and result.num_done == 2
    theta, x = post.data("high")
    np.testing.assert_array_equal(theta[0], value)  # the asked ticket keeps its value
    assert x[:, 0].tolist() == [1.0, 2.0]
    np.testing.assert_array_equal(theta[1], rows[1])


def test_repeats_beyond_pending_tickets_raise_by_default() -> None:
    value = history(make_posterior()).theta[0]  # pending on every object with this history

    def refused(post: MultiFidelityPosterior) -> None:
        post.tell(np.stack([value, text_rounded(value)[0]]), [[1.0], [2.0]], "high")

    assert_unchanged_after(refused, mfask.UnmatchedParametersError, "a row repeated in one call")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    picks=st.lists(st.tuples(st.integers(0, 2), st.booleans()), min_size=1, max_size=8),
    copies=st.integers(1, 3),
)
def test_value_matching_gives_each_pending_ticket_to_at_most_one_row(
    picks: list[tuple[int, bool]], copies: int
) -> None:
    """Rows picked from three asked values (each pending ``copies`` times),
    exact or text-rounded: the first ``copies`` rows of each value take its
    tickets, oldest first; the rest become external tickets."""
    post = make_posterior()
    batch = post.ask("high", 3)
    post.fail(batch)
    tickets = np.array([post.retry(batch).ticket_ids for _ in range(copies)]).T  # (3, copies)
    rows = np.stack([text_rounded(batch.theta[i])[0] if r else batch.theta[i] for i, r in picks])
    result = post.tell(rows, np.arange(len(picks), dtype=float).reshape(-1, 1), "high",
                       unasked="prior")
    seen = [0, 0, 0]
    expected_external = 0
    for row, (i, _) in enumerate(picks):
        if seen[i] < copies:
            assert result.ticket_ids[row] == tickets[i, seen[i]]
        else:
            assert result.ticket_ids[row] >= 3 + 3 * copies
            expected_external += 1
        seen[i] += 1
    assert result.num_external == expected_external
    assert np.unique(result.ticket_ids).size == len(picks)
    assert post.pending().size == sum(max(copies - k, 0) for k in seen)
