"""Benchmark tasks: prior, simulators per fidelity, observations, references.

Use :func:`get_task` to build a task by name::

    task = get_task("ou")            # Ornstein-Uhlenbeck, theta = (mu, sigma)
    task = get_task("ou", dim=3)     # ... with gamma inferred too
    task = get_task("ou4")           # ... with gamma and offset inferred
    task = get_task("slcp")          # simple likelihood, complex posterior
    task = get_task("sir")           # SIR epidemic, theta = (beta, gamma)
    task = get_task("blob", size=64) # Gaussian blob images (no reference)
    task = get_task("neuron")        # Hodgkin-Huxley cell, 8 vs 1 compartments
    task = get_task("informative", dim=3, fraction=1e-4)  # narrow exact posteriors on a box
    task = get_task("two_moons")     # two crescent modes, exact references
    task = get_task("lotka_volterra")  # sbibm's predator-prey model (no reference of its own)

Every task has fidelities ``("low", "high")``; tasks with a tractable
likelihood have ``reference_posterior(x_o, num_samples, seed=0, cache=True)``,
cached on disk by :mod:`mfask.benchmarks.tasks.reference_cache`.
"""

from __future__ import annotations

from typing import Any, Callable

from mfask.benchmarks.tasks.base import Task
from mfask.benchmarks.tasks.blob import GaussianBlob
from mfask.benchmarks.tasks.informative import InformativeBox
from mfask.benchmarks.tasks.lotka_volterra import LotkaVolterra
from mfask.benchmarks.tasks.neuron import NeuronTask
from mfask.benchmarks.tasks.ou import OrnsteinUhlenbeck
from mfask.benchmarks.tasks.sir import SIR
from mfask.benchmarks.tasks.slcp import SLCP
from mfask.benchmarks.tasks.two_moons import TwoMoons
from mfask.errors import InvalidInputError

__all__ = [
    "Task",
    "OrnsteinUhlenbeck",
    "SLCP",
    "SIR",
    "GaussianBlob",
    "NeuronTask",
    "InformativeBox",
    "TwoMoons",
    "LotkaVolterra",
    "TASK_NAMES",
    "get_task",
]

_REGISTRY: dict[str, Callable[..., Task]] = {
    "ou": OrnsteinUhlenbeck,
    "ou4": lambda **kwargs: OrnsteinUhlenbeck(dim=4, **kwargs),
    "slcp": SLCP,
    "sir": SIR,
    "blob": GaussianBlob,
    "neuron": NeuronTask,
    "informative": InformativeBox,
    "two_moons": TwoMoons,
    "lotka_volterra": LotkaVolterra,
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
