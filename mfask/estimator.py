"""The conditional density estimator: a neural spline flow built on normflows.

:class:`ConditionalFlow` models ``q(z | x)`` for parameters ``z`` mapped to
unbounded space R^d (see :meth:`mfask.priors.Prior.to_unbounded`). Both inputs
are standardised with statistics taken from training data:

* ``z`` by an affine map that is part of the flow, so ``log_prob`` stays an
  exact density of ``z`` (the map's log-Jacobian is added);
* ``x`` elementwise before the (optional) embedding net, which only changes the
  conditioning input and needs no Jacobian.

The architecture follows the field's defaults for neural spline flows: five
rational-quadratic coupling transforms with ten bins, conditioners of two
residual blocks of 50 hidden units, an LU-parametrised linear mixing layer
between transforms, and a standard normal base. One-dimensional parameters use
an autoregressive spline (a coupling layer needs at least two dimensions).

Shapes: ``z`` is ``(n, d)``, ``x`` is ``(n, *x_shape)``; computations are float32.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from collections.abc import Callable
from typing import Literal

import normflows
import torch
from torch import Tensor, nn

from mfask.errors import InvalidInputError
from mfask.lean_log_prob import LeanLogProb

__all__ = ["FlowConfig", "FlowLayout", "FLOW_LAYOUTS", "ConditionalFlow"]

FlowLayout = Literal["mfask", "sbi"]
#: the layouts :class:`FlowConfig` accepts
FLOW_LAYOUTS: tuple[str, ...] = ("mfask", "sbi")

# A standard deviation below this is treated as constant data (e.g. a dummy
# summary statistic), and the feature is only shifted, not scaled.
_MIN_STD = 1e-8


@dataclass(frozen=True)
class FlowConfig:
    """Architecture of the neural spline flow.

    Arguments:
        hidden_features: width of each conditioner's residual blocks.
        num_transforms: number of spline transforms.
        num_bins: bins per rational-quadratic spline.
        num_blocks: residual blocks per conditioner.
        tail_bound: the spline acts on [-tail_bound, tail_bound]; linear tails
            outside (inputs are standardised, so 3 covers most mass).
        layout: how the ``d >= 2`` stack is put together. ``"mfask"``: each
            coupling also applies an unconditional spline to the features it
            passes through, with an LU layer and a fixed random permutation
            between couplings. ``"sbi"``: the layout of ``sbi``'s NSF, no
            unconditional splines and an LU layer after every coupling (no
            permutation). Measured in ``docs/benchmarks/parameter_space.md``.
        conditional_standardization: standardise ``z`` by a least-squares
            regression on the standardised ``x`` (shift ``a + B x``, scale the
            residual sd) instead of by its marginal mean and sd, so that the
            flow starts near posteriors much narrower than the prior (see
            :func:`linear_conditional_standardization`). The default since
            the sbibm suite (``docs/conditional_standardization.md``);
            ``False`` is the marginal standardisation of earlier versions.
    """

    hidden_features: int = 50
    num_transforms: int = 5
    num_bins: int = 10
    num_blocks: int = 2
    tail_bound: float = 3.0
    layout: FlowLayout = "mfask"
    conditional_standardization: bool = True

    def __post_init__(self) -> None:
        for name in ("hidden_features", "num_transforms", "num_bins", "num_blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name} must be a positive integer; got {value!r}")
        if not self.tail_bound > 0:
            raise InvalidInputError(f"tail_bound must be positive; got {self.tail_bound!r}")
        if self.layout not in FLOW_LAYOUTS:
            raise InvalidInputError(
                f"layout must be one of {', '.join(map(repr, FLOW_LAYOUTS))}; got {self.layout!r}"
            )

    def to_dict(self) -> dict[str, float | str | bool]:
        """JSON-compatible form. Fields added after results, saved states and
        benchmark keys built from this form existed appear only when they
        differ from the behaviour before them (``layout="mfask"``,
        ``conditional_standardization=False``), so those keep naming the same
        settings; :meth:`from_dict` reads an absent field as that behaviour."""
        values = asdict(self)
        for name, legacy in _LEGACY_VALUES.items():
            if values[name] == legacy:
                del values[name]
        return values

    def weight_count_estimate(self, theta_dim: int, context_dim: int) -> int:
        """Roughly how many values the weights of a :class:`ConditionalFlow`
        of this architecture hold (within a factor of about 2.5 either way),
        computed without building one: the conditioners' residual nets
        dominate. Used to refuse files that declare flows far larger than
        the weights they store."""
        hidden, blocks, bins = self.hidden_features, self.num_blocks, self.num_bins
        d, c = int(theta_dim), int(context_dim)
        per_transform = hidden * (d + c) + blocks * hidden * (2 * hidden + c) + 3 * hidden * d * bins + d * d
        return self.num_transforms * per_transform + d * c + 2 * (d + c)

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> "FlowConfig":
        """Inverse of :meth:`to_dict` (absent later fields take their legacy value)."""
        return cls(**{**_LEGACY_VALUES, **values})  # type: ignore[arg-type]


# Fields of FlowConfig added after its dict form was first stored, with the
# value that reproduces the behaviour of files and keys written before them.
_LEGACY_VALUES: dict[str, object] = {"layout": "mfask", "conditional_standardization": False}


class ConditionalFlow(nn.Module):
    """Conditional neural spline flow ``q(z | x)`` with built-in standardisation.

    Arguments:
        theta_dim: dimension ``d`` of ``z``.
        x_shape: shape of one conditioning input ``x``.
        config: the architecture (:class:`FlowConfig`).
        embedding_net: optional module mapping standardised ``(n, *x_shape)``
            to features ``(n, k)``; trained jointly with the flow.
    """

    def __init__(
        self,
        theta_dim: int,
        x_shape: tuple[int, ...],
        config: FlowConfig = FlowConfig(),
        embedding_net: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.theta_dim = int(theta_dim)
        self.x_shape = tuple(int(s) for s in x_shape)
        self.config = config
        self.embedding_net = embedding_net if embedding_net is not None else nn.Flatten()
        context_dim = self._context_dim()
        self.register_buffer("z_shift", torch.zeros(self.theta_dim))
        self.register_buffer("z_scale", torch.ones(self.theta_dim))
        if config.conditional_standardization:
            num_features = math.prod(self.x_shape)
            self.register_buffer("z_slope", torch.zeros(self.theta_dim, num_features))
            # the training features' range, to which the regression's input is clamped
            # (unset: the widest finite range, i.e. no clamping)
            widest = torch.finfo(torch.float32).max  # finite in every float dtype used
            self.register_buffer("feature_low", torch.full((num_features,), -widest))
            self.register_buffer("feature_high", torch.full((num_features,), widest))
        self.register_buffer("x_shift", torch.zeros(self.x_shape))
        self.register_buffer("x_scale", torch.ones(self.x_shape))
        self.flow = normflows.ConditionalNormalizingFlow(
            normflows.distributions.DiagGaussian(self.theta_dim, trainable=False),
            _spline_layers(self.theta_dim, context_dim, config),
        )
        # The same density as ``self.flow.log_prob`` from the same parameters,
        # with far fewer tensor operations (None for the 1-D autoregressive stack).
        self._lean_log_prob = LeanLogProb.for_flow(self.flow)

    def _context_dim(self) -> int:
        """Number of features the embedding net produces for one ``x``."""
        with torch.no_grad():
            probe = self.embedding_net(torch.zeros((2, *self.x_shape)))
        if probe.ndim != 2 or probe.shape[0] != 2:
            raise InvalidInputError(
                f"the embedding net must map (n, *x_shape) to (n, k); for x_shape "
                f"{self.x_shape} it returned shape {tuple(probe.shape)} for n=2"
            )
        return int(probe.shape[1])

    # ---------------------------------------------------------- standardising
    def set_standardization(self, z: Tensor, x: Tensor) -> None:
        """Set the affine standardisation from training data.

        ``x`` is standardised elementwise. ``z`` is centred and scaled by its
        marginal statistics or, with ``FlowConfig(conditional_standardization=True)``,
        by a linear regression on the standardised ``x``: the shift becomes
        ``z_shift + x_standardised @ z_slope.T`` and the scale the residual
        standard deviation (see :func:`linear_conditional_standardization`).

        Arguments:
            z: ``(n, d)`` parameters in unbounded space.
            x: ``(n, *x_shape)`` conditioning inputs.
        """
        z, x = z.to(self.device), x.to(self.device)
        x_std = x.std(dim=0) if x.shape[0] > 1 else torch.ones_like(self.x_scale)
        self.x_shift.copy_(x.mean(dim=0))
        self.x_scale.copy_(torch.where(x_std > _MIN_STD, x_std, torch.ones_like(x_std)))
        if self.config.conditional_standardization:
            features = self._standardized_features(x)
            shift, slope, scale = linear_conditional_standardization(z, features)
            self.z_slope.copy_(slope)
            self.feature_low.copy_(features.min(dim=0).values)
            self.feature_high.copy_(features.max(dim=0).values)
        else:
            shift, scale = marginal_standardization(z)
        self.z_shift.copy_(shift)
        self.z_scale.copy_(torch.where(scale > _MIN_STD, scale, torch.ones_like(scale)))

    def _standardized_features(self, x: Tensor) -> Tensor:
        """``x (n, *x_shape)`` standardised and flattened to ``(n, prod(x_shape))``."""
        return ((x - self.x_shift) / self.x_scale).reshape(x.shape[0], -1)

    def _z_location(self, x: Tensor) -> Tensor:
        """The standardisation's shift for each row: ``x (n, *x_shape)`` -> ``(n, d)``.

        The regression's features are clamped to their range in the training
        data, so the location never extrapolates linearly beyond what the data
        support (an ``x`` outside that range, e.g. in a heavy tail, would
        otherwise move the posterior arbitrarily far; measured in
        ``docs/conditional_standardization.md``)."""
        if not self.config.conditional_standardization:
            return self.z_shift.expand(x.shape[0], -1)
        features = torch.clamp(self._standardized_features(x), self.feature_low, self.feature_high)
        return self.z_shift + features @ self.z_slope.T

    def state_defaults(self) -> dict[str, Tensor]:
        """Buffers added after states were first saved, with the values that
        reproduce how those states behaved (read by
        :func:`mfask.state_file.load_module_arrays` when a file lacks them)."""
        if not self.config.conditional_standardization:
            return {}
        return {"feature_low": self.feature_low.clone(), "feature_high": self.feature_high.clone()}

    @property
    def device(self) -> torch.device:
        """The device the flow's weights live on (see :mod:`mfask.device`)."""
        return self.z_shift.device

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> "ConditionalFlow":
        # ``.to(device)`` and friends: the lean evaluator's index tensors are
        # not module state, so it is rebuilt on the flow's new device
        super()._apply(fn, recurse)
        self._lean_log_prob = LeanLogProb.for_flow(self.flow)
        return self

    def embed(self, x: Tensor) -> Tensor:
        """Standardise and embed ``x`` ``(n, *x_shape)`` to context ``(n, k)``,
        on :attr:`device`."""
        x = x.to(self.device)
        return self.embedding_net((x - self.x_shift) / self.x_scale)

    # ---------------------------------------------------------------- density
    # The public methods take inputs on any device and return their results on
    # the device of their first tensor argument: the rest of mfask keeps its
    # data on the CPU while the weights may live on a GPU.
    def log_prob(self, z: Tensor, x: Tensor) -> Tensor:
        """``log q(z | x)`` for paired rows: ``z (n, d)``, ``x (n, *x_shape)`` -> ``(n,)``
        on ``z``'s device (differentiable through the move)."""
        home = z.device
        z, x = z.to(self.device), x.to(self.device)
        context = self.embed(x)
        u = (z - self._z_location(x)) / self.z_scale
        if self._lean_log_prob is not None:
            log_q = self._lean_log_prob(u, context)
        else:
            log_q = self.flow.log_prob(u, context)
        return (log_q - torch.log(self.z_scale).sum()).to(home)

    def sample(self, num_samples: int, x: Tensor) -> Tensor:
        """Draw ``num_samples`` per observation: ``x (m, *x_shape)`` -> ``(m, num_samples, d)``
        on ``x``'s device.

        The base noise comes from torch's global CPU random state (whatever the
        flow's device, so a seed gives the same draws everywhere); callers that
        need reproducibility seed it (see :mod:`mfask.posterior_density`).
        """
        noise = torch.randn(x.shape[0] * num_samples, self.theta_dim, dtype=self.z_shift.dtype)  # on the CPU
        home = x.device
        x = x.to(self.device)
        context = self.embed(x).repeat_interleave(num_samples, dim=0)
        location = self._z_location(x).repeat_interleave(num_samples, dim=0)
        z = self._push_context(noise.to(self.device), context, location)
        return z.reshape(x.shape[0], num_samples, self.theta_dim).to(home)

    def push_forward(self, noise: Tensor, x: Tensor) -> Tensor:
        """Map given standard-normal base noise through the flow at ``x``.

        ``noise (n, d)`` and ``x (n, *x_shape)`` (paired rows) -> ``z (n, d)``
        on ``noise``'s device: the sample :meth:`sample` would return had its
        base draw been ``noise``. Deterministic given its inputs, so fixed
        noise gives common random numbers across observations and calls.
        """
        home = noise.device
        x = x.to(self.device)
        z = self._push_context(noise.to(self.device), self.embed(x), self._z_location(x))
        return z.to(home)

    def _push_context(self, noise: Tensor, context: Tensor, location: Tensor) -> Tensor:
        """Base noise ``(n, d)`` through the stack at embedded ``context (n, k)``,
        then un-standardised around ``location (n, d)``; all on :attr:`device`."""
        base = self.flow.q0
        u = base.loc + torch.exp(base.log_scale) * noise
        for layer in self.flow.flows:
            u, _ = layer(u, context=context)
        return u * self.z_scale + location


def marginal_standardization(z: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of ``z (n, d)``, each ``(d,)`` (sd 1 for one row)."""
    scale = z.std(dim=0) if z.shape[0] > 1 else torch.ones(z.shape[1], dtype=z.dtype, device=z.device)
    return z.mean(dim=0), scale


def linear_conditional_standardization(z: Tensor, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Least-squares fit ``z ~ shift + features @ slope.T`` and the residual spread.

    Arguments:
        z: ``(n, d)`` parameters.
        features: ``(n, p)`` conditioning features (standardised).

    Returns:
        ``shift (d,)``, ``slope (d, p)`` and ``scale (d,)``, the residual
        standard deviation with ``p + 1`` degrees of freedom removed. When
        ``n < 2 (p + 1)`` the fit is not attempted (``slope`` is zero and the
        marginal statistics are returned): a regression with that few rows per
        coefficient overfits and would understate the scale.
    """
    num_rows, num_features = features.shape
    if num_rows < 2 * (num_features + 1):
        shift, scale = marginal_standardization(z)
        return shift, torch.zeros(z.shape[1], num_features, dtype=z.dtype, device=z.device), scale
    features64, z64 = features.to(torch.float64), z.to(torch.float64)
    feature_mean, z_mean = features64.mean(dim=0), z64.mean(dim=0)
    design, centred = features64 - feature_mean, z64 - z_mean
    gram = design.T @ design
    ridge = 1e-6 * torch.trace(gram) / num_features + 1e-12  # keeps collinear features solvable
    solution = torch.linalg.solve(gram + ridge * torch.eye(num_features, dtype=torch.float64, device=z.device),
                                  design.T @ centred)  # (p, d)
    residual = centred - design @ solution
    variance = (residual**2).sum(dim=0) / (num_rows - num_features - 1)
    shift = z_mean - feature_mean @ solution
    return shift.to(z.dtype), solution.T.to(z.dtype), variance.sqrt().to(z.dtype)


def _spline_layers(theta_dim: int, context_dim: int, config: FlowConfig) -> list[nn.Module]:
    """The stack of spline transforms (and linear mixing layers between them),
    in normflows' sampling order (base to data)."""
    if theta_dim >= 2 and config.layout == "sbi":
        return _sbi_layers(theta_dim, context_dim, config)
    layers: list[nn.Module] = []
    for index in range(config.num_transforms):
        if theta_dim == 1:
            layers.append(
                normflows.flows.AutoregressiveRationalQuadraticSpline(
                    1,
                    config.num_blocks,
                    config.hidden_features,
                    num_context_channels=context_dim,
                    num_bins=config.num_bins,
                    tail_bound=config.tail_bound,
                )
            )
            continue
        layers.append(_coupling(theta_dim, context_dim, config, reverse_mask=index % 2 == 1))
        if index < config.num_transforms - 1:
            layers.append(normflows.flows.LULinearPermute(theta_dim))
    return layers


def _sbi_layers(theta_dim: int, context_dim: int, config: FlowConfig) -> list[nn.Module]:
    """The ``"sbi"`` layout: in the density direction, coupling ``i`` (mask
    alternating, no unconditional spline) then an LU layer, for every ``i``."""
    layers: list[nn.Module] = []
    for index in reversed(range(config.num_transforms)):
        mixing = normflows.flows.LULinearPermute(theta_dim)
        mixing.permutation._permutation = torch.arange(theta_dim)  # LU only, as sbi; on the CPU until moved
        coupling = _coupling(theta_dim, context_dim, config, reverse_mask=index % 2 == 0)
        coupling.prqct.unconditional_transform = None
        layers += [mixing, coupling]
    return layers


def _coupling(theta_dim: int, context_dim: int, config: FlowConfig,
              reverse_mask: bool) -> normflows.flows.CoupledRationalQuadraticSpline:
    """One conditional rational-quadratic coupling of the configured size."""
    return normflows.flows.CoupledRationalQuadraticSpline(
        theta_dim,
        config.num_blocks,
        config.hidden_features,
        num_context_channels=context_dim,
        num_bins=config.num_bins,
        tail_bound=config.tail_bound,
        reverse_mask=reverse_mask,
    )
