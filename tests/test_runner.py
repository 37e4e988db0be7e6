"""mfask.run: parallel simulation with per-ticket seeds, failures, Ctrl-C and
resume, the same data on loky, on a dask.distributed cluster and on ray, and
the progress lines."""

from __future__ import annotations

import io
import os
import re
import signal
import sys
import time
import types

import numpy as np
import pytest

import mfask.progress
from mfask import BoxUniform, FlowConfig, TrainingConfig
from mfask.errors import InvalidInputError
from mfask.progress import (
    MIN_RESULTS_FOR_RATE,
    MIN_SECONDS_FOR_RATE,
    Progress,
    format_duration,
)
from mfask.runner import run
from mfask.study import NON_FINITE_REASON, create_study

TINY_FLOW = FlowConfig(hidden_features=10, num_transforms=1, num_bins=4)
QUICK_TRAINING = TrainingConfig(max_epochs=5)


def make_study(path, seed=7):
    prior = BoxUniform([0.0, 0.0], [1.0, 1.0], names=["a", "b"])
    return create_study(path, prior, ["low", "high"], seed=seed, flow=TINY_FLOW, training=QUICK_TRAINING)


def noisy(theta: np.ndarray, seed: int) -> np.ndarray:
    """A stochastic simulator that fails in parts of the parameter space."""
    if theta[0] > 0.85:
        raise ValueError(f"unstable at a={theta[0]:.3f}")
    rng = np.random.default_rng(seed)
    x = np.array([theta[0] + theta[1], theta[0] - theta[1]]) + 0.1 * rng.normal(size=2)
    if theta[1] > 0.9:
        x[0] = np.nan
    return x


def wrong_shape(theta: np.ndarray, seed: int) -> np.ndarray:
    return np.zeros(3) if theta[0] < 0.2 else noisy(theta, seed)


def data_by_ticket(study) -> dict[int, tuple]:
    return {
        r.ticket: (r.fidelity, r.status, r.source, r.retry_of, tuple(map(float, r.theta)),
                   None if r.x is None else tuple(None if np.isnan(v) else float(v) for v in r.x), r.reason)
        for r in study.tickets()
    }


def check_results(study, simulators=None, skip=()):
    """Every result is the simulator's output at the ticket's own seed."""
    for row in study.tickets():
        if row.ticket in skip:
            continue
        simulator = (simulators or {}).get(row.fidelity, noisy)
        seed = int(study.simulator_seeds([row.ticket])[0])
        if row.status == "done":
            np.testing.assert_array_equal(row.x, simulator(row.theta, seed))
        elif row.status == "failed":
            try:
                expected = simulator(row.theta, seed)
            except ValueError as error:
                assert row.reason == f"ValueError: {error}"
            else:
                assert row.reason == NON_FINITE_REASON or row.reason.startswith("unusable output")
                assert not np.isfinite(expected).all() or expected.shape != (2,)


def test_run_on_loky_tells_every_result_with_reasons_and_retries(tmp_path):
    study = make_study(tmp_path / "s.mfask")
    first = study.ask("high", 1)  # a known output shape, as after earlier work
    study.tell(first, [[0.5, 0.5]])
    progress = io.StringIO()
    report = run(
        study, {"low": wrong_shape, "high": noisy}, {"low": 20, "high": 6},
        n_jobs=2, retries=1, progress_interval=0.0, progress_stream=progress,
    )
    for name, budget in (("low", 20), ("high", 6)):
        firsts = [r for r in study.tickets(fidelity=name) if r.source != "retry"]
        assert len(firsts) == budget and all(r.status in ("done", "failed") for r in firsts)
        retried = [r for r in study.tickets(fidelity=name) if r.source == "retry"]
        failed_firsts = [r.ticket for r in firsts if r.status == "failed"]
        assert sorted(r.retry_of for r in retried) == failed_firsts
        assert report.fidelities[name].retried == len(failed_firsts)
    assert report.fidelities["high"].before == 1
    assert report.fidelities["high"].done + report.fidelities["high"].failed == 5 + len(retried)
    reasons = {r.reason.split(":")[0] for r in study.tickets(status="failed")}
    assert "ValueError" in reasons and "unusable output" in reasons
    assert all(r.cost is not None and r.cost >= 0 for r in study.tickets()[1:])
    check_results(study, {"low": wrong_shape, "high": noisy}, skip=first.ticket_ids)
    assert "low: 20/20 told" in progress.getvalue() and "failed" in progress.getvalue()
    # running again finds the budgets met: nothing new is asked
    before = data_by_ticket(study)
    again = run(study, {"low": wrong_shape, "high": noisy}, {"low": 20, "high": 6}, n_jobs=2, progress=False)
    assert again.fidelities["low"].done == again.fidelities["high"].done == 0
    assert data_by_ticket(study) == before
    study.close()


def _interrupting(theta: np.ndarray, seed: int) -> np.ndarray:
    """As `noisy`, but presses Ctrl-C (SIGINT to this process) once."""
    time.sleep(0.02)
    if os.environ.get("MFASK_TEST_INTERRUPT") and theta[0] < 0.5:
        os.environ.pop("MFASK_TEST_INTERRUPT", None)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)
    return noisy(theta, seed)


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT")
def test_ctrl_c_keeps_finished_work_and_a_rerun_completes_it(tmp_path, monkeypatch):
    reference = make_study(tmp_path / "reference.mfask")
    run(reference, {"low": noisy}, {"low": 24}, backend="threading", n_jobs=2, batch_size=8,
        progress=False)

    study = make_study(tmp_path / "s.mfask")
    monkeypatch.setenv("MFASK_TEST_INTERRUPT", "1")
    with pytest.raises(KeyboardInterrupt):
        run(study, {"low": _interrupting}, {"low": 24}, backend="threading", n_jobs=2,
            batch_size=8, progress=False)
    counts = study.status()["total"]
    assert counts["pending"] > 0 and counts["done"] + counts["failed"] < 24
    assert signal.getsignal(signal.SIGINT) is not None  # the previous handler is back
    check_results(study)  # what was told is right; nothing was failed by the interrupt

    report = run(study, {"low": noisy}, {"low": 24}, backend="threading", n_jobs=2,
                 batch_size=8, progress=False)
    assert report.fidelities["low"].before == counts["done"] + counts["failed"]
    assert study.status()["total"]["pending"] == 0
    assert data_by_ticket(study) == data_by_ticket(reference)  # as if never interrupted
    reference.close()
    study.close()


BACKEND_BUDGETS = {"low": 12, "high": 4}
BACKEND_SIMULATORS = {"low": noisy, "high": noisy}


@pytest.fixture(scope="module")
def loky_data(tmp_path_factory):
    """The tickets of a loky run (retries=1) that the other backends must match."""
    study = make_study(tmp_path_factory.mktemp("loky") / "loky.mfask")
    run(study, BACKEND_SIMULATORS, BACKEND_BUDGETS, n_jobs=2, retries=1, progress=False)
    data = data_by_ticket(study)
    study.close()
    assert len(data) > sum(BACKEND_BUDGETS.values())  # some were retried
    return data


def test_dask_cluster_gives_the_same_data_as_loky(tmp_path, loky_data):
    pytest.importorskip("dask")
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster, distributed.Client(cluster) as client:
        via_executor = make_study(tmp_path / "executor.mfask")
        run(via_executor, BACKEND_SIMULATORS, BACKEND_BUDGETS, executor=client.get_executor(),
            retries=1, progress=False)
        via_joblib = make_study(tmp_path / "joblib.mfask")
        run(via_joblib, BACKEND_SIMULATORS, BACKEND_BUDGETS, backend="dask", retries=1, progress=False)

    assert data_by_ticket(via_executor) == loky_data
    assert data_by_ticket(via_joblib) == loky_data
    for study in (via_executor, via_joblib):
        study.close()


@pytest.fixture(scope="module")
def local_ray():
    """A local ray instance with two CPUs, shut down after this module. Its
    workers get this directory on their path (they inherit the environment),
    so they can import this module's simulators."""
    ray = pytest.importorskip("ray")
    path = os.pathsep.join(p for p in (os.path.dirname(__file__), os.environ.get("PYTHONPATH")) if p)
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("PYTHONPATH", path)
        ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


def test_ray_gives_the_same_data_as_loky(tmp_path, loky_data, local_ray):
    study = make_study(tmp_path / "ray.mfask")
    progress = io.StringIO()
    report = run(study, BACKEND_SIMULATORS, BACKEND_BUDGETS, backend="ray", n_jobs=2, retries=1,
                 progress_interval=0.0, progress_stream=progress)
    assert report.fidelities["low"].retried > 0
    assert data_by_ticket(study) == loky_data
    told = [int(n) for n in re.findall(r"low: (\d+)/12 told", progress.getvalue())]
    assert told[:12] == list(range(1, 13))  # told one by one as they came
    assert set(told[12:]) == {12}  # then the retries, counted apart
    study.close()

    # joblib's ray backend, passed as an instance, takes the same path
    from ray.util.joblib.ray_backend import RayBackend

    via_joblib_instance = make_study(tmp_path / "ray_backend.mfask")
    run(via_joblib_instance, BACKEND_SIMULATORS, BACKEND_BUDGETS, backend=RayBackend(), n_jobs=2,
        retries=1, progress=False)
    assert data_by_ticket(via_joblib_instance) == loky_data
    via_joblib_instance.close()


def test_a_backend_that_cannot_stream_results_is_refused_before_anything_is_asked(tmp_path):
    from joblib.parallel import get_active_backend

    study = make_study(tmp_path / "s.mfask")
    backend_before = type(get_active_backend()[0])
    with pytest.raises(InvalidInputError, match="cannot return results as they complete"):
        run(study, {"low": noisy}, {"low": 4}, backend="multiprocessing", n_jobs=2, progress=False)
    assert study.tickets() == []
    assert type(get_active_backend()[0]) is backend_before  # joblib's configuration restored
    study.close()


def test_progress_shows_rate_and_eta_only_after_enough_results_and_time(monkeypatch):
    clock = types.SimpleNamespace(now=100.0)
    monkeypatch.setattr(mfask.progress, "time", types.SimpleNamespace(monotonic=lambda: clock.now))
    lines = io.StringIO()
    progress = Progress("low", 1000, interval=0.0, stream=lines)
    clock.now += 6.0  # the workers start: the first result comes late
    for _ in range(MIN_RESULTS_FOR_RATE - 1):
        progress.update()
        clock.now += 1.0
    progress.update()  # enough results, and more than enough time since the first
    printed = lines.getvalue().splitlines()
    assert all("/s" not in line and "ETA" not in line for line in printed[:-1])
    rate = (MIN_RESULTS_FOR_RATE - 1) / (MIN_RESULTS_FOR_RATE - 1.0)  # from the first result on
    remaining = 1000 - MIN_RESULTS_FOR_RATE
    assert printed[-1] == (f"[mfask] low: {MIN_RESULTS_FOR_RATE}/1000 told, {rate:.3g}/s, "
                           f"ETA {format_duration(remaining / rate)}")

    quick = Progress("high", 100, interval=0.0, stream=io.StringIO())
    for _ in range(3 * MIN_RESULTS_FOR_RATE):  # many results, too little time
        quick.update()
        clock.now += MIN_SECONDS_FOR_RATE / (4 * MIN_RESULTS_FOR_RATE)
    assert quick.rate is None and "/s" not in quick.line()


def test_progress_counts_retries_apart_from_the_budget(tmp_path):
    study = make_study(tmp_path / "s.mfask")
    lines = io.StringIO()
    report = run(study, {"low": noisy}, {"low": 20}, backend="threading", n_jobs=2, retries=1,
                 progress_interval=0.0, progress_stream=lines)
    low = report.fidelities["low"]
    assert low.retried > 0
    printed = lines.getvalue().splitlines()
    told = [int(re.search(r"low: (\d+)/20 told", line).group(1)) for line in printed]
    assert max(told) == 20 and told == sorted(told)
    retries_failed = sum(r.status == "failed" for r in study.tickets(fidelity="low") if r.source == "retry")
    failed_firsts = low.failed - retries_failed
    expected_tail = f"20/20 told ({failed_firsts} failed), {low.retried} retried"
    if retries_failed:
        expected_tail += f" ({retries_failed} failed again)"
    assert expected_tail in printed[-1]
    assert all("/s" not in line for line in printed[: MIN_RESULTS_FOR_RATE - 1])
    study.close()
