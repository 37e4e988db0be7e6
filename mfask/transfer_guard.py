"""The transfer guard: a fine-tuned level is never trusted blindly.

MF-NPE starts a level from the weights of the level below and fine-tunes
them on the level's own data. When the lower fidelity is useless (its output
carries no information about the parameters) or misleading (its posterior
excludes the truth), that start can leave the fine-tuned network worse than
one trained on the level's data alone, i.e. worse than plain NPE. The guard
trains both candidates on the same data:

* the **fine-tuned** members (from the lower level's weights, or from this
  level's previous fine-tuned weights), and
* the same number of **HF-only** members (fresh weights, or this level's
  previous HF-only weights), i.e. what NPE would train.

Before training, a **guard share** of the level's rows (the training
config's ``validation_fraction``, at least one row) is set aside: neither
candidate trains on it or early-stops on it, so it scores both without the
optimism of rows that chose the early-stopping epoch. On those ``m`` rows the
guard compares the candidates (each as the equal-weight mixture of its
members) pairwise: ``d_i = -log q_fine(z_i | x_i) + log q_hf(z_i | x_i)``,
with mean ``d`` and standard error ``se = sd(d_i) / sqrt(m)``.

* ``d < -t * se``: the fine-tuned members are clearly better: keep them.
* ``d > t * se``: the HF-only members are clearly better: keep them.
* otherwise (a tie within noise, including fewer than ``MIN_ROWS`` rows):
  **blend**: the posterior is the equal-weight mixture of both candidates'
  members.

Here ``t`` is the two-sided ``1 - ALPHA`` quantile of Student's t with
``m - 1`` degrees of freedom (2.78 at 5 rows, 2.26 at 10, 2.02 at 40, 1.96
in the limit): a paired t-test at level ``ALPHA = 0.05``.

Why this rule. Selecting the lower validation loss outright would select on
noise at the small budgets MF-NPE is for (5 held-out rows at 50
simulations). Two equally good networks pass the test only ``ALPHA`` of the
time; with a handful of rows the t quantile, not the normal one, gives that
rate (the standard error itself is estimated from those rows). On a tie the
mixture is the safe answer: its log-density is never below ``log(1/2)`` plus
the better candidate's, so on every row it is within ``log 2`` nats of the
better network, and when both are good it acts as an ensemble of two. Why a
separate share: the rows that chose a network's early-stopping epoch score
it optimistically, and not by the same amount for both candidates (a
fine-tuned network scored a nat better on them than on test data, see
``docs/transfer_guard.md``).

Shapes: ``z`` is ``(n, d)`` float32 in flow space; ``x`` is
``(n, *x_shape)`` float32.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from scipy.stats import t as student_t
from torch import Tensor

from mfask.estimator import ConditionalFlow
from mfask.training import negative_log_probs, validation_split
from mfask.transfer_choice import CHOICES, Chosen, TransferChoice

__all__ = [
    "TransferChoice", "Chosen", "CHOICES", "ALPHA", "MIN_ROWS", "critical_value", "choose",
    "guard_share", "mixture_negative_log_probs", "compare_candidates",
]

#: level of the paired t-test one candidate must pass to be chosen alone
ALPHA = 0.05
#: below this many held-out rows the guard always blends (no usable standard error)
MIN_ROWS = 3


def critical_value(num_rows: int) -> float:
    """Standard errors by which one candidate must beat the other on
    ``num_rows`` paired rows: the two-sided ``1 - ALPHA`` Student-t quantile
    with ``num_rows - 1`` degrees of freedom (``inf`` below 2 rows)."""
    if num_rows < 2:
        return math.inf
    return float(student_t.ppf(1.0 - ALPHA / 2.0, num_rows - 1))


def choose(fine_tuned: Tensor, hf_only: Tensor) -> TransferChoice:
    """Apply the guard's rule to per-row held-out losses of both candidates.

    Arguments:
        fine_tuned: ``(m,)`` ``-log q`` of the fine-tuned members on their
            held-out rows.
        hf_only: ``(m,)`` the same rows under the HF-only members.

    A candidate with a non-finite loss (a diverged network) loses to one whose
    losses are all finite; if both have one, the guard blends.
    """
    fine_tuned, hf_only = fine_tuned.double(), hf_only.double()
    rows = int(fine_tuned.shape[0])
    fine_ok, hf_ok = bool(torch.isfinite(fine_tuned).all()), bool(torch.isfinite(hf_only).all())
    fine_loss = float(fine_tuned.mean()) if fine_ok else math.inf
    hf_loss = float(hf_only.mean()) if hf_ok else math.inf
    if not (fine_ok and hf_ok):
        chosen: Chosen = "hf-only" if hf_ok else "fine-tuned" if fine_ok else "blend"
        return TransferChoice(chosen, fine_loss, hf_loss, math.nan, math.nan, rows)
    differences = fine_tuned - hf_only
    difference = float(differences.mean())
    error = float(differences.std(unbiased=True) / math.sqrt(rows)) if rows >= 2 else math.inf
    threshold = critical_value(rows)
    if rows < MIN_ROWS:
        chosen = "blend"
    elif difference < -threshold * error:
        chosen = "fine-tuned"
    elif difference > threshold * error:
        chosen = "hf-only"
    else:
        chosen = "blend"
    return TransferChoice(chosen, fine_loss, hf_loss, difference, error, rows)


def guard_share(num_rows: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split a level's ``num_rows`` rows into the guard share and the rows
    both candidates train on: ``(guard (g,), fit (num_rows - g,))`` int64
    indices, ``g = max(1, round(fraction * num_rows))`` drawn at random with
    ``seed``; no guard rows (``g = 0``) when fewer than 2 rows would be left
    to train on."""
    split = validation_split(num_rows, fraction, seed)
    if num_rows - split.validation.shape[0] < 2:
        return torch.zeros(0, dtype=torch.int64), torch.arange(num_rows)
    return split.validation, split.train


def mixture_negative_log_probs(members: Sequence[ConditionalFlow], z: Tensor, x: Tensor) -> Tensor:
    """``-log((1/K) sum_k q_k(z_i | x_i))`` per row, ``(n,)``: the loss of a
    candidate's ``K`` members as the equal-weight mixture they form."""
    log_q = -torch.stack([negative_log_probs(member, z, x) for member in members])  # (K, n)
    return -(torch.logsumexp(log_q, dim=0) - math.log(len(members)))


def compare_candidates(
    fine_tuned: Sequence[ConditionalFlow],
    hf_only: Sequence[ConditionalFlow],
    z_guard: Tensor,
    x_guard: Tensor,
) -> TransferChoice:
    """Score both candidates on the guard share and choose.

    Arguments:
        fine_tuned: ``K`` trained fine-tuned members.
        hf_only: ``K`` trained HF-only members.
        z_guard: ``(g, d)`` the guard share's parameters (flow space), rows
            neither candidate trained or early-stopped on.
        x_guard: ``(g, *x_shape)`` their outputs.
    """
    return choose(mixture_negative_log_probs(fine_tuned, z_guard, x_guard),
                  mixture_negative_log_probs(hf_only, z_guard, x_guard))
