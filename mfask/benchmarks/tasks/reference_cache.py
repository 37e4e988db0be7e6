"""A disk cache for reference posterior samples.

Reference samplers can take seconds to minutes (an SMC run, a fine grid over
ODE solutions), and benchmarks ask for the same reference again and again. This
module stores each result as a ``.npz`` file (no pickle: files are read with
``np.load(allow_pickle=False)``) under a key built from

* the task name and the task's settings (e.g. the OU dimension),
* a SHA-256 hash of the observation's float64 bytes and shape,
* the sampler settings (method, version, resolution, number of samples, seed).

The key is also stored inside the file and checked on load, so a file that
does not belong to the request (hash-prefix clash, a hand-copied file) is
recomputed rather than trusted. A file that cannot be read is recomputed and
overwritten with a warning.

The directory is ``$MFASK_CACHE_DIR`` if set, else ``~/.cache/mfask``; files go
to its ``reference_posteriors`` sub-folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

__all__ = ["cache_dir", "cache_key", "cache_path", "cached_reference"]

_ENV_VAR = "MFASK_CACHE_DIR"
_SUBDIR = "reference_posteriors"


def cache_dir() -> Path:
    """The directory reference samples are cached in (not created here)."""
    root = os.environ.get(_ENV_VAR)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "mfask"
    return base / _SUBDIR


def _observation_hash(x_o: np.ndarray) -> str:
    """SHA-256 of the observation's shape and float64 C-order bytes."""
    array = np.ascontiguousarray(x_o, dtype=np.float64)
    digest = hashlib.sha256()
    digest.update(repr(array.shape).encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def cache_key(
    task_name: str,
    task_settings: Mapping[str, Any],
    x_o: np.ndarray,
    sampler_settings: Mapping[str, Any],
) -> str:
    """The canonical JSON string identifying one reference computation.

    ``task_settings`` and ``sampler_settings`` must be JSON-serialisable.
    """
    return json.dumps(
        {
            "task": task_name,
            "task_settings": dict(task_settings),
            "x_o_sha256": _observation_hash(x_o),
            "sampler": dict(sampler_settings),
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def cache_path(key: str, task_name: str) -> Path:
    """The file a key is stored in: ``<cache_dir>/<task>-<sha256(key)[:24]>.npz``."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    safe_name = "".join(c if c.isalnum() or c in "-_" else "_" for c in task_name)
    return cache_dir() / f"{safe_name}-{digest}.npz"


def _load(path: Path, key: str) -> np.ndarray | None:
    """Samples stored at ``path`` under ``key``, or None if absent or not matching."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            stored_key = str(data["key"])
            samples = np.array(data["samples"], dtype=np.float64)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        warnings.warn(
            f"ignoring unreadable reference cache file {path} ({error}); recomputing",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    if stored_key != key:
        return None
    return samples


def _store(path: Path, key: str, samples: np.ndarray) -> None:
    """Write atomically (temporary file + rename) so readers never see half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=path.stem, suffix=".tmp.npz"
        )
        try:
            with os.fdopen(handle, "wb") as stream:
                np.savez(stream, samples=samples, key=np.array(key))
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as error:
        warnings.warn(
            f"could not write reference cache file {path} ({error}); "
            "the samples are returned but not cached",
            RuntimeWarning,
            stacklevel=3,
        )


def cached_reference(
    task_name: str,
    task_settings: Mapping[str, Any],
    x_o: np.ndarray,
    sampler_settings: Mapping[str, Any],
    compute: Callable[[], np.ndarray],
    cache: bool = True,
) -> np.ndarray:
    """Return cached reference samples, or run ``compute()`` and cache its result.

    Arguments:
        task_name: the task's ``name``.
        task_settings: JSON-serialisable settings that change the task's
            posterior (e.g. its dimension).
        x_o: the observation, any shape.
        sampler_settings: JSON-serialisable settings that change the samples
            (method, version, resolution, number of samples, seed).
        compute: returns the samples, shape ``(num_samples, d)``.
        cache: if False, always compute and neither read nor write the cache.

    Returns:
        float64 samples ``(num_samples, d)``.
    """
    if not cache:
        return np.asarray(compute(), dtype=np.float64)
    key = cache_key(task_name, task_settings, x_o, sampler_settings)
    path = cache_path(key, task_name)
    samples = _load(path, key)
    if samples is None:
        samples = np.asarray(compute(), dtype=np.float64)
        _store(path, key, samples)
    return samples
