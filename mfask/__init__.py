"""mfask: multi-fidelity simulation-based inference with an ask/tell API."""

from mfask.errors import (
    InvalidInputError,
    MfaskError,
    NotEnoughDataError,
    OutsidePriorError,
    StateFormatError,
    TicketAlreadyToldError,
    UnknownFidelityError,
    UnknownTicketError,
    UnmatchedParametersError,
)
from mfask.priors import BoxUniform, IndependentPrior, Prior, prior_from_spec

__version__ = "0.1.0"
