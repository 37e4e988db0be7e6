"""A Hodgkin-Huxley neuron with dendrites: a multi-compartment (HF) and a
one-compartment-per-branch (LF) simulator of the same cell.

A CPU-sized stand-in for the paper's L5PC task (``/work/shared/tasks.md``,
section 5), written from the Hodgkin-Huxley equations.

Parameters ``theta = (gNa, gK)`` in S/cm^2, ``gNa ~ U(0.005, 0.8)``,
``gK ~ U(1e-6, 0.15)``: the maximal sodium and delayed-rectifier potassium
conductance densities of the soma.

The cell
--------
* Soma: an isopotential compartment of area ``soma_area`` (default 1000 um^2,
  so the 0.55 nA step is near threshold for the prior's middle: see below)
  with Hodgkin-Huxley Na, K and leak currents. Squid-axon rate functions
  (voltages in mV, rest near -65 mV), sped up by Q10 = 3 from 6.3 degC to
  ``temperature`` (default 16.3 degC, a factor 3), so that several spikes fit
  into the 10 ms step; E_Na = 50, E_K = -77, E_L = -54.387 mV,
  g_L = 0.3 mS/cm^2 (not a parameter), C_m = 1 uF/cm^2.
* Dendritic branches attached to the soma (``branches``; by default an apical
  cylinder of 700 um x 2.5 um and a basal equivalent cylinder of 250 um x 1.5 um),
  axial resistivity 150 Ohm cm. The dendrites are weakly active: the same Na and
  K channels at ``dendrite_channel_fraction`` (default 0.1) of the somatic
  densities, plus the same leak. Each branch is cut into ``compartments``
  equal cylinders; neighbouring compartments are coupled by the axial
  conductance between their centres, the first one to the soma by the
  conductance of its proximal half.
* HF (``"high"``): ``compartments`` per branch (default 8). LF (``"low"``): one
  compartment per branch, i.e. exactly the HF code path with ``compartments=1``,
  so ``NeuronTask(compartments=1)`` run at "high" equals "low" bit for bit given
  the same ``rng``.
* Stimulus: a 0.55 nA step into the soma from 50 to 60 ms; t_max = 120 ms,
  dt = 0.025 ms (4800 steps). Noise: a white-noise current into the soma that
  alone would make the soma voltage diffuse with ``noise_std`` mV/sqrt(ms)
  (default 0.5): at rest it gives fluctuations of a few tenths of a mV.

Integration
-----------
One step advances the whole batch (state arrays
``(n, 1 + len(branches) * compartments)``, column 0 the soma); the only Python
loops are over time steps and, inside the tree solve, over compartment
positions along a branch (never over samples).

1. Gates m, h, n: exponential Euler with the rates at the current voltage,
   ``x <- x_inf + (x - x_inf) exp(-dt (alpha + beta))`` (exact for frozen V,
   unconditionally stable).
2. Voltage: backward (implicit) Euler with the ionic conductances at the new
   gates and the axial coupling implicit,
   ``(C/dt + G) V' - A V' = C/dt V + sum_ion G_ion E_ion + I``. The matrix is
   a tree (soma + branches), solved exactly by Hines elimination from the
   distal tips to the soma and back, vectorised over samples and branches.
   Backward Euler is unconditionally stable for the cable, so the step size is
   limited by accuracy, not stability (``dt = 0.5`` ms still runs). Against
   dt = 0.0025 ms (noise off, eight cells across the prior) the default dt
   gave the same spike counts; for cells at rest before the stimulus the
   rest and post-stimulus means agree within 0.05 mV, the stimulus mean within
   1 mV and the peak within 1.3 mV; in spontaneously firing cells the spike
   phase drifts, which moves window means by up to about 4 mV.

Checks in ``tests/test_neuron_task.py``: the passive cell's steady input
resistance at 32 compartments per branch matches cable theory (soma plus
sealed-end finite cables) to 0.2 %, while one compartment per branch is off by
more than 10 % (about 23 %); the tree solver matches a dense solve.

A run whose soma voltage becomes non-finite or leaves +-300 mV (far outside
[E_K, E_Na] plus what the stimulus adds; reached only with inputs outside the
prior, e.g. a large negative conductance or an absurd stimulus) gives a NaN
row. Non-finite ``theta`` is bad input and raises ``InvalidInputError``, as in
every task (:mod:`mfask.benchmarks.tasks.checks`).

Summary statistics ``x`` (length 6, same for both fidelities; soma voltage)
--------------------------------------------------------------------------
0. spike count in 20-120 ms: upward crossings of 0 mV, each after the voltage
   was below -30 mV (hysteresis, so noise around a depolarised plateau does not
   count);
1. mean resting potential (mV) over 20-50 ms (the first 20 ms let the state
   settle from its initial condition);
2. standard deviation of the voltage over 20-50 ms (mV);
3. mean voltage during the stimulus, 50-60 ms (mV);
4. peak voltage over 20-120 ms (mV): the AP height when it spikes;
5. mean voltage after the stimulus, 60-120 ms (mV): after-hyperpolarisation
   or depolarisation block.

Where it spikes (default settings; 2000 prior draws, fraction with at least
one spike, LF / HF): about 83 % / 78 % of the prior spikes.

* gNa < 0.03 S/cm^2: never; 0.03-0.06: 8 % / 0 %; 0.06-0.1: 59 % / 14 %;
  0.1-0.2: 94 % / 75 %; above 0.2: 90 % / 90 %. The LF has the lower
  threshold: its one-compartment branches give the soma a higher input
  resistance (passive steady state: about 23 % higher than the converged cable).
* With gNa > 0.1 the spiking depends on gK: below 0.01 the rest is
  depolarised above -40 mV (sodium window current with no potassium to
  repolarise: a block, almost no counted spikes); 0.01-0.03: about 70 %
  spike, most of them firing spontaneously before the stimulus; above 0.03:
  nearly all spike, a third spontaneously (large gNa / gK), the rest during
  the stimulus, mostly 1-3 spikes (a few keep firing after it).

Cost
----
Measured with ``python benchmarks/neuron_cost.py --batch 200 --repeats 5``
(and ``--repeats 7``): one batch of 200 prior draws per run, medians over the
runs, 2-core AMD EPYC, numpy 2.4, on a machine shared with other jobs.
**HF/LF cost ratio 2.2-2.4**: 2.38 at load ~4 (LF 1.79 ms, HF 4.25 ms per
simulation) and 2.22 at load ~9 (LF 5.69 ms, HF 12.61 ms; the run recorded in
``docs/benchmarks/neuron_cost.md``). The ratio is below the compartment ratio
17/3 because at this batch size much of each time step is numpy call overhead.

With ``branches=L5PC_LIKE_BRANCHES`` (11 branches; 89 HF and 12 LF
compartments), ``python benchmarks/neuron_cost.py --morphology l5pc-like
--batch 200 --repeats 7`` measured **HF/LF 4.33** (LF 2.67 ms, HF 11.54 ms per
simulation, load ~2; ``docs/benchmarks/neuron_cost_l5pc_like.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from mfask.benchmarks.tasks.base import Task
from mfask.benchmarks.tasks.checks import check_fidelity, check_rng, check_theta
from mfask.errors import InvalidInputError
from mfask.priors import BoxUniform, Prior

__all__ = ["Branch", "L5PC_LIKE_BRANCHES", "NeuronTask", "SUMMARY_NAMES"]

#: names of the summary statistics, in the order of ``x``'s columns
SUMMARY_NAMES: tuple[str, ...] = (
    "spike_count",
    "rest_mean_mV",
    "rest_std_mV",
    "stimulus_mean_mV",
    "peak_mV",
    "post_stimulus_mean_mV",
)

# Hodgkin-Huxley constants (mV, S/cm^2, uF/cm^2).
E_NA = 50.0
E_K = -77.0
E_LEAK = -54.387
G_LEAK = 3e-4
C_MEMBRANE = 1.0
V_INIT = -65.0

# Spike detection and validity thresholds (mV).
SPIKE_THRESHOLD = 0.0
SPIKE_RESET = -30.0
V_BLOWUP = 300.0

# Analysis windows (ms).
BURN_IN = 20.0

_UM_TO_CM = 1e-4


@dataclass(frozen=True)
class Branch:
    """A dendritic branch: an unbranched cylinder attached to the soma.

    Attributes:
        length_um: length in um.
        diameter_um: diameter in um.
    """

    length_um: float
    diameter_um: float


_DEFAULT_BRANCHES = (Branch(700.0, 2.5), Branch(250.0, 1.5))

#: A stylised, more L5PC-like dendritic tree: 11 unbranched cylinders attached
#: to the soma, ``NeuronTask(branches=L5PC_LIKE_BRANCHES)``.
#:
#: * an apical trunk, 600 um x 3 um;
#: * three apical obliques, 200 um x 1 um each;
#: * two tuft dendrites, 350 um x 1.2 um each;
#: * five basal dendrites, 200 um x 1 um each.
#:
#: This is a stand-in, **not a reconstruction**: the lengths and diameters are
#: round numbers of the order of a rat layer-5 pyramidal cell's (apical trunk
#: several hundred um and 2-5 um thick, obliques and basal dendrites 100-300 um
#: and about 1 um), and, because :class:`NeuronTask` only attaches branches to
#: the soma, the obliques and the tuft hang from the soma instead of from the
#: trunk. Its purpose is a cell with several times the default's compartments
#: (HF 1 + 11 x 8 = 89, LF 1 + 11 = 12, against 17 and 3 for the default), so
#: that the HF/LF cost ratio is closer to the paper's regime. With the default
#: stimulus (0.55 nA) about 65-70 % of the prior spikes (200 prior draws:
#: LF 72 %, HF 66 %); its cost is in ``docs/benchmarks/neuron_cost_l5pc_like.md``.
L5PC_LIKE_BRANCHES: tuple[Branch, ...] = (
    Branch(600.0, 3.0),  # apical trunk
    *(Branch(200.0, 1.0),) * 3,  # apical obliques
    *(Branch(350.0, 1.2),) * 2,  # tuft
    *(Branch(200.0, 1.0),) * 5,  # basal dendrites
)


class NeuronTask(Task):
    """Hodgkin-Huxley soma with two dendrites; HF many, LF one compartment per branch.

    Arguments:
        compartments: compartments per dendritic branch of the "high" fidelity;
            the "low" fidelity always has one.
        soma_area: soma membrane area in um^2.
        dendrite_channel_fraction: dendritic Na and K densities as a fraction of
            the somatic ``(gNa, gK)``; 0 makes the dendrites passive.
        axial_resistivity: in Ohm cm.
        stimulus_amplitude: step current into the soma, in nA.
        stimulus_onset, stimulus_duration: in ms.
        noise_std: soma voltage noise, in mV/sqrt(ms).
        temperature: in degC; the gating rates are scaled by
            ``3 ** ((temperature - 6.3) / 10)``.
        dt, t_max: time step and duration, in ms.
        chunk_size: samples integrated at once (bounds memory at about
            ``chunk_size * t_max / dt * 8`` bytes for the soma trace).
        branches: the dendritic branches, each attached to the soma; the
            default is an apical ``Branch(700, 2.5)`` and a basal
            ``Branch(250, 1.5)``; :data:`L5PC_LIKE_BRANCHES` is a stylised
            11-branch pyramidal-cell tree.

    ``x`` has shape ``(n, 6)``; see :data:`SUMMARY_NAMES` and the module
    docstring.
    """

    name = "neuron"
    fidelities = ("low", "high")

    def __init__(
        self,
        compartments: int = 8,
        *,
        soma_area: float = 1000.0,
        dendrite_channel_fraction: float = 0.1,
        axial_resistivity: float = 150.0,
        stimulus_amplitude: float = 0.55,
        stimulus_onset: float = 50.0,
        stimulus_duration: float = 10.0,
        noise_std: float = 0.5,
        temperature: float = 16.3,
        dt: float = 0.025,
        t_max: float = 120.0,
        chunk_size: int = 1024,
        branches: Sequence[Branch] = _DEFAULT_BRANCHES,
    ) -> None:
        if int(compartments) != compartments or compartments < 1:
            raise InvalidInputError(f"compartments must be a positive integer; got {compartments}")
        for label, value in (
            ("soma_area", soma_area),
            ("axial_resistivity", axial_resistivity),
            ("dt", dt),
            ("t_max", t_max),
            ("stimulus_duration", stimulus_duration),
        ):
            if not (math.isfinite(value) and value > 0):
                raise InvalidInputError(f"{label} must be positive and finite; got {value}")
        for label, value in (
            ("dendrite_channel_fraction", dendrite_channel_fraction),
            ("noise_std", noise_std),
        ):
            if not (math.isfinite(value) and value >= 0):
                raise InvalidInputError(f"{label} must be non-negative and finite; got {value}")
        if not math.isfinite(temperature):
            raise InvalidInputError(f"temperature must be finite; got {temperature}")
        if not math.isfinite(stimulus_amplitude):
            raise InvalidInputError(f"stimulus_amplitude must be finite; got {stimulus_amplitude}")
        if not BURN_IN < stimulus_onset < stimulus_onset + stimulus_duration < t_max:
            raise InvalidInputError(
                f"need {BURN_IN} ms (burn-in) < stimulus_onset < stimulus end < t_max; got "
                f"onset {stimulus_onset}, duration {stimulus_duration}, t_max {t_max}"
            )
        if dt > min(
            stimulus_duration, stimulus_onset - BURN_IN, t_max - stimulus_onset - stimulus_duration
        ):
            raise InvalidInputError(
                f"dt = {dt} ms leaves an analysis window (rest, stimulus, after) without "
                "a time step"
            )
        if int(chunk_size) != chunk_size or chunk_size < 1:
            raise InvalidInputError(f"chunk_size must be a positive integer; got {chunk_size}")
        branches = tuple(branches)
        if not branches or not all(
            isinstance(b, Branch)
            and all(math.isfinite(v) and v > 0 for v in (b.length_um, b.diameter_um))
            for b in branches
        ):
            raise InvalidInputError(
                "branches must be a non-empty sequence of Branch with positive, finite "
                f"length and diameter; got {branches}"
            )
        self.compartments = int(compartments)
        self.soma_area = float(soma_area)
        self.dendrite_channel_fraction = float(dendrite_channel_fraction)
        self.axial_resistivity = float(axial_resistivity)
        self.stimulus_amplitude = float(stimulus_amplitude)
        self.stimulus_onset = float(stimulus_onset)
        self.stimulus_duration = float(stimulus_duration)
        self.noise_std = float(noise_std)
        self.temperature = float(temperature)
        self.dt = float(dt)
        self.t_max = float(t_max)
        self.chunk_size = int(chunk_size)
        self.branches: tuple[Branch, ...] = branches
        self._prior = BoxUniform([0.005, 1e-6], [0.8, 0.15], names=["gNa", "gK"])

    # ------------------------------------------------------------ interface
    @property
    def prior(self) -> Prior:
        """``gNa ~ U(0.005, 0.8)``, ``gK ~ U(1e-6, 0.15)`` (S/cm^2)."""
        return self._prior

    @property
    def x_shape(self) -> tuple[int, ...]:
        """``(6,)``: see :data:`SUMMARY_NAMES`."""
        return (len(SUMMARY_NAMES),)

    @property
    def settings(self) -> dict[str, Any]:
        """The constructor arguments (JSON-compatible)."""
        return {
            "compartments": self.compartments,
            "soma_area": self.soma_area,
            "dendrite_channel_fraction": self.dendrite_channel_fraction,
            "axial_resistivity": self.axial_resistivity,
            "stimulus_amplitude": self.stimulus_amplitude,
            "stimulus_onset": self.stimulus_onset,
            "stimulus_duration": self.stimulus_duration,
            "noise_std": self.noise_std,
            "temperature": self.temperature,
            "dt": self.dt,
            "t_max": self.t_max,
            "chunk_size": self.chunk_size,
            "branches": [[b.length_um, b.diameter_um] for b in self.branches],
        }

    @property
    def num_steps(self) -> int:
        """Number of time steps ``T = round(t_max / dt)``."""
        return max(1, self.step_at(self.t_max))

    def step_at(self, time: float) -> int:
        """Index of the time step that ends at ``time`` ms (step ``k`` ends at ``k dt``)."""
        return int(round(time / self.dt))

    @property
    def stimulus_steps(self) -> tuple[int, int]:
        """``(onset, offset)``: the current flows in steps ``onset < k <= offset``."""
        return (
            self.step_at(self.stimulus_onset),
            self.step_at(self.stimulus_onset + self.stimulus_duration),
        )

    @property
    def times(self) -> np.ndarray:
        """Times of the recorded voltages, ``(T,)`` in ms: ``dt, 2 dt, ..., T dt``."""
        return self.dt * np.arange(1, self.num_steps + 1, dtype=np.float64)

    def simulate(
        self, theta: np.ndarray, fidelity: str, rng: np.random.Generator
    ) -> np.ndarray:
        """Summary statistics ``(n, 6)`` of the soma voltage for ``theta`` ``(n, 2)``.

        Rows whose run blows up are NaN. Given the same ``rng`` state this
        returns the summaries of the traces that :meth:`simulate_traces`
        returns.
        """
        theta, compartments = self._prepare(theta, fidelity, rng)
        x = np.empty((theta.shape[0], len(SUMMARY_NAMES)), dtype=np.float64)
        for rows, v in self._integrate_chunks(theta, compartments, rng):
            x[rows] = self.summarise(v)
        return x

    def simulate_traces(
        self, theta: np.ndarray, fidelity: str, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Soma voltage traces for posterior-predictive plots.

        Returns ``t`` ``(T,)`` in ms and ``v`` ``(n, T)`` in mV (a NaN row for
        a failed run).
        """
        theta, compartments = self._prepare(theta, fidelity, rng)
        v = np.empty((theta.shape[0], self.num_steps), dtype=np.float64)
        for rows, chunk in self._integrate_chunks(theta, compartments, rng):
            v[rows] = chunk
        return self.times, v

    def summarise(self, v: np.ndarray) -> np.ndarray:
        """Summary statistics ``(n, 6)`` of soma traces ``v`` ``(n, T)`` in mV.

        A row with any non-finite value is NaN.
        """
        v = np.asarray(v, dtype=np.float64)
        if v.ndim != 2 or v.shape[1] != self.num_steps:
            raise InvalidInputError(
                f"v must have shape (n, {self.num_steps}); got {v.shape}"
            )
        step = np.arange(1, self.num_steps + 1)
        onset, offset = self.stimulus_steps
        analysed = step > self.step_at(BURN_IN)
        rest = analysed & (step <= onset)
        stimulus = (step > onset) & (step <= offset)
        post = step > offset

        x = np.empty((v.shape[0], len(SUMMARY_NAMES)), dtype=np.float64)
        x[:, 0] = _count_spikes(v[:, analysed])
        x[:, 1] = v[:, rest].mean(axis=1)
        x[:, 2] = v[:, rest].std(axis=1)
        x[:, 3] = v[:, stimulus].mean(axis=1)
        x[:, 4] = v[:, analysed].max(axis=1)
        x[:, 5] = v[:, post].mean(axis=1)
        x[~np.isfinite(v).all(axis=1)] = np.nan
        return x

    # ------------------------------------------------------------- internals
    def _prepare(
        self, theta: np.ndarray, fidelity: str, rng: np.random.Generator
    ) -> tuple[np.ndarray, int]:
        """Checked ``theta`` ``(n, 2)`` and the compartments per branch of ``fidelity``."""
        theta = check_theta(theta, 2)
        check_fidelity(fidelity, self.fidelities)
        check_rng(rng)
        return theta, 1 if fidelity == "low" else self.compartments

    def _integrate_chunks(
        self, theta: np.ndarray, compartments: int, rng: np.random.Generator
    ) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield ``(rows, v)``: soma traces ``(len(rows), T)`` chunk by chunk."""
        cell = _Cell.build(self, compartments)
        for start in range(0, theta.shape[0], self.chunk_size):
            rows = slice(start, min(start + self.chunk_size, theta.shape[0]))
            yield rows, cell.run(theta[rows], rng)


def _count_spikes(v: np.ndarray) -> np.ndarray:
    """Spikes per row of ``v`` ``(n, T)``: entries into ``>= SPIKE_THRESHOLD``
    from a last extreme state ``< SPIKE_RESET`` (the state before the first
    extreme sample counts as neither, so a trace starting depolarised does not
    count a spike)."""
    state = np.where(v >= SPIKE_THRESHOLD, 1, np.where(v < SPIKE_RESET, -1, 0))
    index = np.where(state != 0, np.arange(v.shape[1]), 0)
    np.maximum.accumulate(index, axis=1, out=index)
    held = np.take_along_axis(state, index, axis=1)
    return ((held[:, 1:] == 1) & (held[:, :-1] == -1)).sum(axis=1).astype(np.float64)


@dataclass(frozen=True)
class _Cell:
    """Discretised cell: per-compartment constants for one number of compartments.

    Compartment ``0`` is the soma; compartment ``1 + b * N + k`` is position
    ``k`` (0 = next to the soma) of branch ``b``, with ``N`` compartments per
    branch. Units: areas cm^2, capacitances uF, conductances mS, currents uA.
    """

    task: NeuronTask
    num_branches: int
    per_branch: int
    area: np.ndarray  # (C,) cm^2
    channel_density: np.ndarray  # (C,) 1 at the soma, the dendritic fraction elsewhere
    capacitance_over_dt: np.ndarray  # (C,) uF/ms = mS
    axial_to_parent: np.ndarray  # (B, N) mS, compartment k to k-1 (k = 0: to the soma)
    axial_diagonal: np.ndarray  # (C,) mS, sum of each compartment's axial conductances

    @classmethod
    def build(cls, task: NeuronTask, per_branch: int) -> "_Cell":
        branches = task.branches
        num_branches = len(branches)
        length = np.array([b.length_um for b in branches]) * _UM_TO_CM / per_branch  # (B,)
        diameter = np.array([b.diameter_um for b in branches]) * _UM_TO_CM
        segment_area = math.pi * diameter * length  # (B,)
        # axial resistance of one segment, Ohm; conductance in mS
        resistance = task.axial_resistivity * length / (math.pi * (diameter / 2) ** 2)
        axial = np.repeat((1e3 / resistance)[:, None], per_branch, axis=1)  # (B, N)
        axial[:, 0] *= 2.0  # soma to the centre of the first segment: half a segment
        area = np.concatenate(
            [[task.soma_area * _UM_TO_CM**2], np.repeat(segment_area, per_branch)]
        )
        density = np.full(area.shape, task.dendrite_channel_fraction)
        density[0] = 1.0
        to_child = np.zeros_like(axial)
        to_child[:, :-1] = axial[:, 1:]
        diagonal = np.concatenate([[axial[:, 0].sum()], (axial + to_child).ravel()])
        return cls(
            task=task,
            num_branches=num_branches,
            per_branch=per_branch,
            area=area,
            channel_density=density,
            capacitance_over_dt=C_MEMBRANE * area / task.dt,
            axial_to_parent=axial,
            axial_diagonal=diagonal,
        )

    def run(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Integrate ``theta`` ``(n, 2)`` S/cm^2; soma voltage ``(n, T)`` in mV.

        Rows that become non-finite or leave +-``V_BLOWUP`` are NaN.
        """
        task = self.task
        n = theta.shape[0]
        dt = task.dt
        # maximal conductances per compartment, mS, (n, C)
        scale = 1e3 * self.area * self.channel_density
        g_na_max = theta[:, 0:1] * scale
        g_k_max = theta[:, 1:2] * scale
        g_leak = 1e3 * G_LEAK * self.area  # (C,)
        leak_rhs = g_leak * E_LEAK
        diagonal_const = self.capacitance_over_dt + g_leak + self.axial_diagonal  # (C,)

        v = np.full((n, self.area.shape[0]), V_INIT)
        m, h, k = (_steady_state(rates, v) for rates in (_m_rates, _h_rates, _n_rates))
        # rates scaled by the Q10 factor = the 6.3 degC rates over a longer step
        gate_dt = dt * 3.0 ** ((task.temperature - 6.3) / 10.0)
        onset, offset = task.stimulus_steps
        current = task.stimulus_amplitude * 1e-3  # nA -> uA
        noise_scale = self.capacitance_over_dt[0] * task.noise_std * math.sqrt(dt)

        trace = np.empty((n, task.num_steps), dtype=np.float64)
        with np.errstate(all="ignore"):
            for step in range(1, task.num_steps + 1):
                m = _exponential_euler(m, *_m_rates(v), gate_dt)
                h = _exponential_euler(h, *_h_rates(v), gate_dt)
                k = _exponential_euler(k, *_n_rates(v), gate_dt)
                g_na = g_na_max * (m * m * m * h)
                k2 = k * k
                g_k = g_k_max * (k2 * k2)
                diagonal = diagonal_const + g_na + g_k
                rhs = self.capacitance_over_dt * v + g_na * E_NA + g_k * E_K + leak_rhs
                soma_current = noise_scale * rng.standard_normal(n)
                if onset < step <= offset:
                    soma_current += current
                rhs[:, 0] += soma_current
                v = self._solve(diagonal, rhs)
                trace[:, step - 1] = v[:, 0]
            bad = ~(np.abs(trace) <= V_BLOWUP).all(axis=1)
        trace[bad] = np.nan
        return trace

    def _solve(self, diagonal: np.ndarray, rhs: np.ndarray) -> np.ndarray:
        """Solve the tree system for the new voltages ``(n, C)``.

        ``diagonal``, ``rhs``: ``(n, C)``; the off-diagonal entries are
        ``-axial_to_parent``. Hines elimination: fold each branch from its tip
        into its first compartment, fold those into the soma, solve the soma,
        then substitute back out along the branches.
        """
        n = diagonal.shape[0]
        shape = (n, self.num_branches, self.per_branch)
        # position-major copies (N, n, B), so each position is a contiguous slab
        d = np.ascontiguousarray(diagonal[:, 1:].reshape(shape).transpose(2, 0, 1))
        r = np.ascontiguousarray(rhs[:, 1:].reshape(shape).transpose(2, 0, 1))
        a = self.axial_to_parent.T  # (N, B)
        for pos in range(self.per_branch - 1, 0, -1):
            factor = a[pos] / d[pos]  # (n, B)
            d[pos - 1] -= a[pos] * factor
            r[pos - 1] += factor * r[pos]
        factor = a[0] / d[0]
        soma = (rhs[:, 0] + (factor * r[0]).sum(axis=1)) / (
            diagonal[:, 0] - (a[0] * factor).sum(axis=1)
        )
        r[0] += a[0] * soma[:, None]
        r[0] /= d[0]
        for pos in range(1, self.per_branch):
            r[pos] += a[pos] * r[pos - 1]
            r[pos] /= d[pos]
        v = np.empty_like(diagonal)
        v[:, 0] = soma
        v[:, 1:] = r.transpose(1, 2, 0).reshape(n, -1)
        return v


def _vtrap(x: np.ndarray) -> np.ndarray:
    """``x / (exp(x) - 1)``, continuous at ``x = 0`` (where it is 1)."""
    small = np.abs(x) < 1e-6
    return np.where(small, 1.0 - 0.5 * x, x / np.where(small, 1.0, np.expm1(x)))


def _m_rates(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Na activation rates ``(alpha, beta)`` in 1/ms at ``v`` mV."""
    return _vtrap(-(v + 40.0) / 10.0), 4.0 * np.exp(-(v + 65.0) / 18.0)


def _h_rates(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Na inactivation rates ``(alpha, beta)`` in 1/ms at ``v`` mV."""
    return 0.07 * np.exp(-(v + 65.0) / 20.0), 1.0 / (1.0 + np.exp(-(v + 35.0) / 10.0))


def _n_rates(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """K activation rates ``(alpha, beta)`` in 1/ms at ``v`` mV."""
    return 0.1 * _vtrap(-(v + 55.0) / 10.0), 0.125 * np.exp(-(v + 65.0) / 80.0)


def _steady_state(
    rates: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], v: np.ndarray
) -> np.ndarray:
    """Gate value ``alpha / (alpha + beta)`` at ``v``, same shape as ``v``."""
    alpha, beta = rates(v)
    return alpha / (alpha + beta)


def _exponential_euler(
    x: np.ndarray, alpha: np.ndarray, beta: np.ndarray, dt: float
) -> np.ndarray:
    """One exponential-Euler step of ``dx/dt = alpha (1 - x) - beta x``."""
    total = alpha + beta
    x_inf = alpha / total
    return x_inf + (x - x_inf) * np.exp(-dt * total)
