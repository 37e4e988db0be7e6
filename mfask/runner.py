"""Run Python simulators for a study in parallel: ask, simulate, tell.

:func:`run` is for users whose simulator is a Python function::

    def simulate_low(theta, seed):           # theta: (k,) the fidelity's parameters
        rng = np.random.default_rng(seed)
        return model(theta, rng)              # array-like output

    mfask.run("study.mfask", {"low": simulate_low, "high": simulate_high},
              budgets={"low": 2000, "high": 100})

It asks the study for tickets, runs each simulation as its own task through
joblib (loky processes by default; any joblib backend that returns results as
they complete, e.g. ``"dask"`` with a ``dask.distributed`` client), through
ray's own task API (``backend="ray"``), or through any
``concurrent.futures`` executor (``client.get_executor()`` of dask, a
``ProcessPoolExecutor``...), and tells each result to the study as soon as it
arrives, so finished work is on disk at once.

* Seeds: each ticket's simulation gets its own seed,
  :meth:`~mfask.study.Study.simulator_seeds` (from the study's seed and the
  ticket id): the same study seed gives the same data on any backend.
* Failures: an exception in the simulator makes the ticket failed with the
  exception as its reason; so does an output of the wrong shape. NaN/inf
  outputs are failed tickets too (as in ``tell``). ``retries`` re-asks a
  failed ticket's parameters under a new ticket. Errors of the machinery
  itself (a worker process killed...) are raised, not recorded.
* Budgets count the done and failed tickets of a fidelity in the whole study
  (retries aside), so running again after an interruption (Ctrl-C, a crash, a pre-empted job)
  continues where the study stands: pending tickets are run first (with
  their own seeds, so they give what the interrupted run would have given),
  then new ones are asked up to the budget.
* Ctrl-C stops the run after the tell in progress; everything told is kept.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import sys
import threading
import time
import types
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, TextIO

import numpy as np

from mfask.errors import InvalidInputError, TicketAlreadyToldError
from mfask.posterior import SimulationFailedWarning
from mfask.progress import Progress, format_duration
from mfask.study import Study, open_study
from mfask.tickets import SOURCES, AskBatch

__all__ = ["run", "RunReport", "FidelityReport", "Simulator"]

Simulator = Callable[[np.ndarray, int], Any]
"""``simulator(theta, seed) -> x``: ``theta`` is the ``(k,)`` float64 vector of
the parameters the fidelity uses, ``seed`` a non-negative int; ``x`` anything
numpy turns into a float array of the study's output shape."""


@dataclass
class FidelityReport:
    """What :func:`run` did at one fidelity.

    Attributes:
        budget: the wanted number of done + failed tickets (retries aside).
        before: such tickets when the run started.
        done, failed: results told by this run.
        retried: failed tickets re-asked by this run.
        seconds: wall time spent on this fidelity.
    """

    budget: int
    before: int
    done: int = 0
    failed: int = 0
    retried: int = 0
    seconds: float = 0.0


@dataclass
class RunReport:
    """What :func:`run` did: a :class:`FidelityReport` per fidelity run."""

    fidelities: dict[str, FidelityReport] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class _Task:
    ticket: int
    theta: np.ndarray
    seed: int


@dataclass(frozen=True)
class _Outcome:
    ticket: int
    x: np.ndarray | None
    error: str | None
    seconds: float


def _simulate_one(simulator: Simulator, ticket: int, theta: np.ndarray, seed: int) -> _Outcome:
    """Run one simulation (in a worker); simulator exceptions become outcomes."""
    started = time.perf_counter()
    try:
        x = np.asarray(simulator(theta, seed), dtype=np.float64)
    except Exception as error:  # noqa: BLE001 - any simulator error fails the ticket
        return _Outcome(ticket, None, f"{type(error).__name__}: {error}", time.perf_counter() - started)
    return _Outcome(ticket, x, None, time.perf_counter() - started)


def run(
    study: Study | str | os.PathLike[str],
    simulators: Mapping[str, Simulator],
    budgets: Mapping[str, int],
    *,
    n_jobs: int = -1,
    backend: str | Any = "loky",
    executor: concurrent.futures.Executor | None = None,
    batch_size: int | None = None,
    retries: int = 0,
    adopt_pending: bool = True,
    progress: bool = True,
    progress_interval: float = 5.0,
    progress_stream: TextIO | None = None,
) -> RunReport:
    """Simulate until each fidelity in ``budgets`` has that many done + failed
    tickets (retries aside), telling each result to ``study`` as it completes.

    Fidelities are run one after the other, low to high.

    Arguments:
        study: a :class:`~mfask.study.Study` or the path of a study file.
        simulators: a :data:`Simulator` per fidelity name; it must be
            picklable for process backends (a module-level function).
        budgets: the wanted number of simulated parameter draws per
            fidelity: done + failed tickets in the study, not counting
            retries.
        n_jobs: parallel simulations (``-1``: all cores; with ray, all the
            CPUs of the ray cluster).
        backend: a joblib backend name or instance (``"loky"``,
            ``"threading"``, ``"dask"``...; one that cannot return results
            as they complete, such as ``"multiprocessing"``, is refused with
            :class:`~mfask.errors.InvalidInputError`), or ``"ray"`` (or
            joblib's ``RayBackend``): ray tasks through ray's own API, on the
            running ray (``ray.init``) or a local one started for the run.
            Ignored with ``executor``.
        executor: run tasks through this ``concurrent.futures.Executor``
            instead of joblib (e.g. ``dask.distributed.Client.get_executor()``).
        batch_size: tickets asked at a time (default: the whole remaining
            budget).
        retries: how many times a failed ticket's parameters are re-asked
            under a new ticket (on top of the budget).
        adopt_pending: run the fidelity's pending tickets first (left by an
            interrupted run). Two runners on one study would then run the
            same pending tickets; the second result is ignored.
        progress: print progress lines (count toward the budget, failures,
            retries, rate and ETA once a few results have come; see
            :mod:`mfask.progress`) to standard error every
            ``progress_interval`` seconds.

    Returns a :class:`RunReport`. Raises :class:`KeyboardInterrupt` after
    Ctrl-C (everything told so far is in the study).
    """
    started = time.monotonic()
    owned = not isinstance(study, Study)
    handle = open_study(study) if owned else study
    try:
        plan = _check_plan(handle, simulators, budgets, retries, batch_size)
        report = RunReport()
        engine = _engine_for(executor, backend, n_jobs)
        with _DeferredInterrupt() as interrupt, engine:
            for fidelity in plan:
                report.fidelities[fidelity] = _run_fidelity(
                    handle, fidelity, simulators[fidelity], int(budgets[fidelity]), engine,
                    interrupt=interrupt, batch_size=batch_size, retries=retries,
                    adopt_pending=adopt_pending,
                    progress_interval=progress_interval if progress else None,
                    progress_stream=progress_stream,
                )
        report.seconds = time.monotonic() - started
        return report
    finally:
        if owned:
            handle.close()


def _check_plan(
    study: Study, simulators: Mapping[str, Simulator], budgets: Mapping[str, int],
    retries: int, batch_size: int | None,
) -> list[str]:
    names = study.fidelity_names
    for name, budget in budgets.items():
        if name not in names:
            raise InvalidInputError(f"budgets names unknown fidelity {name!r}; the study has {list(names)}")
        if name not in simulators or not callable(simulators[name]):
            raise InvalidInputError(f"no simulator (a callable) for fidelity {name!r}")
        if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 0:
            raise InvalidInputError(f"budget of {name!r} must be a non-negative integer; got {budget!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InvalidInputError(f"retries must be a non-negative integer; got {retries!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise InvalidInputError(f"batch_size must be a positive integer or None; got {batch_size!r}")
    return [name for name in names if name in budgets]


def _run_fidelity(
    study: Study,
    fidelity: str,
    simulator: Simulator,
    budget: int,
    engine: "_Engine",
    *,
    interrupt: "_DeferredInterrupt",
    batch_size: int | None,
    retries: int,
    adopt_pending: bool,
    progress_interval: float | None,
    progress_stream: TextIO | None,
) -> FidelityReport:
    started = time.monotonic()
    told = _told(study, fidelity)
    report = FidelityReport(budget=budget, before=told)
    progress = Progress(
        fidelity, budget, already=told, interval=progress_interval, stream=progress_stream
    )
    attempts: dict[int, int] = {}  # ticket -> how many earlier failures its theta had
    queue: list[_Task] = []
    if adopt_pending:
        rows = study.pending(fidelity)
        first = [r.ticket for r in rows if r.source != "retry"][: max(0, budget - told)]
        again = [r.ticket for r in rows if r.source == "retry"]
        attempts.update(_retry_depth(study, again))
        if first or again:
            queue = _tasks(study, fidelity, np.array(sorted(first + again), dtype=np.int64))
    in_flight = len(queue)
    try:
        while True:
            if not queue:
                told = _told(study, fidelity)  # counts other processes' results too
                wanted = budget - told
                if wanted <= 0:
                    break
                batch = study.ask(fidelity, min(wanted, batch_size or wanted))
                queue = _tasks(study, fidelity, batch)
            failed_tickets: list[int] = []
            in_flight = len(queue)
            results = engine.run(simulator, queue)
            try:
                for outcome in results:
                    in_flight -= 1
                    with interrupt.deferred():
                        ok = _tell(study, outcome)
                        if ok is not None:  # else told by someone else meanwhile
                            report.done += ok
                            report.failed += not ok
                            progress.update(1, int(not ok), retries=attempts.get(outcome.ticket, 0) > 0)
                            if not ok:
                                failed_tickets.append(outcome.ticket)
            finally:
                _close(results)
            queue = []
            retry = sorted(t for t in failed_tickets if attempts.get(t, 0) < retries)
            if retry:
                batch = study.retry(retry)
                for old, new in zip(retry, batch.ticket_ids):
                    attempts[int(new)] = attempts.get(old, 0) + 1
                report.retried += len(retry)
                queue = _tasks(study, fidelity, batch)
    except KeyboardInterrupt:
        report.seconds = time.monotonic() - started
        progress.show(
            f" - interrupted; {report.done + report.failed} result(s) told by this run are "
            f"saved, {max(in_flight, 0)} ticket(s) left pending: run again to resume"
        )
        raise
    report.seconds = time.monotonic() - started
    progress.show(f" in {format_duration(report.seconds)}")
    return report


def _told(study: Study, fidelity: str) -> int:
    """Done + failed tickets of ``fidelity`` that count toward its budget."""
    sources = [s for s in SOURCES if s != "retry"]
    return study.count(fidelity, ("done", "failed"), source=sources)


def _retry_depth(study: Study, tickets: list[int]) -> dict[int, int]:
    """How many retries lie behind each ticket (0 for a first attempt)."""
    depth = {}
    for ticket in tickets:
        count, row = 0, study.tickets([ticket])[0]
        while row.retry_of is not None:
            count += 1
            row = study.tickets([row.retry_of])[0]
        depth[ticket] = count
    return depth


def _tasks(study: Study, fidelity: str, tickets: AskBatch | np.ndarray) -> list[_Task]:
    """Tasks for tickets of ``fidelity``: the parameters its simulator uses
    (in the order of an :class:`AskBatch`'s ``theta_used``) and the seeds."""
    if isinstance(tickets, AskBatch):
        ids, theta = tickets.ticket_ids, tickets.theta_used
    else:
        ids = tickets
        post = study.posterior
        spec = post.fidelities[post.fidelity_names.index(fidelity)]
        used = [post.prior.names.index(name) for name in spec.parameters or post.prior.names]
        theta = np.stack([row.theta[used] for row in study.tickets(ids)])
    seeds = study.simulator_seeds(np.asarray(ids, dtype=np.int64))
    return [_Task(int(t), np.array(th), int(s)) for t, th, s in zip(ids, theta, seeds)]


def _tell(study: Study, outcome: _Outcome) -> bool | None:
    """Tell one outcome: True done, False failed, None already told elsewhere."""
    ids = np.array([outcome.ticket], dtype=np.int64)
    try:
        if outcome.error is None:
            try:
                with warnings.catch_warnings():  # failures are counted in the progress lines
                    warnings.simplefilter("ignore", SimulationFailedWarning)
                    result = study.tell(ids, outcome.x[None], cost=outcome.seconds, skip_told=True)
            except InvalidInputError as error:  # e.g. an output of the wrong shape
                return _fail(study, ids, f"unusable output: {error}", outcome.seconds)
            if result.ticket_ids[0] < 0:
                return None
            return result.num_done == 1
        return _fail(study, ids, outcome.error, outcome.seconds)
    except TicketAlreadyToldError:
        return None


def _fail(study: Study, ids: np.ndarray, reason: str, seconds: float) -> bool | None:
    recorded = study.fail(ids, reason, cost=seconds, skip_told=True)
    return False if recorded.size else None


def _close(results: Iterable[Any]) -> None:
    """Stop a result stream early (after Ctrl-C): unfinished tasks are dropped."""
    close = getattr(results, "close", None)
    if close is not None:
        with warnings.catch_warnings():  # joblib warns about the dropped tasks
            warnings.simplefilter("ignore", UserWarning)
            close()


# ================================================================= engines
def _engine_for(executor: concurrent.futures.Executor | None, backend: Any, n_jobs: int) -> "_Engine":
    """The engine :func:`run` uses: the executor if given, ray's own API for
    the ray backend (by name, or joblib's ``RayBackend`` instance), else joblib."""
    if executor is not None:
        return _ExecutorEngine(executor)
    if isinstance(backend, str):
        if backend == "ray":
            return _RayEngine(n_jobs)
    else:
        ray_joblib = sys.modules.get("ray.util.joblib.ray_backend")
        if ray_joblib is not None and isinstance(backend, ray_joblib.RayBackend):
            return _RayEngine(n_jobs, getattr(backend, "ray_remote_args", None))
    return _JoblibEngine(n_jobs, backend)


class _Engine:
    """Runs a list of tasks, yielding outcomes in completion order."""

    def __enter__(self) -> "_Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, simulator: Simulator, tasks: list[_Task]) -> Iterator[_Outcome]:
        raise NotImplementedError


class _JoblibEngine(_Engine):
    def __init__(self, n_jobs: int, backend: Any) -> None:
        self._n_jobs = n_jobs
        self._backend = backend
        self._stack = ExitStack()
        self._parallel: Any = None

    def __enter__(self) -> "_JoblibEngine":
        from joblib import Parallel, parallel_config
        from joblib.parallel import get_active_backend

        # parallel_config also registers joblib's external backends ("dask")
        self._stack.enter_context(parallel_config(backend=self._backend, n_jobs=self._n_jobs))
        try:
            parallel = Parallel(return_as="generator_unordered")
        except ValueError as error:
            active, _ = get_active_backend()
            self._stack.close()  # leaves joblib's configuration as it was
            if getattr(active, "supports_return_generator", True):
                raise
            raise InvalidInputError(
                f"the joblib backend {self._backend!r} cannot return results as they complete, "
                "which the runner needs to tell each one at once; use backend='loky', "
                "'threading', 'dask' or 'ray', or executor=..."
            ) from error
        except BaseException:
            self._stack.close()
            raise
        self._parallel = self._stack.enter_context(parallel)
        return self  # the workers are kept between batches

    def __exit__(self, *exc: object) -> None:
        self._stack.__exit__(*exc)

    def run(self, simulator: Simulator, tasks: list[_Task]) -> Iterator[_Outcome]:
        from joblib import delayed

        call = delayed(_simulate_one)
        return self._parallel(call(simulator, t.ticket, t.theta, t.seed) for t in tasks)


class _RayEngine(_Engine):
    """Runs each task as a ray task (``ray.remote``), yielding outcomes as
    ``ray.wait`` reports them.

    Joblib's ray backend (``ray.util.joblib``) builds on joblib's
    multiprocessing backend, which cannot return results as they complete, so
    ray is driven through its own API. At most ``n_jobs`` tasks run at once
    (``-1``: the ray cluster's CPUs, read at each batch; ``-2``: one fewer...).
    Without a running ray (``ray.init`` not called), a local instance is
    started (or the cluster at ``RAY_ADDRESS`` joined) and shut down at the end.
    """

    def __init__(self, n_jobs: int, remote_args: Mapping[str, Any] | None = None) -> None:
        if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs == 0:
            raise InvalidInputError(f"n_jobs must be a non-zero integer; got {n_jobs!r}")
        self._n_jobs = int(n_jobs)
        self._remote_args = dict(remote_args or {})
        self._ray: Any = None
        self._remote: Any = None
        self._started_ray = False

    def __enter__(self) -> "_RayEngine":
        try:
            import ray
        except ImportError as error:
            raise InvalidInputError("backend='ray' needs ray: pip install 'mfask[ray]'") from error
        self._ray = ray
        if not ray.is_initialized():
            ray.init()
            self._started_ray = True
        remote = ray.remote(_simulate_one)
        self._remote = remote.options(**self._remote_args) if self._remote_args else remote
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started_ray:
            self._ray.shutdown()
            self._started_ray = False

    def _parallel_tasks(self) -> int:
        if self._n_jobs > 0:
            return self._n_jobs
        cpus = int(self._ray.cluster_resources().get("CPU", 1))
        return max(1, cpus + 1 + self._n_jobs)

    def run(self, simulator: Simulator, tasks: list[_Task]) -> Iterator[_Outcome]:
        ray = self._ray
        simulator_ref = ray.put(simulator)  # sent to the object store once per batch
        waiting = iter(tasks)
        running: list[Any] = []
        limit = self._parallel_tasks()

        def submit() -> None:
            for task in waiting:
                running.append(self._remote.remote(simulator_ref, task.ticket, task.theta, task.seed))
                if len(running) >= limit:
                    return

        try:
            submit()
            while running:
                ready, running[:] = ray.wait(running, num_returns=1)
                submit()  # keep the workers busy while this result is told
                yield ray.get(ready[0])
        finally:
            for ref in running:  # closed early (Ctrl-C): unfinished tasks are dropped
                ray.cancel(ref)


class _ExecutorEngine(_Engine):
    def __init__(self, executor: concurrent.futures.Executor) -> None:
        if not hasattr(executor, "submit"):
            raise InvalidInputError(
                f"executor must be a concurrent.futures.Executor; got {type(executor).__name__}"
            )
        self._executor = executor

    def run(self, simulator: Simulator, tasks: list[_Task]) -> Iterator[_Outcome]:
        futures = [self._executor.submit(_simulate_one, simulator, t.ticket, t.theta, t.seed) for t in tasks]
        try:
            for future in concurrent.futures.as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


# ================================================================ Ctrl-C
class _DeferredInterrupt:
    """Ctrl-C during a tell is held back until the tell has returned (so a
    result is never half-told); anywhere else it interrupts at once, as
    does a second Ctrl-C."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False
        self._deferring = False

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold back Ctrl-C for the ``with`` block; raise it afterwards."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self.requested:
            raise KeyboardInterrupt

    def __enter__(self) -> "_DeferredInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        if self._deferring and not self.requested:
            self.requested = True
            return
        raise KeyboardInterrupt
