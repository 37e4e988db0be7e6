"""Exceptions raised by mfask.

Every error that bad user input can cause is a subclass of :class:`MfaskError`
and of the built-in exception a Python user would expect (``ValueError``,
``KeyError``, ``OSError`` for the study's files), so ``except ValueError``
keeps working. When one of these is
raised from a public method the object's state is unchanged.
"""

from __future__ import annotations

__all__ = [
    "MfaskError",
    "InvalidInputError",
    "UnknownFidelityError",
    "UnknownTicketError",
    "TicketAlreadyToldError",
    "UnmatchedParametersError",
    "OutsidePriorError",
    "NotEnoughDataError",
    "LeakageError",
    "LeakageWarning",
    "StateFormatError",
    "IncompleteStudyError",
    "StudyLockedError",
    "StudyStorageError",
    "ReadOnlyStudyError",
    "OutputFileError",
    "DeviceUnavailableError",
]


class MfaskError(Exception):
    """Base class of all mfask errors."""


class InvalidInputError(MfaskError, ValueError):
    """An argument has the wrong type, shape or value."""


class UnknownFidelityError(MfaskError, KeyError):
    """A fidelity name that the posterior was not built with."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownTicketError(MfaskError, KeyError):
    """A ticket id that was never issued by ``ask``."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class TicketAlreadyToldError(MfaskError, ValueError):
    """A result arrived for a ticket that already has one."""


class UnmatchedParametersError(MfaskError, ValueError):
    """Told parameters that match no pending ticket, or more than one."""


class OutsidePriorError(MfaskError, ValueError):
    """Parameters outside the prior's support."""


class NotEnoughDataError(MfaskError, RuntimeError):
    """A posterior was requested before there are enough simulations to fit one."""


class StateFormatError(MfaskError, ValueError):
    """A saved state that is malformed, tampered with or of an unknown version."""


class IncompleteStudyError(StateFormatError):
    """A study file whose creation was interrupted (an empty file or database,
    or a study without its posterior's state, as older versions of mfask
    could leave when killed): it holds no data, opening it fails, and
    creating the study at its path again replaces it."""


class StudyLockedError(MfaskError, TimeoutError):
    """A study stayed locked by another process for longer than the timeout
    (its training lock, or its database while another process wrote)."""


class StudyStorageError(MfaskError, OSError):
    """The study's files could not be read or written as a call needed: a
    full disk, an I/O error, a file or folder that is not writable, a study
    file deleted or replaced while open, or a training lock file that is not
    mfask's (a symbolic link, another file). The message says what to do;
    the call changed nothing, in memory or in the file."""


class ReadOnlyStudyError(StudyStorageError):
    """A change was asked of a study that can only be read here (its file,
    folder or file system is not writable, or it was opened with
    ``read_only=True``). Reading still works: status, tickets, export, and
    samples from the trained models it holds."""


class OutputFileError(MfaskError, OSError):
    """A file the ``mfask`` command was told to write its result to (``-o``)
    cannot be written: its folder is missing or takes no new files, it is a
    folder or read-only, or the disk is full. The command checks all but the
    last before it changes the study (:mod:`mfask.output_file`)."""


class LeakageError(MfaskError, RuntimeError):
    """A posterior learnt in the ``"support"`` parameter space puts almost no
    mass inside the prior's support, so rejection sampling cannot draw from it."""


class LeakageWarning(UserWarning):
    """Rejection sampling in the ``"support"`` space accepts fewer than
    ``mfask.posterior_density.WARN_ACCEPTANCE`` of its draws at some observation: slow, and a sign
    that the posterior there is poorly learnt (an ``x`` unlike the training
    data, or too few simulations)."""


class MaxEpochsWarning(UserWarning):
    """Training stopped on ``TrainingConfig.max_epochs`` while the validation
    loss was still improving: the posterior may be under-trained (at worst
    close to the prior). Raise ``max_epochs``, or check the learning rate."""


class DeviceUnavailableError(MfaskError, RuntimeError):
    """The ``device=`` asked for does not exist on this machine (no CUDA GPU,
    a GPU index beyond those present, no Apple MPS)."""
