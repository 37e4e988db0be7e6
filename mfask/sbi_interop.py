"""Using mfask posteriors with ``sbi``'s diagnostics, plots and simulation helpers.

:class:`SbiPosterior` presents one fidelity level of a
:class:`~mfask.posterior.MultiFidelityPosterior` with the interface of an
``sbi`` posterior (``sample``, ``sample_batched``, ``log_prob``,
``log_prob_batched``, ``potential``, ``set_default_x``/``default_x``, ``map``),
so that ``sbi.diagnostics.run_sbc``, ``run_tarp``, ``sbi.analysis.pairplot``
(on its samples) and ``conditional_pairplot`` (on the adapter itself) accept
it. :class:`AskingProposal` goes the other way: a proposal for
``sbi.inference.simulate_for_sbi`` whose draws are mfask asks, so that the
``(theta, x)`` it returns are told back with ``post.tell(theta, x, fidelity)``
and matched to their tickets. (Simulations whose parameters came from an
``sbi`` prior are told with ``unasked="prior"``.)

The module needs no ``sbi`` import itself (``sbi`` is the optional extra
``mfask[sbi]``); it follows ``sbi``'s conventions: tensors in and out (float32
unless ``dtype`` says otherwise), samples ``(*sample_shape, d)``, batched
samples ``(*sample_shape, B, d)``, ``x`` optional once a default is set.

Shapes: ``theta`` is ``(n, d)`` (or ``(d,)`` for one row); one observation is
``(*x_shape)`` or ``(1, *x_shape)``; a batch of observations is
``(B, *x_shape)``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from mfask.errors import InvalidInputError, UnknownFidelityError
from mfask.fidelity import Fidelity
from mfask.posterior import MultiFidelityPosterior
from mfask.tickets import AskBatch
from mfask.user_input import as_numeric_array, as_sample_shape

__all__ = ["SbiPosterior", "AskingProposal"]


class SbiPosterior:
    """One fidelity of an mfask posterior, with the interface of an ``sbi`` posterior.

    Arguments:
        posterior: the mfask posterior (trained lazily on first use, as always).
        fidelity: the level to answer from; ``None`` is the posterior's
            default (the highest level with at least 2 successful simulations,
            decided at each call).
        default_x: an observation to condition on when a call passes no ``x``
            (see :meth:`set_default_x`).
        dtype: the floating dtype of the tensors returned (``sbi`` works in
            float32; mfask computes in float64).

    ``show_progress_bars`` arguments are accepted for ``sbi``'s callers and
    have no effect (mfask's sampling has no progress bar). Densities are
    normalised over the prior's support, so :meth:`log_prob` equals
    :meth:`potential` and ``norm_posterior`` has no effect either.
    """

    def __init__(
        self,
        posterior: MultiFidelityPosterior,
        fidelity: str | Fidelity | None = None,
        *,
        default_x: Any = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if isinstance(fidelity, Fidelity):
            fidelity = fidelity.name
        if not isinstance(posterior, MultiFidelityPosterior):
            raise InvalidInputError(
                f"posterior must be a MultiFidelityPosterior (for a Study pass study.posterior); "
                f"got {type(posterior).__name__}"
            )
        if fidelity is not None and fidelity not in posterior.fidelity_names:
            raise UnknownFidelityError(
                f"unknown fidelity {fidelity!r}; this posterior has {list(posterior.fidelity_names)}"
            )
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise InvalidInputError(f"dtype must be a floating torch dtype; got {dtype!r}")
        self.posterior = posterior
        self.fidelity = fidelity
        self.dtype = dtype
        self._default_x: Tensor | None = None
        self._map: Tensor | None = None
        if default_x is not None:
            self.set_default_x(default_x)

    # ------------------------------------------------------------ defaults
    @property
    def parameter_names(self) -> list[str]:
        """The prior's parameter names (e.g. ``labels=`` of ``sbi``'s pairplot)."""
        return list(self.posterior.prior.names)

    @property
    def default_x(self) -> Tensor | None:
        """The observation used when a call passes no ``x`` (``None``: not set)."""
        return None if self._default_x is None else self._default_x.clone()

    @default_x.setter
    def default_x(self, x: Any) -> None:
        self.set_default_x(x)

    def set_default_x(self, x: Any) -> "SbiPosterior":
        """Condition calls without ``x`` on this observation ``(*x_shape)`` or
        ``(1, *x_shape)``; forgets the cached :meth:`map`. Returns ``self``
        (chainable, as in ``sbi``)."""
        self._default_x = torch.from_numpy(self._one_observation(x))
        self._map = None
        return self

    def _x_else_default(self, x: Any) -> np.ndarray:
        if x is not None:
            return self._one_observation(x)
        if self._default_x is None:
            raise InvalidInputError(
                "no x given and no default set: pass x=... or call set_default_x(x) first"
            )
        return self._default_x.numpy()

    def _one_observation(self, x: Any) -> np.ndarray:
        """One observation as float64 ``(1, *x_shape)`` (checked against the
        posterior's ``x_shape`` once one is known)."""
        array = as_numeric_array(x, "x")
        x_shape = self.posterior.x_shape
        if x_shape is None:
            return array.reshape(1, *array.shape)
        if tuple(array.shape) == x_shape:
            return array.reshape(1, *x_shape)
        if array.ndim == len(x_shape) + 1 and array.shape[0] == 1 and tuple(array.shape[1:]) == x_shape:
            return array
        raise InvalidInputError(
            f"x must be one observation of shape {x_shape} (or (1, *{x_shape})); got "
            f"{tuple(array.shape)}; use sample_batched / log_prob_batched for several"
        )

    def _tensor(self, values: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(values)).to(self.dtype)

    # ------------------------------------------------------------ sampling
    def sample(
        self,
        sample_shape: int | Sequence[int] = (),
        x: Any = None,
        show_progress_bars: bool = False,
    ) -> Tensor:
        """Samples ``(*sample_shape, d)`` at one observation (``x``, else the default)."""
        observation = self._x_else_default(x)
        draws = self.posterior.sample(as_sample_shape(sample_shape, "sample_shape"), observation,
                                      fidelity=self.fidelity)
        return self._tensor(draws)

    def sample_batched(
        self,
        sample_shape: int | Sequence[int],
        x: Any,
        show_progress_bars: bool = False,
    ) -> Tensor:
        """Samples ``(*sample_shape, B, d)`` at each of ``B`` observations ``x (B, *x_shape)``
        (``sbi``'s layout: the observation axis after the sample axes)."""
        shape = as_sample_shape(sample_shape, "sample_shape")
        draws = self.posterior.sample_batched(math.prod(shape), x, fidelity=self.fidelity)  # (B, n, d)
        num_obs, _, dim = draws.shape
        return self._tensor(np.swapaxes(draws, 0, 1).reshape(*shape, num_obs, dim))

    # ------------------------------------------------------------- density
    def log_prob(self, theta: Any, x: Any = None, norm_posterior: bool = True) -> Tensor:
        """``log q(theta | x)`` ``(n,)`` for ``theta (n, d)`` (or ``(d,)``) at one
        observation; ``-inf`` outside the prior's support."""
        observation = self._x_else_default(x)
        return self._tensor(self.posterior.log_prob(theta, observation, fidelity=self.fidelity))

    def potential(self, theta: Any, x: Any = None) -> Tensor:
        """The log posterior density, which ``sbi`` calls the potential (here
        normalised, so it equals :meth:`log_prob`)."""
        return self.log_prob(theta, x)

    def log_prob_batched(self, theta: Any, x: Any, norm_posterior: bool = True) -> Tensor:
        """``log q(theta[..., i, :] | x[i])`` ``(*sample_shape, B)`` for
        ``theta (*sample_shape, B, d)`` and ``x (B, *x_shape)``."""
        values = as_numeric_array(theta, "theta")
        dim = self.posterior.prior.dim
        if values.ndim < 2 or values.shape[-1] != dim:
            raise InvalidInputError(
                f"theta must have shape (*sample_shape, B, {dim}); got {tuple(values.shape)}"
            )
        sample_shape, num_obs = values.shape[:-2], values.shape[-2]
        per_observation = np.moveaxis(values.reshape(-1, num_obs, dim), 1, 0)  # (B, n, d)
        log_q = self.posterior.log_prob_batched(per_observation, x, fidelity=self.fidelity)  # (B, n)
        return self._tensor(log_q.T.reshape(*sample_shape, num_obs))

    # ------------------------------------------------------------------ MAP
    def map(
        self,
        x: Any = None,
        num_iter: int = 50,
        num_to_optimize: int = 10,
        num_init_samples: int = 1000,
        show_progress_bars: bool = False,
        force_update: bool = False,
    ) -> Tensor:
        """The maximum a posteriori estimate ``(1, d)`` (``sbi``'s shape) at ``x``
        or the default observation: :meth:`MultiFidelityPosterior.map` with
        ``num_samples=num_init_samples``, ``num_starts=num_to_optimize``,
        ``num_steps=num_iter``. The answer at the default observation is
        cached until :meth:`set_default_x` or ``force_update=True``."""
        use_default = x is None
        if use_default and self._map is not None and not force_update:
            return self._map.clone()
        theta = self.posterior.map(
            self._x_else_default(x),
            fidelity=self.fidelity,
            num_samples=num_init_samples,
            num_starts=num_to_optimize,
            num_steps=num_iter,
        )
        estimate = self._tensor(theta.reshape(1, -1))
        if use_default:
            self._map = estimate.clone()
        return estimate

    def __repr__(self) -> str:
        level = "default level" if self.fidelity is None else f"fidelity {self.fidelity!r}"
        return f"SbiPosterior({level} of {self.posterior!r})"


class AskingProposal:
    """A proposal for ``sbi``'s ``simulate_for_sbi`` whose draws are mfask asks.

    ``proposal.sample((n,))`` opens ``n`` tickets with ``posterior.ask(fidelity, n)``
    and returns their parameters ``(n, d)`` (float64; ``simulate_for_sbi``
    casts them to float32, which ``tell`` still matches to the tickets within
    the posterior's ``match_tolerance``, so it must not be ``0``). Then::

        theta, x = simulate_for_sbi(simulator, AskingProposal(post, "high"), 500)
        post.tell(theta, x, "high")

    Every ask draws as ``post.ask`` would (prior draws, or a sequential
    round's after ``set_observation``). :attr:`batches` keeps the asked
    batches (e.g. to ``abandon`` them if the simulations fail).
    """

    def __init__(self, posterior: MultiFidelityPosterior, fidelity: str | Fidelity) -> None:
        if isinstance(fidelity, Fidelity):
            fidelity = fidelity.name
        if not isinstance(posterior, MultiFidelityPosterior):
            raise InvalidInputError(
                f"posterior must be a MultiFidelityPosterior; got {type(posterior).__name__}"
            )
        if fidelity not in posterior.fidelity_names:
            raise UnknownFidelityError(
                f"unknown fidelity {fidelity!r}; this posterior has {list(posterior.fidelity_names)}"
            )
        self.posterior = posterior
        self.fidelity = fidelity
        self.batches: list[AskBatch] = []

    def sample(self, sample_shape: int | Sequence[int] = ()) -> Tensor:
        """Ask ``prod(sample_shape)`` parameter sets: ``(*sample_shape, d)`` float64."""
        shape = as_sample_shape(sample_shape, "sample_shape")
        batch = self.posterior.ask(self.fidelity, math.prod(shape))
        self.batches.append(batch)
        return torch.from_numpy(batch.theta.reshape(*shape, -1).copy())
