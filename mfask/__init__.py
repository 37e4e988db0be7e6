"""mfask: multi-fidelity simulation-based inference with an ask/tell API.

The entry point is :class:`MultiFidelityPosterior`::

    prior = mfask.BoxUniform(low=[0.1, 0.1], high=[3.0, 0.6], names=["mu", "sigma"])
    post = mfask.MultiFidelityPosterior(prior, fidelities=["low", "high"], seed=0)
    batch = post.ask("low", 1000)
    post.tell(batch, my_cheap_simulator(batch.theta))
    ...
    samples = post.sample(1000, x=x_o)
"""

import importlib
from typing import Any

# Public names and the modules that define them. They are imported on first
# use (PEP 562), so that ``import mfask`` and the ``mfask`` command's
# bookkeeping (tell, status, export) do not import torch.
_EXPORTS = {
    "mfask.errors": (
        "DeviceUnavailableError", "IncompleteStudyError", "InvalidInputError", "LeakageError",
        "LeakageWarning", "MaxEpochsWarning", "MfaskError",
        "NotEnoughDataError",
        "OutsidePriorError", "ReadOnlyStudyError", "StateFormatError", "StudyLockedError",
        "StudyStorageError", "TicketAlreadyToldError",
        "UnknownFidelityError", "UnknownTicketError", "UnmatchedParametersError",
    ),
    "mfask.acquisition": ("AcquisitionConfig",),
    "mfask.estimator": ("FlowConfig",),
    "mfask.fidelity": ("Fidelity",),
    "mfask.fine_tuning": ("FineTuningConfig",),
    "mfask.posterior": ("MultiFidelityPosterior",),
    "mfask.ticket_book": ("SimulationFailedWarning", "TellResult"),
    "mfask.priors": ("BoxUniform", "IndependentPrior", "Prior", "prior_from_spec"),
    "mfask.runner": ("RunReport", "run"),
    "mfask.sequential": ("RoundInfo", "SequentialWarning"),
    "mfask.study": ("Study", "create_study", "open_study"),
    "mfask.tickets": ("AskBatch",),
    "mfask.training": ("TrainingConfig", "TrainingHistory"),
    "mfask.transfer_choice": ("TransferChoice",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "MultiFidelityPosterior",
    "Study",
    "create_study",
    "open_study",
    "run",
    "RunReport",
    "AskBatch",
    "TellResult",
    "Fidelity",
    "Prior",
    "BoxUniform",
    "IndependentPrior",
    "prior_from_spec",
    "FlowConfig",
    "TrainingConfig",
    "TrainingHistory",
    "FineTuningConfig",
    "TransferChoice",
    "AcquisitionConfig",
    "RoundInfo",
    "SequentialWarning",
    "SimulationFailedWarning",
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
    "MaxEpochsWarning",
    "StateFormatError",
    "IncompleteStudyError",
    "StudyLockedError",
    "StudyStorageError",
    "ReadOnlyStudyError",
    "DeviceUnavailableError",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Import a public name (or a submodule, ``mfask.study``...) on first use."""
    module = _MODULE_OF.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    else:
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
