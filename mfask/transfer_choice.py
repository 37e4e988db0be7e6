"""The transfer guard's recorded decision: :class:`TransferChoice`.

The guard itself (:mod:`mfask.transfer_guard`) scores networks with torch;
its decision is plain data, stored with each trained level and shown by
``mfask status``. It lives here, apart from the guard, so that reading a
study's decisions does not import torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

from mfask.errors import StateFormatError

__all__ = ["TransferChoice", "Chosen", "CHOICES"]

Chosen = Literal["fine-tuned", "hf-only", "blend"]
#: the guard's possible decisions
CHOICES: tuple[str, ...] = ("fine-tuned", "hf-only", "blend")


@dataclass(frozen=True)
class TransferChoice:
    """What the guard decided at one fit of a level, and on what evidence.

    Attributes:
        chosen: ``"fine-tuned"``, ``"hf-only"`` or ``"blend"``.
        fine_tuned_loss: mean held-out ``-log q`` of the fine-tuned members.
        hf_only_loss: the same for the HF-only members.
        difference: mean paired difference, fine-tuned minus HF-only
            (negative: the fine-tuned members are better).
        standard_error: standard error of ``difference``.
        num_rows: held-out rows compared (pooled over members).
    """

    chosen: Chosen
    fine_tuned_loss: float
    hf_only_loss: float
    difference: float
    standard_error: float
    num_rows: int

    def to_dict(self) -> dict[str, object]:
        """JSON-compatible form (non-finite numbers as ``None``)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: object) -> "TransferChoice":
        """Inverse of :meth:`to_dict`; raises :class:`StateFormatError` on bad input."""
        if not isinstance(values, dict) or values.get("chosen") not in CHOICES:
            raise StateFormatError(f"malformed transfer choice: {values!r}")
        try:
            floats = {name: math.nan if values.get(name) is None else float(values[name])
                      for name in ("fine_tuned_loss", "hf_only_loss", "difference", "standard_error")}
            rows = values["num_rows"]
            if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
                raise ValueError("num_rows must be a non-negative integer")
        except (KeyError, TypeError, ValueError) as error:
            raise StateFormatError(f"malformed transfer choice: {error}") from None
        return cls(chosen=values["chosen"], num_rows=rows, **floats)
