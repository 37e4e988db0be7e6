"""Sequential rounds at one observation: MF-TSNPE, A-MF-TSNPE and plain TSNPE.

Once the user fixes an observation ``x_o`` (``set_observation``), asks at the
highest fidelity become rounds of truncated sequential NPE (TSNPE). This
module keeps the round state and answers those asks; the ask/tell object
supplies the data counts, the (lazily fitted) posterior of a level, the
pending parameters and the random generator through a
:class:`ProposalContext`, and stores the tickets.

**Rounds.** A round is a maximal run of high-fidelity asks after
``set_observation`` that draw from the same proposal:

* round 1 proposes from the **prior** for as long as the highest fidelity has
  fewer than 2 successful simulations (its posterior cannot be fitted yet);
  the posterior fitted on those simulations, fine-tuned from the
  low-fidelity network, is the MF-NPE posterior of the paper's first round;
* every later round proposes from the prior **truncated** to the highest
  density region of one trained posterior model ``q(theta | x_o)`` (plus
  acquisitions if asked for). A new round begins at the first high-fidelity
  ask at which that model differs from the current round's, i.e. after new
  successful simulations at any level (told since, in any order, late or
  partial: the model is refitted on all data so far) or after an explicit
  refit or a change of the ensemble size. Asks in between (e.g. several
  asks before any tell) stay in the same round and share its region and
  threshold; acquisitions then avoid the pending parameters.

Round 0 means no round: no observation is set (amortized asks), or no
high-fidelity ask has been made since ``set_observation``. Asks at lower
fidelities are always prior draws and carry the current round number.

**First round.** By default (``first_round="prior"``) the first round's
high-fidelity parameters are prior draws, not draws from the prior truncated
by the low-fidelity posterior at ``x_o``: ``x_o`` is a high-fidelity output,
which the low-fidelity network never saw, and when the fidelities differ
(e.g. a shifted or differently distributed output) its region at ``x_o`` can
miss the true posterior entirely; a truncated prior never proposes outside
its region, and the loss of TSNPE is only valid if every round's region
contains the posterior's support. Prior draws cost some high-fidelity budget
in the first round but keep the procedure safe whatever the low fidelity is.
With ``first_round="lower"`` the first round truncates with the posterior of
the highest lower level that has data (worth it when the fidelities are known
to agree closely at ``x_o``).

**Truncation.** The region is ``R = {theta : log q(theta | x_o) >= tau}``;
``tau`` is the ``quantile`` quantile (default ``1e-4``) of ``log q`` over
``threshold_samples`` draws from ``q(. | x_o)``
(:func:`mfask.truncation.hpd_threshold`), so ``R`` holds about
``1 - quantile`` of ``q``'s mass. Draws come from
:class:`mfask.truncation.TruncatedPrior`, rebuilt at each ask from the
round's stored threshold and samples, so that a saved and reloaded object
makes exactly the same next ask. Training uses every successful simulation
with the plain NPE loss: proposals from priors truncated to regions that all
contain the posterior's support leave the posterior at ``x_o`` unchanged on
that support.

Shapes: ``theta`` is ``(n, d)`` float64; ``x_o`` is ``(*x_shape)``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from mfask.acquisition import (
    AcquisitionConfig,
    log_ensemble_variance,
    resolve_acquisition,
    select_acquisitions,
)
from mfask.errors import InvalidInputError
from mfask.priors import Prior
from mfask.tickets import SOURCES
from mfask.truncation import TruncatedPrior, hpd_threshold

__all__ = [
    "FirstRound",
    "SequentialConfig",
    "RoundInfo",
    "ProposalContext",
    "SequentialState",
    "SequentialWarning",
    "threshold_at_observation",
]

FirstRound = Literal["prior", "lower"]
Rule = Literal["prior", "truncated"]

_PRIOR, _TRUNCATED, _ACQUISITION = (SOURCES.index(s) for s in ("prior", "truncated", "acquisition"))


class SequentialWarning(UserWarning):
    """A sequential set-up that works but may bias the result."""


class DensityAtObservation(Protocol):
    """What the sequential rules need from a posterior density
    (:class:`mfask.posterior_density.PosteriorDensity` provides it)."""

    @property
    def num_members(self) -> int: ...

    def sample(self, num_samples: int, x: Tensor, generator: torch.Generator) -> Tensor: ...

    def log_prob(self, theta: Tensor, x: Tensor) -> Tensor: ...

    def member_log_probs(self, theta: Tensor, x: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class SequentialConfig:
    """Settings of the sequential rounds (given to ``set_observation``).

    Arguments:
        quantile: ``R`` leaves out this share of the posterior's mass.
        threshold_samples: draws from ``q(. | x_o)`` that estimate the
            threshold (``quantile * threshold_samples`` should be at least 1).
        first_round: ``"prior"`` or ``"lower"`` (see the module docstring).
        acquisition: default acquisition settings of high-fidelity asks
            (``None``: none unless an ask asks for them).
        max_evaluations: log-density evaluations a truncated draw may cost
            per ask before :class:`mfask.truncation.TruncationError`.
    """

    quantile: float = 1e-4
    threshold_samples: int = 20_000
    first_round: FirstRound = "prior"
    acquisition: AcquisitionConfig | None = None
    max_evaluations: int = 10_000_000

    def __post_init__(self) -> None:
        if isinstance(self.quantile, bool) or not isinstance(self.quantile, (int, float)) or not (
            0.0 < self.quantile < 1.0
        ):
            raise InvalidInputError(f"quantile must be in (0, 1); got {self.quantile!r}")
        for name in ("threshold_samples", "max_evaluations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise InvalidInputError(f"{name} must be an integer >= 2; got {value!r}")
        if self.first_round not in ("prior", "lower"):
            raise InvalidInputError(
                f"first_round must be 'prior' or 'lower'; got {self.first_round!r}"
            )
        if self.acquisition is not None and not isinstance(self.acquisition, AcquisitionConfig):
            raise InvalidInputError("acquisition must be an AcquisitionConfig or None")

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form."""
        values = asdict(self)
        values["acquisition"] = None if self.acquisition is None else self.acquisition.to_dict()
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SequentialConfig":
        """Inverse of :meth:`to_dict`."""
        acquisition = values.get("acquisition")
        return cls(
            quantile=float(values["quantile"]),
            threshold_samples=int(values["threshold_samples"]),
            first_round=values["first_round"],
            acquisition=None if acquisition is None else AcquisitionConfig.from_dict(acquisition),
            max_evaluations=int(values["max_evaluations"]),
        )


@dataclass(frozen=True)
class RoundInfo:
    """Where the sequential procedure stands (``MultiFidelityPosterior.round_info``).

    Attributes:
        round: the current round (0: none; see :mod:`mfask.sequential`).
        observation_set: whether an observation is set.
        rule: how the current round proposes high-fidelity parameters:
            ``"prior"``, ``"truncated"`` or ``None`` (no round yet).
        region_level: the fidelity level whose posterior defines the region
            (``None`` for the prior rule).
        trained_on: successful simulations per level (low to high) when the
            round began.
        ensemble_size: members of the highest level's ensemble (``>= 2``
            once acquisition has been used).
        threshold: ``tau`` of the current region (``None`` for the prior rule).
        region_prior_mass: the region's prior mass as estimated by the last
            truncated draw (``None`` before one).
        num_rounds_with_truncation: rounds of this observation that proposed
            from a truncated prior.
    """

    round: int
    observation_set: bool
    rule: Rule | None
    region_level: int | None
    trained_on: tuple[int, ...]
    ensemble_size: int
    threshold: float | None
    region_prior_mass: float | None
    num_rounds_with_truncation: int


@dataclass(frozen=True)
class ProposalContext:
    """What the ask/tell object lends the sequential rules for one ask.

    Attributes:
        prior: the prior.
        counts: successful simulations per level, low to high.
        posterior_of: brings level ``l``'s model up to date with the data
            (lazy fit) and returns its density and identity, a tuple that
            changes whenever the model is retrained (its and the lower
            levels' fit counts).
        pending: ``(M, d)`` highest-fidelity parameters asked and not yet told.
        generator: the ask stream (all draws of the ask come from it).
        stream_seed: seeds derived from the object's seed and integer keys.
    """

    prior: Prior
    counts: tuple[int, ...]
    posterior_of: Callable[[int], tuple[DensityAtObservation, tuple[int, ...]]]
    pending: np.ndarray
    generator: torch.Generator
    stream_seed: Callable[..., int]


def threshold_at_observation(
    density: DensityAtObservation,
    x_o: Tensor,
    num_samples: int,
    quantile: float,
    generator: torch.Generator,
) -> tuple[float, Tensor, Tensor]:
    """The HPD threshold of ``q(. | x_o)`` and the samples it came from.

    Arguments:
        density: the posterior.
        x_o: ``(1, *x_shape)`` the observation.
        num_samples: ``m`` draws from ``q(. | x_o)``.
        quantile: the share of ``q``'s mass left outside the region.
        generator: source of the draws.

    Returns:
        ``tau`` (the ``quantile`` quantile of ``log q`` over the draws),
        the draws ``(m', d)`` and their ``log q`` ``(m',)``; ``m' <= m`` as
        draws whose density is not finite (rounded onto the support's
        boundary) are dropped.
    """
    samples = density.sample(num_samples, x_o, generator)[0]
    log_q = density.log_prob(samples, x_o.expand(samples.shape[0], *x_o.shape[1:]))
    finite = torch.isfinite(log_q)
    if int(finite.sum()) < 2:
        raise InvalidInputError(
            "the posterior's own samples at x_o have no finite density; the model is broken"
        )
    samples, log_q = samples[finite], log_q[finite]
    return hpd_threshold(log_q, quantile), samples, log_q


@dataclass
class _Round:
    """The state of the current round."""

    key: list[Any]
    rule: Rule
    trained_on: tuple[int, ...]
    level: int | None = None
    threshold: float | None = None
    samples: Tensor | None = None  # (m, d) draws from q(. | x_o)
    log_probs: Tensor | None = None  # (m,)
    region_prior_mass: float | None = None

    @property
    def scale(self) -> Tensor:
        """Per-parameter spread ``(d,)`` of the posterior (exclusion distances)."""
        assert self.samples is not None
        spread = self.samples.std(dim=0)
        return torch.where(spread > 0, spread, torch.ones_like(spread))


@dataclass
class SequentialState:
    """The observation, the round and the current round's region.

    The ask/tell object owns one (amortized while :attr:`observation` is
    ``None``) and calls :meth:`propose` for highest-fidelity asks.
    """

    observation: np.ndarray | None = None  # (*x_shape)
    config: SequentialConfig = field(default_factory=SequentialConfig)
    sequence: int = 0  # observations set so far (seeds the thresholds)
    round: int = 0
    ensemble_members: int = 1  # members wanted at the highest level
    truncated_rounds: int = 0
    proposed_truncated: bool = False  # this object ever proposed non-prior HF rows
    current: _Round | None = None

    # ---------------------------------------------------------------- control
    def start(self, observation: np.ndarray, config: SequentialConfig) -> bool:
        """Fix ``observation`` ``(*x_shape)``; returns False if it was already set
        (same values), in which case the round state is kept and only the
        config is updated."""
        if self.observation is not None and np.array_equal(self.observation, observation):
            self.config = config
            return False
        if self.proposed_truncated:
            warnings.warn(
                "high-fidelity parameters were proposed from a truncated prior (or by "
                "acquisition) for an earlier observation; training uses them at the new "
                "observation too, which biases its posterior unless the earlier regions "
                "contain its support. Start a new MultiFidelityPosterior (told the same "
                "low-fidelity data) for an unrelated observation",
                SequentialWarning,
                stacklevel=3,
            )
        self.observation = np.array(observation, dtype=np.float64, copy=True)
        self.config = config
        self.sequence += 1
        self.round = 0
        self.truncated_rounds = 0
        self.current = None
        return True

    def clear(self) -> None:
        """Back to amortized asks."""
        self.observation = None
        self.round = 0
        self.truncated_rounds = 0
        self.current = None

    @property
    def active(self) -> bool:
        """Whether an observation is set."""
        return self.observation is not None

    def info(self) -> RoundInfo:
        """The current :class:`RoundInfo`."""
        current = self.current
        return RoundInfo(
            round=self.round,
            observation_set=self.active,
            rule=None if current is None else current.rule,
            region_level=None if current is None else current.level,
            trained_on=() if current is None else current.trained_on,
            ensemble_size=self.ensemble_members,
            threshold=None if current is None else current.threshold,
            region_prior_mass=None if current is None else current.region_prior_mass,
            num_rounds_with_truncation=self.truncated_rounds,
        )

    # ---------------------------------------------------------------- asking
    def wants_acquisition(self, acquisition: Any) -> AcquisitionConfig | None:
        """Resolve an ask's ``acquisition`` argument against the config; raises
        :class:`InvalidInputError` for a bad value."""
        return resolve_acquisition(acquisition, self.config.acquisition)

    def propose(
        self, n: int, acquisition: AcquisitionConfig | None, context: ProposalContext
    ) -> tuple[np.ndarray, np.ndarray]:
        """Parameters ``(n, d)`` and source codes ``(n,)`` for a highest-fidelity ask.

        Starts a new round when the proposal model changed (see the module
        docstring); updates :attr:`round`.
        """
        if self.observation is None:
            raise InvalidInputError("no observation is set")
        if acquisition is not None:
            self.ensemble_members = max(self.ensemble_members, acquisition.ensemble_size)
        x_o = torch.from_numpy(self.observation).reshape(1, *self.observation.shape)
        top = len(context.counts) - 1
        level = self._region_level(context.counts)
        density = None
        if level is None:
            key: list[Any] = ["prior"]
        else:
            density, identity = context.posterior_of(level)
            key = ["truncated", level, *identity]
        if self.current is None or self.current.key != key:
            self._begin_round(key, level, density, x_o, context)
        current = self.current
        assert current is not None
        generator = context.generator
        if current.rule == "prior":
            theta = context.prior.sample(n, generator)
            return theta.numpy(), np.full(n, _PRIOR, dtype=np.int8)

        assert density is not None and current.threshold is not None
        self.proposed_truncated = True
        sampler = TruncatedPrior(
            context.prior,
            lambda theta: density.log_prob(theta, x_o.expand(theta.shape[0], *x_o.shape[1:])),
            current.threshold,
            current.samples,
            proposal_log_prob=current.log_probs,
            max_evaluations=self.config.max_evaluations,
        )
        use_acquisition = acquisition is not None and level == top and density.num_members >= 2
        count = acquisition.count(n) if use_acquisition else 0
        pool_size = acquisition.pool_size if use_acquisition else 0
        from_region = n - count + (pool_size if use_acquisition and acquisition.pool == "truncated" else 0)
        draws = sampler.sample(from_region, generator)
        theta_region = draws[: n - count]
        parts, sources = [theta_region], [np.full(n - count, _TRUNCATED, dtype=np.int8)]
        if use_acquisition:
            assert acquisition is not None
            pool = draws[n - count :] if acquisition.pool == "truncated" else (
                context.prior.sample(pool_size, generator)
            )
            scores = log_ensemble_variance(
                density.member_log_probs(pool, x_o.expand(pool.shape[0], *x_o.shape[1:]))
            )
            picks = select_acquisitions(
                pool,
                scores,
                count,
                pending=torch.from_numpy(np.asarray(context.pending, dtype=np.float64)),
                scale=current.scale,
                radius=acquisition.exclusion_radius,
            )
            parts.append(pool[picks])
            sources.append(np.full(picks.shape[0], _ACQUISITION, dtype=np.int8))
            missing = count - picks.shape[0]
            if missing:  # too few eligible candidates: the rest from the region
                parts.append(sampler.sample(missing, generator))
                sources.append(np.full(missing, _TRUNCATED, dtype=np.int8))
        if sampler.stats is not None:
            current.region_prior_mass = float(sampler.stats.region_prior_mass)
        return torch.cat(parts).numpy(), np.concatenate(sources)

    def _region_level(self, counts: tuple[int, ...]) -> int | None:
        """The level whose posterior defines the region, or ``None`` for prior draws."""
        top = len(counts) - 1
        if counts[top] >= 2:
            return top
        if self.config.first_round == "lower":
            for level in range(top - 1, -1, -1):
                if counts[level] >= 2:
                    return level
        return None

    def _begin_round(
        self,
        key: list[Any],
        level: int | None,
        density: DensityAtObservation | None,
        x_o: Tensor,
        context: ProposalContext,
    ) -> None:
        self.round += 1
        if level is None or density is None:
            self.current = _Round(key=key, rule="prior", trained_on=context.counts)
            return
        generator = torch.Generator().manual_seed(context.stream_seed(self.sequence, self.round))
        threshold, samples, log_probs = threshold_at_observation(
            density, x_o, self.config.threshold_samples, self.config.quantile, generator
        )
        self.current = _Round(
            key=key,
            rule="truncated",
            trained_on=context.counts,
            level=level,
            threshold=threshold,
            samples=samples,
            log_probs=log_probs,
        )
        self.truncated_rounds += 1

    # ----------------------------------------------------------- persistence
    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON-compatible meta and named arrays (no pickle)."""
        current = self.current
        meta: dict[str, Any] = {
            "config": self.config.to_dict(),
            "has_observation": self.observation is not None,
            "sequence": self.sequence,
            "round": self.round,
            "ensemble_members": self.ensemble_members,
            "truncated_rounds": self.truncated_rounds,
            "proposed_truncated": self.proposed_truncated,
            "current": None,
        }
        arrays: dict[str, np.ndarray] = {}
        if self.observation is not None:
            arrays["observation"] = self.observation.copy()
        if current is not None:
            meta["current"] = {
                "key": list(current.key),
                "rule": current.rule,
                "trained_on": list(current.trained_on),
                "level": current.level,
                "threshold": current.threshold,
                "region_prior_mass": current.region_prior_mass,
            }
            if current.samples is not None and current.log_probs is not None:
                arrays["samples"] = current.samples.numpy().copy()
                arrays["log_probs"] = current.log_probs.numpy().copy()
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict[str, Any] | None, arrays: dict[str, np.ndarray]) -> "SequentialState":
        """Inverse of :meth:`to_state` (``meta=None``: a file from before
        sequential support, i.e. a fresh amortized state). Raises ``KeyError``,
        ``TypeError`` or ``ValueError`` for a malformed state."""
        if meta is None:
            return cls()
        state = cls(
            observation=np.asarray(arrays["observation"], dtype=np.float64).copy()
            if meta["has_observation"] else None,
            config=SequentialConfig.from_dict(meta["config"]),
            sequence=int(meta["sequence"]),
            round=int(meta["round"]),
            ensemble_members=int(meta["ensemble_members"]),
            truncated_rounds=int(meta["truncated_rounds"]),
            proposed_truncated=bool(meta["proposed_truncated"]),
        )
        saved = meta["current"]
        if saved is not None:
            rule = saved["rule"]
            if rule not in ("prior", "truncated"):
                raise ValueError(f"unknown round rule {rule!r}")
            has_region = rule == "truncated"
            state.current = _Round(
                key=list(saved["key"]),
                rule=rule,
                trained_on=tuple(int(c) for c in saved["trained_on"]),
                level=None if saved["level"] is None else int(saved["level"]),
                threshold=None if saved["threshold"] is None else float(saved["threshold"]),
                samples=torch.from_numpy(np.asarray(arrays["samples"], dtype=np.float64)) if has_region else None,
                log_probs=torch.from_numpy(np.asarray(arrays["log_probs"], dtype=np.float64)) if has_region else None,
                region_prior_mass=None if saved["region_prior_mass"] is None
                else float(saved["region_prior_mass"]),
            )
            if has_region and (state.current.threshold is None or not math.isfinite(state.current.threshold)):
                raise ValueError("a truncated round without a finite threshold")
        return state
