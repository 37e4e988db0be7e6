"""Describe a posterior in a small TOML or JSON file (for ``mfask init``).

Example (TOML)::

    seed = 0
    fidelities = ["low", "high"]          # low to high
    # or: fidelities = [{name = "low", parameters = ["mu"]}, {name = "high"}]

    [parameters]                          # in this order
    mu = {low = 0.1, high = 3.0}          # uniform
    sigma = {distribution = "LogNormal", loc = -1.5, scale = 0.5}

    [flow]                                # optional: mfask.FlowConfig fields
    hidden_features = 50

    [training]                            # optional: mfask.TrainingConfig fields
    max_epochs = 500

    [fine_tuning]                         # optional: mfask.FineTuningConfig fields
    freeze_epochs = 20

Optional top-level keys: ``ensemble_size``, ``transfer_standardization``,
``match_tolerance``, ``parameter_space``, ``transfer_guard``. Unknown keys are errors (a typo must not pass silently).
A distribution is any of :func:`mfask.prior_from_spec`'s marginals with its
torch arguments; ``{low, high}`` without one is uniform.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from pathlib import Path
from typing import Any, Mapping

from mfask.errors import InvalidInputError
from mfask.estimator import FlowConfig
from mfask.fidelity import Fidelity
from mfask.fine_tuning import FineTuningConfig
from mfask.posterior import MultiFidelityPosterior
from mfask.priors import prior_from_spec
from mfask.training import TrainingConfig
from mfask.user_input import did_you_mean

__all__ = ["read_spec", "posterior_from_spec"]

_TOP_LEVEL = {
    "seed", "fidelities", "parameters", "flow", "training",
    "ensemble_size", "transfer_standardization", "match_tolerance", "parameter_space",
    "transfer_guard", "fine_tuning",
}


def read_spec(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a spec file: ``.json`` as JSON, anything else as TOML."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInputError(f"no spec file at {source}") from None
    except OSError as error:  # a folder, no permission...
        raise InvalidInputError(f"cannot read the spec file {source}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise InvalidInputError(
            f"{source} is not UTF-8 text (byte {error.start}); save the spec as UTF-8"
        ) from None
    try:
        spec = json.loads(text) if source.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        raise InvalidInputError(f"{source} is not valid {source.suffix.lstrip('.') or 'TOML'}: {error}") from None
    if not isinstance(spec, dict):
        raise InvalidInputError(f"{source} must hold a table/object at the top level")
    return spec


def posterior_from_spec(spec: Mapping[str, Any]) -> MultiFidelityPosterior:
    """A new :class:`MultiFidelityPosterior` from a spec (see the module doc).

    Raises :class:`InvalidInputError` saying which entry is wrong.
    """
    unknown = sorted(set(spec) - _TOP_LEVEL)
    if unknown:
        raise InvalidInputError(
            f"unknown spec entries {unknown}{did_you_mean(unknown[0], sorted(_TOP_LEVEL))}; "
            f"allowed: {sorted(_TOP_LEVEL)}"
        )
    parameters = spec.get("parameters")
    if not isinstance(parameters, Mapping) or not parameters:
        raise InvalidInputError(
            "the spec needs a [parameters] table, e.g. mu = {low = 0.1, high = 3.0}"
        )
    names, marginals = [], []
    for name, entry in parameters.items():
        if not isinstance(entry, Mapping):
            raise InvalidInputError(f"parameter {name!r} must be a table like {{low = 0, high = 1}}")
        options = dict(entry)
        kind = options.pop("distribution", "Uniform")
        if kind == "Uniform" and set(options) != {"low", "high"}:
            raise InvalidInputError(
                f"uniform parameter {name!r} needs exactly low and high; got {sorted(options)}"
            )
        names.append(str(name))
        marginals.append({"type": str(kind), "params": options})
    try:
        prior = prior_from_spec({"names": names, "marginals": marginals})
    except (TypeError, ValueError) as error:  # e.g. missing distribution arguments
        raise InvalidInputError(f"[parameters]: {error}") from None
    fidelities = [_fidelity(f) for f in spec.get("fidelities", ["high"])] \
        if not isinstance(spec.get("fidelities"), str) else [_fidelity(spec["fidelities"])]
    options: dict[str, Any] = {}
    for key in ("seed", "ensemble_size", "transfer_standardization", "match_tolerance",
                "parameter_space", "transfer_guard"):
        if key in spec:
            options[key] = spec[key]
    for key, config in (("flow", FlowConfig), ("training", TrainingConfig),
                        ("fine_tuning", FineTuningConfig)):
        if key in spec:
            if not isinstance(spec[key], Mapping):
                raise InvalidInputError(f"[{key}] must be a table")
            valid = [field.name for field in dataclasses.fields(config)]
            unknown_fields = sorted(set(spec[key]) - set(valid))
            if unknown_fields:
                raise InvalidInputError(
                    f"[{key}]: unknown entries {unknown_fields}"
                    f"{did_you_mean(unknown_fields[0], valid)}; valid: {', '.join(valid)}"
                )
            try:
                options[key] = config(**spec[key])
            except TypeError as error:
                raise InvalidInputError(f"[{key}]: {error}") from None
    return MultiFidelityPosterior(prior, fidelities, **options)


def _fidelity(entry: Any) -> Fidelity | str:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, Mapping) and "name" in entry and set(entry) <= {"name", "parameters"}:
        parameters = entry.get("parameters")
        return Fidelity(str(entry["name"]), None if parameters is None else tuple(parameters))
    raise InvalidInputError(
        f"a fidelity is a name or {{name = ..., parameters = [...]}}; got {entry!r}"
    )
