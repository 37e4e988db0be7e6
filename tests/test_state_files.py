"""State files (``.npz``) and checkpoints that must not load: crafted sizes,
invalid values, random corruption; and the file mode of saved states.

Every refused load raises :class:`StateFormatError` within bounded time and
memory and leaves the file as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import resource
import sqlite3
import stat
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mfask
from mfask import BoxUniform, FlowConfig, MultiFidelityPosterior, StateFormatError, TrainingConfig
from mfask.state_file import decode_state, encode_state
from mfask.study import create_study, open_study

TINY_FLOW = FlowConfig(hidden_features=8, num_transforms=1, num_bins=4)
QUICK_TRAINING = TrainingConfig(max_epochs=2)
#: memory a refused (or accepted) load of these small files may use
MEMORY_BUDGET = 400 * 2**20
#: seconds a load of these small files may take
TIME_BUDGET = 5.0


def simulate(theta: np.ndarray) -> np.ndarray:
    return np.stack([theta[:, 0] + theta[:, 1], theta[:, 0] * theta[:, 1]], axis=1)


def trained_posterior() -> MultiFidelityPosterior:
    prior = BoxUniform([0.0, 0.0], [1.0, 2.0], names=["a", "b"])
    post = MultiFidelityPosterior(
        prior, ["low", "high"], seed=0, flow=TINY_FLOW, training=QUICK_TRAINING
    )
    for fidelity in ("low", "high"):
        batch = post.ask(fidelity, 6)
        post.tell(batch, simulate(batch.theta))
    post.fit()
    post.ask("high", 2)  # pending tickets in the file too
    return post


@pytest.fixture(scope="module")
def state_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("state") / "valid.npz"
    trained_posterior().save(path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def study_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("study") / "s.mfask"
    prior = BoxUniform([0.0, 0.0], [1.0, 2.0], names=["a", "b"])
    study = create_study(path, prior, ["low", "high"], seed=0, flow=TINY_FLOW, training=QUICK_TRAINING)
    for fidelity in ("low", "high"):
        batch = study.ask(fidelity, 6)
        study.tell(batch, simulate(batch.theta))
    study.fit()
    study.close()
    return path


# ------------------------------------------------------------------ helpers
def data_in_use() -> int:
    """Bytes of the process's data segment (what RLIMIT_DATA bounds)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmData in /proc/self/status")


@contextlib.contextmanager
def bounded(memory: int = MEMORY_BUDGET, seconds: float = TIME_BUDGET) -> Iterator[None]:
    """Fail (MemoryError in the code under test) when the block allocates more
    than ``memory`` bytes, and fail the test when it takes over ``seconds``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (data_in_use() + memory, hard))
    start = time.monotonic()
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
    assert time.monotonic() - start < seconds, f"took {time.monotonic() - start:.1f} s"


def members_of(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    return decode_state(data)


def load_bytes(tmp_path: Path, data: bytes, name: str = "state.npz") -> MultiFidelityPosterior:
    """Load ``data`` from a file under the time/memory bounds; the file must
    be unchanged afterwards, whatever happened."""
    path = tmp_path / name
    path.write_bytes(data)
    try:
        with bounded():
            return MultiFidelityPosterior.load(path)
    finally:
        assert path.read_bytes() == data, "a load changed the file"


def npy_member(array: np.ndarray, header: dict[str, Any] | None = None) -> bytes:
    """An ``.npy`` member; ``header`` overrides the declared descr/shape."""
    stream = io.BytesIO()
    fields = {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False,
              "shape": array.shape, **(header or {})}
    np.lib.format.write_array_header_1_0(stream, fields)
    stream.write(np.ascontiguousarray(array).tobytes())
    return stream.getvalue()


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    return buffer.getvalue()


def raw_members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def header_bytes(text: str) -> bytes:
    return npy_member(np.frombuffer(text.encode(), dtype=np.uint8))


def with_meta(data: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    meta, arrays = members_of(data)
    meta = json.loads(json.dumps(meta))
    change(meta)
    for key in ("format", "version"):
        meta.pop(key, None)
    return encode_state(meta, arrays)


def with_arrays(data: bytes, change: Callable[[dict[str, np.ndarray]], None]) -> bytes:
    meta, arrays = members_of(data)
    for key in ("format", "version"):
        meta.pop(key)
    change(arrays)
    return encode_state(meta, arrays)


def assert_valid(post: MultiFidelityPosterior) -> None:
    """A loaded posterior whose content is usable: consistent ledger, a
    state that saves and loads again, asks that work."""
    arrays = post._ledger.to_arrays()
    size = arrays["theta"].shape[0]
    assert np.isfinite(arrays["theta"]).all()
    assert set(np.unique(arrays["status"])) <= set(range(len(mfask.tickets.STATUSES)))
    assert set(np.unique(arrays["source"])) <= set(range(len(mfask.tickets.SOURCES)))
    if "x" in arrays:
        assert arrays["x"].shape == (size, *post.x_shape)
        done = arrays["status"] == mfask.tickets.DONE
        assert np.isfinite(arrays["x"][done]).all()
    buffer = encode_state(*post._export_state())
    assert decode_state(buffer)[0]["x_shape"] == (None if post.x_shape is None else list(post.x_shape))
    assert len(post.ask(post.fidelity_names[0], 2)) == 2


# ------------------------------------------------------- item 7: sizes first
def _deep_json(data: bytes) -> bytes:
    members = raw_members(data)
    meta, _ = members_of(data)
    text = json.dumps(meta)[:-1] + ', "deep": ' + "[" * 200_000 + "]" * 200_000 + "}"
    members["__meta__.npy"] = header_bytes(text)
    return zip_bytes(members)


def _zip_bomb(data: bytes) -> bytes:
    """A member that inflates to 512 MB from 2 MB."""
    buffer = io.BytesIO(data)
    with zipfile.ZipFile(buffer, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("tickets/told_at_copy.npy", "w", force_zip64=True) as stream:
            stream.write(npy_member(np.zeros(0), {"shape": (2**26,)}))
            chunk = bytes(2**20)
            for _ in range(512):
                stream.write(chunk)
    return buffer.getvalue()


def _bomb_in_known_member(data: bytes) -> bytes:
    """The ticket parameters, deflated, declaring 2**25 rows of zeros."""
    members = raw_members(data)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, payload in members.items():
            if name != "tickets/theta.npy":
                archive.writestr(name, payload)
        with archive.open("tickets/theta.npy", "w", force_zip64=True) as stream:
            stream.write(npy_member(np.zeros((0, 2)), {"shape": (2**25, 2)}))
            chunk = bytes(2**20)
            for _ in range(512):
                stream.write(chunk)
    return buffer.getvalue()


def _declared_shape(data: bytes) -> bytes:
    members = raw_members(data)
    members["tickets/theta.npy"] = npy_member(np.zeros((1, 2)), {"shape": (10**13, 2)})
    return zip_bytes(members)


def _duplicate_member(data: bytes) -> bytes:
    members = list(raw_members(data).items())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, pytest.warns(UserWarning, match="Duplicate"):
        for name, payload in members:
            archive.writestr(name, payload)
        archive.writestr("tickets/theta.npy", npy_member(np.zeros((10**5, 2))))
    return buffer.getvalue()


def _unknown_member(data: bytes) -> bytes:
    return with_arrays(data, lambda arrays: arrays.update({"extra/blob": np.zeros(1000)}))


def _stray_model_member(data: bytes) -> bytes:
    return with_arrays(data, lambda arrays: arrays.update({"model/0/7/w": np.zeros(3)}))


def _set(path: tuple[Any, ...], value: Any) -> Callable[[bytes], bytes]:
    def change(meta: dict[str, Any]) -> None:
        target = meta
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return lambda data: with_meta(data, change)


CRAFTED = {
    "x_shape of 1e9 values": _set(("x_shape",), [10**9]),
    "x_shape of 1e13 values in two dims": _set(("x_shape",), [10**7, 10**6]),
    "negative x_shape": _set(("x_shape",), [-1]),
    "empty x_shape": _set(("x_shape",), []),
    "x_shape of floats": _set(("x_shape",), [2.5]),
    "1e6 transforms": _set(("flow", "num_transforms"), 10**6),
    "a flow of 1e12 weights": _set(("flow", "hidden_features"), 10**6),
    "1e6 residual blocks": _set(("flow", "num_blocks"), 10**6),
    "1e9 ensemble members": _set(("ensemble_size",), 10**9),
    "1e9 stored members": _set(("levels", 1, "num_members"), 10**9),
    "more levels than fidelities": lambda data: with_meta(
        data, lambda meta: meta["levels"].append(dict(meta["levels"][0]))
    ),
    "deeply nested header": _deep_json,
    "a zip bomb member": _zip_bomb,
    "a deflated bomb in a known member": _bomb_in_known_member,
    "a member declaring 1e13 rows": _declared_shape,
    "a member twice": _duplicate_member,
    "an unknown member": _unknown_member,
    "weights of a member that does not exist": _stray_model_member,
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_sizes_are_refused_before_allocating(state_bytes, tmp_path, case):
    crafted = CRAFTED[case](state_bytes)
    with pytest.raises(StateFormatError):
        load_bytes(tmp_path, crafted)


def test_a_checkpoint_zip_bomb_with_a_valid_digest_is_refused_in_bounded_memory(study_file, tmp_path):
    path = tmp_path / "bomb.mfask"
    _copy_study(study_file, path)
    blob = _checkpoint_blob(path)
    members = raw_members(blob)
    buffer = io.BytesIO()
    name = next(n for n in members if n.startswith("model/"))
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for member, payload in members.items():
            if member != name:
                archive.writestr(member, payload)
        with archive.open(name, "w", force_zip64=True) as stream:
            stream.write(npy_member(np.zeros(0, dtype=np.float32), {"shape": (2**27,)}))
            chunk = bytes(2**20)
            for _ in range(512):
                stream.write(chunk)
    _set_checkpoint_blob(path, buffer.getvalue())
    before = _dump(path)
    with bounded(), pytest.raises(StateFormatError):
        open_study(path)
    assert _dump(path) == before


# --------------------------------------------------- item 16: values on load
def _ticket_column(name: str, row: int, value: Any) -> Callable[[bytes], bytes]:
    def change(arrays: dict[str, np.ndarray]) -> None:
        column = arrays[f"tickets/{name}"].copy()
        column[row] = value
        arrays[f"tickets/{name}"] = column

    return lambda data: with_arrays(data, change)


def _weights_nan(data: bytes) -> bytes:
    def change(arrays: dict[str, np.ndarray]) -> None:
        name = next(k for k in arrays if k.startswith("model/1/0/") and arrays[k].dtype.kind == "f"
                    and arrays[k].size > 1)
        weights = arrays[name].copy()
        weights.flat[0] = np.nan
        arrays[name] = weights

    return with_arrays(data, change)


def _x_width(data: bytes) -> bytes:
    return with_arrays(data, lambda arrays: arrays.update({"tickets/x": arrays["tickets/x"][:, :1]}))


def _prior(marginal: dict[str, Any]) -> Callable[[bytes], bytes]:
    return _set(("prior", "marginals", 0), marginal)


INVALID = {
    "status 9": _ticket_column("status", 0, 9),
    "negative status": _ticket_column("status", 0, -1),
    "source 99": _ticket_column("source", 0, 99),
    "fidelity 7": _ticket_column("fidelity", 0, 7),
    "negative round": _ticket_column("round", 0, -3),
    "NaN parameters": _ticket_column("theta", 0, np.nan),
    "a done ticket with a NaN output": _ticket_column("x", 0, np.nan),
    "NaN asked_at": _ticket_column("asked_at", 0, np.nan),
    "x of the wrong width": _x_width,
    "a Normal prior with a negative scale": _prior({"type": "Normal", "params": {"loc": 0.0, "scale": -1.0}}),
    "a Gamma prior with zero rate": _prior({"type": "Gamma", "params": {"concentration": 1.0, "rate": 0.0}}),
    "a Normal prior with an infinite loc": _prior({"type": "Normal", "params": {"loc": float("inf"), "scale": 1.0}}),
    "a uniform prior with low > high": _prior({"type": "Uniform", "params": {"low": 1.0, "high": 0.0}}),
    "NaN weights": _weights_nan,
    "a negative round": _set(("round",), -1),
    "a negative fit count": _set(("levels", 0, "fit_count"), -2),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_values_are_refused_on_load(state_bytes, tmp_path, case):
    crafted = INVALID[case](state_bytes)
    with pytest.raises(StateFormatError):
        load_bytes(tmp_path, crafted)


def test_the_valid_file_loads(state_bytes, tmp_path):
    assert_valid(load_bytes(tmp_path, state_bytes))


# ------------------------------------------------ item 19: modes of saves
def test_save_honours_the_umask_and_keeps_an_existing_files_mode(tmp_path):
    post = MultiFidelityPosterior(BoxUniform([0.0], [1.0]), seed=0)
    previous = os.umask(0o022)
    try:
        post.save(tmp_path / "new.npz")
        assert stat.S_IMODE((tmp_path / "new.npz").stat().st_mode) == 0o644
        os.umask(0o077)
        post.save(tmp_path / "private.npz")
        assert stat.S_IMODE((tmp_path / "private.npz").stat().st_mode) == 0o600
        shared = tmp_path / "shared.npz"
        post.save(shared)
        shared.chmod(0o664)
        post.save(shared)  # replacing keeps the mode, whatever the umask
        assert stat.S_IMODE(shared.stat().st_mode) == 0o664
    finally:
        os.umask(previous)
    assert MultiFidelityPosterior.load(shared).seed == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.npz", "private.npz", "shared.npz"]


# ------------------------------------------------------------ fuzz: files
_HEADER_FIELDS = [
    ("x_shape",), ("round",), ("seed",), ("ensemble_size",), ("match_tolerance",),
    ("parameter_names",), ("fidelities",), ("flow", "num_transforms"), ("flow", "hidden_features"),
    ("flow", "num_bins"), ("flow", "num_blocks"), ("flow", "tail_bound"), ("levels",),
    ("levels", 0, "num_members"), ("levels", 1, "fit_count"), ("levels", 1, "trained_on"),
    ("levels", 1, "initialised_from"), ("levels", 1, "histories"), ("prior",),
    ("prior", "marginals", 0, "params", "low"), ("training", "batch_size"), ("sequential",),
    ("transfer_standardization",), ("has_embedding_net",), ("parameter_space",),
]

_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)


@st.composite
def corruptions(draw: st.DrawFn, data: bytes) -> bytes:
    """A random corruption of a valid state: flipped, deleted or inserted bytes,
    a truncation, or a header field set to a random JSON value."""
    kind = draw(st.sampled_from(["flip", "delete", "insert", "truncate", "header", "header"]))
    if kind == "header":
        path = draw(st.sampled_from(_HEADER_FIELDS))
        value = draw(_JSON_VALUES)

        def change(meta: dict[str, Any]) -> None:
            target = meta
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value

        try:
            return with_meta(data, change)
        except (KeyError, IndexError, TypeError, ValueError, OverflowError):  # absent or unencodable (e.g. 2**70 into numpy): a flip instead
            kind = "flip"
    raw = bytearray(data)
    if kind == "truncate":
        return bytes(raw[: draw(st.integers(0, len(raw) - 1))])
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(raw) - 1))
        if kind == "flip":
            raw[at] ^= draw(st.integers(1, 255))
        elif kind == "delete":
            del raw[at: at + draw(st.integers(1, 16))]
        else:
            raw[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(raw)


def _fuzz_state_files(state_bytes: bytes, tmp_path: Path, examples: int) -> None:
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def check(data: st.DataObject) -> None:
        corrupted = data.draw(corruptions(state_bytes))
        try:
            post = load_bytes(tmp_path, corrupted)
        except StateFormatError:
            return
        assert_valid(post)

    check()


def test_fuzz_state_files(state_bytes, tmp_path):
    _fuzz_state_files(state_bytes, tmp_path, examples=60)


@pytest.mark.slow
def test_fuzz_state_files_long(state_bytes, tmp_path):
    _fuzz_state_files(state_bytes, tmp_path, examples=2000)


# ------------------------------------------------------- fuzz: checkpoints
def _copy_study(source: Path, target: Path) -> None:
    with sqlite3.connect(source) as origin, sqlite3.connect(target) as copy:
        origin.backup(copy)


def _checkpoint_blob(path: Path) -> bytes:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT weights FROM checkpoints ORDER BY id DESC LIMIT 1").fetchone()[0]


def _set_checkpoint_blob(path: Path, blob: bytes) -> None:
    """Replace the newest checkpoint's weights with a matching digest."""
    with sqlite3.connect(path) as connection:
        connection.execute(
            "UPDATE checkpoints SET weights = ?, sha256 = ? WHERE id = (SELECT MAX(id) FROM checkpoints)",
            (blob, hashlib.sha256(blob).hexdigest()),
        )
    connection.close()


def _dump(path: Path) -> list[str]:
    connection = sqlite3.connect(path)
    try:
        return list(connection.iterdump())
    finally:
        connection.close()


def _fuzz_checkpoints(study_file: Path, tmp_path: Path, examples: int) -> None:
    path = tmp_path / "fuzzed.mfask"
    _copy_study(study_file, path)
    blob = _checkpoint_blob(path)

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def check(data: st.DataObject) -> None:
        corrupted = data.draw(corruptions(blob))
        _set_checkpoint_blob(path, corrupted)
        before = _dump(path)
        try:
            with bounded():
                study = open_study(path)
        except StateFormatError:
            assert _dump(path) == before
            return
        try:
            assert_valid(study.posterior)
        finally:
            study.close()

    check()


def test_fuzz_checkpoints(study_file, tmp_path):
    _fuzz_checkpoints(study_file, tmp_path, examples=25)


@pytest.mark.slow
def test_fuzz_checkpoints_long(study_file, tmp_path):
    _fuzz_checkpoints(study_file, tmp_path, examples=600)
