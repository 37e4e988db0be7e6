"""Benchmark tasks: prior, simulators per fidelity, observations, references.

Use :func:`get_task` to build a task by name::

    task = get_task("ou")            # Ornstein-Uhlenbeck, theta = (mu, sigma)
    task = get_task("ou", dim=3)     # ... with gamma inferred too
"""

from __future__ import annotations

from typing import Any, Callable

from mfask.benchmarks.tasks.base import Task
from mfask.benchmarks.tasks.ou import OrnsteinUhlenbeck
from mfask.benchmarks.tasks.sir import SIR
from mfask.benchmarks.tasks.slcp import SLCP
from mfask.errors import InvalidInputError

__all__ = ["Task", "OrnsteinUhlenbeck", "SLCP", "SIR", "TASK_NAMES", "get_task"]

_REGISTRY: dict[str, Callable[..., Task]] = {
    "ou": OrnsteinUhlenbeck,
    "ou4": lambda **kwargs: OrnsteinUhlenbeck(dim=4, **kwargs),
    "slcp": SLCP,
    "sir": SIR,
}

#: the names :func:`get_task` accepts
TASK_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def get_task(name: str, **kwargs: Any) -> Task:
    """Build the task called ``name`` (one of :data:`TASK_NAMES`) with ``kwargs``."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise InvalidInputError(
            f"unknown task {name!r}; available: {', '.join(TASK_NAMES)}"
        ) from None
    return factory(**kwargs)
