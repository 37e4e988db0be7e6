"""Low-fidelity pre-training done once and reused, as a user would do it.

The low-fidelity (LF) pre-training of MF-NPE and of the sequential MF
methods depends only on the task, the LF budget, the seed and the method
settings: it draws parameters from the prior, simulates them at the lower
fidelities and trains the flow chain, before any high-fidelity (HF) run or
observation enters. A user with several observations, or trying several HF
budgets, pre-trains once, ``save``\\ s the posterior and ``load``\\ s it for each
use; the benchmark does the same, through :class:`PretrainingCache`.

A cache entry is the saved :class:`~mfask.posterior.MultiFidelityPosterior`
(``<digest>.npz``, written atomically by ``save``) plus a JSON record
(``<digest>.json``, :class:`PretrainingRecord`) of what building it cost:
simulation and training seconds, simulator runs, peak memory. Jobs that reuse
an entry charge that recorded cost in full, so per-job wall-clock figures are
what each job would have cost on its own.

The key is a hash of the task (name and settings), the LF budget, the seed,
the flow and training settings and the mfask version, so entries never mix
settings. Two processes that build the same entry at once both write the
same deterministic result; the last atomic write wins.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

__all__ = ["PretrainingRecord", "PretrainingCache", "pretraining_key"]


@dataclass(frozen=True)
class PretrainingRecord:
    """What one LF pre-training cost when it was built.

    Attributes:
        simulation_seconds: wall-clock seconds simulating the LF data.
        training_seconds: wall-clock seconds training the LF flow(s).
        simulations: LF simulator runs per fidelity name.
        peak_rss_mb: peak resident memory while building (``None`` if unknown).
        reused: ``True`` when this job loaded the entry instead of building it.
    """

    simulation_seconds: float
    training_seconds: float
    simulations: dict[str, int]
    peak_rss_mb: float | None = None
    reused: bool = False

    @property
    def seconds(self) -> float:
        """Simulation plus training seconds."""
        return self.simulation_seconds + self.training_seconds

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form (with ``seconds``)."""
        return {**asdict(self), "seconds": self.seconds}


def pretraining_key(task_name: str, task_settings: dict[str, Any], low: int, seed: int,
                    method_settings: dict[str, Any]) -> str:
    """The hex digest naming a cache entry (see the module docstring)."""
    import mfask

    identity = {"task": task_name, "task_settings": task_settings, "low": int(low),
                "seed": int(seed), "settings": method_settings, "mfask": mfask.__version__}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


class PretrainingCache:
    """A directory of pre-trained posteriors, built on first use.

    Arguments:
        directory: where entries live (created when the first is written).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def paths(self, key: str) -> tuple[Path, Path]:
        """The state file and the record file of entry ``key``."""
        return self.directory / f"{key}.npz", self.directory / f"{key}.json"

    def has(self, key: str) -> bool:
        """Whether entry ``key`` is complete (state and record written)."""
        state, record = self.paths(key)
        return state.is_file() and record.is_file()

    def get_or_build(
        self, key: str, build: Callable[[], tuple[Any, PretrainingRecord]]
    ) -> tuple[Path, PretrainingRecord]:
        """The state file of entry ``key`` and its record, building it first
        with ``build() -> (posterior, record)`` if missing. The record of a
        reused entry has ``reused=True``. The state is written before the
        record, so an entry interrupted mid-write is rebuilt."""
        state, record_path = self.paths(key)
        if self.has(key):
            stored = json.loads(record_path.read_text())
            stored.pop("seconds", None)
            return state, replace(PretrainingRecord(**stored), reused=True)
        posterior, record = build()
        self.directory.mkdir(parents=True, exist_ok=True)
        posterior.save(state)
        temporary = record_path.with_suffix(f".{os.getpid()}.{time.monotonic_ns()}.tmp")
        temporary.write_text(json.dumps(record.to_dict(), indent=1))
        os.replace(temporary, record_path)
        return state, record
