"""The ``mfask`` command line: a round trip, exit codes, concurrent tellers."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mfask.cli import EXIT_CODES, main
from mfask.study import open_study

REPO = Path(__file__).resolve().parents[1]

SPEC = """
seed = 0
fidelities = ["low", {name = "high"}]

[parameters]
mu = {low = 0.1, high = 3.0}
sigma = {low = 0.1, high = 0.6}

[flow]
hidden_features = 10
num_transforms = 1
num_bins = 4

[training]
max_epochs = 5
"""


def instrument(mu: float, sigma: float) -> tuple[float, float]:
    """The stand-in instrument of these tests."""
    return mu + sigma, mu * sigma


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def write_results(path: Path, rows: list[dict[str, str]], fail: dict[int, str] = {}) -> None:
    """Append the instrument's outputs to ask rows (as a shell script would)."""
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow([*rows[0].keys(), "y_sum", "y_product", "reason"])
        for row in rows:
            ticket = int(row["ticket"])
            y = instrument(float(row["mu"]), float(row["sigma"]))
            writer.writerow([*row.values(), *(("", "") if ticket in fail else y), fail.get(ticket, "")])


@pytest.fixture
def study_file(tmp_path, capsys) -> Path:
    (tmp_path / "spec.toml").write_text(SPEC)
    path = tmp_path / "s.mfask"
    code, out, _ = run_cli(capsys, "init", path, "--spec", tmp_path / "spec.toml")
    assert code == 0
    assert json.loads(out)["parameters"] == ["mu", "sigma"]
    return path


def test_round_trip_init_ask_tell_fit_sample_export(study_file, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "ask", study_file, "-f", "low", "-n", 30)
    assert code == 0
    rows = read_csv(out)
    assert list(rows[0]) == ["ticket", "fidelity", "seed", "mu", "sigma"]
    assert [int(r["ticket"]) for r in rows] == list(range(30))
    write_results(tmp_path / "r.csv", rows, fail={3: "laser tripped"})
    code, out, err = run_cli(capsys, "tell", study_file, tmp_path / "r.csv", "--ids")
    assert code == 0, err
    assert json.loads(out) == {
        "told": 30, "done": 29, "failed": 1, "skipped": 0, "first_ticket": 0, "last_ticket": 29,
        "tickets": list(range(30)),
    }

    # the parameters went through text and back exactly
    study = open_study(study_file)
    theta, x = study.posterior.data("low")
    expected = np.array([instrument(*t) for t in theta])
    np.testing.assert_array_equal(x, expected)
    assert study.tickets([3])[0].reason == "laser tripped"
    study.close()

    code, out, _ = run_cli(capsys, "ask", study_file, "-f", "high", "-n", 4, "-o", tmp_path / "h.csv")
    assert code == 0 and json.loads(out) == {
        "asked": 4, "fidelity": "high", "file": str(tmp_path / "h.csv"), "first_ticket": 30, "last_ticket": 33,
    }
    code, out, _ = run_cli(capsys, "status", study_file, "--pending", "--format", "csv")
    pending = read_csv(out)
    assert [int(r["ticket"]) for r in pending] == [30, 31, 32, 33]
    assert all(float(r["age_seconds"]) >= 0 for r in pending)
    write_results(tmp_path / "hr.csv", read_csv((tmp_path / "h.csv").read_text()))
    assert run_cli(capsys, "tell", study_file, tmp_path / "hr.csv")[0] == 0

    code, out, _ = run_cli(capsys, "fit", study_file)
    assert code == 0
    fitted = json.loads(out)
    assert set(fitted["trained"]) == {"low", "high"}
    # the high level trained a fine-tuned and an HF-only network; with one
    # held-out row of 4 the transfer guard cannot tell them apart: it blends
    assert [(h["start"], h["candidate"], h["selected"]) for h in fitted["trained"]["high"]] == [
        ("pre-trained", "fine-tuned", True), ("fresh", "hf-only", True)
    ]
    assert fitted["transfer"]["low"] is None
    assert fitted["transfer"]["high"]["chosen"] == "blend" and fitted["transfer"]["high"]["num_rows"] == 1
    code, out, _ = run_cli(capsys, "sample", study_file, "-n", 7, "--x", "1.5,0.5")
    assert code == 0
    samples = np.array([[float(r["mu"]), float(r["sigma"])] for r in read_csv(out)])
    assert samples.shape == (7, 2)
    assert np.all((samples >= [0.1, 0.1]) & (samples <= [3.0, 0.6]))

    code, out, _ = run_cli(capsys, "status", study_file)
    status = json.loads(out)
    assert status["tickets"]["low"] == {"pending": 0, "done": 29, "failed": 1, "abandoned": 0}
    assert status["tickets"]["high"]["done"] == 4 and status["checkpoints"] == 1
    assert status["transfer"] == fitted["transfer"]

    assert run_cli(capsys, "export", study_file, "-o", tmp_path / "all.csv")[0] == 0
    exported = read_csv((tmp_path / "all.csv").read_text())
    assert len(exported) == 34 and exported[3]["status"] == "failed"
    assert exported[0]["y_sum"] == repr(instrument(float(exported[0]["mu"]), float(exported[0]["sigma"]))[0])
    assert run_cli(capsys, "export", study_file, "-o", tmp_path / "all.npz")[0] == 0
    with np.load(tmp_path / "all.npz", allow_pickle=False) as arrays:
        assert arrays["x"].shape == (34, 2) and arrays["status"][3] == "failed"


def test_exit_codes_a_script_can_act_on(study_file, tmp_path, capsys):
    # 2: usage
    with pytest.raises(SystemExit) as usage:
        main(["ask", str(study_file), "-f", "low"])
    assert usage.value.code == EXIT_CODES["usage"]
    capsys.readouterr()
    # 4: not enough data
    code, out, err = run_cli(capsys, "fit", study_file)
    assert code == EXIT_CODES["not_enough_data"] and out == "" and "mfask: error:" in err
    # 3: bad input of several kinds, each leaving the study unchanged
    code, out, _ = run_cli(capsys, "ask", study_file, "-f", "low", "-n", 3)
    rows = read_csv(out)
    write_results(tmp_path / "r.csv", rows)
    bad = tmp_path / "bad.csv"
    bad.write_text("ticket,y\n0,1.0\n7,2.0\n")
    assert run_cli(capsys, "tell", study_file, bad)[0] == EXIT_CODES["input"]  # unknown ticket
    bad.write_text("ticket,y\nzero,1.0\n")
    assert run_cli(capsys, "tell", study_file, bad)[0] == EXIT_CODES["input"]
    bad.write_text("mu,y\n1.0,1.0\n")
    code, _, err = run_cli(capsys, "tell", study_file, bad)
    assert code == EXIT_CODES["input"] and "'ticket'" in err
    assert run_cli(capsys, "ask", study_file, "-f", "medium", "-n", 1)[0] == EXIT_CODES["input"]
    assert run_cli(capsys, "ask", study_file, "-f", "low", "-n", 0)[0] == EXIT_CODES["input"]
    assert len(open_study(study_file).pending()) == 3
    assert run_cli(capsys, "tell", study_file, tmp_path / "r.csv")[0] == 0
    code, _, err = run_cli(capsys, "tell", study_file, tmp_path / "r.csv")
    assert code == EXIT_CODES["input"] and "--skip-told" in err
    code, out, _ = run_cli(capsys, "tell", study_file, tmp_path / "r.csv", "--skip-told")
    assert code == 0 and json.loads(out)["skipped"] == 3
    # later tells must use the same output columns
    renamed = tmp_path / "renamed.csv"
    renamed.write_text((tmp_path / "r.csv").read_text().replace("y_sum", "total"))
    code, _, err = run_cli(capsys, "tell", study_file, renamed, "--skip-told")
    assert code == EXIT_CODES["input"] and "output columns" in err
    # 5: study file problems
    code, out, err = run_cli(capsys, "status", tmp_path / "missing.mfask")
    assert code == EXIT_CODES["study_file"] and out == "" and "no study file" in err
    assert not (tmp_path / "missing.mfask").exists()
    assert run_cli(capsys, "init", study_file, "--spec", tmp_path / "spec.toml")[0] == EXIT_CODES["study_file"]
    # 6: busy: another process trains
    study = open_study(study_file)
    with study._lock.hold():
        code, _, err = run_cli(capsys, "fit", study_file, "--wait", "0.2")
        assert code == EXIT_CODES["busy"] and "training lock" in err
    study.close()


def test_bad_specs_are_input_errors(tmp_path, capsys):
    cases = {
        "typo.toml": 'seeed = 1\n[parameters]\na = {low = 0, high = 1}\n',
        "no_params.toml": 'fidelities = ["low"]\n',
        "bad_bounds.toml": '[parameters]\na = {low = 1, high = 0}\n',
        "broken.json": '{"parameters": ',
        "flow.toml": '[parameters]\na = {low = 0, high = 1}\n[flow]\nwidth = 3\n',
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        code, _, err = run_cli(capsys, "init", tmp_path / f"{name}.mfask", "--spec", tmp_path / name)
        assert code == EXIT_CODES["input"], (name, err)
        assert not (tmp_path / f"{name}.mfask").exists()


def test_tampered_study_is_a_study_file_error(study_file, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "ask", study_file, "-f", "low", "-n", 10)
    write_results(tmp_path / "r.csv", read_csv(out))
    run_cli(capsys, "tell", study_file, tmp_path / "r.csv")
    assert run_cli(capsys, "fit", study_file)[0] == 0
    with sqlite3.connect(study_file) as connection:
        connection.execute("UPDATE checkpoints SET weights = x'00'")
    code, out, err = run_cli(capsys, "status", study_file)
    assert code == EXIT_CODES["study_file"] and out == "" and "tampered" in err


def test_four_processes_telling_concurrently_lose_nothing(study_file, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "ask", study_file, "-f", "low", "-n", 48)
    rows = read_csv(out)
    shared = rows[40:]  # every process also tells these, with --skip-told
    files = []
    for worker in range(4):
        files.append(tmp_path / f"w{worker}.csv")
        write_results(files[-1], rows[worker * 10:(worker + 1) * 10] + shared)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "mfask.cli", "tell", str(study_file), str(f), "--skip-told", "--ids"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for f in files
    ]
    reports = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        reports.append(json.loads(out))
    told = sorted(t for r in reports for t in r["tickets"])
    assert told == list(range(48))  # each ticket told by exactly one process
    assert sum(r["skipped"] for r in reports) == 3 * 8
    study = open_study(study_file)
    done = study.tickets(status="done")
    assert len(done) == 48
    for row in done:
        np.testing.assert_array_equal(row.x, instrument(*row.theta))
    study.close()


# ------------------------------------------------ start-up: what each command imports
IMPORT_PROBE = """
import json, sys
import mfask.cli

heavy = ("torch", "normflows", "scipy")
report = []
for argv in json.loads(sys.argv[1]):
    code = mfask.cli.main(argv)
    report.append([argv[0], code, [m for m in heavy if m in sys.modules]])
print(json.dumps(report), file=sys.stderr)
"""


def test_bookkeeping_commands_import_no_torch_and_ask_no_flows(study_file, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "ask", study_file, "-f", "low", "-n", 12)
    write_results(tmp_path / "r.csv", read_csv(out)[:10], fail={3: "laser tripped"})
    assert run_cli(capsys, "tell", study_file, tmp_path / "r.csv")[0] == 0
    assert run_cli(capsys, "fit", study_file)[0] == 0  # status then reads a checkpoint
    (tmp_path / "r2.csv").write_text("ticket,y_sum,y_product\n10,1.0,2.0\n")
    commands = [
        ["status", str(study_file)],
        ["status", str(study_file), "--pending"],
        ["status", str(study_file), "--pending", "--format", "csv"],
        ["tell", str(study_file), str(tmp_path / "r2.csv")],
        ["export", str(study_file), "-o", str(tmp_path / "all.csv")],
        ["export", str(study_file), "-o", str(tmp_path / "all.npz")],
        ["abandon", str(study_file), "11"],
        ["retry", str(study_file), "3", "-o", str(tmp_path / "retry.csv")],
        ["ask", str(study_file), "-f", "high", "-n", "3"],  # last: it imports torch
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    probe = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, json.dumps(commands)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    report = json.loads(probe.stderr.strip().splitlines()[-1])
    assert [code for _, code, _ in report] == [0] * len(commands), probe.stderr
    assert all(imported == [] for command, _, imported in report[:-1]), report
    # prior draws need torch (the ask stream is a torch generator), not the flows
    assert report[-1] == ["ask", 0, ["torch"]]


def test_lazy_cli_asks_draw_what_the_python_api_draws(tmp_path, capsys):
    (tmp_path / "spec.toml").write_text(SPEC)
    paths = [tmp_path / "cli.mfask", tmp_path / "api.mfask"]
    for path in paths:
        assert run_cli(capsys, "init", path, "--spec", tmp_path / "spec.toml")[0] == 0
    cli_rows = []
    for fidelity, n in (("low", 5), ("high", 3), ("low", 4)):
        code, out, _ = run_cli(capsys, "ask", paths[0], "-f", fidelity, "-n", n)
        cli_rows += read_csv(out)
    api = open_study(paths[1])  # eager: the whole posterior, as before
    batches = [api.ask(fidelity, n) for fidelity, n in (("low", 5), ("high", 3), ("low", 4))]
    theta = np.concatenate([b.theta for b in batches])
    seeds = np.concatenate([api.simulator_seeds(b) for b in batches])
    api.close()
    np.testing.assert_array_equal([[float(r["mu"]), float(r["sigma"])] for r in cli_rows], theta)
    assert [int(r["seed"]) for r in cli_rows] == seeds.tolist()
    # the CLI's asks moved the stored ask stream as the posterior's would
    follow = [open_study(path).ask("high", 2).theta for path in paths]
    np.testing.assert_array_equal(follow[0], follow[1])


# ------------------------------------------------------------- output summaries
def test_summaries_by_default_every_id_on_request(study_file, tmp_path, capsys):
    tickets = tmp_path / "t.csv"
    code, out, _ = run_cli(capsys, "ask", study_file, "-f", "low", "-n", 500, "-o", tickets)
    assert code == 0
    assert json.loads(out) == {
        "asked": 500, "fidelity": "low", "file": str(tickets), "first_ticket": 0, "last_ticket": 499,
    }
    code, out, _ = run_cli(capsys, "ask", study_file, "-f", "high", "-n", 3, "-o", tickets, "--ids")
    assert json.loads(out)["tickets"] == [500, 501, 502]
    write_results(tmp_path / "r.csv", read_csv(tickets.read_text())[:2])  # tickets 500, 501
    code, out, _ = run_cli(capsys, "tell", study_file, tmp_path / "r.csv")
    assert json.loads(out) == {
        "told": 2, "done": 2, "failed": 0, "skipped": 0, "first_ticket": 500, "last_ticket": 501,
    }

    code, out, _ = run_cli(capsys, "status", study_file, "--pending")
    summary = json.loads(out)
    assert summary.pop("oldest_age_seconds") >= 0
    assert summary == {"pending": 501, "per_fidelity": {"low": 500, "high": 1}, "first_ticket": 0, "last_ticket": 502}
    code, out, _ = run_cli(capsys, "status", study_file, "--pending", "--ids")
    assert json.loads(out)["tickets"] == [*range(500), 502]
    code, out, _ = run_cli(capsys, "status", study_file, "--pending", "--full")
    records = json.loads(out)
    assert [r["ticket"] for r in records] == [*range(500), 502]
    assert set(records[0]) == {"ticket", "fidelity", "seed", "age_seconds", "mu", "sigma"}


# ---------------------------------------------------------- a closed output pipe
@pytest.mark.parametrize("command", [["status", "--pending", "--format", "csv"], ["export", "-o", "-"]])
def test_closed_output_pipe_exits_quietly_with_141(study_file, capsys, command):
    study = open_study(study_file)
    study.ask("low", 20_000)  # about 1.4 MB of CSV: far more than a pipe buffers
    study.close()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen(
        [sys.executable, "-m", "mfask.cli", command[0], str(study_file), *command[1:]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    assert process.stdout.readline().startswith(b"ticket,")  # like `| head -1`
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=300) == EXIT_CODES["broken_pipe"] == 141
    assert err == ""  # no traceback, no message


# ------------------------------------------------------------------- cosmetics
def test_version(capsys):
    import mfask

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"mfask {mfask.__version__}"


def test_wrong_sized_observation_says_what_to_pass(study_file, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "ask", study_file, "-f", "low", "-n", 3)
    write_results(tmp_path / "r.csv", read_csv(out))
    assert run_cli(capsys, "tell", study_file, tmp_path / "r.csv")[0] == 0  # outputs: 2 numbers
    code, out, err = run_cli(capsys, "sample", study_file, "-n", 5, "--x", "1.0,2.0,3.0")
    assert code == EXIT_CODES["input"] and out == ""
    assert "--x has 3 number(s)" in err and "pass --x with 2 comma-separated numbers" in err
    assert "*" not in err and "batched" not in err  # no Python-API syntax
    (tmp_path / "obs.csv").write_text("y_sum\n1.5\n")
    code, _, err = run_cli(capsys, "sample", study_file, "-n", 5, "--x-file", tmp_path / "obs.csv")
    assert code == EXIT_CODES["input"] and f"put one row of 2 numbers in {tmp_path / 'obs.csv'}" in err


def test_exports_carry_utc_times_next_to_the_seconds(study_file, tmp_path, capsys):
    from datetime import datetime

    code, out, _ = run_cli(capsys, "ask", study_file, "-f", "low", "-n", 3)
    write_results(tmp_path / "r.csv", read_csv(out)[:2])
    assert run_cli(capsys, "tell", study_file, tmp_path / "r.csv")[0] == 0
    assert run_cli(capsys, "export", study_file, "-o", tmp_path / "all.csv")[0] == 0
    rows = read_csv((tmp_path / "all.csv").read_text())
    assert list(rows[0])[-2:] == ["asked_at_utc", "told_at_utc"]  # appended: old columns keep their place
    for row in rows:
        for name in ("asked_at", "told_at"):
            if row[name] == "":
                assert row[f"{name}_utc"] == ""  # ticket 2 is pending
                continue
            when = datetime.fromisoformat(row[f"{name}_utc"])
            assert when.utcoffset().total_seconds() == 0
            assert abs(when.timestamp() - float(row[name])) < 1e-3
    assert run_cli(capsys, "export", study_file, "-o", tmp_path / "all.npz")[0] == 0
    with np.load(tmp_path / "all.npz", allow_pickle=False) as arrays:
        assert list(arrays["told_at_utc"]) == [r["told_at_utc"] for r in rows]
        assert list(arrays["asked_at_utc"]) == [r["asked_at_utc"] for r in rows]


def test_parameters_a_fidelity_does_not_use_are_empty_cells(tmp_path, capsys):
    spec = SPEC.replace('fidelities = ["low", {name = "high"}]',
                        'fidelities = [{name = "low", parameters = ["mu"]}, "high"]')
    (tmp_path / "spec.toml").write_text(spec)
    path = tmp_path / "lf.mfask"
    assert run_cli(capsys, "init", path, "--spec", tmp_path / "spec.toml")[0] == 0
    code, out, _ = run_cli(capsys, "ask", path, "-f", "low", "-n", 4)
    low = read_csv(out)
    assert list(low[0]) == ["ticket", "fidelity", "seed", "mu", "sigma"]  # the documented header
    assert all(r["sigma"] == "" and float(r["mu"]) > 0 for r in low)
    code, out, _ = run_cli(capsys, "ask", path, "-f", "high", "-n", 2, "--format", "json")
    assert all(r["sigma"] is not None for r in json.loads(out))
    code, out, _ = run_cli(capsys, "status", path, "--pending", "--format", "csv")
    assert [r["sigma"] == "" for r in read_csv(out)] == [True] * 4 + [False] * 2
    code, out, _ = run_cli(capsys, "status", path, "--pending", "--full")
    assert [r["sigma"] is None for r in json.loads(out)] == [True] * 4 + [False] * 2

    # the LF simulator uses mu only; its results go back by ticket
    with open(tmp_path / "r.csv", "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow([*low[0], "y"])
        writer.writerows([[*r.values(), 2 * float(r["mu"])] for r in low])
    code, out, err = run_cli(capsys, "tell", path, tmp_path / "r.csv")
    assert code == 0 and json.loads(out)["done"] == 4, err
    study = open_study(path)
    theta, x = study.posterior.data("low")
    np.testing.assert_array_equal(x[:, 0], 2 * theta[:, 0])
    assert np.all((theta[:, 1] >= 0.1) & (theta[:, 1] <= 0.6))  # the stored dummies: prior draws
    study.close()
