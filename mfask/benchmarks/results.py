"""The benchmark results file: one JSON object per line (JSON Lines).

Each finished job appends one line and flushes it to disk at once, so an
interrupted run loses at most the jobs that were running. Reading tolerates a
torn last line (a crash mid-write): it is skipped with a warning, and the next
append starts on a fresh line.

A row always has ``"key"`` (the job's identity) and ``"status"`` (``"ok"`` or
``"error"``); the other fields are described in
``docs/benchmarks/methods.md``. Only ``"ok"`` rows count as done: failed jobs
run again on the next start.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterable

__all__ = ["append_row", "read_rows", "completed_keys"]


def append_row(path: str | os.PathLike[str], row: dict[str, Any]) -> None:
    """Append ``row`` as one line to ``path`` (created with its folder if
    missing) and flush it to disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(row, sort_keys=True)
    with open(path, "a+b") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() > 0:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":  # a torn line from an interrupted write
                handle.write(b"\n")
        handle.write(line.encode() + b"\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_rows(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """All rows of one or more results files, in file order; missing files
    give no rows; lines that are not a JSON object with a ``"key"`` are
    skipped with a warning."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    rows: list[dict[str, Any]] = []
    for path in map(Path, paths):
        if not path.exists():
            continue
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    row = None
                if not isinstance(row, dict) or "key" not in row:
                    warnings.warn(f"{path}:{number}: skipping a line that is not a result row "
                                  "(an interrupted write?)", stacklevel=2)
                    continue
                rows.append(row)
    return rows


def completed_keys(path: str | os.PathLike[str]) -> set[str]:
    """Keys of the jobs that finished successfully in ``path``."""
    return {row["key"] for row in read_rows(path) if row.get("status") == "ok"}
