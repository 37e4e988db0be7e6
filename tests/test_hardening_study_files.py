"""Study files that must not be used, and creations that must not leave a
broken file (issue 17, items 2, 5 and 8, and a fuzz test of study files).

* SQL stored in a file (triggers, views, other tables, altered tables) is
  refused before anything runs, also when it is added while a study is open.
* A refused open changes nothing: not the bytes, not the journal mode, no
  ``-wal``/``-shm`` files.
* Creation is atomic: a creator killed at any moment leaves either a complete
  study or nothing (and its leftovers are removed by the next creation);
  files left by interrupted creations of older versions are recognised.
* Randomly corrupted study files open with valid content or fail with
  :class:`StateFormatError`, in bounded time.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

import mfask
import mfask.atomic_file
import mfask.store
import mfask.store_schema
from mfask import BoxUniform, FlowConfig, IncompleteStudyError, StateFormatError, TrainingConfig
from mfask.store import StudyStore
from mfask.study import Study, create_study, open_study

REPO = Path(__file__).resolve().parents[1]
TINY_FLOW = FlowConfig(hidden_features=8, num_transforms=1, num_bins=4)
QUICK_TRAINING = TrainingConfig(max_epochs=2)
#: seconds a refused or accepted open of these small files may take
TIME_BUDGET = 5.0


def prior() -> BoxUniform:
    return BoxUniform([0.0, 0.0], [1.0, 2.0], names=["a", "b"])


def new_study(path: Path, **options: Any) -> Study:
    return create_study(path, prior(), ["low", "high"], seed=0, flow=TINY_FLOW,
                        training=QUICK_TRAINING, **options)


def simulate(theta: np.ndarray) -> np.ndarray:
    theta = np.atleast_2d(theta)
    return np.stack([theta[:, 0] + theta[:, 1], theta[:, 0] * theta[:, 1], theta[:, 1]], axis=1)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A closed study: 4 done and 5 pending tickets at "low", 3 done at "high"."""
    path = tmp_path_factory.mktemp("template") / "s.mfask"
    with new_study(path) as study:
        told = study.ask("low", 4)
        study.tell(told, simulate(told.theta))
        study.ask("low", 5)
        high = study.ask("high", 3)
        study.tell(high, simulate(high.theta))
    return path


def copy_of(template: Path, folder: Path, name: str = "s.mfask") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    shutil.copyfile(template, target)
    return target


def on_disk(path: Path) -> tuple[bytes, int, list[str]]:
    """The file's bytes and mode, and the names in its folder."""
    return path.read_bytes(), path.stat().st_mode, sorted(os.listdir(path.parent))


def raw_statuses(path: Path) -> dict[int, str]:
    """Ticket statuses read with plain sqlite3 (no mfask)."""
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return dict(connection.execute("SELECT id, status FROM tickets"))
    finally:
        connection.close()


def alter(path: Path, script: str) -> None:
    """Run ``script`` on the file with plain sqlite3 and close it again."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.executescript(script)
    finally:
        connection.close()


@contextlib.contextmanager
def finishes_within(seconds: float) -> Iterator[None]:
    """Fail the test when the block takes over ``seconds``; a block that hangs
    (SQL that never ends) ends the test run after a minute with a traceback
    instead of hanging it."""
    faulthandler.dump_traceback_later(60, exit=True)
    start = time.monotonic()
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert time.monotonic() - start < seconds, f"took {time.monotonic() - start:.1f} s"


# ------------------------------------------------- item 2: SQL in the file
RESET_TRIGGER = (
    "CREATE TRIGGER reset AFTER UPDATE OF status ON tickets "
    "BEGIN UPDATE tickets SET status = 'pending' WHERE id = NEW.id; END"
)
ENDLESS = "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c)"

FOREIGN_SQL = {
    "a trigger that resets told tickets": (RESET_TRIGGER, "trigger 'reset' on table 'tickets'"),
    "a trigger that never ends": (
        f"CREATE VIEW forever AS {ENDLESS} SELECT n FROM c; CREATE TRIGGER spin AFTER UPDATE ON "
        "tickets BEGIN SELECT COUNT(*) FROM forever; END",
        "trigger 'spin'",
    ),
    "an endless view in place of a table": (
        f"DROP TABLE study_info; CREATE VIEW study_info AS {ENDLESS} "
        "SELECT 'format' AS key, n AS value FROM c",
        "view 'study_info'.*no table 'study_info'",
    ),
    "a view": ("CREATE VIEW done AS SELECT * FROM tickets WHERE status = 'done'", "view 'done'"),
    "an extra table": ("CREATE TABLE notes (text TEXT)", "table 'notes'"),
    "an altered table": ("ALTER TABLE tickets ADD COLUMN extra TEXT DEFAULT 'x'", "table 'tickets' differs"),
    "a table re-created with other SQL": (
        "DROP TABLE study_info; CREATE TABLE study_info (key TEXT PRIMARY KEY, value TEXT)",
        "table 'study_info' differs",
    ),
    "an extra index": ("CREATE INDEX by_cost ON tickets (cost * 2)", "index 'by_cost'"),
    "a dropped index": ("DROP INDEX tickets_by_status", "no index 'tickets_by_status'"),
    "statistics tables": ("ANALYZE", "table 'sqlite_stat1'"),
}


@pytest.mark.parametrize("case", sorted(FOREIGN_SQL))
def test_a_file_with_sql_of_its_own_is_refused_before_anything_runs(template, tmp_path, case):
    script, named = FOREIGN_SQL[case]
    path = copy_of(template, tmp_path)
    alter(path, script)
    before = on_disk(path)
    with finishes_within(TIME_BUDGET):
        for lazy in (False, True):
            with pytest.raises(StateFormatError, match=named) as refused:
                open_study(path, lazy=lazy)
            assert not isinstance(refused.value, IncompleteStudyError)
        with pytest.raises(FileExistsError, match="not an mfask study"):
            new_study(path)
        with pytest.raises(StateFormatError, match=named):
            new_study(path, load_if_exists=True)
    assert on_disk(path) == before  # nothing ran, nothing was written, no -wal/-shm


def test_a_trigger_added_while_a_study_is_open_never_runs(template, tmp_path):
    path = copy_of(template, tmp_path)
    study = open_study(path, lazy=True)
    pending = [row.ticket for row in study.pending("low")]
    x = simulate(np.stack([row.theta for row in study.pending("low")]))
    alter(path, RESET_TRIGGER)  # by another process, after the open
    with pytest.raises(StateFormatError, match="trigger 'reset'"):
        study.tell(pending, x)
    assert {raw_statuses(path)[t] for t in pending} == {"pending"}
    alter(path, "DROP TRIGGER reset")
    result = study.tell(pending, x)  # the same object works once the file is mfask's again
    assert result.num_done == len(pending)
    assert {raw_statuses(path)[t] for t in pending} == {"done"}
    study.close()


def test_a_study_opened_read_only_has_the_same_protections_and_schema_check(template, tmp_path):
    path = copy_of(template, tmp_path)
    study = open_study(path, lazy=True, read_only=True)  # files-io's read-only connection
    assert study.read_only
    assert study._store._connection.execute("PRAGMA trusted_schema").fetchone() == (0,)
    assert study.status()["total"]["pending"] == 5
    alter(path, RESET_TRIGGER)  # by another process, after the open
    with pytest.raises(StateFormatError, match="trigger 'reset'"):
        study.status()
    alter(path, "DROP TRIGGER reset")
    assert study.status()["total"]["pending"] == 5
    study.close()


def test_connections_run_with_sqlites_protections(template, tmp_path, monkeypatch):
    path = copy_of(template, tmp_path)
    with open_study(path, lazy=True) as study:
        assert study._store._connection.execute("PRAGMA trusted_schema").fetchone() == (0,)

    class RecordingConnection:
        """A connection of a Python with ``Connection.setconfig`` (3.12+)."""

        def __init__(self) -> None:
            self.pragmas: list[str] = []
            self.config: list[tuple[int, bool]] = []

        def execute(self, sql: str) -> None:
            self.pragmas.append(sql)

        def setconfig(self, option: int, value: bool) -> None:
            if option == 4:
                raise sqlite3.OperationalError("unknown option")  # an older SQLite library
            self.config.append((option, value))

    names = ("SQLITE_DBCONFIG_DEFENSIVE", "SQLITE_DBCONFIG_TRUSTED_SCHEMA",
             "SQLITE_DBCONFIG_ENABLE_TRIGGER", "SQLITE_DBCONFIG_ENABLE_VIEW")
    for code, name in enumerate(names, start=1):
        monkeypatch.setattr(sqlite3, name, code, raising=False)
    connection = RecordingConnection()
    mfask.store_schema.protect_connection(connection)
    assert connection.pragmas == ["PRAGMA trusted_schema = OFF"]
    assert connection.config == [(1, True), (2, False), (3, False)]


# ------------------------------------------- item 8: refusals change nothing
def _rollback_database(path: Path) -> None:
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE measurements (t REAL, value REAL)")
    connection.executemany("INSERT INTO measurements VALUES (?, ?)", [(i, i * i) for i in range(50)])
    connection.commit()
    connection.close()


def _wal_database(path: Path) -> None:
    _rollback_database(path)
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.close()


FOREIGN_FILES = {
    "another program's SQLite database": _rollback_database,
    "another program's SQLite database in WAL mode": _wal_database,
    "random bytes": lambda path: path.write_bytes(random.Random(0).randbytes(8192)),
    "a text file": lambda path: path.write_text("ticket,x\n0,1.5\n"),
    "a truncated SQLite header": lambda path: (_rollback_database(path),
                                                path.write_bytes(path.read_bytes()[:60])),
}


@pytest.mark.parametrize("case", sorted(FOREIGN_FILES))
def test_a_refused_open_leaves_the_file_exactly_as_it_was(tmp_path, case):
    path = tmp_path / "data.db"
    FOREIGN_FILES[case](path)
    os.chmod(path, 0o640)
    before = on_disk(path)
    journal_mode = _journal_mode(path) if path.read_bytes().startswith(b"SQLite format 3") else None
    with finishes_within(TIME_BUDGET):
        for lazy in (False, True):
            with pytest.raises(StateFormatError, match="not an mfask study"):
                open_study(path, lazy=lazy)
        with pytest.raises(FileExistsError, match="not an mfask study.*left as it is"):
            new_study(path)
        with pytest.raises(StateFormatError, match="not an mfask study"):
            new_study(path, load_if_exists=True)
    assert on_disk(path) == before
    if journal_mode is not None:
        assert _journal_mode(path) == journal_mode


def test_a_study_in_rollback_journal_mode_opens_and_returns_to_wal(template, tmp_path):
    path = copy_of(template, tmp_path)
    alter(path, "PRAGMA journal_mode = DELETE")
    assert _journal_mode(path) == "rollback"
    with open_study(path, lazy=True) as study:
        assert len(study.pending()) == 5
    assert _journal_mode(path) == "wal"


def _journal_mode(path: Path) -> str:
    """The journal mode recorded in the file's header (bytes 18-19: 1 rollback, 2 WAL)."""
    return {1: "rollback", 2: "wal"}[path.read_bytes()[18]]


# ---------------------------------------------- item 5: atomic creation
def _legacy_empty_file(path: Path) -> None:
    path.write_bytes(b"")


def _legacy_empty_database(path: Path) -> None:
    """What an earlier mfask left when killed right after connecting: WAL, no tables."""
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.close()


def _legacy_study_without_state(path: Path) -> None:
    """What an earlier mfask left when killed between its two creating
    transactions: the schema and head row at revision 0, no session arrays."""
    new_study(path).close()
    alter(path, "DELETE FROM session_arrays; UPDATE head SET revision = 0")


LEGACY_HALF_MADE = {
    "an empty file": _legacy_empty_file,
    "an empty SQLite database": _legacy_empty_database,
    "a study without its state": _legacy_study_without_state,
}


@pytest.mark.parametrize("case", sorted(LEGACY_HALF_MADE))
def test_files_of_interrupted_creations_are_refused_clearly_and_replaced(tmp_path, case):
    path = tmp_path / "s.mfask"
    for create in (
        lambda: new_study(path),
        lambda: new_study(path, load_if_exists=True),
        lambda: Study.create(path, mfask.MultiFidelityPosterior(prior(), ["low", "high"], seed=0)),
    ):
        LEGACY_HALF_MADE[case](path)
        before = on_disk(path)
        with pytest.raises(IncompleteStudyError, match="creation was interrupted"):
            open_study(path, lazy=True)
        assert on_disk(path) == before
        with create() as study:
            batch = study.ask("low", 2)
        with open_study(path) as study:
            assert [row.ticket for row in study.pending()] == list(batch.ticket_ids)
        path.unlink()


def test_a_folder_at_the_path_is_neither_opened_nor_replaced(tmp_path):
    path = tmp_path / "s.mfask"
    path.mkdir()
    with pytest.raises(FileExistsError, match="not a file"):
        new_study(path)
    with pytest.raises(FileNotFoundError):
        open_study(path)
    assert os.listdir(tmp_path) == ["s.mfask"] and os.listdir(path) == []


def test_a_stale_write_ahead_log_at_the_path_is_not_replayed_into_a_new_study(tmp_path):
    other = tmp_path / "other.db"
    _wal_database(other)
    writer = sqlite3.connect(other, isolation_level=None)
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute("INSERT INTO measurements VALUES (1.0, 2.0)")
    path = tmp_path / "s.mfask"
    shutil.copyfile(f"{other}-wal", f"{path}-wal")  # as if the study file had been deleted alone
    writer.close()
    with new_study(path) as study:
        batch = study.ask("low", 3)
    with open_study(path) as study:
        assert [row.ticket for row in study.pending()] == list(batch.ticket_ids)
    connection = sqlite3.connect(path)
    try:
        assert mfask.store_schema.schema_differences(connection) == []
    finally:
        connection.close()


# the steps of a creation, as (object, attribute) to make fail there
CREATION_STEPS = {
    "creating the temporary file": (mfask.store, "_connect"),
    "writing the schema and head": (StudyStore, "write_revision"),
    "writing the posterior's state": (StudyStore, "write_session_arrays"),
    "linking the complete file into place": (mfask.store, "link_into_place"),
    "syncing the folder": (mfask.store, "fsync_directory"),
    "opening the new file": (StudyStore, "open"),
    "loading the new study": (Study, "_sync"),
}


class SimulatedCrash(Exception):
    pass


@pytest.mark.parametrize("step", sorted(CREATION_STEPS))
def test_a_creation_failing_at_any_step_leaves_a_complete_study_or_nothing(tmp_path, monkeypatch, step):
    owner, name = CREATION_STEPS[step]
    path = tmp_path / "s.mfask"

    def fail(*args: Any, **kwargs: Any) -> None:
        raise SimulatedCrash(step)

    with monkeypatch.context() as patch:
        patch.setattr(owner, name, fail)
        with pytest.raises(SimulatedCrash):
            new_study(path)
    left = set(os.listdir(tmp_path)) - {"s.mfask", "s.mfask.lock"}
    assert left == set(), f"left behind: {left}"  # no temporary file, no -wal/-shm
    _assert_complete_or_creatable(path)


def _assert_complete_or_creatable(path: Path) -> str:
    """The location opens as a complete study, or a creation there succeeds
    (and removes the leftovers of dead creators). Returns which."""
    if path.exists():
        with open_study(path) as study:
            assert study.fidelity_names == ("low", "high")
            assert len(study.ask("low", 1)) == 1
        return "complete"
    with new_study(path) as study:
        assert len(study.ask("low", 1)) == 1
    left = set(os.listdir(path.parent)) - {path.name, f"{path.name}.lock"}
    assert left == set(), f"not cleaned up: {left}"
    return "created"


_CREATOR = textwrap.dedent(
    """
    import os, signal, sys, time
    import torch
    torch.set_num_threads(1)
    import mfask.store
    from mfask import BoxUniform
    from mfask.study import Study, create_study

    def create(path, load_if_exists=False):
        create_study(path, BoxUniform([0.0, 0.0], [1.0, 2.0], names=["a", "b"]), ["low", "high"],
                     seed=0, load_if_exists=load_if_exists).close()

    def child(body):
        pid = os.fork()
        if pid == 0:
            try:
                body()
                code = 0
            except FileExistsError:
                code = 3
            except BaseException:
                code = 1
            os._exit(code)
        return pid

    def outcome(pid):
        _, status = os.waitpid(pid, 0)
        return "killed" if os.WIFSIGNALED(status) else f"exit{os.WEXITSTATUS(status)}"

    def crash_at(owner, name):
        target = {"store": mfask.store, "StudyStore": mfask.store.StudyStore, "Study": Study}[owner]
        setattr(target, name, lambda *args, **kwargs: os._exit(9))

    warm = sys.argv[1]
    create(f"{warm}0")  # imports done
    start = time.perf_counter()
    outcome(child(lambda: create(f"{warm}1")))
    print("ready", time.perf_counter() - start, flush=True)  # what a forked creation takes
    for line in sys.stdin:
        command, path, argument = line.split()
        if command == "kill":  # create, SIGKILLed after a delay
            pid = child(lambda: create(path))
            time.sleep(float(argument))
            os.kill(pid, signal.SIGKILL)
            print(outcome(pid), flush=True)
        elif command == "crash":  # create, the process ending at one step
            owner, name = argument.split(".")
            pid = child(lambda: (crash_at(owner, name), create(path)))
            print(outcome(pid), flush=True)
        elif command == "race":  # several processes create at once
            count, load = argument.split(",")
            read, write = os.pipe()
            def racer():
                os.read(read, 1)
                create(path, load_if_exists=load == "load")
            pids = [child(racer) for _ in range(int(count))]
            os.write(write, b"x" * int(count))
            print(",".join(sorted(outcome(pid) for pid in pids)), flush=True)
    """
)


@pytest.fixture(scope="module")
def creator(tmp_path_factory) -> Iterator[tuple[subprocess.Popen, float]]:
    """A process with mfask imported that forks creators on request
    (``kill``/``crash``/``race`` lines, see ``_CREATOR``); and the seconds a
    creation takes there."""
    folder = tmp_path_factory.mktemp("creator")
    script = folder / "creator.py"
    script.write_text(_CREATOR)
    process = subprocess.Popen(
        [sys.executable, str(script), str(folder / "warm")], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    word, seconds = process.stdout.readline().split()
    assert word == "ready"
    yield process, float(seconds)
    process.stdin.close()
    process.wait(timeout=60)


def ask_creator(creator: subprocess.Popen, command: str, path: Path, argument: str) -> str:
    creator.stdin.write(f"{command} {path} {argument}\n")
    creator.stdin.flush()
    return creator.stdout.readline().strip()


def test_creators_killed_at_random_moments_leave_a_complete_study_or_nothing(creator, tmp_path):
    process, seconds = creator
    rng = random.Random(17)
    outcomes = []
    for trial in range(40):
        path = tmp_path / f"trial{trial}" / "s.mfask"
        path.parent.mkdir()
        ask_creator(process, "kill", path, f"{rng.uniform(0.0, 1.3 * seconds):.4f}")
        interrupted = any(".creating." in name for name in os.listdir(path.parent))
        state = _assert_complete_or_creatable(path)
        outcomes.append((state, interrupted))
    # the delays spanned the creation: some kills came mid-build, some after it
    assert ("created", True) in outcomes, outcomes
    assert any(state == "complete" for state, _ in outcomes), outcomes


@pytest.mark.parametrize("step", sorted(CREATION_STEPS))
def test_a_creator_dying_at_any_step_leaves_a_complete_study_or_nothing(creator, tmp_path, step):
    process, _ = creator
    owner, name = CREATION_STEPS[step]
    label = {mfask.store: "store", StudyStore: "StudyStore", Study: "Study"}[owner]
    path = tmp_path / "s.mfask"
    assert ask_creator(process, "crash", path, f"{label}.{name}") == "exit9"
    _assert_complete_or_creatable(path)


@pytest.mark.parametrize("load", ["create", "load"])
def test_of_concurrent_creators_exactly_one_creates(creator, tmp_path, load):
    process, _ = creator
    path = tmp_path / "s.mfask"
    outcomes = ask_creator(process, "race", path, f"4,{load}").split(",")
    if load == "load":  # every one gets the study
        assert outcomes == ["exit0"] * 4
    else:
        assert outcomes == ["exit0"] + ["exit3"] * 3
    with open_study(path) as study:
        assert study.status()["total"]["pending"] == 0


def test_leftovers_of_dead_creators_are_removed_and_those_of_live_ones_kept(tmp_path):
    path = tmp_path / "s.mfask"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = mfask.atomic_file.create_temporary(path, "creating")
    os.close(host[0])
    mine = host[1]
    theirs = Path(str(mine).replace(f"-{os.getpid()}.", f"-{dead.pid}."))
    for leftover in (theirs, Path(f"{theirs}-wal"), Path(f"{theirs}-journal")):
        leftover.write_bytes(b"x")
    other_host = tmp_path / f".s.mfask.creating.00000000-{dead.pid}.0123456789ab"
    other_host.write_bytes(b"x")
    new_study(path).close()
    assert sorted(os.listdir(tmp_path)) == sorted([mine.name, other_host.name, "s.mfask", "s.mfask.lock"])


# ------------------------------------------------------ fuzz: study files
def _corrupt(data: bytes, rng: random.Random) -> bytes:
    """Flipped bytes in a few places, a run of random bytes, or a truncation."""
    raw = bytearray(data)
    kind = rng.choice(["flip", "flip", "overwrite", "truncate"])
    if kind == "truncate":
        return bytes(raw[: rng.randrange(len(raw))])
    for _ in range(rng.randint(1, 8)):
        at = rng.randrange(len(raw))
        if kind == "flip":
            raw[at] ^= rng.randint(1, 255)
        else:
            run = rng.randbytes(rng.randint(1, 64))
            raw[at: at + len(run)] = run
    return bytes(raw[: len(data)])


def _check_loaded(study: Study) -> None:
    """A study that opened: every stored field usable and valid. (Counts from
    different queries may disagree: SQLite does not notice every damaged
    index, and a query through one sees fewer rows; the rows it sees are
    checked.)"""
    status = study.status()
    assert all(isinstance(n, int) and n >= 0 for n in status["total"].values())
    d = len(study.parameter_names)
    for row in study.tickets():
        assert row.theta.shape == (d,) and np.isfinite(row.theta).all()
        assert row.status in mfask.tickets.STATUSES and row.fidelity in study.fidelity_names
    posterior = study.posterior
    ledger = posterior._ledger.to_arrays()
    assert np.isfinite(ledger["theta"]).all()
    assert set(np.unique(ledger["status"])) <= set(range(len(mfask.tickets.STATUSES)))
    if "x" in ledger:
        done = ledger["status"] == mfask.tickets.DONE
        assert ledger["x"].shape == (ledger["theta"].shape[0], *posterior.x_shape)
        assert np.isfinite(ledger["x"][done]).all()
    assert len(study.ask("low", 1)) == 1


def _fuzz_study_files(source: Path, folder: Path, examples: int, seed: int) -> dict[str, int]:
    data = source.read_bytes()
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    counts = {"opened": 0, "refused": 0}
    for example in range(examples):
        path = folder / f"fuzz{example}.mfask"
        path.write_bytes(_corrupt(data, rng))
        before = path.read_bytes()
        try:
            with finishes_within(TIME_BUDGET):
                study = open_study(path, lazy=example % 2 == 1)
        except StateFormatError:
            counts["refused"] += 1
            assert path.read_bytes() == before, f"example {example}: a refused open changed the file"
            continue
        try:
            with finishes_within(TIME_BUDGET):
                _check_loaded(study)
            counts["opened"] += 1
        except StateFormatError:  # found while reading on (e.g. a corrupt page)
            counts["refused"] += 1
        finally:
            study.close()
    return counts


def test_fuzz_study_files(template, tmp_path):
    counts = _fuzz_study_files(template, tmp_path, examples=80, seed=0)
    assert counts["refused"] > 0 and counts["opened"] > 0, counts


@pytest.fixture(scope="module")
def trained_template(tmp_path_factory, template) -> Path:
    path = copy_of(template, tmp_path_factory.mktemp("trained"))
    with open_study(path) as study:
        study.fit()
    return path


@pytest.mark.slow
def test_fuzz_study_files_long(template, trained_template, tmp_path):
    for source, seed in ((template, 1), (trained_template, 2)):
        counts = _fuzz_study_files(source, tmp_path / source.parent.name, examples=1500, seed=seed)
        assert counts["refused"] > 0 and counts["opened"] > 0, counts
