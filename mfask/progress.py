"""Plain progress lines on standard error for long simulation runs.

One line at most every ``interval`` seconds (and a last one when done)::

    [mfask] low: 120/1000 told (3 failed), 2 retried, 5.2/s, ETA 2m49s

Lines rather than a redrawn bar, so the output reads the same in a terminal,
a log file and a cluster job's output.

* ``told`` counts the results toward the total (the budget); results of
  retries are counted apart (``retried``, with those that failed again), so
  the told count never exceeds the total.
* The rate is measured from the arrival of this run's first result (so the
  start-up of workers before it does not count) and covers every result,
  retries included. It and the ETA are shown only once the estimate means
  something: at least :data:`MIN_RESULTS_FOR_RATE` results of this run and
  :data:`MIN_SECONDS_FOR_RATE` seconds since the first one.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["MIN_RESULTS_FOR_RATE", "MIN_SECONDS_FOR_RATE", "Progress", "format_duration"]

MIN_RESULTS_FOR_RATE = 5
"""Results of this run needed before a rate and an ETA are shown."""

MIN_SECONDS_FOR_RATE = 2.0
"""Seconds since this run's first result needed before a rate and an ETA are shown."""


def format_duration(seconds: float) -> str:
    """``3725`` -> ``"1h02m05s"``; ``42.5`` -> ``"42s"``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Progress:
    """Counts told results of one task and prints rate and ETA.

    Arguments:
        label: what is counted (e.g. the fidelity name).
        total: how many results are wanted in all (retries aside).
        already: results that existed before this run (counted as told, not
            in the rate).
        interval: seconds between lines; ``None`` prints nothing.
        stream: where lines go (standard error by default).
    """

    def __init__(
        self,
        label: str,
        total: int,
        *,
        already: int = 0,
        interval: float | None = 5.0,
        stream: TextIO | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.told = already
        self.failed = 0
        self.retried = 0
        self.retried_failed = 0
        self._interval = interval
        self._stream = stream
        self._results = 0  # of this run, retries included
        self._first_result: float | None = None  # when this run's first result came
        self._last_line = time.monotonic()  # the first line after one interval

    @property
    def rate(self) -> float | None:
        """Results per second since this run's first result (retries
        included), or ``None`` while too few results have come to say (see
        the module's description)."""
        if self._first_result is None or self._results < MIN_RESULTS_FOR_RATE:
            return None
        elapsed = time.monotonic() - self._first_result
        if elapsed < MIN_SECONDS_FOR_RATE:
            return None
        return (self._results - 1) / elapsed  # the first result opens the clock

    def update(self, told: int = 1, failed: int = 0, *, retries: bool = False) -> None:
        """Count new results, ``failed`` of them failed; ``retries``: they are
        results of retries (counted apart from the total). Prints a line if
        ``interval`` has passed."""
        if told and self._first_result is None:
            self._first_result = time.monotonic()
        self._results += told
        if retries:
            self.retried += told
            self.retried_failed += failed
        else:
            self.told += told
            self.failed += failed
        if self._interval is not None and time.monotonic() - self._last_line >= self._interval:
            self.show()

    def line(self) -> str:
        """The current progress line."""
        rate = self.rate
        parts = [f"[mfask] {self.label}: {self.told}/{self.total} told"]
        if self.failed:
            parts[0] += f" ({self.failed} failed)"
        if self.retried:
            parts.append(f"{self.retried} retried")
            if self.retried_failed:
                parts[-1] += f" ({self.retried_failed} failed again)"
        if rate is not None and rate > 0:
            parts.append(f"{rate:.3g}/s")
            remaining = self.total - self.told
            if remaining > 0:  # at 0, retries may still be running: no ETA to give
                parts.append(f"ETA {format_duration(remaining / rate)}")
        return ", ".join(parts)

    def show(self, suffix: str = "") -> None:
        """Print the current line now (unless printing is off)."""
        if self._interval is None:
            return
        self._last_line = time.monotonic()
        print(self.line() + suffix, file=self._stream or sys.stderr, flush=True)
