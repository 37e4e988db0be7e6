"""Durable studies: persistence before return, exact resume, crashes, several
processes, the training lock, and files that must not load."""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import mfask
from mfask import (
    BoxUniform,
    FlowConfig,
    MultiFidelityPosterior,
    StateFormatError,
    StudyLockedError,
    TicketAlreadyToldError,
    TrainingConfig,
)
from mfask.study import NON_FINITE_REASON, Study, create_study, open_study

TINY_FLOW = FlowConfig(hidden_features=10, num_transforms=1, num_bins=4)
QUICK_TRAINING = TrainingConfig(max_epochs=5)
REPO = Path(__file__).resolve().parents[1]


def make_study(path: Path, seed: int = 0, fidelities=("low", "high")) -> Study:
    prior = BoxUniform([0.0, 0.0], [1.0, 2.0], names=["a", "b"])
    return create_study(
        path, prior, list(fidelities), seed=seed, flow=TINY_FLOW, training=QUICK_TRAINING
    )


def simulate(theta: np.ndarray) -> np.ndarray:
    theta = np.atleast_2d(theta)
    return np.stack([theta[:, 0] + theta[:, 1], theta[:, 0] * theta[:, 1], theta[:, 1]], axis=1)


def snapshot(post: MultiFidelityPosterior) -> MultiFidelityPosterior:
    """An independent copy through the in-memory state (as save/load)."""
    meta, arrays = post._export_state()
    return MultiFidelityPosterior._from_state(meta, arrays, prior=None, embedding_net=None)


# ----------------------------------------------------------------- resume
def test_reopened_study_resumes_exactly(tmp_path):
    path = tmp_path / "run.mfask"
    study = make_study(path)
    batch = study.ask("low", 40)
    study.tell(batch, simulate(batch.theta))
    high = study.ask("high", 12)
    study.tell(high.ticket_ids[:10], simulate(high.theta[:10]), cost=2.0)
    study.fit()
    study.sample(5, [1.0, 0.2, 0.5])  # advances the persisted sampling stream
    open_tickets = study.ask("low", 3)
    expected = snapshot(study.posterior)
    study.close()

    reopened = open_study(path)
    post = reopened.posterior
    for name in ("low", "high"):
        for got, want in zip(post.data(name), expected.data(name)):
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(post.pending(), expected.pending())
    np.testing.assert_array_equal(
        post.pending(), np.r_[high.ticket_ids[10:], open_tickets.ticket_ids]
    )
    assert [len(post.training_histories(n)) for n in ("low", "high")] == [1, 1]
    # weights, and the ask and sampling streams, continue where they were
    x_o = [0.9, 0.1, 0.4]
    theta = np.array([[0.3, 0.5], [0.7, 1.5]])
    np.testing.assert_array_equal(reopened.log_prob(theta, x_o), expected.log_prob(theta, x_o))
    np.testing.assert_array_equal(reopened.sample(4, x_o), expected.sample(4, x_o))
    np.testing.assert_array_equal(reopened.ask("high", 3).theta, expected.ask("high", 3).theta)
    assert reopened.fit() == {}  # nothing retrained: the stored weights are current
    reopened.close()


def test_a_posterior_with_data_becomes_a_study(tmp_path):
    prior = BoxUniform([0.0, 0.0], [1.0, 2.0], names=["a", "b"])
    post = MultiFidelityPosterior(prior, ["high"], seed=3, flow=TINY_FLOW, training=QUICK_TRAINING)
    batch = post.ask("high", 30)
    post.tell(batch, simulate(batch.theta))
    post.fit()
    post.ask("high", 2)
    study = Study.create(tmp_path / "s.mfask", post)
    reopened = open_study(tmp_path / "s.mfask")
    np.testing.assert_array_equal(reopened.posterior.data("high")[1], post.data("high")[1])
    np.testing.assert_array_equal(reopened.posterior.pending(), [30, 31])
    assert reopened.fit() == {}
    x_o = [1.0, 0.2, 0.5]
    np.testing.assert_array_equal(reopened.sample(3, x_o), post.sample(3, x_o))
    with pytest.raises(FileExistsError):
        Study.create(tmp_path / "s.mfask", post)
    study.close()
    reopened.close()


def test_sequential_rounds_are_persisted_and_resume(tmp_path):
    path = tmp_path / "s.mfask"
    study = make_study(path, fidelities=("high",))
    batch = study.ask("high", 40)
    study.tell(batch, simulate(batch.theta))
    x_o = [1.0, 0.2, 0.5]
    study.set_observation(x_o, quantile=1e-2, threshold_samples=1000)
    for _ in range(2):
        batch = study.ask("high", 10)
        study.tell(batch, simulate(batch.theta))
    assert "truncated" in study.ask("high", 5).source  # trains under the lock first
    expected = snapshot(study.posterior)
    study.close()

    reopened = open_study(path)
    np.testing.assert_array_equal(reopened.posterior.observation, expected.observation)
    assert reopened.posterior.round == expected.round >= 2
    np.testing.assert_array_equal(reopened.ask("high", 5).theta, expected.ask("high", 5).theta)
    reopened.clear_observation()
    assert open_study(path).posterior.observation is None
    reopened.close()


# -------------------------------------------------------------- life cycle
def test_ticket_life_cycle_with_reasons_costs_and_retries(tmp_path):
    study = make_study(tmp_path / "s.mfask")
    batch = study.ask("low", 6)
    x = simulate(batch.theta)
    x[1] = np.nan
    with pytest.warns(mfask.SimulationFailedWarning):
        study.tell(batch.ticket_ids[:3], x[:3], cost=[1.0, 2.0, 3.0], metadata={"node": "n1"})
    study.fail(batch.ticket_ids[3:4], "simulator raised ValueError('bad')", cost=0.5)
    study.abandon(batch.ticket_ids[4:5], reason="instrument offline")
    rows = {r.ticket: r for r in study.tickets()}
    assert [rows[i].status for i in range(6)] == ["done", "failed", "done", "failed", "abandoned", "pending"]
    assert rows[1].reason == NON_FINITE_REASON and rows[1].x is None
    assert rows[3].reason.startswith("simulator raised") and rows[3].cost == 0.5
    assert rows[4].reason == "instrument offline"
    assert rows[2].cost == 3.0 and rows[2].metadata == {"node": "n1"}
    np.testing.assert_array_equal(rows[2].x, x[2])

    pending = study.pending()
    assert [p.ticket for p in pending] == [5] and 0 <= pending[0].age < 60

    # told twice is an error (state unchanged) unless skipped
    with pytest.raises(TicketAlreadyToldError):
        study.tell(batch.ticket_ids[:1], x[:1])
    result = study.tell(batch.ticket_ids[[0, 5]], x[[0, 5]], skip_told=True)
    assert result.ticket_ids.tolist() == [-1, 5]
    with pytest.raises(TicketAlreadyToldError):
        study.fail([0], "again")
    assert study.fail([0, 1], "again", skip_told=True).tolist() == []

    # a retry re-asks the same parameters under new tickets
    retried = study.retry([1, 3, 4])
    assert retried.ticket_ids.tolist() == [6, 7, 8]
    assert retried.source == ("retry",) * 3
    np.testing.assert_array_equal(retried.theta, batch.theta[[1, 3, 4]])
    assert [r.retry_of for r in study.tickets([6, 7, 8])] == [1, 3, 4]
    with pytest.raises(mfask.InvalidInputError, match="done"):
        study.retry([0])
    # retrying a pending ticket abandons it
    again = study.retry([6])
    assert study.tickets([6])[0].status == "abandoned"
    assert study.tickets([6])[0].reason == f"retried as ticket {again.ticket_ids[0]}"
    status = study.status()
    assert status["tickets"]["low"] == {"pending": 3, "done": 3, "failed": 2, "abandoned": 2}
    study.close()


def test_rejected_calls_change_nothing_in_the_file(tmp_path):
    study = make_study(tmp_path / "s.mfask")
    batch = study.ask("low", 4)
    before = study.status()["revision"]
    with pytest.raises(mfask.UnknownTicketError):
        study.tell([0, 99], simulate(batch.theta[:2]))
    with pytest.raises(mfask.InvalidInputError):
        study.tell(batch, simulate(batch.theta), metadata={"bad": object()})
    with pytest.raises(mfask.InvalidInputError):
        study.tell(batch, simulate(batch.theta), cost=-1.0)
    assert study.status()["revision"] == before
    assert len(study.pending()) == 4
    study.close()


# ---------------------------------------------------- several processes
def test_two_handles_share_tickets_streams_and_results(tmp_path):
    path = tmp_path / "s.mfask"
    first = make_study(path)
    second = open_study(path)
    a = first.ask("low", 3)
    b = second.ask("low", 3)  # continues ids and the shared ask stream
    assert b.ticket_ids.tolist() == [3, 4, 5]
    assert not np.isin(b.theta, a.theta).any()
    second.tell(a, simulate(a.theta))  # told by the other handle
    with pytest.raises(TicketAlreadyToldError):
        first.tell(a.ticket_ids[:1], simulate(a.theta[:1]))
    first.tell(b.theta, simulate(b.theta), "low")  # by value: needs b's tickets
    assert first.posterior.num_simulations("low") == 6
    assert second.posterior.num_simulations("low") == 6
    first.close()
    second.close()


def _concurrent_teller(path: str, worker: int, rounds: int, queue) -> None:
    torch.set_num_threads(1)
    study = open_study(path)
    told = []
    for _ in range(rounds):
        batch = study.ask("low", 2)
        study.tell(batch, simulate(batch.theta), metadata={"worker": worker})
        told.extend(batch.ticket_ids.tolist())
    # everybody also races to tell the same shared tickets: each is told once
    shared = np.arange(8)
    result = study.tell(shared, simulate(study.posterior._ledger.theta[:8]), skip_told=True)
    queue.put((worker, told, result.ticket_ids[result.ticket_ids >= 0].tolist()))
    study.close()


@pytest.mark.skipif(sys.platform == "win32", reason="uses fork")
def test_concurrent_processes_lose_and_duplicate_nothing(tmp_path):
    path = tmp_path / "s.mfask"
    study = make_study(path)
    study.ask("low", 8)  # shared tickets 0..7
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [
        context.Process(target=_concurrent_teller, args=(str(path), w, 6, queue)) for w in range(4)
    ]
    for w in workers:
        w.start()
    results = [queue.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    own = sorted(t for _, told, _ in results for t in told)
    shared = sorted(t for _, _, won in results for t in won)
    assert own == list(range(8, 8 + 4 * 6 * 2))  # no id lost or issued twice
    assert shared == list(range(8))  # each shared ticket told by exactly one process
    rows = study.tickets()
    assert len(rows) == 56 and all(r.status == "done" for r in rows)
    for row in rows:
        np.testing.assert_array_equal(row.x, simulate(row.theta)[0])
    assert len({tuple(r.theta) for r in rows}) == 56  # the shared ask stream never repeats
    study.close()


# ------------------------------------------------------------- lazy studies
def test_lazy_study_does_what_an_eager_one_does(tmp_path):
    """A lazy study loads the prior, then the posterior, only when a call needs
    them; its calls draw and write exactly what an eager study's do."""
    paths = [tmp_path / "eager.mfask", tmp_path / "lazy.mfask"]
    for path in paths:
        make_study(path).close()
    studies = [open_study(paths[0]), open_study(paths[1], lazy=True)]
    drawn, statuses = [], []
    for study in studies:
        low = study.ask("low", 8)
        study.tell(low.theta, simulate(low.theta), "low")  # matched by value: the prior's scales
        high = study.ask("high", 4)
        study.tell(high.ticket_ids[:3], simulate(high.theta[:3]))
        study.abandon(high.ticket_ids[3:], reason="gave up")
        retried = study.retry(high.ticket_ids[3:])
        drawn.append([low.theta, high.theta, retried.theta, study.simulator_seeds(retried)])
        statuses.append(study.status())
    for eager, lazy in zip(*drawn):
        np.testing.assert_array_equal(eager, lazy)
    for key in ("tickets", "total", "x_shape", "seed", "round", "trained", "transfer", "revision"):
        assert statuses[0][key] == statuses[1][key], key
    assert studies[1].tickets(status="abandoned")[0].reason == "gave up"

    # another process starts sequential rounds: the lazy study's next
    # highest-fidelity ask must be a round (which needs the posterior), as the eager one's
    for path in paths:
        other = open_study(path)
        other.set_observation([1.0, 0.2, 0.5], quantile=1e-2, threshold_samples=1000)
        other.close()
    rounds = [study.ask("high", 3) for study in studies]
    assert rounds[0].round == rounds[1].round == 1
    np.testing.assert_array_equal(rounds[0].theta, rounds[1].theta)
    reopened = [snapshot(open_study(path).posterior) for path in paths]
    for got, want in zip(reopened[1]._export_state()[1].items(), reopened[0]._export_state()[1].items()):
        assert got[0] == want[0]
        if not got[0].startswith(("tickets/asked_at", "tickets/told_at")):
            np.testing.assert_array_equal(got[1], want[1], err_msg=got[0])
    for study in studies:
        study.close()


# ----------------------------------------------------------- training lock
def test_one_trainer_at_a_time_and_others_see_the_weights(tmp_path):
    path = tmp_path / "s.mfask"
    trainer = make_study(path)
    other = open_study(path)
    batch = trainer.ask("low", 30)
    trainer.tell(batch, simulate(batch.theta))
    with trainer._lock.hold():
        assert "pid" in other.status()["training_lock"]
        with pytest.raises(StudyLockedError):
            other.fit(timeout=0.2)
    trainer.fit()
    assert other.status()["training_lock"] is None
    assert other.fit() == {}  # the other handle uses the stored weights
    x_o, theta = [1.0, 0.2, 0.5], np.array([[0.4, 0.6]])
    np.testing.assert_array_equal(other.log_prob(theta, x_o), trainer.log_prob(theta, x_o))
    assert other.status()["checkpoints"] == 1
    trainer.close()
    other.close()


def test_weights_trained_while_others_change_the_study_are_kept(tmp_path):
    path = tmp_path / "s.mfask"
    trainer = make_study(path)
    batch = trainer.ask("low", 30)
    trainer.tell(batch, simulate(batch.theta))
    post = trainer.posterior
    train = post.fit

    def train_then_someone_changes_the_study(*args, **kwargs):
        histories = train(*args, **kwargs)
        # meanwhile another process changes the posterior's state (as a
        # sequential round would) and tells a result
        with sqlite3.connect(path) as connection:
            meta = json.loads(connection.execute("SELECT meta FROM head").fetchone()[0])
            meta["match_tolerance"] = 2e-5
            connection.execute("UPDATE head SET meta = ?, revision = revision + 1", (json.dumps(meta),))
        return histories

    post.fit = train_then_someone_changes_the_study
    histories = trainer.fit()
    assert list(histories) == ["low"]
    assert trainer.posterior is not post  # reloaded from the file...
    assert trainer.posterior.match_tolerance == 2e-5
    assert len(trainer.posterior.training_histories("low")) == 1  # ...with the new weights
    assert trainer.fit() == {}
    other = open_study(path)
    x_o, theta = [1.0, 0.2, 0.5], np.array([[0.4, 0.6]])
    np.testing.assert_array_equal(other.log_prob(theta, x_o), trainer.log_prob(theta, x_o))
    trainer.close()
    other.close()


# -------------------------------------------------------------- bad files
def _first_checkpoint(path: Path) -> tuple[bytes, str]:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT weights, sha256 FROM checkpoints WHERE id = 1").fetchone()


def _replace_weights(path: Path, blob: bytes, digest: str | None = None) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute(
            "UPDATE checkpoints SET weights = ?, sha256 = ? WHERE id = 1",
            (blob, digest or hashlib.sha256(blob).hexdigest()),
        )


class _RunsCode:
    """Unpickling this creates a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def trained_study_file(tmp_path) -> Path:
    path = tmp_path / "s.mfask"
    study = make_study(path)
    batch = study.ask("low", 20)
    study.tell(batch, simulate(batch.theta))
    study.fit()
    study.close()
    return path


def test_tampered_weights_fail_to_load_and_run_nothing(trained_study_file, tmp_path):
    path = trained_study_file
    blob, digest = _first_checkpoint(path)
    flipped = bytearray(blob)
    flipped[len(flipped) // 2] ^= 0xFF
    _replace_weights(path, bytes(flipped), digest)
    with pytest.raises(StateFormatError, match="SHA-256"):
        open_study(path)

    marker = tmp_path / "pwned"
    payloads = {
        "pickle": pickle.dumps(_RunsCode(str(marker))),
        "torch.save": _torch_save_bytes({"w": _RunsCode(str(marker))}),
        "npz with objects": _npz_bytes(np.array([_RunsCode(str(marker))], dtype=object)),
    }
    for name, payload in payloads.items():
        _replace_weights(path, payload)  # a matching digest: the format itself must refuse
        with pytest.raises(StateFormatError):
            open_study(path)
        assert not marker.exists(), name


def _torch_save_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _npz_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{"model/0/0/w": array})
    return buffer.getvalue()


def test_weights_of_the_wrong_shape_are_refused(trained_study_file):
    path = trained_study_file
    blob, _ = _first_checkpoint(path)
    meta, arrays = mfask.state_file.decode_state(blob)
    name = next(iter(arrays))
    arrays[name] = np.zeros((7, 7), dtype=arrays[name].dtype)
    _replace_weights(path, mfask.state_file.encode_state(meta, arrays))
    with pytest.raises(StateFormatError, match="shape"):
        open_study(path)


def test_unknown_schema_version_and_foreign_files(tmp_path, trained_study_file):
    with sqlite3.connect(trained_study_file) as connection:
        connection.execute("UPDATE study_info SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StateFormatError, match="schema version '99'.*reads version 1"):
        open_study(trained_study_file)
    junk = tmp_path / "junk.mfask"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(StateFormatError, match="not an mfask study"):
        open_study(junk)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE t (a)")
    with pytest.raises(StateFormatError, match="not an mfask study"):
        open_study(other)
    with pytest.raises(FileNotFoundError):
        open_study(tmp_path / "missing.mfask")
    assert not (tmp_path / "missing.mfask").exists()


# ------------------------------------------------------------------ kill -9
_CHILD = textwrap.dedent(
    """
    import sys, numpy as np, torch
    torch.set_num_threads(1)
    from mfask.study import open_study
    study = open_study(sys.argv[1])
    step = 0
    while True:
        batch = study.ask("low", 3)
        x = np.stack([batch.theta[:, 0] + batch.theta[:, 1], batch.theta[:, 0] * batch.theta[:, 1],
                      batch.theta[:, 1]], axis=1)
        study.tell(batch, x)
        print("told", *batch.ticket_ids.tolist(), flush=True)
        step += 1
        if step % 4 == 0:
            print("fitting", flush=True)
            study.fit(force=True)
            print("fitted", flush=True)
    """
)


def test_kill_9_loses_no_returned_tell(tmp_path):
    path = tmp_path / "s.mfask"
    make_study(path).close()
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    confirmed: set[int] = set()
    fits = 0
    # kill points: right after a tell returned, during training, at an arbitrary moment
    for kill_after in (("told", 2), ("fitting", 1), ("told", 9), ("sleep", 0.7)):
        child = subprocess.Popen(
            [sys.executable, str(script), str(path)],
            stdout=subprocess.PIPE, text=True, env=env,
        )
        seen = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            assert line, "child died"
            word, *ids = line.split()
            confirmed.update(int(i) for i in ids)
            fits += word == "fitted"
            if kill_after[0] == "sleep" and word == "told":
                time.sleep(kill_after[1])
                break
            if word == kill_after[0]:
                seen += 1
                if seen >= kill_after[1]:
                    break
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate()
        for line in rest.splitlines():  # lines written before the kill
            if line.startswith("told"):
                confirmed.update(int(i) for i in line.split()[1:])
            fits += line.startswith("fitted")

        study = open_study(path)
        done = {r.ticket: r for r in study.tickets(status="done")}
        assert confirmed <= set(done), sorted(confirmed - set(done))
        for row in done.values():
            np.testing.assert_array_equal(row.x, simulate(row.theta)[0])
        assert study.status()["checkpoints"] >= fits  # every returned fit was stored
        study.close()


# ------------------------------------------------ storage locations (issue 15, item 9)
def test_sqlite_urls_name_files_and_never_create_a_scheme_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    prior = BoxUniform([0.0], [1.0])
    with create_study("sqlite:///relative.db", prior, seed=0) as study:
        study.ask("high", 2)
    absolute = tmp_path / "sub" / "absolute.db"
    create_study(f"sqlite:///{absolute}", prior, seed=0).close()
    assert {p.name for p in tmp_path.iterdir()} - {"relative.db.lock"} == {"relative.db", "sub"}
    assert absolute.is_file()
    with open_study("sqlite:///relative.db") as study:
        assert len(study.pending()) == 2
    with open_study(tmp_path / "relative.db") as study:
        assert len(study.pending()) == 2


@pytest.mark.parametrize(
    "location, message",
    [
        ("postgresql://user@host/db", "unknown storage URL scheme 'postgresql'"),
        ("sqlite://x.db", "malformed SQLite URL"),
        ("sqlite:x.db", "malformed SQLite URL"),
        ("sqlite:///", "names no file"),
        ("sqlite:///:memory:", "names no file"),
    ],
)
def test_unknown_or_malformed_storage_urls_are_refused(tmp_path, monkeypatch, location, message) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(mfask.InvalidInputError, match=message):
        create_study(location, BoxUniform([0.0], [1.0]))
    with pytest.raises(mfask.InvalidInputError, match=message):
        open_study(location)
    assert list(tmp_path.iterdir()) == []


def test_load_if_exists_opens_the_same_study_and_refuses_other_settings(tmp_path) -> None:
    path = tmp_path / "s.db"
    prior = BoxUniform([0.0, 0.0], [1.0, 1.0])
    with create_study(path, prior, ["low", "high"], seed=3) as study:
        batch = study.ask("high", 4)
    with create_study(path, prior, ["low", "high"], seed=3, load_if_exists=True) as study:
        assert [row.ticket for row in study.pending()] == list(batch.ticket_ids)
    with pytest.raises(FileExistsError, match="load_if_exists"):
        create_study(path, prior, ["low", "high"], seed=3)
    for other in (
        dict(prior=prior, fidelities=["low", "high"], seed=4),
        dict(prior=BoxUniform([0.0, 0.0], [2.0, 1.0]), fidelities=["low", "high"], seed=3),
        dict(prior=prior, fidelities=["high"], seed=3),
    ):
        with pytest.raises(mfask.InvalidInputError, match="other settings"):
            create_study(path, other.pop("prior"), other.pop("fidelities"), load_if_exists=True, **other)
    with open_study(path) as study:  # the refused calls left the file as it was
        assert [row.ticket for row in study.pending()] == list(batch.ticket_ids)
