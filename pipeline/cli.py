"""The ``cramp`` command line. Every command maps a ``UserError`` to one clear message on stderr and
exit code 2; nothing here holds analysis logic, it only calls the package."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

from pipeline.errors import UserError, mask_message

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Cramp toolkit: validated ingest, factor models, red-flag rules and reports for "
    "anonymised muscle-cramp diaries.",
)
out = Console()
err = Console(stderr=True)

# Where per-bucket work runs (pipeline/execution.py, docs/scaling.md).
ExecutorOption = Annotated[str, typer.Option(
    "--executor", help="local (threads on this machine) or dask (Dask distributed tasks).")]
SchedulerOption = Annotated[Optional[str], typer.Option(
    "--scheduler", help="Dask scheduler address for --executor dask (default: "
                        "$DASK_SCHEDULER_ADDRESS, else a LocalCluster on this machine).")]
DataDir = Annotated[Path, typer.Option("--data", help="Dataset directory (one file or folder per table).")]


#: Set to 1 to get the stage lines in a log too (benchmarks read the stage times from them).
PROGRESS_ENV = "CRAMP_PROGRESS"


def _progress() -> bool:
    """Stage lines go to standard error, and only when a person is watching it (or when
    ``CRAMP_PROGRESS=1`` asks for them in a log)."""
    return sys.stderr.isatty() or os.environ.get(PROGRESS_ENV, "").strip() == "1"


def _absolute(path: Path | None) -> Path | None:
    """Paths are resolved once, here at the edge: nothing later depends on the working directory."""
    return None if path is None else Path(path).expanduser().resolve()


def _version_callback(value: bool) -> None:
    if value:
        from pipeline.report.provenance import toolkit_version

        out.print(f"cramp {toolkit_version()}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                          help="Print the toolkit version and exit.")] = False,
) -> None:
    """Cramp toolkit: validated ingest, factor models, red-flag rules and reports for anonymised
    muscle-cramp diaries."""


def _print_ingest_summary(summary: dict, title: str) -> None:
    # The title names the user's directories, which may be named after a person.
    table = RichTable(title=Text(mask_message(title)), title_justify="left")
    table.add_column("table")
    for name in ("read", "accepted", "quarantined", "duplicates"):
        table.add_column(name, justify="right")
    notes: list[str] = []
    for name, t in summary["tables"].items():
        table.add_row(name, *(f"{t[k]:,}" for k in ("read", "accepted", "quarantined",
                                                     "duplicates")))
        reasons = sorted(t["quarantined_by_reason"].items(), key=lambda kv: (-kv[1], kv[0]))
        if reasons:
            notes.append(f"{name}: quarantined " + ", ".join(f"{r} {n:,}" for r, n in reasons))
        if t["unknown_columns"]:
            notes.append(f"{name}: unknown columns not stored: " + ", ".join(t["unknown_columns"]))
    out.print(table)
    for note in notes:
        out.print(note, highlight=False, markup=False)
    admissions = summary.get("admissions") or []
    if admissions:
        counts = {k: sum(a[k] for a in admissions) for k in ("admitted", "duplicates", "conflicts")}
        out.print(f"Rows held earlier as unknown_subject, now that their subject is accepted: "
                  f"{counts['admitted']:,} admitted, {counts['duplicates']:,} duplicates, "
                  f"{counts['conflicts']:,} conflicts.", highlight=False)

    from pipeline.ingest.discover import ignored_file_hint

    for hint in filter(None, map(ignored_file_hint, summary.get("ignored_files", []))):
        out.print(f"not read: {hint}", highlight=False, markup=False)
    skipped = [f for f in summary.get("files", []) if f.get("status") != "ingested"]
    if skipped:
        out.print(f"{len(skipped)} file(s) already in the store were skipped (same sha256).")


@app.command()
def validate(
    data: Annotated[Path, typer.Argument(help="Dataset directory.")],
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Also write summary.json and "
                                                    "quarantine.csv here.")] = None,
) -> None:
    """Validate a dataset and report what would be accepted and quarantined; stores nothing."""
    from pipeline.atomic import check_writable
    from pipeline.ingest import validate_dataset, write_ingest_outputs

    if out_dir is not None:
        check_writable(out_dir)  # before the long part: fail now, not after validating
    result = validate_dataset(data, progress=_progress(), keep_accepted=False)
    _print_ingest_summary(result.summary, f"Validation of {data}")
    if out_dir is not None:
        write_ingest_outputs(result, out_dir)
        out.print(f"Wrote {out_dir / 'summary.json'} and {out_dir / 'quarantine.csv'}")


@app.command()
def ingest(
    data: Annotated[Path, typer.Argument(help="Dataset directory.")],
    store: Annotated[Path, typer.Option("--store", help="Parquet store directory.")],
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Where to write summary.json "
                                                    "and quarantine.csv (default: the store).")] = None,
) -> None:
    """Validate a dataset and append its accepted rows to a Parquet store (idempotent by file hash)."""
    from pipeline.ingest import ingest_dataset, write_ingest_outputs

    result = ingest_dataset(data, store, progress=_progress())
    write_ingest_outputs(result, out_dir or store)
    _print_ingest_summary(result.summary, f"Ingest of {data} into {store}")


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write the dataset into.")],
    subjects: Annotated[int, typer.Option("--subjects", min=2, help="Number of subjects.")] = 200,
    days: Annotated[int, typer.Option("--days", min=1, help="Days of follow-up.")] = 90,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 20261128,
    confounded: Annotated[bool, typer.Option("--confounded", help="People with higher habitual "
                                             "stress and sitting cramp more for other reasons.")] = False,
    heterogeneous: Annotated[bool, typer.Option("--heterogeneous", help="People differ in their "
                                                "rate ratios (each person's truth in the truth "
                                                "file).")] = False,
    fmt: Annotated[str, typer.Option("--format", help="csv, jsonl or parquet.")] = "csv",
    effect_modification: Annotated[bool, typer.Option(
        "--effect-modification", help="Plant a sitting effect only in people aged 60+ "
        "(pipeline/synth/modification.py).")] = False,
    lagged: Annotated[bool, typer.Option("--lagged", help="Plant effects at lags > 0 as well "
                                         "(next-day exercise, alcohol, fluid; see the truth "
                                         "file).")] = False,
) -> None:
    """Write a synthetic contract dataset with planted effects; the truth goes to OUT.truth.json."""
    from pipeline import synth as synth_module

    if fmt not in {"csv", "jsonl", "parquet"}:
        raise UserError(f"--format must be csv, jsonl or parquet, not {fmt!r}")
    dataset = synth_module.generate(subjects, days, seed, confounded=confounded,
                                    effect_modification=effect_modification, lagged=lagged,
                                    heterogeneous=heterogeneous)
    synth_module.write_dataset(dataset, out_dir, fmt=fmt)
    out.print(f"Wrote {out_dir} ({subjects} subjects × {days} days); planted truth beside it.")


@app.command()
def run(
    data: DataDir,
    out_dir: Annotated[Path, typer.Option("--out", help="Run directory for outputs.")],
    store: Annotated[Optional[Path], typer.Option("--store", help="Parquet store "
                                                  "(default: OUT/store).")] = None,
    rules: Annotated[Optional[Path], typer.Option("--rules", help="Red-flag rule file (TOML) to "
                                                  "use instead of the shipped rules.")] = None,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Render report.html.")] = True,
    identifiers: Annotated[bool, typer.Option("--identifiers/--no-identifiers", help="Include the "
                                              "red-flag follow-up list of pseudonymous ids.")] = True,
    executor: ExecutorOption = "local",
    scheduler: SchedulerOption = None,
) -> None:
    """Ingest, validate, build the panel, fit the models, apply the red-flag rules and report."""
    from pipeline.run import run_job

    result = run_job(_absolute(data), _absolute(out_dir), store_dir=_absolute(store),
                     rules_path=_absolute(rules), report=report, identifiers=identifiers,
                     progress=_progress(), executor=executor,
                     scheduler=scheduler)
    _print_ingest_summary(result["summary"], f"Ingest of {data}")
    for line in result["messages"]:
        out.print(line)
    out.print(f"Outputs in {out_dir}")


@app.command("report")
def scheduled_report(
    data: DataDir,
    reports: Annotated[Path, typer.Option("--reports", help="Directory of dated reports.")],
    rules: Annotated[Optional[Path], typer.Option("--rules", help="Red-flag rule file (TOML) to "
                                                  "use instead of the shipped rules.")] = None,
    identifiers: Annotated[bool, typer.Option("--identifiers/--no-identifiers", help="Include the "
                                              "red-flag follow-up list of pseudonymous ids.")] = True,
    executor: ExecutorOption = "local",
    scheduler: SchedulerOption = None,
) -> None:
    """The scheduled job: ingest what is new, refit, write REPORTS/<YYYY-MM-DD>/ and the index."""
    from pipeline.report import scheduled_report as run_scheduled
    from pipeline.report.schedule import job_lines

    path = run_scheduled(_absolute(data), _absolute(reports), identifiers=identifiers,
                         rules_path=_absolute(rules), progress=_progress(),
                         executor=executor, scheduler=scheduler)
    for line in job_lines(path):
        out.print(line, highlight=False, markup=False)


@app.command()
def docs(
    check: Annotated[bool, typer.Option("--check", help="Fail if docs/ is stale instead of "
                                        "writing it.")] = False,
    root: Annotated[Path, typer.Option("--root", help="Project root.")] = Path("."),
) -> None:
    """Regenerate docs/data-contract.md and docs/feature-dictionary.md from the code."""
    from pipeline.generated_docs import GENERATED_DOCS

    stale = []
    for relative, render in GENERATED_DOCS.items():
        path = root / relative
        text = render()
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(relative))
                out.print(f"stale       {relative}", highlight=False)
            else:
                out.print(f"up to date  {relative}", highlight=False)
        else:
            from pipeline.atomic import write_text

            write_text(path, text)
            out.print(f"Wrote {path}")
    if stale:
        raise UserError("stale generated documents (run `make docs`): " + ", ".join(stale))
    if check:
        out.print(f"Checked {len(GENERATED_DOCS)} generated document(s) against the code they are "
                  f"generated from: all up to date.", highlight=False)


def _print_user_error(error: UserError) -> None:
    # The message is plain text: rich must not read "[guidance]" in it as markup.
    err.print(Text.assemble(("error: ", "bold red"), str(error)), highlight=False, soft_wrap=True)


def main() -> None:
    """Console-script entry point: usage errors are typer's (exit 2); ours are ``UserError``.
    An environment failure that reached here unmapped (disk full, permission denied, a path under
    a file: ``atomic.ENVIRONMENT_ERRORS``) is a user error too, naming the path; anything else is
    a bug."""
    from pipeline.atomic import environment_error

    try:
        app()
    except SystemExit as stop:
        if stop.code == 130:  # typer's exit for Ctrl-C (KeyboardInterrupt), which it prints not
            err.print("aborted (Ctrl-C); a run's outputs are incomplete until it is run again")
        raise
    except UserError as error:
        _print_user_error(error)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        err.print("aborted")
        sys.exit(130)
    except Exception as error:
        if os.environ.get("CRAMP_DEBUG"):
            raise
        mapped = environment_error(error)
        if mapped is not None:
            _print_user_error(mapped)
            sys.exit(mapped.exit_code)
        err.print(Text.assemble(
            # Even a bug's message can quote a value or file name: masked like a UserError's.
            ("internal error: ", "bold red"), mask_message(f"{type(error).__name__}: {error}")
            + "\n"
            "This is a bug in cramp, not a problem with your data. Re-run with CRAMP_DEBUG=1 "
            "for the traceback and report it."), highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
