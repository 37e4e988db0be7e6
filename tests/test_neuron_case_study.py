"""The neuron case study (examples/neuron_case_study.py) runs end to end at small size."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "neuron_case_study.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("neuron_case_study", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


def test_case_study_small_run_writes_figures_and_compute(tmp_path: Path, capsys) -> None:
    example = _load_example()
    assert example.main(["--small", "--seed", "1", "--output-dir", str(tmp_path)]) == 0

    for name in ("pairplot", "predictive_traces", "loss_curves", "sbc", "tarp"):
        path = tmp_path / f"{name}.png"
        assert path.is_file() and path.stat().st_size > 1000, name
    summary = json.loads((tmp_path / "compute.json").read_text())
    for key in ("low_simulation_seconds", "high_simulation_seconds", "training_seconds"):
        assert summary[key] > 0, key
    assert summary["total_seconds"] == pytest.approx(
        summary["low_simulation_seconds"] + summary["high_simulation_seconds"]
        + summary["training_seconds"]
    )
    assert summary["low_simulations"] == 200 and summary["high_simulations"] == 40
    assert 0 <= summary["tarp_area"] <= 0.5
    printed = capsys.readouterr().out
    assert "LF simulation" in printed and "total" in printed


def test_ledger_counts_simulations_and_failures() -> None:
    """NaN rows from the simulator are told as failed and still cost time."""
    import numpy as np

    from mfask import BoxUniform, MultiFidelityPosterior

    example = _load_example()
    post = MultiFidelityPosterior(BoxUniform([0.0], [1.0]), ["low", "high"], seed=0)

    def simulator(theta: np.ndarray, fidelity: str, rng: np.random.Generator) -> np.ndarray:
        x = theta + rng.normal(size=theta.shape)
        x[0] = np.nan
        return x

    ledger = example.ComputeLedger()
    with pytest.warns(UserWarning):
        example.simulate_and_tell(post, simulator, "high", 7, np.random.default_rng(0), ledger,
                                  batch_size=3)
    assert ledger.high_simulations == 7 and ledger.low_simulations == 0
    assert ledger.high_simulation_seconds > 0
    assert post.num_simulations("high", "failed") == 3  # one per batch of 3, 3, 1
    assert post.num_simulations("high") == 4


def _load_benchmark():
    path = EXAMPLE.parents[1] / "benchmarks" / "neuron_compute.py"
    spec = importlib.util.spec_from_file_location("neuron_compute", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_compute_to_reach_interpolates_and_bounds() -> None:
    """The compute-saving benchmark reads compute off a (compute, NLTP) curve."""
    import math

    import numpy as np

    bench = _load_benchmark()
    compute = np.array([10.0, 100.0, 1000.0])
    quality = np.array([-1.0, -3.0, -5.0])
    # halfway from -3 to -5 in NLTP is halfway from 100 to 1000 in log-compute
    value, kind = bench.compute_to_reach(compute, quality, -4.0)
    assert kind == "interpolated" and value == pytest.approx(math.sqrt(100 * 1000))
    assert bench.compute_to_reach(compute, quality, 0.0) == (10.0, "at most")
    value, kind = bench.compute_to_reach(compute, quality, -6.0)
    assert kind == "not reached" and math.isnan(value)
    # a curve that dips below the target and comes back: the first crossing counts
    value, kind = bench.compute_to_reach(compute, np.array([-1.0, -4.0, -2.0]), -4.0)
    assert (value, kind) == (pytest.approx(100.0), "interpolated")
