"""Two crescent-shaped posterior modes, with exact references.

``theta ~ U(-1, 1)^2``; the simulator draws a point on a noisy half circle,
``p = (r cos a + 0.25, r sin a)`` with ``a ~ U(-pi/2, pi/2)`` and
``r ~ N(0.1, s_f^2)``, and shifts it by a map of ``theta`` that forgets the
sign of ``theta_1 + theta_2``::

    x = p + ( -|theta_1 + theta_2| / sqrt(2),  (theta_2 - theta_1) / sqrt(2) )

(the construction of the two-moons task of the SBI benchmark, Lueckmann et
al. 2021). The posterior has two crescents, mirror images of each other
across the line ``theta_1 + theta_2 = 0``: multimodal and thin (radial width
``s_f``), the classic trap for a density estimator.

The high fidelity has ``s = 0.01``; the low fidelity ``s = 0.02`` (a wider,
still bimodal posterior).

**Exact references.** On each branch of the sign, ``theta -> shift(theta)``
is an isometry, so ``theta | x_o`` is obtained exactly by drawing the noise
``p`` from its distribution, solving ``shift(theta) = x_o - p`` for ``theta``
on a branch chosen by a fair coin, and keeping the draws inside the prior's
box (rejection against a uniform prior). The likelihood is closed-form too:
``p``'s density is ``N(rho; 0.1, s^2) / (pi rho)`` at polar radius ``rho``
around ``(0.25, 0)``, zero on the left half plane.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mfask.benchmarks.tasks.base import Task
from mfask.benchmarks.tasks.checks import check_fidelity, check_observation, check_rng, check_theta
from mfask.errors import InvalidInputError
from mfask.priors import BoxUniform, Prior

__all__ = ["TwoMoons"]

_RADIUS = 0.1
_CENTRE_SHIFT = 0.25
_NOISE = {"low": 0.02, "high": 0.01}


def _shift(theta: np.ndarray) -> np.ndarray:
    """The parameter-dependent shift ``(n, 2)`` of ``theta`` ``(n, 2)``."""
    total = theta[:, 0] + theta[:, 1]
    difference = theta[:, 1] - theta[:, 0]
    return np.stack([-np.abs(total), difference], axis=1) / math.sqrt(2.0)


class TwoMoons(Task):
    """The two-moons simulator on ``[-1, 1]^2`` with exact references."""

    name = "two_moons"
    fidelities = ("low", "high")

    def __init__(self) -> None:
        self._prior = BoxUniform(low=[-1.0, -1.0], high=[1.0, 1.0], names=["theta_1", "theta_2"])

    @property
    def prior(self) -> Prior:
        return self._prior

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (2,)

    def _noise_points(self, n: int, fidelity: str, rng: np.random.Generator) -> np.ndarray:
        """``n`` draws ``(n, 2)`` of the half-circle point ``p``."""
        angle = rng.uniform(-math.pi / 2, math.pi / 2, size=n)
        radius = _RADIUS + _NOISE[fidelity] * rng.standard_normal(n)
        return np.stack([radius * np.cos(angle) + _CENTRE_SHIFT, radius * np.sin(angle)], axis=1)

    def simulate(self, theta: Any, fidelity: str, rng: np.random.Generator) -> np.ndarray:
        theta = check_theta(theta, 2)
        fidelity = check_fidelity(fidelity, self.fidelities)
        return self._noise_points(len(theta), fidelity, check_rng(rng)) + _shift(theta)

    def log_likelihood(self, theta: Any, x_o: Any) -> np.ndarray:
        theta = check_theta(theta, 2)
        x_o = check_observation(x_o, self.x_shape)
        point = x_o[None, :] - _shift(theta)
        across, along = point[:, 0] - _CENTRE_SHIFT, point[:, 1]
        rho = np.hypot(across, along)
        s = _NOISE["high"]
        with np.errstate(divide="ignore"):
            log_density = (-0.5 * ((rho - _RADIUS) / s) ** 2 - math.log(s * math.sqrt(2 * math.pi))
                           - np.log(math.pi * rho))
        # the angle lies in (-pi/2, pi/2): the point is right of the centre
        return np.where(across > 0, log_density, -np.inf)

    def reference_posterior(self, x_o: Any, num_samples: int, seed: int = 0) -> np.ndarray:
        """Exact samples ``(num_samples, 2)`` (see the module docstring).

        Raises:
            InvalidInputError: ``x_o`` is so far from the simulator's range
                that no draw lands in the prior's box.
        """
        x_o = check_observation(x_o, self.x_shape)
        rng = np.random.default_rng(seed)
        kept: list[np.ndarray] = []
        found, drawn = 0, 0
        while found < num_samples:
            batch = max(4 * (num_samples - found), 1024)
            drawn += batch
            if drawn > 1000 * num_samples + 10**6:
                raise InvalidInputError(f"x_o = {x_o.tolist()} is outside the simulator's range")
            target = x_o[None, :] - self._noise_points(batch, "high", rng)
            # target = (-|t1 + t2|, t2 - t1) / sqrt(2): t1 + t2 = -+ sqrt(2) target_0
            sign = np.where(rng.uniform(size=batch) < 0.5, 1.0, -1.0)
            total = -sign * math.sqrt(2.0) * target[:, 0]
            difference = math.sqrt(2.0) * target[:, 1]
            theta = np.stack([(total - difference) / 2, (total + difference) / 2], axis=1)
            ok = (target[:, 0] <= 0) & (np.abs(theta) <= 1.0).all(axis=1)
            kept.append(theta[ok])
            found += int(ok.sum())
        return np.concatenate(kept)[:num_samples]
