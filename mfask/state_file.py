"""Reading and writing a posterior's state without pickle.

A state is a JSON-compatible ``meta`` dict plus named numpy arrays (tickets,
results, network weights, random generator states). On disk it is one ``.npz``
archive: the arrays as ``.npy`` members and the meta as UTF-8 JSON bytes in a
``uint8`` array. Loading uses ``numpy.load(allow_pickle=False)`` and
``json.loads`` only, so a crafted file cannot run code; it can only fail to
load with :class:`~mfask.errors.StateFormatError`.

Writes go to a temporary file in the same folder that then atomically replaces
the target, so a crash mid-save never leaves a truncated file behind.

The format itself needs numpy only; torch is imported by the helpers that
convert torch objects (module weights, generator states), so that a reader
of study files that loads no model does not import it.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import stat
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mfask.atomic_file import create_temporary
from mfask.errors import StateFormatError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_JSON_DEPTH",
    "write_state",
    "write_file_atomically",
    "check_writable",
    "read_state",
    "parse_json",
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
#: deepest nesting of lists and objects a JSON header may have
MAX_JSON_DEPTH = 32
# numpy dtype kinds a member may have (no objects, strings or structures)
_NUMERIC_KINDS = "biufc"
# what zipfile raises for archives it cannot read
_ZIP_ERRORS = (
    zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
    NotImplementedError, RuntimeError, KeyError, OverflowError,
)


def write_state(path: str | os.PathLike[str], meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Atomically write ``meta`` and ``arrays`` to ``path`` (an ``.npz`` file);
    see :func:`write_file_atomically` for the file's mode."""
    target = Path(path)
    payload = encode_state(meta, arrays)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomically(target, payload)
    return target


def write_file_atomically(path: str | os.PathLike[str], payload: bytes) -> None:
    """Write ``payload`` to ``path`` through a temporary file in the same
    folder that then replaces ``path``, so that readers never see a partial
    file.

    A new file gets the mode the umask allows (as ``open`` would create it);
    a replaced file keeps its mode. Raises ``OSError`` when the folder is
    missing or not writable (``path`` is then unchanged).
    """
    target = Path(path)
    try:
        mode: int | None = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = None
    handle, temporary = create_temporary(target, "tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            if mode is not None:
                os.fchmod(stream.fileno(), mode)
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def check_writable(path: str | os.PathLike[str]) -> None:
    """Raise ``OSError`` unless :func:`write_file_atomically` can write
    ``path``: its folder exists and takes new files, and ``path``, if it
    exists, is not a folder. Creates and removes a temporary file."""
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder", str(target))
    handle, temporary = create_temporary(target, "tmp")
    os.close(handle)
    os.unlink(temporary)


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

    Memory and time stay proportional to ``len(data)``: the archive's
    directory is checked before anything is decompressed (members must be
    stored uncompressed, as :func:`encode_state` writes them, each name
    once, their sizes adding up to no more than the archive), every
    member's ``.npy`` header must declare exactly the bytes it holds, and
    the JSON header may nest at most :data:`MAX_JSON_DEPTH` levels.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = _checked_directory(archive, len(data), label)
            raw = {info.filename[: -len(".npy")]: archive.read(info) for info in infos}
    except StateFormatError:
        raise
    except _ZIP_ERRORS as error:
        raise StateFormatError(f"{label} is not a readable mfask state: {error}") from None
    arrays = {name: _parse_npy(payload, name, label) for name, payload in raw.items()}
    header = arrays.pop(_META_KEY, None)
    if header is None or header.dtype != np.uint8 or header.ndim != 1:
        raise StateFormatError(f"{label} has no mfask header")
    meta = parse_json(header.tobytes(), f"{label}'s header")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise StateFormatError(f"{label} is not an mfask state")
    if meta.get("version") != FORMAT_VERSION:
        raise StateFormatError(
            f"{label} has state format version {meta.get('version')!r}; this mfask "
            f"reads version {FORMAT_VERSION}"
        )
    return meta, arrays


def parse_json(data: bytes | str, label: str) -> Any:
    """JSON text from a file, nested at most :data:`MAX_JSON_DEPTH` levels
    deep; :class:`StateFormatError` otherwise."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        reason = "it nests too deeply" if isinstance(error, RecursionError) else str(error)
        raise StateFormatError(f"{label} is not valid JSON: {reason}") from None
    _check_depth(value, label)
    return value


def _check_depth(value: Any, label: str) -> None:
    """Raise :class:`StateFormatError` when ``value`` nests deeper than
    :data:`MAX_JSON_DEPTH` (an iterative walk: no recursion limit)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > MAX_JSON_DEPTH:
                raise StateFormatError(
                    f"{label} nests deeper than {MAX_JSON_DEPTH} levels; mfask never writes that"
                )
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def _checked_directory(archive: zipfile.ZipFile, size: int, label: str) -> list[zipfile.ZipInfo]:
    """The archive's members after checking names and declared sizes, before
    any is read."""
    infos = archive.infolist()
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        raise StateFormatError(f"{label} holds a member twice; it was not written by mfask")
    total = 0
    for info in infos:
        if not info.filename.endswith(".npy") or info.is_dir():
            raise StateFormatError(f"{label} has a member {info.filename!r} that is not an array")
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
            raise StateFormatError(
                f"{label}: member {info.filename!r} is compressed; mfask stores members "
                "uncompressed (re-save the state with MultiFidelityPosterior.save)"
            )
        total += info.file_size
    if total > size:
        raise StateFormatError(
            f"{label}'s members declare {total} bytes in an archive of {size}; it is corrupt"
        )
    return infos


def _parse_npy(payload: bytes, name: str, label: str) -> np.ndarray:
    """A plain numeric array from the bytes of an ``.npy`` member whose
    header must declare exactly the data that follows it."""
    stream = io.BytesIO(payload)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, TypeError, SyntaxError, OverflowError, EOFError) as error:
        raise StateFormatError(f"{label}: member {name!r} is not a readable array: {error}") from None
    if dtype.kind not in _NUMERIC_KINDS or dtype.hasobject or dtype.fields is not None \
            or dtype.subdtype is not None:
        raise StateFormatError(f"{label} has a member {name!r} that is not a numeric array")
    if any(size < 0 for size in shape):
        raise StateFormatError(f"{label}: member {name!r} declares a negative shape {shape}")
    count = math.prod(shape)
    offset = stream.tell()
    if count * dtype.itemsize != len(payload) - offset:
        raise StateFormatError(
            f"{label}: member {name!r} declares shape {shape} of {dtype} "
            f"({count * dtype.itemsize} bytes) but holds {len(payload) - offset} bytes"
        )
    values = np.frombuffer(payload, dtype=dtype, count=count, offset=offset)
    if fortran_order:
        return values.reshape(shape[::-1]).T.copy(order="F")
    return values.reshape(shape).copy()


def module_to_arrays(module: nn.Module, prefix: str) -> dict[str, np.ndarray]:
    """A module's ``state_dict`` as numpy arrays named ``prefix + key``."""
    return {
        prefix + key: value.detach().cpu().numpy().copy()
        for key, value in module.state_dict().items()
    }


def load_module_arrays(module: nn.Module, arrays: dict[str, np.ndarray], prefix: str) -> None:
    """Load weights saved by :func:`module_to_arrays` into ``module`` (strict;
    buffers the module names in a ``state_defaults()`` method may be absent
    from files written before they existed and keep the values it gives).

    Raises :class:`StateFormatError` when a tensor is missing, unexpected, of
    the wrong shape or dtype, or holds NaN or inf.
    """
    import torch

    expected = module.state_dict()
    found = {key[len(prefix):]: value for key, value in arrays.items() if key.startswith(prefix)}
    defaults = module.state_defaults() if hasattr(module, "state_defaults") else {}
    for key, value in defaults.items():  # buffers that files written before them lack
        found.setdefault(key, value.detach().cpu().numpy())
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
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise StateFormatError(
                f"saved weight {prefix + key} holds NaN or inf values; the state is corrupt"
            )
        state[key] = tensor
    module.load_state_dict(state, strict=True)


def generator_to_array(generator: torch.Generator) -> np.ndarray:
    """A torch generator's state as a ``uint8`` array."""
    return generator.get_state().numpy().copy()


def generator_from_array(array: np.ndarray) -> torch.Generator:
    """A torch generator restored from :func:`generator_to_array` output."""
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 1:
        raise StateFormatError("corrupt random generator state: not a 1-D uint8 array")
    import torch

    generator = torch.Generator()
    try:
        generator.set_state(torch.from_numpy(np.ascontiguousarray(array, dtype=np.uint8)))
    except (RuntimeError, TypeError, ValueError) as error:
        raise StateFormatError(f"corrupt random generator state: {error}") from None
    return generator
