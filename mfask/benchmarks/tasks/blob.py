"""The Gaussian blob task: high-dimensional image observations.

``theta = (x_offset, y_offset, gamma)`` with offsets ``~ U(0, size)`` (in
high-fidelity pixels) and ``gamma ~ U(0.2, 2)``. An image of ``res x res``
pixels covers the square ``[0, size)^2``; each pixel ``(row, col)`` has its
centre at ``((col + 0.5) w, (row + 0.5) w)`` with ``w = size / res``, and::

    p = 0.9 - 0.8 exp(-0.5 (r^2 / s^2)^gamma),   pixel = Binomial(trials, p) / trials

where ``r`` is the distance from the pixel centre to the blob centre
``(x_offset, y_offset) + N(0, (0.5 w)^2 I)`` (the jitter is half a pixel of the
simulator's own resolution). Values lie in ``[0, 1]``: dark (0.1) at the blob,
light (0.9) far from it. ``x`` is ``(size, size)``, rows along ``y``.

Fidelities, keeping the paper's blob-size-to-image ratios (HF 256 px, s = 12,
255 trials; LF 32 px, s = 2 LF px, 20 trials) at a CPU-sized scale:

* ``"high"``: ``res = size``, ``s = 12 / 256 * size``, 255 trials.
* ``"low"``: ``res = size / lf_factor``, ``s = 2 / 32 * size`` (in HF pixel
  units, i.e. ``s = 2 / 32 * res`` LF pixels), 20 trials; upsampled to
  ``(size, size)`` by repeating each pixel ``lf_factor x lf_factor`` times
  (nearest neighbour), so both fidelities share ``x_shape``.

The default ``size=32, lf_factor=4`` gives an 8 x 8 LF image. There is no
tractable likelihood (the jitter would have to be integrated out per pixel
jointly), so this task has no reference posterior; the paper scores it by NLTP.
Use :class:`mfask.embedding_nets.ImageEmbedding` as the embedding net.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mfask.benchmarks.tasks.base import Task
from mfask.benchmarks.tasks.checks import check_fidelity, check_rng, check_theta
from mfask.errors import InvalidInputError
from mfask.priors import BoxUniform, Prior

__all__ = ["GaussianBlob"]

_HF_SCALE_RATIO = 12.0 / 256.0
_LF_SCALE_RATIO = 2.0 / 32.0
_JITTER_PIXELS = 0.5
_CHUNK = 512


class GaussianBlob(Task):
    """Gaussian blob images at two resolutions.

    Arguments:
        size: high-fidelity image side in pixels.
        lf_factor: the low-fidelity image is ``size / lf_factor`` pixels wide;
            must divide ``size``.
        hf_trials, lf_trials: binomial trials per pixel.

    Shapes: ``theta`` ``(n, 3)``; ``x`` ``(n, size, size)`` in ``[0, 1]``.
    """

    name = "blob"
    fidelities = ("low", "high")

    def __init__(
        self, size: int = 32, lf_factor: int = 4, hf_trials: int = 255, lf_trials: int = 20
    ) -> None:
        size, lf_factor = int(size), int(lf_factor)
        if size < 4 or lf_factor < 1 or size % lf_factor != 0:
            raise InvalidInputError(
                f"need size >= 4 and lf_factor dividing size; got size={size}, "
                f"lf_factor={lf_factor}"
            )
        if int(hf_trials) < 1 or int(lf_trials) < 1:
            raise InvalidInputError("hf_trials and lf_trials must be positive")
        self.size = size
        self.lf_factor = lf_factor
        self.hf_trials = int(hf_trials)
        self.lf_trials = int(lf_trials)
        self._prior = BoxUniform(
            [0.0, 0.0, 0.2], [float(size), float(size), 2.0],
            names=["x_offset", "y_offset", "gamma"],
        )

    @property
    def prior(self) -> Prior:
        """Offsets ``U(0, size)``, ``gamma ~ U(0.2, 2)``."""
        return self._prior

    @property
    def x_shape(self) -> tuple[int, ...]:
        """``(size, size)`` for both fidelities."""
        return (self.size, self.size)

    @property
    def settings(self) -> dict[str, Any]:
        """The constructor arguments (JSON-compatible)."""
        return {
            "size": self.size, "lf_factor": self.lf_factor,
            "hf_trials": self.hf_trials, "lf_trials": self.lf_trials,
        }

    def simulate(
        self, theta: np.ndarray, fidelity: str, rng: np.random.Generator
    ) -> np.ndarray:
        """Simulate images ``(n, size, size)`` for ``theta`` ``(n, 3)``; rows
        with non-positive ``gamma`` are NaN."""
        theta = check_theta(theta, 3)
        check_fidelity(fidelity, self.fidelities)
        check_rng(rng)
        if fidelity == "high":
            resolution, trials = self.size, self.hf_trials
            scale = _HF_SCALE_RATIO * self.size
        else:
            resolution, trials = self.size // self.lf_factor, self.lf_trials
            scale = _LF_SCALE_RATIO * self.size
        images = np.empty((theta.shape[0], resolution, resolution))
        for start in range(0, theta.shape[0], _CHUNK):
            rows = slice(start, start + _CHUNK)
            probability = self.pixel_probability(theta[rows], resolution, scale, rng)
            images[rows] = rng.binomial(trials, np.nan_to_num(probability, nan=0.5)) / trials
            images[rows][np.isnan(probability).any(axis=(1, 2))] = np.nan
        if fidelity == "low":
            images = images.repeat(self.lf_factor, axis=1).repeat(self.lf_factor, axis=2)
        return images

    def pixel_probability(
        self, theta: np.ndarray, resolution: int, scale: float, rng: np.random.Generator
    ) -> np.ndarray:
        """Per-pixel success probabilities ``(n, res, res)`` with a jittered
        centre drawn from ``rng``; ``scale`` is ``s`` in HF pixel units."""
        pixel = self.size / resolution
        centres = (np.arange(resolution) + 0.5) * pixel
        blob = theta[:, :2] + _JITTER_PIXELS * pixel * rng.standard_normal((theta.shape[0], 2))
        dx = centres[None, None, :] - blob[:, 0, None, None]
        dy = centres[None, :, None] - blob[:, 1, None, None]
        gamma = np.where(theta[:, 2] > 0, theta[:, 2], np.nan)[:, None, None]
        return 0.9 - 0.8 * np.exp(-0.5 * ((dx**2 + dy**2) / scale**2) ** gamma)

    def reference_posterior(
        self, x_o: np.ndarray, num_samples: int, seed: int = 0, cache: bool = True
    ) -> np.ndarray:
        """Not available: the blob likelihood is intractable (score by NLTP)."""
        raise NotImplementedError(
            "the Gaussian blob task has no tractable likelihood and no reference "
            "posterior; score it by NLTP (-log q(theta_true | x_o))"
        )
