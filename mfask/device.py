"""Where the flows train and answer queries: ``device=`` resolved to a torch device.

Only the networks live on the device. Everything else (the prior, the
tickets, the training data, parameter-space maps, densities and samples
handed back to the user) stays on the CPU in float64/float32: training moves
one batch at a time to the device, and :class:`~mfask.estimator.ConditionalFlow`
returns its results on the device its inputs came from. Random draws that
decide results (batch order, validation splits, base noise of samples,
network initialisation) are made on the CPU from mfask's seeded streams, so a
seed gives the same draws on every device, and the results differ between
devices only by floating-point rounding.
"""

from __future__ import annotations

import torch

from mfask.errors import DeviceUnavailableError, InvalidInputError

__all__ = ["resolve_device"]

_KINDS = ("cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(spec: str | torch.device = "cpu") -> torch.device:
    """The torch device ``spec`` names, checked to be usable here.

    Arguments:
        spec: ``"cpu"``, ``"cuda"`` (the current CUDA device), ``"cuda:N"``,
            ``"mps"`` (Apple silicon), ``"auto"`` (CUDA if available, then
            MPS, else the CPU), or a ``torch.device`` of those kinds.

    Raises:
        InvalidInputError: ``spec`` is not one of those forms.
        DeviceUnavailableError: the device does not exist on this machine
            (no CUDA build or GPU, an index beyond the GPUs present, no MPS).
    """
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if not isinstance(spec, (str, torch.device)):
        raise InvalidInputError(
            f"device must be 'cpu', 'cuda', 'cuda:N', 'mps', 'auto' or a torch.device; got "
            f"{type(spec).__name__}"
        )
    try:
        device = torch.device(spec.strip().lower() if isinstance(spec, str) else spec)
    except (RuntimeError, ValueError) as error:
        raise InvalidInputError(
            f"device must be 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'; got {spec!r}"
        ) from error
    if device.type not in _KINDS:
        raise InvalidInputError(
            f"device must be 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'; got {spec!r} "
            f"(device type {device.type!r} is not supported)"
        )
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"device {spec!r} asks for CUDA, but this torch build or machine has no usable "
                "CUDA GPU (torch.cuda.is_available() is False); use device='cpu' or 'auto'"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceUnavailableError(
                f"device {spec!r} does not exist: this machine has {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
        return device
    if not _mps_available():
        raise DeviceUnavailableError(
            f"device {spec!r} asks for Apple's MPS, which is not available here; use "
            "device='cpu' or 'auto'"
        )
    return device

