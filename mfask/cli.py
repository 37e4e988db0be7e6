"""The ``mfask`` command: drive a study from a shell script or a job array.

::

    mfask init    STUDY --spec spec.toml            create a study file
    mfask ask     STUDY -f low -n 20 [-o t.csv]     open tickets -> CSV
    mfask tell    STUDY results.csv [--skip-told]   CSV of results -> study
    mfask status  STUDY [--pending]                 counts; or pending tickets (summary/CSV)
    mfask fit     STUDY [-f high] [--force] [-q]    train (one trainer at a time)
    mfask sample  STUDY -n 1000 --x 0.3,1.2,...     posterior samples -> CSV
    mfask export  STUDY -o data.csv|data.npz        everything, as CSV/npz
    mfask abandon STUDY 3 4 [--reason ...]          give up on tickets
    mfask retry   STUDY 3 4 [-o t.csv]              re-ask their parameters

CSV files have a header. ``ask`` writes ``ticket,fidelity,seed,<parameters>``
(``seed``: a reproducible seed for that ticket's simulation); a parameter
the ticket's fidelity does not use (``Fidelity(..., parameters=[...])``) is
an empty cell. ``tell`` reads ``ticket`` and the output columns; it ignores
the columns ``ask`` wrote, so a script may append its outputs to the ask
file and tell it back. Optional columns: ``cost`` (seconds), ``reason``
(non-empty: the simulation failed, for that reason) and ``metadata`` (a JSON
object). An empty, ``nan`` or ``inf`` output fails the ticket. The output
columns of the first ``tell`` are remembered; later tells must use the same
ones. So that a misspelt parameter column (``gna`` for ``gNa``) does not
become an output for good, a column that looks like a misspelling of a
parameter or of the columns above is refused unless ``--outputs`` names the
outputs.

A file given with ``-o`` is checked (folder exists and takes new files, the
file is writable and not the study's own) before the study changes, and is
written through a temporary file that replaces it.

Results are JSON on standard output (CSV where noted). JSON about many
tickets is a summary (counts and the lowest and highest ticket id);
``--ids`` adds every ticket id. Errors are one line on standard error, with
an exit code a script can act on:

====  ===================================================================
0     success
1     unexpected internal error (a bug: please report it)
2     usage error (unknown command or option, an option value of the
      wrong kind)
3     bad input: malformed, unreadable or non-UTF-8 CSV/spec, unknown
      ticket or fidelity, ticket id beyond 64 bits, ticket already told,
      wrong number of outputs, a column like a misspelt parameter, ``-n``
      out of range, a non-finite observation...
4     not enough data yet (e.g. ``fit``/``sample`` before 2 results)
5     study file problem: missing, already exists (``init``), not a
      study, unknown schema version, tampered or corrupt; or its files
      cannot be read or written (a change to a read-only study, a full
      disk, an I/O error, the file deleted or replaced while open, a lock
      file that is not mfask's)
6     busy: another process held the study (training lock or database)
      for longer than ``--timeout``/``--wait``
7     output file problem: the ``-o`` file cannot be written (no such
      folder, not writable, a folder, the study's own file: found before
      the study changes; or the disk filled up while writing it)
130   interrupted (Ctrl-C) before the command's work was done; once its
      result is going out, Ctrl-C is ignored (:mod:`mfask.late_interrupt`)
141   standard output was closed before everything was written (e.g.
      ``mfask status STUDY --pending --format csv | head``): the command's
      effect on the study is committed, the rest of its output is dropped
      quietly (141 = 128 + SIGPIPE, what the shell reports for other
      tools cut short this way)
====  ===================================================================

Only ``init``, ``ask``, ``fit``, ``sample`` and ``export --format state``
import torch; ``tell``, ``status``, ``export`` (CSV, npz), ``abandon`` and
``retry`` work on the study's records alone and start in a fraction of the
time.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, TextIO

import numpy as np

from mfask import __version__, late_interrupt
from mfask.user_input import as_ticket_ids, closest_name, positive_int

__all__ = ["main", "EXIT_CODES", "MAX_SAMPLES"]

EXIT_CODES = {
    "ok": 0,
    "internal": 1,
    "usage": 2,
    "input": 3,
    "not_enough_data": 4,
    "study_file": 5,
    "busy": 6,
    "output_file": 7,
    "interrupted": 130,
    "broken_pipe": 141,
}

_OUTPUT_COLUMNS_KEY = "cli.output_columns"
_ASK_COLUMNS = ("ticket", "fidelity", "seed", "source", "age_seconds")
_ANNOTATION_COLUMNS = ("cost", "reason", "metadata")
# files next to a study that are part of it (SQLite's write-ahead log and
# shared memory, its rollback journal, the training lock): never an output
_STUDY_COMPANION_SUFFIXES = ("-wal", "-shm", "-journal", ".lock")
# how similar (difflib ratio) a results column must be to a parameter or a
# known column to be refused as its misspelling
_MISSPELLING_CUTOFF = 0.8

#: the most posterior samples one ``mfask sample`` draws (its CSV would have
#: that many rows)
MAX_SAMPLES = 10_000_000


class CliInputError(Exception):
    """Bad input found by the command line itself (exit code 3)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module doc).

    With ``argv`` left ``None`` this is the ``mfask`` program, reading the
    process's own command line: once the command's result (or error message)
    starts going out, the process ignores Ctrl-C until it exits, so that a
    finished command keeps its exit status (:mod:`mfask.late_interrupt`).
    With an explicit ``argv`` the process's signal handling is left alone.
    """
    parser = _parser()
    args = parser.parse_args(argv)  # exits with 2 on usage errors
    with late_interrupt.guarding(argv is None):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Run the command ``args`` names; map what it raises to an exit code
    and a one-line message."""
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return int(args.command(args) or 0)
    except BrokenPipeError:  # the reader of standard output went away (e.g. ``| head``)
        _discard_standard_output()
        return EXIT_CODES["broken_pipe"]
    except KeyboardInterrupt:
        late_interrupt.result_going_out()
        _error("interrupted")
        return EXIT_CODES["interrupted"]
    except BaseException as error:  # noqa: BLE001 - mapped to exit codes
        late_interrupt.result_going_out()
        code, message = _classify(error, args)
        _error(message)
        if code == EXIT_CODES["internal"]:
            traceback.print_exc(file=sys.stderr)
        return code
    finally:
        warnings.showwarning = previous


def _discard_standard_output() -> None:
    """Point standard output at the null device, so that the interpreter's
    final flush of what is still buffered does not fail on the closed pipe
    again (and print a traceback)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError, io.UnsupportedOperation):
        pass  # standard output is not a file descriptor (e.g. captured in a test)


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    print(f"mfask: warning: {message}", file=sys.stderr, flush=True)


def _classify(error: BaseException, args: argparse.Namespace) -> tuple[int, str]:
    """The exit code and message of what a command raised. Errors about the
    user's own input and output files are raised as :class:`CliInputError`
    and :class:`~mfask.errors.OutputFileError` where they are read and
    written, so that any other ``OSError`` or SQLite error is the study's."""
    import sqlite3

    from mfask.errors import (
        MfaskError,
        NotEnoughDataError,
        OutputFileError,
        StateFormatError,
        StudyLockedError,
        StudyStorageError,
        TicketAlreadyToldError,
    )

    if isinstance(error, SystemExit):
        raise error
    if isinstance(error, StudyLockedError):
        return EXIT_CODES["busy"], str(error)
    if isinstance(error, OutputFileError):
        return EXIT_CODES["output_file"], str(error)
    if isinstance(error, (StateFormatError, StudyStorageError)):
        return EXIT_CODES["study_file"], str(error)
    if isinstance(error, sqlite3.Error):
        return EXIT_CODES["study_file"], f"cannot use the study file {args.study}: {error}"
    if isinstance(error, OSError):
        if error.strerror is None:  # a message of mfask's own ("no study file at ...")
            return EXIT_CODES["study_file"], str(error)
        where = f" ({error.filename})" if error.filename is not None else ""
        return EXIT_CODES["study_file"], f"cannot use the study file {args.study}: {error.strerror}{where}"
    if isinstance(error, NotEnoughDataError):
        return EXIT_CODES["not_enough_data"], str(error)
    if isinstance(error, TicketAlreadyToldError) and args.command is _tell:
        return EXIT_CODES["input"], f"{error} (on the command line: mfask tell --skip-told)"
    if isinstance(error, (MfaskError, CliInputError)):
        return EXIT_CODES["input"], str(error)
    return EXIT_CODES["internal"], f"internal error: {type(error).__name__}: {error}"


def _error(message: str) -> None:
    print(f"mfask: error: {message}", file=sys.stderr, flush=True)


# ================================================================= parser
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mfask",
        description="Multi-fidelity simulation-based inference, one study file at a time.",
        epilog="Exit codes: 0 ok, 1 internal error, 2 usage, 3 bad input, 4 not enough "
        "data, 5 study file problem, 6 busy (locked), 7 output file problem (-o), "
        "130 interrupted, 141 standard output closed early.",
    )
    parser.add_argument("--version", action="version", version=f"mfask {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    def command(name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("study", help="the study file")
        sub.add_argument(
            "--timeout", type=_seconds, default=60.0,
            help="seconds to wait for another process's write (default 60)",
        )
        sub.set_defaults(command=handler)
        return sub

    sub = command("init", _init, "create a study file from a TOML/JSON spec")
    sub.add_argument("--spec", required=True, help="the spec file (.toml or .json)")
    sub.add_argument("--seed", type=int, help="overrides the spec's seed")

    ids_help = "also list every ticket id in the JSON summary"
    quiet_help = "no training progress on standard error (shown by default)"
    device_help = "where the networks train: cpu (default), cuda, cuda:N, mps or auto"

    sub = command("ask", _ask, "open new tickets and write them as CSV")
    sub.add_argument("-f", "--fidelity", required=True)
    sub.add_argument("-n", type=int, required=True, help="number of tickets")
    sub.add_argument("-o", "--output", help="CSV file (default: standard output); a JSON summary is printed")
    sub.add_argument("--format", choices=("csv", "json"), default="csv")
    sub.add_argument("--ids", action="store_true", help=ids_help + " (with -o)")
    sub.add_argument("-q", "--quiet", action="store_true",
                     help="no training progress (sequential asks train first)")
    sub.add_argument("--device", default="cpu", help=device_help)

    sub = command("tell", _tell, "record results from a CSV (ticket + output columns)")
    sub.add_argument("file", help="CSV file, or - for standard input")
    sub.add_argument("--skip-told", action="store_true", help="ignore tickets already told")
    sub.add_argument("--cost", type=float, help="seconds per simulation (if no cost column)")
    sub.add_argument(
        "--outputs", metavar="COLUMNS",
        help="the output columns, comma-separated, in order (default: every column that is not "
        "ticket, fidelity, seed, a parameter, cost, reason or metadata); other columns are "
        "ignored. Needed when an output's name looks like a misspelt parameter",
    )
    sub.add_argument("--ids", action="store_true", help=ids_help)

    sub = command("status", _status, "summary of the study (JSON)")
    sub.add_argument(
        "--pending", action="store_true",
        help="the pending tickets: a JSON summary (counts, lowest and highest id, oldest age), "
        "or with --format csv a table of every one with its seed, age and parameters",
    )
    sub.add_argument("--format", choices=("json", "csv"), default="json")
    sub.add_argument("--ids", action="store_true", help=ids_help + " (with --pending)")
    sub.add_argument(
        "--full", action="store_true",
        help="with --pending: every pending ticket as a JSON record (as the CSV table)",
    )

    sub = command("fit", _fit, "train the posterior under the study's training lock")
    sub.add_argument("-f", "--fidelity", help="train up to this fidelity (default: highest with data)")
    sub.add_argument("--force", action="store_true", help="retrain even if up to date")
    sub.add_argument("--wait", type=_seconds, help="seconds to wait for another trainer (default: wait)")
    sub.add_argument("-q", "--quiet", action="store_true", help=quiet_help)
    sub.add_argument("--verbose", action="store_true", help=argparse.SUPPRESS)  # the default now
    sub.add_argument("--device", default="cpu", help=device_help)

    sub = command("sample", _sample, "posterior samples at an observation (CSV)")
    sub.add_argument("-n", type=int, required=True)
    where = sub.add_mutually_exclusive_group(required=True)
    where.add_argument("--x", help="the observation: comma-separated numbers")
    where.add_argument("--x-file", help="CSV with one row (optionally a header): the observation")
    sub.add_argument("-f", "--fidelity")
    sub.add_argument("-o", "--output")
    sub.add_argument("--format", choices=("csv", "json"), default="csv")
    sub.add_argument("--wait", type=_seconds, help="seconds to wait for another trainer (default: wait)")
    sub.add_argument("-q", "--quiet", action="store_true", help=quiet_help)
    sub.add_argument("--device", default="cpu", help=device_help)

    sub = command("export", _export, "all tickets and results as CSV or npz")
    sub.add_argument("-o", "--output", required=True, help="file to write (- for CSV on standard output)")
    sub.add_argument(
        "--format", choices=("csv", "npz", "state"),
        help="csv: one row per ticket; npz: the same as arrays; state: a posterior "
        "state loadable with MultiFidelityPosterior.load (default: from the file suffix)",
    )

    sub = command("abandon", _abandon, "give up on pending tickets")
    sub.add_argument("tickets", nargs="+", type=int)
    sub.add_argument("--reason")

    sub = command("retry", _retry, "ask the parameters of tickets again (new tickets, CSV)")
    sub.add_argument("tickets", nargs="+", type=int)
    sub.add_argument("-o", "--output", help="CSV file (default: standard output); a JSON summary is printed")
    sub.add_argument("--format", choices=("csv", "json"), default="csv")
    sub.add_argument("--ids", action="store_true", help=ids_help + " (with -o)")
    return parser


def _seconds(text: str) -> float:
    """A ``--timeout``/``--wait`` value: non-negative seconds (``inf``: no limit)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds (a number); got {text!r}") from None
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative seconds; got {text!r}")
    return value


# =============================================================== commands
def _open(args: argparse.Namespace, verbose: bool = False) -> Any:
    """The study, opened lazily: asks load the prior (torch), ``fit``,
    ``sample`` and ``save`` the posterior; the other commands need neither."""
    from mfask.study import open_study

    # only the commands that train take --device; the others never build a network
    return open_study(args.study, timeout=args.timeout, verbose=verbose, lazy=True,
                      device=getattr(args, "device", "cpu"))


def _init(args: argparse.Namespace) -> int:
    from mfask.study import Study
    from mfask.study_spec import posterior_from_spec, read_spec

    spec = read_spec(args.spec)
    if args.seed is not None:
        spec["seed"] = args.seed
    posterior = posterior_from_spec(spec)
    with Study.create(args.study, posterior, timeout=args.timeout) as study:
        _print_json({
            "study": str(study.path),
            "parameters": list(study.parameter_names),
            "fidelities": list(study.fidelity_names),
            "seed": posterior.seed,
        })
    return 0


def _ask(args: argparse.Namespace) -> int:
    from mfask.prior_book import MAX_ASK  # (torch: an ask needs the prior anyway)

    n = _count(args.n, MAX_ASK)
    output = _checked_output(args)
    with _open(args, verbose=not args.quiet) as study:
        batch = study.ask(args.fidelity, n)
        _write_tickets(study, batch, args, output)
    return 0


def _retry(args: argparse.Namespace) -> int:
    ids = _ticket_ids(args.tickets)
    output = _checked_output(args)
    with _open(args) as study:
        batch = study.retry(ids)
        _write_tickets(study, batch, args, output)
    return 0


def _write_tickets(study: Any, batch: Any, args: argparse.Namespace, output: Path | None) -> None:
    """The tickets of an ask/retry as CSV or JSON records, to ``output``
    (then a JSON summary on standard output) or to standard output."""
    from mfask.errors import OutputFileError

    seeds = study.simulator_seeds(batch)
    header = ["ticket", "fidelity", "seed", *batch.parameter_names]
    empty = None if args.format == "json" else ""
    rows = [
        [int(t), batch.fidelity, int(s),
         *_parameter_cells(theta, batch.parameter_names, batch.used_parameters, empty)]
        for t, s, theta in zip(batch.ticket_ids, seeds, batch.theta)
    ]
    if output is None:
        if args.format == "json":
            _print_json([dict(zip(header, row)) for row in rows])
        else:
            _print_table(header, rows)
        return
    if args.format == "json":
        text = json.dumps([dict(zip(header, row)) for row in rows], indent=1) + "\n"
    else:
        text = _csv_text(header, rows)
    try:
        _write_output(output, text.encode("utf-8"))
    except OutputFileError as error:  # (the disk filled up since the check)
        raise OutputFileError(
            f"{error}; the {len(batch)} new ticket(s) {int(batch.ticket_ids.min())}.."
            f"{int(batch.ticket_ids.max())} are open in the study: `mfask status {args.study} "
            "--pending --format csv` lists them"
        ) from None
    _print_json({
        "asked": len(batch), "fidelity": batch.fidelity, "file": args.output,
        **_ticket_summary(batch.ticket_ids, args.ids),
    })


def _parameter_cells(
    theta: np.ndarray, names: Sequence[str], used: Sequence[str], empty: str | None
) -> list[float | str | None]:
    """One ticket's parameters ``(d,)`` for a table: ``empty`` for those its
    fidelity does not use (their values are dummies the simulator must not
    read)."""
    return [_number(v) if name in used else empty for name, v in zip(names, theta)]


def _ticket_summary(ids: np.ndarray, with_ids: bool) -> dict[str, Any]:
    """The lowest and highest of ticket ``ids`` (``None`` when there are none)
    and, ``with_ids``, every id in order."""
    summary: dict[str, Any] = {
        "first_ticket": int(ids.min()) if ids.size else None,
        "last_ticket": int(ids.max()) if ids.size else None,
    }
    if with_ids:
        summary["tickets"] = [int(t) for t in ids]
    return summary


def _tell(args: argparse.Namespace) -> int:
    from mfask.ticket_book import SimulationFailedWarning

    text = _read_standard_input() if args.file == "-" else _read_text(args.file)
    declared = None if args.outputs is None else [name.strip() for name in args.outputs.split(",")]
    with _open(args) as study:
        stored = study.info().get(_OUTPUT_COLUMNS_KEY)
        known = None if stored is None else json.loads(stored)
        table = _parse_results(text, study.parameter_names, args.file, declared, known)
        if known is not None and known != table["outputs"]:
            raise CliInputError(
                f"{args.file} has output columns {table['outputs']}; earlier tells used "
                f"{known} (same names, same order; or pass --outputs {','.join(known)})"
            )
        if not table["tickets"].size:
            _print_json({
                "told": 0, "done": 0, "failed": 0, "skipped": 0,
                **_ticket_summary(np.zeros(0, dtype=np.int64), args.ids),
            })
            return 0
        cost = table["cost"] if table["cost"] is not None else args.cost
        with warnings.catch_warnings():  # the JSON below counts the failures
            warnings.simplefilter("ignore", SimulationFailedWarning)
            result = study.tell(
                table["tickets"],
                table["x"],
                skip_told=args.skip_told,
                cost=cost,
                metadata=table["metadata"],
                reason=table["reason"],
            )
        if known is None:
            study.set_info(_OUTPUT_COLUMNS_KEY, json.dumps(table["outputs"]))
        told = result.ticket_ids[result.ticket_ids >= 0]
        _print_json({
            "told": int(told.shape[0]),
            "done": result.num_done,
            "failed": result.num_failed,
            "skipped": int((result.ticket_ids < 0).sum()),
            **_ticket_summary(told, args.ids),
        })
    return 0


def _parse_results(
    text: str,
    parameter_names: Sequence[str],
    label: str,
    declared: Sequence[str] | None = None,
    known: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The rows of a results CSV: tickets ``(n,)``, outputs ``x`` ``(n, k)``
    and annotations.

    The outputs are the ``declared`` columns (``--outputs``), else every
    column that is not ``ticket``, an ask column, a parameter or an
    annotation. Undeclared, they must not look like a misspelt parameter or
    annotation (``gna`` for ``gNa``, ``Cost``), which would silently become an
    output and fix the study's output size for good, unless earlier tells
    already used them (``known``).
    """
    lines = _csv_rows(text, label)
    try:
        _, first = next(lines)
    except StopIteration:
        raise CliInputError(f"{label} is empty; expected a header with 'ticket' and output columns") from None
    header = [h.strip() for h in first]
    if "ticket" not in header:
        near = [h for h in header if closest_name(h, ["ticket"], cutoff=_MISSPELLING_CUTOFF)]
        hint = f"; is {near[0]!r} meant to be 'ticket'?" if near else ""
        raise CliInputError(f"{label} has no 'ticket' column (header: {header}){hint}")
    if len(set(header)) != len(header):
        raise CliInputError(f"{label} repeats a column name: {header}")
    outputs = _output_columns(header, parameter_names, label, declared, known)
    where = {name: i for i, name in enumerate(header)}
    tickets, x, costs, reasons, metadata = [], [], [], [], []
    for line, row in lines:
        if not any(cell.strip() for cell in row):
            continue  # blank line
        if len(row) != len(header):
            raise CliInputError(f"{label} line {line}: {len(row)} fields for {len(header)} columns")
        try:
            tickets.append(int(row[where["ticket"]]))
        except ValueError:
            raise CliInputError(f"{label} line {line}: ticket {row[where['ticket']]!r} is not an integer") from None
        x.append([_parse_output(row[where[name]], label, line, name) for name in outputs])
        if "cost" in where:
            cell = row[where["cost"]].strip()
            costs.append(None if cell == "" else _parse_float(cell, label, line, "cost"))
        if "reason" in where:
            reasons.append(row[where["reason"]].strip() or None)
        if "metadata" in where:
            cell = row[where["metadata"]].strip()
            try:
                metadata.append(None if cell == "" else json.loads(cell))
            except json.JSONDecodeError as error:
                raise CliInputError(f"{label} line {line}: metadata is not JSON: {error}") from None
    for i, reason in enumerate(reasons):
        if reason is not None:
            x[i] = [math.nan] * len(outputs)  # the simulation failed: its outputs do not count
    return {
        "tickets": _ticket_ids(tickets),
        "x": np.asarray(x, dtype=np.float64).reshape(len(tickets), len(outputs)),
        "outputs": outputs,
        "cost": costs if "cost" in where else None,
        "reason": reasons if "reason" in where else None,
        "metadata": metadata if "metadata" in where else None,
    }


def _output_columns(
    header: Sequence[str],
    parameter_names: Sequence[str],
    label: str,
    declared: Sequence[str] | None,
    known: Sequence[str] | None,
) -> list[str]:
    """The output columns of a results CSV with ``header`` (see
    :func:`_parse_results`); raises :class:`CliInputError` saying what to fix."""
    reserved = [*parameter_names, *_ASK_COLUMNS, *_ANNOTATION_COLUMNS]
    if declared is not None:
        if not all(declared) or len(set(declared)) != len(declared):
            raise CliInputError(f"--outputs must name distinct columns, comma-separated; got {declared}")
        missing = [name for name in declared if name not in header]
        if missing:
            raise CliInputError(f"--outputs names {missing}, which {label} does not have (header: {list(header)})")
        taken = [name for name in declared if name in reserved]
        if taken:
            raise CliInputError(f"--outputs names {taken}, which are parameter, ask or annotation columns")
        return list(declared)
    outputs = [h for h in header if h not in reserved]
    if not outputs:
        raise CliInputError(
            f"{label} has no output columns (only {list(header)}); add the simulator's outputs"
        )
    for name in outputs:
        if known is not None and name in known:
            continue
        intended = closest_name(name, reserved, cutoff=_MISSPELLING_CUTOFF)
        if intended is not None:
            what = "the parameter" if intended in parameter_names else "the column"
            raise CliInputError(
                f"{label}: column {name!r} looks like {what} {intended!r} misspelt, and would "
                f"become a simulator output (fixing the study's output size for good); rename "
                f"it to {intended!r}, or confirm the outputs with --outputs {','.join(outputs)}"
            )
    return outputs


def _parse_output(cell: str, label: str, line: int, column: str) -> float:
    cell = cell.strip()
    return math.nan if cell == "" else _parse_float(cell, label, line, column)


def _parse_float(cell: str, label: str, line: int, column: str) -> float:
    try:
        return float(cell)
    except ValueError:
        raise CliInputError(f"{label} line {line}: {column} {cell!r} is not a number") from None


def _status(args: argparse.Namespace) -> int:
    with _open(args) as study:
        if not args.pending:
            _print_json(study.status())
            return 0
        rows = study.pending()
        if args.format == "json" and not args.full:
            _print_json(_pending_summary(rows, study.fidelity_names, args.ids))
            return 0
        ids = np.array([r.ticket for r in rows], dtype=np.int64)
        seeds = study.simulator_seeds(ids)
        names = study.parameter_names
        used = {f.name: f.parameters or names for f in study.fidelities}
        empty = None if args.format == "json" else ""
        header = ["ticket", "fidelity", "seed", "age_seconds", *names]
        table = [
            [r.ticket, r.fidelity, int(seed), round(r.age, 3),
             *_parameter_cells(r.theta, names, used[r.fidelity], empty)]
            for r, seed in zip(rows, seeds)
        ]
    if args.format == "csv":
        _write_csv(sys.stdout, header, table)
    else:
        _print_json([dict(zip(header, row)) for row in table])
    return 0


def _pending_summary(rows: list[Any], fidelity_names: Sequence[str], with_ids: bool) -> dict[str, Any]:
    """Pending tickets (:class:`~mfask.store.TicketRow`, oldest first) in
    brief: how many per fidelity, the lowest and highest id, the oldest age."""
    counts = {name: 0 for name in fidelity_names}
    for row in rows:
        counts[row.fidelity] += 1
    return {
        "pending": len(rows),
        "per_fidelity": counts,
        **_ticket_summary(np.array([r.ticket for r in rows], dtype=np.int64), with_ids),
        "oldest_age_seconds": round(max(r.age for r in rows), 3) if rows else None,
    }


def _fit(args: argparse.Namespace) -> int:
    with _open(args, verbose=not args.quiet) as study:
        histories = study.fit(args.fidelity, force=args.force, timeout=args.wait)
        status = study.status()
    _print_json({
        "trained": {
            name: [
                {
                    "epochs": h.epochs,
                    "stopped_early": h.stopped_early,
                    "seconds": round(h.seconds, 3),
                    "best_validation_loss": _finite(h.best_validation_loss),
                    "start": h.start,
                    "candidate": h.candidate,
                    "selected": h.selected,
                }
                for h in members
            ]
            for name, members in histories.items()
        },
        "transfer": {name: status["transfer"][name] for name in histories},
        "up_to_date": not histories,
        "checkpoints": status["checkpoints"],
    })
    return 0


def _sample(args: argparse.Namespace) -> int:
    n = _count(args.n, MAX_SAMPLES)
    if args.x is not None:
        try:
            x = [float(v) for v in args.x.split(",")]
        except ValueError:
            raise CliInputError(f"--x must be comma-separated numbers; got {args.x!r}") from None
    else:
        x = _read_observation(args.x_file)
    if not all(math.isfinite(v) for v in x):
        where = "--x" if args.x is not None else args.x_file
        raise CliInputError(f"the observation from {where} must be finite numbers (no nan or inf); got {x}")
    output = _checked_output(args)
    with _open(args, verbose=not args.quiet) as study:
        observation = np.asarray(x, dtype=np.float64)
        shape = study.x_shape
        if shape is not None:  # (else the study says that nothing was told yet)
            _check_observation_size(observation, shape, args)
            observation = observation.reshape(shape)
        samples = study.sample(n, observation, fidelity=args.fidelity, timeout=args.wait)
        names = list(study.parameter_names)
    rows = [[_number(v) for v in row] for row in samples]
    if output is None:
        if args.format == "json":
            _print_json([dict(zip(names, row)) for row in rows])
        else:
            _print_table(names, rows)
        return 0
    if args.format == "json":
        text = json.dumps([dict(zip(names, row)) for row in rows]) + "\n"
    else:
        text = _csv_text(names, rows)
    _write_output(output, text.encode("utf-8"))
    _print_json({"samples": len(rows), "file": args.output})
    return 0


def _check_observation_size(observation: np.ndarray, shape: tuple[int, ...], args: argparse.Namespace) -> None:
    """Raise :class:`CliInputError`, saying what to pass, unless the
    observation has as many numbers as one simulator output (``shape``)."""
    expected = math.prod(shape)
    if observation.size == expected:
        return
    if len(shape) == 1:
        layout = f"{expected} number(s)"
    else:
        layout = f"a {' x '.join(map(str, shape))} array: {expected} numbers, row after row"
    where = "--x" if args.x is not None else args.x_file
    fix = (f"pass --x with {expected} comma-separated numbers" if args.x is not None
           else f"put one row of {expected} numbers in {args.x_file}")
    raise CliInputError(
        f"the observation from {where} has {observation.size} number(s); each simulator "
        f"output of this study holds {layout}; {fix}"
    )


def _read_observation(path: str) -> list[float]:
    rows = [r for _, r in _csv_rows(_read_text(path), path) if any(c.strip() for c in r)]
    numeric = []
    for row in rows:
        try:
            numeric.append([float(c) for c in row])
        except ValueError:
            continue  # a header
    if len(numeric) != 1:
        raise CliInputError(f"{path} must hold exactly one row of numbers (the observation); found {len(numeric)}")
    return numeric[0]


def _export(args: argparse.Namespace) -> int:
    fmt = args.format or {".npz": "npz", ".csv": "csv"}.get(Path(args.output).suffix.lower())
    if args.output == "-":
        fmt = fmt or "csv"
        if fmt != "csv":
            raise CliInputError("only --format csv can be written to standard output")
    if fmt is None:
        raise CliInputError(f"cannot tell the format from {args.output!r}; pass --format csv|npz|state")
    output = None if args.output == "-" else _checked_output(args)
    with _open(args) as study:
        if fmt == "state":
            from mfask.output_file import reporting_errors

            posterior = study.posterior
            with reporting_errors(output):
                posterior.save(output)
            _print_json({"file": args.output, "format": "state"})
            return 0
        rows = study.tickets()
        names = list(study.parameter_names)
        x_shape = study.x_shape
        outputs = json.loads(study.info().get(_OUTPUT_COLUMNS_KEY, "null") or "null")
    width = 0 if x_shape is None else int(np.prod(x_shape))
    if outputs is None or len(outputs) != width:
        outputs = [f"x{i}" for i in range(width)]
    if fmt == "npz":
        arrays = _export_arrays(rows, names, width)
        archive = io.BytesIO()
        np.savez(archive, **arrays)
        _write_output(output, archive.getvalue())
        _print_json({"file": args.output, "format": "npz", "tickets": len(rows), "arrays": sorted(arrays)})
        return 0
    # the times as Unix seconds (as stored), then as ISO 8601 UTC text
    header = ["ticket", "fidelity", "source", "round", "status", *names, *outputs,
              "asked_at", "told_at", "cost", "reason", "metadata", "retry_of",
              "asked_at_utc", "told_at_utc"]
    table = []
    for r in rows:
        x = [""] * width if r.x is None else [_number(v) for v in np.ravel(r.x)]
        table.append([
            r.ticket, r.fidelity, r.source, r.round, r.status, *(_number(v) for v in r.theta), *x,
            r.asked_at, "" if r.told_at is None else r.told_at, "" if r.cost is None else r.cost,
            r.reason or "", "" if r.metadata is None else json.dumps(r.metadata),
            "" if r.retry_of is None else r.retry_of,
            _utc_text(r.asked_at), _utc_text(r.told_at),
        ])
    if output is None:
        _print_table(header, table)
    else:
        _write_output(output, _csv_text(header, table).encode("utf-8"))
        _print_json({"file": args.output, "format": "csv", "tickets": len(rows)})
    return 0


def _export_arrays(rows: list[Any], names: list[str], width: int) -> dict[str, np.ndarray]:
    count = len(rows)
    x = np.full((count, width), np.nan)
    for i, r in enumerate(rows):
        if r.x is not None:
            x[i] = np.ravel(r.x)
    return {
        "ticket": np.array([r.ticket for r in rows], dtype=np.int64),
        "fidelity": np.array([r.fidelity for r in rows], dtype=str),
        "source": np.array([r.source for r in rows], dtype=str),
        "round": np.array([r.round for r in rows], dtype=np.int64),
        "status": np.array([r.status for r in rows], dtype=str),
        "parameter_names": np.array(names, dtype=str),
        "theta": np.array([r.theta for r in rows], dtype=np.float64).reshape(count, len(names)),
        "x": x,
        "asked_at": np.array([r.asked_at for r in rows], dtype=np.float64),
        "told_at": np.array([np.nan if r.told_at is None else r.told_at for r in rows]),
        "asked_at_utc": np.array([_utc_text(r.asked_at) for r in rows], dtype=str),
        "told_at_utc": np.array([_utc_text(r.told_at) for r in rows], dtype=str),
        "cost": np.array([np.nan if r.cost is None else r.cost for r in rows]),
        "reason": np.array([r.reason or "" for r in rows], dtype=str),
        "metadata": np.array(["" if r.metadata is None else json.dumps(r.metadata) for r in rows], dtype=str),
        "retry_of": np.array([-1 if r.retry_of is None else r.retry_of for r in rows], dtype=np.int64),
    }


def _abandon(args: argparse.Namespace) -> int:
    ids = _ticket_ids(args.tickets)
    with _open(args) as study:
        ids = study.abandon(ids, reason=args.reason)
    _print_json({"abandoned": ids.tolist()})
    return 0


# ================================================================ helpers
def _count(n: int, maximum: int) -> int:
    """``-n``, checked before the command touches the study."""
    return positive_int(n, "-n", maximum=maximum)


def _ticket_ids(values: Sequence[int]) -> np.ndarray:
    """Ticket ids from the command line or a CSV as int64 ``(n,)``; ids that
    do not fit in 64 bits are bad input (a plain cast would raise an
    ``OverflowError``)."""
    ids = as_ticket_ids(list(values))
    return np.zeros(0, dtype=np.int64) if ids is None else ids


def _checked_output(args: argparse.Namespace) -> Path | None:
    """The ``-o`` file (``None``: standard output), checked writable and
    not one of the study's own files, before the command touches the study."""
    if not args.output:
        return None
    from mfask.output_file import check_output_file
    from mfask.store import study_file_path

    study = study_file_path(args.study)
    companions = [study.with_name(study.name + suffix) for suffix in _STUDY_COMPANION_SUFFIXES]
    return check_output_file(args.output, protected=[study, *companions])


def _write_output(output: Path, payload: bytes) -> None:
    from mfask.output_file import write_output_file

    write_output_file(output, payload)


def _read_text(path: str) -> str:
    """A results or observation file's text (UTF-8, a byte-order mark
    dropped); :class:`CliInputError` if it cannot be read."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise CliInputError(f"no such file: {path}") from None
    except OSError as error:
        raise CliInputError(f"cannot read {path}: {error.strerror or error}") from None
    return _decode(data, path)


def _read_standard_input() -> str:
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # standard input replaced by a text stream (an embedding program)
        return sys.stdin.read()
    return _decode(buffer.read(), "standard input")


def _decode(data: bytes, label: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise CliInputError(
            f"{label} is not UTF-8 text (byte {error.start}: {data[error.start:error.start + 1]!r}); "
            "save it as UTF-8"
        ) from None


def _csv_rows(text: str, label: str) -> Iterator[tuple[int, list[str]]]:
    """The rows of CSV ``text`` with their line numbers; malformed CSV (a
    field over ``csv.field_size_limit()`` characters, a NUL byte) raises
    :class:`CliInputError` naming the line."""
    reader = csv.reader(io.StringIO(text))
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise CliInputError(f"{label} line {reader.line_num}: not valid CSV ({error})") from None
        yield reader.line_num, row


def _write_csv(stream: TextIO, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)


def _csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    stream = io.StringIO()
    _write_csv(stream, header, rows)
    return stream.getvalue()


def _print_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A CSV table on standard output, the command's result."""
    _write_csv(sys.stdout, header, rows)
    late_interrupt.result_going_out()  # (what is still buffered is the end of the result)
    sys.stdout.flush()


def _utc_text(seconds: float | None) -> str:
    """Unix seconds as ISO 8601 UTC text to the millisecond
    (``2025-01-31T12:00:00.000+00:00``); empty for ``None``."""
    if seconds is None:
        return ""
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat(timespec="milliseconds")


def _number(value: float) -> float:
    """A float that prints with all its digits (csv and json use repr)."""
    return float(value)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _print_json(payload: Any) -> None:
    """JSON on standard output, the command's result."""
    text = json.dumps(payload, indent=None, allow_nan=False)
    late_interrupt.result_going_out()
    print(text, flush=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
