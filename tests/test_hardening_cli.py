"""The ``mfask`` command refuses bad input and unusable files before it
changes the study, with the documented exit code and a one-line message
(issue 17, item 13), and a Ctrl-C once a command's result is out does not
change its exit status (item 14).

Each refusal is checked three ways: the exit code of its class, standard
error holding exactly one ``mfask: error:`` line (no traceback), and every
row of every table of the study file as it was before."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfask.cli import EXIT_CODES, MAX_SAMPLES, main
from mfask.errors import InvalidInputError
from mfask.study import open_study

REPO = Path(__file__).resolve().parents[1]
INT64_MIN, INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)

SPEC = """
seed = 0
fidelities = ["low", "high"]

[parameters]
gNa = {low = 0.1, high = 3.0}
sigma = {low = 0.1, high = 0.6}

[flow]
hidden_features = 10
num_transforms = 1
num_bins = 4

[training]
max_epochs = 5
"""

# tickets of the `told` study: 0..19 low (told), 20..25 high (20..23 told)
PENDING_HIGH = 24


def run_cli(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def results_csv(rows: list[dict[str, str]], outputs: tuple[str, ...] = ("y_sum", "y_product")) -> str:
    """Ask rows with a stand-in simulator's outputs appended (as a shell script would)."""
    lines = [",".join([*rows[0], *outputs])]
    for row in rows:
        g, s = float(row["gNa"]), float(row["sigma"])
        values = [g + (i + 1) * s for i in range(len(outputs))]
        lines.append(",".join([*row.values(), *map(repr, values)]))
    return "\n".join(lines) + "\n"


def study_contents(path: Path) -> dict[str, list[str]]:
    """Every row of every table of the study file: what any command could change."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as connection:
        tables = [name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {
            table: sorted(repr(row) for row in connection.execute(f"SELECT * FROM {table}"))
            for table in sorted(tables)
        }


def assert_one_line_error(code: int, out: str, err: str, expected: str, text: str = "") -> None:
    """``code`` is the exit code ``expected`` names, and the only output is
    one error line (containing ``text``) after any warnings."""
    assert code == EXIT_CODES[expected], err
    assert out == ""
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if not line.startswith("mfask: warning: ")]
    assert len(lines) == 1 and lines[0].startswith("mfask: error: "), err
    assert text in lines[0], err


def copy_study(source: Path, folder: Path) -> Path:
    """A copy of the study file ``source`` (and SQLite's files beside it) in ``folder``."""
    for file in source.parent.glob(source.name + "*"):
        if not file.name.endswith(".lock"):
            shutil.copy2(file, folder / file.name)
    return folder / source.name


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The studies the tests start from, made once through the command line:
    ``blank`` (no tickets) and ``told`` (20 low results, 4 high results and 2
    pending high tickets; never trained)."""
    folder = tmp_path_factory.mktemp("templates")
    (folder / "spec.toml").write_text(SPEC)
    blank, told = folder / "blank.mfask", folder / "told.mfask"
    for path in (blank, told):
        assert main(["init", str(path), "--spec", str(folder / "spec.toml")]) == 0
    for fidelity, n, told_count in (("low", 20, 20), ("high", 6, 4)):
        assert main(["ask", str(told), "-f", fidelity, "-n", str(n), "-o", str(folder / "t.csv")]) == 0
        lines = (folder / "t.csv").read_text().splitlines()
        rows = [dict(zip(lines[0].split(","), line.split(","))) for line in lines[1:]]
        (folder / "r.csv").write_text(results_csv(rows[:told_count]))
        assert main(["tell", str(told), str(folder / "r.csv")]) == 0
    return {"blank": blank, "told": told}


@pytest.fixture
def blank(templates: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A new study: no tickets."""
    capsys.readouterr()  # (the templates' output)
    return copy_study(templates["blank"], tmp_path)


@pytest.fixture
def told(templates: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """20 low results, 4 high results and 2 pending high tickets; never trained."""
    capsys.readouterr()
    return copy_study(templates["told"], tmp_path)


def assert_refused(
    capsys: pytest.CaptureFixture[str], study: Path, argv: list[Any], expected: str, text: str = ""
) -> str:
    """Run ``argv``: a one-line error of class ``expected``, the study file
    unchanged. Returns the error line."""
    before = study_contents(study)
    code, out, err = run_cli(capsys, *argv)
    assert_one_line_error(code, out, err, expected, text)
    assert study_contents(study) == before
    return err


# =========================================== output files: checked before the study
OUTPUT_COMMANDS = {
    "ask": ["ask", "{study}", "-f", "low", "-n", "3", "-o", "{out}"],
    "ask-json": ["ask", "{study}", "-f", "low", "-n", "3", "--format", "json", "-o", "{out}"],
    "retry": ["retry", "{study}", str(PENDING_HIGH), "-o", "{out}"],
    "sample": ["sample", "{study}", "-n", "5", "--x", "1.0,0.5", "-q", "-o", "{out}"],
    "export-csv": ["export", "{study}", "--format", "csv", "-o", "{out}"],
    "export-npz": ["export", "{study}", "--format", "npz", "-o", "{out}"],
    "export-state": ["export", "{study}", "--format", "state", "-o", "{out}"],
}

BAD_OUTPUTS: dict[str, Callable[[Path], Path]] = {
    "missing folder": lambda study: study.parent / "no" / "such" / "out.csv",
    "a folder": lambda study: study.parent,
    "the study file": lambda study: study,
    "the study's lock": lambda study: study.with_name(study.name + ".lock"),
}


def command_line(name: str, study: Path, out: Path) -> list[str]:
    return [part.format(study=study, out=out) for part in OUTPUT_COMMANDS[name]]


@pytest.mark.parametrize("problem", BAD_OUTPUTS)
@pytest.mark.parametrize("command", OUTPUT_COMMANDS)
def test_unusable_output_file_is_refused_before_the_study_changes(told, capsys, command, problem):
    out = BAD_OUTPUTS[problem](told)
    assert_refused(capsys, told, command_line(command, told, out), "output_file", f"cannot write {out}")
    assert not (told.parent / "no").exists()  # (a state export used to create the folders)


def test_results_go_through_a_temporary_file(told, capsys):
    out = told.parent / "tickets.csv"
    out.write_text("old content\n")
    out.chmod(0o640)
    before = other_files(told.parent, told)
    code, stdout, err = run_cli(capsys, *command_line("ask", told, out))
    assert code == 0, err
    assert json.loads(stdout)["file"] == str(out)
    assert out.read_text().startswith("ticket,fidelity,seed,gNa,sigma\n")
    assert stat.S_IMODE(out.stat().st_mode) == 0o640  # a replaced file keeps its mode
    assert other_files(told.parent, told) == before  # no temporary file left


def test_npz_export_writes_the_file_it_names(told, capsys):
    out = told.parent / "all.data"  # np.savez(path) would have written all.data.npz
    code, stdout, err = run_cli(capsys, "export", told, "--format", "npz", "-o", out)
    assert code == 0 and json.loads(stdout)["file"] == str(out), err
    with np.load(out, allow_pickle=False) as arrays:
        assert arrays["x"].shape == (26, 2)


def other_files(folder: Path, study: Path) -> list[str]:
    """The files in ``folder`` besides the study's (which a fit adds a lock file to)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(study.name))


def no_space(*args: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("command", ["export-csv", "export-npz", "export-state", "sample"])
def test_full_disk_while_writing_leaves_the_old_file(told, capsys, monkeypatch, command):
    out = told.parent / "out.csv"
    out.write_text("old content\n")
    before = other_files(told.parent, told)
    monkeypatch.setattr(os, "fsync", no_space)  # where a full disk shows at the latest
    code, stdout, err = run_cli(capsys, *command_line(command, told, out))
    assert_one_line_error(code, stdout, err, "output_file", "No space left on device")
    assert out.read_text() == "old content\n"
    assert other_files(told.parent, told) == before  # no temporary file left


def test_full_disk_after_an_ask_says_which_tickets_are_open(told, capsys, monkeypatch):
    out = told.parent / "t.csv"
    monkeypatch.setattr(os, "fsync", no_space)
    code, stdout, err = run_cli(capsys, *command_line("ask", told, out))
    assert_one_line_error(code, stdout, err, "output_file", "the 3 new ticket(s) 26..28 are open")
    assert "--pending --format csv" in err and not out.exists()
    monkeypatch.undo()
    code, stdout, _ = run_cli(capsys, "status", told, "--pending", "--ids")
    assert json.loads(stdout)["tickets"] == [PENDING_HIGH, PENDING_HIGH + 1, 26, 27, 28]


# ===================================================== counts and observations
@pytest.mark.parametrize(
    "argv",
    [
        ["sample", "{study}", "-n", "0", "--x", "1.0,0.5"],
        ["sample", "{study}", "-n", "-3", "--x", "1.0,0.5"],
        ["sample", "{study}", "-n", str(MAX_SAMPLES + 1), "--x", "1.0,0.5"],
        ["sample", "{study}", "-n", str(10**30), "--x", "1.0,0.5"],
        ["sample", "{study}", "-n", "5", "--x", "nan,0.5"],
        ["sample", "{study}", "-n", "5", "--x", "1.0,inf"],
        ["ask", "{study}", "-f", "low", "-n", str(10**30)],
        ["ask", "{study}", "-f", "high", "-n", "0"],
    ],
    ids=["n=0", "n<0", "n>max", "n=1e30", "x=nan", "x=inf", "ask-n=1e30", "ask-n=0"],
)
def test_bad_counts_and_observations_are_refused_before_training(told, capsys, argv):
    assert_refused(capsys, told, [a.format(study=told) for a in argv], "input")


def test_observation_file_with_nan_is_refused_before_training(told, capsys, tmp_path):
    (tmp_path / "obs.csv").write_text("y_sum,y_product\nnan,0.5\n")
    assert_refused(capsys, told, ["sample", told, "-n", "5", "--x-file", tmp_path / "obs.csv"], "input", "finite")


def test_study_api_checks_n_before_training_to_sample(told):
    """The Python API of a study refuses a bad ``n`` before it trains (a
    fit stores a checkpoint: a change)."""
    before = study_contents(told)
    study = open_study(told)
    try:
        with pytest.raises(InvalidInputError):
            study.sample(0, [1.0, 0.5])
        with pytest.raises(InvalidInputError):
            study.sample_batched(-1, [[1.0, 0.5]])
    finally:
        study.close()
    assert study_contents(told) == before


def test_study_api_checks_n_before_training_for_a_sequential_ask(told):
    study = open_study(told)
    try:
        study.set_observation([1.0, 0.5], quantile=1e-2, threshold_samples=1000)
        observing = study_contents(told)
        with pytest.raises(InvalidInputError):
            study.ask("high", 0)  # a sequential round: it trains first
    finally:
        study.close()
    assert study_contents(told) == observing


# ============================================================== ticket ids
too_large_for_int64 = st.one_of(st.integers(min_value=INT64_MAX + 1), st.integers(max_value=INT64_MIN - 1))


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ticket=too_large_for_int64)
def test_ticket_ids_beyond_64_bits_are_bad_input(told, capsys, tmp_path, ticket):
    (tmp_path / "big.csv").write_text(f"ticket,y_sum,y_product\n{ticket},1.0,2.0\n")
    for argv in (["abandon", told, "--", ticket], ["retry", told, "--", ticket], ["tell", told, tmp_path / "big.csv"]):
        assert_refused(capsys, told, argv, "input", "64-bit")


def test_abandoning_a_done_ticket_gives_no_tell_hint(told, capsys):
    code, _, err = run_cli(capsys, "abandon", told, "3")
    assert code == EXIT_CODES["input"] and "--skip-told" not in err


# ================================================================ input files
BAD_RESULTS = {
    "latin-1": "ticket,y_sum,y_product,reason\n24,1.0,2.0,caf\xe9\n".encode("latin-1"),
    "nul byte": b"ticket,y_sum,y_product\n24,1.0\x00,2.0\n",
    "field over 128 KiB": b'ticket,y_sum,y_product,metadata\n24,1.0,2.0,"' + b"a" * 140_000 + b'"\n',
}


@pytest.mark.parametrize("content", BAD_RESULTS.values(), ids=BAD_RESULTS.keys())
def test_unreadable_results_are_bad_input(told, capsys, tmp_path, content):
    (tmp_path / "bad.csv").write_bytes(content)
    assert_refused(capsys, told, ["tell", told, tmp_path / "bad.csv"], "input", "bad.csv")


def test_results_on_standard_input_that_are_not_utf8_are_bad_input(told, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(BAD_RESULTS["latin-1"])))
    assert_refused(capsys, told, ["tell", told, "-"], "input", "standard input is not UTF-8")


def test_results_file_that_is_a_folder_is_bad_input(told, capsys, tmp_path):
    assert_refused(capsys, told, ["tell", told, tmp_path], "input", "cannot read")


def test_results_with_a_byte_order_mark_are_read(told, capsys, tmp_path):
    (tmp_path / "bom.csv").write_bytes("\ufeffticket,y_sum,y_product\n24,1.0,2.0\n".encode("utf-8"))
    code, out, err = run_cli(capsys, "tell", told, tmp_path / "bom.csv")
    assert code == 0 and json.loads(out)["done"] == 1, err


@pytest.mark.parametrize("kind", ["latin-1", "folder"])
def test_unreadable_spec_is_bad_input(tmp_path, capsys, kind):
    spec = tmp_path / "spec.toml"
    if kind == "folder":
        spec.mkdir()
    else:
        spec.write_bytes(SPEC.replace("seed = 0", "seed = 0  # caf\xe9").encode("latin-1"))
    code, out, err = run_cli(capsys, "init", tmp_path / "s.mfask", "--spec", spec)
    assert_one_line_error(code, out, err, "input", "spec")
    assert not (tmp_path / "s.mfask").exists()


@pytest.mark.parametrize("option", [["--timeout", "-1"], ["--timeout", "nan"], ["--timeout", "soon"]])
def test_bad_seconds_are_usage_errors(told, capsys, option):
    with pytest.raises(SystemExit) as usage:
        main(["status", str(told), *option])
    assert usage.value.code == EXIT_CODES["usage"]
    assert "Traceback" not in capsys.readouterr().err


# ======================================================= misspelt parameter columns
def ask_rows(capsys: pytest.CaptureFixture[str], study: Path, n: int) -> list[dict[str, str]]:
    code, out, err = run_cli(capsys, "ask", study, "-f", "low", "-n", n)
    assert code == 0, err
    lines = out.splitlines()
    return [dict(zip(lines[0].split(","), line.split(","))) for line in lines[1:]]


@pytest.mark.parametrize(
    "column, intended",
    [("gna", "gNa"), ("g_Na", "gNa"), ("GNA", "gNa"), ("g-na", "gNa"), ("gNaa", "gNa"),
     ("Sigma", "sigma"), ("sigm", "sigma"), ("sgima", "sigma"), ("Cost", "cost"), ("seeds", "seed"),
     ("Reason", "reason"), ("fidelty", "fidelity")],
)
def test_first_tell_refuses_a_column_that_looks_like_a_misspelt_parameter(blank, capsys, tmp_path, column, intended):
    rows = ask_rows(capsys, blank, 3)
    header = ["ticket", "fidelity", "gNa", "sigma", "y"]
    if intended in header:  # the column's place, misspelt
        header[header.index(intended)] = column
    else:  # an annotation column, misspelt
        header.insert(-1, column)
    lines = [",".join(header)]
    for row in rows:
        lines.append(",".join(row.get(intended if name == column else name, "1.0") for name in header))
    (tmp_path / "r.csv").write_text("\n".join(lines) + "\n")
    err = assert_refused(capsys, blank, ["tell", blank, tmp_path / "r.csv"], "input", "looks like")
    assert f"{column!r}" in err and f"{intended!r}" in err and "--outputs" in err
    study = open_study(blank)
    assert study.x_shape is None  # the study's output size is still open
    study.close()


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(variant=st.lists(st.sampled_from(["lower", "upper", "keep", "separate"]), min_size=3, max_size=3))
def test_any_case_or_separator_variant_of_a_parameter_is_refused(blank, capsys, tmp_path, variant):
    spelled = "".join(
        {"lower": c.lower(), "upper": c.upper(), "keep": c, "separate": c + "_"}[how]
        for c, how in zip("gNa", variant)
    ).rstrip("_")
    if spelled == "gNa":
        return
    (tmp_path / "r.csv").write_text(f"ticket,{spelled},y\n0,1.0,2.0\n")
    assert_refused(capsys, blank, ["tell", blank, tmp_path / "r.csv"], "input", "'gNa'")


def test_outputs_option_confirms_a_column_that_looks_like_a_parameter(blank, capsys, tmp_path):
    rows = ask_rows(capsys, blank, 4)
    lines = ["ticket,gna,y,notes", *(f"{r['ticket']},1.5,2.5,ok" for r in rows[:2])]
    (tmp_path / "r.csv").write_text("\n".join(lines) + "\n")
    code, out, err = run_cli(capsys, "tell", blank, tmp_path / "r.csv", "--outputs", "gna, y")
    assert code == 0 and json.loads(out)["done"] == 2, err
    study = open_study(blank)
    assert study.x_shape == (2,)  # gna and y; the unlisted notes column is ignored
    np.testing.assert_array_equal(study.tickets([0])[0].x, [1.5, 2.5])
    study.close()
    # a later tell uses the remembered outputs without saying so again
    lines = ["ticket,gna,y", *(f"{r['ticket']},1.0,2.0" for r in rows[2:])]
    (tmp_path / "r2.csv").write_text("\n".join(lines) + "\n")
    code, out, err = run_cli(capsys, "tell", blank, tmp_path / "r2.csv")
    assert code == 0 and json.loads(out)["done"] == 2, err


@pytest.mark.parametrize("outputs, text", [("y,missing", "does not have"), ("y,gNa", "parameter"),
                                            ("y,y", "distinct"), ("y,", "distinct")])
def test_outputs_option_must_name_distinct_output_columns(blank, capsys, tmp_path, outputs, text):
    rows = ask_rows(capsys, blank, 1)
    (tmp_path / "r.csv").write_text(f"ticket,gNa,y\n{rows[0]['ticket']},1.0,2.0\n")
    assert_refused(capsys, blank, ["tell", blank, tmp_path / "r.csv", "--outputs", outputs], "input", text)


@pytest.mark.parametrize("names", [("y",), ("x0", "x1"), ("y_sum", "y_product"), ("spike_count", "mean_v")])
def test_ordinary_output_names_are_not_taken_for_misspellings(blank, capsys, tmp_path, names):
    rows = ask_rows(capsys, blank, 2)
    (tmp_path / "r.csv").write_text(results_csv(rows, names))
    code, out, err = run_cli(capsys, "tell", blank, tmp_path / "r.csv")
    assert code == 0 and json.loads(out)["done"] == 2, err


# ========================================================== study file problems
def test_full_study_disk_is_a_study_file_problem(told, capsys, monkeypatch, tmp_path):
    connect = sqlite3.connect

    def no_room_to_grow(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        connection = connect(*args, **kwargs)
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        connection.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's "disk is full" once it would grow
        return connection

    before = study_contents(told)
    monkeypatch.setattr(sqlite3, "connect", no_room_to_grow)
    code, out, err = run_cli(capsys, "ask", told, "-f", "low", "-n", 2000, "-o", tmp_path / "t.csv")
    monkeypatch.undo()
    assert_one_line_error(code, out, err, "study_file", "disk is full")
    assert study_contents(told) == before and not (tmp_path / "t.csv").exists()


def unprivileged() -> list[str]:
    """A command prefix under which file permissions hold (root passes them)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: read-only files cannot be enforced")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


def run_program(prefix: list[str], *argv: Any) -> tuple[int, str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "mfask.cli", *map(str, argv)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    return done.returncode, done.stdout, done.stderr


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_read_only_files(told, tmp_path):
    prefix = unprivileged()
    (tmp_path / "r.csv").write_text(f"ticket,y_sum,y_product\n{PENDING_HIGH},1.0,2.0\n")
    locked = tmp_path / "locked"
    locked.mkdir()
    frozen = tmp_path / "frozen.csv"
    frozen.write_text("keep me\n")
    frozen.chmod(0o444)
    locked.chmod(0o555)
    try:
        before = study_contents(told)
        # outputs the study cannot write: exit 7, the study untouched
        for out in (locked / "t.csv", frozen):
            assert_one_line_error(*run_program(prefix, "retry", told, PENDING_HIGH, "-o", out), "output_file", str(out))
            assert study_contents(told) == before
        assert frozen.read_text() == "keep me\n" and list(locked.iterdir()) == []
        # a read-only study: exit 5 for the commands that write it
        told.chmod(0o444)
        for argv in (["tell", told, tmp_path / "r.csv"], ["abandon", told, PENDING_HIGH]):
            assert_one_line_error(*run_program(prefix, *argv), "study_file", "read-only")
        assert study_contents(told) == before
        code, out, err = run_program(prefix, "status", told)  # reading still works
        assert code == 0 and json.loads(out)["tickets"]["high"]["pending"] == 2, err
    finally:
        locked.chmod(0o755)
        told.chmod(0o644)


# ============================================== item 14: Ctrl-C after the result
@pytest.fixture
def restore_sigint():
    previous = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, previous)


class CtrlCOnDelivery(io.StringIO):
    """Buffered standard output whose reader presses Ctrl-C as soon as it
    has a whole line: on each flush (the signal reaches the process as the
    flush returns)."""

    def flush(self) -> None:
        super().flush()
        if self.getvalue().endswith("\n"):
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.skipif(os.name != "posix", reason="os.kill(SIGINT) to oneself")
@pytest.mark.parametrize("argv", [["status"], ["status", "--pending", "--format", "csv"], ["abandon", str(PENDING_HIGH)]])
def test_ctrl_c_as_the_result_goes_out_keeps_the_exit_status(told, monkeypatch, restore_sigint, argv):
    monkeypatch.setattr(sys, "argv", ["mfask", argv[0], str(told), *argv[1:]])
    monkeypatch.setattr(sys, "stdout", CtrlCOnDelivery())
    assert main() == 0
    assert sys.stdout.getvalue().count("\n") >= 1
    # ignored from here to the end of the process (Python's shutdown included)
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


@pytest.mark.skipif(os.name != "posix", reason="os.kill(SIGINT) to oneself")
def test_ctrl_c_during_the_work_still_interrupts(told, monkeypatch, restore_sigint, capsys):
    from mfask.study import Study

    def interrupted(self: Study, *args: Any, **kwargs: Any) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # (interrupted at once)
        raise AssertionError("not interrupted")

    monkeypatch.setattr(Study, "abandon", interrupted)
    monkeypatch.setattr(sys, "argv", ["mfask", "abandon", str(told), str(PENDING_HIGH)])
    before = study_contents(told)
    assert main() == EXIT_CODES["interrupted"]
    assert capsys.readouterr().err == "mfask: error: interrupted\n"
    assert study_contents(told) == before


def test_embedded_main_leaves_signal_handling_alone(told, capsys, restore_sigint):
    handler = signal.getsignal(signal.SIGINT)
    assert run_cli(capsys, "status", told)[0] == 0
    assert signal.getsignal(signal.SIGINT) is handler


def interrupt_after_result(argv: list[Any], trials: int) -> list[int]:
    """Run the program ``trials`` times, each time sending SIGINT as soon as
    its first line of output arrives; the exit codes."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    codes = []
    for _ in range(trials):
        process = subprocess.Popen(
            [sys.executable, "-m", "mfask.cli", *map(str, argv)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
        line = process.stdout.readline()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=300)
        assert line.startswith(b"{"), err
        codes.append(process.returncode)
    return codes


@pytest.mark.skipif(os.name != "posix", reason="SIGINT to a child process")
def test_program_exits_0_when_interrupted_right_after_its_result(told):
    assert interrupt_after_result(["status", told], trials=5) == [0] * 5


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="SIGINT to a child process")
def test_finished_fit_exits_0_when_interrupted_right_after_its_result(told):
    """The reported case: ``mfask fit`` (torch loaded, a slow shutdown)."""
    assert interrupt_after_result(["fit", told, "--force", "-q"], trials=6) == [0] * 6
