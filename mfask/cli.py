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
ones.

Results are JSON on standard output (CSV where noted). JSON about many
tickets is a summary (counts and the lowest and highest ticket id);
``--ids`` adds every ticket id. Errors are one line on standard error, with
an exit code a script can act on:

====  ===================================================================
0     success
1     unexpected internal error (a bug: please report it)
2     usage error (unknown command or option)
3     bad input: malformed CSV/spec, unknown ticket or fidelity, ticket
      already told, wrong number of outputs...
4     not enough data yet (e.g. ``fit``/``sample`` before 2 results)
5     study file problem: missing, already exists (``init``), not a
      study, unknown schema version, tampered or corrupt
6     busy: another process held the study (training lock or database)
      for longer than ``--timeout``/``--wait``
130   interrupted (Ctrl-C)
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
from typing import Any, Iterable, Sequence, TextIO

import numpy as np

from mfask import __version__

__all__ = ["main", "EXIT_CODES"]

EXIT_CODES = {
    "ok": 0,
    "internal": 1,
    "usage": 2,
    "input": 3,
    "not_enough_data": 4,
    "study_file": 5,
    "busy": 6,
    "interrupted": 130,
    "broken_pipe": 141,
}

_OUTPUT_COLUMNS_KEY = "cli.output_columns"
_ASK_COLUMNS = ("ticket", "fidelity", "seed", "source", "age_seconds")
_ANNOTATION_COLUMNS = ("cost", "reason", "metadata")


class CliInputError(Exception):
    """Bad input found by the command line itself (exit code 3)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module doc)."""
    parser = _parser()
    args = parser.parse_args(argv)  # exits with 2 on usage errors
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return int(args.command(args) or 0)
    except BrokenPipeError:  # the reader of standard output went away (e.g. ``| head``)
        _discard_standard_output()
        return EXIT_CODES["broken_pipe"]
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_CODES["interrupted"]
    except BaseException as error:  # noqa: BLE001 - mapped to exit codes
        code, message = _classify(error)
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


def _classify(error: BaseException) -> tuple[int, str]:
    from mfask.errors import (
        MfaskError,
        NotEnoughDataError,
        StateFormatError,
        StudyLockedError,
        TicketAlreadyToldError,
    )

    if isinstance(error, SystemExit):
        raise error
    if isinstance(error, StudyLockedError):
        return EXIT_CODES["busy"], str(error)
    if isinstance(error, StateFormatError):
        return EXIT_CODES["study_file"], str(error)
    if isinstance(error, (FileNotFoundError, FileExistsError)):
        return EXIT_CODES["study_file"], str(error)
    if isinstance(error, NotEnoughDataError):
        return EXIT_CODES["not_enough_data"], str(error)
    if isinstance(error, TicketAlreadyToldError):
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
        "data, 5 study file problem, 6 busy (locked), 130 interrupted, 141 standard "
        "output closed early.",
    )
    parser.add_argument("--version", action="version", version=f"mfask {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    def command(name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("study", help="the study file")
        sub.add_argument(
            "--timeout", type=float, default=60.0,
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
    sub.add_argument("--wait", type=float, help="seconds to wait for another trainer (default: wait)")
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
    sub.add_argument("--wait", type=float, help="seconds to wait for another trainer (default: wait)")
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
    with _open(args, verbose=not args.quiet) as study:
        batch = study.ask(args.fidelity, args.n)
        _write_tickets(study, batch, args)
    return 0


def _retry(args: argparse.Namespace) -> int:
    with _open(args) as study:
        batch = study.retry(np.asarray(args.tickets, dtype=np.int64))
        _write_tickets(study, batch, args)
    return 0


def _write_tickets(study: Any, batch: Any, args: argparse.Namespace) -> None:
    """The tickets of an ask/retry as CSV or JSON records, to ``args.output``
    (then a JSON summary on standard output) or to standard output."""
    seeds = study.simulator_seeds(batch)
    header = ["ticket", "fidelity", "seed", *batch.parameter_names]
    empty = None if args.format == "json" else ""
    rows = [
        [int(t), batch.fidelity, int(s),
         *_parameter_cells(theta, batch.parameter_names, batch.used_parameters, empty)]
        for t, s, theta in zip(batch.ticket_ids, seeds, batch.theta)
    ]
    if not args.output:
        if args.format == "json":
            _print_json([dict(zip(header, row)) for row in rows])
        else:
            _write_csv(sys.stdout, header, rows)
        return
    if args.format == "json":
        Path(args.output).write_text(json.dumps([dict(zip(header, row)) for row in rows], indent=1) + "\n")
    else:
        with open(args.output, "w", newline="") as stream:
            _write_csv(stream, header, rows)
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

    text = sys.stdin.read() if args.file == "-" else _read_text(args.file)
    with _open(args) as study:
        table = _parse_results(text, study.parameter_names, args.file)
        known = study.info().get(_OUTPUT_COLUMNS_KEY)
        if known is not None and json.loads(known) != table["outputs"]:
            raise CliInputError(
                f"{args.file} has output columns {table['outputs']}; earlier tells used "
                f"{json.loads(known)} (same names, same order)"
            )
        if not table["tickets"]:
            _print_json({
                "told": 0, "done": 0, "failed": 0, "skipped": 0,
                **_ticket_summary(np.zeros(0, dtype=np.int64), args.ids),
            })
            return 0
        cost = table["cost"] if table["cost"] is not None else args.cost
        with warnings.catch_warnings():  # the JSON below counts the failures
            warnings.simplefilter("ignore", SimulationFailedWarning)
            result = study.tell(
                np.asarray(table["tickets"], dtype=np.int64),
                np.asarray(table["x"], dtype=np.float64),
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


def _parse_results(text: str, parameter_names: Sequence[str], label: str) -> dict[str, Any]:
    """The rows of a results CSV: tickets, outputs and annotations."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise CliInputError(f"{label} is empty; expected a header with 'ticket' and output columns") from None
    if "ticket" not in header:
        raise CliInputError(f"{label} has no 'ticket' column (header: {header})")
    if len(set(header)) != len(header):
        raise CliInputError(f"{label} repeats a column name: {header}")
    ignored = set(_ASK_COLUMNS) | set(parameter_names) | set(_ANNOTATION_COLUMNS)
    outputs = [h for h in header if h not in ignored]
    if not outputs:
        raise CliInputError(
            f"{label} has no output columns (only {header}); add the simulator's outputs"
        )
    where = {name: i for i, name in enumerate(header)}
    tickets, x, costs, reasons, metadata = [], [], [], [], []
    for line, row in enumerate(reader, start=2):
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
        "tickets": tickets,
        "x": np.asarray(x, dtype=np.float64).reshape(len(tickets), len(outputs)),
        "outputs": outputs,
        "cost": costs if "cost" in where else None,
        "reason": reasons if "reason" in where else None,
        "metadata": metadata if "metadata" in where else None,
    }


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
    if args.x is not None:
        try:
            x = [float(v) for v in args.x.split(",")]
        except ValueError:
            raise CliInputError(f"--x must be comma-separated numbers; got {args.x!r}") from None
    else:
        x = _read_observation(args.x_file)
    with _open(args, verbose=not args.quiet) as study:
        observation = np.asarray(x, dtype=np.float64)
        shape = study.x_shape
        if shape is not None:  # (else the study says that nothing was told yet)
            _check_observation_size(observation, shape, args)
            observation = observation.reshape(shape)
        samples = study.sample(args.n, observation, fidelity=args.fidelity, timeout=args.wait)
        names = list(study.parameter_names)
    rows = [[_number(v) for v in row] for row in samples]
    if args.format == "json":
        payload = json.dumps([dict(zip(names, row)) for row in rows])
        if args.output:
            Path(args.output).write_text(payload + "\n")
            _print_json({"samples": len(rows), "file": args.output})
        else:
            print(payload)
    elif args.output:
        with open(args.output, "w", newline="") as stream:
            _write_csv(stream, names, rows)
        _print_json({"samples": len(rows), "file": args.output})
    else:
        _write_csv(sys.stdout, names, rows)
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
    rows = [r for r in csv.reader(io.StringIO(_read_text(path))) if any(c.strip() for c in r)]
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
    with _open(args) as study:
        if fmt == "state":
            study.save(args.output)
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
        np.savez(args.output, **arrays)
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
    if args.output == "-":
        _write_csv(sys.stdout, header, table)
    else:
        with open(args.output, "w", newline="") as stream:
            _write_csv(stream, header, table)
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
    with _open(args) as study:
        ids = study.abandon(np.asarray(args.tickets, dtype=np.int64), reason=args.reason)
    _print_json({"abandoned": ids.tolist()})
    return 0


# ================================================================ helpers
def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliInputError(f"no such file: {path}") from None
    except OSError as error:
        raise CliInputError(f"cannot read {path}: {error}") from None


def _write_csv(stream: TextIO, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    stream.flush()


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
    print(json.dumps(payload, indent=None, allow_nan=False), flush=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
