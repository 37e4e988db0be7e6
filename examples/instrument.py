"""A stand-in "instrument" for examples/instrument_loop.sh.

Reads the tickets that ``mfask ask`` wrote (CSV: ticket, fidelity, seed and
the named parameters), "measures" each one and writes a results CSV: the same
columns plus the outputs ``y1, y2, y3``, the measuring time ``cost`` and a
``reason`` when a measurement failed. A real instrument (or a cluster job)
would do the same with its own program; mfask only sees the two CSV files.

The stand-in: a damped oscillation with amplitude ``a`` and damping ``k``,
sampled at three times with measurement noise (seeded per ticket, so a
re-measurement of the same ticket gives the same reading). About 1 in 15
measurements fails ("detector saturated"), as real instruments do.

Run:  python examples/instrument.py tickets.csv results.csv
"""

from __future__ import annotations

import csv
import math
import random
import sys
import time


def measure(a: float, k: float, fidelity: str, rng: random.Random) -> list[float]:
    noise = 0.05 if fidelity == "high" else 0.2  # the "low" setting is a quick, noisy scan
    times = (0.5, 1.0, 2.0)
    return [a * math.exp(-k * t) * math.cos(3.0 * t) + rng.gauss(0.0, noise) for t in times]


def main(tickets_path: str, results_path: str) -> None:
    with open(tickets_path, newline="") as stream:
        tickets = list(csv.DictReader(stream))
    with open(results_path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["ticket", "y1", "y2", "y3", "cost", "reason"])
        for row in tickets:
            started = time.perf_counter()
            rng = random.Random(int(row["seed"]))
            time.sleep(0.01)  # the instrument takes its time
            if rng.random() < 1 / 15:
                writer.writerow([row["ticket"], "", "", "", f"{time.perf_counter() - started:.3f}",
                                 "detector saturated"])
                continue
            y = measure(float(row["a"]), float(row["k"]), row["fidelity"], rng)
            writer.writerow([row["ticket"], *y, f"{time.perf_counter() - started:.3f}", ""])


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[-1])
    main(sys.argv[1], sys.argv[2])
