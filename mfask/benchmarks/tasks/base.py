"""The interface every benchmark task implements.

A task bundles what a benchmark needs: a prior, simulators for each fidelity
(ordered low to high, the last one is the high fidelity), a way to draw
observations with their true parameters and, where the likelihood is
tractable, reference posterior samples.

Shapes: ``theta`` is ``(n, d)`` float64; ``x`` is ``(n, *x_shape)`` float64
(``x_shape`` is the same for every fidelity, so weights transfer between them).
"""

from __future__ import annotations

import abc
from typing import Any, Callable

import numpy as np

from mfask.priors import Prior

__all__ = ["Task"]


class Task(abc.ABC):
    """A benchmark task: prior, simulators per fidelity, observations, reference."""

    #: short identifier, used in result files and cache keys
    name: str
    #: fidelity names, ordered low to high; the last is the high fidelity
    fidelities: tuple[str, ...]
    #: per fidelity, the parameter names its simulator uses (all if absent)
    parameters_used: dict[str, tuple[str, ...]] = {}

    @property
    @abc.abstractmethod
    def prior(self) -> Prior:
        """The prior over ``theta``."""

    @property
    @abc.abstractmethod
    def x_shape(self) -> tuple[int, ...]:
        """Shape of one simulator output (identical for all fidelities)."""

    @abc.abstractmethod
    def simulate(
        self, theta: np.ndarray, fidelity: str, rng: np.random.Generator
    ) -> np.ndarray:
        """Run the simulator of ``fidelity`` on every row of ``theta`` ``(n, d)``.

        Returns ``x`` of shape ``(n, *x_shape)``; a failed run gives a row of NaN.
        """

    def sample_prior(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw ``(n, d)`` parameters from the prior with a numpy generator."""
        import torch

        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        return self.prior.sample(n, generator).numpy()

    def observations(
        self, num_observations: int, seed: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw true parameters ``(m, d)`` from the prior and their high-fidelity
        observations ``(m, *x_shape)``, reproducibly from ``seed``."""
        rng = np.random.default_rng(seed)
        theta = self.sample_prior(num_observations, rng)
        return theta, self.simulate(theta, self.fidelities[-1], rng)

    def log_likelihood(self, theta: np.ndarray, x_o: np.ndarray) -> np.ndarray:
        """High-fidelity log-likelihood ``(n,)`` of one observation ``x_o``
        at each row of ``theta`` ``(n, d)``; tasks without one raise."""
        raise NotImplementedError(f"task {self.name!r} has no tractable likelihood")

    def reference_posterior(
        self, x_o: np.ndarray, num_samples: int, seed: int = 0
    ) -> np.ndarray:
        """Reference samples ``(num_samples, d)`` from the high-fidelity posterior
        at ``x_o``; tasks without a tractable likelihood raise."""
        raise NotImplementedError(f"task {self.name!r} has no reference posterior")

    def _cached_reference(
        self,
        x_o: np.ndarray,
        num_samples: Any,
        seed: Any,
        sampler_settings: dict[str, Any],
        compute: Callable[[np.ndarray, int, int], np.ndarray],
        cache: bool,
    ) -> np.ndarray:
        """Reference samples ``(num_samples, d)`` from ``compute(x_o, num_samples, seed)``,
        through the disk cache keyed by the task, ``x_o`` and the sampler's settings.

        Raises :class:`~mfask.errors.InvalidInputError` unless ``num_samples`` >= 1.
        """
        from mfask.benchmarks.tasks.reference_cache import cached_reference
        from mfask.errors import InvalidInputError

        num_samples, seed = int(num_samples), int(seed)
        if num_samples < 1:
            raise InvalidInputError(f"num_samples must be positive; got {num_samples}")
        settings = {**sampler_settings, "num_samples": num_samples, "seed": seed}
        return cached_reference(
            self.name, self.settings, x_o, settings,
            lambda: compute(x_o, num_samples, seed), cache,
        )
