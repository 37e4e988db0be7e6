"""Reading and writing a posterior's state without pickle.

A state is a JSON-compatible ``meta`` dict plus named numpy arrays (tickets,
results, network weights, random generator states). On disk it is one ``.npz``
archive: the arrays as ``.npy`` members and the meta as UTF-8 JSON bytes in a
``uint8`` array. Loading uses ``numpy.load(allow_pickle=False)`` and
``json.loads`` only, so a crafted file cannot run code; it can only fail to
load with :class:`~mfask.errors.StateFormatError`.

Writes go to a temporary file in the same folder that then atomically replaces
the target, so a crash mid-save never leaves a truncated file behind.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mfask.errors import StateFormatError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "write_state",
    "read_state",
    "encode_state",
    "decode_state",
    "module_to_arrays",
    "load_module_arrays",
    "generator_to_array",
    "generator_from_array",
]

FORMAT_NAME = "mfask-state"
FORMAT_VERSION = 1
_META_KEY = "__meta__"


def write_state(path: str | os.PathLike[str], meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Atomically write ``meta`` and ``arrays`` to ``path`` (an ``.npz`` file)."""
    target = Path(path)
    payload = encode_state(meta, arrays)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return target


def read_state(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a state written by :func:`write_state`; no code is run."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise
    except OSError as error:
        raise StateFormatError(f"{path} is not a readable mfask state file: {error}") from None
    return decode_state(data, str(path))


def encode_state(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    """``meta`` and ``arrays`` as the bytes of an ``.npz`` archive (see the module doc)."""
    if _META_KEY in arrays:
        raise ValueError(f"array name {_META_KEY!r} is reserved")
    header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **meta}
    payload = dict(arrays)
    payload[_META_KEY] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **payload)
    return buffer.getvalue()


def decode_state(data: bytes, label: str = "state") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Parse bytes written by :func:`encode_state`; no code is run.

    ``label`` names the source in error messages. Raises
    :class:`StateFormatError` for anything but a well-formed state of this
    format version whose members are all plain numeric arrays.
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as error:
        raise StateFormatError(f"{label} is not a readable mfask state: {error}") from None
    for name, value in arrays.items():
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "biufc":
            raise StateFormatError(f"{label} has a member {name!r} that is not a numeric array")
    raw = arrays.pop(_META_KEY, None)
    if raw is None or raw.dtype != np.uint8:
        raise StateFormatError(f"{label} has no mfask header")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StateFormatError(f"{label} has a corrupt header: {error}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise StateFormatError(f"{label} is not an mfask state")
    if meta.get("version") != FORMAT_VERSION:
        raise StateFormatError(
            f"{label} has state format version {meta.get('version')!r}; this mfask "
            f"reads version {FORMAT_VERSION}"
        )
    return meta, arrays


def module_to_arrays(module: nn.Module, prefix: str) -> dict[str, np.ndarray]:
    """A module's ``state_dict`` as numpy arrays named ``prefix + key``."""
    return {
        prefix + key: value.detach().cpu().numpy().copy()
        for key, value in module.state_dict().items()
    }


def load_module_arrays(module: nn.Module, arrays: dict[str, np.ndarray], prefix: str) -> None:
    """Load weights saved by :func:`module_to_arrays` into ``module`` (strict).

    Raises :class:`StateFormatError` when a tensor is missing, unexpected or of
    the wrong shape or dtype.
    """
    expected = module.state_dict()
    found = {key[len(prefix):]: value for key, value in arrays.items() if key.startswith(prefix)}
    if set(found) != set(expected):
        missing = sorted(set(expected) - set(found))[:3]
        extra = sorted(set(found) - set(expected))[:3]
        raise StateFormatError(
            f"saved weights under {prefix!r} do not fit the model (missing {missing}, "
            f"unexpected {extra}); was it saved with another architecture or embedding net?"
        )
    state = {}
    for key, reference in expected.items():
        value = found[key]
        if tuple(value.shape) != tuple(reference.shape):
            raise StateFormatError(
                f"saved weight {prefix + key} has shape {tuple(value.shape)}; the model "
                f"expects {tuple(reference.shape)}"
            )
        tensor = torch.from_numpy(np.ascontiguousarray(value))
        if tensor.dtype != reference.dtype:
            raise StateFormatError(
                f"saved weight {prefix + key} has dtype {tensor.dtype}; expected {reference.dtype}"
            )
        state[key] = tensor
    module.load_state_dict(state, strict=True)


def generator_to_array(generator: torch.Generator) -> np.ndarray:
    """A torch generator's state as a ``uint8`` array."""
    return generator.get_state().numpy().copy()


def generator_from_array(array: np.ndarray) -> torch.Generator:
    """A torch generator restored from :func:`generator_to_array` output."""
    generator = torch.Generator()
    try:
        generator.set_state(torch.from_numpy(np.ascontiguousarray(array, dtype=np.uint8)))
    except (RuntimeError, TypeError, ValueError) as error:
        raise StateFormatError(f"corrupt random generator state: {error}") from None
    return generator
