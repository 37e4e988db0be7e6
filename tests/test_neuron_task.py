"""Tests of the Hodgkin-Huxley neuron task (mfask.benchmarks.tasks.neuron)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mfask.benchmarks.tasks.neuron import (
    E_LEAK,
    G_LEAK,
    L5PC_LIKE_BRANCHES,
    SUMMARY_NAMES,
    Branch,
    NeuronTask,
    _Cell,
)
from mfask.errors import InvalidInputError, UnknownFidelityError

SPIKES, REST_MEAN, REST_STD, STIM_MEAN, PEAK, POST_MEAN = range(6)

# a few parameter sets across the prior: excitable, weak, spontaneous, no gK
THETA = np.array(
    [[0.3, 0.15], [0.03, 0.036], [0.8, 0.1], [0.4, 1e-6], [0.12, 0.036]]
)


@pytest.fixture(scope="module")
def task() -> NeuronTask:
    return NeuronTask()


def test_hf_with_one_compartment_equals_lf_exactly(task: NeuronTask) -> None:
    one = NeuronTask(compartments=1)
    x_low = task.simulate(THETA, "low", np.random.default_rng(3))
    x_one = one.simulate(THETA, "high", np.random.default_rng(3))
    np.testing.assert_array_equal(x_one, x_low)
    _, v_low = task.simulate_traces(THETA[:2], "low", np.random.default_rng(4))
    _, v_one = one.simulate_traces(THETA[:2], "high", np.random.default_rng(4))
    np.testing.assert_array_equal(v_one, v_low)
    # ... and the default high fidelity is a different model
    x_high = task.simulate(THETA, "high", np.random.default_rng(3))
    assert np.abs(x_high - x_low)[:, STIM_MEAN].max() > 1.0


def test_l5pc_like_morphology_runs_spikes_and_collapses_to_lf() -> None:
    """The stylised pyramidal-cell tree: finite summaries over prior draws,
    spikes in a good part of the prior at both fidelities, none for tiny gNa,
    and its HF with one compartment per branch is its LF bit for bit."""
    assert len(L5PC_LIKE_BRANCHES) == 11
    cell = NeuronTask(branches=L5PC_LIKE_BRANCHES)
    assert cell.settings["branches"][0] == [600.0, 3.0]
    theta = cell.sample_prior(40, np.random.default_rng(0))
    for fidelity in cell.fidelities:
        x = cell.simulate(theta, fidelity, np.random.default_rng(1))
        assert x.shape == (40, 6) and np.isfinite(x).all()
        assert (x[:, SPIKES] >= 1).mean() > 0.4, x[:, SPIKES]
        quiet = cell.simulate(np.array([[0.005, 0.05]]), fidelity, np.random.default_rng(1))
        assert quiet[0, SPIKES] == 0 and quiet[0, PEAK] < -20.0
    one = NeuronTask(compartments=1, branches=L5PC_LIKE_BRANCHES)
    x_low = cell.simulate(THETA, "low", np.random.default_rng(3))
    np.testing.assert_array_equal(one.simulate(THETA, "high", np.random.default_rng(3)), x_low)
    # its HF differs from its LF, and from the default cell's HF
    x_high = cell.simulate(THETA, "high", np.random.default_rng(3))
    assert np.abs(x_high - x_low)[:, STIM_MEAN].max() > 1.0
    default_high = NeuronTask().simulate(THETA, "high", np.random.default_rng(3))
    assert np.abs(x_high - default_high)[:, STIM_MEAN].max() > 1.0


def test_shapes(task: NeuronTask) -> None:
    assert task.x_shape == (len(SUMMARY_NAMES),) == (6,)
    assert task.fidelities == ("low", "high")
    rng = np.random.default_rng(0)
    for fidelity in task.fidelities:
        x = task.simulate(THETA[:3], fidelity, rng)
        assert x.shape == (3, 6) and x.dtype == np.float64
        t, v = task.simulate_traces(THETA[:2], fidelity, rng)
        assert t.shape == (4800,) and v.shape == (2, 4800)
        assert t[0] == pytest.approx(0.025) and t[-1] == pytest.approx(120.0)
    assert task.simulate(np.array([0.3, 0.1]), "low", rng).shape == (1, 6)
    assert task.simulate(np.empty((0, 2)), "low", rng).shape == (0, 6)
    theta = task.sample_prior(4, rng)
    assert theta.shape == (4, 2)
    assert ((theta >= [0.005, 1e-6]) & (theta <= [0.8, 0.15])).all()


def test_bad_arguments_raise(task: NeuronTask) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(InvalidInputError):
        task.simulate(np.zeros((2, 3)), "low", rng)
    with pytest.raises(UnknownFidelityError):
        task.simulate(THETA, "medium", rng)
    with pytest.raises(InvalidInputError):
        NeuronTask(compartments=0)
    with pytest.raises(InvalidInputError):
        NeuronTask(stimulus_onset=110.0, stimulus_duration=20.0)
    with pytest.raises(InvalidInputError):
        NeuronTask(dt=15.0)  # no step would fall into the stimulus window
    with pytest.raises(InvalidInputError):
        NeuronTask(branches=[Branch(100.0, -1.0)])
    with pytest.raises(InvalidInputError):
        task.simulate(THETA, "low", 0)
    with pytest.raises(NotImplementedError):
        task.log_likelihood(THETA, np.zeros(6))


def test_spikes_for_large_gna_and_none_for_tiny_gna(task: NeuronTask) -> None:
    theta = np.array(
        [[0.6, 0.1], [0.3, 0.15], [0.5, 0.08], [0.005, 0.05], [0.005, 0.15], [0.01, 0.1]]
    )
    for fidelity in task.fidelities:
        x = task.simulate(theta, fidelity, np.random.default_rng(1))
        assert (x[:3, SPIKES] >= 1).all(), x
        assert (x[:3, PEAK] > 20.0).all(), x
        assert (x[3:, SPIKES] == 0).all(), x
        assert (x[3:, PEAK] < -20.0).all(), x
    # the excitable but quiet cell fires only during the stimulus
    x = task.simulate(theta[1:2], "high", np.random.default_rng(1))
    assert x[0, REST_STD] < 1.0 and x[0, POST_MEAN] < -55.0


def test_resting_potential_is_near_leak_reversal(task: NeuronTask) -> None:
    # with almost no voltage-gated conductance the soma rests at the leak reversal
    x = task.simulate(np.array([[0.0, 0.0], [0.005, 1e-6]]), "high", np.random.default_rng(2))
    assert x[0, REST_MEAN] == pytest.approx(E_LEAK, abs=0.3)
    assert x[1, REST_MEAN] == pytest.approx(E_LEAK, abs=2.0)
    assert 0.02 < x[0, REST_STD] < 1.0  # small, but there is noise
    # potassium pulls the rest below the leak reversal, towards E_K
    x = task.simulate(np.array([[0.005, 0.15]]), "high", np.random.default_rng(2))
    assert -75.0 < x[0, REST_MEAN] < E_LEAK - 5.0


@pytest.mark.parametrize(
    "branches",
    [None, (Branch(400.0, 1.0), Branch(900.0, 4.0), Branch(100.0, 0.5)), L5PC_LIKE_BRANCHES],
    ids=["default", "three-branches", "l5pc-like"],
)
def test_passive_input_resistance_matches_cable_theory(
    branches: tuple[Branch, ...] | None,
) -> None:
    """Steady soma depolarisation of the passive cell (theta = 0) under a long
    step against the analytic soma + sealed-end finite cables result."""
    kwargs = dict(noise_std=0.0, stimulus_onset=25.0, stimulus_duration=30.0, t_max=60.0)
    if branches is not None:
        kwargs["branches"] = branches
    fine = NeuronTask(compartments=32, **kwargs)
    g_in = G_LEAK * fine.soma_area * 1e-8  # S
    for branch in fine.branches:
        d, length = branch.diameter_um * 1e-4, branch.length_um * 1e-4  # cm
        lam = math.sqrt(d / (4 * fine.axial_resistivity * G_LEAK))
        g_in += math.pi * d**2 / (4 * fine.axial_resistivity * lam) * math.tanh(length / lam)
    expected = fine.stimulus_amplitude * 1e-9 / g_in * 1e3  # mV

    def depolarisation(fidelity: str) -> float:
        t, v = fine.simulate_traces(np.zeros((1, 2)), fidelity, np.random.default_rng(0))
        before, end = np.searchsorted(t, [25.0, 55.0])
        return float(v[0, end] - v[0, before])

    assert depolarisation("high") == pytest.approx(expected, rel=2e-3)
    # the one-compartment branches get the input resistance visibly wrong
    assert abs(depolarisation("low") / expected - 1) > 0.1


def test_tree_solver_matches_dense_solve(task: NeuronTask) -> None:
    cell = _Cell.build(task, 3)
    rng = np.random.default_rng(5)
    n, size = 4, cell.area.shape[0]
    diagonal = cell.axial_diagonal + rng.uniform(0.1, 2.0, (n, size)) * cell.axial_diagonal.max()
    rhs = rng.normal(size=(n, size))
    # assemble the full matrix independently: parent of 1 + b N + k is the soma
    # for k = 0, else the compartment before it
    per_branch = cell.per_branch
    for row in range(n):
        matrix = np.diag(diagonal[row])
        for b in range(cell.num_branches):
            for k in range(per_branch):
                child = 1 + b * per_branch + k
                parent = 0 if k == 0 else child - 1
                matrix[child, parent] = matrix[parent, child] = -cell.axial_to_parent[b, k]
        expected = np.linalg.solve(matrix, rhs[row])
        np.testing.assert_allclose(
            cell._solve(diagonal.copy(), rhs.copy())[row], expected, rtol=1e-10
        )


def test_blow_ups_give_nan_rows_not_exceptions(task: NeuronTask) -> None:
    # an absurd stimulus drives the voltage far out of range in every cell ...
    absurd = NeuronTask(stimulus_amplitude=1e4)
    theta = np.array([[0.0, 0.0], [0.3, 0.1]])
    for fidelity in task.fidelities:
        x = absurd.simulate(theta, fidelity, np.random.default_rng(0))
        assert x.shape == (2, 6) and np.isnan(x).all()
        _, v = absurd.simulate_traces(theta, fidelity, np.random.default_rng(0))
        assert np.isnan(v).all()
    # ... and a row that blows up does not spoil the others
    theta = np.array([[0.3, 0.1], [0.1, -5.0], [0.05, 0.02]])
    for fidelity in task.fidelities:
        x = task.simulate(theta, fidelity, np.random.default_rng(0))
        assert np.isfinite(x[[0, 2]]).all()
        # a negative conductance may or may not blow up, but never half a row
        assert np.isnan(x[1]).all() or np.isfinite(x[1]).all()


def test_non_finite_theta_is_rejected_like_in_every_task(task: NeuronTask) -> None:
    for bad in ([[np.nan, 0.1]], [[0.3, np.inf]]):
        with pytest.raises(InvalidInputError):
            task.simulate(np.array(bad), "high", np.random.default_rng(0))


def test_large_time_step_stays_finite() -> None:
    """The implicit voltage step is stable: a 20x larger dt than the default
    (explicit Euler would blow up on the 8-compartment cable) stays finite."""
    coarse = NeuronTask(dt=0.5)
    theta = coarse.sample_prior(6, np.random.default_rng(0))
    x = coarse.simulate(theta, "high", np.random.default_rng(0))
    assert np.isfinite(x).all()


def test_deterministic_given_seed_and_noise_matters(task: NeuronTask) -> None:
    theta = THETA[:3]
    a = task.simulate(theta, "high", np.random.default_rng(11))
    b = task.simulate(theta, "high", np.random.default_rng(11))
    c = task.simulate(theta, "high", np.random.default_rng(12))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[:, REST_MEAN], c[:, REST_MEAN])
    # simulate summarises exactly the traces simulate_traces returns
    _, v = task.simulate_traces(theta, "high", np.random.default_rng(11))
    np.testing.assert_array_equal(task.summarise(v), a)


def test_chunking_does_not_change_rows_shape_or_validity() -> None:
    small_chunks = NeuronTask(chunk_size=2)
    x = small_chunks.simulate(THETA, "low", np.random.default_rng(0))
    assert x.shape == (5, 6) and np.isfinite(x).all()


def test_spike_count_uses_hysteresis(task: NeuronTask) -> None:
    t = task.times
    v = np.full((2, t.size), -65.0)
    for onset in (30.0, 40.0, 70.0):  # three clean spikes
        v[0, (t > onset) & (t < onset + 1.0)] = 30.0
    # one spike into a depolarised plateau that wobbles around 0 mV
    plateau = t > 55.0
    v[1, plateau] = 2.0 * np.sin(np.arange(plateau.sum()))
    # a spike before the burn-in ends is not counted
    v[0, (t > 5.0) & (t < 6.0)] = 30.0
    x = task.summarise(v)
    assert x[:, SPIKES].tolist() == [3.0, 1.0]
    # rest window (20, 50] ms holds two 1 ms spikes 95 mV above -65 mV
    assert x[0, REST_MEAN] == pytest.approx(-65.0 + 95.0 * 2.0 / 30.0, abs=0.2)
    v[1, 100] = np.inf
    assert np.isnan(task.summarise(v)[1]).all()


def test_registered_in_get_task() -> None:
    from mfask.benchmarks.tasks import get_task

    built = get_task("neuron", compartments=4)
    assert isinstance(built, NeuronTask) and built.compartments == 4
    assert built.name == "neuron"
