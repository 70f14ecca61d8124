"""Progress a person can follow: one line per finished stage with its elapsed time, a live line
(with a bar where the stage's size is known) while it runs, and nothing at all when the output is
not a terminal (cron logs, pipes, tests).

A job opens one :func:`session` (``cramp run``, ``cramp report``); inside it, any code (also in
worker threads, such as the parallel notebook renders) marks its stages with :func:`stage`::

    with progress.session(enabled=sys.stderr.isatty()):
        with progress.stage("red flags"):
            ...
        with progress.stage("read daily.csv", total=n_bytes) as bar:
            bar.advance(chunk_bytes)

Outside a session, or with ``enabled=False``, :func:`stage` does nothing and costs nothing, so
library code can mark its stages unconditionally. The display is rich's ``Progress`` (thread-safe;
one live display for the whole job), on standard error so that standard output stays the job's
report.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

#: Stages shorter than this are still listed (a person wants to see every step), but their time is
#: shown as "<0.1 s" rather than a noisy "0.0 s".
_MIN_SHOWN_S = 0.1


@dataclass
class Stage:
    """A running stage; ``advance`` moves its bar (when it has a known total)."""

    name: str
    total: float | None = None
    _bar: object | None = field(default=None, repr=False)
    _task: int | None = field(default=None, repr=False)

    def advance(self, amount: float = 1) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, advance=amount)

    def describe(self, name: str) -> None:
        """Rename the running stage (the file now being read)."""
        self.name = name
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, description=name)


class _Session:
    def __init__(self, console=None):
        from rich.console import Console
        from rich.progress import (BarColumn, Progress, SpinnerColumn, TaskProgressColumn,
                                   TextColumn, TimeElapsedColumn)

        self.console = console or Console(stderr=True)
        self.started = time.monotonic()
        class KnownBar(BarColumn):
            """A bar only where the stage's size is known (a pulsing bar tells nobody anything)."""

            def render(self, task):
                return super().render(task) if task.total is not None else ""

        class KnownPercent(TaskProgressColumn):
            def render(self, task):
                return super().render(task) if task.total is not None else ""

        self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), KnownBar(),
                            KnownPercent(), TimeElapsedColumn(), console=self.console,
                            transient=True)

    def line(self, name: str, elapsed_s: float, detail: str = "") -> None:
        shown = "<0.1 s" if elapsed_s < _MIN_SHOWN_S else f"{elapsed_s:.1f} s"
        total = time.monotonic() - self.started
        self.bar.console.print(f"[green]✓[/green] {name}{detail} [dim]{shown} "
                               f"(at {total:.0f} s)[/dim]", highlight=False)


_lock = threading.Lock()
_active: _Session | None = None


def active() -> bool:
    """Whether a displaying session is open (stages will show)."""
    return _active is not None


@contextmanager
def session(enabled: bool, console=None) -> Iterator[None]:
    """Show stages for the duration of a job. Nested sessions join the outer one."""
    global _active
    with _lock:
        if not enabled or _active is not None:
            owner = None
        else:
            owner = _active = _Session(console)
    if owner is None:
        yield
        return
    try:
        with owner.bar:
            yield
    finally:
        with _lock:
            _active = None


@contextmanager
def stage(name: str, total: float | None = None, detail: str = "") -> Iterator[Stage]:
    """Mark one stage: a live line (a bar when ``total`` is known) while it runs, then one line
    ``✓ name  1.2 s``. A stage that raises prints nothing (the error message says what happened)."""
    current = _active
    if current is None:
        yield Stage(name, total)
        return
    task = current.bar.add_task(name, total=total)
    running = Stage(name, total, current.bar, task)
    start = time.monotonic()
    try:
        yield running
    finally:
        current.bar.remove_task(task)
    current.line(running.name, time.monotonic() - start, detail)


class Timer:
    """A stage without a ``with`` block, for loops whose body would otherwise be re-indented:
    ``timer = begin("fit population")`` … ``timer.end()``."""

    def __init__(self, name: str):
        self._context = stage(name)
        self._context.__enter__()

    def end(self) -> None:
        self._context.__exit__(None, None, None)

    def cancel(self) -> None:
        """Close the stage without its line (it did not finish)."""
        error = RuntimeError("stage cancelled")
        self._context.__exit__(RuntimeError, error, None)


def begin(name: str) -> Timer:
    return Timer(name)


def human_bytes(n: int) -> str:
    """``3,276,800`` -> ``3.1 MB`` (binary multiples, as file managers show)."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"  # pragma: no cover - the loop always returns
