"""Atomic file writes: write a temporary file in the destination's directory, fsync, then
``os.replace`` it over the destination, so a run killed midway never leaves a half-written file.

A write that fails because of the environment (disk full, permission denied, a read-only file
system, a path under a file) is the user's to fix, not a bug: it becomes one ``UserError`` naming
the path and what to do (:func:`environment_error`), and the previous file is left intact.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import polars as pl

from pipeline.errors import UserError

#: errno -> what the user should do. Anything else is not an environment problem we recognise.
ENVIRONMENT_ERRORS: dict[int, str] = {
    errno.ENOSPC: "no space left on the device; free some space (or choose another directory) "
                  "and run again",
    errno.EDQUOT: "the disk quota is exceeded; free some space (or choose another directory) and "
                  "run again",
    errno.EACCES: "permission denied; check the owner and permissions of this path (and of the "
                  "directories above it), or choose another directory",
    errno.EPERM: "the operation is not permitted here; check the owner and permissions of this "
                 "path, or choose another directory",
    errno.EROFS: "the file system is read-only; choose a writable directory",
    errno.ENOTDIR: "a part of this path is a file, not a directory; choose another path",
    errno.EEXIST: "a file exists where a directory is needed; choose another path",
    errno.EISDIR: "a directory exists where a file is needed; choose another path",
    errno.ELOOP: "too many levels of symbolic links; check the links on this path",
    errno.ENAMETOOLONG: "the path is too long; choose a shorter one",
    errno.ENOENT: "not found; check the path (was it moved or deleted while cramp ran?)",
    errno.EIO: "the device reported an input/output error; check the disk",
}
#: How polars and other native libraries report the OS error under their own exception types.
_NATIVE_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def environment_error(error: BaseException, path: Path | str | None = None) -> UserError | None:
    """A ``UserError`` for ``error`` if it is an environment problem (``ENVIRONMENT_ERRORS``,
    as an ``OSError`` or a native library's "(os error N)"), else None."""
    code = error.errno if isinstance(error, OSError) else None
    if code is None:
        match = _NATIVE_OS_ERROR.search(str(error))
        code = int(match.group(1)) if match else None
    if code not in ENVIRONMENT_ERRORS:
        return None
    if path is None and isinstance(error, OSError):
        path = error.filename
    if path is not None:
        # A data file's name can hold an identifier; messages land in cron logs.
        from pipeline.ingest.identifiers import mask_text

        path = mask_text(str(path))
    return UserError(ENVIRONMENT_ERRORS[code], path=path)


@contextmanager
def user_errors_for(path: Path | str) -> Iterator[None]:
    """Turn an environment failure inside the block into a ``UserError`` naming ``path``."""
    try:
        yield
    except UserError:
        raise
    except Exception as error:
        mapped = environment_error(error, path)
        if mapped is None:
            raise
        raise mapped from error


def check_writable(directory: Path) -> Path:
    """Create ``directory`` if needed and prove a file can be written, synced and removed there
    (``UserError`` otherwise), before any long work whose result would go there."""
    directory = Path(directory)
    with user_errors_for(directory):
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".cramp-write-check.", suffix=".tmp", dir=directory)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
    return directory


@contextmanager
def atomic_path(destination: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; on success it replaces ``destination``.
    An environment failure (disk full, permissions, ...) raises a ``UserError`` naming
    ``destination``, which is left as it was."""
    destination = Path(destination)
    with user_errors_for(destination):
        destination.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp",
                                        dir=destination.parent)
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        with user_errors_for(destination):
            yield tmp
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            # mkstemp creates 0600; give the file the mode an ordinary open() would (umask).
            os.chmod(tmp, 0o666 & ~current_umask())
            os.replace(tmp, destination)
        _fsync_directory(destination.parent)  # make the rename itself durable
    finally:
        if tmp.exists():
            tmp.unlink()


def current_umask() -> int:
    """The process's umask (read without changing it for longer than an instant)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not supported on every platform
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_with(destination: Path, write: Callable[[Path], None]) -> Path:
    """Atomically write ``destination`` with ``write(temporary_path)``."""
    with atomic_path(destination) as tmp:
        write(tmp)
    return Path(destination)


def write_text(destination: Path, text: str) -> Path:
    """Atomically write UTF-8 text."""
    return write_with(destination, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(destination: Path, data: Any) -> Path:
    """Atomically write JSON with sorted keys and a trailing newline (stable across runs)."""
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"
    return write_text(destination, text)


def write_csv(destination: Path, frame: pl.DataFrame | pl.LazyFrame) -> Path:
    """Atomically write a CSV for people (ISO dates, LF line endings), formula cells neutralised
    (``pipeline.csvsafe``): every CSV the toolkit writes may be opened in a spreadsheet."""
    from pipeline import csvsafe  # csvsafe builds on this module

    return csvsafe.write_csv(destination, frame)


def write_parquet(destination: Path, frame: pl.DataFrame) -> Path:
    """Atomically write a Parquet file."""
    return write_with(destination, lambda tmp: frame.write_parquet(tmp))
