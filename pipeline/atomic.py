"""Atomic file writes: write a temporary file in the destination's directory, fsync, then
``os.replace`` it over the destination, so a run killed midway never leaves a half-written file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import polars as pl


@contextmanager
def atomic_path(destination: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; on success it replaces ``destination``."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp",
                                    dir=destination.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        # mkstemp creates 0600; give the file the mode an ordinary open() would (umask applies).
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


def write_csv(destination: Path, frame: pl.DataFrame) -> Path:
    """Atomically write a CSV (ISO dates, LF line endings)."""
    return write_with(destination, lambda tmp: frame.write_csv(tmp))


def write_parquet(destination: Path, frame: pl.DataFrame) -> Path:
    """Atomically write a Parquet file."""
    return write_with(destination, lambda tmp: frame.write_parquet(tmp))
