"""A progress bar on standard error while a level's networks train.

Training is what a user waits for between simulations, so a call that trains
(``fit``, ``sample``, ``posterior``, a sequential ``ask``) shows how it goes::

    [mfask] training high (2 networks, 180 simulations): 143 epochs [00:09, 15.2 epochs/s]
        network 1: epoch 57, validation 1.2345 (best 1.2001 at 41), stops in 4 to 9943 epochs

The bar counts epochs over all networks of the fit. Its postfix is the
latest epoch's report: how many epochs remain at least (the early-stopping
patience left) and at most (``max_epochs``), which bounds the wait both
ways. Work shorter than :data:`SHOW_AFTER_SECONDS` prints nothing; longer
work leaves its last line as a summary. In a terminal the bar redraws in
place; into a file or a job log it writes whole lines, one at most every
:data:`LOG_INTERVAL_SECONDS`. ``verbose=False`` on the posterior (``--quiet``
on the command line) turns it off.
"""

from __future__ import annotations

import sys
import threading
from typing import Callable, Sequence, TextIO

from tqdm import tqdm

from mfask.training import EpochReport, TrainingConfig, TrainingHistory

__all__ = ["TrainingProgress", "LineStream", "SHOW_AFTER_SECONDS", "LOG_INTERVAL_SECONDS"]

#: a bar appears only once training has taken this long
SHOW_AFTER_SECONDS = 1.0
#: the least time between two lines when standard error is not a terminal
LOG_INTERVAL_SECONDS = 10.0


class TrainingProgress:
    """The bar of one level's fit; a context manager.

    Arguments:
        label: what trains (e.g. ``"high"``).
        network_labels: one label per network trained (``"network 1"``,
            ``"HF-only 1"``...).
        num_rows: rows each network trains on.
        config: the training loop's settings (patience and epoch cap).
        enabled: ``False`` shows nothing (every method is then a no-op).
        stream: where the bar goes (standard error by default).
    """

    def __init__(
        self,
        label: str,
        network_labels: Sequence[str],
        num_rows: int,
        config: TrainingConfig,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self._network_labels = list(network_labels)
        self._config = config
        self._lock = threading.Lock()  # members may train in threads
        self._bar: tqdm | None = None
        if enabled:
            stream = stream or sys.stderr
            terminal = _is_terminal(stream)
            count = len(self._network_labels)
            networks = f"{count} networks, " if count > 1 else ""
            self._bar = tqdm(
                desc=f"[mfask] training {label} ({networks}{num_rows} simulations)",
                unit=" epochs",
                file=stream if terminal else LineStream(stream),
                delay=SHOW_AFTER_SECONDS,
                mininterval=0.5 if terminal else LOG_INTERVAL_SECONDS,
                bar_format="{desc}: {n} epochs [{elapsed}, {rate_fmt}]{postfix}",
                dynamic_ncols=True,
                leave=True,
            )

    def callback(self, network: int) -> Callable[[EpochReport], None] | None:
        """The per-epoch callback of network ``network`` (``None`` when disabled)."""
        if self._bar is None:
            return None
        name = self._network_labels[network]

        def report(epoch: EpochReport) -> None:
            with self._lock:
                assert self._bar is not None
                self._bar.set_postfix_str(self._describe(name, epoch), refresh=False)
                self._bar.update(1)

        return report

    def _describe(self, name: str, epoch: EpochReport) -> str:
        """``"network 1: epoch 57, validation 1.2345 (best 1.2001 ...), stops in 4 to 9943 epochs"``."""
        done = epoch.epoch + 1
        at_least = max(0, self._config.stop_after_epochs - epoch.epochs_since_improvement)
        at_most = max(0, self._config.max_epochs - done)
        best_epoch = done - epoch.epochs_since_improvement
        return (
            f"{name}: epoch {done}, validation {epoch.validation_loss:.4f} "
            f"(best {epoch.best_validation_loss:.4f} at {best_epoch}), "
            f"stops in {min(at_least, at_most)} to {at_most} epochs"
        )

    def finish(self, histories: Sequence[TrainingHistory]) -> None:
        """Show the total and close; ``histories`` are the networks' (in order)."""
        if self._bar is None:
            return
        with self._lock:
            total = sum(history.epochs for history in histories)
            if total > self._bar.n:  # members trained in processes report no epochs
                self._bar.update(total - self._bar.n)
            capped = sum(not history.stopped_early for history in histories)
            ending = "stopped early" if not capped else f"{capped} hit max_epochs={self._config.max_epochs}"
            self._bar.set_postfix_str(ending, refresh=False)
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        """Close without a summary (e.g. training was interrupted)."""
        if self._bar is not None:
            with self._lock:
                self._bar.close()
                self._bar = None

    def __enter__(self) -> "TrainingProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LineStream:
    """A text stream for tqdm that writes each redraw as its own line.

    tqdm redraws a bar in place with a carriage return, which a log file or a
    job's output keeps as one ever-growing line; this writes every redraw as a
    complete line instead (and drops the blank ones).
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").rstrip()
        if line:
            self._stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self._stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
