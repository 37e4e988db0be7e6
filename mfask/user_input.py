"""Conversion and validation of what users pass in.

Users hand mfask numpy arrays, torch tensors or nested lists; these helpers
turn them into the canonical types (float64 numpy arrays, float64 tensors,
int64 ticket ids) or raise :class:`~mfask.errors.InvalidInputError` with a
message that says what was expected and what came.
"""

from __future__ import annotations

import difflib
import sys
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from mfask.errors import InvalidInputError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "as_numeric_array", "as_sample_shape", "as_theta", "as_ticket_ids", "closest_name", "did_you_mean",
    "is_tensor", "parameter_indices", "positive_int",
]

_INT64_MIN, _INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)


def is_tensor(value: Any) -> bool:
    """Whether ``value`` is a torch tensor, without importing torch: a tensor
    can only exist once torch has been imported (so that the torch-free paths,
    e.g. ``mfask tell``, stay torch-free)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def as_numeric_array(value: Any, name: str) -> np.ndarray:
    """Any real numeric array-like (numpy, torch, nested lists) as a float64 numpy array.

    Complex values are refused: casting them to float would silently drop
    the imaginary part.
    """
    if is_tensor(value):
        if value.is_complex():
            raise InvalidInputError(_complex_message(name, f"torch tensor of dtype {value.dtype}"))
        return value.detach().cpu().double().numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as error:
        raise InvalidInputError(
            f"{name} must be a numeric array; got {type(value).__name__} ({error})"
        ) from None
    if np.issubdtype(array.dtype, np.complexfloating):
        raise InvalidInputError(_complex_message(name, f"{type(value).__name__} of dtype {array.dtype}"))
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise InvalidInputError(
            f"{name} must be numeric (numpy array, torch tensor or nested lists of numbers); "
            f"got {type(value).__name__} of dtype {array.dtype}"
        )
    return array.astype(np.float64)


def _complex_message(name: str, what: str) -> str:
    return (
        f"{name} must be real-valued; got a complex {what}. Pass the real part "
        "(e.g. x.real) or split real and imaginary parts into separate columns"
    )


def as_theta(value: Any, dim: int, name: str = "theta") -> Tensor:
    """Parameters as a finite float64 tensor ``(n, dim)``.

    A 1-D input of length ``dim`` is one row (for ``dim == 1``, a 1-D input is
    a column of ``n`` values).
    """
    array = as_numeric_array(value, name)
    if array.ndim == 1:
        array = array.reshape(1, -1) if dim > 1 else array.reshape(-1, 1)
    if array.ndim != 2 or array.shape[1] != dim:
        raise InvalidInputError(f"{name} must have shape (n, {dim}); got shape {array.shape}")
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        raise InvalidInputError(
            f"{name} has {int((~finite).sum())} row(s) with NaN or inf values, e.g. row "
            f"{int(np.flatnonzero(~finite)[0])}"
        )
    import torch  # the callers of as_theta compute with torch anyway

    return torch.from_numpy(array)


def as_ticket_ids(value: Any) -> np.ndarray | None:
    """Integer ticket ids ``(n,)`` if ``value`` looks like them, else ``None``.

    Raises :class:`~mfask.errors.InvalidInputError` for integers that do not
    fit in int64 (e.g. ``2**64 - 1`` as uint64), which a plain cast would
    wrap around to negative ids.
    """
    if is_tensor(value):
        import torch  # already imported: value is a tensor

        if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool \
                or value.ndim > 1:
            return None
        value = value.cpu().numpy()
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        array = np.asarray(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if array.ndim > 1:
        return None
    if array.dtype == object and array.size and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
        for v in array.reshape(-1)
    ):
        # Python ints too large for int64 (or an explicit object array)
        values = [int(v) for v in array.reshape(-1)]
        too_large = [v for v in values if not _INT64_MIN <= v <= _INT64_MAX]
        if too_large:
            raise InvalidInputError(
                f"ticket ids must fit in a 64-bit signed integer; got {too_large[:5]}"
            )
        array = np.array(values, dtype=np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        return None
    array = array.reshape(-1)
    if np.issubdtype(array.dtype, np.unsignedinteger):
        too_large = array > _INT64_MAX
        if too_large.any():
            raise InvalidInputError(
                "ticket ids must fit in a 64-bit signed integer; got "
                f"{array[too_large][:5].tolist()} ({array.dtype})"
            )
    return array.astype(np.int64)


def positive_int(value: Any, name: str, maximum: int | None = None) -> int:
    """``value`` as a positive ``int`` (at most ``maximum`` if given); bools and
    non-integers are rejected."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InvalidInputError(f"{name} must be a positive integer; got {value!r}")
    if maximum is not None and value > maximum:
        raise InvalidInputError(f"{name} must be at most {maximum:_}; got {value!r}")
    return int(value)


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """``" (did you mean 'Normal'?)"`` for a near miss of one of ``choices``
    (see :func:`closest_name`), else ``""``."""
    close = closest_name(word, choices)
    return f" (did you mean {close!r}?)" if close is not None else ""


def closest_name(word: str, choices: Sequence[str], cutoff: float = 0.6) -> str | None:
    """The one of ``choices`` that ``word`` most likely misspells, or ``None``.

    Names are compared without case and without anything but letters and
    digits (``g_Na``, ``gna`` and ``GNA`` all match ``gNa``); failing that,
    the closest spelling whose similarity (:class:`difflib.SequenceMatcher`
    ratio, 0..1) is at least ``cutoff``.
    """
    key = _name_key(word)
    if not key:
        return None
    keys = {}
    for choice in choices:
        keys.setdefault(_name_key(choice), choice)
    if key in keys:
        return keys[key]
    close = difflib.get_close_matches(key, [k for k in keys if k], n=1, cutoff=cutoff)
    return keys[close[0]] if close else None


def _name_key(name: str) -> str:
    return "".join(c for c in name.casefold() if c.isalnum())


def as_sample_shape(value: Any, name: str) -> tuple[int, ...]:
    """A count ``n`` or a sample shape (a tuple, list or ``torch.Size`` of
    positive integers, as ``torch.distributions`` and ``sbi`` take) as a
    tuple: ``n`` -> ``(n,)``, ``()`` -> ``()`` (one draw without a sample
    dimension)."""
    if isinstance(value, (tuple, list)):  # torch.Size is a tuple
        try:
            return tuple(positive_int(size, name) for size in value)
        except InvalidInputError:
            raise InvalidInputError(
                f"{name} must be a positive integer or a sample shape of positive integers; "
                f"got {value!r}"
            ) from None
    return (positive_int(value, name),)


def parameter_indices(names: Sequence[str], parameter_names: Sequence[str]) -> list[int]:
    """Column indices of ``names`` among ``parameter_names``; raises
    :class:`~mfask.errors.InvalidInputError` naming the unknown ones."""
    known = list(parameter_names)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise InvalidInputError(f"unknown parameter name(s) {unknown}; the prior has {known}")
    return [known.index(name) for name in names]
