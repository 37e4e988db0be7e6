"""Fidelity levels: names, order and the parameters each simulator uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, Union

from mfask.errors import InvalidInputError
from mfask.user_input import parameter_indices

__all__ = ["Fidelity", "FidelitySpec", "resolve_fidelities", "ask_target"]


@dataclass(frozen=True)
class Fidelity:
    """One simulator fidelity.

    Arguments:
        name: how ``ask``/``tell`` refer to it.
        parameters: names of the prior's parameters this simulator uses;
            ``None`` means all. The others are dummies at this level: they are
            still drawn from the prior (so the estimator learns their prior)
            and ``ask`` still returns full vectors.
    """

    name: str
    parameters: tuple[str, ...] | None = None


FidelitySpec = Union[str, Fidelity]


def resolve_fidelities(
    fidelities: Sequence[FidelitySpec], parameter_names: Sequence[str]
) -> tuple[list[Fidelity], list[list[int]]]:
    """Normalise fidelity specs (ordered low to high) against the prior's
    parameter names.

    Returns the fidelities with explicit parameter tuples and, per fidelity,
    the column indices of the parameters it uses.
    """
    parameter_names = tuple(parameter_names)
    if isinstance(fidelities, (str, Fidelity)) or not len(fidelities):
        raise InvalidInputError(
            "fidelities must be a non-empty list ordered from low to high, e.g. "
            f"['low', 'high']; got {fidelities!r}"
        )
    resolved: list[Fidelity] = []
    columns: list[list[int]] = []
    for spec in fidelities:
        if isinstance(spec, str):
            spec = Fidelity(spec)
        if not isinstance(spec, Fidelity) or not spec.name:
            raise InvalidInputError(
                f"each fidelity must be a non-empty name or a Fidelity; got {spec!r}"
            )
        names = tuple(spec.parameters) if spec.parameters is not None else parameter_names
        if not names:
            raise InvalidInputError(f"fidelity {spec.name!r} uses no parameters")
        index = parameter_indices(names, parameter_names)
        if len(set(index)) != len(index):
            raise InvalidInputError(f"fidelity {spec.name!r} lists a parameter twice")
        resolved.append(Fidelity(str(spec.name), tuple(names)))
        columns.append(sorted(index))
    names = [f.name for f in resolved]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"fidelity names must be unique; got {names}")
    return resolved, columns


def ask_target(fidelity_names: Sequence[str], fidelity: Any, n: Any) -> tuple[Any, Any]:
    """The ``(fidelity, n)`` an ``ask(fidelity, n)`` call means.

    With a single fidelity its name may be left out: ``ask(100)`` and
    ``ask(n=100)`` mean ``ask(<the fidelity>, 100)``. With several, the
    fidelity is required and :class:`InvalidInputError` says so. The values
    are not validated further (the caller checks the name and ``n``, which
    may still be ``None``).
    """
    if n is None and fidelity is not None and not isinstance(fidelity, (str, Fidelity)):
        fidelity, n = None, fidelity  # ask(100)
    if fidelity is None:
        if len(fidelity_names) != 1:
            raise InvalidInputError(
                f"ask needs the fidelity when there are several: ask(fidelity, n) with fidelity "
                f"one of {list(fidelity_names)}"
            )
        fidelity = fidelity_names[0]
    return fidelity, n
