"""Priors accept what users pass: ints or shape tuples, numpy or lists, no generator needed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mfask.errors import InvalidInputError
from mfask.priors import BoxUniform, IndependentPrior


@pytest.fixture
def box() -> BoxUniform:
    return BoxUniform([0.0, -1.0], [1.0, 3.0], names=["a", "b"])


@pytest.mark.parametrize(
    "sample_shape, expected",
    [(5, (5, 2)), ((5,), (5, 2)), (torch.Size([5]), (5, 2)), ((), (2,)), ((2, 3), (2, 3, 2)), (0, (0, 2))],
)
def test_sample_takes_an_int_or_a_shape_and_no_generator(box, sample_shape, expected) -> None:
    draws = box.sample(sample_shape)
    assert tuple(draws.shape) == expected
    assert draws.dtype == torch.float64
    assert bool(box.in_support(draws.reshape(-1, 2)).all())


def test_sample_with_a_generator_is_reproducible_and_shape_independent(box) -> None:
    first = box.sample(6, torch.Generator().manual_seed(3))
    again = box.sample((2, 3), torch.Generator().manual_seed(3))
    assert torch.equal(first, again.reshape(6, 2))


def test_sample_without_a_generator_follows_the_global_seed(box) -> None:
    torch.manual_seed(11)
    first = box.sample(4)
    torch.manual_seed(11)
    assert torch.equal(first, box.sample(4))


@pytest.mark.parametrize("bad", [-1, 2.5, (2, -1), "5", True])
def test_sample_refuses_bad_shapes(box, bad) -> None:
    with pytest.raises(InvalidInputError, match="sample_shape"):
        box.sample(bad)


def test_log_prob_accepts_numpy_lists_and_batches(box) -> None:
    expected = -math.log(1.0 * 4.0)
    rows = np.array([[0.5, 0.0], [2.0, 0.0]])
    assert box.log_prob(rows).tolist() == [pytest.approx(expected), -math.inf]
    assert box.log_prob([0.5, 0.0]).shape == ()
    assert float(box.log_prob([0.5, 0.0])) == pytest.approx(expected)
    assert box.log_prob(np.full((3, 4, 2), 0.5)).shape == (3, 4)
    assert box.in_support([[0.5, 0.0], [np.nan, 0.0]]).tolist() == [True, False]
    assert box.log_prob(torch.tensor([[0.5, 0.0]], dtype=torch.float32)).item() == pytest.approx(expected)


def test_one_parameter_prior_reads_a_flat_array_as_values() -> None:
    prior = IndependentPrior([torch.distributions.Exponential(2.0)])
    values = prior.log_prob(np.array([0.5, 1.0, -1.0]))
    assert values.shape == (3,)
    assert values[:2].tolist() == pytest.approx([math.log(2.0) - 1.0, math.log(2.0) - 2.0])
    assert values[2].item() == -math.inf
    assert prior.log_prob(0.5).shape == ()


def test_log_prob_names_the_expected_shape(box) -> None:
    with pytest.raises(InvalidInputError, match=r"\(\.\.\., 2\).*\['a', 'b'\].*\(3,\)"):
        box.log_prob([1.0, 2.0, 3.0])
    with pytest.raises(InvalidInputError, match="numeric"):
        box.log_prob("abc")
