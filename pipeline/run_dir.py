"""Ownership and locking of a ``cramp run`` output directory.

``cramp run --out OUT`` overwrites its outputs in ``OUT`` and rebuilds ``OUT/store`` on every run,
so it must never do that to a directory it did not make, nor let two runs do it at once:

- **Marker.** ``OUT/.cramp-run`` says cramp made ``OUT``. ``OUT`` must be new, empty, marked, or
  a run directory written before the marker existed (it holds cramp's ``summary.json``);
  anything else is refused with a clear message and left untouched.
- **One lock for the whole run directory.** ``OUT/.cramp-run.lock`` is taken without waiting and
  held for the whole job. It sits beside ``OUT/store``, outside what is rebuilt, so a second
  overlapping run stops ("another run is writing OUT") instead of rebuilding the store under the
  first one's feet. The lock file is never deleted (deleting a lock file lets two processes hold
  "the" lock on different inodes).
- **Unfinished runs are marked.** ``OUT/.cramp-run-unfinished`` is written when a run starts and
  removed once every data output is written (before the report is rendered from them). A run
  that was interrupted or stopped by an error leaves it, and ``report.load.load_run`` (the
  report, the notebooks) then says so instead of showing one run's effects beside another's
  subject effects.
- **Inputs are never inside.** A dataset directory inside ``OUT`` (or ``OUT/store`` itself) is
  refused before anything is deleted; paths are compared after resolving symbolic links.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from pipeline import atomic
from pipeline.errors import UserError
from pipeline.store import holds_foreign_files

MARKER = ".cramp-run"
LOCK = ".cramp-run.lock"
#: Present while a run writes ``OUT``, and left by a run that did not finish (interrupted, or
#: stopped by an error): its outputs are then a mix of that run's and the previous run's, and
#: the report and notebooks refuse to read them (:func:`check_finished`).
UNFINISHED = ".cramp-run-unfinished"
_UNFINISHED_TEXT = ("A `cramp run` started writing this directory and has not finished: its "
                    "outputs may mix this run's and an earlier run's. Run `cramp run` again.\n")
_MARKER_TEXT = ("This directory is a cramp run directory: `cramp run` overwrites its outputs "
                "and rebuilds store/ on every run.\n")


def is_run_dir(out_dir: Path) -> bool:
    """Whether cramp made ``out_dir``: the marker, or (before the marker) cramp's summary.json."""
    out_dir = Path(out_dir)
    if (out_dir / MARKER).is_file():
        return True
    try:
        summary = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and {"contract_version", "tables"} <= summary.keys()


def check_out_dir(out_dir: Path) -> None:
    """Refuse (``UserError``) an output directory cramp may not write: a file, a symbolic link,
    or a non-empty directory cramp did not make."""
    out_dir = Path(out_dir)
    if out_dir.is_symlink() and not out_dir.is_dir():
        raise UserError("the output directory is a broken symbolic link", path=str(out_dir))
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError("the output path exists and is not a directory; choose a directory "
                        "for --out", path=str(out_dir))
    if out_dir.is_dir() and holds_foreign_files(out_dir, MARKER, {LOCK}) \
            and not is_run_dir(out_dir):
        raise UserError(
            f"this directory is not empty and was not made by `cramp run` (no {MARKER} marker "
            "file); cramp would overwrite and delete files in it, so it stopped without changing "
            "anything. Choose a new or empty directory for --out", path=str(out_dir))


@contextmanager
def run_dir_lock(out_dir: Path) -> Iterator[None]:
    """Check ``out_dir``, take its lock without waiting, mark it, and hold the lock."""
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out_dir / LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(f"another run is writing {out_dir} (lock file {out_dir / LOCK}); this "
                        "run stopped without changing anything. Wait for it to finish, or use "
                        "another --out") from None
    try:
        if not (out_dir / MARKER).is_file():
            atomic.write_text(out_dir / MARKER, _MARKER_TEXT)
        yield
    finally:
        lock.release()


def mark_started(out_dir: Path) -> None:
    """Mark ``out_dir`` as being written by a run that has not finished (under its lock)."""
    atomic.write_text(Path(out_dir) / UNFINISHED, _UNFINISHED_TEXT)


def mark_finished(out_dir: Path) -> None:
    """Every data output of the run is written: remove the mark."""
    (Path(out_dir) / UNFINISHED).unlink(missing_ok=True)


def check_finished(run_dir: Path) -> None:
    """Refuse (``UserError``) the outputs of a run that is still writing or did not finish."""
    if (Path(run_dir) / UNFINISHED).exists():
        raise UserError("this run directory holds the outputs of a run that has not finished "
                        "(it is still running, or it was interrupted or stopped by an error), "
                        "so they may mix two runs; run `cramp run` again", path=str(run_dir))
