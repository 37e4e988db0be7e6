"""The ask/tell object: :class:`MultiFidelityPosterior`.

The user drives it like an optimizer. ``ask(fidelity, n)`` hands out parameter
batches, the user runs their own simulator, ``tell`` gives the results back.
Inside, the object keeps every ticket and result (:mod:`mfask.tickets`), and
when a posterior is needed it trains one conditional flow per fidelity level,
low to high, each level starting from the weights of the level below (MF-NPE);
with one fidelity this is plain NPE. With the transfer guard (the default) a
level above the lowest also trains networks on its own data alone and keeps
the fine-tuned ones, those, or both by held-out loss
(:mod:`mfask.transfer_guard`).

Training is lazy: nothing is fitted on ``tell``; ``fit``, ``sample``,
``log_prob`` (and asks that depend on the posterior) bring the models up to
date with the data told so far.

Shapes: ``theta`` is ``(n, d)``; one observation ``x`` is ``(*x_shape)``;
several observations are ``(m, *x_shape)``. Arrays returned are numpy float64.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from mfask.errors import (
    InvalidInputError,
    MaxEpochsWarning,
    NotEnoughDataError,
    StateFormatError,
)
from mfask.device import resolve_device
from mfask.estimator import ConditionalFlow, FlowConfig
from mfask.fine_tuning import FineTuningConfig, FineTuningStart
from mfask.fidelity import Fidelity, FidelitySpec, ask_target
from mfask.map_estimate import MapSettings, maximum_a_posteriori
from mfask.parameter_space import ParameterSpace, ParameterSpaceName
from mfask.posterior_density import PosteriorDensity
from mfask.priors import Prior
from mfask.state_schema import check_state
from mfask.state_file import (
    generator_from_array,
    generator_to_array,
    load_module_arrays,
    module_to_arrays,
    read_state,
    write_state,
)
from mfask.prior_book import MAX_ASK, PriorBook
from mfask.ticket_book import SimulationFailedWarning, TellResult
from mfask.tickets import DONE, PENDING, AskBatch
from mfask.training import TrainingConfig, TrainingHistory
from mfask.training_progress import TrainingProgress
from mfask.transfer_guard import TransferChoice, compare_candidates, guard_share
from mfask.acquisition import resolve_acquisition
from mfask.ensemble import train_members
from mfask.sequential import FirstRound, ProposalContext, RoundInfo, SequentialConfig, SequentialState
from mfask.user_input import as_numeric_array, as_sample_shape, as_theta, positive_int

__all__ = ["MAX_ASK", "MultiFidelityPosterior", "TellResult", "SimulationFailedWarning"]

TransferStandardization = Literal["refit", "keep"]


@dataclass
class _Level:
    """The trained model of one fidelity level and how it came about."""

    members: list[ConditionalFlow] | None = None  # trained by the MF chain (fine-tuned)
    hf_only: list[ConditionalFlow] | None = None  # the transfer guard's HF-only candidate
    choice: TransferChoice | None = None  # the guard's decision at the latest fit
    fit_count: int = 0  # how many times this level was trained
    trained_on: int = 0  # number of successful results at the last fit
    initialised_from: tuple[int, int] | None = None  # (lower level, its fit_count)
    histories: list[list[TrainingHistory]] = field(default_factory=list)
    density: PosteriorDensity | None = None  # the posterior of the latest fit (a cache)
    density_fit: int = -1  # the fit_count ``density`` was built at

    def posterior_members(self) -> list[ConditionalFlow]:
        """The networks whose equal-weight mixture is this level's posterior."""
        members = self.members or []
        if self.choice is None or self.hf_only is None or self.choice.chosen == "fine-tuned":
            return list(members)
        if self.choice.chosen == "hf-only":
            return list(self.hf_only)
        return [*members, *self.hf_only]

    def transfer_sources(self) -> list[ConditionalFlow]:
        """The networks the level above starts from: the kept candidate, or
        for a blend the one with the lower held-out loss (the level above
        has as many networks as one candidate, not both)."""
        if self.choice is None or self.hf_only is None or self.choice.chosen != "blend":
            return self.posterior_members()
        better_is_hf = self.choice.hf_only_loss < self.choice.fine_tuned_loss
        return list(self.hf_only) if better_is_hf else list(self.members or [])


class MultiFidelityPosterior(PriorBook):
    """Multi-fidelity neural posterior estimation driven by ask/tell.

    Extends :class:`~mfask.prior_book.PriorBook` (tickets and results, asks
    from the prior, tells by ticket or by value) with the trained models,
    posterior queries and sequential rounds.

    Arguments:
        prior: the prior over the ``d`` parameters (:mod:`mfask.priors`).
        fidelities: fidelity names (or :class:`~mfask.fidelity.Fidelity`
            objects naming the parameters a level uses), ordered low to high.
            One fidelity gives plain NPE.
        seed: seeds every random choice (asks, network initialisation, data
            splits, posterior samples). ``None`` draws one from the OS and
            records it (see :attr:`seed`).
        flow: the flow architecture (:class:`~mfask.estimator.FlowConfig`).
        training: the training loop's settings
            (:class:`~mfask.training.TrainingConfig`).
        embedding_net: optional ``torch.nn.Module`` mapping ``(n, *x_shape)``
            to ``(n, k)``, trained with the flow (e.g. a CNN for images).
        ensemble_size: number of independently trained flows per level; the
            posterior is their equal-weight mixture.
        transfer_standardization: when a level starts from the weights of the
            level below, ``"refit"`` recomputes the input standardisation on
            its own data, ``"keep"`` keeps the lower level's
            (see ``docs/standardization.md`` for the measurement behind the default).
        match_tolerance: ``tell(theta, x, fidelity)`` matches a row to a pending
            ticket when every parameter differs by at most
            ``match_tolerance * (scale + |value|)``, ``scale`` being the
            prior's typical scale of that parameter.
        parameter_space: the space the flows learn in: ``"support"`` (the
            default: the parameters themselves, cut to a bounded prior's
            support by rejection and renormalised, as ``sbi`` does) or
            ``"unbounded"`` (the prior's bijection onto R^d, e.g. logit for a
            box; never leaks, the default of earlier versions); see
            :mod:`mfask.parameter_space` and ``docs/parameter_space.md``.
        transfer_guard: for every level that starts from the level below,
            also train ``ensemble_size`` networks on the level's data alone
            and keep the fine-tuned networks, the HF-only ones, or both as a
            mixture, by their paired loss on a guard share of the level's
            rows that neither trains on (so that a useless or
            misleading low fidelity cannot leave the posterior worse than
            NPE; see :mod:`mfask.transfer_guard` and
            ``docs/transfer_guard.md``). Costs the HF-only training at each
            such fit. ``False`` always keeps the fine-tuned networks (the
            paper's MF-NPE).
        fine_tuning: how the networks of a level that starts from the level
            below fine-tune those weights
            (:class:`~mfask.fine_tuning.FineTuningConfig`: an L2-SP pull
            towards them, the conditioner trunk frozen for the first
            epochs). The default is plain fine-tuning: with the
            transfer guard neither option helped in
            ``docs/fine_tuning.md``'s measurement. Fresh networks
            (the lowest level, the guard's HF-only candidate) never use it.
        verbose: show a progress bar on standard error while training (from
            a second on, see :mod:`mfask.training_progress`); ``False`` is
            silent. Not part of the saved state: :meth:`load` takes it again.
        device: where the networks train and answer queries: ``"cpu"``
            (default), ``"cuda"``, ``"cuda:N"``, ``"mps"`` or ``"auto"`` (see
            :mod:`mfask.device`). Data, tickets and results stay on the CPU;
            a seed gives the same random draws on every device. Not part of
            the saved state: :meth:`load` takes it again.
    """

    def __init__(
        self,
        prior: Prior,
        fidelities: Sequence[FidelitySpec] = ("high",),
        *,
        seed: int | None = None,
        flow: FlowConfig = FlowConfig(),
        training: TrainingConfig = TrainingConfig(),
        embedding_net: nn.Module | None = None,
        ensemble_size: int = 1,
        transfer_standardization: TransferStandardization = "refit",
        match_tolerance: float = 1e-5,
        parameter_space: ParameterSpaceName = "support",
        transfer_guard: bool = True,
        fine_tuning: FineTuningConfig = FineTuningConfig(),
        verbose: bool = True,
        device: str | torch.device = "cpu",
    ) -> None:
        # the prior, fidelities, seed and match_tolerance are checked by PriorBook
        super().__init__(prior, fidelities, seed=seed, match_tolerance=match_tolerance)
        if not isinstance(flow, FlowConfig):
            raise InvalidInputError(f"flow must be a FlowConfig; got {type(flow).__name__}")
        if not isinstance(training, TrainingConfig):
            raise InvalidInputError(
                f"training must be a TrainingConfig; got {type(training).__name__}"
            )
        if not isinstance(ensemble_size, int) or ensemble_size < 1:
            raise InvalidInputError(f"ensemble_size must be a positive integer; got {ensemble_size!r}")
        if transfer_standardization not in ("refit", "keep"):
            raise InvalidInputError(
                "transfer_standardization must be 'refit' or 'keep'; got "
                f"{transfer_standardization!r}"
            )
        if not isinstance(transfer_guard, bool):
            raise InvalidInputError(f"transfer_guard must be True or False; got {transfer_guard!r}")
        if not isinstance(fine_tuning, FineTuningConfig):
            raise InvalidInputError(
                f"fine_tuning must be a FineTuningConfig; got {type(fine_tuning).__name__}"
            )
        if embedding_net is not None and not isinstance(embedding_net, nn.Module):
            raise InvalidInputError(
                f"embedding_net must be a torch.nn.Module; got {type(embedding_net).__name__}"
            )
        self.space = ParameterSpace(prior, parameter_space)
        self.flow_config = flow
        self.training_config = training
        self.ensemble_size = ensemble_size
        self.transfer_standardization: TransferStandardization = transfer_standardization
        self.transfer_guard = transfer_guard
        self.fine_tuning = fine_tuning
        self.verbose = verbose
        self.device = resolve_device(device)
        self._embedding_template = embedding_net
        self._levels = [_Level() for _ in self.fidelities]
        self._sample_generator = torch.Generator().manual_seed(self._stream_seed(1))
        self._sequence = SequentialState()

    # =================================================================== ask
    def ask(self, fidelity: str | int | None = None, n: int | None = None, *,
            acquisition: Any = None) -> AskBatch:
        """Open ``n`` new tickets at ``fidelity`` and return their parameters.

        With a single fidelity the name may be left out (``ask(100)``).

        In amortized use every row is a prior draw (source ``"prior"``).
        After :meth:`set_observation`, asks at the highest fidelity are
        sequential rounds (see :mod:`mfask.sequential`): prior draws in the
        first round, then draws from the prior truncated to the posterior's
        highest-density region at the observation (source ``"truncated"``),
        a share of them replaced by ensemble-variance acquisitions (source
        ``"acquisition"``) if ``acquisition`` asks for it: ``None`` keeps the
        default given to :meth:`set_observation`, ``False`` turns it off for
        this ask, ``True``, a fraction in ``(0, 1]`` or an
        :class:`~mfask.acquisition.AcquisitionConfig` turns it on. An ask
        never waits for pending tickets.

        Raises:
            UnknownFidelityError: ``fidelity`` is not one of :attr:`fidelity_names`.
            InvalidInputError: ``n`` is not a positive integer of at most
                :data:`MAX_ASK`, or ``acquisition`` is invalid or given for an
                ask that is not a sequential highest-fidelity ask.

        Whatever it raises, a failed ask leaves the object as it was: no
        ticket is opened and the random stream of asks has not moved.
        """
        fidelity, n = ask_target(self.fidelity_names, fidelity, n)
        index = self._fidelity_index(fidelity)
        if not (self._sequence.active and index == len(self.fidelities) - 1):
            return super().ask(fidelity, n, acquisition=acquisition)  # amortized: prior draws
        n = positive_int(n, "n", maximum=MAX_ASK)
        wanted = self._sequence.wants_acquisition(acquisition)
        # an ask that fails part-way (out of memory, a sampler giving up,
        # an interrupt) must not move the ask stream or the round: the next
        # ask then draws what it would have drawn without the failed one
        generator_state = self._ask_generator.get_state()
        sequence_state = self._sequence.to_state()
        round_before = self.round
        try:
            theta, source = self._sequence.propose(n, wanted, self._proposal_context())
            self.round = self._sequence.round
            return self._open_batch(index, theta, source)
        except BaseException:
            self._ask_generator.set_state(generator_state)
            self._sequence = SequentialState.from_state(*sequence_state)
            self.round = round_before
            raise

    # ============================================================ sequential
    def set_observation(
        self,
        x_o: Any,
        *,
        quantile: float = 1e-4,
        acquisition: Any = None,
        first_round: FirstRound = "prior",
        threshold_samples: int = 20_000,
    ) -> None:
        """Fix one observation ``x_o`` ``(*x_shape)``: from now on asks at the
        highest fidelity are sequential rounds of (A-)(MF-)TSNPE at ``x_o``
        (see :mod:`mfask.sequential`; one fidelity gives plain TSNPE).

        Arguments:
            quantile: the truncated region leaves out this share of the
                posterior's mass.
            acquisition: default for high-fidelity asks: ``None``/``False``
                (none), ``True`` (20 % acquisitions from a 5-member
                ensemble), a fraction in ``(0, 1]`` or an
                :class:`~mfask.acquisition.AcquisitionConfig`. Acquisition
                retrains the highest fidelity as an ensemble of
                ``AcquisitionConfig.ensemble_size`` members, whatever the
                constructor's ``ensemble_size``.
            first_round: ``"prior"`` (default) or ``"lower"``: where the
                first round's high-fidelity parameters come from.
            threshold_samples: posterior draws that estimate the threshold.

        Setting the same observation again keeps the rounds and updates the
        settings; a different one starts again at round 1. If no simulator
        output has been told yet, ``x_o``'s shape becomes :attr:`x_shape`.

        Raises:
            InvalidInputError: ``x_o`` does not have shape :attr:`x_shape`
                (or ``(1, *x_shape)``), is not finite, or a setting is invalid.
        """
        config = SequentialConfig(
            quantile=quantile,
            threshold_samples=threshold_samples,
            first_round=first_round,
            acquisition=resolve_acquisition(acquisition, None),
        )
        if self._x_shape is None:
            observation = as_numeric_array(x_o, "x_o").reshape(np.shape(x_o) or (1,))
            if observation.size == 0 or not np.isfinite(observation).all():
                raise InvalidInputError("x_o must be a non-empty, finite observation")
        else:
            observation = self._check_observations(x_o, single=True)[0].numpy()
        if self._sequence.start(observation, config):
            self.round = 0
        if self._x_shape is None:
            self._x_shape = tuple(observation.shape)

    def clear_observation(self) -> None:
        """Back to amortized asks (prior draws at every fidelity, round 0)."""
        self._sequence.clear()
        self.round = 0

    @property
    def observation(self) -> np.ndarray | None:
        """The observation set with :meth:`set_observation` (a copy), or ``None``."""
        observation = self._sequence.observation
        return None if observation is None else observation.copy()

    @property
    def round_info(self) -> RoundInfo:
        """The sequential round and its region (:class:`~mfask.sequential.RoundInfo`)."""
        return self._sequence.info()

    def _proposal_context(self) -> ProposalContext:
        """What the sequential rules need for one highest-fidelity ask."""
        top = len(self.fidelities) - 1

        def posterior_of(level: int) -> tuple[PosteriorDensity, tuple[int, ...]]:
            density = self.posterior(self.fidelity_names[level])
            return density, tuple(self._levels[lower].fit_count for lower in range(level + 1))

        return ProposalContext(
            prior=self.prior,
            counts=tuple(self._level_data_count(level) for level in range(top + 1)),
            posterior_of=posterior_of,
            pending=self._ledger.theta[self._ledger.ids_where(top, PENDING)],
            generator=self._ask_generator,
            stream_seed=lambda *keys: self._stream_seed(5, *keys),
        )

    def _member_count(self, level: int) -> int:
        """Members of a level: ``ensemble_size``, or the acquisition ensemble's
        size at the highest level once acquisition has been used."""
        if level == len(self.fidelities) - 1:
            return max(self.ensemble_size, self._sequence.ensemble_members)
        return self.ensemble_size

    # ================================================================ training
    def fit(self, fidelity: str | None = None, *, force: bool = False) -> dict[str, list[TrainingHistory]]:
        """Bring the models up to date with the data told so far.

        Trains every level up to ``fidelity`` (default: the highest with data)
        whose data or lower level changed since it was last trained; with
        ``force`` retrains them all. Returns the new training histories per
        fidelity name (one per network trained: the ensemble members, then,
        with the transfer guard, the HF-only candidate's; each history says
        whether its network was ``selected``; the decision itself is
        :meth:`transfer_choice`).
        """
        top = self._top_level(fidelity)
        histories: dict[str, list[TrainingHistory]] = {}
        for level in range(top + 1):
            if self._needs_training(level) or (force and self._level_data_count(level) >= 2):
                histories[self.fidelity_names[level]] = self._train_level(level)
        return histories

    def needs_fit(self, fidelity: str | None = None) -> bool:
        """Whether :meth:`fit` (with the same ``fidelity``) would train
        anything now: some level up to ``fidelity`` (default: the highest
        with data) has results it was not trained on, or was trained from a
        lower level that has been retrained since.

        Raises :class:`NotEnoughDataError` as :meth:`fit` does.
        """
        top = self._top_level(fidelity)
        return any(self._needs_training(level) for level in range(top + 1))

    def _level_data_count(self, level: int) -> int:
        return self._ledger.count(level, DONE)

    def _lower_trained(self, level: int) -> int | None:
        """The nearest level below ``level`` that has a trained model."""
        for lower in range(level - 1, -1, -1):
            if self._levels[lower].members is not None:
                return lower
        return None

    def _needs_training(self, level: int) -> bool:
        state = self._levels[level]
        count = self._level_data_count(level)
        if count < 2:
            return False
        if state.members is None or state.trained_on != count:
            return True
        if len(state.members) != self._member_count(level):
            return True
        lower = self._lower_trained(level)
        current = None if lower is None else (lower, self._levels[lower].fit_count)
        return current != state.initialised_from

    def _top_level(self, fidelity: str | None) -> int:
        """The level whose posterior is wanted: the named one, else the highest with data."""
        if fidelity is not None:
            return self._fidelity_index(fidelity)
        for level in range(len(self.fidelities) - 1, -1, -1):
            if self._level_data_count(level) >= 2:
                return level
        raise NotEnoughDataError(
            "no fidelity has at least 2 successful simulations yet; ask, simulate and tell first"
        )

    def _train_level(self, level: int) -> list[TrainingHistory]:
        """(Re)train the members of ``level`` (and, with the transfer guard,
        its HF-only candidate, then choose); returns the new histories."""
        state = self._levels[level]
        theta, x = self._ledger.successful([level])
        z = self.space.to_flow(torch.from_numpy(theta)).to(torch.float32)
        x32 = torch.from_numpy(x).to(torch.float32)
        lower = self._lower_trained(level)
        lower_key = None if lower is None else (lower, self._levels[lower].fit_count)
        count = self._member_count(level)
        if (state.members is not None and len(state.members) == count
                and lower_key == state.initialised_from):
            members, start = state.members, "warm"  # this level's own weights
        elif lower is not None:
            # a new ensemble size (acquisition) re-initialises the level: every
            # member starts from the same pre-trained weights, seeds differ
            source = self._levels[lower].transfer_sources()
            members = [copy.deepcopy(source[k % len(source)]) for k in range(count)]
            start = "pre-trained"
            if self.transfer_standardization == "refit":
                for member in members:
                    member.set_standardization(z, x32)
        else:
            members, start = self._fresh_members(level, count, z, x32), "fresh"
        starts = self._fine_tuning_starts(lower, count)
        guarded = self.transfer_guard and lower is not None
        hf_only: list[ConditionalFlow] = []
        hf_start = ""
        if guarded:
            if state.hf_only is not None and len(state.hf_only) == count:
                hf_only, hf_start = state.hf_only, "warm"
            else:
                hf_only, hf_start = self._fresh_members(level, count, z, x32), "fresh"
        seeds = [self._stream_seed(2, level, state.fit_count, k) for k in range(count)]
        previous = state.histories[-1] if state.histories else None
        z_fit, x_fit = z, x32  # unguarded: all rows, no copy
        if guarded:  # rows neither candidate trains or early-stops on, to choose between them
            guard_rows, fit_rows = guard_share(
                z.shape[0], self.training_config.validation_fraction,
                self._stream_seed(5, level, state.fit_count, 0),  # three keys: not a round's (5, sequence, round)
            )
            z_fit, x_fit = z[fit_rows], x32[fit_rows]
        num_fit = int(z_fit.shape[0])
        labels = [self._network_label(level, k, "") for k in range(count)]
        if guarded:
            labels += [self._network_label(level, k, "HF-only ") for k in range(count)]
        with TrainingProgress(self.fidelity_names[level], labels, num_fit, self.training_config,
                              enabled=self.verbose) as progress:
            trained, histories = train_members(
                [*members, *hf_only], z_fit, x_fit, self.training_config,
                seeds * (2 if guarded else 1),
                seconds_per_member=None if not previous else sum(h.seconds for h in previous) / len(previous),
                progress=[progress.callback(k) for k in range(len(labels))],
                fine_tuning=[*starts, *([None] * len(hf_only))],
            )
            progress.finish(histories)
        self._warn_if_capped(level, labels, histories)
        members, hf_only = trained[:count], trained[count:]
        for k, history in enumerate(histories):
            history.start = start if k < count else hf_start
        choice = None
        if guarded:
            choice = compare_candidates(members, hf_only, z[guard_rows], x32[guard_rows])
            for k, history in enumerate(histories):
                history.candidate = "fine-tuned" if k < count else "hf-only"
                history.selected = choice.chosen in ("blend", history.candidate)
        state.members = members
        state.hf_only = hf_only if guarded else None
        state.choice = choice
        state.fit_count += 1
        state.trained_on = z.shape[0]
        state.initialised_from = lower_key
        state.histories.append(histories)
        return histories

    def _fine_tuning_starts(self, lower: int | None, count: int) -> list[FineTuningStart | None]:
        """Per fine-tuned member, its :class:`FineTuningStart` anchored at the
        lower level's weights it was (or, at a warm refit, had been) copied
        from; ``None`` for plain fine-tuning or a level without a lower one."""
        if lower is None or self.fine_tuning.is_plain:
            return [None] * count
        source = self._levels[lower].transfer_sources()
        return [FineTuningStart.from_pretrained(self.fine_tuning, source[k % len(source)])
                for k in range(count)]

    def _fresh_members(self, level: int, count: int, z: Tensor, x: Tensor) -> list[ConditionalFlow]:
        """``count`` newly initialised flows standardised on ``z (n, d)``, ``x (n, *x_shape)``."""
        members = [self._new_flow(level, k) for k in range(count)]
        for member in members:
            member.set_standardization(z, x)
        return members

    def _new_flow(self, level: int, member: int) -> ConditionalFlow:
        """A freshly initialised flow, reproducibly seeded."""
        if self._x_shape is None:
            raise NotEnoughDataError("no simulator output has been told yet")
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(self._stream_seed(3, level, member))
            embedding = copy.deepcopy(self._embedding_template)
            if embedding is not None:
                for module in embedding.modules():
                    if hasattr(module, "reset_parameters"):
                        module.reset_parameters()
            # built (and so initialised) on the CPU from the seeded stream, then
            # moved: a seed gives the same initial weights on every device
            return ConditionalFlow(self.prior.dim, self._x_shape, self.flow_config, embedding).to(self.device)

    def _network_label(self, level: int, member: int, kind: str) -> str:
        """``"network"``, ``"member 2"``, ``"HF-only member 2"``: how progress names a network."""
        if self._member_count(level) > 1:
            return f"{kind}member {member + 1}"
        return f"{kind}network" if kind else "network"

    def _warn_if_capped(self, level: int, labels: list[str], histories: list[TrainingHistory]) -> None:
        """Warn when networks stopped on ``max_epochs`` rather than early stopping."""
        capped = [label for label, history in zip(labels, histories) if not history.stopped_early]
        if not capped:
            return
        cap = self.training_config.max_epochs
        best = [history.best_epoch + 1 for history in histories if not history.stopped_early]
        warnings.warn(
            f"training {self.fidelity_names[level]!r} stopped at max_epochs={cap} before its "
            f"validation loss stopped improving ({', '.join(capped)}; best epoch "
            f"{', '.join(map(str, best))} of {cap}): the posterior may be under-trained, at worst "
            f"close to the prior. Raise TrainingConfig.max_epochs (patience: "
            f"stop_after_epochs={self.training_config.stop_after_epochs})",
            MaxEpochsWarning,
            stacklevel=4,
        )

    def training_histories(self, fidelity: str) -> list[list[TrainingHistory]]:
        """All training runs of a level: one list per fit, one history per
        network trained (the members; with the transfer guard then the
        HF-only candidate's, see :attr:`TrainingHistory.candidate` and
        :attr:`TrainingHistory.selected`)."""
        return list(self._levels[self._fidelity_index(fidelity)].histories)

    def transfer_choice(self, fidelity: str) -> TransferChoice | None:
        """The transfer guard's decision at the latest fit of a level (``None``
        when the level was not trained with the guard, e.g. the lowest level)."""
        return self._levels[self._fidelity_index(fidelity)].choice

    # ============================================================== posterior
    def posterior(self, fidelity: str | None = None) -> PosteriorDensity:
        """The (lazily fitted) posterior density of a fidelity level
        (default: the highest level with at least 2 successful simulations)."""
        top = self._top_level(fidelity)
        if self._level_data_count(top) < 2:
            raise NotEnoughDataError(
                f"fidelity {self.fidelity_names[top]!r} has {self._level_data_count(top)} "
                "successful simulation(s); at least 2 are needed to fit its posterior"
            )
        self.fit(self.fidelity_names[top])
        state = self._levels[top]
        # one density per fit, so that its per-observation support masses
        # (``"support"`` space) are estimated once, not on every call
        if state.density is None or state.density_fit != state.fit_count:
            state.density = PosteriorDensity(self.prior, state.posterior_members(), self.space)
            state.density_fit = state.fit_count
        return state.density

    def sample(self, n: int | Sequence[int], x: Any, *, fidelity: str | None = None) -> np.ndarray:
        """Draw ``n`` samples ``(n, d)`` from the posterior at one observation ``x``.

        ``n`` may also be a sample shape (a tuple or ``torch.Size``, as in
        ``torch.distributions`` and ``sbi``): ``(n,)`` gives ``(n, d)``,
        ``(a, b)`` gives ``(a, b, d)``, ``()`` one draw ``(d,)``.
        """
        shape = as_sample_shape(n, "n")
        observations = self._check_observations(x, single=True)
        density = self.posterior(fidelity)
        draws = density.sample(math.prod(shape), observations, self._sample_generator)[0]
        return draws.reshape(*shape, self.prior.dim).numpy()

    def sample_batched(self, n: int | Sequence[int], xs: Any, *, fidelity: str | None = None) -> np.ndarray:
        """Draw ``n`` samples per observation: ``xs (m, *x_shape)`` -> ``(m, n, d)``
        (for a sample shape ``n``, see :meth:`sample`: ``(m, *n, d)``)."""
        shape = as_sample_shape(n, "n")
        observations = self._check_observations(xs, single=False)
        density = self.posterior(fidelity)
        draws = density.sample(math.prod(shape), observations, self._sample_generator)
        return draws.reshape(observations.shape[0], *shape, self.prior.dim).numpy()

    def map(
        self,
        x: Any,
        *,
        fidelity: str | None = None,
        num_samples: int = 1000,
        num_starts: int = 10,
        num_steps: int = 50,
    ) -> np.ndarray:
        """The maximum a posteriori estimate ``(d,)`` at one observation ``x``.

        The best of ``num_samples`` posterior samples by ``log_prob``, refined
        by ``num_steps`` gradient-ascent steps from each of the
        ``num_starts`` best (in the prior's unbounded space, so it stays
        inside the support; ``num_steps=0`` returns the best sample); the
        result is never worse than the best sample. The samples come from
        the same random stream as :meth:`sample`. See
        :mod:`mfask.map_estimate`.
        """
        settings = MapSettings(num_samples=num_samples, num_starts=num_starts, num_steps=num_steps)
        observation = self._check_observations(x, single=True)
        density = self.posterior(fidelity)
        theta, _ = maximum_a_posteriori(density, observation, self._sample_generator, settings)
        return theta.numpy()

    def log_prob(self, theta: Any, x: Any, *, fidelity: str | None = None) -> np.ndarray:
        """``log q(theta | x)`` ``(n,)`` for parameters ``(n, d)`` at one observation
        ``x``; ``-inf`` outside the prior's support."""
        values = as_numeric_array(theta, "theta")
        if values.ndim == 1:
            values = values.reshape(1, -1)
        theta_t = as_theta(values, self.prior.dim)
        observation = self._check_observations(x, single=True)
        density = self.posterior(fidelity)
        return density.log_prob(theta_t, observation.expand(theta_t.shape[0], *observation.shape[1:])).numpy()

    def log_prob_batched(self, theta: Any, xs: Any, *, fidelity: str | None = None) -> np.ndarray:
        """``log q(theta[i, j] | xs[i])`` ``(m, n)`` for ``theta (m, n, d)`` and ``xs (m, *x_shape)``."""
        values = as_numeric_array(theta, "theta")
        observations = self._check_observations(xs, single=False)
        m = observations.shape[0]
        if values.ndim != 3 or values.shape[0] != m or values.shape[2] != self.prior.dim:
            raise InvalidInputError(
                f"theta must have shape ({m}, n, {self.prior.dim}) for {m} observations; "
                f"got {tuple(values.shape)}"
            )
        n = values.shape[1]
        theta_t = as_theta(values.reshape(m * n, -1), self.prior.dim)
        paired = observations.repeat_interleave(n, dim=0)
        density = self.posterior(fidelity)
        return density.log_prob(theta_t, paired).reshape(m, n).numpy()

    def _check_observations(self, x: Any, single: bool) -> Tensor:
        """Observations as float64 ``(m, *x_shape)`` (``m = 1`` when ``single``)."""
        if self._x_shape is None:
            raise NotEnoughDataError(
                "no simulator output has been told yet: a posterior needs at least 2 "
                "successful simulations; ask, simulate and tell first"
            )
        array = as_numeric_array(x, "x")
        if single:
            if tuple(array.shape) == self._x_shape or (
                array.ndim == 1 and self._x_shape == (1,) and array.shape == (1,)
            ):
                array = array.reshape(1, *self._x_shape)
            elif not (array.ndim == len(self._x_shape) + 1 and array.shape[0] == 1
                      and tuple(array.shape[1:]) == self._x_shape):
                raise InvalidInputError(
                    f"x must be one observation of shape {self._x_shape} (or (1, *{self._x_shape})); "
                    f"got {tuple(array.shape)}; use the *_batched methods for several"
                )
        elif array.ndim != len(self._x_shape) + 1 or tuple(array.shape[1:]) != self._x_shape:
            raise InvalidInputError(
                f"xs must have shape (m, *{self._x_shape}); got {tuple(array.shape)}"
            )
        if not np.isfinite(array).all():
            raise InvalidInputError("observations must be finite (no NaN or inf)")
        return torch.from_numpy(array)

    # ============================================================ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the complete state (tickets, results, weights, random states) to
        ``path`` as an ``.npz`` archive without pickle; the write is atomic."""
        meta, arrays = self._export_state()
        write_state(path, meta, arrays)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        prior: Prior | None = None,
        embedding_net: nn.Module | None = None,
        verbose: bool = True,
        device: str | torch.device = "cpu",
    ) -> "MultiFidelityPosterior":
        """Restore a posterior saved with :meth:`save`.

        Arguments:
            prior: required when the prior could not be described as data
                (a custom marginal); else rebuilt from the file.
            embedding_net: a module of the same architecture as the one the
                posterior was built with (weights come from the file).
            verbose: as in the constructor (training progress on standard error).
            device: as in the constructor; not part of the saved state, so a
                posterior saved from a GPU loads on the CPU (or any device).

        Raises :class:`StateFormatError` for a malformed file.
        """
        meta, arrays = read_state(path)
        posterior = cls._from_state(meta, arrays, prior=prior, embedding_net=embedding_net,
                                    device=device)
        posterior.verbose = bool(verbose)
        return posterior

    def configuration(self) -> dict[str, Any]:
        """What this posterior was built with, as JSON-compatible data.

        The prior (``None`` where it cannot be described as data), parameter
        names, fidelities, seed and every option; not the data or the models.
        Two posteriors with equal configurations given the same tells train
        the same models.
        """
        try:
            prior_spec = self.prior.to_spec()
        except InvalidInputError:
            prior_spec = None
        return {
            "prior": prior_spec,
            **{key: value for key, value in self._records_header().items()
               if key not in ("x_shape", "round")},  # parameter names, fidelities, seed: not the data
            "flow": self.flow_config.to_dict(),
            "training": self.training_config.to_dict(),
            "ensemble_size": self.ensemble_size,
            "transfer_standardization": self.transfer_standardization,
            "match_tolerance": self.match_tolerance,
            "parameter_space": self.space.name,
            "transfer_guard": self.transfer_guard,
            "fine_tuning": self.fine_tuning.to_dict(),
            "has_embedding_net": self._embedding_template is not None,
        }

    def _export_state(
        self, *, tickets: bool = True, models: bool = True
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The state as a JSON-compatible dict and named arrays.

        ``tickets=False`` leaves out the ``tickets/*`` arrays and
        ``models=False`` the trained levels (``meta["levels"]`` empty, no
        ``model/*`` arrays), for stores that keep those parts separately.
        """
        meta: dict[str, Any] = {
            **self.configuration(),
            "x_shape": None if self._x_shape is None else list(self._x_shape),
            "round": self.round,
            "levels": [],
        }
        arrays = {f"tickets/{k}": v for k, v in self._ledger.to_arrays().items()} if tickets else {}
        arrays["rng/ask"] = generator_to_array(self._ask_generator)
        arrays["rng/sample"] = generator_to_array(self._sample_generator)
        for level, state in enumerate(self._levels if models else ()):
            # flows are stored as model/<level>/<k>/: the fine-tuned (or only)
            # members first, then the transfer guard's HF-only candidate
            flows = [*(state.members or []), *(state.hf_only or [])]
            meta["levels"].append({
                "num_members": len(flows),
                "num_hf_only": len(state.hf_only or []),
                "choice": None if state.choice is None else state.choice.to_dict(),
                "fit_count": state.fit_count,
                "trained_on": state.trained_on,
                "initialised_from": None if state.initialised_from is None else list(state.initialised_from),
                "histories": [[h.to_dict() for h in fit] for fit in state.histories],
            })
            for k, member in enumerate(flows):
                arrays.update(module_to_arrays(member, f"model/{level}/{k}/"))
        meta["sequential"], sequential_arrays = self._sequence.to_state()
        arrays.update({f"sequential/{k}": v for k, v in sequential_arrays.items()})
        return meta, arrays

    @classmethod
    def _from_state(
        cls,
        meta: dict[str, Any],
        arrays: dict[str, np.ndarray],
        *,
        prior: Prior | None,
        embedding_net: nn.Module | None,
        device: str | torch.device = "cpu",
    ) -> "MultiFidelityPosterior":
        """Rebuild an object from :meth:`_export_state` output, after checking
        it (:func:`mfask.state_schema.check_state`)."""
        check_state(meta, arrays, embedding_net=embedding_net is not None and meta.get("has_embedding_net") is True)
        try:
            prior = cls._prior_of_state(meta, prior)
            if meta["has_embedding_net"] and embedding_net is None:
                raise StateFormatError(
                    "the posterior was saved with an embedding net; pass embedding_net=... "
                    "(same architecture) to load()"
                )
            fidelities = [Fidelity(f["name"], tuple(f["parameters"])) for f in meta["fidelities"]]
            obj = cls(
                prior,
                fidelities,
                seed=int(meta["seed"]),
                flow=FlowConfig.from_dict(meta["flow"]),
                training=TrainingConfig(**meta["training"]),
                embedding_net=embedding_net if meta["has_embedding_net"] else None,
                ensemble_size=int(meta["ensemble_size"]),
                transfer_standardization=meta["transfer_standardization"],
                match_tolerance=float(meta["match_tolerance"]),
                parameter_space=meta.get("parameter_space", "unbounded"),
                transfer_guard=meta.get("transfer_guard", False),  # absent: saved before the guard
                fine_tuning=FineTuningConfig.from_dict(meta.get("fine_tuning", {})),  # absent: plain
                device=device,
            )
            obj._restore_records(meta, arrays)
            obj._ask_generator = generator_from_array(arrays["rng/ask"])
            obj._sample_generator = generator_from_array(arrays["rng/sample"])
            obj._sequence = SequentialState.from_state(
                meta.get("sequential"),
                {k[len("sequential/"):]: v for k, v in arrays.items() if k.startswith("sequential/")},
            )
            for level, saved in enumerate(meta["levels"]):
                state = obj._levels[level]
                state.fit_count = int(saved["fit_count"])
                state.trained_on = int(saved["trained_on"])
                origin = saved["initialised_from"]
                state.initialised_from = None if origin is None else (int(origin[0]), int(origin[1]))
                state.histories = [[TrainingHistory(**h) for h in fit] for fit in saved["histories"]]
                if saved["num_members"]:
                    flows = []
                    for k in range(int(saved["num_members"])):
                        member = obj._new_flow(level, k)
                        load_module_arrays(member, arrays, f"model/{level}/{k}/")
                        member.eval()
                        flows.append(member)
                    num_hf_only = int(saved.get("num_hf_only", 0))
                    state.members = flows[:len(flows) - num_hf_only]
                    state.hf_only = flows[len(flows) - num_hf_only:] if num_hf_only else None
                if saved.get("choice") is not None:
                    state.choice = TransferChoice.from_dict(saved["choice"])
        except StateFormatError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise StateFormatError(f"malformed mfask state: {type(error).__name__}: {error}") from None
        return obj
