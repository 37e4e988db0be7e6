"""Priors over simulator parameters.

A prior here is a product of independent one-dimensional marginals, each a
``torch.distributions`` distribution. That covers the box-uniform prior of most
SBI benchmarks and the log-normal priors of epidemic models, and it gives
everything the rest of mfask needs from a prior:

* named parameters and a support check,
* reproducible sampling from a ``torch.Generator``,
* an elementwise bijection between the support and unbounded space, so that the
  posterior estimator can learn in R^d and never put mass outside the support,
* marginal CDFs and inverse CDFs (where torch has them), which the truncated
  sampler uses to draw the prior restricted to a box exactly,
* a JSON description, so a saved study can rebuild its prior without pickle.

All parameter tensors are float64 with shape ``(n, d)``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution, biject_to, constraints

from mfask.errors import InvalidInputError
from mfask.user_input import as_numeric_array, as_sample_shape, did_you_mean
from mfask.user_input import as_theta as as_theta_tensor  # noqa: F401  (old name, kept for callers)
from mfask.user_input import parameter_indices

__all__ = ["Prior", "IndependentPrior", "BoxUniform", "prior_from_spec"]

# torch distributions that a prior may be rebuilt from when loading a saved
# study; anything else must be passed to ``load`` explicitly.
_SERIALIZABLE_MARGINALS = (
    "Uniform",
    "Normal",
    "LogNormal",
    "Gamma",
    "Beta",
    "Exponential",
    "HalfNormal",
    "Laplace",
    "Cauchy",
)


class Prior:
    """A product of independent 1-D marginals with named parameters.

    Arguments:
        marginals: one ``torch.distributions.Distribution`` per parameter, each
            with an empty batch and event shape.
        names: parameter names; defaults to ``theta_0, theta_1, ...``.

    Shapes: ``theta`` is ``(n, d)``, float64.
    """

    def __init__(
        self, marginals: Sequence[Distribution], names: Sequence[str] | None = None
    ) -> None:
        marginals = list(marginals)
        if not marginals:
            raise InvalidInputError("a prior needs at least one parameter")
        for index, marginal in enumerate(marginals):
            if not isinstance(marginal, Distribution):
                raise InvalidInputError(
                    f"marginal {index} must be a torch.distributions.Distribution; "
                    f"got {type(marginal).__name__}"
                )
            if marginal.batch_shape != () or marginal.event_shape != ():
                raise InvalidInputError(
                    f"marginal {index} must be one-dimensional (empty batch and event "
                    f"shape); got batch {tuple(marginal.batch_shape)}, "
                    f"event {tuple(marginal.event_shape)}"
                )
            _check_marginal_parameters(marginal, index)
        if names is None:
            names = [f"theta_{i}" for i in range(len(marginals))]
        names = [str(name) for name in names]
        if len(names) != len(marginals):
            raise InvalidInputError(
                f"got {len(names)} names for {len(marginals)} parameters"
            )
        if len(set(names)) != len(names):
            raise InvalidInputError(f"parameter names must be unique; got {names}")
        self.marginals: list[Distribution] = marginals
        self.names: tuple[str, ...] = tuple(names)
        self._bijections = [biject_to(m.support) for m in marginals]

    # ------------------------------------------------------------------ basics
    @property
    def dim(self) -> int:
        """Number of parameters ``d``."""
        return len(self.marginals)

    def index_of(self, names: Sequence[str]) -> list[int]:
        """Column indices of the given parameter names."""
        return parameter_indices(names, self.names)

    @property
    def scale(self) -> Tensor:
        """A typical length scale per parameter, shape ``(d,)``.

        The width of a bounded support, else the marginal standard deviation
        (or 1 where that is undefined). Used to compare parameter values on a
        common scale.
        """
        scales = []
        for marginal in self.marginals:
            low, high = _support_bounds(marginal)
            if torch.isfinite(torch.tensor([low, high])).all():
                scales.append(high - low)
                continue
            try:
                std = float(marginal.stddev)
            except (NotImplementedError, AttributeError):
                std = float("nan")
            scales.append(std if std == std and 0 < std < float("inf") else 1.0)
        return torch.tensor(scales, dtype=torch.float64)

    @property
    def bounds(self) -> tuple[Tensor, Tensor]:
        """Lower and upper support bounds per parameter (may be infinite)."""
        pairs = [_support_bounds(m) for m in self.marginals]
        return (
            torch.tensor([p[0] for p in pairs], dtype=torch.float64),
            torch.tensor([p[1] for p in pairs], dtype=torch.float64),
        )

    # ---------------------------------------------------------------- sampling
    def sample(
        self, sample_shape: int | Sequence[int] | torch.Size = (), generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw parameter vectors, shape ``(*sample_shape, d)``.

        ``sample_shape`` is an int ``n`` (giving ``(n, d)``) or a shape tuple
        as in ``torch.distributions`` (``(5,)`` gives ``(5, d)``, ``()`` one
        vector ``(d,)``). With a ``generator`` the draws are reproducible from
        it; without one they come from torch's global random state.
        """
        empty = isinstance(sample_shape, (int, np.integer)) and not isinstance(sample_shape, bool) \
            and sample_shape == 0  # no draws, as internal callers may ask
        shape = (0,) if empty else as_sample_shape(sample_shape, "sample_shape")
        num_rows = math.prod(shape)
        if generator is None:
            columns = [m.sample((num_rows,)).to(torch.float64) for m in self.marginals]
        else:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            with torch.random.fork_rng(devices=[]):
                torch.random.default_generator.manual_seed(seed)  # the CPU stream only: accelerators keep theirs
                columns = [m.sample((num_rows,)).to(torch.float64) for m in self.marginals]
        return torch.stack(columns, dim=1).reshape(*shape, self.dim)

    # ---------------------------------------------------------------- density
    def in_support(self, theta: Any) -> Tensor:
        """Boolean mask ``(*batch,)``: which rows of ``theta`` ``(*batch, d)`` lie in the support.

        ``theta`` may be a tensor, a numpy array or nested lists; a 1-D input
        of length ``d`` is one parameter vector (for ``d == 1``, ``n`` values).
        """
        rows, batch_shape = self._as_rows(theta)
        inside = torch.ones(rows.shape[0], dtype=torch.bool)
        for column, marginal in enumerate(self.marginals):
            inside &= marginal.support.check(rows[:, column])
        return inside.reshape(batch_shape)

    def log_prob(self, theta: Any) -> Tensor:
        """Log prior density ``(*batch,)`` of ``theta`` ``(*batch, d)``; ``-inf`` outside the support.

        Accepts the same inputs as :meth:`in_support`; NaN rows get ``-inf``.
        """
        rows, batch_shape = self._as_rows(theta)
        inside = self.in_support(rows)
        total = torch.zeros(rows.shape[0], dtype=torch.float64)
        safe = torch.where(inside.unsqueeze(1), rows, self._interior_point())
        for column, marginal in enumerate(self.marginals):
            total = total + marginal.log_prob(safe[:, column]).to(torch.float64)
        return torch.where(inside, total, torch.full_like(total, -torch.inf)).reshape(batch_shape)

    def _as_rows(self, theta: Any) -> tuple[Tensor, tuple[int, ...]]:
        """``theta`` as float64 rows ``(n, d)`` and the batch shape it had."""
        if isinstance(theta, Tensor) and theta.dtype == torch.float64 and theta.ndim == 2:
            values = theta
        else:
            values = torch.from_numpy(as_numeric_array(theta, "theta"))
        if self.dim == 1 and values.ndim <= 1:
            return values.reshape(-1, 1), tuple(values.shape)  # scalars or a column of values
        if values.ndim == 0 or values.shape[-1] != self.dim:
            raise InvalidInputError(
                f"theta must have shape (..., {self.dim}) for this prior's {self.dim} "
                f"parameter(s) {list(self.names)}; got shape {tuple(values.shape)}"
            )
        return values.reshape(-1, self.dim), tuple(values.shape[:-1])

    def _interior_point(self) -> Tensor:
        """A point inside the support, shape ``(1, d)``."""
        zeros = torch.zeros(1, self.dim, dtype=torch.float64)
        return self.from_unbounded(zeros)

    # ------------------------------------------------------------- bijection
    def to_unbounded(self, theta: Tensor) -> Tensor:
        """Map parameters ``(n, d)`` from the support to R^d."""
        columns = [b.inv(theta[:, i]) for i, b in enumerate(self._bijections)]
        return torch.stack(columns, dim=1)

    def from_unbounded(self, z: Tensor) -> Tensor:
        """Map ``(n, d)`` points of R^d into the support."""
        columns = [b(z[:, i]) for i, b in enumerate(self._bijections)]
        return torch.stack(columns, dim=1)

    def log_abs_det_jacobian(self, z: Tensor) -> Tensor:
        """``log |d theta / d z|`` of :meth:`from_unbounded` at ``z``, shape ``(n,)``."""
        total = torch.zeros(z.shape[0], dtype=z.dtype)
        for i, bijection in enumerate(self._bijections):
            total = total + bijection.log_abs_det_jacobian(z[:, i], bijection(z[:, i]))
        return total

    # ------------------------------------------------------- marginal CDFs
    @property
    def has_marginal_icdf(self) -> bool:
        """Whether every marginal has a CDF and an inverse CDF in torch."""
        probe = self._interior_point()[0]
        try:
            for column, marginal in enumerate(self.marginals):
                u = marginal.cdf(probe[column])
                marginal.icdf(u)
        except NotImplementedError:
            return False
        return True

    def marginal_cdf(self, theta: Tensor) -> Tensor:
        """Per-parameter CDF values ``(n, d)`` in [0, 1]."""
        columns = [m.cdf(theta[:, i]).clamp(0.0, 1.0) for i, m in enumerate(self.marginals)]
        return torch.stack(columns, dim=1)

    def marginal_icdf(self, u: Tensor) -> Tensor:
        """Per-parameter inverse CDF of ``u`` ``(n, d)`` in [0, 1]."""
        columns = [m.icdf(u[:, i]) for i, m in enumerate(self.marginals)]
        return torch.stack(columns, dim=1)

    # ---------------------------------------------------------- description
    def to_spec(self) -> dict[str, Any]:
        """A JSON-compatible description that :func:`prior_from_spec` rebuilds.

        Raises :class:`InvalidInputError` if a marginal is not one of the
        distributions mfask can rebuild without running code.
        """
        marginals = []
        for marginal in self.marginals:
            kind = type(marginal).__name__
            if kind not in _SERIALIZABLE_MARGINALS:
                raise InvalidInputError(
                    f"cannot describe a {kind} marginal as data; pass the prior to "
                    f"load() instead (describable: {', '.join(_SERIALIZABLE_MARGINALS)})"
                )
            params = {key: float(getattr(marginal, key)) for key in marginal.arg_constraints}
            marginals.append({"type": kind, "params": params})
        return {"names": list(self.names), "marginals": marginals}

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{name}~{type(m).__name__}" for name, m in zip(self.names, self.marginals)
        )
        return f"{type(self).__name__}({parts})"


class IndependentPrior(Prior):
    """A prior from independent torch distributions, e.g. log-normals.

    Example::

        prior = IndependentPrior(
            [LogNormal(math.log(0.4), 0.5), LogNormal(math.log(0.125), 0.2)],
            names=["beta", "gamma"],
        )
    """

    def __init__(
        self, marginals: Sequence[Distribution], names: Sequence[str] | None = None
    ) -> None:
        super().__init__([_as_float64(m) for m in marginals], names)


class BoxUniform(Prior):
    """Independent uniform priors on ``[low_i, high_i)``.

    Arguments:
        low, high: sequences of length ``d`` with ``low < high`` elementwise.
        names: parameter names.
    """

    def __init__(
        self,
        low: Sequence[float] | Tensor,
        high: Sequence[float] | Tensor,
        names: Sequence[str] | None = None,
    ) -> None:
        low_t = torch.as_tensor(low, dtype=torch.float64).reshape(-1)
        high_t = torch.as_tensor(high, dtype=torch.float64).reshape(-1)
        if low_t.shape != high_t.shape:
            raise InvalidInputError(
                f"low and high must have the same length; got {low_t.numel()} and "
                f"{high_t.numel()}"
            )
        if not (torch.isfinite(low_t).all() and torch.isfinite(high_t).all()):
            raise InvalidInputError("low and high must be finite")
        if not (low_t < high_t).all():
            raise InvalidInputError(
                f"need low < high in every dimension; got low={low_t.tolist()}, "
                f"high={high_t.tolist()}"
            )
        marginals = [
            torch.distributions.Uniform(lo, hi, validate_args=False)
            for lo, hi in zip(low_t, high_t)
        ]
        super().__init__(marginals, names)
        self.low = low_t
        self.high = high_t


def prior_from_spec(spec: dict[str, Any]) -> Prior:
    """Rebuild a prior from :meth:`Prior.to_spec` output (no code is run)."""
    try:
        names = [str(n) for n in spec["names"]]
        kinds = [m["type"] for m in spec["marginals"]]
        params = [
            {str(k): float(v) for k, v in m["params"].items()} for m in spec["marginals"]
        ]
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidInputError(f"malformed prior description: {error}") from None
    if all(kind == "Uniform" for kind in kinds):
        return BoxUniform(
            [p["low"] for p in params], [p["high"] for p in params], names=names
        )
    marginals = []
    for kind, kwargs in zip(kinds, params):
        if kind not in _SERIALIZABLE_MARGINALS:
            raise InvalidInputError(
                f"unknown marginal type {kind!r} in prior description{did_you_mean(kind, _SERIALIZABLE_MARGINALS)}; "
                f"choose one of {', '.join(_SERIALIZABLE_MARGINALS)}"
            )
        expected = _marginal_arguments(kind)
        if sorted(kwargs) != expected:
            raise InvalidInputError(
                f"a {kind} marginal takes the arguments {expected}; got {sorted(kwargs)}"
            )
        marginals.append(getattr(torch.distributions, kind)(**kwargs, validate_args=False))
    return IndependentPrior(marginals, names=names)


def _marginal_arguments(kind: str) -> list[str]:
    """The torch arguments of a describable marginal, sorted (``["loc", "scale"]``)."""
    if kind == "Uniform":  # its constraints depend on the instance
        return ["high", "low"]
    return sorted(getattr(torch.distributions, kind).arg_constraints)


def _check_marginal_parameters(marginal: Distribution, index: int) -> None:
    """Raise :class:`InvalidInputError` unless every parameter of a marginal
    is finite and satisfies its torch constraint (e.g. a positive scale)."""
    kind = type(marginal).__name__
    for key, constraint in marginal.arg_constraints.items():
        try:
            value = torch.as_tensor(getattr(marginal, key))
        except (AttributeError, NotImplementedError, TypeError, RuntimeError):
            continue  # a parameter this marginal does not expose
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise InvalidInputError(f"marginal {index} ({kind}) has a non-finite {key}: {value.tolist()}")
        if constraints.is_dependent(constraint):
            continue  # checked below where mfask knows the dependency
        if not bool(constraint.check(value).all()):
            raise InvalidInputError(
                f"marginal {index} ({kind}) has an invalid {key}={value.tolist()}; it must "
                f"satisfy {constraint} (e.g. a scale or rate must be positive)"
            )
    if isinstance(marginal, torch.distributions.Uniform) and not bool((marginal.low < marginal.high).all()):
        raise InvalidInputError(
            f"marginal {index} (Uniform) needs low < high; got low={marginal.low.tolist()}, "
            f"high={marginal.high.tolist()}"
        )


def _as_float64(marginal: Distribution) -> Distribution:
    """Rebuild a describable marginal with float64 parameters; else return it."""
    kind = type(marginal).__name__
    if kind not in _SERIALIZABLE_MARGINALS:
        return marginal
    kwargs = {
        key: torch.as_tensor(getattr(marginal, key), dtype=torch.float64)
        for key in marginal.arg_constraints
    }
    return type(marginal)(**kwargs, validate_args=False)


def _support_bounds(marginal: Distribution) -> tuple[float, float]:
    """Lower and upper bound of a 1-D marginal's support (possibly infinite)."""
    support = marginal.support
    base = getattr(support, "base_constraint", support)
    low = getattr(base, "lower_bound", None)
    high = getattr(base, "upper_bound", None)
    if base is constraints.positive or base is constraints.nonnegative:
        low = 0.0
    if base is constraints.unit_interval:
        low, high = 0.0, 1.0
    low = float(low) if low is not None else -float("inf")
    high = float(high) if high is not None else float("inf")
    return low, high
