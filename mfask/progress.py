"""Plain progress lines on standard error for long simulation runs.

One line at most every ``interval`` seconds (and a last one when done)::

    [mfask] low: 120/1000 told (3 failed), 5.2/s, ETA 2m49s

Lines rather than a redrawn bar, so the output reads the same in a terminal,
a log file and a cluster job's output.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress", "format_duration"]


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
        total: how many results are wanted in all.
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
        self._already = already
        self._interval = interval
        self._stream = stream
        self._started = time.monotonic()
        self._last_line = self._started  # the first line after one interval

    @property
    def rate(self) -> float:
        """Results per second in this run."""
        elapsed = time.monotonic() - self._started
        return (self.told - self._already) / elapsed if elapsed > 0 else 0.0

    def update(self, told: int = 1, failed: int = 0) -> None:
        """Count new results; print a line if ``interval`` has passed."""
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
        if rate > 0:
            parts.append(f"{rate:.3g}/s")
            remaining = max(0, self.total - self.told)
            parts.append(f"ETA {format_duration(remaining / rate)}" if remaining else "finished")
        return ", ".join(parts)

    def show(self, suffix: str = "") -> None:
        """Print the current line now (unless printing is off)."""
        if self._interval is None:
            return
        self._last_line = time.monotonic()
        print(self.line() + suffix, file=self._stream or sys.stderr, flush=True)
