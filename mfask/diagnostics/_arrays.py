"""Array handling shared by the diagnostics (private).

Every public function in :mod:`mfask.diagnostics` accepts numpy arrays, torch
tensors or nested lists; this module is the single place that turns them into
float64 numpy arrays and reports bad input with :class:`InvalidInputError`,
and that standardises columns.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mfask.errors import InvalidInputError

__all__ = ["as_float_array", "as_samples", "z_score"]


def as_float_array(
    value: Any,
    name: str,
    *,
    ndim: int | tuple[int, ...] | None,
    allow_inf: bool = False,
    allow_nan: bool = False,
) -> np.ndarray:
    """Convert ``value`` to a float64 numpy array with one of the given ``ndim``.

    ``ndim=None`` accepts any number of dimensions from 1 up. Raises
    :class:`InvalidInputError` if the input is not numeric, has another
    number of dimensions, is empty, or contains NaN (unless ``allow_nan``) or
    inf (unless ``allow_inf``).
    """
    try:
        if isinstance(value, torch.Tensor):
            array = value.detach().to(device="cpu", dtype=torch.float64).numpy()
        else:
            array = np.asarray(value)
            if array.dtype == object or not (
                np.issubdtype(array.dtype, np.number) or array.dtype == bool
            ):
                raise TypeError(f"dtype {array.dtype}")
            if np.iscomplexobj(array):
                raise TypeError("complex values")
            array = array.astype(np.float64)
    except (TypeError, ValueError, RuntimeError) as error:
        raise InvalidInputError(
            f"{name} must be a numeric numpy array, torch tensor or nested list; "
            f"got {type(value).__name__} ({error})"
        ) from None
    if ndim is None:
        if array.ndim == 0:
            raise InvalidInputError(f"{name} must be at least 1-D; got a scalar")
    elif array.ndim not in ((ndim,) if isinstance(ndim, int) else ndim):
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        expected = " or ".join(f"{k}-D" for k in allowed)
        raise InvalidInputError(
            f"{name} must be {expected}; got shape {tuple(array.shape)}"
        )
    if array.size == 0:
        raise InvalidInputError(f"{name} is empty (shape {tuple(array.shape)})")
    if not allow_nan and np.isnan(array).any():
        raise InvalidInputError(f"{name} contains NaN")
    if not allow_inf and np.isinf(array).any():
        raise InvalidInputError(f"{name} contains inf")
    return array


def as_samples(value: Any, name: str) -> np.ndarray:
    """Convert a sample set to a float64 array of shape ``(n, d)``.

    A 1-D input of length ``n`` is read as ``n`` one-dimensional samples.
    """
    array = as_float_array(value, name, ndim=(1, 2))
    return array[:, None] if array.ndim == 1 else array


def z_score(values: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Standardise the columns of ``values`` ``(n, D)``.

    Uses the column means and standard deviations of ``reference`` ``(r, D)``
    (``values`` itself when ``None``). Columns with zero spread in the
    reference are only centred.
    """
    reference = values if reference is None else reference
    std = reference.std(axis=0)
    return (values - reference.mean(axis=0)) / np.where(std > 0, std, 1.0)
