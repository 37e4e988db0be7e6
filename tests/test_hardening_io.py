"""The study's files under trouble (issue 17): the training lock released on
every failure, a lock file that is not mfask's (a symbolic link, another file)
never written through, read-only studies, I/O errors (full disk, failing
drive, read-only file) as clear errors with the state unchanged, and a study
file deleted or replaced while open.

Tests that make files read-only with ``chmod`` skip as root (root writes
anyway); the same code paths are tested as root by opening with
``read_only=True`` and by injecting SQLite's errors into the connection.
"""

from __future__ import annotations

import errno
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfask import (
    BoxUniform,
    FlowConfig,
    MfaskError,
    ReadOnlyStudyError,
    StudyLockedError,
    StudyStorageError,
    TrainingConfig,
)
from mfask.cli import EXIT_CODES, main
from mfask.store import StudyStore
from mfask.study import Study, create_study, open_study
from mfask.study_lock import TrainingLock

TINY_FLOW = FlowConfig(hidden_features=8, num_transforms=1, num_bins=4)
QUICK_TRAINING = TrainingConfig(max_epochs=3)
X_O = [0.9, 0.4]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_non_root = pytest.mark.skipif(IS_ROOT, reason="root writes read-only files and folders anyway")

pytestmark = pytest.mark.filterwarnings("ignore::mfask.errors.MaxEpochsWarning")


def simulate(theta: np.ndarray) -> np.ndarray:
    """``(n, 2)`` parameters -> ``(n, 2)`` outputs."""
    theta = np.atleast_2d(theta)
    return np.stack([theta[:, 0] + theta[:, 1], theta[:, 0] * theta[:, 1]], axis=1)


def make_study(path: Path, *, trained: bool = False) -> Study:
    """A study with 30 results and 2 pending tickets (trained if asked)."""
    prior = BoxUniform([0.0, 0.0], [1.0, 2.0], names=["a", "b"])
    study = create_study(
        path, prior, ["high"], seed=0, flow=TINY_FLOW, training=QUICK_TRAINING, verbose=False
    )
    batch = study.ask("high", 32)
    study.tell(batch.ticket_ids[:30], simulate(batch.theta[:30]), cost=1.5)
    if trained:
        study.fit()
    return study


def file_state(path: Path) -> dict[str, Any]:
    """What the study file holds (read through a separate read-only handle):
    every ticket's stored fields, the revision, checkpoints and notes."""
    with open_study(path, lazy=True, read_only=True) as study:
        status = study.status()
        rows = [
            (r.ticket, r.fidelity, r.source, r.status, r.theta.tolist(),
             None if r.x is None else r.x.tolist(), r.cost, r.reason, r.retry_of)
            for r in study.tickets()
        ]
        info = {k: v for k, v in study.info().items() if k != "created_at"}
        return {"rows": rows, "revision": status["revision"],
                "checkpoints": status["checkpoints"], "info": info}


def memory_state(study: Study) -> dict[str, Any]:
    """What the study object shows of its tickets and results."""
    post = study.posterior
    theta, x = post.data("high")
    return {"pending": post.pending().tolist(), "theta": theta.tolist(), "x": x.tolist(),
            "round": post.round}


def assert_continues_like(study: Study, twin: Study) -> None:
    """``study`` and ``twin`` hold the same state and make the same next
    ask and tell (same ticket ids, same parameters: the ask stream did not move)."""
    assert memory_state(study) == memory_state(twin)
    batch, expected = study.ask("high", 3), twin.ask("high", 3)
    np.testing.assert_array_equal(batch.ticket_ids, expected.ticket_ids)
    np.testing.assert_array_equal(batch.theta, expected.theta)
    study.tell(batch, simulate(batch.theta))
    twin.tell(expected, simulate(expected.theta))
    assert memory_state(study) == memory_state(twin)


def lock_path(study_path: Path) -> Path:
    return Path(str(study_path) + ".lock")


def lock_from_another_process(path: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Take and release the training lock at ``path`` in a new process."""
    code = textwrap.dedent(f"""
        from mfask.study_lock import TrainingLock
        with TrainingLock({str(path)!r}).hold(timeout={timeout}):
            print("held")
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ==================================== 4: the lock is released on every failure
def failing_holder_write(error_number: int) -> Callable[[int, bytes], int]:
    """``os.write`` that fails (like a full disk) for the lock's holder line only."""
    real_write = os.write

    def write(descriptor: int, data: bytes) -> int:
        if b" by pid " in bytes(data):
            raise OSError(error_number, os.strerror(error_number))
        return real_write(descriptor, data)

    return write


def test_fit_releases_the_lock_when_the_holder_line_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.mfask"
    study = make_study(path)
    before = file_state(path)
    monkeypatch.setattr(os, "write", failing_holder_write(errno.ENOSPC))
    with pytest.raises(StudyStorageError, match="disk full"):
        study.fit()
    monkeypatch.undo()
    assert file_state(path) == before  # nothing trained, nothing stored
    other = lock_from_another_process(lock_path(path), timeout=5)
    assert (other.returncode, other.stdout.strip()) == (0, "held"), other.stderr
    # a later fit in the same process does not wait on itself
    assert list(study.fit(timeout=5)) == ["high"]
    assert file_state(path)["checkpoints"] == 1
    assert lock_path(path).read_bytes() == b""  # released: no holder line left
    study.close()


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")


@needs_proc
@pytest.mark.parametrize("break_call", ["write", "short write", "ftruncate"])
def test_every_failure_while_taking_the_lock_releases_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, break_call: str
) -> None:
    path = tmp_path / "s.mfask.lock"
    lock = TrainingLock(path)
    real_write = os.write
    if break_call == "write":
        monkeypatch.setattr(os, "write", failing_holder_write(errno.EIO))
    elif break_call == "short write":
        def short_write(descriptor: int, data: bytes) -> int:
            data = bytes(data)
            return real_write(descriptor, data[:3] if b" by pid " in data else data)
        monkeypatch.setattr(os, "write", short_write)
    else:
        def failing_truncate(descriptor: int, length: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        monkeypatch.setattr(os, "ftruncate", failing_truncate)
    descriptors = open_descriptors()
    with pytest.raises(StudyStorageError, match="could not write the training lock"):
        with lock.hold(timeout=0):
            pytest.fail("the block must not run")
    monkeypatch.undo()
    assert open_descriptors() == descriptors
    assert lock.holder() is None
    with TrainingLock(path).hold(timeout=0):  # another object in this process
        assert "pid" in lock.holder()
    with lock.hold(timeout=0):  # and the object that failed
        pass


@needs_proc
def test_an_interrupted_or_timed_out_wait_leaves_nothing_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.mfask.lock"
    holder, waiter = TrainingLock(path), TrainingLock(path)
    with holder.hold():
        descriptors = open_descriptors()
        with pytest.raises(StudyLockedError, match="training by pid"):
            with waiter.hold(timeout=0.05):
                pass
        assert open_descriptors() == descriptors

        def interrupt(seconds: float) -> None:
            raise KeyboardInterrupt

        monkeypatch.setattr(time, "sleep", interrupt)
        with pytest.raises(KeyboardInterrupt):
            with waiter.hold(timeout=None):
                pass
        monkeypatch.undo()
        assert open_descriptors() == descriptors
        assert "this process" in holder.holder()
    with waiter.hold(timeout=0):
        pass


# ========================== 6: a lock file that is not mfask's is left alone
def test_a_symlinked_lock_is_never_followed_by_fit_or_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.mfask"
    study = make_study(path)
    lock_path(path).unlink()  # left by the creation, which holds the lock to link the file into place
    victim = tmp_path / "precious.txt"
    victim.write_text("precious content\n")
    lock_path(path).symlink_to(victim)
    with pytest.raises(StudyStorageError, match="symbolic link"):
        study.fit()
    assert victim.read_text() == "precious content\n"
    with pytest.raises(StudyStorageError, match="symbolic link"):
        study.status()
    code, out, err = run_cli(capsys, "status", path)
    assert (code, out) == (EXIT_CODES["study_file"], "")
    assert "symbolic link" in err and "Remove the link" in err
    assert victim.read_text() == "precious content\n"
    assert lock_path(path).is_symlink()
    # removing the link, as the message says, lets training go on
    lock_path(path).unlink()
    assert file_state(path)["checkpoints"] == 0
    assert list(study.fit()) == ["high"]
    study.close()


def test_a_dangling_symlinked_lock_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.mfask"
    study = make_study(path)
    lock_path(path).unlink()  # left by the creation, which holds the lock to link the file into place
    target = tmp_path / "elsewhere" / "created.txt"
    target.parent.mkdir()
    lock_path(path).symlink_to(target)
    with pytest.raises(StudyStorageError, match="symbolic link"):
        study.fit()
    with pytest.raises(StudyStorageError, match="symbolic link"):
        study.status()
    assert not target.exists()
    study.close()


@pytest.mark.parametrize("kind", ["foreign content", "hard link", "directory"])
def test_a_lock_file_mfask_did_not_create_is_not_written(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "s.mfask"
    study = make_study(path)
    lock_path(path).unlink()  # left by the creation, which holds the lock to link the file into place
    victim = tmp_path / "precious.txt"
    victim.write_text("precious content\n")
    if kind == "foreign content":
        lock_path(path).write_text("precious content\n")
        victim = lock_path(path)
        expected = "not an mfask training lock"
    elif kind == "hard link":
        os.link(victim, lock_path(path))
        expected = "hard links"
    else:
        lock_path(path).mkdir()
        expected = "not a regular file"
        with pytest.raises(StudyStorageError, match=expected):
            study.status()
    with pytest.raises(StudyStorageError, match=expected):
        study.fit()
    if kind != "directory":
        assert victim.read_text() == "precious content\n"
    assert study.posterior.training_histories("high") == []
    study.close()


def take_and_release(path: Path) -> bool:
    """Whether a lock on ``path`` (an existing file) was taken; ``False``
    when it was refused as not mfask's, which must leave the file as it was."""
    content = path.read_bytes()
    lock = TrainingLock(path)
    try:
        assert lock.holder() is None
        with lock.hold(timeout=0):
            assert b" by pid " in path.read_bytes()
    except StudyStorageError as error:
        assert "not an mfask training lock" in str(error)
        assert path.read_bytes() == content
        return False
    assert path.read_bytes() == b""  # released: emptied
    return True


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=300))
def test_a_lock_file_holding_anything_else_is_left_as_it_is(
    tmp_path_factory: pytest.TempPathFactory, content: bytes
) -> None:
    path = tmp_path_factory.mktemp("lock") / "s.mfask.lock"
    path.write_bytes(content)
    taken = take_and_release(path)
    if content == b"":
        assert taken
    if taken:  # only an empty file or one line naming a holder
        assert content == b"" or (b" by pid " in content and content.rstrip(b"\n").count(b"\n") == 0)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    purpose=st.text(st.characters(blacklist_characters="\n"), max_size=20),
    host=st.text(st.characters(blacklist_characters="\n"), max_size=20),
    pid=st.integers(1, 2**22),
)
def test_a_lock_file_left_by_a_killed_holder_is_taken(
    tmp_path_factory: pytest.TempPathFactory, purpose: str, host: str, pid: int
) -> None:
    path = tmp_path_factory.mktemp("lock") / "s.mfask.lock"
    path.write_bytes(f"{purpose} by pid {pid} on {host} since 2026-01-01T00:00:00+0000\n".encode())
    assert take_and_release(path)


def test_the_status_probe_neither_creates_nor_changes_the_lock_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.mfask"
    study = make_study(path)
    lock_path(path).unlink()  # left by the creation, which holds the lock to link the file into place
    assert study.status()["training_lock"] is None
    assert run_cli(capsys, "status", path)[0] == 0
    assert not lock_path(path).exists()
    # a killed holder leaves its line: the lock is free, the line untouched
    stale = b"training by pid 999999 on elsewhere since 2026-01-01T00:00:00+0000\n"
    lock_path(path).write_bytes(stale)
    os.utime(lock_path(path), (1_000_000_000, 1_000_000_000))
    assert study.status()["training_lock"] is None
    assert run_cli(capsys, "status", path)[0] == 0
    assert lock_path(path).read_bytes() == stale
    assert lock_path(path).stat().st_mtime == 1_000_000_000
    assert list(study.fit()) == ["high"]  # a stale holder line is mfask's: training takes the lock
    study.close()


# ================================================== 11: read-only studies
def assert_read_only(study: Study, path: Path, *, trained: bool, scratch: Path) -> None:
    """Reading works, every change raises ReadOnlyStudyError, the file stays
    as it was (``scratch``: a writable folder for a saved state)."""
    before = file_state(path)
    assert study.read_only
    status = study.status()
    assert status["total"]["done"] == 30 and status["total"]["pending"] == 2
    assert [r.ticket for r in study.pending()] == [30, 31]
    assert study.count("high", "done") == 30
    assert len(study.tickets()) == 32
    changes: list[Callable[[], Any]] = [
        lambda: study.ask("high", 2),
        lambda: study.tell([30], simulate(np.zeros((1, 2)))),
        lambda: study.fail([30], "broken"),
        lambda: study.abandon([31]),
        lambda: study.retry([31]),
        lambda: study.set_info("note", "x"),
        lambda: study.fit(force=True),
        lambda: study.set_observation(X_O),
    ]
    for change in changes:
        with pytest.raises(ReadOnlyStudyError, match="read-only"):
            change()
    if trained:
        assert study.fit() == {}  # nothing to train: fine without writing
        samples = study.sample(5, X_O)
        assert samples.shape == (5, 2) and np.all(np.isfinite(samples))
        assert np.all(np.isfinite(study.log_prob(samples, X_O)))
        saved = scratch / "saved.npz"
        study.save(saved)
        assert saved.stat().st_size > 0
        saved.unlink()
    else:
        with pytest.raises(ReadOnlyStudyError, match="needs to train"):
            study.sample(5, X_O)
    assert file_state(path) == before


@pytest.mark.parametrize("trained", [True, False])
def test_a_study_opened_read_only_reads_and_refuses_changes(tmp_path: Path, trained: bool) -> None:
    path = tmp_path / "s.mfask"
    writable = make_study(path, trained=trained)
    for lazy in (False, True):
        study = open_study(path, read_only=True, lazy=lazy, verbose=False)
        assert_read_only(study, path, trained=trained, scratch=tmp_path)
        study.close()
    if trained:  # the stored sampling stream: a read-only sample is the writable study's next one
        reader = open_study(path, read_only=True)
        np.testing.assert_array_equal(reader.sample(4, X_O), writable.sample(4, X_O))
        reader.close()
    # the writable handle continues as if nothing had happened
    twin = make_study(tmp_path / "twin.mfask", trained=trained)
    assert_continues_like(writable, twin)
    writable.close()
    twin.close()


def test_a_read_only_study_refuses_changes_in_memory_too(tmp_path: Path) -> None:
    make_study(tmp_path / "s.mfask").close()
    study = open_study(tmp_path / "s.mfask", read_only=True)
    before = memory_state(study)
    with pytest.raises(ReadOnlyStudyError):
        study.ask("high", 4)
    with pytest.raises(ReadOnlyStudyError):
        study.tell([30, 31], simulate(np.ones((2, 2))))
    assert memory_state(study) == before
    study.close()


@needs_non_root
def test_a_read_only_file_opens_for_reading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.mfask"
    make_study(path, trained=True).close()
    path.chmod(0o444)
    try:
        study = open_study(path)
        assert_read_only(study, path, trained=True, scratch=tmp_path)
        study.close()
        assert run_cli(capsys, "status", path)[0] == 0
        code, _, err = run_cli(capsys, "ask", path, "-f", "high", "-n", "2")
        assert code == EXIT_CODES["study_file"] and "read-only" in err
    finally:
        path.chmod(0o644)


@needs_non_root
def test_a_study_in_a_read_only_folder_opens_for_reading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "s.mfask"
    make_study(path, trained=True).close()  # closed: no -wal/-shm left beside it
    lock_path(path).unlink(missing_ok=True)
    folder.chmod(0o555)
    try:
        study = open_study(path)
        assert_read_only(study, path, trained=True, scratch=tmp_path)
        study.close()
        assert run_cli(capsys, "status", path)[0] == 0
        assert run_cli(capsys, "status", path, "--pending")[0] == 0
        assert run_cli(capsys, "export", path, "-o", tmp_path / "all.csv")[0] == 0
        assert run_cli(capsys, "sample", path, "-n", "3", "--x", "0.9,0.4", "-q")[0] == 0
        code, _, err = run_cli(capsys, "ask", path, "-f", "high", "-n", "2")
        assert code == EXIT_CODES["study_file"] and "read-only" in err
        assert sorted(p.name for p in folder.iterdir()) == ["s.mfask"]
    finally:
        folder.chmod(0o755)


@needs_non_root
def test_an_unwritable_lock_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.mfask"
    study = make_study(path)
    lock_path(path).touch()
    lock_path(path).chmod(0o444)
    try:
        with pytest.raises(StudyStorageError, match="training lock"):
            study.fit()
    finally:
        lock_path(path).chmod(0o644)
    study.close()


def test_a_lock_file_that_cannot_be_created_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.mfask"
    study = make_study(path)
    before = file_state(path)
    real_open = os.open

    def refusing_open(file: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if str(file).endswith(".lock") and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    with pytest.raises(StudyStorageError, match="make the study's folder writable"):
        study.fit()
    monkeypatch.undo()
    assert file_state(path) == before
    study.close()


# ====================================== 11: I/O errors are clear MfaskErrors
class FaultyConnection(sqlite3.Connection):
    """An SQLite connection whose statements starting with :attr:`fail_on`
    raise ``sqlite3.OperationalError(error)``, as SQLite does when the disk is
    full, the drive fails or the file is read-only."""

    fail_on: str | None = None
    error: str = ""

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        self._maybe_fail(sql)
        return super().execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        self._maybe_fail(sql)
        return super().executemany(sql, *args)

    def _maybe_fail(self, sql: str) -> None:
        if self.fail_on is not None and sql.lstrip().upper().startswith(self.fail_on):
            raise sqlite3.OperationalError(self.error)

    def cap_pages(self) -> None:
        """Let the database grow no more: a genuinely full "disk" for SQLite."""
        pages = super().execute("PRAGMA page_count").fetchone()[0]
        super().execute(f"PRAGMA max_page_count = {pages}")


@pytest.fixture
def faulty_connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FaultyConnection]]:
    """Studies opened while this fixture is active get :class:`FaultyConnection`s
    (listed in the order they were opened)."""
    opened: list[FaultyConnection] = []
    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        connection = real_connect(*args, factory=FaultyConnection, **kwargs)
        opened.append(connection)
        return connection

    monkeypatch.setattr(sqlite3, "connect", connect)
    yield opened


SQLITE_FAILURES = {
    "database or disk is full": (StudyStorageError, "disk is full.*Free space"),
    "disk I/O error": (StudyStorageError, "disk I/O error.*Check the disk"),
    "attempt to write a readonly database": (ReadOnlyStudyError, "read-only here.*writable"),
}
CHANGES: dict[str, Callable[[Study], Any]] = {
    "ask": lambda study: study.ask("high", 4),
    "tell": lambda study: study.tell([30, 31], simulate(np.ones((2, 2))), cost=2.0),
    "fail": lambda study: study.fail([30], "crashed"),
    "retry": lambda study: study.retry([31]),
    "set_info": lambda study: study.set_info("note", "x"),
}


@pytest.mark.parametrize("message", SQLITE_FAILURES)
@pytest.mark.parametrize("statement", ["BEGIN IMMEDIATE", "INSERT", "UPDATE", "COMMIT"])
@pytest.mark.parametrize("change", CHANGES)
def test_sqlite_failures_in_a_write_are_clear_errors_with_the_state_unchanged(
    tmp_path: Path, faulty_connections: list[FaultyConnection], message: str, statement: str, change: str
) -> None:
    path = tmp_path / "s.mfask"
    make_study(path).close()
    twin = make_study(tmp_path / "twin.mfask")
    before = file_state(path)
    study = open_study(path)
    connection = faulty_connections[-1]
    connection.fail_on, connection.error = statement, message
    error_type, match = SQLITE_FAILURES[message]
    if (change, statement) == ("set_info", "UPDATE"):
        statement = "INSERT"  # a note is one INSERT
        connection.fail_on = statement
    with pytest.raises(MfaskError) as raised:
        CHANGES[change](study)
    assert type(raised.value) is error_type and isinstance(raised.value, OSError)
    assert re.search(match, str(raised.value)), str(raised.value)
    connection.fail_on = None
    assert file_state(path) == before
    assert_continues_like(study, twin)
    study.close()
    twin.close()


def test_a_genuinely_full_database_is_a_clear_error_and_the_tell_can_be_repeated(
    tmp_path: Path, faulty_connections: list[FaultyConnection]
) -> None:
    path = tmp_path / "s.mfask"
    prior = BoxUniform([0.0, 0.0], [1.0, 2.0], names=["a", "b"])
    create_study(path, prior, ["high"], seed=0, verbose=False).close()
    study = open_study(path)
    connection = faulty_connections[-1]
    batch = study.ask("high", 400)
    before = file_state(path)
    connection.cap_pages()
    outputs = np.random.default_rng(0).normal(size=(400, 64))
    with pytest.raises(StudyStorageError, match="disk is full"):
        study.tell(batch, outputs)
    assert file_state(path) == before
    assert study.count(status="pending") == 400
    connection.execute("PRAGMA max_page_count = 1073741823")
    study.tell(batch, outputs)  # space freed: the same tell goes through
    assert study.count(status="done") == 400
    study.close()


@pytest.mark.parametrize("message", ["disk I/O error", "database or disk is full"])
def test_sqlite_failures_when_opening_are_storage_errors(
    tmp_path: Path, faulty_connections: list[FaultyConnection], monkeypatch: pytest.MonkeyPatch, message: str
) -> None:
    path = tmp_path / "s.mfask"
    make_study(path).close()
    monkeypatch.setattr(FaultyConnection, "fail_on", "PRAGMA JOURNAL_MODE")
    monkeypatch.setattr(FaultyConnection, "error", message)
    with pytest.raises(StudyStorageError, match=SQLITE_FAILURES[message][1]):
        open_study(path)  # not "not an mfask study file": the file is fine
    monkeypatch.setattr(FaultyConnection, "fail_on", "SELECT KEY, VALUE FROM STUDY_INFO")
    with pytest.raises(StudyStorageError, match=SQLITE_FAILURES[message][1]):
        open_study(path)


def test_sqlite_failures_when_reading_are_storage_errors(
    tmp_path: Path, faulty_connections: list[FaultyConnection]
) -> None:
    path = tmp_path / "s.mfask"
    make_study(path).close()
    study = open_study(path, lazy=True)
    connection = faulty_connections[-1]
    connection.fail_on, connection.error = "SELECT", "disk I/O error"
    for read in (study.status, study.pending, study.refresh):
        with pytest.raises(StudyStorageError, match="could not read"):
            read()
    connection.fail_on = None
    assert study.status()["total"]["pending"] == 2
    study.close()


@pytest.mark.parametrize("statement", ["PRAGMA JOURNAL_MODE", "INSERT", "COMMIT"])
def test_sqlite_failures_while_creating_are_storage_errors_that_leave_nothing(
    tmp_path: Path, faulty_connections: list[FaultyConnection], monkeypatch: pytest.MonkeyPatch,
    statement: str,
) -> None:
    monkeypatch.setattr(FaultyConnection, "fail_on", statement)
    monkeypatch.setattr(FaultyConnection, "error", "database or disk is full")
    with pytest.raises(StudyStorageError, match="disk is full"):
        make_study(tmp_path / "s.mfask")
    assert list(tmp_path.iterdir()) == []  # no study, no temporary file, no -wal/-shm
    monkeypatch.setattr(FaultyConnection, "fail_on", None)
    make_study(tmp_path / "s.mfask").close()  # space freed: the creation goes through


def test_a_study_file_that_cannot_be_made_is_a_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def full_disk_open(file: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_CREAT and ".creating." in str(file):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", full_disk_open)
    with pytest.raises(StudyStorageError, match="no new file can be made"):
        create_study(tmp_path / "s.mfask", BoxUniform([0.0], [1.0]))
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_cannot_be_created_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    prior = BoxUniform([0.0], [1.0])
    with pytest.raises(StudyStorageError, match="cannot create the folder"):
        create_study(tmp_path / "file" / "sub" / "s.mfask", prior)


# ==================================== 15: a study file deleted or replaced
def test_a_study_file_moved_away_refuses_every_call_until_it_is_back(tmp_path: Path) -> None:
    path = tmp_path / "s.mfask"
    study = make_study(path)
    twin = make_study(tmp_path / "twin.mfask")
    before = file_state(path)
    moved = tmp_path / "moved.mfask"
    os.replace(path, moved)  # the path no longer names the study
    for change in CHANGES.values():
        with pytest.raises(StudyStorageError, match="was deleted after this process opened it"):
            change(study)
    with pytest.raises(StudyStorageError, match="was deleted"):
        study.status()
    os.replace(moved, path)
    assert file_state(path) == before  # no tell went to the file while it was away
    assert_continues_like(study, twin)
    study.close()
    twin.close()


def test_a_study_file_replaced_by_another_is_not_written(tmp_path: Path) -> None:
    path = tmp_path / "s.mfask"
    study = make_study(path)
    twin = make_study(tmp_path / "twin.mfask")
    other_path = tmp_path / "other.mfask"
    other = make_study(other_path)
    other.tell([30], simulate(np.ones((1, 2))))
    other.close()
    other_before = file_state(other_path)
    before = file_state(path)
    os.replace(path, tmp_path / "moved.mfask")
    os.replace(other_path, path)
    with pytest.raises(StudyStorageError, match="replaced by another file"):
        study.tell([30, 31], simulate(np.ones((2, 2))))
    with pytest.raises(StudyStorageError, match="replaced by another file"):
        study.ask("high", 2)
    os.replace(path, other_path)
    assert file_state(other_path) == other_before
    os.replace(tmp_path / "moved.mfask", path)
    assert file_state(path) == before
    assert_continues_like(study, twin)
    study.close()
    twin.close()


def test_a_study_file_deleted_during_a_tell_loses_nothing_silently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.mfask"
    study = make_study(path)
    twin = make_study(tmp_path / "twin.mfask")
    before = file_state(path)
    moved = tmp_path / "moved.mfask"
    real_annotate = StudyStore.annotate

    def annotate_then_lose_the_file(store: StudyStore, *args: Any, **kwargs: Any) -> None:
        real_annotate(store, *args, **kwargs)
        os.replace(path, moved)  # between the writes and the commit

    monkeypatch.setattr(StudyStore, "annotate", annotate_then_lose_the_file)
    with pytest.raises(StudyStorageError, match="was deleted"):
        study.tell([30, 31], simulate(np.ones((2, 2))), cost=3.0)
    monkeypatch.undo()
    os.replace(moved, path)
    assert file_state(path) == before  # rolled back, not committed to the lost file
    assert_continues_like(study, twin)
    study.close()
    twin.close()


def test_a_deleted_study_file_is_a_clear_error_and_closes_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "s.mfask"
    study = make_study(path)
    path.unlink()
    with pytest.raises(StudyStorageError, match="was deleted.*open it again"):
        study.tell([30], simulate(np.ones((1, 2))))
    with pytest.raises(StudyStorageError, match="was deleted"):
        study.fit()
    study.close()
