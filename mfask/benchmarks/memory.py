"""Peak resident memory of a piece of work in this process.

On Linux :func:`reset_peak_memory` clears the process's peak resident set
size (``/proc/self/clear_refs``) so that :func:`peak_memory_mb` reads the
peak of the work since (``VmHWM``). Elsewhere the reading falls back to
``resource.getrusage``: the process's lifetime peak; the scope string says
which one a reading is.
"""

from __future__ import annotations

import sys

__all__ = ["reset_peak_memory", "peak_memory_mb"]


def reset_peak_memory() -> str:
    """Reset the process's peak RSS if the OS allows; returns the scope the
    next :func:`peak_memory_mb` reading covers (``"job"`` or ``"process"``)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return "job"
    except OSError:
        return "process"


def peak_memory_mb(scope: str) -> float:
    """Peak resident set size in MB since the reset (``"job"``) or since the
    process started (``"process"``)."""
    if scope == "job":
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0
