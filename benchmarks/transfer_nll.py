"""NPE against MF-NPE on the same HF data, by held-out HF NLL, per setting.

The experiment behind the transfer table of ``docs/conditional_standardization.md``:
for each seed, one HF training set, one LF set and 1000 held-out
prior-predictive HF pairs; per setting, NPE (HF only) and MF-NPE (LF
pre-training, then fine-tuning) are trained on them and scored by the mean
of ``-log q(theta | x)`` over the held-out pairs. Prints one line per seed.

Usage (from the repository root)::

    python benchmarks/transfer_nll.py TASK LOW HIGH SEEDS SETTINGS [FIRST_SEED] [npe]

e.g. ``python benchmarks/transfer_nll.py ou 2000 50 2 old,new,new-keep``;
SETTINGS is a comma-separated subset of :data:`SETTINGS`; a trailing ``npe``
trains NPE only.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from mfask import FlowConfig, MultiFidelityPosterior
from mfask.benchmarks.tasks import get_task

#: settings by name: keyword arguments of MultiFidelityPosterior
SETTINGS: dict[str, dict[str, Any]] = {
    "new": {},
    "new-keep": {"transfer_standardization": "keep"},
    "support-marginal": {"flow": FlowConfig(conditional_standardization=False)},
    "unbounded-linear": {"parameter_space": "unbounded"},
    "old": {"parameter_space": "unbounded", "flow": FlowConfig(conditional_standardization=False)},
}


def held_out_nll(post: MultiFidelityPosterior, theta: np.ndarray, x: np.ndarray) -> float:
    """Mean of ``-log q(theta_i | x_i)`` over held-out pairs ``theta (n, d)``, ``x (n, p)``."""
    return float(-post.log_prob_batched(theta[:, None, :], x).mean())


def main() -> None:
    name, low, high, seeds, which = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    first = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    npe_only = len(sys.argv) > 7 and sys.argv[7] == "npe"
    task = get_task(name)
    for seed in range(first, first + seeds):
        rng = np.random.default_rng(seed)
        test_theta = task.sample_prior(1000, np.random.default_rng(100 + seed))
        test_x = task.simulate(test_theta, "high", np.random.default_rng(200 + seed))
        high_theta = task.sample_prior(high, rng)
        high_x = task.simulate(high_theta, "high", rng)
        low_theta = task.sample_prior(low, rng)
        low_x = task.simulate(low_theta, "low", rng)
        scores: dict[str, float] = {}
        for setting in which.split(","):
            options = SETTINGS[setting]
            started = time.perf_counter()
            if setting != "new-keep":  # NPE does not transfer: same as "new"
                npe = MultiFidelityPosterior(task.prior, ["high"], seed=seed, **options)
                npe.tell(high_theta, high_x, "high", unasked="prior")
                scores[f"{setting}:npe"] = held_out_nll(npe, test_theta, test_x)
            if not npe_only:
                mf = MultiFidelityPosterior(task.prior, ["low", "high"], seed=seed, **options)
                mf.tell(low_theta, low_x, "low", unasked="prior")
                mf.tell(high_theta, high_x, "high", unasked="prior")
                scores[f"{setting}:mf"] = held_out_nll(mf, test_theta, test_x)
            scores[f"{setting}:seconds"] = time.perf_counter() - started
        print(seed, {key: round(value, 3) for key, value in scores.items()}, flush=True)


if __name__ == "__main__":
    main()
