"""Training the members of one fidelity level, in parallel where it pays.

A level holds ``K`` flows (``K = 1`` for plain (MF-)NPE; ``K >= 2`` for an
ensemble, e.g. the acquisition ensemble of A-MF-TSNPE). Each member is
trained by :func:`mfask.training.train_flow` with its own seed; this module
only decides *where* the ``K`` trainings run and makes the result independent
of that choice.

**Together where possible.** Members of one architecture with the default
embedding and plain training (every ensemble, and the transfer guard's two
candidates, under the default settings) train in one batched loop
(:mod:`mfask.grouped_training`): the same per-member training, with each
step evaluating all members at once, so ``K`` members cost far less than
``K`` trainings (measured in ``docs/benchmarks/grouped_training.md``). The
rest of this docstring is about members that train one by one.

**One torch thread per member.** Every member is trained with torch's
intra-op thread pool limited to one thread (restored afterwards). Measured on
the project's 2-core machine while other jobs ran (load average 4 to 13):
training the default NSF on 100 rows for 10 epochs took 0.85 to 4.6 s with one
thread and 15 to 23 s with torch's default two threads, because the OpenMP
workers of tiny matrix products wait for cores that other processes hold.
The thread count also changes the last digits of the trained weights, so
fixing it to one makes training bitwise identical whether members run in
this process, in threads or in worker processes (checked), which keeps
``save``/``load`` reproducible.

**Threads or processes.** Measured for ``K = 5`` default flows on 100 rows,
50 epochs each, 2 workers, same machine: sequential 15 to 20 s, joblib threads
17 to 18 s (no gain: a spline flow of this size is thousands of tiny torch
calls per step, and the Python between them holds the GIL), loky processes
16.5 s with a warm worker pool and 32 s when the pool had to start (importing
torch in each worker took about 15 s under that load). So threads never pay,
and processes pay only when each member trains for long compared with the
start-up of the pool and there are idle cores. ``backend="auto"`` therefore
trains sequentially unless all of these hold: ``K >= 2``, at least two usable
CPUs, the 1-minute load average leaves at least one core idle, and the
previous fit of this level took at least ``PROCESS_MIN_SECONDS`` seconds per
member; then it uses loky with ``min(K, cpus)`` workers. The choice only
affects wall time, never the result.

Shapes: ``z`` is ``(n, d)`` float32 in unbounded space; ``x`` is
``(n, *x_shape)`` float32.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator, Literal, Sequence

import torch
from torch import Tensor

from mfask.errors import InvalidInputError
from mfask.estimator import ConditionalFlow
from mfask.fine_tuning import FineTuningStart
from mfask.grouped_training import can_train_together, train_flows_together
from mfask.training import EpochReport, TrainingConfig, TrainingHistory, train_flow

__all__ = ["Backend", "PROCESS_MIN_SECONDS", "choose_backend", "train_members", "one_torch_thread"]

Backend = Literal["auto", "grouped", "sequential", "threading", "loky"]

#: seconds per member (measured at the level's previous fit) from which
#: ``backend="auto"`` trains members in worker processes
PROCESS_MIN_SECONDS = 20.0

Progress = Callable[[EpochReport], None] | None


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Limit torch's intra-op thread pool to one thread inside the block."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def choose_backend(num_members: int, seconds_per_member: float | None) -> Literal["sequential", "loky"]:
    """Where ``backend="auto"`` trains ``num_members`` members (see the module docstring).

    Arguments:
        num_members: ``K``.
        seconds_per_member: mean training time of one member at this level's
            previous fit, or ``None`` if the level was never trained.
    """
    cpus = _usable_cpus()
    if num_members < 2 or cpus < 2 or seconds_per_member is None:
        return "sequential"
    if seconds_per_member < PROCESS_MIN_SECONDS:
        return "sequential"
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return "loky" if load <= cpus - 1 else "sequential"


def _train_one(
    member: ConditionalFlow,
    z: Tensor,
    x: Tensor,
    config: TrainingConfig,
    seed: int,
    progress: Progress,
    fine_tuning: FineTuningStart | None,
) -> tuple[ConditionalFlow, TrainingHistory]:
    """Train one member with one torch thread; returns the member (a copy when
    run in a worker process) and its history."""
    with one_torch_thread():
        history = train_flow(member, z, x, config, seed=seed, progress=progress, fine_tuning=fine_tuning)
    return member, history


def train_members(
    members: Sequence[ConditionalFlow],
    z: Tensor,
    x: Tensor,
    config: TrainingConfig,
    seeds: Sequence[int],
    *,
    backend: Backend = "auto",
    seconds_per_member: float | None = None,
    progress: Sequence[Progress] | None = None,
    fine_tuning: Sequence[FineTuningStart | None] | None = None,
) -> tuple[list[ConditionalFlow], list[TrainingHistory]]:
    """Train every member on the same data, member ``k`` with ``seeds[k]``.

    Arguments:
        members: ``K`` flows whose standardisation is set (warm-started or fresh).
        z: ``(n, d)`` float32 parameters in unbounded space.
        x: ``(n, *x_shape)`` float32 simulator outputs.
        config: the training loop's settings.
        seeds: ``K`` seeds (validation split and batch order of each member).
        backend: ``"auto"``: ``"grouped"`` where
            :func:`~mfask.grouped_training.can_train_together` accepts the
            members, else as :func:`choose_backend` decides; ``"grouped"``
            (all members in one batched loop, see :mod:`mfask.grouped_training`),
            ``"sequential"``, ``"threading"`` or ``"loky"``. The trained
            weights are identical for the last three, and equal to
            ``"grouped"``'s up to floating-point rounding.
        seconds_per_member: the previous fit's time per member, for ``"auto"``.
        progress: per member, an optional per-epoch callback. Worker
            processes cannot call back into this process, so with ``"loky"``
            the callbacks are not called.
        fine_tuning: per member, how it fine-tunes pre-trained weights
            (:class:`~mfask.fine_tuning.FineTuningStart`) or ``None`` for
            plain training; ``None`` for all: plain training of every member.

    Returns:
        The trained members (the same objects, except with ``"loky"`` where
        they are trained copies) and their histories, in member order.
    """
    count = len(members)
    if len(seeds) != count:
        raise InvalidInputError(f"need one seed per member: {count} members, {len(seeds)} seeds")
    callbacks: list[Progress] = list(progress) if progress is not None else [None] * count
    if len(callbacks) != count:
        raise InvalidInputError(f"need one progress callback (or None) per member; got {len(callbacks)}")
    starts: list[FineTuningStart | None] = list(fine_tuning) if fine_tuning is not None else [None] * count
    if len(starts) != count:
        raise InvalidInputError(f"need one fine-tuning start (or None) per member; got {len(starts)}")
    on_accelerator = any(member.device.type != "cpu" for member in members)
    if backend in ("auto", "grouped") and can_train_together(members, starts):
        with one_torch_thread():
            histories = train_flows_together(members, z, x, config, [int(s) for s in seeds], callbacks)
        return list(members), histories
    if backend == "grouped":
        raise InvalidInputError("backend='grouped' needs at least two members of one architecture with "
                                "the default embedding and plain training (no L2-SP, no frozen trunk)")
    if backend == "auto":
        # worker processes share no GPU context: members on a GPU train here
        backend = "sequential" if on_accelerator else choose_backend(count, seconds_per_member)
    if backend == "loky" and on_accelerator:
        raise InvalidInputError("backend='loky' trains on the CPU only; members on a GPU train "
                                "with 'sequential' or 'threading'")
    if backend not in ("sequential", "threading", "loky"):
        raise InvalidInputError(
            f"backend must be 'auto', 'grouped', 'sequential', 'threading' or 'loky'; got {backend!r}"
        )
    if backend == "sequential" or count == 1:
        results = [
            _train_one(member, z, x, config, int(seed), callback, start)
            for member, seed, callback, start in zip(members, seeds, callbacks, starts)
        ]
    else:
        from joblib import Parallel, delayed

        if backend == "loky":
            callbacks = [None] * count
        workers = min(count, max(_usable_cpus(), 1))
        results = Parallel(n_jobs=workers, backend=backend)(
            delayed(_train_one)(member, z, x, config, int(seed), callback, start)
            for member, seed, callback, start in zip(members, seeds, callbacks, starts)
        )
    trained = [member for member, _ in results]
    histories = [history for _, history in results]
    return trained, histories
