"""Errors that tell a new user what to do (issue 15, items 10 and 12)."""

from __future__ import annotations

import re

import numpy as np
import pytest

import mfask
from mfask.errors import InvalidInputError, UnmatchedParametersError
from mfask.study_spec import posterior_from_spec

UNIFORM = {"a": {"low": 0.0, "high": 1.0}}


def test_rounded_parameters_are_named_as_such_with_the_nearest_ticket() -> None:
    post = mfask.MultiFidelityPosterior(mfask.BoxUniform([0.0, 0.0], [1.0, 1.0]), seed=0, verbose=False)
    batch = post.ask(5)
    rounded = np.array([[float(f"{v:.4f}") for v in row] for row in batch.theta])
    with pytest.raises(UnmatchedParametersError) as raised:
        post.tell(rounded, rounded)
    message = str(raised.value)
    first = int(re.search(r"e\.g\. row (\d+)", message).group(1))
    assert f"nearest pending ticket is {batch.ticket_ids[first]}:" in message
    assert "look rounded to 4 decimals" in message and "match_tolerance" in message
    assert "asked ones stay pending" in message  # unasked='prior' is not offered as the fix
    assert post.num_simulations(status="pending") == 5  # nothing was recorded


def test_values_far_from_every_ticket_are_not_called_rounded() -> None:
    post = mfask.MultiFidelityPosterior(mfask.BoxUniform([0.0], [10.0]), seed=0, verbose=False)
    post.ask(3)
    with pytest.raises(UnmatchedParametersError) as raised:
        post.tell(np.array([[11.5]]) - 2.0, np.zeros((1, 1)))
    assert "nearest pending ticket" in str(raised.value)
    assert "rounded" not in str(raised.value)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({"parameters": {"a": {"distribution": "normal", "loc": 0, "scale": 1}}},
         r"unknown marginal type 'normal'.*did you mean 'Normal'.*Uniform, Normal, LogNormal"),
        ({"parameters": {"a": {"distribution": "Normal", "mean": 0, "scale": 1}}},
         r"Normal marginal takes the arguments \['loc', 'scale'\]; got \['mean', 'scale'\]"),
        ({"parameters": UNIFORM, "training": {"max_num_epochs": 5}},
         r"\[training\]: unknown entries \['max_num_epochs'\].*did you mean 'max_epochs'.*learning_rate"),
        ({"parameters": UNIFORM, "flow": {"hidden": 5}}, r"\[flow\]: unknown entries.*hidden_features"),
        ({"parameters": UNIFORM, "sed": 1}, r"unknown spec entries \['sed'\].*did you mean 'seed'"),
    ],
)
def test_spec_errors_list_the_valid_choices(spec, expected) -> None:
    with pytest.raises(InvalidInputError, match=expected):
        posterior_from_spec(spec)


def test_spec_takes_the_transfer_guard() -> None:
    spec = {"parameters": UNIFORM, "fidelities": ["low", "high"], "transfer_guard": False}
    assert posterior_from_spec(spec).transfer_guard is False
