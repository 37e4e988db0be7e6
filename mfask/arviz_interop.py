"""Posterior samples as ArviZ data, for ArviZ's summaries and plots.

:func:`to_arviz` draws posterior samples of a
:class:`~mfask.posterior.MultiFidelityPosterior` at one or several
observations, at one or several fidelities, and returns them as ArviZ's
posterior group with one variable per parameter, named as the prior names
them:

* ArviZ 1.x (``arviz_base``, Python >= 3.12): an ``xarray.DataTree``
  (``arviz_base.from_dict``), for ``arviz.summary`` / ``arviz_stats.summary``
  and ``arviz_plots``;
* ArviZ 0.x: an ``arviz.InferenceData`` (``arviz.from_dict``), for
  ``arviz.summary`` and ``arviz.plot_*``.

Dimensions of every variable: ``chain`` (length 1), ``draw``, then
``fidelity`` (when several fidelities are asked for; coordinates: their
names) and ``observation`` (when ``x`` holds several observations;
coordinates ``0 .. m-1``, the rows of ``x``). The draws are independent
samples, not a Markov chain, so ESS is about the number of draws and R-hat
about 1 by construction; the useful outputs are means, spreads, quantiles,
HDIs and plots.

The optional extra ``mfask[arviz]`` installs ArviZ.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any, Literal, Sequence

import numpy as np

from mfask.errors import InvalidInputError, NotEnoughDataError, UnknownFidelityError
from mfask.fidelity import Fidelity
from mfask.posterior import MultiFidelityPosterior
from mfask.user_input import as_numeric_array, positive_int

__all__ = ["ArvizKind", "ARVIZ_KINDS", "RESERVED_DIMS", "to_arviz"]

ArvizKind = Literal["auto", "datatree", "inference_data"]
#: the values ``kind`` accepts
ARVIZ_KINDS: tuple[str, ...] = ("auto", "datatree", "inference_data")
#: dimension names of the posterior group, which no parameter may be called
RESERVED_DIMS: tuple[str, ...] = ("chain", "draw", "fidelity", "observation")


def to_arviz(
    posterior: MultiFidelityPosterior,
    x: Any,
    *,
    fidelity: str | Fidelity | Sequence[str | Fidelity] | None = None,
    num_draws: int = 1000,
    kind: ArvizKind = "auto",
) -> Any:
    """Posterior samples at ``x`` as ArviZ data (see the module docstring).

    Arguments:
        posterior: a trained (or trainable) mfask posterior; for a study pass
            ``study.posterior``.
        x: one observation ``(*x_shape)``, or several ``(m, *x_shape)``
            (then an ``observation`` dimension of length ``m``, even for
            ``m = 1``).
        fidelity: a fidelity name, a sequence of names (then a ``fidelity``
            dimension), or ``None`` for the posterior's default level.
        num_draws: samples per observation and fidelity.
        kind: ``"datatree"`` (ArviZ 1.x), ``"inference_data"`` (ArviZ 0.x),
            or ``"auto"``: the kind the installed ``arviz`` works with
            (``arviz_base`` alone counts as 1.x).

    Returns:
        An ``xarray.DataTree`` or an ``arviz.InferenceData`` with a
        ``posterior`` group: one variable per parameter, shape
        ``(1, num_draws[, num_fidelities][, m])``. Its attributes name the
        inference library and, when given, the fidelities.

    The samples come from the posterior's sample stream, as ``sample_batched``'s.

    Raises:
        InvalidInputError: a bad ``x``, ``num_draws`` or ``kind``, or a
            parameter named like a dimension (:data:`RESERVED_DIMS`).
        UnknownFidelityError: an unknown fidelity name.
        NotEnoughDataError: nothing told yet.
        ImportError: the ArviZ package that ``kind`` needs is not installed.
    """
    if not isinstance(posterior, MultiFidelityPosterior):
        raise InvalidInputError(
            f"posterior must be a MultiFidelityPosterior (for a Study pass study.posterior); "
            f"got {type(posterior).__name__}"
        )
    num_draws = positive_int(num_draws, "num_draws")
    resolved_kind = _resolve_kind(kind)
    names = list(posterior.prior.names)
    clashes = [name for name in names if name in RESERVED_DIMS]
    if clashes:
        raise InvalidInputError(
            f"parameter name(s) {clashes} are ArviZ dimension names here ({list(RESERVED_DIMS)}); "
            "rename the prior's parameters"
        )
    several_fidelities = fidelity is not None and not isinstance(fidelity, (str, Fidelity))
    chosen = list(fidelity) if several_fidelities else [fidelity]  # type: ignore[arg-type]
    fidelities: list[str | None] = [f.name if isinstance(f, Fidelity) else f for f in chosen]
    if not fidelities:
        raise InvalidInputError("fidelity must name at least one fidelity")
    unknown = [name for name in fidelities if name is not None and name not in posterior.fidelity_names]
    if unknown:  # checked before any draw, so that a failed call draws nothing
        raise UnknownFidelityError(
            f"unknown fidelity {unknown[0]!r}; this posterior has {list(posterior.fidelity_names)}"
        )
    observations, several_observations = _observations(posterior, x)

    # (F, m, n, d) -> per parameter (chain=1, n[, F][, m])
    draws = np.stack([
        posterior.sample_batched(num_draws, observations, fidelity=name) for name in fidelities
    ])
    values = np.moveaxis(draws, 2, 0)[None]  # (1, n, F, m, d)
    if not several_observations:
        values = values[:, :, :, 0]
    if not several_fidelities:
        values = values[:, :, 0]
    variable_dims = (["fidelity"] if several_fidelities else []) + (
        ["observation"] if several_observations else []
    )
    coords: dict[str, Any] = {}
    if several_fidelities:
        coords["fidelity"] = list(fidelities)
    if several_observations:
        coords["observation"] = np.arange(observations.shape[0])
    variables = {name: values[..., column] for column, name in enumerate(names)}
    dims = {name: variable_dims for name in names}
    attrs: dict[str, Any] = {"inference_library": "mfask"}
    if fidelity is not None:
        attrs["fidelity"] = list(fidelities) if several_fidelities else fidelities[0]
    if resolved_kind == "datatree":
        arviz_base = importlib.import_module("arviz_base")
        return arviz_base.from_dict(
            {"posterior": variables}, coords=coords, dims=dims, attrs={"posterior": attrs}
        )
    arviz = importlib.import_module("arviz")
    return arviz.from_dict(posterior=variables, coords=coords, dims=dims, posterior_attrs=attrs)


def _observations(posterior: MultiFidelityPosterior, x: Any) -> tuple[np.ndarray, bool]:
    """``x`` as float64 ``(m, *x_shape)``, and whether it held several observations."""
    x_shape = posterior.x_shape
    if x_shape is None:
        raise NotEnoughDataError(
            "no simulator output has been told yet: a posterior needs at least 2 "
            "successful simulations; ask, simulate and tell first"
        )
    array = as_numeric_array(x, "x")
    if tuple(array.shape) == x_shape:
        return array.reshape(1, *x_shape), False
    if array.ndim == len(x_shape) + 1 and tuple(array.shape[1:]) == x_shape:
        return array, True
    raise InvalidInputError(
        f"x must be one observation of shape {x_shape} or several of shape (m, *{x_shape}); "
        f"got {tuple(array.shape)}"
    )


def _resolve_kind(kind: str) -> str:
    """``"datatree"`` or ``"inference_data"``, checking that the package it needs is installed."""
    if kind not in ARVIZ_KINDS:
        raise InvalidInputError(f"kind must be one of {list(ARVIZ_KINDS)}; got {kind!r}")
    arviz_version = _installed_version("arviz")
    if kind == "auto":
        if arviz_version is not None:
            kind = "datatree" if int(arviz_version.split(".")[0]) >= 1 else "inference_data"
        elif _installed_version("arviz-base") is not None:
            kind = "datatree"
        else:
            raise ImportError("to_arviz needs ArviZ: pip install 'mfask[arviz]'")
    if kind == "datatree" and _installed_version("arviz-base") is None:
        raise ImportError("kind='datatree' needs arviz_base (ArviZ 1.x): pip install 'mfask[arviz]'")
    if kind == "inference_data" and (arviz_version is None or int(arviz_version.split(".")[0]) >= 1):
        raise ImportError(
            "kind='inference_data' needs ArviZ 0.x (ArviZ 1.x works with DataTree: kind='datatree'); "
            f"installed: {arviz_version or 'no arviz'}"
        )
    return kind


def _installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
