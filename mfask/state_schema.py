"""What a saved posterior state may hold, checked before anything is built.

A state (``MultiFidelityPosterior.save``, or a study's description, tickets
and checkpoint) is a JSON header plus named arrays (:mod:`mfask.state_file`).
:func:`check_state` checks it against the layout that ``save`` writes before
:meth:`MultiFidelityPosterior.load` allocates anything from it: the header's
fields have their types and lie within :data:`LIMITS`, every array is one the
header accounts for and has the shape the header implies, ticket columns hold
valid codes and finite values, and the flows the header declares are not much
larger than the weights the file stores. A file that fails any check raises
:class:`~mfask.errors.StateFormatError`, so loading a crafted file takes time
and memory in proportion to its size. :func:`check_records` checks the part a
study's records are rebuilt from (header fields and ticket columns), for a
lazy study that loads no model (and imports no torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from mfask.errors import InvalidInputError, StateFormatError
from mfask.tickets import DONE, SOURCES, STATUSES
from mfask.transfer_choice import TransferChoice

if TYPE_CHECKING:
    from mfask.estimator import FlowConfig

__all__ = ["StateLimits", "LIMITS", "check_state", "check_records", "check_sizes"]


@dataclass(frozen=True)
class StateLimits:
    """Sizes a state file (or a ``mfask init`` spec) may declare.

    Attributes:
        max_x_values: values in one simulator output (the product of ``x_shape``).
        max_x_dims: dimensions of ``x_shape``.
        max_ensemble_size: flows per fidelity level.
        max_flow_layers: ``num_transforms * num_blocks`` of the flow.
        max_flow_weights: estimated weights of one flow
            (:meth:`FlowConfig.weight_count_estimate`).
        max_generator_bytes: bytes of one random generator state.
    """

    max_x_values: int = 2**24
    max_x_dims: int = 32
    max_ensemble_size: int = 256
    max_flow_layers: int = 4096
    max_flow_weights: int = 2**27
    max_generator_bytes: int = 2**14


#: the limits :func:`check_state` applies
LIMITS = StateLimits()

# a stored flow may be this much larger than the estimate says (and the
# estimate this much larger than the stored weights) before it is refused
_ESTIMATE_SLACK = 4
_ESTIMATE_FLOOR = 10_000

_TICKET_INTEGER_COLUMNS = {"fidelity": None, "source": len(SOURCES), "round": None, "status": len(STATUSES)}
_TICKET_FLOAT_COLUMNS = ("asked_at", "told_at")
_SEQUENTIAL_ARRAYS = ("observation", "samples", "log_probs")
_GENERATORS = ("rng/ask", "rng/sample")


def check_state(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], *, embedding_net: bool) -> None:
    """Check a state's header and arrays before an object is built from it.

    Arguments:
        meta: the JSON header (``levels`` included).
        arrays: every array of the state, by name.
        embedding_net: whether an embedding net will condition the flows (its
            output size is then not known from the header).

    Raises :class:`StateFormatError` saying what is wrong.
    """
    from mfask.estimator import FlowConfig  # imports torch: only a full state needs it

    names, fidelities, x_shape = _check_record_header(meta)
    levels = _list(meta, "levels", item=dict)
    if len(levels) > len(fidelities):
        raise StateFormatError(f"the state has {len(levels)} trained levels for {len(fidelities)} fidelities")
    # a level stores its members and, with the transfer guard, as many HF-only networks
    members = [_integer(level, "num_members", 0, 2 * LIMITS.max_ensemble_size) for level in levels]
    for level, count in zip(levels, members):
        _integer(level, "fit_count", 0)
        _integer(level, "trained_on", 0)
        if "num_hf_only" in level:
            hf_only = _integer(level, "num_hf_only", 0, count)
            if hf_only and 2 * hf_only != count:
                raise StateFormatError(
                    f"a level stores {count} flows of which {hf_only} HF-only; expected as many "
                    "HF-only networks as members"
                )
        if level.get("choice") is not None:
            TransferChoice.from_dict(level["choice"])
    sequential = meta.get("sequential")
    if isinstance(sequential, Mapping) and "ensemble_members" in sequential:
        _integer(sequential, "ensemble_members", 0, LIMITS.max_ensemble_size)
    if any(members) and x_shape is None:
        raise StateFormatError("the state has trained flows but no x_shape")
    try:
        flow = FlowConfig.from_dict(dict(_mapping(meta, "flow")))
    except (InvalidInputError, TypeError) as error:
        raise StateFormatError(f"the state's flow settings are invalid: {error}") from None
    check_sizes(
        theta_dim=len(names),
        x_shape=None if x_shape is None else tuple(x_shape),
        flow=flow,
        ensemble_size=_integer(meta, "ensemble_size", 1),
        embedding_net=embedding_net,
        error=StateFormatError,
    )
    _check_members(arrays, members)
    _check_tickets(arrays, len(names), x_shape, len(fidelities))
    _check_flows(arrays, members, flow, len(names), x_shape, embedding_net)
    for name in _GENERATORS:
        array = arrays.get(name)
        if array is None:
            raise StateFormatError(f"the state has no {name} random generator state")
        if array.dtype != np.uint8 or array.ndim != 1 or array.size > LIMITS.max_generator_bytes:
            raise StateFormatError(f"the random generator state {name} is malformed")
    observation = arrays.get("sequential/observation")
    if observation is not None and x_shape is not None and list(observation.shape) != list(x_shape):
        raise StateFormatError(
            f"the sequential observation has shape {list(observation.shape)}; x_shape is {x_shape}"
        )
    samples = arrays.get("sequential/samples")
    if samples is not None and (samples.ndim != 2 or samples.shape[1] != len(names)):
        raise StateFormatError(f"the sequential round's samples have shape {samples.shape}")


def check_records(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    """Check the part of a state that tickets and results are rebuilt from
    (:class:`~mfask.ticket_book.TicketBook`): the header's parameter names,
    fidelities, ``x_shape``, round and seed, and the ``tickets/*`` arrays.

    Raises :class:`StateFormatError` saying what is wrong.
    """
    names, fidelities, x_shape = _check_record_header(meta)
    if x_shape is not None:
        _check_x_shape(x_shape, StateFormatError)
    _check_tickets(arrays, len(names), x_shape, len(fidelities))


def _check_record_header(meta: Mapping[str, Any]) -> tuple[list[str], list[dict[str, Any]], list[int] | None]:
    """The header fields the records need: ``(parameter_names, fidelities, x_shape)``
    (round and seed checked too)."""
    if not isinstance(meta, Mapping):
        raise StateFormatError("the state's header is not a JSON object")
    names = _list(meta, "parameter_names", item=str)
    if not names:
        raise StateFormatError("the state has no parameters")
    fidelities = _list(meta, "fidelities", item=dict)
    if not fidelities:
        raise StateFormatError("the state has no fidelities")
    x_shape = meta.get("x_shape")
    if x_shape is not None:
        x_shape = _list(meta, "x_shape", item=int)
    for key in ("round", "seed"):
        _integer(meta, key, 0)
    return names, fidelities, x_shape


def check_sizes(
    *,
    theta_dim: int,
    x_shape: tuple[int, ...] | None,
    flow: FlowConfig,
    ensemble_size: int,
    embedding_net: bool,
    error: type[Exception] = StateFormatError,
) -> None:
    """Raise ``error`` when sizes exceed :data:`LIMITS`: ``x_shape``, the
    ensemble size and the flow's layers and estimated weights."""
    if x_shape is not None:
        _check_x_shape(x_shape, error)
    if not 1 <= ensemble_size <= LIMITS.max_ensemble_size:
        raise error(f"ensemble_size must be 1 to {LIMITS.max_ensemble_size}; got {ensemble_size}")
    layers = flow.num_transforms * flow.num_blocks
    if layers > LIMITS.max_flow_layers:
        raise error(
            f"a flow of {flow.num_transforms} transforms x {flow.num_blocks} blocks is larger than "
            f"the {LIMITS.max_flow_layers} layers supported"
        )
    context = 1 if embedding_net or x_shape is None else math.prod(x_shape)
    weights = flow.weight_count_estimate(theta_dim, context)
    if weights > LIMITS.max_flow_weights:
        raise error(
            f"the flow settings {flow.to_dict()} make a flow of about {weights} weights; at most "
            f"{LIMITS.max_flow_weights} are supported (make hidden_features, num_blocks or "
            "num_transforms smaller)"
        )


def _check_x_shape(x_shape: tuple[int, ...] | list[int], error: type[Exception]) -> None:
    if not 1 <= len(x_shape) <= LIMITS.max_x_dims or any(size < 1 for size in x_shape):
        raise error(f"x_shape must be 1 to {LIMITS.max_x_dims} positive sizes; got {list(x_shape)}")
    if math.prod(x_shape) > LIMITS.max_x_values:
        raise error(
            f"x_shape {list(x_shape)} has {math.prod(x_shape)} values; at most "
            f"{LIMITS.max_x_values} are supported"
        )


# ---------------------------------------------------------------- members
def _check_members(arrays: Mapping[str, np.ndarray], members: list[int]) -> None:
    """Every array must be one the header accounts for."""
    for name in arrays:
        group, _, rest = name.partition("/")
        if group == "tickets" and (rest in _TICKET_INTEGER_COLUMNS or rest in _TICKET_FLOAT_COLUMNS
                                   or rest in ("theta", "x")):
            continue
        if name in _GENERATORS or (group == "sequential" and rest in _SEQUENTIAL_ARRAYS):
            continue
        if group == "model":
            level, _, tail = rest.partition("/")
            member, _, key = tail.partition("/")
            if (level.isdigit() and member.isdigit() and key and int(level) < len(members)
                    and int(member) < members[int(level)]):
                continue
        raise StateFormatError(f"the state has an unknown array {name!r}; it was not written by mfask")


def _check_tickets(
    arrays: Mapping[str, np.ndarray], theta_dim: int, x_shape: list[int] | None, num_fidelities: int
) -> None:
    """Ticket columns: consistent shapes, valid codes, finite values."""
    theta = _array(arrays, "tickets/theta")
    if theta.ndim != 2 or theta.shape[1] != theta_dim or theta.dtype.kind != "f":
        raise StateFormatError(
            f"ticket parameters have shape {theta.shape} ({theta.dtype}); expected (n, {theta_dim}) floats"
        )
    count = theta.shape[0]
    if not np.isfinite(theta).all():
        raise StateFormatError("ticket parameters hold NaN or inf values")
    bounds = dict(_TICKET_INTEGER_COLUMNS, fidelity=num_fidelities)
    for name, upper in bounds.items():
        column = _array(arrays, f"tickets/{name}")
        if column.shape != (count,) or column.dtype.kind not in "iu":
            raise StateFormatError(f"ticket column {name!r} has shape {column.shape} ({column.dtype})")
        if count and (column.min() < 0 or (upper is not None and column.max() >= upper)):
            bad = column[(column < 0) | (column >= (upper if upper is not None else np.inf))][:5]
            raise StateFormatError(
                f"ticket column {name!r} holds {bad.tolist()}, outside 0..{'' if upper is None else upper - 1}"
            )
    for name in _TICKET_FLOAT_COLUMNS:
        column = _array(arrays, f"tickets/{name}")
        if column.shape != (count,) or column.dtype.kind != "f":
            raise StateFormatError(f"ticket column {name!r} has shape {column.shape} ({column.dtype})")
    if not np.isfinite(arrays["tickets/asked_at"]).all():
        raise StateFormatError("ticket ask times hold NaN or inf values")
    done = arrays["tickets/status"] == DONE
    x = arrays.get("tickets/x")
    if x is None:
        if done.any():
            raise StateFormatError("the state has done tickets but no outputs")
        return
    if x_shape is None or list(x.shape) != [count, *x_shape] or x.dtype.kind != "f":
        raise StateFormatError(
            f"ticket outputs have shape {list(x.shape)} ({x.dtype}); expected {[count, *(x_shape or ['?'])]}"
        )
    finite = np.isfinite(x.reshape(count, -1)).all(axis=1)
    if np.any(done & ~finite):
        raise StateFormatError(
            f"done ticket(s) {np.flatnonzero(done & ~finite)[:5].tolist()} have NaN or inf outputs"
        )


def _check_flows(
    arrays: Mapping[str, np.ndarray],
    members: list[int],
    flow: FlowConfig,
    theta_dim: int,
    x_shape: list[int] | None,
    embedding_net: bool,
) -> None:
    """The flows the header declares must be about the size of the stored weights."""
    if x_shape is None:
        return
    context = 1 if embedding_net else math.prod(x_shape)
    estimate = flow.weight_count_estimate(theta_dim, context)
    for level, count in enumerate(members):
        for member in range(count):
            prefix = f"model/{level}/{member}/"
            stored = [a for name, a in arrays.items() if name.startswith(prefix)]
            values = sum(a.size for a in stored)
            if len(stored) < flow.num_transforms or estimate > _ESTIMATE_SLACK * values + _ESTIMATE_FLOOR:
                raise StateFormatError(
                    f"the header declares flows of about {estimate} weights in {flow.num_transforms} "
                    f"transforms; member {member} of level {level} stores {values} in {len(stored)} "
                    "arrays"
                )


# ---------------------------------------------------------------- helpers
def _array(arrays: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    if name not in arrays:
        raise StateFormatError(f"the state has no {name!r} array")
    return arrays[name]


def _mapping(meta: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = meta.get(key)
    if not isinstance(value, Mapping):
        raise StateFormatError(f"the state's {key!r} is not a JSON object")
    return value


def _list(meta: Mapping[str, Any], key: str, *, item: type) -> list[Any]:
    value = meta.get(key)
    if not isinstance(value, list) or not all(
        isinstance(v, item) and not isinstance(v, bool) for v in value
    ):
        raise StateFormatError(f"the state's {key!r} must be a list of {item.__name__}; got {value!r:.80}")
    return value


def _integer(meta: Mapping[str, Any], key: str, low: int, high: int | None = None) -> int:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        upper = "" if high is None else f" and at most {high}"
        raise StateFormatError(f"the state's {key!r} must be an integer of at least {low}{upper}; got {value!r:.80}")
    return value
