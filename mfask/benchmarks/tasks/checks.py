"""Input checks shared by the benchmark tasks.

Every task validates the same three things before it simulates or evaluates a
likelihood: the parameter array, the fidelity name and the observation. The
checks live here once so that every task reports bad input with the same
exception types and messages.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mfask.errors import InvalidInputError, UnknownFidelityError
from mfask.priors import as_theta_tensor

__all__ = ["check_theta", "check_fidelity", "check_observation", "check_rng"]


def check_theta(theta: Any, dim: int) -> np.ndarray:
    """Return ``theta`` as a float64 numpy array of shape ``(n, dim)``.

    A 1-D input of length ``dim`` is read as one row. Raises
    :class:`~mfask.errors.InvalidInputError` for a wrong shape, non-numeric or
    non-finite values.
    """
    return as_theta_tensor(theta, dim).numpy()


def check_fidelity(fidelity: str, fidelities: Sequence[str]) -> str:
    """Return ``fidelity`` if it is one of ``fidelities``; else raise
    :class:`~mfask.errors.UnknownFidelityError`."""
    if fidelity not in fidelities:
        raise UnknownFidelityError(
            f"unknown fidelity {fidelity!r}; this task has {list(fidelities)}"
        )
    return fidelity


def check_observation(x_o: Any, x_shape: tuple[int, ...]) -> np.ndarray:
    """Return one observation as a float64 array of shape ``x_shape``.

    Accepts ``x_shape`` or ``(1, *x_shape)`` (a batch of one). Raises
    :class:`~mfask.errors.InvalidInputError` for another shape or non-finite
    values.
    """
    try:
        array = np.asarray(x_o, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InvalidInputError(f"x_o must be numeric; got {error}") from None
    if array.shape == (1, *x_shape):
        array = array[0]
    if array.shape != tuple(x_shape):
        raise InvalidInputError(
            f"x_o must have shape {tuple(x_shape)} (or (1, *x_shape)); "
            f"got {array.shape}"
        )
    if not np.isfinite(array).all():
        raise InvalidInputError("x_o has NaN or inf values")
    return array


def check_rng(rng: Any) -> np.random.Generator:
    """Return ``rng`` if it is a ``numpy.random.Generator``; else raise
    :class:`~mfask.errors.InvalidInputError`."""
    if not isinstance(rng, np.random.Generator):
        raise InvalidInputError(
            "rng must be a numpy.random.Generator (e.g. numpy.random.default_rng(0)); "
            f"got {type(rng).__name__}"
        )
    return rng
