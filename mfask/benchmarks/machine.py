"""One line that says which machine a benchmark ran on.

Every benchmark page quotes it next to its numbers, so that a reader can tell
how comparable two measurements are (the development machines are shared, so
the load average is part of the description).
"""

from __future__ import annotations

import os
import platform
import subprocess

import numpy as np
import torch

__all__ = ["describe_machine"]


def describe_machine() -> str:
    """CPU count, CPU model (from ``lscpu``), software versions, torch threads
    and the load average at the time of the call."""
    cpu = platform.processor() or "unknown CPU"
    try:
        listing = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        cpu = next(
            (line.split(":", 1)[1].strip() for line in listing.splitlines()
             if line.startswith("Model name")),
            cpu,
        )
    except (OSError, subprocess.SubprocessError):
        pass
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (
        f"{os.cpu_count()} cores ({cpu}); Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), numpy {np.__version__}; "
        f"load average {load} (1, 5, 15 min)"
    )
