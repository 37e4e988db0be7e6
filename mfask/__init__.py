"""mfask: multi-fidelity simulation-based inference with an ask/tell API.

The entry point is :class:`MultiFidelityPosterior`::

    prior = mfask.BoxUniform(low=[0.1, 0.1], high=[3.0, 0.6], names=["mu", "sigma"])
    post = mfask.MultiFidelityPosterior(prior, fidelities=["low", "high"], seed=0)
    batch = post.ask("low", 1000)
    post.tell(batch, my_cheap_simulator(batch.theta))
    ...
    samples = post.sample(1000, x=x_o)
"""

from mfask.errors import (
    InvalidInputError,
    LeakageError,
    LeakageWarning,
    MaxEpochsWarning,
    MfaskError,
    NotEnoughDataError,
    OutsidePriorError,
    StateFormatError,
    StudyLockedError,
    TicketAlreadyToldError,
    UnknownFidelityError,
    UnknownTicketError,
    UnmatchedParametersError,
)
from mfask.acquisition import AcquisitionConfig
from mfask.estimator import FlowConfig
from mfask.fidelity import Fidelity
from mfask.posterior import MultiFidelityPosterior, SimulationFailedWarning, TellResult
from mfask.priors import BoxUniform, IndependentPrior, Prior, prior_from_spec
from mfask.runner import RunReport, run
from mfask.sequential import RoundInfo, SequentialWarning
from mfask.study import Study, create_study, open_study
from mfask.tickets import AskBatch
from mfask.training import TrainingConfig, TrainingHistory
from mfask.transfer_guard import TransferChoice

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
    "StudyLockedError",
]

__version__ = "0.1.0"
