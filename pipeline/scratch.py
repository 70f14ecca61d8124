"""A run's scratch space: per-bucket intermediate data kept on disk between the stages that build
and read it (the subject-day panel's bucket parts, each model's bucket designs), so that memory
holds a few buckets at a time, not the dataset.

A job opens one :func:`session` in its run directory (``OUT/.scratch-<pid>``); everything in it is
removed when the job ends, whether it succeeded or not. Outside a session (tests, notebooks, small
data) :func:`current` is None and callers keep their buckets in memory. The directory is inside
the run directory because every worker of a cluster must read what the driver wrote there (the
run directory is on the shared file system, see docs/scaling.md). Names inside are bucket numbers
and model names only: no identifier ever reaches a scratch file's name.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pipeline.atomic import check_writable, user_errors_for

_CURRENT: contextvars.ContextVar[Path | None] = contextvars.ContextVar("cramp_scratch",
                                                                        default=None)
PREFIX = ".scratch-"


@contextlib.contextmanager
def session(run_dir: Path) -> Iterator[Path]:
    """A scratch directory inside ``run_dir`` for the duration of the block (removed after it,
    also on error). A directory that cannot be written is a ``UserError`` before any work."""
    path = Path(run_dir) / f"{PREFIX}{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)  # left by a killed run of the same pid
    check_writable(path)
    token = _CURRENT.set(path)
    try:
        yield path
    finally:
        _CURRENT.reset(token)
        shutil.rmtree(path, ignore_errors=True)


def current() -> Path | None:
    """The scratch directory of the running job, or None (keep buckets in memory)."""
    return _CURRENT.get()


def new_directory(kind: str) -> Path:
    """A fresh directory for one stage's buckets (``kind``: e.g. ``panel``, ``design-population``)
    inside the current scratch directory (which must exist: check :func:`current` first)."""
    root = current()
    if root is None:
        raise RuntimeError("no scratch session is open")
    with user_errors_for(root):
        return Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=root))


def remove(path: Path | None) -> None:
    """Free a stage's buckets as soon as nothing reads them any more."""
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def clean_stale(run_dir: Path) -> None:
    """Remove scratch directories of earlier runs killed before they could clean up (the run
    directory's lock guarantees no other run is using them)."""
    for p in Path(run_dir).glob(f"{PREFIX}*"):
        shutil.rmtree(p, ignore_errors=True)
