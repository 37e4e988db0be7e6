"""Ctrl-C that comes after an ``mfask`` command has done its work.

Until then Ctrl-C (SIGINT) interrupts the command as usual: Python raises
``KeyboardInterrupt``, the study's open transaction rolls back and the
program exits with 130. Once the command starts writing its result (or its
error message), its work is done and its exit status decided. A Ctrl-C from
then on, while the last output is written or during the interpreter's
shutdown (which takes a noticeable time once torch is loaded, and in which
Python restores SIGINT's default action, killing the process), would make a
script see an interrupted command that in fact finished. So the program
ignores SIGINT from the moment its result starts going out until it exits.

Only the program itself does this: ``mfask.cli.main()`` with no arguments
(the console script, ``python -m mfask.cli``) runs inside ``guarding(True)``;
a caller of ``main(argv)`` in its own process keeps its signal handling.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

__all__ = ["guarding", "result_going_out"]

_guarding = False


@contextmanager
def guarding(enabled: bool) -> Iterator[None]:
    """Inside, :func:`result_going_out` makes the process ignore SIGINT; on
    leaving, the process ignores SIGINT until it exits (its exit status is
    decided by then). Does nothing unless ``enabled`` and called from the
    main thread (the only one that may set signal handlers)."""
    global _guarding
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    _guarding = True
    try:
        yield
    finally:
        _guarding = False
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def result_going_out() -> None:
    """The command has done its work and starts writing its result: under
    :func:`guarding`, ignore SIGINT from now on (SIG_IGN, which Python leaves
    in place through its shutdown)."""
    if _guarding:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
